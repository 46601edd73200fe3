//! `veth-mac-changed`: a veth's MAC address changed after it was created, by a process other
//! than the one that created it: the CNI recorded one MAC and then finds another ("Interface
//! vethXXXX Mac doesn't match", field report 5), typically systemd-udevd applying
//! MACAddressPolicy=persistent to new veths. When it keeps happening (a runtime retrying the
//! pod's sandbox: create, CHECK fails, delete, create again, every ~11 s in the report), the
//! repetitions are one finding that says how often and how many.
//!
//! Evidence: the rtnetlink monitor's link states (old → new MAC, whoever changed it and
//! however), joined with the create and change requests seen at the syscall tracepoints. The
//! creator is found also when it made the pair from inside the pod's namespace (the CNI
//! bridge plugin does: the host end is the peer of its request).

use super::finding_from_history;
use crate::analyze::{
    correlate::{Correlated, LinkHistory, MacChange},
    Finding, Rule, Severity,
};
use crate::kernel::KernelSummary;

pub struct VethMacChanged;

/// The same cause: the host veth's namespace, the creator's and the second writer's comm.
type Cause = (u32, Option<String>, Option<String>);
/// MAC changes of one cause, in the order they happened.
type Occurrences<'a> = Vec<(&'a LinkHistory, &'a MacChange)>;

impl Rule for VethMacChanged {
    fn id(&self) -> &'static str {
        "veth-mac-changed"
    }

    fn evaluate(&self, state: &Correlated, _kernel: &KernelSummary) -> Vec<Finding> {
        // Changes by a second writer, grouped by where and by whom: the same cause, repeated.
        let mut groups: Vec<(Cause, Occurrences)> = Vec::new();
        for h in state.link_histories() {
            if h.link_kind.as_deref() != Some("veth") || !h.created_here {
                continue;
            }
            for change in &h.mac_changes {
                let same_actor = match (&h.creator, &change.by) {
                    (Some(c), Some(b)) => c.pid == b.pid,
                    _ => false,
                };
                if same_actor {
                    continue;
                }
                let key =
                    (h.netns, h.creator.as_ref().map(|a| a.comm.clone()), change.by.as_ref().map(|a| a.comm.clone()));
                match groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, changes)) => changes.push((h, change)),
                    None => groups.push((key, vec![(h, change)])),
                }
            }
        }
        groups.into_iter().map(|(_, changes)| finding(self.id(), &changes)).collect()
    }
}

fn finding(rule: &'static str, changes: &[(&LinkHistory, &MacChange)]) -> Finding {
    let (h, change) = changes[changes.len() - 1];
    let name = h.ifname.as_deref().unwrap_or("?");
    let creator = h.creator.as_ref().map(|a| a.to_string()).unwrap_or_else(|| "an unseen process".into());
    let changer = change.by.as_ref().map(|a| a.to_string()).unwrap_or_else(|| {
        "a process dptrace did not see change it (ioctl, the kernel, or outside the traced namespaces)".into()
    });
    let delay = change.ts_ns.saturating_sub(h.first_ts_ns) as f64 / 1e9;
    let mut summary = format!(
        "veth {name}'s MAC changed {} → {} {delay:.3} s after it was created: created by {creator}, changed by {changer}; a CNI that recorded the first MAC now fails with \"Mac doesn't match\"",
        change.old, change.new
    );
    if changes.len() > 1 {
        let n = changes.len();
        let span = changes[n - 1].1.ts_ns.saturating_sub(changes[0].1.ts_ns) as f64 / 1e9;
        let names: Vec<&str> = changes.iter().map(|(h, _)| h.ifname.as_deref().unwrap_or("?")).collect();
        let shown = if n > 4 { format!("{}, … {}", names[..3].join(", "), names[n - 1]) } else { names.join(", ") };
        summary += &format!(
            ". It happened to {n} new veths in {span:.1} s (every {:.1} s: {shown}): a runtime retrying a pod sandbox whose CNI CHECK fails deletes and recreates the pair each time",
            span / (n - 1) as f64
        );
    }
    let remediation = "Stop the second writer. systemd-udevd gives new veths a persistent MAC when MACAddressPolicy=persistent applies to them: add /etc/systemd/network/10-veth.link with `[Match] Driver=veth` and `[Link] MACAddressPolicy=none` (then `udevadm control --reload`), or use CNI plugins that set an explicit MAC and check against the final one (e.g. the upstream containernetworking plugins shipped as kubernetes-cni instead of an older distribution package).".to_string();
    let mut f = finding_from_history(rule, Severity::Error, summary, h, change.by.clone(), remediation);
    if changes.len() > 1 {
        f.count = changes.len() as u64;
        f.first_time = changes[0].1.time.clone();
        f.last_time = change.time.clone();
        // The first occurrence's evidence, then the latest's: how it started and that it goes on.
        let mut evidence = changes[0].0.evidence.clone();
        evidence.truncate(4);
        evidence.extend(h.evidence.iter().take(4).cloned());
        f.evidence = evidence;
    }
    f
}
