//! `xdp-attach-failed`: attaching an XDP program, or loading the BPF program a loader wants
//! to attach, failed: with the errno, the kernel's message, the device, the requested mode,
//! who asked, and how often (a loader retrying forever is itself the finding, as Calico's
//! was on 5.4 in field report 4).
//!
//! Evidence: netlink XDP attaches (`IFLA_XDP` in RTM_SETLINK, links family) with their ack
//! and extended-ack message; `bpf()` LINK_CREATE of XDP links with the message of
//! `xdp:bpf_xdp_link_attach_failed`; failed `bpf()` PROG_LOADs of XDP programs.

use std::collections::BTreeMap;

use super::{attempts, finding_from_links};
use crate::{
    analyze::{
        correlate::{Correlated, LinkOutcome},
        Finding, Place, Rule, Severity,
    },
    decode::{xdp::BpfCommand, Event},
    kernel::KernelSummary,
};

pub struct XdpAttachFailed;

/// Who asked (comm), in which namespace, for which device.
type TargetKey = (String, Option<u32>, Option<String>);

impl Rule for XdpAttachFailed {
    fn id(&self) -> &'static str {
        "xdp-attach-failed"
    }

    fn evaluate(&self, state: &Correlated, kernel: &KernelSummary) -> Vec<Finding> {
        let mut findings = Vec::new();
        // Netlink attaches, grouped by who asked, where and for which device.
        let mut by_target: BTreeMap<TargetKey, Vec<&LinkOutcome>> = BTreeMap::new();
        for o in state.link_outcomes() {
            let attach = o.request.xdp.as_ref().is_some_and(|x| x.fd >= 0);
            if attach && o.errno().is_some_and(|e| e != 0) {
                let key = (o.request.actor.comm.clone(), o.request.actor.netns, o.request.ifname.clone());
                by_target.entry(key).or_default().push(o);
            }
        }
        for outcomes in by_target.values() {
            let first = outcomes[0];
            let r = &first.request;
            let x = r.xdp.as_ref().expect("filtered above");
            let device = r.ifname.clone().or(r.ifindex.map(|i| format!("ifindex {i}"))).unwrap_or_else(|| "?".into());
            let error = first.ack.as_ref().and_then(|a| a.error.clone()).unwrap_or_else(|| "an error".into());
            let message = first.message.as_ref().map(|m| m.message.clone());
            let said = message.as_deref().map(|m| format!(" \"{m}\"")).unwrap_or_default();
            // The program behind the fd: the same process's last successful XDP PROG_LOAD
            // before the request (loaders such as libbpf dup the fd, so fds do not match).
            let program = state
                .bpf_commands
                .iter()
                .rev()
                .filter(|c| c.ts_ns <= r.ts_ns && c.actor.pid == r.actor.pid)
                .find(|c| c.command == "prog-load" && c.result >= 0 && c.prog_type.as_deref() == Some("xdp"))
                .and_then(|c| c.prog_name.clone())
                .map(|n| format!(" program {n}"))
                .unwrap_or_default();
            let summary = format!(
                "{} could not attach XDP{program} in {} mode to {device}{}: {error}{said}; {}{}",
                r.actor.comm,
                x.mode,
                netns_part(r.actor.netns_name.as_deref(), r.actor.netns),
                attempts(outcomes),
                retry_note(outcomes.len())
            );
            let remediation = remedy(&x.mode, &error, message.as_deref(), &device, kernel);
            findings.push(finding_from_links(self.id(), Severity::Error, summary, outcomes, remediation));
        }
        // bpf() commands: failed XDP link attaches and failed loads of XDP programs.
        let mut by_program: BTreeMap<(String, &str, String), Vec<&BpfCommand>> = BTreeMap::new();
        for c in state.bpf_commands.iter().filter(|c| c.failed() && c.is_xdp()) {
            let what = match c.command.as_ref() {
                "link-create" => c.target_ifindex.map_or("?".into(), |i| format!("ifindex {i}")),
                _ => c.prog_name.clone().unwrap_or_else(|| "(unnamed)".into()),
            };
            by_program.entry((c.actor.comm.clone(), c.command.as_ref(), what)).or_default().push(c);
        }
        for ((comm, command, what), cmds) in by_program {
            let first = cmds[0];
            let error = first.error.clone().unwrap_or_else(|| "an error".into());
            // A loader retrying runs again as a new process (or calls again): count runs by
            // process, since libbpf itself retries a failed load once with a verifier log.
            let mut pids: Vec<u32> = cmds.iter().map(|c| c.actor.pid).collect();
            pids.dedup();
            let runs = pids.len().max(1);
            let span = cmds.last().map_or(0, |l| l.ts_ns.saturating_sub(first.ts_ns)) as f64 / 1e9;
            let how_often = if runs > 1 {
                format!("{runs} attempts in {span:.1} s (every {:.1} s)", span / (runs - 1) as f64)
            } else {
                "1 attempt".into()
            };
            let (summary, remediation) = if command == "link-create" {
                let said = first.message.as_deref().map(|m| format!(" \"{m}\"")).unwrap_or_default();
                (
                    format!(
                        "{comm} could not attach an XDP link ({} mode) to {what}{}: {error}{said}; {how_often}{}",
                        first.xdp_mode.as_deref().unwrap_or("any"),
                        netns_part(first.actor.netns_name.as_deref(), first.actor.netns),
                        retry_note(runs)
                    ),
                    remedy(first.xdp_mode.as_deref().unwrap_or("any"), &error, first.message.as_deref(), &what, kernel),
                )
            } else {
                let verifier = cmds
                    .iter()
                    .find_map(|c| c.message.as_deref())
                    .map(|m| format!(" (verifier: \"{m}\")"))
                    .unwrap_or_default();
                (
                    format!(
                        "{comm} failed to load XDP program {what} ({} instructions): the kernel refused it with {error}{verifier}; {how_often}{}",
                        first.instructions.map_or("?".into(), |n| n.to_string()),
                        retry_note(runs)
                    ),
                    format!(
                        "Kernel {} refused the loader's BPF program (EINVAL/EACCES from the verifier, E2BIG for size, EPERM for privileges): the program needs something this kernel lacks (helpers, BTF features, verifier limits). Upgrade the loader to a release that supports this kernel or pin one that does (field report 4: Calico 3.26.x on 5.4), disable the feature (Calico FelixConfiguration `xdpEnabled: false` / `bpfEnabled: false`), or upgrade the kernel. Run the loader with its verifier log enabled to see the rejected instruction.",
                        kernel.release
                    ),
                )
            };
            let mut evidence: Vec<Event> = cmds.iter().take(6).map(|c| Event::BpfCommand((*c).clone())).collect();
            evidence.sort_by_key(Event::ts_ns);
            findings.push(Finding {
                rule: self.id(),
                severity: Severity::Error,
                summary,
                place: Place {
                    netns: first.actor.netns,
                    netns_name: first.actor.netns_name.clone(),
                    pod: None,
                    device: None,
                    location: None,
                },
                flows: vec![],
                destination: None,
                count: runs as u64,
                first_time: first.time.clone(),
                last_time: cmds.last().map(|c| c.time.clone()).unwrap_or_default(),
                actor: Some(first.actor.clone()),
                netfilter: None,
                evidence,
                remediation,
            });
        }
        findings
    }
}

fn netns_part(name: Option<&str>, inode: Option<u32>) -> String {
    match (name, inode) {
        (Some(n), _) => format!(" in netns {n}"),
        (None, Some(i)) => format!(" in netns {i}"),
        _ => String::new(),
    }
}

fn retry_note(attempts: usize) -> &'static str {
    if attempts >= 3 {
        ": the loader is retrying in a loop, it will not succeed on its own"
    } else {
        ""
    }
}

/// What to do, by errno, message and requested mode.
fn remedy(mode: &str, error: &str, message: Option<&str>, device: &str, kernel: &KernelSummary) -> String {
    let message = message.unwrap_or("").to_ascii_lowercase();
    if error.starts_with("EOPNOTSUPP") && (mode == "native" || message.contains("native")) {
        format!(
            "The driver of {device} has no native XDP (virtual devices such as bridges, vxlan and dummy have none; on kernel {} check the NIC driver). Attach in generic mode instead (`ip link set dev {device} xdpgeneric …`, XDP_FLAGS_SKB_MODE; slower but works everywhere), use a NIC whose driver supports XDP, or turn XDP off in the CNI (Calico FelixConfiguration `xdpEnabled: false`).",
            kernel.release
        )
    } else if error.starts_with("EBUSY") || error.starts_with("EEXIST") || message.contains("already") {
        format!(
            "Another XDP program is already attached to {device} (possibly in another mode, or by another agent): see `ip -d link show {device}` and `bpftool net`; detach it (`ip link set dev {device} xdp off`) or make the loader replace it, and make sure only one agent manages XDP on this device."
        )
    } else if error.starts_with("EOPNOTSUPP") {
        format!(
            "Kernel {} does not support this XDP attachment on {device} (mode {mode}): use generic mode, upgrade the kernel, or disable XDP in the CNI.",
            kernel.release
        )
    } else {
        format!(
            "The kernel refused the XDP attachment to {device} with {error}{}. Check the loader's version against kernel {}, try generic mode, or disable XDP in the CNI (Calico FelixConfiguration `xdpEnabled: false`).",
            if message.is_empty() { String::new() } else { format!(" (\"{message}\")") },
            kernel.release
        )
    }
}
