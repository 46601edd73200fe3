//! Bridges and br_netfilter state of one network namespace, read from userspace: the bridge hook
//! family's source where kprobes on the bridge and br_netfilter functions are absent. It dumps
//! the namespace's links over rtnetlink (bridges, their ports and packet counters, the per-bridge
//! `nf_call_iptables`/`nf_call_ip6tables` options) and reads the namespace's
//! `net.bridge.bridge-nf-call-ip(6)tables` sysctls, so that `br-netfilter-missing` can say
//! "bridge X carried N packets while bridged traffic skipped iptables".

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
};

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::{
    link::{InfoBridge, InfoData, InfoKind, LinkAttribute, LinkInfo, LinkMessage},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use serde::Serialize;

/// The sysctls of br_netfilter; they exist in a namespace only while br_netfilter is loaded.
const BRIDGE_SYSCTLS: &str = "/proc/sys/net/bridge";
/// Present when br_netfilter is a loaded module (a built-in one may have no entry here).
const BR_NETFILTER_MODULE: &str = "/sys/module/br_netfilter";

/// Bridges and br_netfilter state of one network namespace.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BridgeSnapshot {
    pub netns: u32,
    /// `/proc/sys/net/bridge` exists in the namespace, or the br_netfilter module is loaded.
    pub br_netfilter_loaded: bool,
    /// The namespace's `net.bridge.bridge-nf-call-iptables`; None when absent.
    pub call_iptables: Option<bool>,
    /// The namespace's `net.bridge.bridge-nf-call-ip6tables`; None when absent.
    pub call_ip6tables: Option<bool>,
    pub bridges: Vec<BridgeInfo>,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct BridgeInfo {
    pub name: String,
    pub ifindex: u32,
    /// Names of the links enslaved to the bridge.
    pub ports: Vec<String>,
    /// The bridge device's own counters (traffic to and from the host's stack).
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Sum of the ports' rx_packets: packets that entered the bridge from its ports.
    pub forwarded_hint: u64,
    /// Per-bridge IFLA_BR_NF_CALL_IPTABLES / IP6TABLES (`ip link set BR type bridge
    /// nf_call_iptables 1`), None when the kernel does not report them.
    pub nf_call_iptables: Option<bool>,
    pub nf_call_ip6tables: Option<bool>,
    /// Each port's counters, for [`traffic`].
    pub port_counters: Vec<PortCounters>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PortCounters {
    pub name: String,
    pub ifindex: u32,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

impl BridgeSnapshot {
    /// Reads the bridges of the namespace at `netns_path` (whose inode is `netns`). Never fails:
    /// what could not be read is in `errors`.
    pub fn take(netns: u32, netns_path: &Path) -> BridgeSnapshot {
        let mut snapshot = BridgeSnapshot { netns, ..Default::default() };
        let file = match File::open(netns_path) {
            Ok(file) => file,
            Err(e) => {
                snapshot.errors.push(format!("opening {}: {e}", netns_path.display()));
                return snapshot;
            }
        };
        // setns changes only the calling thread: a short-lived one enters the namespace, so
        // that both the rtnetlink socket and /proc/sys/net (which follows the reading task's
        // namespace) are the namespace's.
        let thread = std::thread::Builder::new().name("dptrace-bridges".into()).spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("entering the namespace: {e}"))?;
            Ok::<_, String>(read_here())
        });
        match thread.map(|t| t.join()) {
            Ok(Ok(Ok((state, links)))) => {
                let (loaded, call_iptables, call_ip6tables) = state;
                snapshot.br_netfilter_loaded = loaded;
                snapshot.call_iptables = call_iptables;
                snapshot.call_ip6tables = call_ip6tables;
                match links {
                    Ok((links, errors)) => {
                        snapshot.bridges = bridges_of(&links);
                        snapshot.errors.extend(errors);
                    }
                    Err(e) => snapshot.errors.push(format!("dumping links: {e}")),
                }
            }
            Ok(Ok(Err(e))) => snapshot.errors.push(format!("{}: {e}", netns_path.display())),
            Ok(Err(_)) => snapshot.errors.push("the bridge reader thread panicked".into()),
            Err(e) => snapshot.errors.push(format!("starting the bridge reader thread: {e}")),
        }
        snapshot
    }
}

/// Packets each bridge carried between two snapshots: the rx deltas of its ports (a port
/// missing before, or whose counters went down because it was recreated, counts whole).
pub fn traffic(before: Option<&BridgeSnapshot>, after: &BridgeSnapshot) -> Vec<(String, u64)> {
    after
        .bridges
        .iter()
        .map(|bridge| {
            let prior = before.and_then(|b| b.bridges.iter().find(|p| p.name == bridge.name));
            let packets = bridge
                .port_counters
                .iter()
                .map(|port| {
                    let then = prior
                        .and_then(|p| p.port_counters.iter().find(|q| q.ifindex == port.ifindex && q.name == port.name))
                        .map_or(0, |q| q.rx_packets);
                    if port.rx_packets >= then {
                        port.rx_packets - then
                    } else {
                        port.rx_packets
                    }
                })
                .sum();
            (bridge.name.clone(), packets)
        })
        .collect()
}

/// (br_netfilter loaded, bridge-nf-call-iptables, bridge-nf-call-ip6tables)
type NetfilterState = (bool, Option<bool>, Option<bool>);
/// Links and the messages that could not be parsed.
type Links = Result<(Vec<LinkMessage>, Vec<String>), String>;

/// Reads the calling thread's namespace.
fn read_here() -> (NetfilterState, Links) {
    let sysctl = |name: &str| -> Option<bool> {
        let path = PathBuf::from(BRIDGE_SYSCTLS).join(name);
        std::fs::read_to_string(path).ok().map(|v| v.trim() != "0")
    };
    let loaded = Path::new(BRIDGE_SYSCTLS).is_dir() || Path::new(BR_NETFILTER_MODULE).exists();
    let state = (loaded, sysctl("bridge-nf-call-iptables"), sysctl("bridge-nf-call-ip6tables"));
    (state, dump_links().map_err(|e| e.to_string()))
}

/// RTM_GETLINK dump of the socket's namespace.
fn dump_links() -> io::Result<(Vec<LinkMessage>, Vec<String>)> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let seq = 1;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut request =
        NetlinkMessage::new(header, NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetLink(LinkMessage::default())));
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);
    socket.send(&bytes, 0)?;

    let (mut links, mut errors) = (Vec::new(), Vec::new());
    // The kernel fills dump datagrams up to the receive buffer (at most 32 KiB by default).
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let len = socket.recv(&mut &mut buf[..], 0)?;
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the dump ended without NLMSG_DONE"));
        }
        let mut offset = 0;
        while offset + 16 <= len {
            let msg_len = u32::from_ne_bytes(buf[offset..offset + 4].try_into().unwrap_or_default()) as usize;
            if msg_len < 16 || offset + msg_len > len {
                break;
            }
            let message = &buf[offset..offset + msg_len];
            offset += (msg_len + 3) & !3;
            if u32::from_ne_bytes(message[8..12].try_into().unwrap_or_default()) != seq {
                continue;
            }
            match NetlinkMessage::<RouteNetlinkMessage>::deserialize(message) {
                Ok(m) => match m.payload {
                    NetlinkPayload::Done(_) => return Ok((links, errors)),
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => links.push(link),
                    _ => {}
                },
                // One link the crate cannot parse must not hide the others.
                Err(e) => errors.push(format!("a link message could not be parsed: {e}")),
            }
        }
    }
}

/// Bridges, their ports and counters, from a link dump.
fn bridges_of(links: &[LinkMessage]) -> Vec<BridgeInfo> {
    let facts: Vec<LinkFacts> = links.iter().map(LinkFacts::of).collect();
    let mut bridges: Vec<BridgeInfo> = facts
        .iter()
        .filter(|l| l.bridge)
        .map(|l| BridgeInfo {
            name: l.name.clone(),
            ifindex: l.ifindex,
            rx_packets: l.rx_packets,
            tx_packets: l.tx_packets,
            nf_call_iptables: l.nf_call_iptables,
            nf_call_ip6tables: l.nf_call_ip6tables,
            ..Default::default()
        })
        .collect();
    for bridge in &mut bridges {
        for port in facts.iter().filter(|l| l.controller == Some(bridge.ifindex)) {
            bridge.ports.push(port.name.clone());
            bridge.forwarded_hint += port.rx_packets;
            bridge.port_counters.push(PortCounters {
                name: port.name.clone(),
                ifindex: port.ifindex,
                rx_packets: port.rx_packets,
                tx_packets: port.tx_packets,
            });
        }
    }
    bridges
}

#[derive(Default)]
struct LinkFacts {
    name: String,
    ifindex: u32,
    bridge: bool,
    controller: Option<u32>,
    rx_packets: u64,
    tx_packets: u64,
    nf_call_iptables: Option<bool>,
    nf_call_ip6tables: Option<bool>,
}

impl LinkFacts {
    fn of(link: &LinkMessage) -> LinkFacts {
        let mut facts = LinkFacts { ifindex: link.header.index, ..Default::default() };
        let mut have_stats64 = false;
        for attribute in &link.attributes {
            match attribute {
                LinkAttribute::IfName(name) => facts.name = name.clone(),
                LinkAttribute::Controller(index) => facts.controller = Some(*index),
                LinkAttribute::Stats64(stats) => {
                    (facts.rx_packets, facts.tx_packets) = (stats.rx_packets, stats.tx_packets);
                    have_stats64 = true;
                }
                // 32-bit counters only when the 64-bit ones are absent (they wrap).
                LinkAttribute::Stats(stats) if !have_stats64 => {
                    (facts.rx_packets, facts.tx_packets) = (stats.rx_packets.into(), stats.tx_packets.into());
                }
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(InfoKind::Bridge) => facts.bridge = true,
                            LinkInfo::Data(InfoData::Bridge(options)) => {
                                for option in options {
                                    match option {
                                        InfoBridge::NfCallIpTables(on) => facts.nf_call_iptables = Some(*on),
                                        InfoBridge::NfCallIp6Tables(on) => facts.nf_call_ip6tables = Some(*on),
                                        _ => {}
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        facts
    }
}

#[cfg(test)]
mod tests {
    use std::{
        process::Command,
        time::{Duration, Instant},
    };

    use super::*;

    /// A throwaway namespace, deleted on drop (also when the test fails).
    struct TestNetns(String);

    impl TestNetns {
        fn new(role: &str) -> Option<Self> {
            let name = format!("dpt-br-test-{}-{role}", std::process::id());
            let ok = Command::new("ip").args(["netns", "add", &name]).status().is_ok_and(|s| s.success());
            ok.then(|| {
                let ns = TestNetns(name);
                ns.run(&["ip", "link", "set", "lo", "up"]);
                ns
            })
        }

        fn path(&self) -> PathBuf {
            PathBuf::from("/run/netns").join(&self.0)
        }

        fn run(&self, args: &[&str]) -> String {
            let out =
                Command::new("ip").args(["netns", "exec", &self.0]).args(args).output().expect("run ip netns exec");
            assert!(out.status.success(), "{args:?} in {}: {}", self.0, String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    }

    impl Drop for TestNetns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    fn link(index: u32, name: &str, attributes: Vec<LinkAttribute>) -> LinkMessage {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.attributes.push(LinkAttribute::IfName(name.into()));
        link.attributes.extend(attributes);
        link
    }

    fn stats(rx: u64, tx: u64) -> LinkAttribute {
        let mut stats = netlink_packet_route::link::Stats64::default();
        (stats.rx_packets, stats.tx_packets) = (rx, tx);
        LinkAttribute::Stats64(stats)
    }

    fn snapshot(ports: &[(u32, &str, u64)]) -> BridgeSnapshot {
        let mut links = vec![link(
            3,
            "br0",
            vec![
                stats(5, 6),
                LinkAttribute::LinkInfo(vec![
                    LinkInfo::Kind(InfoKind::Bridge),
                    LinkInfo::Data(InfoData::Bridge(vec![
                        InfoBridge::NfCallIpTables(false),
                        InfoBridge::NfCallIp6Tables(true),
                    ])),
                ]),
            ],
        )];
        for (index, name, rx) in ports {
            links.push(link(*index, name, vec![LinkAttribute::Controller(3), stats(*rx, 0)]));
        }
        links.push(link(9, "eth0", vec![stats(1000, 1000)]));
        BridgeSnapshot { netns: 1, bridges: bridges_of(&links), ..Default::default() }
    }

    #[test]
    fn finds_bridges_ports_and_counters() {
        let s = snapshot(&[(4, "veth-a", 10), (5, "veth-b", 7)]);
        assert_eq!(s.bridges.len(), 1);
        let br = &s.bridges[0];
        assert_eq!((br.name.as_str(), br.ifindex, br.rx_packets, br.tx_packets), ("br0", 3, 5, 6));
        assert_eq!(br.ports, ["veth-a", "veth-b"]);
        assert_eq!(br.forwarded_hint, 17);
        assert_eq!((br.nf_call_iptables, br.nf_call_ip6tables), (Some(false), Some(true)));
    }

    #[test]
    fn traffic_is_the_ports_rx_delta() {
        let before = snapshot(&[(4, "veth-a", 10), (5, "veth-b", 7)]);
        // veth-b was recreated (new ifindex, counters from zero); veth-c is new.
        let after = snapshot(&[(4, "veth-a", 15), (8, "veth-b", 2), (6, "veth-c", 1)]);
        assert_eq!(traffic(Some(&before), &after), [("br0".to_string(), 5 + 2 + 1)]);
        assert_eq!(traffic(None, &before), [("br0".to_string(), 17)]);
        assert_eq!(traffic(Some(&before), &before), [("br0".to_string(), 0)]);
    }

    /// A bridge in one namespace with veth ports into two others: the netlink dump, the
    /// namespace's own sysctls and the traffic between the two ends (root only).
    #[test]
    fn real_bridge_between_two_namespaces() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (network namespaces)");
            return;
        }
        let (Some(hub), Some(a), Some(b)) = (TestNetns::new("hub"), TestNetns::new("a"), TestNetns::new("b")) else {
            eprintln!("skipped: cannot create network namespaces");
            return;
        };
        hub.run(&["ip", "link", "add", "br-test", "type", "bridge"]);
        hub.run(&["ip", "link", "set", "br-test", "up"]);
        for (ns, port, addr) in [(&a, "port-a", "10.203.0.1/24"), (&b, "port-b", "10.203.0.2/24")] {
            hub.run(&["ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", &ns.0]);
            hub.run(&["ip", "link", "set", port, "master", "br-test", "up"]);
            ns.run(&["ip", "addr", "add", addr, "dev", "eth0"]);
            ns.run(&["ip", "link", "set", "eth0", "up"]);
        }
        let sysctls = Path::new(BRIDGE_SYSCTLS).exists();
        if sysctls {
            hub.run(&["sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=0"]);
        }
        let inode = crate::kernel::netns::inode_of(&hub.path()).expect("namespace inode");

        let started = Instant::now();
        let before = BridgeSnapshot::take(inode, &hub.path());
        let took = started.elapsed();
        eprintln!("one bridge snapshot took {took:?}");
        assert!(took < Duration::from_secs(1));
        assert!(before.errors.is_empty(), "{:?}", before.errors);
        assert_eq!(before.netns, inode);
        let br = before.bridges.iter().find(|b| b.name == "br-test").expect("br-test");
        let mut ports = br.ports.clone();
        ports.sort();
        assert_eq!(ports, ["port-a", "port-b"]);
        assert!(br.nf_call_iptables.is_some(), "the kernel reports IFLA_BR_NF_CALL_IPTABLES");
        if sysctls {
            assert!(before.br_netfilter_loaded);
            // The namespace's value, not the host's.
            assert_eq!(before.call_iptables, Some(false));
            assert!(before.call_ip6tables.is_some());
        }

        a.run(&["ping", "-c", "2", "-W", "2", "10.203.0.2"]);
        let after = BridgeSnapshot::take(inode, &hub.path());
        let moved = traffic(Some(&before), &after);
        let (_, packets) = moved.iter().find(|(name, _)| name == "br-test").expect("br-test traffic");
        assert!(*packets >= 4, "{moved:?}");
        // The namespace of the ping ends has no bridge.
        let a_inode = crate::kernel::netns::inode_of(&a.path()).unwrap();
        assert!(BridgeSnapshot::take(a_inode, &a.path()).bridges.is_empty());
    }
}
