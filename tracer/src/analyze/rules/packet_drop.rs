//! `packet-drop`: every other drop, grouped by reason, kernel function and namespace, with
//! advice for the reasons an operator can act on.
//!
//! Evidence: `skb:kfree_skb` drops whose reason has no dedicated rule (or, before 5.17, any
//! drop: the location alone then tells them apart), and the link monitor's states of the
//! device they died on (a bridge port that had just come up drops by design).

use std::net::IpAddr;

use super::{finding_from_groups, group_by, netns_label, EXPLAINED_REASONS};
use crate::{
    analyze::{
        correlate::{Correlated, DropGroup},
        Finding, Rule, Severity,
    },
    kernel::KernelSummary,
};

pub struct PacketDrop;

/// Reasons that are part of normal operation; reported as info, not warnings.
const ROUTINE: [&str; 6] =
    ["NOT_SPECIFIED", "OTHERHOST", "UNICAST_IN_L2_MULTICAST", "IPV6DISABLED", "TCP_OLD_DATA", "QUEUE_PURGE"];

impl Rule for PacketDrop {
    fn id(&self) -> &'static str {
        "packet-drop"
    }

    fn evaluate(&self, state: &Correlated, _kernel: &KernelSummary) -> Vec<Finding> {
        let candidates = state
            .drop_groups()
            .into_iter()
            .filter(|g| g.key.reason.as_deref().is_none_or(|r| !EXPLAINED_REASONS.contains(&r)))
            // XDP_DROPs of a program on the device: rule xdp-drop names the program.
            .filter(|g| !super::xdp_drop::explained_by_xdp_drop(g));
        group_by(candidates, |g| (g.key.reason.clone(), g.key.function.clone(), g.key.netns, expected(state, g)))
            .into_iter()
            .map(|groups| {
                let g = groups[0];
                let count: u64 = groups.iter().map(|g| g.count).sum();
                let reason = g.key.reason.as_deref().unwrap_or("(reason unknown on this kernel)");
                let why = expected(state, g);
                let summary = format!(
                    "{count} packet(s) dropped with reason {reason} in {} (netns {}){}",
                    g.key.function,
                    netns_label(g),
                    why.map(|w| format!(": {w}")).unwrap_or_default()
                );
                let severity =
                    if ROUTINE.contains(&reason) || why.is_some() { Severity::Info } else { Severity::Warning };
                finding_from_groups(self.id(), severity, summary, &groups, advice(reason).to_string())
            })
            .collect()
    }
}

/// How long a bridge port may drop after it came up: until it forwards (at once without STP;
/// listening and learning take 2 × the default forward delay of 15 s with STP).
const PORT_JOINING_NS: u64 = 31_000_000_000;
/// A drop stamped this long before the port's "up" is still part of its coming up: the link
/// monitor reports carrier after the first frames already arrived.
const PORT_JOINING_EARLY_NS: u64 = 1_000_000_000;

/// Why drops of a kind that is often a fault are expected here, when they are: the kernel's
/// normal behaviour, not a problem to warn about.
fn expected(state: &Correlated, g: &DropGroup) -> Option<&'static str> {
    match g.key.reason.as_deref()? {
        // A new (or returning) bridge port does not forward until the bridge has put it in
        // the forwarding state; frames that arrive before are dropped.
        "BRIDGE_INGRESS_STP_STATE" => {
            let history = state.link_history(g.first.netns?, g.first.ifindex?)?;
            let near_up = |ts: u64| {
                history.ups.iter().any(|u| ts + PORT_JOINING_EARLY_NS >= u.ts_ns && ts <= u.ts_ns + PORT_JOINING_NS)
            };
            (near_up(g.first.ts_ns) && near_up(g.last_ts_ns))
                .then_some("the port had just come up and was not forwarding yet (expected for a new bridge port)")
        }
        // Multicast and broadcast a bridge sends while it has no port to send them to (its own
        // IPv6 MLD and neighbour discovery after the last pod left): noise, nobody is missing.
        "NO_TX_TARGET" => {
            group_addressed(g).then_some("multicast or broadcast the bridge had no port to send to (expected)")
        }
        // A bridge without ports has no carrier, and the kernel parks a device without carrier
        // on the no-op qdisc: the IGMP/MLD reports it sends meanwhile are dropped there.
        "QDISC_DROP" => {
            let history = state.link_history(g.first.netns?, g.first.ifindex?)?;
            (group_addressed(g) && history.link_kind.as_deref() == Some("bridge"))
                .then_some("multicast a bridge sent while it had no port, so no carrier (expected)")
        }
        // IPv6 neighbour discovery and MLD that a link sends before (or after) it has IPv6
        // routes: a pod's new eth0 announcing itself, a device going away. Noise.
        "IP_INNOROUTES" | "IP_OUTNOROUTES" => {
            let flow = g.first.flow.as_ref()?;
            let link_local_multicast = matches!(flow.dst, IpAddr::V6(a) if a.segments()[0] == 0xff02);
            let control = flow.l4 == "icmpv6" && flow.icmp_type.is_some_and(|t| (130..=143).contains(&t));
            (link_local_multicast && control)
                .then_some("IPv6 neighbour discovery or MLD on a link without IPv6 routes (expected)")
        }
        _ => None,
    }
}

/// Multicast or broadcast (or not IP at all, such as ARP): nobody in particular misses it.
fn group_addressed(g: &DropGroup) -> bool {
    g.first.flow.as_ref().is_none_or(|f| match f.dst {
        IpAddr::V4(a) => a.is_multicast() || a.is_broadcast(),
        IpAddr::V6(a) => a.is_multicast(),
    })
}

/// What an operator can do about common drop reasons.
fn advice(reason: &str) -> &'static str {
    match reason {
        "NO_SOCKET" => "Nothing was bound to the destination (see rule no-listener).",
        "PKT_TOO_BIG" => "The packet exceeds the path MTU: lower the pod/interface MTU to fit the tunnel overhead (VXLAN 50 bytes, WireGuard 80, Geneve 50+) or allow ICMP fragmentation-needed.",
        "IP_RPFILTER" => "Reverse-path filtering rejected the source address: set net.ipv4.conf.<dev>.rp_filter=2 (loose) or 0 on interfaces with asymmetric routes (common with overlays and multiple NICs).",
        "NEIGH_FAILED" | "NEIGH_QUEUEFULL" | "NEIGH_DEAD" => "Neighbour (ARP/NDP) resolution failed: the next hop does not answer. Check `ip neigh`, the peer's address and that the link is up.",
        "IP_OUTNOROUTES" | "IP_INNOROUTES" => "No route to the destination: check `ip route get <dst>` in that namespace; a CNI route may be missing.",
        "IP_INADDRERRORS" | "IP_INVALID_SOURCE" | "IP_LOCAL_SOURCE" => "The addresses are invalid for this host (martian or local source): check addressing and NAT rules.",
        "QDISC_DROP" | "QDISC_OVERLIMIT" | "QDISC_CONGESTED" | "FULL_RING" | "CPU_BACKLOG" => "Queues overflowed under load: check `tc -s qdisc`, ring sizes (`ethtool -g`) and net.core.netdev_max_backlog.",
        "TCP_CSUM" | "UDP_CSUM" | "IP_CSUM" | "ICMP_CSUM" | "SKB_CSUM" => "Checksum errors: often checksum offload on a virtual device or a broken NIC; try `ethtool -K <dev> tx off rx off` to confirm.",
        "XDP" => "An XDP program dropped the packet: check `ip link` for attached XDP programs.",
        "TC_INGRESS" | "TC_EGRESS" => "A tc/BPF program dropped the packet: check `tc filter show dev <dev> ingress|egress`.",
        "SOCKET_RCVBUFF" | "PROTO_MEM" => "The receiving socket's buffer was full: the application reads too slowly, or raise net.core.rmem_max / the socket buffer.",
        "VXLAN_VNI_NOT_FOUND" | "VXLAN_INVALID_HDR" => "A VXLAN packet arrived for a VNI or port no local vxlan device serves: check the VNI and dstport of both ends.",
        "BRIDGE_INGRESS_STP_STATE" => "The bridge port is not forwarding (STP state): check `bridge link`.",
        _ => "Look at the location: the kernel function that freed the packet points to the subsystem (netfilter, routing, neighbour, socket) that decided to drop it.",
    }
}
