//! `br-netfilter-missing`: bridges that carried traffic in a namespace where bridged frames
//! skip iptables/nftables, because br_netfilter is not loaded or
//! `net.bridge.bridge-nf-call-iptables` (or `-ip6tables`) is 0 there and the bridge does not
//! set `nf_call_iptables` itself. kube-proxy's Service NAT and network policies then do not
//! apply to pod-to-pod traffic on that bridge (field report 3).
//!
//! Evidence: the bridges' state read from the namespace at the start and the end of the
//! session (rtnetlink link dump with port counters, the namespace's `net.bridge.*` sysctls).
//! Also the consequence a NATed hairpin shows: with bridged frames skipping netfilter, a pod's
//! call to a Service or published port whose backend sits on the same bridge is routed by the
//! node back out of that bridge, so the node sends ICMP redirects that the NAT core drops
//! (netfilter-drop's `nat_core_redirect`); they are counted here, not as netfilter drops.

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
            .map(|b| {
                let mut f = finding(self.id(), b);
                if !b.calls_netfilter(false) {
                    add_redirects(&mut f, state, b);
                }
                f
            })
            .collect()
    }
}

/// The node's dropped ICMP redirects in the bridge's namespace, folded into its finding.
fn add_redirects(f: &mut Finding, state: &Correlated, b: &BridgeState) {
    let groups: Vec<_> = state
        .drop_groups()
        .into_iter()
        .filter(|g| g.key.netns == Some(b.netns) && super::netfilter_drop::nat_core_redirect(state, g))
        .collect();
    if groups.is_empty() {
        return;
    }
    let count: u64 = groups.iter().map(|g| g.count).sum();
    let mut flows: Vec<String> =
        groups.iter().filter_map(|g| g.first.flow.as_ref().map(super::flow_without_sport)).collect();
    flows.sort();
    flows.dedup();
    f.summary.push_str(&format!(
        "; the node routed such traffic back out of the bridge and sent {count} ICMP redirect(s) about NATed connections, which the NAT core dropped as it always does (not a rule's drop)"
    ));
    f.flows.extend(flows);
    f.evidence.extend(groups.iter().flat_map(|g| g.samples.iter().cloned().map(Event::Drop)));
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
