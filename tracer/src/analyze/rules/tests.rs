//! The netfilter and bridge rules on synthetic evidence: which rule claims which drops.

use std::net::IpAddr;

use crate::{
    analyze::{Analyzer, Finding},
    decode::{
        netfilter::{BridgeState, IcmpError, NfVerdict, RuleCounter, TcpConnect, TcpReset},
        DropRecord, Event, Flow,
    },
    kernel::{routes::Egress, KernelSummary},
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
        pod: None,
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
        packet_len: None,
        egress: None,
        xdp: None,
    })
}

fn counter(netns: u32, chain: &str, verdict: Verdict, matches: RuleMatch, rule: &str) -> Event {
    Event::RuleCounter(RuleCounter {
        time: "t".into(),
        ts_ns: 1_000,
        netns,
        netns_name: Some(format!("ns{netns}")),
        pod: None,
        backend: "iptables-nft".into(),
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
    let kernel = KernelSummary { release: "test".into(), btf: true, drop_reason_names: "btf".into(), kallsyms: true };
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
        direction: "received".into(),
        netns: Some(CLIENT_NS),
        netns_name: None,
        pod: None,
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
        pod: None,
        device: Some("s0".into()),
        flow: Some(flow("tcp", "10.0.0.1", 46444, "10.0.0.2", 6444, Some("SYN"))),
        skb: "0x2".into(),
        family: "inet".into(),
        table: "guard".into(),
        chain: Some("input".into()),
        hook: Some("input".into()),
        verdict: "drop".into(),
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
        pod: None,
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
            pod: None,
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

/// A flannel node: pods behind `cni0` (ifindex 3), other nodes' pods via `flannel.1`
/// (ifindex 6, vxlan, MTU 1450) over `eth0` (MTU 1500).
fn flannel(route_mtu: Option<u32>) -> Egress {
    Egress {
        device: "flannel.1".into(),
        ifindex: 6,
        mtu: 1450,
        kind: Some("vxlan".into()),
        route_mtu,
        underlay: Some(("eth0".into(), 1500)),
    }
}

/// A drop of a `len`-byte packet from pod 10.244.1.2 to 10.244.2.2 in the node's namespace.
fn sized_drop(reason: Option<&str>, at: (&str, u32, &str), len: u32, egress: Option<Egress>, ts: u64) -> Event {
    let Event::Drop(mut d) =
        drop("X", SERVER_NS, flow("tcp", "10.244.1.2", 40000 + ts as u16, "10.244.2.2", 8080, Some("ACK")), ts)
    else {
        unreachable!()
    };
    d.reason = reason.map(str::to_string);
    (d.device, d.ifindex, d.function, d.location) =
        (Some(at.0.into()), Some(at.1), Some(at.2.into()), format!("{}+0x2a0", at.2));
    (d.packet_len, d.egress) = (Some(len), egress);
    Event::Drop(d)
}

fn frag_needed(src: &str, dst: &str, ts: u64, egress: Option<Egress>) -> Event {
    Event::IcmpError(IcmpError {
        time: format!("t{ts}"),
        ts_ns: ts,
        netns: Some(SERVER_NS),
        netns_name: Some(format!("ns{SERVER_NS}")),
        pod: None,
        ifindex: Some(3),
        icmp_type: 3,
        icmp_code: 4,
        meaning: "fragmentation-needed".into(),
        flow: Some(Flow { l4: "ip".into(), sport: None, dport: None, ..flow("tcp", src, 0, dst, 0, None) }),
        skb: "0x1".into(),
        task: None,
        origin: "icmp:icmp_send".into(),
        by_reject: false,
        packet_len: Some(1500),
        egress,
    })
}

fn the(findings: &[Finding], rule: &str) -> Finding {
    findings.iter().find(|f| f.rule == rule).unwrap_or_else(|| panic!("no {rule} in {findings:#?}")).clone()
}

#[test]
fn packets_too_big_for_a_vxlan_tunnel_name_the_tunnel_its_mtu_and_the_icmp_sent_back() {
    let at_forward = ("cni0", 3, "ip_forward");
    let events = [
        sized_drop(Some("PKT_TOO_BIG"), at_forward, 1500, Some(flannel(None)), 1),
        frag_needed("10.244.1.2", "10.244.2.2", 1, Some(flannel(None))),
        sized_drop(Some("PKT_TOO_BIG"), at_forward, 1500, Some(flannel(None)), 2),
    ];
    let f = findings(&events);
    assert_eq!(rules_of(&f), ["tunnel-mtu-exceeded"]);
    assert!(f.iter().all(|f| f.rule != "packet-drop"), "{f:#?}");
    let mtu = the(&f, "tunnel-mtu-exceeded");
    assert_eq!(mtu.severity, crate::analyze::Severity::Error);
    assert_eq!(
        mtu.summary,
        "packets of 1500 bytes from 10.244.1.2 to 10.244.2.2 do not fit the tunnel: the route leaves through \
         flannel.1 (vxlan, MTU 1450 = eth0 1500 - 50 bytes of VXLAN encapsulation) and they carry DF (don't \
         fragment), so ns100 dropped 2 and sent \"fragmentation needed (mtu 1450)\" back; the sender's MTU is at least 1500"
    );
    assert_eq!((mtu.place.netns, mtu.place.device.as_deref()), (Some(SERVER_NS), Some("cni0")));
    assert_eq!((mtu.count, mtu.destination), (2, Some(ip("10.244.2.2"))));
    assert_eq!(mtu.flows, ["tcp 10.244.1.2 > 10.244.2.2:8080"]);
    assert!(mtu.evidence.iter().any(|e| matches!(e, Event::IcmpError(_))));
    for advice in [
        "pod/CNI MTU to 1450",
        "FLANNEL_MTU",
        "veth_mtu",
        "--mtu",
        "jumbo frames on eth0",
        "black hole",
        "show flannel.1`",
    ] {
        assert!(mtu.remediation.contains(advice), "{advice}: {}", mtu.remediation);
    }

    // A route MTU below the device's wins, and is said.
    let f = findings(&[sized_drop(Some("PKT_TOO_BIG"), at_forward, 1450, Some(flannel(Some(1400))), 1)]);
    let mtu = the(&f, "tunnel-mtu-exceeded");
    assert!(mtu.summary.contains("and the route sets MTU 1400"), "{}", mtu.summary);
    assert!(mtu.remediation.contains("pod/CNI MTU to 1400"), "{}", mtu.remediation);
}

#[test]
fn too_big_without_the_egress_is_still_flagged_and_says_the_mtu_could_not_be_read() {
    let mut v6 = sized_drop(Some("PKT_TOO_BIG"), ("cni0", 3, "ip6_forward"), 1500, None, 1);
    if let Event::Drop(d) = &mut v6 {
        d.protocol = "ipv6".into();
        d.flow = Some(flow("tcp", "fd00:1::2", 40000, "fd00:2::2", 8080, Some("ACK")));
        d.packet_len = None;
    }
    let f = findings(&[v6]);
    let mtu = the(&f, "tunnel-mtu-exceeded");
    assert!(mtu.summary.starts_with("packets from fd00:1::2 to fd00:2::2 are bigger than the MTU"), "{}", mtu.summary);
    assert!(mtu.summary.contains("could not be read"), "{}", mtu.summary);
    assert!(mtu.summary.contains("IPv6 routers never fragment"), "{}", mtu.summary);
    assert!(mtu.remediation.contains("ip route get fd00:2::2`"), "{}", mtu.remediation);
}

#[test]
fn other_reasons_and_packets_that_fit_are_not_tunnel_mtu_findings() {
    let f = findings(&[
        sized_drop(Some("NETFILTER_DROP"), ("cni0", 3, "nf_hook_slow"), 1500, Some(flannel(None)), 1),
        sized_drop(Some("NEIGH_FAILED"), ("flannel.1", 6, "neigh_invalidate"), 1500, Some(flannel(None)), 2),
        // At the tunnel, but the packet fits: not an MTU problem.
        sized_drop(Some("NOT_SPECIFIED"), ("flannel.1", 6, "br_dev_queue_push_xmit"), 1400, Some(flannel(None)), 3),
        // In the forwarding path, without reason, but nothing says it was too big.
        sized_drop(None, ("cni0", 3, "ip_forward"), 1500, None, 4),
        // An ICMP error a REJECT rule sent is not the stack's "fragmentation needed".
        Event::IcmpError(IcmpError {
            by_reject: true,
            ..match frag_needed("10.244.1.9", "10.244.2.9", 5, None) {
                Event::IcmpError(i) => i,
                _ => unreachable!(),
            }
        }),
    ]);
    assert!(f.iter().all(|f| f.rule != "tunnel-mtu-exceeded"), "{f:#?}");
}

#[test]
fn a_silent_drop_at_the_tunnel_device_of_a_packet_longer_than_its_mtu_is_a_black_hole() {
    let at_tunnel = ("flannel.1", 6, "br_dev_queue_push_xmit");
    let f = findings(&[
        sized_drop(Some("NOT_SPECIFIED"), at_tunnel, 1500, Some(flannel(None)), 1),
        sized_drop(Some("NOT_SPECIFIED"), at_tunnel, 1480, Some(flannel(None)), 2),
    ]);
    let mtu = the(&f, "tunnel-mtu-exceeded");
    assert!(mtu.summary.starts_with("packets of up to 1500 bytes from 10.244.1.2 to 10.244.2.2"), "{}", mtu.summary);
    assert!(mtu.summary.contains("flannel.1 (vxlan, MTU 1450 = eth0 1500 - 50 bytes"), "{}", mtu.summary);
    assert!(mtu.summary.contains("dropped 2 at flannel.1 without a word"), "{}", mtu.summary);
    assert_eq!(mtu.place.device.as_deref(), Some("flannel.1"));
    assert!(mtu.remediation.contains("path-MTU discovery cannot help"), "{}", mtu.remediation);

    // Before PKT_TOO_BIG existed: a reasonless drop in ip_forward of a flow the node answered
    // with "fragmentation needed"; no egress known for the drop, the ICMP's gives the MTU.
    let f = findings(&[
        sized_drop(None, ("cni0", 3, "ip_forward"), 1500, None, 1),
        frag_needed("10.244.1.2", "10.244.2.2", 1, Some(flannel(None))),
    ]);
    let mtu = the(&f, "tunnel-mtu-exceeded");
    assert!(mtu.summary.contains("\"fragmentation needed (mtu 1450)\""), "{}", mtu.summary);
}

#[test]
fn fragmentation_needed_alone_is_a_finding_when_the_drops_were_not_traced() {
    let f = findings(&[
        frag_needed("10.244.1.2", "10.244.2.2", 1, Some(flannel(None))),
        frag_needed("10.244.1.3", "10.244.2.2", 2, Some(flannel(None))),
    ]);
    let mtu = the(&f, "tunnel-mtu-exceeded");
    assert_eq!(mtu.count, 2);
    assert!(mtu.summary.contains("(and 1 other flow(s))"), "{}", mtu.summary);
    assert!(mtu.summary.contains("sent \"fragmentation needed (mtu 1450)\" back 2 times"), "{}", mtu.summary);
    assert!(mtu.summary.contains("the drops themselves were not traced"), "{}", mtu.summary);
}

/// A failed `ip link add … type wireguard` by `comm`: the request and the kernel's EOPNOTSUPP.
fn failed_wireguard_create(comm: &str) -> Vec<Event> {
    let actor = format!(
        r#"{{"pid":4162,"tid":4163,"comm":"{comm}","parent_pid":1,"parent_comm":"init","netns":4026532999,"netns_name":null}}"#
    );
    let request = format!(
        r#"{{"kind":"link-request","time":"t","ts_ns":1000,"op":"create","seq":7,"ifname":"wg0","ifindex":null,"link_kind":"wireguard","mac":null,"peer":null,"peer_netns":null,"admin":null,"new_name":null,"to_netns":null,"via":"netlink","actor":{actor}}}"#
    );
    let ack = format!(
        r#"{{"kind":"netlink-ack","time":"t","ts_ns":2000,"seq":7,"errno":95,"error":"EOPNOTSUPP","actor":{actor}}}"#
    );
    [request, ack].iter().map(|e| serde_json::from_str(e).unwrap()).collect()
}

/// `dptrace check` run beside a session creates links of every kind and attaches native XDP in
/// throwaway namespaces, and many fail on purpose: those are not the node's failures.
#[test]
fn the_failing_probes_of_dptrace_check_are_not_findings() {
    assert_eq!(rules_of(&findings(&failed_wireguard_create("flanneld"))), ["link-kind-unsupported"]);
    for comm in ["dptrace-linkpro", "dptrace-freshns"] {
        assert_eq!(rules_of(&findings(&failed_wireguard_create(comm))), Vec::<&str>::new(), "{comm}");
    }
}

/// The ICMP redirect a node sends about a connection it NATs (hairpin through a bridge that
/// skips iptables), dropped by the NAT core, not by a rule.
fn nat_redirect_drop(ts: u64) -> Event {
    let mut redirect = flow("icmp", "10.88.0.1", 0, "10.88.0.3", 0, None);
    (redirect.sport, redirect.dport, redirect.icmp_type, redirect.icmp_code) = (None, None, Some(5), Some(1));
    drop("NETFILTER_DROP", SERVER_NS, redirect, ts)
}

#[test]
fn the_nat_cores_redirect_drops_are_no_netfilter_error_but_a_drop_rule_still_is() {
    let masquerade = counter(
        SERVER_NS,
        "POSTROUTING",
        Verdict::Masquerade,
        RuleMatch { src: Some("10.88.0.0/16".into()), ..Default::default() },
        "-A NETAVARK-1D8721804F16F ! -d 224.0.0.0/4 -j MASQUERADE",
    );
    let severity_of = |f: &[Finding], rule: &str| f.iter().find(|f| f.rule == rule).map(|f| f.severity);
    // Without NAT in the namespace, a netfilter drop of a redirect is not explained: an error.
    let f = findings(&[nat_redirect_drop(1)]);
    assert_eq!(severity_of(&f, "netfilter-drop"), Some(crate::analyze::Severity::Error));
    // With NAT rules that matched packets: the NAT core's drop, info.
    let f = findings(&[nat_redirect_drop(1), masquerade.clone()]);
    assert_eq!(rules_of(&f), ["netfilter-drop"]);
    assert_eq!(severity_of(&f, "netfilter-drop"), Some(crate::analyze::Severity::Info));
    // A DROP rule for ICMP whose counter moved still names the rule, as an error.
    let icmp_drop = counter(
        SERVER_NS,
        "OUTPUT",
        Verdict::Drop,
        RuleMatch { l4: Some("icmp".into()), ..Default::default() },
        "-A OUTPUT -p icmp -j DROP",
    );
    let f = findings(&[nat_redirect_drop(1), masquerade.clone(), icmp_drop]);
    assert_eq!(severity_of(&f, "netfilter-drop"), Some(crate::analyze::Severity::Error));
    // A bridge that skipped iptables in the namespace explains them: folded into its warning.
    let bridge = Event::Bridge(BridgeState {
        time: "t".into(),
        ts_ns: 5,
        netns: SERVER_NS,
        netns_name: Some("node".into()),
        pod: None,
        bridge: "podman0".into(),
        ports: vec!["veth0".into(), "veth1".into()],
        packets: 24,
        br_netfilter_loaded: true,
        call_iptables: Some(false),
        call_ip6tables: Some(false),
        bridge_nf_call_iptables: Some(false),
        bridge_nf_call_ip6tables: Some(false),
    });
    let f = findings(&[nat_redirect_drop(1), nat_redirect_drop(2), masquerade, bridge]);
    assert_eq!(rules_of(&f), ["br-netfilter-missing"]);
    let missing = the(&f, "br-netfilter-missing");
    assert!(missing.summary.contains("2 ICMP redirect(s)"), "{}", missing.summary);
    assert!(missing.evidence.iter().any(|e| matches!(e, Event::Drop(_))), "{:?}", missing.evidence);
}
