//! `br-netfilter-missing`: bridges that carried traffic in a namespace where bridged frames
//! skip iptables/nftables, because br_netfilter is not loaded or
//! `net.bridge.bridge-nf-call-iptables` (or `-ip6tables`) is 0 there and the bridge does not
//! set `nf_call_iptables` itself. kube-proxy's Service NAT and network policies then do not
//! apply to pod-to-pod traffic on that bridge (field report 3).
//!
//! Evidence: the bridges' state read from the namespace at the start and the end of the
//! session (rtnetlink link dump with port counters, the namespace's `net.bridge.*` sysctls).

use crate::{
    analyze::{correlate::Correlated, Finding, Place, Rule, Severity},
    decode::{netfilter::BridgeState, Event},
    kernel::KernelSummary,
};

pub struct BrNetfilterMissing;

impl Rule for BrNetfilterMissing {
    fn id(&self) -> &'static str {
        "br-netfilter-missing"
    }

    fn evaluate(&self, state: &Correlated, _kernel: &KernelSummary) -> Vec<Finding> {
        state
            .bridges
            .iter()
            // IPv4 bridged past iptables is the failure; IPv6 alone (ip6tables off, or no
            // IPv6 sysctl at all) only matters on IPv6 clusters and is reported as info.
            .filter(|b| b.packets > 0 && (!b.calls_netfilter(false) || b.call_ip6tables == Some(false)))
            .map(|b| finding(self.id(), b))
            .collect()
    }
}

fn finding(rule: &'static str, b: &BridgeState) -> Finding {
    let ns_label = b.netns_name.clone().unwrap_or_else(|| b.netns.to_string());
    let in_ns = super::in_named_netns(b.netns_name.as_deref());
    let (why, fix) = if !b.br_netfilter_loaded {
        (
            "br_netfilter is not loaded (no /proc/sys/net/bridge)".to_string(),
            format!(
                "Load it: `modprobe br_netfilter`, and persist it (`echo br_netfilter > /etc/modules-load.d/k8s.conf`); then set `{in_ns}sysctl -w net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1` and persist it in /etc/sysctl.d/. Without the module the kernel has no such sysctl (\"stat /proc/sys/net/bridge/bridge-nf-call-iptables: no such file or directory\")."
            ),
        )
    } else {
        let off: Vec<&str> = [("bridge-nf-call-iptables", false), ("bridge-nf-call-ip6tables", true)]
            .into_iter()
            .filter(|(_, v6)| !b.calls_netfilter(*v6))
            .map(|(name, _)| name)
            .collect();
        (
            format!("net.bridge.{} = 0 in this namespace", off.join(" and net.bridge.")),
            format!(
                "Turn it on: `{in_ns}sysctl -w {}` and persist it in /etc/sysctl.d/99-kubernetes.conf (or set the bridge's own option: `{in_ns}ip link set {} type bridge nf_call_iptables 1 nf_call_ip6tables 1`). Since 5.3 the sysctl is per network namespace.",
                off.iter().map(|n| format!("net.bridge.{n}=1")).collect::<Vec<_>>().join(" "),
                b.bridge
            ),
        )
    };
    let severity = if b.calls_netfilter(false) { Severity::Info } else { Severity::Warning };
    Finding {
        rule,
        severity,
        summary: format!(
            "bridge {} in netns {ns_label} carried {} packet(s) that iptables/nftables never saw: {why}; Service NAT (kube-proxy) and network policies do not apply to traffic bridged between its ports ({})",
            b.bridge,
            b.packets,
            b.ports.join(", ")
        ),
        place: Place {
            netns: Some(b.netns),
            netns_name: b.netns_name.clone(),
            pod: None,
            device: Some(b.bridge.clone()),
            location: None,
        },
        flows: vec![],
        destination: None,
        count: b.packets,
        first_time: b.time.clone(),
        last_time: b.time.clone(),
        actor: None,
        netfilter: None,
        evidence: vec![Event::Bridge(b.clone())],
        remediation: fix,
    }
}
