//! Degraded verification, for kernels that cannot show everything a scenario's full check
//! asks for (no BTF: drops, resets and ICMP errors without namespace, device or packet
//! headers; link and XDP requests without their actor's namespace). A degraded check still
//! checks everything such a kernel does show (the rule, the drop reason and where the packets
//! died, the port where an event carries one, the actor) and ties every finding it accepts
//! to the scenario's own activity: the lab's traffic thread (pid of this process, its comm
//! `lab-<role>`), the processes the lab started, the scenario's trigger window, its protocols.
//! A finding of the right rule caused by anything else on the machine never satisfies it.
//! What it cannot check is listed (`unchecked`), and the lab result says `"degraded": true`.

use std::{fmt, net::IpAddr};

use crate::{
    analyze::Finding,
    decode::{DropRecord, Event, Task},
    probes::HookStatus,
};

/// What this session's hooks could not show, from their coverage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Blind {
    /// Drops, TCP resets and ICMP errors carry no namespace, device or packet headers (the
    /// drops or netfilter family's `device_and_netns` is false).
    pub packets: bool,
    /// Link and XDP requests carry neither the actor's namespace nor its parent, so devices
    /// named by ifindex only cannot be named either (the links family's
    /// `actor_netns_and_parent` is false).
    pub actors: bool,
    /// XDP exceptions carry a program id and an ifindex only (the xdp family's
    /// `exception_places` is false).
    pub xdp_places: bool,
}

impl Blind {
    pub fn of(hooks: &[HookStatus]) -> Self {
        let lacks = |family: &str, key: &str| hooks.iter().any(|h| h.family == family && h.coverage[key] == false);
        Self {
            packets: lacks("drops", "device_and_netns") || lacks("netfilter", "device_and_netns"),
            actors: lacks("links", "actor_netns_and_parent"),
            xdp_places: lacks("xdp", "exception_places"),
        }
    }

    pub fn any(self) -> bool {
        self.packets || self.actors || self.xdp_places
    }
}

/// The outcome of a degraded check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Degraded {
    /// Why the findings do not explain the scenario's own failure; empty when they do.
    pub problems: Vec<String>,
    /// What could not be checked on this kernel, and why.
    pub unchecked: Vec<String>,
}

impl Degraded {
    pub fn not_checked(&mut self, what: impl Into<String>) {
        let what = what.into();
        if !self.unchecked.contains(&what) {
            self.unchecked.push(what);
        }
    }

    pub fn extend(&mut self, other: Degraded) {
        self.problems.extend(other.problems);
        for what in other.unchecked {
            self.not_checked(what);
        }
    }
}

/// Kept events of the lab process per scenario: far more than any scenario sends.
const MAX_OWN_EVENTS: usize = 4096;

/// The scenario's own activity as the kernel showed it.
#[derive(Debug, Clone, Default)]
pub struct Own {
    /// This (the lab's) process: its threads send the scenario's traffic.
    pub pid: u32,
    /// CLOCK_MONOTONIC nanoseconds, the kernel events' clock: from the start of the trigger
    /// to the end of the time the lab waits for the last events.
    pub window: (u64, u64),
    /// Drops, TCP resets and ICMP errors in the context of this process's threads, in
    /// arrival order; at most `MAX_OWN_EVENTS`.
    pub events: Vec<Event>,
    /// Events of this process beyond `MAX_OWN_EVENTS`, not kept.
    pub unkept: u64,
    /// The processes the lab started during the trigger (actors such as `flanneld`).
    pub actor_pids: Vec<u32>,
}

impl Own {
    pub fn new(pid: u32) -> Self {
        Self { pid, ..Self::default() }
    }

    /// Keeps `event` if it happened in the context of one of this process's threads.
    pub fn observe(&mut self, event: &Event) {
        let task = match event {
            Event::Drop(d) => d.task.as_ref(),
            Event::TcpReset(r) => r.task.as_ref(),
            Event::IcmpError(i) => i.task.as_ref(),
            _ => None,
        };
        if task.is_none_or(|t| t.pid != self.pid) {
            return;
        }
        if self.events.len() < MAX_OWN_EVENTS {
            self.events.push(event.clone());
        } else {
            self.unkept += 1;
        }
    }

    pub fn in_window(&self, ts_ns: u64) -> bool {
        (self.window.0..=self.window.1).contains(&ts_ns)
    }

    /// Whether `pid` is a process the lab started during the trigger.
    pub fn is_actor(&self, pid: u32) -> bool {
        self.actor_pids.contains(&pid)
    }

    /// Whether an event in the context of `task` at `ts_ns` is the lab thread `thread`'s,
    /// during the trigger.
    fn by_thread(&self, task: Option<&Task>, ts_ns: u64, thread: &str) -> bool {
        task.is_some_and(|t| t.pid == self.pid && t.comm == thread) && self.in_window(ts_ns)
    }

    /// Drops in the context of lab thread `thread` during the trigger.
    pub fn drops<'a>(&'a self, thread: &'a str) -> impl Iterator<Item = &'a DropRecord> + 'a {
        self.events.iter().filter_map(move |e| match e {
            Event::Drop(d) if self.by_thread(d.task.as_ref(), d.ts_ns, thread) => Some(d),
            _ => None,
        })
    }

    /// The flows of the kernel's answers (ICMP errors, TCP resets) in the context of lab
    /// thread `thread` during the trigger: the packets' addresses where the drops have none.
    fn answer_flows<'a>(&'a self, thread: &'a str) -> impl Iterator<Item = &'a crate::decode::Flow> + 'a {
        self.events.iter().filter_map(move |e| match e {
            Event::IcmpError(i) if self.by_thread(i.task.as_ref(), i.ts_ns, thread) => i.flow.as_ref(),
            Event::TcpReset(r) if self.by_thread(r.task.as_ref(), r.ts_ns, thread) => r.flow.as_ref(),
            _ => None,
        })
    }

    /// `lab-client (pid 123) between 12.345 s and 13.456 s`, for problems.
    fn describe(&self, thread: &str) -> String {
        format!(
            "thread {thread} of the lab (pid {}) between {:.3} s and {:.3} s",
            self.pid,
            self.window.0 as f64 / 1e9,
            self.window.1 as f64 / 1e9
        )
    }
}

/// Drops a scenario's own traffic must show (or must not).
#[derive(Debug, Clone, Copy)]
pub struct ExpectDrop {
    /// The drop record's protocol: `ipv4`, `ipv6`.
    pub protocol: &'static str,
    /// Drop reasons, any of (kernels before 5.17 report none: then the function decides).
    pub reasons: &'static [&'static str],
    /// Functions where the packets were freed, any of.
    pub functions: &'static [&'static str],
}

impl ExpectDrop {
    fn matches(&self, d: &DropRecord) -> bool {
        d.protocol == self.protocol
            && d.function.as_deref().is_some_and(|f| self.functions.contains(&f))
            && d.reason.as_deref().is_none_or(|r| self.reasons.contains(&r))
    }
}

impl fmt::Display for ExpectDrop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} drop of {} traffic at {}", self.reasons.join("/"), self.protocol, self.functions.join("/"))
    }
}

/// The destination the scenario's traffic went to, as the kernel's answer (ICMP error, TCP
/// reset) shows it where the drops carry no headers.
#[derive(Debug, Clone, Copy)]
pub struct ExpectAnswer {
    pub dst: IpAddr,
    /// None where the answer carries no ports (ICMP "fragmentation needed" of a ping).
    pub port: Option<u16>,
}

impl ExpectAnswer {
    fn matches(&self, flow: &crate::decode::Flow) -> bool {
        // An answer to the packet (ICMP error: its addresses), or a reset sent from the
        // destination (its own addresses) or received from it (the client socket's).
        (flow.dst == self.dst && self.port.is_none_or(|p| flow.dport == Some(p)))
            || (flow.src == self.dst && self.port.is_none_or(|p| flow.sport == Some(p)))
    }
}

impl fmt::Display for ExpectAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.dst, self.port) {
            (IpAddr::V6(a), Some(p)) => write!(f, "[{a}]:{p}"),
            (a, Some(p)) => write!(f, "{a}:{p}"),
            (a, None) => write!(f, "{a}"),
        }
    }
}

/// A degraded check of a scenario whose failure is drops of its own traffic: the finding of
/// `rule` must cover drops that the lab's traffic thread `thread` caused during the trigger,
/// with the expected reasons, where the packets died and their protocols.
#[derive(Debug, Clone)]
pub struct DropCheck<'a> {
    pub rule: &'static str,
    /// The comm of the lab thread that sends the scenario's traffic (`lab-client`).
    pub thread: &'a str,
    /// Each must be seen at least once.
    pub drops: &'a [ExpectDrop],
    /// None may be seen (a reset sent by a rule is not a missing listener).
    pub never: &'a [ExpectDrop],
    /// Where the kernel answers the packets, where they went (checked where the answer shows it).
    pub answers: &'a [ExpectAnswer],
}

impl DropCheck<'_> {
    pub fn verify(&self, findings: &[Finding], own: &Own) -> Degraded {
        let mut out = Degraded::default();
        out.not_checked("namespace and device of the drops (no BTF: drops carry neither)");
        let rule = self.rule;
        let of_rule: Vec<&Finding> = findings.iter().filter(|f| f.rule == rule).collect();
        if of_rule.is_empty() {
            out.problems.push(format!("no `{rule}` finding"));
        }
        let mine: Vec<&DropRecord> = own.drops(self.thread).collect();
        for expect in self.drops {
            let seen: Vec<&DropRecord> = mine.iter().copied().filter(|d| expect.matches(d)).collect();
            if seen.is_empty() {
                out.problems.push(format!(
                    "the scenario's own traffic showed no {expect} ({}){}",
                    own.describe(self.thread),
                    what_was_seen(&mine, &of_rule, expect, own, self.thread)
                ));
                continue;
            }
            if seen.iter().any(|d| d.reason.is_none()) {
                out.not_checked(
                    "the drop reason (this kernel reports none: the function where the packets died is checked)",
                );
            }
            // Without namespaces, drops are grouped by reason and function alone: the finding
            // that covers that pair covers the scenario's drops.
            let covered = seen.iter().any(|d| of_rule.iter().any(|f| covers(f, d)));
            if !covered && !of_rule.is_empty() {
                out.problems
                    .push(format!("the scenario's {expect} ({} of them) are in no `{rule}` finding", seen.len()));
            }
        }
        for never in self.never {
            let n = mine.iter().filter(|d| never.matches(d)).count();
            if n > 0 {
                out.problems
                    .push(format!("the scenario's own traffic showed {n} {never}, which `{rule}` does not explain"));
            }
        }
        if own.unkept > 0 {
            out.problems.push(format!("{} events of the lab process were not kept: too many to check", own.unkept));
        }
        let flows: Vec<&crate::decode::Flow> = own.answer_flows(self.thread).collect();
        for answer in self.answers {
            if !flows.iter().any(|f| answer.matches(f)) {
                out.not_checked(format!(
                    "the destination {answer} of the dropped packets (no BTF: drops carry no headers, and no answer of the kernel showed it)"
                ));
            }
        }
        out
    }
}

/// Whether finding `f` covers drop `d`: where it says the packets died, or in its evidence.
fn covers(f: &Finding, d: &DropRecord) -> bool {
    let function = d.function.as_deref();
    let at = f.place.location.as_deref().map(|l| l.split('+').next().unwrap_or(l));
    (at.is_some() && at == function)
        || f.evidence
            .iter()
            .any(|e| matches!(e, Event::Drop(x) if x.function.as_deref() == function && x.reason == d.reason))
}

/// What the kernel showed instead: the thread's other drops, and whose drops the finding holds.
fn what_was_seen(mine: &[&DropRecord], of_rule: &[&Finding], expect: &ExpectDrop, own: &Own, thread: &str) -> String {
    let mut said = Vec::new();
    let mut other: Vec<String> = mine
        .iter()
        .filter(|d| d.protocol == expect.protocol)
        .map(|d| format!("{} at {}", d.reason.as_deref().unwrap_or("?"), d.function.as_deref().unwrap_or(&d.location)))
        .collect();
    other.sort();
    other.dedup();
    if !other.is_empty() {
        said.push(format!("its {} drops were {}", expect.protocol, other.join(", ")));
    }
    let mut foreign: Vec<String> = of_rule
        .iter()
        .flat_map(|f| f.evidence.iter())
        .filter_map(|e| match e {
            Event::Drop(d) if expect.matches(d) && !own.by_thread(d.task.as_ref(), d.ts_ns, thread) => Some(d),
            _ => None,
        })
        .map(|d| d.task.as_ref().map_or_else(|| "no task".to_string(), |t| format!("{} (pid {})", t.comm, t.pid)))
        .collect();
    foreign.sort();
    foreign.dedup();
    if !foreign.is_empty() {
        said.push(format!(
            "the matching drops the kernel showed came from {}, not from this scenario",
            foreign.join(", ")
        ));
    }
    if said.is_empty() {
        String::new()
    } else {
        format!(": {}", said.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        analyze::{Place, Severity},
        decode::{netfilter::IcmpError, Flow},
    };

    const LAB: u32 = 4242;
    const WINDOW: (u64, u64) = (1_000, 2_000);
    const THREAD: &str = "lab-client";
    const DROPS: [ExpectDrop; 2] = [
        ExpectDrop { protocol: "ipv4", reasons: &["NO_SOCKET"], functions: &["__udp4_lib_rcv"] },
        ExpectDrop { protocol: "ipv6", reasons: &["NO_SOCKET"], functions: &["__udp6_lib_rcv"] },
    ];

    fn drop(pid: u32, comm: &str, ts_ns: u64, protocol: &str, reason: &str, function: &str) -> DropRecord {
        DropRecord {
            time: String::new(),
            ts_ns,
            cpu: 0,
            netns: None,
            netns_name: None,
            pod: None,
            ifindex: None,
            device: None,
            protocol: protocol.into(),
            flow: None,
            reason: Some(reason.into()),
            reason_code: None,
            reason_inferred: false,
            location: format!("{function}+0x4bc"),
            function: Some(function.into()),
            skb: "0x1".into(),
            task: Some(Task { pid, tid: pid + 1, comm: comm.into() }),
            packet_len: None,
            egress: None,
            xdp: None,
        }
    }

    /// The `no-listener` finding a kernel without BTF makes of `drops` (one group per function).
    fn finding(drops: &[DropRecord]) -> Finding {
        Finding {
            rule: "no-listener",
            severity: Severity::Warning,
            summary: "nothing listens on the udp port …".into(),
            place: Place { location: drops.first().map(|d| d.location.clone()), ..Place::default() },
            flows: vec![],
            destination: None,
            count: drops.len() as u64,
            first_time: String::new(),
            last_time: String::new(),
            actor: None,
            netfilter: None,
            evidence: drops.iter().take(6).cloned().map(Event::Drop).collect(),
            remediation: String::new(),
        }
    }

    fn own(events: &[DropRecord]) -> Own {
        let mut own = Own::new(LAB);
        own.window = WINDOW;
        for d in events {
            own.observe(&Event::Drop(d.clone()));
        }
        own
    }

    fn check() -> DropCheck<'static> {
        DropCheck { rule: "no-listener", thread: THREAD, drops: &DROPS, never: &[], answers: &[] }
    }

    fn ours() -> Vec<DropRecord> {
        vec![
            drop(LAB, THREAD, 1_100, "ipv4", "NO_SOCKET", "__udp4_lib_rcv"),
            drop(LAB, THREAD, 1_200, "ipv6", "NO_SOCKET", "__udp6_lib_rcv"),
        ]
    }

    #[test]
    fn the_scenarios_own_drops_in_a_finding_pass_degraded() {
        let drops = ours();
        let result = check().verify(&[finding(&drops)], &own(&drops));
        assert!(result.problems.is_empty(), "{result:?}");
        assert!(result.unchecked.iter().any(|u| u.contains("namespace and device")), "{result:?}");
    }

    #[test]
    fn drops_of_another_process_do_not_satisfy_it() {
        // Same reason, same functions, same protocols, during the trigger: another process.
        let foreign = [
            drop(999, "bash", 1_100, "ipv4", "NO_SOCKET", "__udp4_lib_rcv"),
            drop(999, "bash", 1_150, "ipv6", "NO_SOCKET", "__udp6_lib_rcv"),
        ];
        let result = check().verify(&[finding(&foreign)], &own(&foreign));
        assert_eq!(result.problems.len(), 2, "{result:?}");
        assert!(result.problems[0].contains("showed no NO_SOCKET drop of ipv4 traffic"), "{result:?}");
        assert!(result.problems[0].contains("came from bash (pid 999)"), "{result:?}");
    }

    #[test]
    fn another_thread_of_the_lab_does_not_satisfy_it() {
        let other = [
            drop(LAB, "lab-worker", 1_100, "ipv4", "NO_SOCKET", "__udp4_lib_rcv"),
            drop(LAB, "lab-worker", 1_200, "ipv6", "NO_SOCKET", "__udp6_lib_rcv"),
        ];
        let result = check().verify(&[finding(&other)], &own(&other));
        assert_eq!(result.problems.len(), 2, "{result:?}");
    }

    #[test]
    fn drops_outside_the_trigger_window_do_not_satisfy_it() {
        let early = [
            drop(LAB, THREAD, 999, "ipv4", "NO_SOCKET", "__udp4_lib_rcv"),
            drop(LAB, THREAD, 2_001, "ipv6", "NO_SOCKET", "__udp6_lib_rcv"),
        ];
        let result = check().verify(&[finding(&early)], &own(&early));
        assert_eq!(result.problems.len(), 2, "{result:?}");
    }

    #[test]
    fn a_finding_without_the_scenarios_drops_does_not_satisfy_it() {
        // The lab's own traffic was dropped, but elsewhere (a firewall), while another
        // process's drops made the finding.
        let ours = [
            drop(LAB, THREAD, 1_100, "ipv4", "NETFILTER_DROP", "nft_do_chain"),
            drop(LAB, THREAD, 1_200, "ipv6", "NETFILTER_DROP", "nft_do_chain"),
        ];
        let foreign = [drop(999, "bash", 1_100, "ipv4", "NO_SOCKET", "__udp4_lib_rcv")];
        let all: Vec<DropRecord> = ours.iter().chain(&foreign).cloned().collect();
        let result = check().verify(&[finding(&foreign)], &own(&all));
        assert_eq!(result.problems.len(), 2, "{result:?}");
        assert!(result.problems[0].contains("its ipv4 drops were NETFILTER_DROP at nft_do_chain"), "{result:?}");
    }

    #[test]
    fn the_drops_must_be_in_a_finding_of_the_rule() {
        let drops = ours();
        let mut other = finding(&drops);
        other.rule = "packet-drop";
        let result = check().verify(&[other], &own(&drops));
        assert_eq!(result.problems, vec!["no `no-listener` finding".to_string()], "{result:?}");
        // A finding of the rule elsewhere (another function) does not cover them either.
        let elsewhere = finding(&[drop(LAB, THREAD, 1_100, "ipv4", "NO_SOCKET", "tcp_v4_rcv")]);
        let result = check().verify(&[elsewhere], &own(&drops));
        assert_eq!(result.problems.len(), 2, "{result:?}");
        assert!(result.problems[0].contains("are in no `no-listener` finding"), "{result:?}");
    }

    #[test]
    fn a_forbidden_drop_of_the_scenarios_traffic_is_a_problem() {
        let drops = ours();
        let never = [ExpectDrop { protocol: "ipv4", reasons: &["NO_SOCKET"], functions: &["__udp4_lib_rcv"] }];
        let check = DropCheck { rule: "no-listener", thread: THREAD, drops: &DROPS[1..], never: &never, answers: &[] };
        let result = check.verify(&[finding(&drops)], &own(&drops));
        assert_eq!(result.problems.len(), 1, "{result:?}");
        assert!(result.problems[0].contains("does not explain"), "{result:?}");
    }

    #[test]
    fn the_destination_is_checked_where_an_answer_shows_it() {
        let drops = ours();
        let dst: IpAddr = "10.250.0.2".parse().unwrap();
        let answers = [
            ExpectAnswer { dst, port: Some(9999) },
            ExpectAnswer { dst: "fd00:250::2".parse().unwrap(), port: Some(9999) },
        ];
        let check = DropCheck { answers: &answers, ..check() };
        let mut own = own(&drops);
        let icmp = |pid: u32, port: u16| {
            Event::IcmpError(IcmpError {
                time: String::new(),
                ts_ns: 1_150,
                netns: None,
                netns_name: None,
                pod: None,
                ifindex: None,
                icmp_type: 3,
                icmp_code: 3,
                meaning: "port-unreachable".into(),
                flow: Some(Flow {
                    l4: "udp".into(),
                    src: "10.250.0.1".parse().unwrap(),
                    dst,
                    sport: Some(40000),
                    dport: Some(port),
                    icmp_type: None,
                    icmp_code: None,
                    tcp_flags: None,
                }),
                skb: "0x1".into(),
                task: Some(Task { pid, tid: pid, comm: THREAD.into() }),
                origin: "icmp:icmp_send".into(),
                by_reject: false,
                packet_len: None,
                egress: None,
            })
        };
        // Another process's answer, and one for another port, show nothing of the scenario.
        own.observe(&icmp(999, 9999));
        own.observe(&icmp(LAB, 1234));
        let result = check.verify(&[finding(&drops)], &own);
        assert!(result.problems.is_empty(), "{result:?}");
        assert!(result.unchecked.iter().any(|u| u.contains("10.250.0.2:9999")), "{result:?}");
        own.observe(&icmp(LAB, 9999));
        let result = check.verify(&[finding(&drops)], &own);
        assert!(!result.unchecked.iter().any(|u| u.contains("10.250.0.2:9999")), "{result:?}");
        assert!(result.unchecked.iter().any(|u| u.contains("[fd00:250::2]:9999")), "{result:?}");
    }

    #[test]
    fn blindness_comes_from_the_hooks_coverage() {
        let hook = |family: &'static str, coverage: serde_json::Value| HookStatus {
            family: family.into(),
            backend_id: String::new(),
            backend: String::new(),
            coverage,
            unavailable: vec![],
        };
        let seeing = [
            hook("drops", serde_json::json!({"device_and_netns": true})),
            hook("links", serde_json::json!({"actor_netns_and_parent": true})),
            hook("xdp", serde_json::json!({"exception_places": true})),
        ];
        assert!(!Blind::of(&seeing).any());
        let blind = [
            hook("drops", serde_json::json!({"device_and_netns": false})),
            hook("links", serde_json::json!({"actor_netns_and_parent": false})),
        ];
        assert_eq!(Blind::of(&blind), Blind { packets: true, actors: true, xdp_places: false });
    }
}
