//! `xdp-drop`: an XDP program dropped packets on a device (XDP_DROP): which program (name,
//! id, tag), attached in which mode, by whom when the session saw the attach, and which
//! flows it dropped.
//!
//! Evidence: drops freed where XDP frees the packets its program refused: veth's native XDP
//! in `veth_xdp_rcv_skb`, generic (skb-mode) XDP in `do_xdp_generic` (the kernel gives them
//! no drop reason of their own: NOT_SPECIFIED); the program attached to the device, read
//! from the kernel when the drop was decoded (`DropRecord::xdp`); the netlink attach
//! (`IFLA_XDP` in RTM_SETLINK) that put it there, when the session saw it. Packets the
//! program aborted are `xdp-aborted`'s (counted by the exception tracepoint) and are taken
//! out of the count. A NIC driver's native XDP frees no skb: those drops are not seen here,
//! which `dptrace check` says under the xdp family.

use super::{finding_from_groups, group_by, in_netns, netns_label};
use crate::{
    analyze::{
        correlate::{Correlated, DropGroup, LinkOutcome},
        Finding, Rule, Severity,
    },
    decode::{
        xdp::{xdp_drop_mode, XdpAttachment},
        Event,
    },
    kernel::KernelSummary,
};

pub struct XdpDrop;

/// The drops of `group` were freed by XDP on their device (its program returned XDP_DROP or
/// aborted): `packet-drop` leaves them to this rule.
pub(crate) fn explained_by_xdp_drop(group: &DropGroup) -> bool {
    group.first.function.as_deref().and_then(xdp_drop_mode).is_some()
}

impl Rule for XdpDrop {
    fn id(&self) -> &'static str {
        "xdp-drop"
    }

    fn evaluate(&self, state: &Correlated, _kernel: &KernelSummary) -> Vec<Finding> {
        let candidates = state.drop_groups().into_iter().filter(|g| explained_by_xdp_drop(g));
        let mut findings = Vec::new();
        for groups in group_by(candidates, |g| (g.key.netns, g.key.device.clone(), g.first.ifindex)) {
            let g = groups[0];
            let location_mode = g.first.function.as_deref().and_then(xdp_drop_mode).unwrap_or("?");
            let program = groups
                .iter()
                .flat_map(|g| std::iter::once(&g.first).chain(g.samples.iter()))
                .filter_map(|d| d.xdp.as_ref().map(|x| (d.ts_ns, x)))
                .max_by_key(|(ts, _)| *ts)
                .map(|(_, x)| x);
            let drops: u64 = groups.iter().map(|g| g.count).sum();
            let aborted = aborted_on(state, g, program);
            let dropped = drops.saturating_sub(aborted);
            if dropped == 0 {
                // All of them aborted: `xdp-aborted` reports them.
                continue;
            }
            let device = g.key.device.clone().unwrap_or_else(|| {
                g.first.ifindex.map_or_else(|| "an unknown device".into(), |i| format!("ifindex {i}"))
            });
            let mode = program.map_or(location_mode, |p| p.mode.as_ref());
            let attach = attach_of(state, g, mode);
            let by = attach
                .map(|o| format!(", attached by {} (pid {})", o.request.actor.comm, o.request.actor.pid))
                .unwrap_or_default();
            let prog = describe(program);
            let mut flows: Vec<String> =
                groups.iter().filter_map(|g| g.first.flow.as_ref().map(super::flow_without_sport)).collect();
            flows.sort();
            flows.dedup();
            let shown = flows.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
            let more = if flows.len() > 3 { format!(" and {} more flow(s)", flows.len() - 3) } else { String::new() };
            let flow_part = if shown.is_empty() { String::new() } else { format!(": {shown}{more}") };
            let aborted_part =
                if aborted > 0 { format!(" ({aborted} more aborted: see xdp-aborted)") } else { String::new() };
            let summary = format!(
                "XDP program {prog} in {mode} mode on {device} (netns {}){by} dropped {dropped} packet(s) (XDP_DROP, freed in {}){aborted_part}{flow_part}",
                netns_label(g),
                g.key.function,
            );
            let in_ns = in_netns(g);
            let off = match mode {
                "generic" => "xdpgeneric off",
                _ => "xdpdrv off",
            };
            let show = program.map_or_else(
                || format!("`{in_ns}ip -d link show {device}` (its prog/xdp line) and `bpftool prog show`"),
                |p| format!("`bpftool prog show id {}` and `{in_ns}ip -d link show {device}`", p.prog_id),
            );
            let owner = attach.map_or_else(
                || {
                    "the agent that attached it (XDP firewalls such as xdp-filter, Cilium/Calico XDP, DDoS filters)"
                        .into()
                },
                |o| format!("{} (pid {}), which attached it", o.request.actor.comm, o.request.actor.pid),
            );
            let remediation = format!(
                "XDP drops these packets before the network stack sees them, so no firewall counter, socket or tcpdump on {device} shows them. If they should pass, fix the program's policy in {owner} (xdp-filter: `{in_ns}xdp-filter status` lists the filtered ports and addresses, `xdp-filter port --remove N` removes one); see {show}. To restore traffic now, detach it: `{in_ns}ip link set dev {device} {off}`."
            );
            let mut finding = finding_from_groups(self.id(), Severity::Warning, summary, &groups, remediation);
            finding.count = dropped;
            finding.actor = attach.map(|o| o.request.actor.clone());
            if let Some(o) = attach {
                finding.evidence.push(Event::LinkRequest(o.request.clone()));
            }
            findings.push(finding);
        }
        findings
    }
}

/// `xdpfilt_dny_udp (id 42, tag 5c3f…)`, or what is known of it.
fn describe(program: Option<&XdpAttachment>) -> String {
    match program {
        Some(p) => {
            let name = p.prog_name.as_deref().unwrap_or("(unnamed)");
            let tag = p.prog_tag.as_deref().map(|t| format!(", tag {t}")).unwrap_or_default();
            let runs = p.run_count.map(|n| format!(", {n} runs")).unwrap_or_default();
            let components =
                if p.components.is_empty() { String::new() } else { format!(" running {}", p.components.join(", ")) };
            format!("{name} (id {}{tag}{runs}){components}", p.prog_id)
        }
        // Detached before the drop was decoded, a namespace without a name to enter it by,
        // or a recorded session replayed offline.
        None => "(not read from the kernel)".into(),
    }
}

/// Packets aborted (XDP_ABORTED, failed redirects) on the group's device by its program:
/// the kernel frees those in the same place.
fn aborted_on(state: &Correlated, g: &DropGroup, program: Option<&XdpAttachment>) -> u64 {
    state
        .xdp_exceptions
        .iter()
        .filter(|x| x.netns == g.key.netns && (Some(x.ifindex) == g.first.ifindex || x.device == g.key.device))
        .filter(|x| program.is_none_or(|p| p.prog_id == x.prog_id))
        .map(|x| x.count)
        .sum()
}

/// The session's last successful netlink XDP attach to the group's device before its first
/// drop, in the mode that dropped (or with no mode flag).
fn attach_of<'a>(state: &'a Correlated, g: &DropGroup, mode: &str) -> Option<&'a LinkOutcome> {
    state
        .link_outcomes()
        .iter()
        .filter(|o| o.request.ts_ns <= g.first.ts_ns && o.errno() == Some(0))
        .filter(|o| o.request.xdp.as_ref().is_some_and(|x| x.fd >= 0 && (x.mode == mode || x.mode == "any")))
        .filter(|o| o.request.actor.netns == g.key.netns)
        .rfind(|o| match (o.request.ifindex, g.first.ifindex) {
            (Some(a), Some(b)) if a != 0 => a == b,
            _ => o.request.ifname.is_some() && o.request.ifname == g.key.device,
        })
}

#[cfg(test)]
mod tests {
    use crate::{
        analyze::{Analyzer, Finding, Severity},
        decode::{
            xdp::{XdpAttachment, XdpException},
            DropRecord, Event, Flow,
        },
        kernel::KernelSummary,
    };

    fn xdp_drop(function: &str, ts: u64, xdp: Option<XdpAttachment>) -> Event {
        Event::Drop(DropRecord {
            time: format!("t{ts}"),
            ts_ns: ts,
            cpu: 0,
            netns: Some(7),
            netns_name: Some("node-a".into()),
            pod: None,
            ifindex: Some(4),
            device: Some("eth9".into()),
            protocol: "ipv4".into(),
            flow: Some(Flow {
                l4: "udp".into(),
                src: "192.0.2.1".parse().unwrap(),
                dst: "192.0.2.2".parse().unwrap(),
                sport: Some(40000 + ts as u16),
                dport: Some(8123),
                icmp_type: None,
                icmp_code: None,
                tcp_flags: None,
            }),
            reason: Some("NOT_SPECIFIED".into()),
            reason_code: Some(2),
            reason_inferred: false,
            location: format!("{function}+0x2cc"),
            function: Some(function.into()),
            skb: format!("{ts:#x}"),
            task: None,
            packet_len: None,
            egress: None,
            xdp,
        })
    }

    fn prog(mode: &'static str) -> XdpAttachment {
        XdpAttachment {
            mode: mode.into(),
            prog_id: 321,
            prog_name: Some("xdpfilt_dny_udp".into()),
            prog_tag: Some("0123456789abcdef".into()),
            run_count: None,
            components: vec![],
        }
    }

    #[test]
    fn a_dispatcher_is_named_with_the_programs_it_runs() {
        let dispatcher = XdpAttachment {
            prog_name: Some("xdp_dispatcher".into()),
            components: vec!["xdpfilt_dny_udp (id 322)".into()],
            ..prog("native")
        };
        let found = findings(&[xdp_drop("veth_xdp_rcv_skb", 1, Some(dispatcher))]);
        assert!(
            found[0].summary.contains("xdp_dispatcher (id 321, tag 0123456789abcdef) running xdpfilt_dny_udp (id 322)"),
            "{}",
            found[0].summary
        );
    }

    fn findings(events: &[Event]) -> Vec<Finding> {
        let mut analyzer = Analyzer::new();
        events.iter().for_each(|e| analyzer.observe(e));
        let kernel =
            KernelSummary { release: "test".into(), btf: true, drop_reason_names: "btf".into(), kallsyms: true };
        analyzer.findings(&kernel).into_iter().filter(|f| f.rule == "xdp-drop").collect()
    }

    #[test]
    fn names_the_program_mode_device_and_flow_in_both_modes() {
        for (function, mode) in [("veth_xdp_rcv_skb", "native"), ("do_xdp_generic", "generic")] {
            let events: Vec<Event> = (1..=3).map(|ts| xdp_drop(function, ts, Some(prog(mode)))).collect();
            let found = findings(&events);
            assert_eq!(found.len(), 1, "{found:#?}");
            let f = &found[0];
            assert_eq!(f.severity, Severity::Warning);
            assert_eq!(f.count, 3);
            for part in ["xdpfilt_dny_udp", "id 321", &format!("{mode} mode"), "eth9", "node-a", "192.0.2.2:8123"] {
                assert!(f.summary.contains(part), "{part} missing: {}", f.summary);
            }
        }
    }

    #[test]
    fn drops_elsewhere_are_not_xdp_drops_and_aborts_belong_to_xdp_aborted() {
        assert!(findings(&[xdp_drop("ip_rcv_core", 1, None)]).is_empty());
        let aborted = Event::XdpException(XdpException {
            time: "t1".into(),
            ts_ns: 1,
            last_time: "t2".into(),
            netns: Some(7),
            netns_name: Some("node-a".into()),
            pod: None,
            ifindex: 4,
            device: Some("eth9".into()),
            prog_id: 321,
            prog_name: Some("xdpfilt_dny_udp".into()),
            action: "aborted".into(),
            count: 2,
        });
        let both = [xdp_drop("do_xdp_generic", 1, Some(prog("generic"))), xdp_drop("do_xdp_generic", 2, None)];
        assert!(findings(&[both[0].clone(), both[1].clone(), aborted.clone()]).is_empty());
        let three = [both[0].clone(), both[1].clone(), xdp_drop("do_xdp_generic", 3, None), aborted];
        let found = findings(&three);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].count, 1, "{}", found[0].summary);
        assert!(found[0].summary.contains("2 more aborted"), "{}", found[0].summary);
    }
}
