//! Path family records → [`PacketHop`]s: which device saw a traced packet, where, when, with
//! its outer and (for VXLAN/Geneve) inner headers. The hops of one packet share a
//! `trace_id`; `analyze::paths` joins them into [`PacketPath`]s.

use serde::{Deserialize, Serialize};

use super::{Flow, Task, Word};

/// Where a hop saw the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HopKind {
    /// A device received it (`net:netif_receive_skb`).
    Receive,
    /// Handed to a device for transmission (`net:net_dev_queue`).
    Transmit,
    /// The driver refused it (`net:net_dev_xmit` with an error).
    TransmitError,
    /// Dropped (`skb:kfree_skb`).
    Drop,
    /// Delivered, or done with normally (`skb:consume_skb`).
    Consume,
    /// A datapath function saw it between devices (kprobe; `function` names it).
    Function,
}

impl HopKind {
    /// Short word for text output and pcapng comments.
    pub fn word(self) -> &'static str {
        match self {
            HopKind::Receive => "rx",
            HopKind::Transmit => "tx",
            HopKind::TransmitError => "tx-error",
            HopKind::Drop => "drop",
            HopKind::Consume => "delivered",
            HopKind::Function => "fn",
        }
    }

    /// The packet's journey ends here.
    pub fn is_end(self) -> bool {
        matches!(self, HopKind::TransmitError | HopKind::Drop | HopKind::Consume)
    }
}

/// The word for a kernel [`tracer_ebpf::path_hook`] value (aggregate counters name points by it).
pub fn hook_word(hook: u32) -> &'static str {
    use tracer_ebpf::path_hook;
    match hook {
        path_hook::RECEIVE => HopKind::Receive.word(),
        path_hook::QUEUE => HopKind::Transmit.word(),
        path_hook::XMIT_ERROR => HopKind::TransmitError.word(),
        path_hook::FREE => "freed",
        path_hook::FUNCTION => HopKind::Function.word(),
        _ => HopKind::Consume.word(),
    }
}

impl PacketHop {
    /// The device's name; `socket` for a packet consumed after it left its device (queued to
    /// a socket), else `ifN`.
    pub fn device_label(&self) -> String {
        match (&self.device, self.hook) {
            (Some(d), _) => d.clone(),
            (None, HopKind::Consume) if self.ifindex == 0 => "socket".into(),
            (None, _) => format!("if{}", self.ifindex),
        }
    }
}

/// An encapsulation header between the outer and the inner packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tunnel {
    /// `vxlan` or `geneve`.
    pub kind: Word,
    pub vni: u32,
}

/// One sighting of a traced packet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PacketHop {
    /// Wall-clock time, RFC 3339 with microseconds.
    pub time: String,
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// CLOCK_REALTIME nanoseconds since the epoch (pcapng timestamps).
    #[serde(skip)]
    pub wall_ns: u64,
    pub cpu: u32,
    pub trace_id: u64,
    pub hook: HopKind,
    pub netns: Option<u32>,
    pub netns_name: Option<String>,
    /// The pod whose network namespace this is: its UID, and namespace and name when the
    /// container runtime (crictl) knows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<crate::pods::Pod>,
    pub ifindex: u32,
    pub device: Option<String>,
    /// `skb->len`: bytes from the current header on.
    pub len: u32,
    /// The outermost IP header and its transport header.
    pub outer: Option<Flow>,
    pub tunnel: Option<Tunnel>,
    /// The encapsulated packet's headers (VXLAN, Geneve).
    pub inner: Option<Flow>,
    /// Drops: the reason name (without `SKB_DROP_REASON_`), and where.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Function hops: the kernel function.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// Transmit errors: the driver's return code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xmit_rc: Option<i32>,
    pub task: Option<Task>,
    /// The captured bytes, from the link-layer header when `link_layer` (else from the IP
    /// header), for pcapng.
    #[serde(skip)]
    pub bytes: Vec<u8>,
    #[serde(skip)]
    pub link_layer: bool,
}

/// A hop of a [`PacketPath`] with its timing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PathStep {
    #[serde(flatten)]
    pub hop: PacketHop,
    /// Nanoseconds since the previous hop (0 for the first).
    pub since_previous_ns: u64,
    /// Nanoseconds since the first hop.
    pub since_start_ns: u64,
}

/// How a traced packet's journey ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum PathOutcome {
    /// Consumed by a socket or the stack (`consume_skb`).
    Delivered,
    /// Consumed right after a device transmitted it: the driver is done with it (a NIC sent
    /// it off this node), or the device split or copied it into new buffers (GSO
    /// segmentation, some tunnels), which dptrace does not follow.
    Sent { device: Option<String> },
    /// Dropped with this reason.
    Dropped { reason: Option<String>, location: Option<String> },
    /// The driver refused to transmit it.
    TransmitFailed { rc: i32 },
    /// Still in flight when the session ended, or freed without a tracepoint (for example
    /// merged by GRO).
    Unfinished,
}

/// One traced packet, hop by hop (assembled by `analyze::paths`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PacketPath {
    pub trace_id: u64,
    /// The packet as first seen.
    pub flow: Option<Flow>,
    pub steps: Vec<PathStep>,
    #[serde(flatten)]
    pub outcome: PathOutcome,
    /// From the first hop to the last.
    pub total_ns: u64,
}

/// What the decoder knows beyond the record: time, names, symbols.
pub struct HopContext {
    pub time: String,
    pub wall_ns: u64,
    pub netns_name: Option<String>,
    /// `symbol+0xoff` of a drop's location.
    pub location: Option<String>,
    /// The drop reason's name; `SKB_CONSUMED` makes the hop a [`HopKind::Consume`].
    pub reason: Option<String>,
    /// Function hops: the function's name.
    pub function: Option<String>,
}

pub fn decode_hop(raw: &tracer_ebpf::PathEvent, ctx: HopContext) -> PacketHop {
    use tracer_ebpf::{path_hook, PATH_NO_HEADER};
    let consumed = matches!(ctx.reason.as_deref(), Some("CONSUMED") | Some("NOT_DROPPED_YET"));
    let hook = match raw.hook {
        path_hook::RECEIVE => HopKind::Receive,
        path_hook::QUEUE => HopKind::Transmit,
        path_hook::XMIT_ERROR => HopKind::TransmitError,
        path_hook::FREE if !consumed => HopKind::Drop,
        path_hook::FUNCTION => HopKind::Function,
        _ => HopKind::Consume,
    };
    let caplen = (raw.caplen as usize).min(raw.data.len());
    let bytes = raw.data[..caplen].to_vec();
    let l3 = (raw.l3_offset != PATH_NO_HEADER).then_some(raw.l3_offset as usize).filter(|o| *o < caplen);
    let (outer, tunnel, inner) = match l3 {
        Some(o) => headers(&bytes[o..]),
        None => (None, None, None),
    };
    let link_layer = raw.l2_offset == 0 && l3.is_some_and(|o| o > 0);
    let (bytes, link_layer) = match (link_layer, l3) {
        (true, _) => (bytes, true),
        // Without a link-layer header the capture starts at the IP header.
        (false, Some(o)) => (bytes[o..].to_vec(), false),
        (false, None) => (Vec::new(), false),
    };
    PacketHop {
        time: ctx.time,
        ts_ns: raw.header.ts_ns,
        wall_ns: ctx.wall_ns,
        cpu: raw.header.cpu,
        trace_id: raw.trace_id,
        hook,
        netns: (raw.netns != 0).then_some(raw.netns),
        netns_name: ctx.netns_name,
        pod: None,
        ifindex: raw.ifindex,
        device: (raw.ifindex != 0).then(|| super::c_string(&raw.ifname)),
        len: raw.len,
        outer,
        tunnel,
        inner,
        drop_reason: (hook == HopKind::Drop).then_some(ctx.reason).flatten(),
        location: (hook == HopKind::Drop).then_some(ctx.location).flatten(),
        function: (hook == HopKind::Function).then_some(ctx.function).flatten(),
        xmit_rc: (hook == HopKind::TransmitError).then_some(raw.result as i32),
        task: super::task(&raw.header),
        bytes,
        link_layer,
    }
}

/// The outer flow and, for UDP to a VXLAN or Geneve port, the tunnel and the inner flow.
pub fn headers(ip: &[u8]) -> (Option<Flow>, Option<Tunnel>, Option<Flow>) {
    use crate::probes::path::{GENEVE_PORT, VXLAN_PORTS};
    let outer = super::parse_flow(ip);
    let Some(flow) = &outer else { return (None, None, None) };
    let dport = flow.dport.unwrap_or(0);
    if flow.l4 != "udp" || dport == 0 {
        return (outer, None, None);
    }
    let payload = match etherparse::LaxSlicedPacket::from_ip(ip).ok().and_then(|p| p.transport) {
        Some(etherparse::TransportSlice::Udp(udp)) => udp.payload().to_vec(),
        _ => return (outer, None, None),
    };
    let vni = |p: &[u8]| u32::from_be_bytes([0, p[4], p[5], p[6]]);
    let (kind, ethernet) = if VXLAN_PORTS.contains(&dport) && payload.len() >= 8 && payload[0] & 0x08 != 0 {
        ("vxlan", 8)
    } else if dport == GENEVE_PORT && payload.len() >= 8 && u16::from_be_bytes([payload[2], payload[3]]) == 0x6558 {
        ("geneve", 8 + (payload[0] & 0x3f) as usize * 4)
    } else {
        return (outer, None, None);
    };
    let tunnel = Some(Tunnel { kind: kind.into(), vni: vni(&payload) });
    let inner = payload.get(ethernet..).and_then(|eth| {
        let ethertype = u16::from_be_bytes([*eth.get(12)?, *eth.get(13)?]);
        matches!(ethertype, 0x0800 | 0x86dd).then(|| super::parse_flow(eth.get(14..)?)).flatten()
    });
    (outer, tunnel, inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IPv4 + UDP to `dport` carrying `payload` (checksums zero: the decoder does not check them).
    fn udp4(dport: u16, payload: &[u8]) -> Vec<u8> {
        let total = (20 + 8 + payload.len()) as u16;
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 192, 168, 50, 1, 192, 168, 50, 2];
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&40000u16.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        p
    }

    /// Ethernet + IPv4 ICMP echo request 10.244.1.2 > 10.244.2.2.
    fn inner_frame() -> Vec<u8> {
        let mut f = vec![0x0e, 0xfa, 0, 0, 2, 0, 0x0e, 0xfa, 0, 0, 1, 0, 0x08, 0x00];
        f.extend_from_slice(&[0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 1, 0, 0, 10, 244, 1, 2, 10, 244, 2, 2]);
        f.extend_from_slice(&[8, 0, 0, 0, 0, 1, 0, 1]);
        f
    }

    #[test]
    fn vxlan_and_geneve_are_opened() {
        let mut vxlan = vec![0x08, 0, 0, 0, 0, 0, 42, 0];
        vxlan.extend(inner_frame());
        let (outer, tunnel, inner) = headers(&udp4(8472, &vxlan));
        assert_eq!(outer.unwrap().dport, Some(8472));
        assert_eq!(tunnel, Some(Tunnel { kind: "vxlan".into(), vni: 42 }));
        let inner = inner.unwrap();
        assert_eq!(
            (inner.l4.as_str(), inner.src.to_string(), inner.dst.to_string()),
            ("icmp", "10.244.1.2".into(), "10.244.2.2".into())
        );
        // Geneve with one 8-byte option (opt len 2 words): the inner frame follows it.
        let mut geneve = vec![0x02, 0, 0x65, 0x58, 0, 0x01, 0x00, 0];
        geneve.extend_from_slice(&[0, 0x01, 0x80, 0x01, 0, 0, 0, 0]);
        geneve.extend(inner_frame());
        let (_, tunnel, inner) = headers(&udp4(6081, &geneve));
        assert_eq!(tunnel, Some(Tunnel { kind: "geneve".into(), vni: 256 }));
        assert_eq!(inner.unwrap().dst.to_string(), "10.244.2.2");
        // Other UDP, or VXLAN without its I flag: no tunnel.
        assert_eq!(headers(&udp4(53, &vxlan)).1, None);
        let mut no_flag = vxlan.clone();
        no_flag[0] = 0;
        assert_eq!(headers(&udp4(4789, &no_flag)).1, None);
        // Truncated capture: the tunnel is known, the inner packet is not.
        let (_, tunnel, inner) = headers(&udp4(4789, &vxlan[..12]));
        assert!(tunnel.is_some() && inner.is_none());
    }
}
