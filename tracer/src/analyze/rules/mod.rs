//! One file per diagnosis rule. Each says in its first lines what it detects and from
//! which evidence.

mod br_netfilter_missing;
mod bridge_bypasses_netfilter;
mod link_create_failed;
mod link_flapping;
mod link_kind_unsupported;
mod netfilter_drop;
mod no_listener;
mod packet_drop;
mod reject_by_rule;
mod tunnel_mtu_exceeded;
mod veth_mac_changed;
mod xdp_aborted;
mod xdp_attach_failed;
mod xdp_drop;

use std::collections::BTreeMap;

use super::{
    correlate::{Correlated, DropGroup, LinkHistory, LinkOutcome},
    Finding, NetfilterVerdict, Place, Rule, Severity,
};
use crate::{
    decode::netfilter::{IcmpError, NfVerdict, RuleCounter, TcpReset},
    decode::Event,
    probes::rule_counters::Verdict,
};

/// Every rule, in the order their findings are computed.
pub fn all() -> Vec<Box<dyn Rule + Send>> {
    vec![
        Box::new(link_kind_unsupported::LinkKindUnsupported),
        Box::new(link_create_failed::LinkCreateFailed),
        Box::new(veth_mac_changed::VethMacChanged),
        Box::new(link_flapping::LinkFlapping),
        Box::new(no_listener::NoListener),
        Box::new(reject_by_rule::RejectByRule),
        Box::new(netfilter_drop::NetfilterDrop),
        Box::new(bridge_bypasses_netfilter::BridgeBypassesNetfilter),
        Box::new(br_netfilter_missing::BrNetfilterMissing),
        Box::new(xdp_attach_failed::XdpAttachFailed),
        Box::new(xdp_aborted::XdpAborted),
        Box::new(xdp_drop::XdpDrop),
        Box::new(tunnel_mtu_exceeded::TunnelMtuExceeded),
        Box::new(packet_drop::PacketDrop),
    ]
}

pub use link_flapping::MIN_DOWNS as MIN_FLAP_DOWNS;

/// Reasons that have a rule of their own; `packet-drop` leaves them alone.
pub(crate) const EXPLAINED_REASONS: [&str; 3] =
    [no_listener::REASON, netfilter_drop::REASON, tunnel_mtu_exceeded::REASON];

/// Builds one finding from drop groups that share a place.
pub(crate) fn finding_from_groups(
    rule: &'static str,
    severity: Severity,
    summary: String,
    groups: &[&DropGroup],
    remediation: String,
) -> Finding {
    let first = groups.iter().min_by_key(|g| g.first.ts_ns).expect("at least one group");
    let last_time = groups.iter().map(|g| g.last_time.clone()).max().unwrap_or_default();
    let count = groups.iter().map(|g| g.count).sum();
    let mut flows: Vec<String> = groups.iter().filter_map(|g| g.first.flow.as_ref().map(flow_without_sport)).collect();
    flows.sort();
    flows.dedup();
    let mut evidence: Vec<Event> = groups.iter().flat_map(|g| g.samples.iter().cloned().map(Event::Drop)).collect();
    evidence.sort_by_key(Event::ts_ns);
    evidence.truncate(super::correlate::EVIDENCE_PER_GROUP * 2);
    Finding {
        rule,
        severity,
        summary,
        place: Place {
            netns: first.first.netns,
            netns_name: first.first.netns_name.clone(),
            pod: None,
            device: first.first.device.clone(),
            location: Some(first.first.location.clone()),
        },
        flows,
        destination: first.key.dst,
        count,
        first_time: first.first.time.clone(),
        last_time,
        actor: None,
        netfilter: None,
        evidence,
        remediation,
    }
}

/// `udp 10.0.0.1 > 10.0.0.2:9999`: the client's port changes between retries.
pub(crate) fn flow_without_sport(flow: &crate::decode::Flow) -> String {
    let mut f = flow.clone();
    f.sport = None;
    f.tcp_flags = None;
    f.to_string()
}

/// Groups drop groups by a key, keeping first-seen order of keys.
pub(crate) fn group_by<'a, K: Ord + Clone>(
    groups: impl Iterator<Item = &'a DropGroup>,
    key: impl Fn(&DropGroup) -> K,
) -> Vec<Vec<&'a DropGroup>> {
    let mut map: BTreeMap<K, Vec<&DropGroup>> = BTreeMap::new();
    for g in groups {
        map.entry(key(g)).or_default().push(g);
    }
    let mut out: Vec<Vec<&DropGroup>> = map.into_values().collect();
    out.sort_by_key(|gs| gs.iter().map(|g| g.first.ts_ns).min().unwrap_or(0));
    out
}

/// Said in summaries when the kernel reported no drop reason and it was inferred.
pub(crate) fn inferred_note(groups: &[&DropGroup]) -> &'static str {
    if groups.iter().any(|g| g.first.reason_inferred) {
        " [reason inferred from where the packets were freed: this kernel or backend reports no drop reasons]"
    } else {
        ""
    }
}

/// The group's namespace for summaries: its name or inode, and its pod where known
/// (`cni-5f2a… (pod kube-system/coredns-5d78c9869d-8xq2p)`).
pub(crate) fn netns_label(group: &DropGroup) -> String {
    let netns = match (&group.first.netns_name, group.first.netns) {
        (Some(name), _) => name.clone(),
        (None, Some(inode)) => inode.to_string(),
        _ => "?".into(),
    };
    match &group.first.pod {
        Some(pod) => format!("{netns} (pod {pod})"),
        None => netns,
    }
}

/// The command prefix that runs a command in the group's namespace.
pub(crate) fn in_netns(group: &DropGroup) -> String {
    in_named_netns(group.first.netns_name.as_deref())
}

/// The command prefix that runs a command in the namespace named `name` (none for the
/// host's or an unnamed one).
pub(crate) fn in_named_netns(name: Option<&str>) -> String {
    match name {
        Some("host") | None => String::new(),
        Some(name) => format!("ip netns exec {name} "),
    }
}

/// Builds one finding from link requests of one actor (the first is the example).
pub(crate) fn finding_from_links(
    rule: &'static str,
    severity: Severity,
    summary: String,
    outcomes: &[&LinkOutcome],
    remediation: String,
) -> Finding {
    let first = outcomes[0];
    let request = &first.request;
    let mut evidence = vec![Event::LinkRequest(request.clone())];
    evidence.extend(first.message.clone().map(Event::KernelMessage));
    evidence.extend(first.module_requests.iter().cloned().map(Event::Module));
    evidence.sort_by_key(Event::ts_ns);
    evidence.extend(first.ack.clone().map(Event::NetlinkAck));
    Finding {
        rule,
        severity,
        summary,
        place: Place {
            netns: request.actor.netns,
            netns_name: request.actor.netns_name.clone(),
            pod: None,
            device: request.ifname.clone(),
            location: None,
        },
        flows: vec![],
        destination: None,
        count: outcomes.len() as u64,
        first_time: request.time.clone(),
        last_time: outcomes.last().map(|o| o.request.time.clone()).unwrap_or_default(),
        actor: Some(request.actor.clone()),
        netfilter: None,
        evidence,
        remediation,
    }
}

/// "3 attempts in 22.1 s (every 11.0 s)": the retry pattern of a crash-looping agent.
pub(crate) fn attempts(outcomes: &[&LinkOutcome]) -> String {
    let n = outcomes.len();
    let span = outcomes.last().map(|l| l.request.ts_ns.saturating_sub(outcomes[0].request.ts_ns)).unwrap_or(0);
    let secs = span as f64 / 1e9;
    match n {
        1 => "1 attempt".into(),
        _ => format!("{n} attempts in {secs:.1} s (every {:.1} s)", secs / (n - 1) as f64),
    }
}

/// Builds a finding about one link's history (monitor states joined with requests).
pub(crate) fn finding_from_history(
    rule: &'static str,
    severity: Severity,
    summary: String,
    history: &LinkHistory,
    actor: Option<crate::decode::links::Actor>,
    remediation: String,
) -> Finding {
    Finding {
        rule,
        severity,
        summary,
        place: Place {
            netns: Some(history.netns),
            netns_name: history.netns_name.clone(),
            pod: None,
            device: history.ifname.clone(),
            location: None,
        },
        flows: vec![],
        destination: None,
        count: (history.mac_changes.len() + history.downs.len()) as u64,
        first_time: history.first_time.clone(),
        last_time: history
            .downs
            .iter()
            .map(|d| &d.time)
            .chain(history.mac_changes.iter().map(|c| &c.time))
            .max()
            .cloned()
            .unwrap_or_else(|| history.first_time.clone()),
        actor,
        netfilter: None,
        evidence: history.evidence.clone(),
        remediation,
    }
}

/// Rule counters in the group's namespace and address family whose verdict `want`s and
/// whose matches fit the group's flow, most packets first.
pub(crate) fn matching_counters<'a>(
    state: &'a Correlated,
    group: &DropGroup,
    want: impl Fn(&Verdict) -> bool,
) -> Vec<&'a RuleCounter> {
    let v6 = group.first.protocol == "ipv6";
    let families: &[&str] = if v6 { &["ip6", "inet"] } else { &["ip", "inet"] };
    let mut found: Vec<&RuleCounter> = state
        .rule_counters
        .iter()
        // Without BTF drops have no namespace: counters from any namespace may explain them.
        .filter(|c| group.key.netns.is_none_or(|n| n == c.netns))
        .filter(|c| families.contains(&c.family.as_str()) && want(&c.kind))
        .filter(|c| c.matches.matches(group.key.l4.as_deref(), group.key.src, group.key.dst, group.key.dport))
        .collect();
    found.sort_by_key(|c| std::cmp::Reverse(c.packets));
    found
}

/// The finding's view of a rule counter.
pub(crate) fn verdict_of(counter: &RuleCounter) -> NetfilterVerdict {
    NetfilterVerdict {
        source: "rule-counters".into(),
        backend: counter.backend.to_string(),
        family: counter.family.clone(),
        table: counter.table.clone(),
        chain: counter.chain.clone(),
        hook: (!counter.hooks.is_empty()).then(|| counter.hooks.join("/")),
        rule: counter.rule.clone(),
        verdict: counter.verdict.clone(),
        packets: counter.packets,
    }
}

/// How to remove or narrow a rule, in its own tool's words.
pub(crate) fn how_to_remove(counter: &RuleCounter, in_ns: &str) -> String {
    let tool = match (counter.backend.as_ref(), counter.family.as_str()) {
        ("nftables", _) => "nft",
        ("iptables-legacy", "ip6") => "ip6tables-legacy",
        ("iptables-legacy", _) => "iptables-legacy",
        (_, "ip6") => "ip6tables",
        _ => "iptables",
    };
    match (&counter.rule, tool) {
        (Some(_), "nft") => format!(
            "find its handle with `{in_ns}nft -a list chain {} {} {}` and remove it with `{in_ns}nft delete rule {} {} {} handle N`",
            counter.family, counter.table, counter.chain, counter.family, counter.table, counter.chain
        ),
        (Some(rule), _) => match rule.strip_prefix("-A ") {
            Some(spec) => format!("remove it with `{in_ns}{tool} -t {} -D {spec}`", counter.table),
            None => format!("remove it with `{in_ns}{tool} -t {} -D …`", counter.table),
        },
        (None, "nft") => format!(
            "the chain's policy is {}: change it with `{in_ns}nft add chain {} {} {} '{{ policy accept; }}'` or add an accept rule for this traffic",
            counter.verdict, counter.family, counter.table, counter.chain
        ),
        (None, _) => format!(
            "the chain's policy is {}: add an ACCEPT rule for this traffic (`{in_ns}{tool} -t {} -I {} …`) or change the policy (`{tool} -P {} ACCEPT`)",
            counter.verdict, counter.table, counter.chain, counter.chain
        ),
    }
}

/// Evidence events for a rule counter.
pub(crate) fn counter_event(counter: &RuleCounter) -> Event {
    Event::RuleCounter(counter.clone())
}

/// What answered netfilter-dropped packets, when something did: the REJECT rule whose
/// counters moved, the ICMP error the kernel sent about them, or the RST their sender got.
pub(crate) struct Refusal<'a> {
    pub rule: Option<&'a RuleCounter>,
    pub icmp: Option<&'a IcmpError>,
    pub client_reset: Option<&'a TcpReset>,
}

pub(crate) fn refusal<'a>(state: &'a Correlated, g: &DropGroup) -> Option<Refusal<'a>> {
    let rule = matching_counters(state, g, |v| matches!(v, Verdict::Reject { .. })).into_iter().next();
    let (Some(src), Some(dst)) = (g.key.src, g.key.dst) else {
        // No headers (no BTF): a REJECT whose counters moved is the only answer to go by.
        return rule.map(|rule| Refusal { rule: Some(rule), icmp: None, client_reset: None });
    };
    let icmp = state.icmp_errors.iter().find(|i| {
        i.netns == g.key.netns
            && i.flow
                .as_ref()
                .is_some_and(|f| f.src == src && f.dst == dst && (f.dport.is_none() || f.dport == g.key.dport))
    });
    // The RST the REJECT target sent (kprobe on nf_send_reset*: from the dropped packet's
    // destination back to its source), or the one the client's socket received (its local
    // end = the dropped packet's source).
    let client_reset = state.resets.iter().find(|r| {
        r.flow.as_ref().is_some_and(|f| match r.direction.as_ref() {
            "received" => f.src == src && f.dst == dst && f.dport == g.key.dport,
            _ => r.by_reject && f.src == dst && f.dst == src && f.sport == g.key.dport,
        })
    });
    (rule.is_some() || icmp.is_some() || client_reset.is_some()).then_some(Refusal { rule, icmp, client_reset })
}

/// A TCP packet with ACK set: a reply or data, not a connection attempt.
pub(crate) fn is_reply(g: &DropGroup) -> bool {
    g.key.l4.as_deref() == Some("tcp")
        && g.first.flow.as_ref().and_then(|f| f.tcp_flags.as_deref()).is_some_and(|flags| flags.contains("ACK"))
}

/// The DROP verdict the kernel itself reported for the group's packets (kprobes on
/// `nft_do_chain`/`ipt_do_table`), if one was seen.
pub(crate) fn kernel_verdict<'a>(state: &'a Correlated, g: &DropGroup) -> Option<&'a NfVerdict> {
    state.nf_verdicts.iter().find(|v| {
        v.netns == g.key.netns
            && v.flow.as_ref().is_some_and(|f| {
                Some(f.src) == g.key.src
                    && Some(f.dst) == g.key.dst
                    && f.dport == g.key.dport
                    && f.l4.as_str() == g.key.l4.as_deref().unwrap_or("")
            })
    })
}

/// The finding's view of a kernel verdict: table, base chain and hook, no rule.
pub(crate) fn verdict_from_kernel(v: &NfVerdict, packets: u64) -> NetfilterVerdict {
    NetfilterVerdict {
        source: v.origin.clone(),
        backend: if v.origin.starts_with("nft_") { "nf_tables" } else { "iptables-legacy" }.into(),
        family: v.family.clone(),
        table: v.table.clone(),
        chain: v.chain.clone().unwrap_or_default(),
        hook: v.hook.clone(),
        rule: None,
        verdict: v.verdict.to_string(),
        packets,
    }
}

/// `table inet dptlab chain input (hook input)`, for summaries.
pub(crate) fn describe_kernel_verdict(v: &NfVerdict) -> String {
    let chain = v.chain.as_deref().map(|c| format!(" chain {c}")).unwrap_or_default();
    let hook = v.hook.as_deref().map(|h| format!(" (hook {h})")).unwrap_or_default();
    format!("{} table {} {}{chain}{hook}", v.origin, v.family, v.table)
}

#[cfg(test)]
mod link_tests;
#[cfg(test)]
mod tests;
