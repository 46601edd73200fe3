//! `bridge-bypasses-netfilter`: the datapath proof that bridged traffic skipped netfilter.
//! A client connected to a Service address that was DNATed to a pod on the same bridge;
//! the pod's reply was bridged straight back without passing conntrack (br_netfilter off),
//! so it arrived from the pod's own address, found no socket, and the client reset it.
//!
//! Evidence: a NO_SOCKET drop (`skb:kfree_skb`) of a TCP reply (SYN-ACK) in the client's
//! namespace; the client's connection attempt to another address (`sock:inet_sock_set_state`
//! → SYN_SENT) and/or the DNAT rule to the replying address whose counters moved; the
//! bridge that carried it with br_netfilter off (bridge state at session end).

use std::net::IpAddr;

use super::{counter_event, flow_without_sport};
use crate::{
    analyze::{
        correlate::{Correlated, DropGroup},
        Finding, Place, Rule, Severity,
    },
    decode::{
        netfilter::{BridgeState, RuleCounter, TcpConnect},
        Event,
    },
    kernel::KernelSummary,
    probes::rule_counters::Verdict,
};

pub struct BridgeBypassesNetfilter;

/// One reply that came back from the NAT target instead of the address the client asked.
struct Bypass<'a> {
    group: &'a DropGroup,
    connect: Option<&'a TcpConnect>,
    dnat: Option<&'a RuleCounter>,
    bridge: Option<&'a BridgeState>,
    /// The address and port the client connected to (the Service).
    service: Option<(IpAddr, Option<u16>)>,
}

impl Rule for BridgeBypassesNetfilter {
    fn id(&self) -> &'static str {
        "bridge-bypasses-netfilter"
    }

    fn evaluate(&self, state: &Correlated, _kernel: &KernelSummary) -> Vec<Finding> {
        let bypasses: Vec<Bypass> = state
            .drop_groups()
            .into_iter()
            .filter(|g| g.key.reason.as_deref() == Some(super::no_listener::REASON) && super::is_reply(g))
            .filter_map(|g| bypass(state, g))
            .collect();
        let key = |b: &Bypass| {
            (b.bridge.map(|br| (br.netns, br.bridge.clone())), b.service, b.group.key.src, b.group.key.netns)
        };
        let mut groups: Vec<Vec<&Bypass>> = Vec::new();
        for b in &bypasses {
            match groups.iter_mut().find(|gs| key(gs[0]) == key(b)) {
                Some(gs) => gs.push(b),
                None => groups.push(vec![b]),
            }
        }
        groups.into_iter().map(|bs| self.finding(&bs)).collect()
    }
}

impl BridgeBypassesNetfilter {
    fn finding(&self, bs: &[&Bypass]) -> Finding {
        let b = bs[0];
        let g = b.group;
        let count: u64 = bs.iter().map(|b| b.group.count).sum();
        let (Some(pod), Some(client)) = (g.key.src, g.key.dst) else { unreachable!("checked in bypass()") };
        let pod_port = g.first.flow.as_ref().and_then(|f| f.sport);
        let endpoint = |a: IpAddr, p: Option<u16>| match (a, p) {
            (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
            (a, Some(p)) => format!("{a}:{p}"),
            (a, None) => a.to_string(),
        };
        let client_ns = g.first.netns_name.clone().or(g.key.netns.map(|n| n.to_string())).unwrap_or("?".into());
        let service = b.service.map(|(a, p)| endpoint(a, p)).unwrap_or_else(|| "a Service address".into());
        let dnat = b
            .dnat
            .map(|d| {
                format!(
                    " (DNAT to {} by {} in netns {})",
                    endpoint(pod, pod_port),
                    d.describe(),
                    d.netns_name.clone().unwrap_or(d.netns.to_string())
                )
            })
            .unwrap_or_default();
        let v6 = pod.is_ipv6();
        let via = match b.bridge {
            Some(br) => format!(
                "bridged on {} in netns {} without passing {} ({})",
                br.bridge,
                br.netns_name.clone().unwrap_or(br.netns.to_string()),
                if v6 { "ip6tables" } else { "iptables" },
                if !br.br_netfilter_loaded {
                    "br_netfilter not loaded".to_string()
                } else {
                    format!("net.bridge.bridge-nf-call-{}=0", if v6 { "ip6tables" } else { "iptables" })
                }
            ),
            None => "bridged back without passing netfilter".to_string(),
        };
        let summary = format!(
            "{count} reply packet(s) from {} reached {client} in netns {client_ns} without reverse NAT: the client connected to {service}{dnat}, the reply was {via}, so it found no socket (NO_SOCKET) and the client reset it; connections to the Service time out or are reset",
            endpoint(pod, pod_port)
        );
        let mut evidence: Vec<Event> =
            bs.iter().flat_map(|b| b.group.samples.iter().cloned().map(Event::Drop)).collect();
        evidence.truncate(3);
        evidence.extend(b.connect.cloned().map(Event::TcpConnect));
        evidence.extend(b.dnat.map(counter_event));
        evidence.extend(b.bridge.cloned().map(Event::Bridge));
        let ns = super::in_named_netns(b.bridge.and_then(|br| br.netns_name.as_deref()));
        let table = if v6 { "ip6tables" } else { "iptables" };
        let remediation = format!(
            "Make bridged traffic pass netfilter so conntrack can reverse the Service NAT: `modprobe br_netfilter` (persist in /etc/modules-load.d/), then `{ns}sysctl -w net.bridge.bridge-nf-call-{table}=1` (persist in /etc/sysctl.d/). Alternatives: kube-proxy's `--masquerade-all`, or a CNI that does not bridge pods (routed or eBPF datapath)."
        );
        let mut flows: Vec<String> =
            bs.iter().filter_map(|b| b.group.first.flow.as_ref().map(flow_without_sport)).collect();
        flows.sort();
        flows.dedup();
        Finding {
            rule: self.id(),
            severity: Severity::Error,
            summary,
            place: Place {
                netns: b.bridge.map(|br| br.netns).or(g.key.netns),
                netns_name: b.bridge.map_or(g.first.netns_name.clone(), |br| br.netns_name.clone()),
                pod: None,
                device: b.bridge.map(|br| br.bridge.clone()).or(g.key.device.clone()),
                location: Some(g.first.location.clone()),
            },
            flows,
            destination: b.service.map(|(a, _)| a),
            count,
            first_time: g.first.time.clone(),
            last_time: bs.iter().map(|b| b.group.last_time.clone()).max().unwrap_or_default(),
            actor: None,
            netfilter: b.dnat.map(super::verdict_of),
            evidence,
            remediation,
        }
    }
}

/// Whether a dropped reply is a bypassed NAT reply, with what shows it.
fn bypass<'a>(state: &'a Correlated, g: &'a DropGroup) -> Option<Bypass<'a>> {
    let flow = g.first.flow.as_ref()?;
    let (pod, client, client_port) = (flow.src, flow.dst, flow.dport?);
    let connect = state.connect_from(g.key.netns, client, client_port);
    // The client asked for another address or port than the one that answered.
    let asked = connect.and_then(|c| c.flow.as_ref()).map(|f| (f.dst, f.dport));
    let mismatch = asked.filter(|(a, p)| *a != pod || *p != flow.sport);
    let dnat = state.rule_counters.iter().find(|c| {
        matches!(&c.kind, Verdict::Dnat { to: Some(to) } if dnat_target_is(to, pod))
            && mismatch.is_none_or(|(a, p)| c.matches.matches(Some("tcp"), None, Some(a), p))
    });
    if mismatch.is_none() && dnat.is_none() {
        return None;
    }
    let service = mismatch.or_else(|| {
        let d = dnat?;
        let dst = d.matches.dst.as_deref()?.split('/').next()?.parse().ok()?;
        Some((dst, d.matches.dport))
    });
    let v6 = pod.is_ipv6();
    let bridge_ns = dnat.map(|d| d.netns);
    let bridge = state
        .bridges
        .iter()
        .filter(|b| b.packets > 0 && bridge_ns.is_none_or(|n| n == b.netns) && !b.calls_netfilter(v6))
        .max_by_key(|b| b.packets);
    // With bridge state known, a bridge that does call netfilter means another cause.
    if !state.bridges.is_empty() && bridge.is_none() {
        return None;
    }
    Some(Bypass { group: g, connect, dnat, bridge, service })
}

/// `10.244.0.3:80`, `10.244.0.3`, `[fd00::3]:80`, `fd00::3`: is it `addr`?
fn dnat_target_is(to: &str, addr: IpAddr) -> bool {
    let host = match to.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None if to.matches(':').count() == 1 => to.split(':').next().unwrap_or(to),
        None => to,
    };
    let host = host.split('-').next().unwrap_or(host);
    host.parse::<IpAddr>().is_ok_and(|a| a == addr)
}

#[cfg(test)]
mod tests {
    use super::dnat_target_is;

    #[test]
    fn dnat_targets() {
        assert!(dnat_target_is("10.244.0.3:80", "10.244.0.3".parse().unwrap()));
        assert!(dnat_target_is("10.244.0.3", "10.244.0.3".parse().unwrap()));
        assert!(dnat_target_is("[fd00:244::3]:80", "fd00:244::3".parse().unwrap()));
        assert!(dnat_target_is("fd00:244::3", "fd00:244::3".parse().unwrap()));
        assert!(!dnat_target_is("10.244.0.30:80", "10.244.0.3".parse().unwrap()));
    }
}
