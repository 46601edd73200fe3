//! One file per diagnosis rule. Each says in its first lines what it detects and from
//! which evidence.

mod link_create_failed;
mod link_flapping;
mod link_kind_unsupported;
mod netfilter_drop;
mod no_listener;
mod packet_drop;
mod veth_mac_changed;

use std::collections::BTreeMap;

use super::{
    correlate::{DropGroup, LinkHistory, LinkOutcome},
    Finding, Place, Rule, Severity,
};
use crate::decode::Event;

/// Every rule, in the order their findings are computed.
pub fn all() -> Vec<Box<dyn Rule + Send>> {
    vec![
        Box::new(link_kind_unsupported::LinkKindUnsupported),
        Box::new(link_create_failed::LinkCreateFailed),
        Box::new(veth_mac_changed::VethMacChanged),
        Box::new(link_flapping::LinkFlapping),
        Box::new(no_listener::NoListener),
        Box::new(netfilter_drop::NetfilterDrop),
        Box::new(packet_drop::PacketDrop),
    ]
}

pub use link_flapping::MIN_DOWNS as MIN_FLAP_DOWNS;

/// Reasons that have a rule of their own; `packet-drop` leaves them alone.
pub(crate) const EXPLAINED_REASONS: [&str; 2] = [no_listener::REASON, netfilter_drop::REASON];

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
fn flow_without_sport(flow: &crate::decode::Flow) -> String {
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

/// `netns NAME` or `netns INODE`, for remediation commands.
pub(crate) fn netns_label(group: &DropGroup) -> String {
    match (&group.first.netns_name, group.first.netns) {
        (Some(name), _) => name.clone(),
        (None, Some(inode)) => inode.to_string(),
        _ => "?".into(),
    }
}

/// The command prefix that runs a command in the group's namespace.
pub(crate) fn in_netns(group: &DropGroup) -> String {
    match group.first.netns_name.as_deref() {
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
