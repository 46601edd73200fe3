//! Where a packet leaves a network namespace, and what fits through there: the kernel's own
//! route lookup (RTM_GETROUTE, as `ip route get DST from SRC iif DEV` does it) for the
//! outgoing device and the route's MTU, then that device's MTU, kind and, for tunnels, the
//! underlay device it encapsulates onto (RTM_GETLINK). `tunnel-mtu-exceeded` uses it to say
//! "the route leaves through flannel.1 (vxlan, MTU 1450 = eth0 1500 - 50)".
//!
//! Read from inside the namespace: a short-lived thread enters it (setns changes only the
//! calling thread), opens a NETLINK_ROUTE socket there and asks.

use std::{fs::File, io, net::IpAddr, path::Path};

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_route::{
    link::{InfoData, InfoGeneve, InfoGre, InfoGre6, InfoIpTunnel, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage},
    route::{RouteAttribute, RouteMessage, RouteMetric},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use serde::{Deserialize, Serialize};

/// The device a route points at and what fits through it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Egress {
    /// The device the route points at, e.g. `flannel.1`.
    pub device: String,
    pub ifindex: u32,
    pub mtu: u32,
    /// rtnetlink link kind (`vxlan`, `geneve`, `wireguard`, `ipip`, `veth`, `bridge`, …), None
    /// for devices without one (physical NICs).
    pub kind: Option<String>,
    /// Route MTU (`ip route … mtu N` / RTAX_MTU) when the route sets one, or a path MTU the
    /// kernel learned for this destination (an ICMP "fragmentation needed" it received): it
    /// wins over the device's.
    pub route_mtu: Option<u32>,
    /// For tunnels: the underlay device and its MTU when known (vxlan `dev`, ipip/gre `dev`,
    /// or the route to the tunnel's remote end), so a message can say "1450 = 1500 - 50".
    pub underlay: Option<(String, u32)>,
}

impl Egress {
    /// What fits: the route's MTU when it sets one, the device's otherwise.
    pub fn effective_mtu(&self) -> u32 {
        self.route_mtu.unwrap_or(self.mtu)
    }
}

/// Where a packet to `dst` leaves the namespace at `netns_path`. With `iif` (and `src`) the
/// kernel does an input lookup, as for a packet forwarded from that device; when that fails
/// (rp_filter, forwarding off, a source that is not local) it is asked again for `dst` alone.
/// None when the namespace cannot be entered or there is no route.
pub fn egress_in(netns_path: &Path, dst: IpAddr, src: Option<IpAddr>, iif: Option<u32>) -> Option<Egress> {
    in_netns(netns_path, move || egress_here(dst, src, iif))
}

/// Device facts by ifindex inside a netns (name, MTU, kind, underlay): for drops whose
/// device is itself a tunnel. `route_mtu` is None.
pub fn device_in(netns_path: &Path, ifindex: u32) -> Option<Egress> {
    in_netns(netns_path, move || Rtnl::open().ok()?.device(ifindex))
}

/// Runs `f` in a short-lived thread inside the namespace at `netns_path`.
fn in_netns<T: Send>(netns_path: &Path, f: impl FnOnce() -> Option<T> + Send) -> Option<T> {
    let file = File::open(netns_path).ok()?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
            f()
        })
        .join()
        .ok()
        .flatten()
    })
}

/// [`egress_in`] for the calling thread's namespace.
pub fn egress_here(dst: IpAddr, src: Option<IpAddr>, iif: Option<u32>) -> Option<Egress> {
    let rtnl = Rtnl::open().ok()?;
    let src = src.filter(|s| s.is_ipv4() == dst.is_ipv4());
    let first = (src.is_some() || iif.is_some()).then(|| rtnl.route(dst, src, iif).ok()).flatten();
    let route = match first {
        Some(route) => route,
        None => rtnl.route(dst, None, None).ok()?,
    };
    let mut egress = rtnl.device(route.oif?)?;
    egress.route_mtu = route.mtu;
    Some(egress)
}

/// What a route lookup answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RouteFacts {
    oif: Option<u32>,
    mtu: Option<u32>,
}

/// What a link answer says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct LinkFacts {
    name: String,
    ifindex: u32,
    mtu: u32,
    kind: Option<String>,
    /// The tunnel's underlay device by its own attribute (IFLA_VXLAN_LINK, IFLA_IPTUN_LINK,
    /// IFLA_GRE_LINK); 0 means none.
    underlay: Option<u32>,
    /// The tunnel's (unicast) remote end, for tunnels without a device of their own.
    remote: Option<IpAddr>,
    /// The link's peer indexes refer to another namespace (IFLA_LINK_NETNSID).
    other_netns: bool,
}

/// A NETLINK_ROUTE socket in the calling thread's namespace, for one-shot requests.
struct Rtnl {
    socket: Socket,
    seq: std::cell::Cell<u32>,
}

impl Rtnl {
    fn open() -> io::Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl { socket, seq: std::cell::Cell::new(0) })
    }

    fn route(&self, dst: IpAddr, src: Option<IpAddr>, iif: Option<u32>) -> io::Result<RouteFacts> {
        match self.ask(RouteNetlinkMessage::GetRoute(route_request(dst, src, iif)))? {
            RouteNetlinkMessage::NewRoute(route) => Ok(route_facts(&route)),
            other => Err(unexpected(&other)),
        }
    }

    fn link(&self, ifindex: u32) -> io::Result<LinkFacts> {
        let mut request = LinkMessage::default();
        request.header.index = ifindex;
        match self.ask(RouteNetlinkMessage::GetLink(request))? {
            RouteNetlinkMessage::NewLink(link) => Ok(link_facts(&link)),
            other => Err(unexpected(&other)),
        }
    }

    /// The device `ifindex` with its underlay, when it is a tunnel over a known one.
    fn device(&self, ifindex: u32) -> Option<Egress> {
        let link = self.link(ifindex).ok()?;
        let underlay_index = match (link.underlay, link.remote) {
            // A `dev` in another namespace has an index that means nothing here.
            (Some(index), _) if index != 0 && !link.other_netns => Some(index),
            (_, Some(remote)) => self.route(remote, None, None).ok().and_then(|r| r.oif),
            _ => None,
        }
        .filter(|&index| index != ifindex);
        let underlay = underlay_index.and_then(|index| self.link(index).ok()).map(|u| (u.name, u.mtu));
        Some(Egress {
            device: link.name,
            ifindex: link.ifindex,
            mtu: link.mtu,
            kind: link.kind,
            route_mtu: None,
            underlay,
        })
    }

    /// Sends one request and returns the kernel's answer to it.
    fn ask(&self, message: RouteNetlinkMessage) -> io::Result<RouteNetlinkMessage> {
        let seq = self.seq.get().wrapping_add(1);
        self.seq.set(seq);
        self.socket.send(&request_bytes(message, seq), 0)?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let len = self.socket.recv(&mut &mut buf[..], 0)?;
            if len == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "rtnetlink closed without an answer"));
            }
            if let Some(answer) = answer_in(&buf[..len], seq) {
                return answer;
            }
        }
    }
}

/// RTM_GETROUTE for one destination (not a dump): what `ip route get` sends.
fn route_request(dst: IpAddr, src: Option<IpAddr>, iif: Option<u32>) -> RouteMessage {
    let mut route = RouteMessage::default();
    let bits = if dst.is_ipv4() { 32 } else { 128 };
    route.header.address_family = if dst.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    route.header.destination_prefix_length = bits;
    route.attributes.push(RouteAttribute::Destination(dst.into()));
    if let Some(src) = src.filter(|s| s.is_ipv4() == dst.is_ipv4()) {
        route.header.source_prefix_length = bits;
        route.attributes.push(RouteAttribute::Source(src.into()));
    }
    if let Some(iif) = iif {
        route.attributes.push(RouteAttribute::Iif(iif));
    }
    route
}

fn request_bytes(message: RouteNetlinkMessage, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = seq;
    let mut request = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);
    bytes
}

/// The answer to request `seq` in one datagram, if it holds one: the message, or the
/// kernel's error.
fn answer_in(datagram: &[u8], seq: u32) -> Option<io::Result<RouteNetlinkMessage>> {
    let mut offset = 0;
    while offset + 16 <= datagram.len() {
        let msg_len = u32::from_ne_bytes(datagram[offset..offset + 4].try_into().ok()?) as usize;
        if msg_len < 16 || offset + msg_len > datagram.len() {
            return None;
        }
        let message = &datagram[offset..offset + msg_len];
        offset += (msg_len + 3) & !3;
        if u32::from_ne_bytes(message[8..12].try_into().ok()?) != seq {
            continue;
        }
        return Some(match NetlinkMessage::<RouteNetlinkMessage>::deserialize(message) {
            Ok(m) => match m.payload {
                NetlinkPayload::InnerMessage(inner) => Ok(inner),
                NetlinkPayload::Error(e) if e.code.is_some() => Err(e.to_io()),
                _ => Err(io::Error::new(io::ErrorKind::InvalidData, "rtnetlink answered without a message")),
            },
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, format!("unparsable rtnetlink answer: {e}"))),
        });
    }
    None
}

fn unexpected(message: &RouteNetlinkMessage) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("unexpected rtnetlink answer {:?}", message.message_type()))
}

fn route_facts(route: &RouteMessage) -> RouteFacts {
    let mut facts = RouteFacts { oif: None, mtu: None };
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Oif(index) => facts.oif = Some(*index),
            RouteAttribute::Metrics(metrics) => {
                facts.mtu = metrics.iter().find_map(|m| match m {
                    RouteMetric::Mtu(mtu) if *mtu != 0 => Some(*mtu),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    facts
}

fn link_facts(link: &LinkMessage) -> LinkFacts {
    let mut facts = LinkFacts { ifindex: link.header.index, ..Default::default() };
    let unicast = |a: IpAddr| (!a.is_unspecified() && !a.is_multicast()).then_some(a);
    for attribute in &link.attributes {
        match attribute {
            LinkAttribute::IfName(name) => facts.name.clone_from(name),
            LinkAttribute::Mtu(mtu) => facts.mtu = *mtu,
            LinkAttribute::LinkNetNsId(_) => facts.other_netns = true,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => facts.kind = Some(kind.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(options)) => {
                            for option in options {
                                match option {
                                    InfoVxlan::Link(index) => facts.underlay = Some(*index),
                                    InfoVxlan::Group(a) => facts.remote = unicast((*a).into()),
                                    InfoVxlan::Group6(a) => facts.remote = unicast((*a).into()),
                                    _ => {}
                                }
                            }
                        }
                        LinkInfo::Data(InfoData::Geneve(options)) => {
                            for option in options {
                                match option {
                                    InfoGeneve::Remote(a) => facts.remote = unicast((*a).into()),
                                    InfoGeneve::Remote6(a) => facts.remote = unicast((*a).into()),
                                    _ => {}
                                }
                            }
                        }
                        LinkInfo::Data(InfoData::IpTunnel(options)) => {
                            for option in options {
                                match option {
                                    InfoIpTunnel::Link(index) => facts.underlay = Some(*index),
                                    InfoIpTunnel::Remote(a) => facts.remote = unicast(*a),
                                    _ => {}
                                }
                            }
                        }
                        LinkInfo::Data(InfoData::GreTun(options) | InfoData::GreTap(options)) => {
                            for option in options {
                                match option {
                                    InfoGre::Link(index) => facts.underlay = Some(*index),
                                    InfoGre::Remote(a) => facts.remote = unicast((*a).into()),
                                    _ => {}
                                }
                            }
                        }
                        LinkInfo::Data(InfoData::GreTun6(options) | InfoData::GreTap6(options)) => {
                            for option in options {
                                match option {
                                    InfoGre6::Link(index) => facts.underlay = Some(*index),
                                    InfoGre6::Remote(a) => facts.remote = unicast((*a).into()),
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

/// Link kinds that encapsulate packets in another IP header: their MTU is the underlay's
/// minus their overhead.
pub fn is_tunnel_kind(kind: &str) -> bool {
    matches!(
        kind,
        "vxlan"
            | "geneve"
            | "wireguard"
            | "ipip"
            | "sit"
            | "gre"
            | "gretap"
            | "ip6tnl"
            | "ip6gre"
            | "ip6gretap"
            | "erspan"
            | "ip6erspan"
            | "bareudp"
            | "vti"
            | "vti6"
            | "xfrm"
    )
}

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, process::Command};

    use netlink_packet_core::ErrorMessage;
    use netlink_packet_route::link::InfoKind;

    use netlink_packet_route::route::RouteAddress;

    use super::*;

    #[test]
    fn a_route_request_carries_the_destination_source_and_input_device() {
        let dst: IpAddr = "10.244.2.2".parse().unwrap();
        let src: IpAddr = "10.244.1.2".parse().unwrap();
        let request = route_request(dst, Some(src), Some(4));
        assert_eq!(request.header.address_family, AddressFamily::Inet);
        assert_eq!((request.header.destination_prefix_length, request.header.source_prefix_length), (32, 32));
        assert_eq!(
            request.attributes,
            [
                RouteAttribute::Destination(RouteAddress::Inet("10.244.2.2".parse().unwrap())),
                RouteAttribute::Source(RouteAddress::Inet("10.244.1.2".parse().unwrap())),
                RouteAttribute::Iif(4),
            ]
        );
        // A source of the other family is left out; IPv6 has 128-bit prefixes.
        let v6 = route_request("fd00::2".parse().unwrap(), Some(src), None);
        assert_eq!(v6.header.address_family, AddressFamily::Inet6);
        assert_eq!((v6.header.destination_prefix_length, v6.header.source_prefix_length), (128, 0));
        assert_eq!(v6.attributes.len(), 1);

        // On the wire: a request (not a dump) with the sequence number, RTA_DST = 10.244.2.2.
        let bytes = request_bytes(RouteNetlinkMessage::GetRoute(request), 7);
        assert_eq!(u16::from_ne_bytes([bytes[4], bytes[5]]), 26, "RTM_GETROUTE");
        assert_eq!(u16::from_ne_bytes([bytes[6], bytes[7]]), NLM_F_REQUEST);
        assert_eq!(u32::from_ne_bytes(bytes[8..12].try_into().unwrap()), 7);
        assert!(bytes.windows(8).any(|w| w == [8, 0, 1, 0, 10, 244, 2, 2]), "{bytes:?}");
    }

    fn answer(message: RouteNetlinkMessage, seq: u32) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.sequence_number = seq;
        let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        m.finalize();
        let mut bytes = vec![0; m.buffer_len()];
        m.serialize(&mut bytes);
        bytes
    }

    #[test]
    fn the_answer_gives_the_output_device_and_the_route_mtu() {
        let mut route = RouteMessage::default();
        route.attributes = vec![
            RouteAttribute::Table(254),
            RouteAttribute::Oif(5),
            RouteAttribute::Metrics(vec![RouteMetric::Mtu(1400), RouteMetric::Hoplimit(64)]),
        ];
        // A stale answer to another request comes first in the datagram.
        let mut datagram = answer(RouteNetlinkMessage::NewRoute(RouteMessage::default()), 3);
        datagram.extend(answer(RouteNetlinkMessage::NewRoute(route), 4));
        let Some(Ok(RouteNetlinkMessage::NewRoute(parsed))) = answer_in(&datagram, 4) else { panic!("no answer") };
        assert_eq!(route_facts(&parsed), RouteFacts { oif: Some(5), mtu: Some(1400) });
        assert!(answer_in(&datagram, 9).is_none());

        // The kernel's error (ENETUNREACH) is the answer's error.
        let mut error = ErrorMessage::default();
        error.code = std::num::NonZeroI32::new(-101);
        let mut header = NetlinkHeader::default();
        header.sequence_number = 5;
        let mut m = NetlinkMessage::<RouteNetlinkMessage>::new(header, NetlinkPayload::Error(error));
        m.finalize();
        let mut bytes = vec![0; m.buffer_len()];
        m.serialize(&mut bytes);
        let err = answer_in(&bytes, 5).unwrap().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(101));
        assert_eq!(route_facts(&RouteMessage::default()), RouteFacts { oif: None, mtu: None });
    }

    #[test]
    fn link_facts_name_the_kind_and_underlay_of_tunnels() {
        let mut vxlan = LinkMessage::default();
        vxlan.header.index = 6;
        vxlan.attributes = vec![
            LinkAttribute::IfName("flannel.1".into()),
            LinkAttribute::Mtu(1450),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Vxlan),
                LinkInfo::Data(InfoData::Vxlan(vec![InfoVxlan::Id(1), InfoVxlan::Link(2)])),
            ]),
        ];
        let facts = link_facts(&vxlan);
        assert_eq!(
            facts,
            LinkFacts {
                name: "flannel.1".into(),
                ifindex: 6,
                mtu: 1450,
                kind: Some("vxlan".into()),
                underlay: Some(2),
                remote: None,
                other_netns: false,
            }
        );

        let mut geneve = LinkMessage::default();
        geneve.attributes = vec![
            LinkAttribute::IfName("genev_sys_6081".into()),
            LinkAttribute::Mtu(1400),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Geneve),
                LinkInfo::Data(InfoData::Geneve(vec![InfoGeneve::Remote("192.168.1.20".parse().unwrap())])),
            ]),
        ];
        let facts = link_facts(&geneve);
        assert_eq!((facts.kind.as_deref(), facts.remote), (Some("geneve"), Some("192.168.1.20".parse().unwrap())));

        let mut nic = LinkMessage::default();
        nic.attributes = vec![LinkAttribute::IfName("eth0".into()), LinkAttribute::Mtu(1500)];
        assert_eq!(link_facts(&nic).kind, None);
    }

    /// A throwaway namespace, deleted on drop (also when the test fails).
    struct TestNetns(String);

    impl TestNetns {
        fn new(role: &str) -> Option<Self> {
            let name = format!("dpt-routes-test-{}-{role}", std::process::id());
            let ok = Command::new("ip").args(["netns", "add", &name]).status().is_ok_and(|s| s.success());
            ok.then(|| TestNetns(name))
        }

        fn path(&self) -> PathBuf {
            PathBuf::from("/run/netns").join(&self.0)
        }

        fn run(&self, command: &str) {
            assert!(self.try_run(command), "{command} failed in {}", self.0);
        }

        fn try_run(&self, command: &str) -> bool {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.0, "sh", "-ec", command])
                .output()
                .expect("run ip netns exec");
            if !out.status.success() {
                eprintln!("{command}: {}", String::from_utf8_lossy(&out.stderr));
            }
            out.status.success()
        }

        fn ifindex(&self, name: &str) -> u32 {
            let path = format!("/sys/class/net/{name}/ifindex");
            let out = Command::new("ip").args(["netns", "exec", &self.0, "cat", &path]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        }
    }

    impl Drop for TestNetns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    /// A flannel-like node: pods on the bridge `cni0`, other nodes' pod subnets routed via the
    /// vxlan device `flannel.1` (MTU 1450) over `eth0` (a veth, MTU 1500); a route with its
    /// own MTU; a geneve device with a remote and no `dev` (root only: namespaces and devices).
    #[test]
    fn real_routes_through_a_vxlan_device() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (network namespaces)");
            return;
        }
        let Some(node) = TestNetns::new("node") else {
            eprintln!("skipped: cannot create network namespaces");
            return;
        };
        node.run(
            "ip link set lo up
             ip link add eth0 mtu 1500 type veth peer name eth0-peer
             ip link set eth0-peer up
             ip link set eth0 up
             ip addr add 192.168.77.1/24 dev eth0
             ip link add cni0 type bridge
             ip link set cni0 up
             ip addr add 10.244.1.1/24 dev cni0
             ip link add flannel.1 type vxlan id 1 dev eth0 local 192.168.77.1 dstport 8472 nolearning
             ip link set flannel.1 mtu 1450 up
             ip addr add 10.244.1.0/32 dev flannel.1
             ip route add 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink
             ip route add 10.244.3.0/24 via 10.244.3.0 dev flannel.1 onlink mtu 1400
             sysctl -qw net.ipv4.ip_forward=1
             sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 net.ipv4.conf.cni0.rp_filter=0",
        );
        let (eth0, cni0, flannel) = (node.ifindex("eth0"), node.ifindex("cni0"), node.ifindex("flannel.1"));
        let want = Egress {
            device: "flannel.1".into(),
            ifindex: flannel,
            mtu: 1450,
            kind: Some("vxlan".into()),
            route_mtu: None,
            underlay: Some(("eth0".into(), 1500)),
        };
        let dst: IpAddr = "10.244.2.2".parse().unwrap();
        let src: IpAddr = "10.244.1.2".parse().unwrap();
        // A forwarded packet from a pod behind cni0, as the decoder asks.
        let started = std::time::Instant::now();
        assert_eq!(egress_in(&node.path(), dst, Some(src), Some(cni0)), Some(want.clone()));
        eprintln!("one egress lookup (thread, setns, route and two links) took {:?}", started.elapsed());
        // An input lookup the kernel refuses (a martian source) falls back to the plain one.
        assert_eq!(egress_in(&node.path(), dst, Some("127.0.0.1".parse().unwrap()), Some(cni0)), Some(want.clone()));
        assert_eq!(egress_in(&node.path(), dst, None, None), Some(want.clone()));
        // The route's own MTU wins.
        let via_mtu = egress_in(&node.path(), "10.244.3.9".parse().unwrap(), Some(src), Some(cni0)).unwrap();
        assert_eq!((via_mtu.route_mtu, via_mtu.effective_mtu()), (Some(1400), 1400));
        // No route at all.
        assert_eq!(egress_in(&node.path(), "8.8.8.8".parse().unwrap(), None, None), None);
        // By ifindex.
        assert_eq!(device_in(&node.path(), flannel), Some(want));
        let nic = device_in(&node.path(), eth0).unwrap();
        assert_eq!(
            (nic.device.as_str(), nic.mtu, nic.kind.as_deref(), nic.underlay),
            ("eth0", 1500, Some("veth"), None)
        );
        assert_eq!(device_in(&node.path(), 9999), None);

        // A vxlan device without `dev` but with a remote: the underlay is where the route to
        // the remote leaves.
        node.run(
            "ip link add vx-remote type vxlan id 9 remote 192.168.77.2 dstport 4789
             ip link set vx-remote mtu 1450 up",
        );
        let remote = device_in(&node.path(), node.ifindex("vx-remote")).unwrap();
        assert_eq!(remote.underlay, Some(("eth0".into(), 1500)));

        // The input lookup is the forwarded packet's: a policy rule for packets from cni0
        // sends them elsewhere than the node's own packets go.
        node.run(
            "ip route add 10.244.4.0/24 via 10.244.4.0 dev flannel.1 onlink
             ip route add 10.244.4.0/24 via 192.168.77.2 dev eth0 table 100
             ip rule add iif cni0 lookup 100",
        );
        let pod_dst: IpAddr = "10.244.4.2".parse().unwrap();
        assert_eq!(egress_in(&node.path(), pod_dst, Some(src), Some(cni0)).map(|e| e.device), Some("eth0".into()));
        assert_eq!(egress_in(&node.path(), pod_dst, None, None).map(|e| e.device), Some("flannel.1".into()));

        // A geneve device without `dev`: the underlay is where the route to its remote leaves
        // (when this kernel has geneve).
        if node.try_run("ip link add gnv0 type geneve id 7 remote 192.168.77.2") {
            node.run("ip link set gnv0 mtu 1400 up");
            let geneve = device_in(&node.path(), node.ifindex("gnv0")).unwrap();
            assert_eq!(geneve.kind.as_deref(), Some("geneve"));
            assert_eq!(geneve.underlay, Some(("eth0".into(), 1500)));
        } else {
            eprintln!("geneve part skipped: no geneve on this kernel");
        }

        // A namespace that is gone.
        let path = node.path();
        drop(node);
        assert_eq!(egress_in(&path, dst, None, None), None);
    }
}
