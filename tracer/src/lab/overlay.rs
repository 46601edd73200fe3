//! A flannel-style VXLAN overlay between two "nodes": the topology of the `vxlan-*` lab
//! scenarios. Each node namespace has an underlay `eth0` (a veth pair joins the two), a bridge
//! `cni0` holding its pod subnet's gateway, one pod namespace attached to `cni0` by a veth,
//! and a VXLAN device `flannel.1` (VNI 1, UDP port 8472, MTU 1450) with what flanneld's
//! vxlan backend installs for the other node: a route to its subnet via its `flannel.1`
//! address (onlink), a permanent neighbour entry for that address and a forwarding-database
//! entry sending that MAC to the other node's underlay address.
//!
//! | | node-a | node-b |
//! |---|---|---|
//! | eth0 (underlay) | 192.168.50.1/24 | 192.168.50.2/24 |
//! | cni0 | 10.244.1.1/24 | 10.244.2.1/24 |
//! | flannel.1 | 10.244.1.0/32, 0e:fa:00:00:01:00 | 10.244.2.0/32, 0e:fa:00:00:02:00 |
//! | pod (eth0) | pod-a 10.244.1.2 | pod-b 10.244.2.2 |

use std::{
    io,
    net::{IpAddr, Ipv4Addr},
};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST,
};
use netlink_packet_route::{
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::{
    netns::{in_netns, ip, set_sysctl_in, Lab, Unreproducible},
    paths::NsRef,
    topology::wait_until_ready,
};

/// flanneld's VXLAN device and its parameters.
pub const VXLAN_DEV: &str = "flannel.1";
pub const VNI: u32 = 1;
pub const VXLAN_PORT: u16 = 8472;
/// What fits through `flannel.1`: the underlay's 1500 bytes less 50 of VXLAN, UDP, outer IPv4
/// and inner Ethernet headers.
pub const VXLAN_MTU: u32 = 1450;
pub const UNDERLAY_MTU: u32 = 1500;

/// Two overlay nodes, each with one pod.
#[derive(Debug, Clone)]
pub struct Overlay {
    pub a: OverlayNode,
    pub b: OverlayNode,
}

#[derive(Debug, Clone)]
pub struct OverlayNode {
    pub ns: NsRef,
    /// The underlay device (`eth0`) and its address.
    pub uplink: String,
    pub underlay: Ipv4Addr,
    /// The pods' bridge (`cni0`), their gateway and subnet.
    pub bridge: String,
    pub gateway: Ipv4Addr,
    pub subnet: String,
    /// `flannel.1`, its address (the subnet's `.0`) and MAC.
    pub vxlan: String,
    pub vxlan_addr: Ipv4Addr,
    pub vxlan_mac: [u8; 6],
    pub pod: OverlayPod,
}

#[derive(Debug, Clone)]
pub struct OverlayPod {
    pub ns: NsRef,
    /// The pod's interface (`eth0`), inside its namespace.
    pub dev: String,
    /// Its veth peer in the node namespace, a port of `cni0`.
    pub port: String,
    pub v4: Ipv4Addr,
    /// The MTU of the pod's `eth0`, its veth peer and `cni0`.
    pub mtu: u32,
}

impl Overlay {
    /// Builds both nodes with namespaces `<prefix>-node-a`, `<prefix>-node-b`, `<prefix>-pod-a`
    /// and `<prefix>-pod-b` (scenarios of one `lab run --all` use prefixes of their own). The
    /// pods' interfaces and the bridges get MTU `pod_mtu`: flannel's 1450 when configured
    /// right, 1500 in the classic misconfiguration.
    pub fn build(lab: &mut Lab, prefix: &str, pod_mtu: u32) -> anyhow::Result<Self> {
        let node = |lab: &mut Lab, n: u8| -> anyhow::Result<OverlayNode> {
            let side = if n == 1 { "a" } else { "b" };
            let label = if n == 1 { "node-a" } else { "node-b" };
            let pod_label = if n == 1 { "pod-a" } else { "pod-b" };
            let netns = lab.add_netns(&format!("{prefix}-{label}"))?;
            let pod_netns = lab.add_netns(&format!("{prefix}-{pod_label}"))?;
            Ok(OverlayNode {
                ns: NsRef { label: label.into(), inode: lab.inode(&netns), name: netns },
                uplink: "eth0".into(),
                underlay: Ipv4Addr::new(192, 168, 50, n),
                bridge: "cni0".into(),
                gateway: Ipv4Addr::new(10, 244, n, 1),
                subnet: format!("10.244.{n}.0/24"),
                vxlan: VXLAN_DEV.into(),
                vxlan_addr: Ipv4Addr::new(10, 244, n, 0),
                vxlan_mac: [0x0e, 0xfa, 0, 0, n, 0],
                pod: OverlayPod {
                    ns: NsRef { label: pod_label.into(), inode: lab.inode(&pod_netns), name: pod_netns },
                    dev: "eth0".into(),
                    port: format!("veth-pod-{side}"),
                    v4: Ipv4Addr::new(10, 244, n, 2),
                    mtu: pod_mtu,
                },
            })
        };
        let t = Self { a: node(lab, 1)?, b: node(lab, 2)? };
        // The underlay: one veth pair, `eth0` at both ends.
        ip(&[
            "-n",
            &t.a.ns.name,
            "link",
            "add",
            &t.a.uplink,
            "type",
            "veth",
            "peer",
            "name",
            &t.b.uplink,
            "netns",
            &t.b.ns.name,
        ])?;
        for n in [&t.a, &t.b] {
            ip(&["-n", &n.ns.name, "addr", "add", &format!("{}/24", n.underlay), "dev", &n.uplink])?;
            ip(&["-n", &n.ns.name, "link", "set", &n.uplink, "up"])?;
        }
        for n in [&t.a, &t.b] {
            t.node_setup(n)?;
        }
        for (n, peer) in [(&t.a, &t.b), (&t.b, &t.a)] {
            // What flanneld installs for a remote node's subnet lease.
            let ns = n.ns.name.as_str();
            let peer_addr = peer.vxlan_addr.to_string();
            let peer_mac = mac_text(&peer.vxlan_mac);
            ip(&["-n", ns, "route", "add", &peer.subnet, "via", &peer_addr, "dev", &n.vxlan, "onlink"])?;
            ip(&["-n", ns, "neigh", "add", &peer_addr, "lladdr", &peer_mac, "dev", &n.vxlan, "nud", "permanent"])?;
            // `bridge fdb append MAC dev flannel.1 dst UNDERLAY`, through rtnetlink (no need
            // for iproute2's `bridge`).
            fdb_append(ns, &n.vxlan, peer.vxlan_mac, peer.underlay).map_err(|e| {
                anyhow::anyhow!("bridge fdb append {peer_mac} dev {} dst {} in {ns}: {e}", n.vxlan, peer.underlay)
            })?;
        }
        for n in [&t.a, &t.b] {
            wait_until_ready(&n.ns.name, &n.uplink, None)?;
            wait_until_ready(&n.ns.name, &n.pod.port, None)?;
            wait_until_ready(&n.pod.ns.name, &n.pod.dev, None)?;
            wait_until_ready(&n.ns.name, &n.bridge, None)?;
        }
        Ok(t)
    }

    /// One node's bridge, VXLAN device and pod.
    fn node_setup(&self, n: &OverlayNode) -> anyhow::Result<()> {
        let ns = n.ns.name.as_str();
        let mtu = n.pod.mtu.to_string();
        let unsupported = |e: anyhow::Error, what: &str| -> anyhow::Error {
            let text = e.to_string();
            if text.contains("Unknown device type") || text.contains("not supported") {
                Unreproducible(format!("this kernel has no {what} support: {text}")).into()
            } else {
                e
            }
        };
        ip(&["-n", ns, "link", "add", &n.bridge, "mtu", &mtu, "type", "bridge"])
            .map_err(|e| unsupported(e, "bridge"))?;
        ip(&["-n", ns, "addr", "add", &format!("{}/24", n.gateway), "dev", &n.bridge])?;
        ip(&["-n", ns, "link", "set", &n.bridge, "up"])?;
        let (vni, port, local) = (VNI.to_string(), VXLAN_PORT.to_string(), n.underlay.to_string());
        #[rustfmt::skip]
        let vxlan = [
            "-n", ns, "link", "add", &n.vxlan, "address", &mac_text(&n.vxlan_mac), "mtu", &VXLAN_MTU.to_string(),
            "type", "vxlan", "id", &vni, "dstport", &port, "local", &local, "dev", &n.uplink, "nolearning",
        ];
        ip(&vxlan).map_err(|e| unsupported(e, "VXLAN"))?;
        // No IPv6 link-local address: its neighbour and multicast listener messages would
        // have no VXLAN destination (drops with NO_TX_TARGET, noise beside the pods' traffic).
        // Best effort: a kernel without IPv6 has nothing to turn off.
        let _ = ip(&["-n", ns, "link", "set", &n.vxlan, "addrgenmode", "none"]);
        ip(&["-n", ns, "addr", "add", &format!("{}/32", n.vxlan_addr), "dev", &n.vxlan])?;
        ip(&["-n", ns, "link", "set", &n.vxlan, "up"])?;
        set_sysctl_in(ns, "net.ipv4.ip_forward", "1")?;
        let pod = &n.pod;
        #[rustfmt::skip]
        let veth = [
            "-n", ns, "link", "add", &pod.port, "mtu", &mtu, "type", "veth",
            "peer", "name", &pod.dev, "mtu", &mtu, "netns", &pod.ns.name,
        ];
        ip(&veth)?;
        ip(&["-n", ns, "link", "set", &pod.port, "master", &n.bridge])?;
        ip(&["-n", ns, "link", "set", &pod.port, "up"])?;
        let pns = pod.ns.name.as_str();
        ip(&["-n", pns, "addr", "add", &format!("{}/24", pod.v4), "dev", &pod.dev])?;
        ip(&["-n", pns, "link", "set", &pod.dev, "up"])?;
        ip(&["-n", pns, "route", "add", "default", "via", &n.gateway.to_string()])?;
        // Unprivileged ICMP echo sockets, as container runtimes allow in pods; the lab's
        // pings use them, so replies end in a socket rather than a raw socket's copy.
        set_sysctl_in(pns, "net.ipv4.ping_group_range", "0 2147483647")?;
        Ok(())
    }

    /// The four namespaces, for naming hops.
    pub fn namespaces(&self) -> Vec<NsRef> {
        vec![self.a.ns.clone(), self.b.ns.clone(), self.a.pod.ns.clone(), self.b.pod.ns.clone()]
    }

    pub fn pod_ips(&self) -> [IpAddr; 2] {
        [IpAddr::V4(self.a.pod.v4), IpAddr::V4(self.b.pod.v4)]
    }
}

pub fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// `bridge fdb append MAC dev DEV dst DST` (permanent, the device's own table) inside
/// namespace `netns`.
fn fdb_append(netns: &str, dev: &str, mac: [u8; 6], dst: Ipv4Addr) -> anyhow::Result<()> {
    in_netns(netns, || {
        let ifindex = nix::net::if_::if_nametoindex(dev).map_err(io::Error::from)?;
        let mut neighbour = NeighbourMessage::default();
        neighbour.header.family = AddressFamily::Bridge;
        neighbour.header.ifindex = ifindex;
        neighbour.header.state = NeighbourState::Permanent;
        neighbour.header.flags = NeighbourFlags::Own;
        neighbour.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        neighbour.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
        header.sequence_number = 1;
        let mut request =
            NetlinkMessage::new(header, NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(neighbour)));
        request.finalize();
        let mut bytes = vec![0; request.buffer_len()];
        request.serialize(&mut bytes);
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        socket.send(&bytes, 0)?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let len = socket.recv(&mut &mut buf[..], 0)?;
            if len == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "rtnetlink closed without an answer"));
            }
            let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[..len])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("unparsable rtnetlink answer: {e}")))?;
            if answer.header.sequence_number != 1 {
                continue;
            }
            return match answer.payload {
                NetlinkPayload::Error(e) if e.code.is_some() => Err(e.to_io()),
                _ => Ok(()),
            };
        }
    })
}
