//! The link rules on synthetic evidence shaped like what the real CNI plugins produced
//! (containernetworking-plugins 1.1.1 on 6.18, tests/tests/field_cni.rs): which sequences of
//! requests and monitor states are faults, and which are a healthy node's normal life.

use crate::{
    analyze::{Analyzer, Finding, Severity},
    decode::{
        links::{Actor, LinkRequest, LinkState, NetlinkAck},
        DropRecord, Event, Flow,
    },
    kernel::KernelSummary,
};

const NODE: u32 = 100;
const POD: u32 = 200;
const MS: u64 = 1_000_000;
const S: u64 = 1_000 * MS;

fn actor(pid: u32, comm: &str, netns: u32) -> Actor {
    Actor {
        pid,
        tid: pid,
        comm: comm.into(),
        parent_pid: None,
        parent_comm: None,
        netns: Some(netns),
        netns_name: Some(format!("ns{netns}")),
        pod: None,
        cgroup: None,
        pod_uid: None,
        container: None,
    }
}

fn request(ts: u64, op: &'static str, ifname: &str, who: &Actor) -> LinkRequest {
    LinkRequest {
        time: format!("t{ts}"),
        ts_ns: ts,
        op: op.into(),
        seq: (ts / MS) as u32,
        ifname: Some(ifname.into()),
        ifindex: None,
        link_kind: None,
        mac: None,
        peer: None,
        peer_netns: None,
        admin: None,
        new_name: None,
        to_netns: None,
        xdp: None,
        via: "test".into(),
        truncated: false,
        actor: who.clone(),
    }
}

fn ack(r: &LinkRequest, errno: i32) -> Event {
    Event::NetlinkAck(NetlinkAck {
        time: r.time.clone(),
        ts_ns: r.ts_ns + 1,
        seq: r.seq,
        errno,
        error: None,
        actor: r.actor.clone(),
    })
}

/// A monitor state of link `ifindex` (`name`, `kind`) in the node's namespace.
#[allow(clippy::too_many_arguments)] // one argument per field a test varies; reads as a table row
fn state(
    ts: u64,
    ifindex: u32,
    name: &str,
    kind: &str,
    mac: &str,
    up: bool,
    carrier: bool,
    change: &'static str,
) -> Event {
    Event::LinkState(LinkState {
        time: format!("t{ts}"),
        ts_ns: ts,
        change: change.into(),
        netns: NODE,
        netns_name: Some("node".into()),
        pod: None,
        ifindex,
        ifname: Some(name.into()),
        link_kind: Some(kind.into()),
        mac: Some(mac.into()),
        up,
        carrier,
        xdp: None,
    })
}

fn findings(events: &[Event]) -> Vec<Finding> {
    let mut analyzer = Analyzer::new();
    for e in events {
        analyzer.observe(e);
    }
    let kernel = KernelSummary { release: "test".into(), btf: true, drop_reason_names: "btf".into(), kallsyms: true };
    analyzer.findings(&kernel)
}

fn alarms(findings: &[Finding]) -> Vec<String> {
    findings.iter().filter(|f| f.severity != Severity::Info).map(|f| format!("{} {}", f.rule, f.summary)).collect()
}

/// The bridge plugin's ADD of one pod: the pair created from the pod's namespace (the host
/// end, its peer, registered first and seen before the request's own stamp), the host end
/// set up, carrier; then, at `rewrite`, a second writer's new MAC (if any); then DEL from
/// the pod's namespace (down, deleted twice: the main and the AF_BRIDGE notification).
fn pod_life(t0: u64, ifindex: u32, veth: &str, rewrite: Option<(&Actor, u64)>) -> Vec<Event> {
    let plugin = actor(10 + ifindex, "bridge", POD);
    let mut create = request(t0 + MS, "create", "eth0", &plugin);
    create.link_kind = Some("veth".into());
    create.peer = Some(veth.into());
    let mac = "0a:00:00:00:00:01";
    let mut events = vec![
        state(t0, ifindex, veth, "veth", mac, false, false, "new"),
        Event::LinkRequest(create.clone()),
        ack(&create, 0),
        state(t0 + 2 * MS, ifindex, veth, "veth", mac, true, true, "new"),
    ];
    let mut last_mac = mac.to_string();
    if let Some((writer, at)) = rewrite {
        let mut change = request(t0 + at, "change", veth, writer);
        change.mac = Some("02:11:22:33:44:55".into());
        change.ifindex = Some(ifindex);
        events.extend([Event::LinkRequest(change.clone()), ack(&change, 0)]);
        events.push(state(t0 + at + MS, ifindex, veth, "veth", "02:11:22:33:44:55", true, true, "new"));
        last_mac = "02:11:22:33:44:55".into();
    }
    let end = t0 + S / 2;
    events.extend([
        state(end, ifindex, veth, "veth", &last_mac, false, false, "new"),
        state(end + MS / 10, ifindex, veth, "veth", &last_mac, false, false, "deleted"),
        state(end + MS / 5, ifindex, veth, "veth", &last_mac, false, false, "deleted"),
    ]);
    events
}

#[test]
fn a_pair_created_from_the_pods_namespace_and_rewritten_by_another_process_is_veth_mac_changed() {
    let ip = actor(99, "ip", NODE);
    let f = findings(&pod_life(10 * S, 3, "veth8dfba897", Some((&ip, 100 * MS))));
    let mac: Vec<&Finding> = f.iter().filter(|f| f.rule == "veth-mac-changed").collect();
    assert_eq!(mac.len(), 1, "{:?}", alarms(&f));
    assert!(
        mac[0].summary.contains("created by bridge") && mac[0].summary.contains("changed by ip"),
        "{}",
        mac[0].summary
    );
    // Its deletion is not a flap.
    assert_eq!(alarms(&f).len(), 1, "{:?}", alarms(&f));
}

#[test]
fn a_healthy_pods_life_raises_nothing() {
    let mut events = pod_life(10 * S, 3, "veth8dfba897", None);
    events.extend(pod_life(11 * S, 4, "veth0d1e2f3a", None));
    assert!(alarms(&findings(&events)).is_empty(), "{:?}", alarms(&findings(&events)));
}

#[test]
fn a_sandbox_retried_every_11_s_is_one_finding_with_its_period() {
    let udevd = actor(50, "systemd-udevd", NODE);
    let mut events = vec![];
    for (round, ifindex) in (0..3u64).zip(3..) {
        events.extend(pod_life(
            (10 + 11 * round) * S,
            ifindex,
            &format!("vethaaaa000{round}"),
            Some((&udevd, 30 * MS)),
        ));
    }
    let f = findings(&events);
    let mac: Vec<&Finding> = f.iter().filter(|f| f.rule == "veth-mac-changed").collect();
    assert_eq!(mac.len(), 1, "{:?}", alarms(&f));
    assert_eq!(mac[0].count, 3);
    assert!(mac[0].summary.contains("3 new veths in 22.0 s (every 11.0 s"), "{}", mac[0].summary);
    assert!(!f.iter().any(|f| f.rule == "link-flapping"), "{:?}", alarms(&f));
}

#[test]
fn a_link_set_down_three_times_is_still_flapping() {
    let mut events = vec![state(0, 5, "c0", "veth", "0a:00:00:00:00:05", true, true, "new")];
    for i in 0..3 {
        events.push(state((2 * i + 1) * S, 5, "c0", "veth", "0a:00:00:00:00:05", false, false, "new"));
        events.push(state((2 * i + 2) * S, 5, "c0", "veth", "0a:00:00:00:00:05", true, true, "new"));
    }
    let f = findings(&events);
    assert_eq!(f.iter().filter(|f| f.rule == "link-flapping").count(), 1, "{:?}", alarms(&f));
}

#[test]
fn a_bridge_losing_carrier_whenever_its_last_pod_leaves_is_not_flapping() {
    let mac = "0a:00:00:00:00:02";
    let mut events = vec![state(0, 2, "cni0", "bridge", mac, true, true, "new")];
    for i in 0..4 {
        events.push(state((2 * i + 1) * S, 2, "cni0", "bridge", mac, true, false, "new"));
        events.push(state((2 * i + 2) * S, 2, "cni0", "bridge", mac, true, true, "new"));
    }
    assert!(alarms(&findings(&events)).is_empty(), "{:?}", alarms(&findings(&events)));
}

#[test]
fn create_or_reuse_is_not_a_failed_create_but_eexist_alone_is() {
    let plugin = actor(7, "bridge", NODE);
    let mut create = request(S, "create", "cni0", &plugin);
    create.link_kind = Some("bridge".into());
    let mut up = request(S + 5 * MS, "change", "cni0", &plugin);
    up.admin = Some("up".into());
    let reused = [Event::LinkRequest(create.clone()), ack(&create, 17), Event::LinkRequest(up.clone()), ack(&up, 0)];
    assert!(alarms(&findings(&reused)).is_empty(), "{:?}", alarms(&findings(&reused)));
    let clash = [Event::LinkRequest(create.clone()), ack(&create, 17)];
    let f = findings(&clash);
    assert_eq!(f.iter().filter(|f| f.rule == "link-create-failed").count(), 1, "{:?}", alarms(&f));
}

fn port_drop(ts: u64, reason: &str, ifindex: u32, dst: &str, device: &str) -> Event {
    Event::Drop(DropRecord {
        time: format!("t{ts}"),
        ts_ns: ts,
        cpu: 0,
        netns: Some(NODE),
        netns_name: Some("node".into()),
        pod: None,
        ifindex: Some(ifindex),
        device: Some(device.into()),
        protocol: "ipv6".into(),
        flow: Some(Flow {
            l4: "icmpv6".into(),
            src: "::".parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport: None,
            dport: None,
            icmp_type: Some(143),
            icmp_code: Some(0),
            tcp_flags: None,
        }),
        reason: Some(reason.into()),
        reason_code: Some(1),
        reason_inferred: false,
        location: "br_handle_frame+0xff".into(),
        function: Some("br_handle_frame".into()),
        skb: format!("{ts:#x}"),
        task: None,
        packet_len: None,
        egress: None,
        xdp: None,
    })
}

#[test]
fn stp_state_drops_are_info_on_a_port_that_just_came_up_and_a_warning_otherwise() {
    let mac = "0a:00:00:00:00:03";
    let joining = [
        state(S, 3, "veth1", "veth", mac, true, false, "new"),
        port_drop(S + MS, "BRIDGE_INGRESS_STP_STATE", 3, "ff02::16", "veth1"),
        state(S + 2 * MS, 3, "veth1", "veth", mac, true, true, "new"),
    ];
    assert!(alarms(&findings(&joining)).is_empty(), "{:?}", alarms(&findings(&joining)));
    // A port that has been blocking for a minute is a problem (a loop STP blocks, a stuck port).
    let stuck = [
        state(S, 3, "veth1", "veth", mac, true, false, "new"),
        state(S + 2 * MS, 3, "veth1", "veth", mac, true, true, "new"),
        port_drop(60 * S, "BRIDGE_INGRESS_STP_STATE", 3, "2001:db8::1", "veth1"),
    ];
    let f = findings(&stuck);
    assert!(f.iter().any(|f| f.rule == "packet-drop" && f.severity == Severity::Warning), "{:?}", alarms(&f));
}
