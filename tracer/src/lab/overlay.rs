//! A flannel-style overlay between two "nodes": the topology of the `vxlan-*` and
//! `wireguard-*` lab scenarios. Each node namespace has an underlay `eth0` (a veth pair joins
//! the two), a bridge `cni0` holding its pod subnet's gateway, one pod namespace attached to
//! `cni0` by a veth, and a tunnel device to the other node, as the flannel backend of that
//! [`TunnelKind`] builds it:
//!
//! - `vxlan`: a VXLAN device `flannel.1` (VNI 1, UDP port 8472, MTU 1450) with what flanneld
//!   installs for the other node: a route to its subnet via its `flannel.1` address (onlink),
//!   a permanent neighbour entry for that address and a forwarding-database entry sending that
//!   MAC to the other node's underlay address.
//! - `wireguard`: a WireGuard device `flannel-wg` (UDP port 51820, MTU 1420) holding the
//!   subnet's `.0` address, a link route for the whole cluster network (10.244.0.0/16) through
//!   it, and the other node as its one peer: its public key, endpoint its underlay address,
//!   allowed IPs its pod subnet (configured with `wg`, package wireguard-tools).
//!
//! | | node-a | node-b |
//! |---|---|---|
//! | eth0 (underlay) | 192.168.50.1/24 | 192.168.50.2/24 |
//! | cni0 | 10.244.1.1/24 | 10.244.2.1/24 |
//! | flannel.1 / flannel-wg | 10.244.1.0/32 (VXLAN: 0e:fa:00:00:01:00) | 10.244.2.0/32 (0e:fa:00:00:02:00) |
//! | pod (eth0) | pod-a 10.244.1.2 | pod-b 10.244.2.2 |

use std::{
    fs::DirBuilder,
    io::{self, Write},
    net::{IpAddr, Ipv4Addr},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST,
};
use netlink_packet_route::{
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::{
    netns::{exec_in, in_netns, ip, set_sysctl_in, Lab, Unreproducible},
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
/// flanneld's WireGuard device and its listening port (each node's, and its peer's endpoint).
pub const WIREGUARD_DEV: &str = "flannel-wg";
pub const WIREGUARD_PORT: u16 = 51820;
/// What fits through `flannel-wg`: the underlay's 1500 bytes less 80, flannel's allowance for
/// an IPv6 underlay (40 outer IP, 8 UDP, 16 WireGuard header, 16 Poly1305 tag); over IPv4 60
/// would do.
pub const WIREGUARD_MTU: u32 = 1420;
/// The cluster network all pod subnets are part of; flannel's wireguard backend routes all of
/// it through `flannel-wg` and lets the peers' allowed IPs pick the node.
pub const CLUSTER_NETWORK: &str = "10.244.0.0/16";

/// Which tunnel joins the nodes, as the flannel backend of that name builds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelKind {
    Vxlan,
    Wireguard,
}

impl TunnelKind {
    /// The tunnel device's name on each node.
    pub fn device(self) -> &'static str {
        match self {
            TunnelKind::Vxlan => VXLAN_DEV,
            TunnelKind::Wireguard => WIREGUARD_DEV,
        }
    }

    /// The tunnel device's MTU: the underlay's less the encapsulation.
    pub fn mtu(self) -> u32 {
        match self {
            TunnelKind::Vxlan => VXLAN_MTU,
            TunnelKind::Wireguard => WIREGUARD_MTU,
        }
    }

    /// The UDP port the encapsulated packets go to.
    pub fn port(self) -> u16 {
        match self {
            TunnelKind::Vxlan => VXLAN_PORT,
            TunnelKind::Wireguard => WIREGUARD_PORT,
        }
    }

    /// The fact id of a kernel without this tunnel's link kind (`Unreproducible`).
    fn missing_fact(self) -> &'static str {
        match self {
            TunnelKind::Vxlan => "kernel-lacks-vxlan",
            TunnelKind::Wireguard => "kernel-lacks-wireguard",
        }
    }

    fn title(self) -> &'static str {
        match self {
            TunnelKind::Vxlan => "VXLAN",
            TunnelKind::Wireguard => "WireGuard",
        }
    }
}

/// Two overlay nodes, each with one pod.
#[derive(Debug, Clone)]
pub struct Overlay {
    pub kind: TunnelKind,
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
    /// The tunnel device (`flannel.1`, `flannel-wg`) and its address (the subnet's `.0`).
    pub tunnel: String,
    pub tunnel_addr: Ipv4Addr,
    /// The VXLAN device's MAC (a WireGuard device has none).
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
    /// and `<prefix>-pod-b` (scenarios of one `lab run --all` use prefixes of their own),
    /// joined by a tunnel of `kind`. The pods' interfaces and the bridges get MTU `pod_mtu`:
    /// the tunnel's MTU (VXLAN 1450, WireGuard 1420) when configured right, 1500 in the
    /// classic misconfiguration. Fails with [`Unreproducible`] where the kernel lacks the
    /// tunnel's link kind.
    pub fn build(lab: &mut Lab, prefix: &str, kind: TunnelKind, pod_mtu: u32) -> anyhow::Result<Self> {
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
                tunnel: kind.device().into(),
                tunnel_addr: Ipv4Addr::new(10, 244, n, 0),
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
        let t = Self { kind, a: node(lab, 1)?, b: node(lab, 2)? };
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
        match kind {
            TunnelKind::Vxlan => t.vxlan_peers()?,
            TunnelKind::Wireguard => t.wireguard_peers(lab)?,
        }
        for n in [&t.a, &t.b] {
            wait_until_ready(&n.ns.name, &n.uplink, None)?;
            wait_until_ready(&n.ns.name, &n.pod.port, None)?;
            wait_until_ready(&n.pod.ns.name, &n.pod.dev, None)?;
            wait_until_ready(&n.ns.name, &n.bridge, None)?;
        }
        Ok(t)
    }

    /// One node's bridge, tunnel device and pod.
    fn node_setup(&self, n: &OverlayNode) -> anyhow::Result<()> {
        let ns = n.ns.name.as_str();
        let mtu = n.pod.mtu.to_string();
        let unsupported = |e: anyhow::Error, what: &str, fact: &'static str| -> anyhow::Error {
            let text = e.to_string();
            if text.contains("Unknown device type") || text.contains("not supported") {
                Unreproducible::new(fact, format!("this kernel has no {what} support: {text}")).into()
            } else {
                e
            }
        };
        ip(&["-n", ns, "link", "add", &n.bridge, "mtu", &mtu, "type", "bridge"])
            .map_err(|e| unsupported(e, "bridge", "kernel-lacks-bridge"))?;
        ip(&["-n", ns, "addr", "add", &format!("{}/24", n.gateway), "dev", &n.bridge])?;
        ip(&["-n", ns, "link", "set", &n.bridge, "up"])?;
        let tunnel_mtu = self.kind.mtu().to_string();
        match self.kind {
            TunnelKind::Vxlan => {
                let (vni, port, local) = (VNI.to_string(), VXLAN_PORT.to_string(), n.underlay.to_string());
                #[rustfmt::skip]
                let vxlan = [
                    "-n", ns, "link", "add", &n.tunnel, "address", &mac_text(&n.vxlan_mac), "mtu", &tunnel_mtu,
                    "type", "vxlan", "id", &vni, "dstport", &port, "local", &local, "dev", &n.uplink, "nolearning",
                ];
                ip(&vxlan)
            }
            // Where the kernel has no WireGuard this fails with EOPNOTSUPP ("Unknown device
            // type"), as in `wireguard-unsupported`.
            TunnelKind::Wireguard => ip(&["-n", ns, "link", "add", &n.tunnel, "mtu", &tunnel_mtu, "type", "wireguard"]),
        }
        .map_err(|e| unsupported(e, self.kind.title(), self.kind.missing_fact()))?;
        // No IPv6 link-local address: its neighbour and multicast listener messages would
        // have no tunnel destination (VXLAN drops them with NO_TX_TARGET; WireGuard, whose
        // devices get a random one, has no peer for them), noise beside the pods' traffic.
        // Best effort: a kernel without IPv6 has nothing to turn off.
        let _ = ip(&["-n", ns, "link", "set", &n.tunnel, "addrgenmode", "none"]);
        ip(&["-n", ns, "addr", "add", &format!("{}/32", n.tunnel_addr), "dev", &n.tunnel])?;
        ip(&["-n", ns, "link", "set", &n.tunnel, "up"])?;
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

    /// What flanneld's vxlan backend installs for a remote node's subnet lease.
    fn vxlan_peers(&self) -> anyhow::Result<()> {
        for (n, peer) in [(&self.a, &self.b), (&self.b, &self.a)] {
            let ns = n.ns.name.as_str();
            let peer_addr = peer.tunnel_addr.to_string();
            let peer_mac = mac_text(&peer.vxlan_mac);
            ip(&["-n", ns, "route", "add", &peer.subnet, "via", &peer_addr, "dev", &n.tunnel, "onlink"])?;
            ip(&["-n", ns, "neigh", "add", &peer_addr, "lladdr", &peer_mac, "dev", &n.tunnel, "nud", "permanent"])?;
            // `bridge fdb append MAC dev flannel.1 dst UNDERLAY`, through rtnetlink (no need
            // for iproute2's `bridge`).
            fdb_append(ns, &n.tunnel, peer.vxlan_mac, peer.underlay).map_err(|e| {
                anyhow::anyhow!("bridge fdb append {peer_mac} dev {} dst {} in {ns}: {e}", n.tunnel, peer.underlay)
            })?;
        }
        Ok(())
    }

    /// What flanneld's wireguard backend configures: a key pair per node, each node a peer of
    /// the other (endpoint its underlay address, allowed IPs its pod subnet), and the cluster
    /// network routed through the device. The private keys live in a directory of their own
    /// only as long as `wg` needs to read them.
    fn wireguard_peers(&self, lab: &mut Lab) -> anyhow::Result<()> {
        let keys = KeyDir::create(&lab.scratch_dir()?.join("wireguard-keys"))?;
        let private = [keys.private_key("node-a")?, keys.private_key("node-b")?];
        let public = [public_key(&private[0])?, public_key(&private[1])?];
        let port = WIREGUARD_PORT.to_string();
        for (i, (n, peer)) in [(&self.a, &self.b), (&self.b, &self.a)].into_iter().enumerate() {
            let ns = n.ns.name.as_str();
            let key_file = private[i].to_string_lossy().into_owned();
            let endpoint = format!("{}:{port}", peer.underlay);
            #[rustfmt::skip]
            let set = [
                "set", &n.tunnel, "private-key", &key_file, "listen-port", &port,
                "peer", &public[1 - i], "endpoint", &endpoint, "allowed-ips", &peer.subnet,
            ];
            exec_in(ns, "wg", &set).with_context(|| format!("configure {} in {ns}", n.tunnel))?;
            ip(&["-n", ns, "route", "add", CLUSTER_NETWORK, "dev", &n.tunnel, "scope", "link"])?;
        }
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

/// A directory only its owner can read, for WireGuard private keys; removed when dropped.
struct KeyDir(PathBuf);

impl KeyDir {
    fn create(path: &Path) -> anyhow::Result<Self> {
        DirBuilder::new().mode(0o700).create(path).with_context(|| format!("create {}", path.display()))?;
        Ok(Self(path.to_path_buf()))
    }

    /// A new private key (`wg genkey`) in file `<name>.key`, readable by its owner only.
    fn private_key(&self, name: &str) -> anyhow::Result<PathBuf> {
        let key = wg(&["genkey"], None)?;
        let path = self.0.join(format!("{name}.key"));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(key.as_bytes()))
            .with_context(|| format!("write {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for KeyDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            log::warn!("could not remove {}: {e}", self.0.display());
        }
    }
}

/// The public key of the private key in file `private` (`wg pubkey`).
fn public_key(private: &Path) -> anyhow::Result<String> {
    let key = std::fs::read(private).with_context(|| format!("read {}", private.display()))?;
    wg(&["pubkey"], Some(&key))
}

/// Runs `wg ARGS…` (here, not in a lab namespace) with `input` on its stdin; returns its
/// output, trimmed.
fn wg(args: &[&str], input: Option<&[u8]>) -> anyhow::Result<String> {
    let spawned = Command::new("wg")
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        // A missing tool is a fact of this machine's setup, not of its kernel.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Unreproducible::new(
                "missing-tool:wg",
                format!("cannot run `wg` ({e}): install wireguard-tools (`cargo xtask setup` does)"),
            )
            .into())
        }
        other => other.context("cannot run `wg` (package wireguard-tools; `cargo xtask setup` installs it)")?,
    };
    if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(bytes)?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("`wg {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
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
