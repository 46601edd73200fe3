//! The netfilter and bridge rules on synthetic evidence: which rule claims which drops.

use std::net::IpAddr;

use crate::{
    analyze::{Analyzer, Finding},
    decode::{
        netfilter::{BridgeState, NfVerdict, RuleCounter, TcpConnect, TcpReset},
        DropRecord, Event, Flow,
    },
    kernel::KernelSummary,
    probes::rule_counters::{RuleMatch, Verdict},
};

const SERVER_NS: u32 = 100;
const CLIENT_NS: u32 = 200;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn flow(l4: &str, src: &str, sport: u16, dst: &str, dport: u16, flags: Option<&str>) -> Flow {
    Flow {
        l4: l4.into(),
        src: ip(src),
        dst: ip(dst),
        sport: Some(sport),
        dport: Some(dport),
        icmp_type: None,
        icmp_code: None,
        tcp_flags: flags.map(str::to_string),
    }
}

fn drop(reason: &str, netns: u32, flow: Flow, ts: u64) -> Event {
    Event::Drop(DropRecord {
        time: format!("t{ts}"),
        ts_ns: ts,
        cpu: 0,
        netns: Some(netns),
        netns_name: Some(format!("ns{netns}")),
        ifindex: Some(2),
        device: Some("s0".into()),
        protocol: if flow.src.is_ipv6() { "ipv6" } else { "ipv4" }.into(),
        flow: Some(flow),
        reason: Some(reason.into()),
        reason_code: Some(1),
        reason_inferred: false,
        location: "nft_do_chain+0x3e8".into(),
        function: Some("nft_do_chain".into()),
        skb: format!("{ts:#x}"),
        task: None,
    })
}

fn counter(netns: u32, chain: &str, verdict: Verdict, matches: RuleMatch, rule: &str) -> Event {
    Event::RuleCounter(RuleCounter {
        time: "t".into(),
        ts_ns: 1_000,
        netns,
        netns_name: Some(format!("ns{netns}")),
        backend: "iptables-nft",
        family: "ip".into(),
        table: if matches!(verdict, Verdict::Dnat { .. }) { "nat" } else { "filter" }.into(),
        chain: chain.into(),
        hooks: vec![chain.to_lowercase()],
        rule: Some(rule.into()),
        verdict: verdict.to_string(),
        packets: 2,
        bytes: 120,
        no_baseline: false,
        kind: verdict,
        matches,
    })
}

fn tcp_to(port: u16) -> RuleMatch {
    RuleMatch { l4: Some("tcp".into()), dport: Some(port), dports: vec![(port, port)], ..Default::default() }
}

fn findings(events: &[Event]) -> Vec<Finding> {
    let mut analyzer = Analyzer::new();
    for e in events {
        analyzer.observe(e);
    }
    let kernel = KernelSummary { release: "test".into(), btf: true, drop_reason_names: "btf", kallsyms: true };
    analyzer.findings(&kernel)
}

fn rules_of(findings: &[Finding]) -> Vec<&'static str> {
    let mut rules: Vec<&str> = findings.iter().map(|f| f.rule).filter(|r| *r != "packet-drop").collect();
    rules.sort();
    rules
}

#[test]
fn a_reject_counter_makes_it_reject_by_rule_and_a_drop_counter_netfilter_drop() {
    let syn =
        |port, ts| drop("NETFILTER_DROP", SERVER_NS, flow("tcp", "10.0.0.1", 40000, "10.0.0.2", port, Some("SYN")), ts);
    let events = vec![
        syn(6443, 1),
        syn(6444, 2),
        counter(
            SERVER_NS,
            "INPUT",
            Verdict::Reject { with: Some("tcp-reset".into()) },
            tcp_to(6443),
            "-A INPUT -p tcp --dport 6443 -j REJECT --reject-with tcp-reset",
        ),
        counter(SERVER_NS, "INPUT", Verdict::Drop, tcp_to(6444), "-A INPUT -p tcp --dport 6444 -j DROP"),
        // The same rule in another namespace must not be taken for this one.
        counter(CLIENT_NS, "INPUT", Verdict::Drop, tcp_to(6443), "-A INPUT -p tcp --dport 6443 -j DROP"),
    ];
    let f = findings(&events);
    assert_eq!(rules_of(&f), ["netfilter-drop", "reject-by-rule"]);
    let reject = f.iter().find(|f| f.rule == "reject-by-rule").unwrap();
    let nf = reject.netfilter.as_ref().unwrap();
    assert_eq!((nf.verdict.as_str(), nf.chain.as_str(), nf.hook.as_deref()), ("reject", "INPUT", Some("input")));
    assert!(reject.summary.contains("a TCP RST"), "{}", reject.summary);
    let dropped = f.iter().find(|f| f.rule == "netfilter-drop").unwrap();
    assert!(dropped.netfilter.as_ref().unwrap().rule.as_deref().unwrap().contains("6444"));
    assert!(
        dropped.remediation.contains("iptables -t filter -D INPUT -p tcp --dport 6444 -j DROP"),
        "{}",
        dropped.remediation
    );
}

#[test]
fn without_counters_the_clients_reset_or_the_kernel_verdict_decide() {
    let syn = |port, ts| {
        drop("NETFILTER_DROP", SERVER_NS, flow("tcp", "10.0.0.1", 40000 + port, "10.0.0.2", port, Some("SYN")), ts)
    };
    let reset = Event::TcpReset(TcpReset {
        time: "t".into(),
        ts_ns: 3,
        direction: "received",
        netns: Some(CLIENT_NS),
        netns_name: None,
        ifindex: None,
        flow: Some(flow("tcp", "10.0.0.1", 46443, "10.0.0.2", 6443, None)),
        socket: true,
        state: Some("TCP_SYN_SENT".into()),
        reason: None,
        skb: None,
        task: None,
        origin: "tcp:tcp_receive_reset".into(),
        by_reject: false,
    });
    let verdict = Event::NetfilterVerdict(NfVerdict {
        time: "t".into(),
        ts_ns: 2,
        netns: Some(SERVER_NS),
        netns_name: None,
        device: Some("s0".into()),
        flow: Some(flow("tcp", "10.0.0.1", 46444, "10.0.0.2", 6444, Some("SYN"))),
        skb: "0x2".into(),
        family: "inet".into(),
        table: "guard".into(),
        chain: Some("input".into()),
        hook: Some("input".into()),
        verdict: "drop",
        origin: "nft_do_chain".into(),
    });
    let f = findings(&[syn(6443, 1), syn(6444, 2), reset, verdict]);
    assert_eq!(rules_of(&f), ["netfilter-drop", "reject-by-rule"]);
    let dropped = f.iter().find(|f| f.rule == "netfilter-drop").unwrap();
    let nf = dropped.netfilter.as_ref().unwrap();
    assert_eq!((nf.source.as_str(), nf.table.as_str(), nf.chain.as_str()), ("nft_do_chain", "guard", "input"));
    assert!(nf.rule.is_none());
}

#[test]
fn a_syn_ack_from_the_dnat_target_is_a_bridge_bypass_not_a_missing_listener() {
    let connect = Event::TcpConnect(TcpConnect {
        time: "t".into(),
        ts_ns: 1,
        netns: Some(CLIENT_NS),
        netns_name: Some("pod-a".into()),
        flow: Some(flow("tcp", "10.244.0.2", 41000, "10.96.0.10", 80, None)),
        task: None,
    });
    let reply = drop("NO_SOCKET", CLIENT_NS, flow("tcp", "10.244.0.3", 80, "10.244.0.2", 41000, Some("SYN|ACK")), 2);
    let dnat = counter(
        SERVER_NS,
        "PREROUTING",
        Verdict::Dnat { to: Some("10.244.0.3:80".into()) },
        RuleMatch { dst: Some("10.96.0.10/32".into()), ..tcp_to(80) },
        "-A PREROUTING -d 10.96.0.10/32 -p tcp --dport 80 -j DNAT --to-destination 10.244.0.3:80",
    );
    let bridge = |on: bool| {
        Event::Bridge(BridgeState {
            time: "t".into(),
            ts_ns: 5,
            netns: SERVER_NS,
            netns_name: Some("node".into()),
            bridge: "cni0".into(),
            ports: vec!["veth-a".into(), "veth-b".into()],
            packets: 40,
            br_netfilter_loaded: true,
            call_iptables: Some(on),
            call_ip6tables: Some(on),
            bridge_nf_call_iptables: Some(false),
            bridge_nf_call_ip6tables: Some(false),
        })
    };
    let f = findings(&[connect.clone(), reply.clone(), dnat.clone(), bridge(false)]);
    assert_eq!(rules_of(&f), ["br-netfilter-missing", "bridge-bypasses-netfilter"]);
    let bypass = f.iter().find(|f| f.rule == "bridge-bypasses-netfilter").unwrap();
    assert_eq!((bypass.place.netns, bypass.place.device.as_deref()), (Some(SERVER_NS), Some("cni0")));
    assert_eq!(bypass.destination, Some(ip("10.96.0.10")));
    // With br_netfilter on, the same reply is not a bypass (and no listener is missing either).
    let f = findings(&[connect, reply, dnat, bridge(true)]);
    assert_eq!(rules_of(&f), Vec::<&str>::new());
}

#[test]
fn a_syn_to_a_closed_port_stays_a_missing_listener() {
    let f = findings(&[drop("NO_SOCKET", SERVER_NS, flow("tcp", "10.0.0.1", 40000, "10.0.0.2", 6443, Some("SYN")), 1)]);
    assert_eq!(rules_of(&f), ["no-listener"]);
}
