//! `veth-mac-changed`: a veth's MAC address changed after it was created, by a process other
//! than the one that created it: the CNI recorded one MAC and then finds another ("Interface
//! vethXXXX Mac doesn't match", field report 5), typically systemd-udevd applying
//! MACAddressPolicy=persistent to new veths.
//!
//! Evidence: the rtnetlink monitor's link states (old → new MAC, whoever changed it and
//! however), joined with the create and change requests seen at the syscall tracepoints.

use super::finding_from_history;
use crate::{
    analyze::{correlate::Correlated, Finding, Rule, Severity},
    kernel::KernelSummary,
};

pub struct VethMacChanged;

impl Rule for VethMacChanged {
    fn id(&self) -> &'static str {
        "veth-mac-changed"
    }

    fn evaluate(&self, state: &Correlated, _kernel: &KernelSummary) -> Vec<Finding> {
        let mut findings = Vec::new();
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
                let name = h.ifname.as_deref().unwrap_or("?");
                let creator = h.creator.as_ref().map(|a| a.to_string()).unwrap_or_else(|| "an unseen process".into());
                let changer = change.by.as_ref().map(|a| a.to_string()).unwrap_or_else(|| {
                    "a process dptrace did not see change it (ioctl, the kernel, or outside the traced namespaces)"
                        .into()
                });
                let delay = change.ts_ns.saturating_sub(h.first_ts_ns) as f64 / 1e9;
                let summary = format!(
                    "veth {name}'s MAC changed {} → {} {delay:.3} s after it was created: created by {creator}, changed by {changer}; a CNI that recorded the first MAC now fails with \"Mac doesn't match\"",
                    change.old, change.new
                );
                let remediation = "Stop the second writer. systemd-udevd gives new veths a persistent MAC when MACAddressPolicy=persistent applies to them: add /etc/systemd/network/10-veth.link with `[Match] Driver=veth` and `[Link] MACAddressPolicy=none` (then `udevadm control --reload`), or use CNI plugins that set an explicit MAC and check against the final one (e.g. the upstream containernetworking plugins shipped as kubernetes-cni instead of an older distribution package).".to_string();
                findings.push(finding_from_history(
                    self.id(),
                    Severity::Error,
                    summary,
                    h,
                    change.by.clone(),
                    remediation,
                ));
            }
        }
        findings
    }
}
