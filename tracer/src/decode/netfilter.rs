//! Tracepoint records of the netfilter family → resets, ICMP errors and connection
//! attempts. Fields are read by name with the tracepoint's tracefs format, so one decoder
//! serves every layout (`tcp:tcp_send_reset` stores ports and addresses separately up to
//! 6.9 and as `sockaddr`s since 6.10).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};
use tracer_ebpf::{RecordSource, TraceRecordEvent};

use super::{task, Flow, Task, Word};
use crate::{
    kernel::tracefs::TracepointFormat,
    probes::{
        netfilter::AnswerFunction,
        rule_counters::{RuleHit, RuleMatch, Verdict},
    },
};

const AF_INET: u16 = libc::AF_INET as u16;
const AF_INET6: u16 = libc::AF_INET6 as u16;

/// A TCP RST the stack sent, or one a socket received.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TcpReset {
    pub time: String,
    pub ts_ns: u64,
    /// `sent` (`tcp:tcp_send_reset`) or `received` (`tcp:tcp_receive_reset`).
    pub direction: Word,
    pub netns: Option<u32>,
    pub netns_name: Option<String>,
    /// The pod whose network namespace this is: its UID, and namespace and name when the
    /// container runtime (crictl) knows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<crate::pods::Pod>,
    pub ifindex: Option<u32>,
    /// For `sent`: the RST's own addresses (from the local end to the peer). For `received`:
    /// the socket's (local > remote).
    pub flow: Option<Flow>,
    /// Whether a full socket was involved (a sent RST without one answers a packet that
    /// found no socket: nothing listens).
    pub socket: bool,
    /// The socket's state (`TCP_SYN_SENT`, …) where the record has it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Why the stack sent it (`enum sk_rst_reason`, 6.10+): `NO_SOCKET` for no listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skb: Option<String>,
    pub task: Option<Task>,
    /// Where it was seen: the tracepoint, or the kernel function (kprobe) that sent it.
    pub origin: String,
    /// Sent by a REJECT rule (`nf_send_reset`), not by the TCP stack.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub by_reject: bool,
}

/// An ICMP error the kernel sent (`icmp:icmp_send`), about the packet `flow`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IcmpError {
    pub time: String,
    pub ts_ns: u64,
    pub netns: Option<u32>,
    pub netns_name: Option<String>,
    /// The pod whose network namespace this is: its UID, and namespace and name when the
    /// container runtime (crictl) knows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<crate::pods::Pod>,
    pub ifindex: Option<u32>,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// `port-unreachable`, `host-prohibited`, … (RFC 792 / 1812 names).
    pub meaning: String,
    /// The packet the error answers (ports only for UDP: the tracepoint records no others).
    pub flow: Option<Flow>,
    pub skb: String,
    pub task: Option<Task>,
    /// Where it was seen: the tracepoint, or the kernel function (kprobe) that sent it.
    pub origin: String,
    /// Sent by a REJECT rule (`nf_send_unreach`), not by the stack.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub by_reject: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packet_len: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<crate::kernel::routes::Egress>,
}

/// A TCP connection attempt (a socket entering SYN_SENT), with its addresses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TcpConnect {
    pub time: String,
    pub ts_ns: u64,
    pub netns: Option<u32>,
    pub netns_name: Option<String>,
    /// The pod whose network namespace this is: its UID, and namespace and name when the
    /// container runtime (crictl) knows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<crate::pods::Pod>,
    pub flow: Option<Flow>,
    pub task: Option<Task>,
}

/// One decoded record of the family.
pub enum NetfilterEvent {
    Reset(TcpReset),
    Icmp(IcmpError),
    Connect(TcpConnect),
}

/// A rule or chain policy whose packet counters moved during the session (rule counters,
/// read in userspace at the start and the end).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleCounter {
    pub time: String,
    pub ts_ns: u64,
    pub netns: u32,
    pub netns_name: Option<String>,
    /// The pod whose network namespace this is: its UID, and namespace and name when the
    /// container runtime (crictl) knows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<crate::pods::Pod>,
    /// `iptables-nft`, `iptables-legacy` or `nftables`.
    pub backend: Word,
    pub family: String,
    pub table: String,
    pub chain: String,
    /// Netfilter hooks of the base chains that reach `chain`.
    pub hooks: Vec<String>,
    /// The rule as its tool prints it; None for a chain policy.
    pub rule: Option<String>,
    pub verdict: String,
    pub packets: u64,
    pub bytes: u64,
    /// The namespace had no snapshot at the start: these counts are since the rule was made.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_baseline: bool,
    /// Left out of the event's JSON (`kind` names the event type there); a record stores
    /// them beside the event (`record`), the rules need them.
    #[serde(skip, default = "Verdict::unknown")]
    pub kind: Verdict,
    #[serde(skip)]
    pub matches: RuleMatch,
}

impl RuleCounter {
    pub fn from_hit(hit: RuleHit, time: String, ts_ns: u64, netns_name: Option<String>, no_baseline: bool) -> Self {
        Self {
            time,
            ts_ns,
            netns: hit.netns,
            netns_name,
            pod: None,
            backend: hit.backend.into(),
            family: hit.family,
            table: hit.table,
            chain: hit.chain,
            hooks: hit.hooks,
            rule: hit.rule,
            verdict: hit.verdict.to_string(),
            packets: hit.packets,
            bytes: hit.bytes,
            no_baseline,
            kind: hit.verdict,
            matches: hit.matches,
        }
    }

    /// `nftables inet dptlab input: tcp dport 6443 counter reject with tcp reset`.
    pub fn describe(&self) -> String {
        match &self.rule {
            Some(rule) => format!("{} {} {} {}: `{rule}`", self.backend, self.family, self.table, self.chain),
            None => {
                format!("{} {} {} chain {} policy {}", self.backend, self.family, self.table, self.chain, self.verdict)
            }
        }
    }
}

/// A bridge, what it carried during the session and the br_netfilter state of its namespace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BridgeState {
    pub time: String,
    pub ts_ns: u64,
    pub netns: u32,
    pub netns_name: Option<String>,
    /// The pod whose network namespace this is: its UID, and namespace and name when the
    /// container runtime (crictl) knows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<crate::pods::Pod>,
    pub bridge: String,
    pub ports: Vec<String>,
    /// Packets received on its ports during the session.
    pub packets: u64,
    /// br_netfilter present (its sysctls exist in the namespace).
    pub br_netfilter_loaded: bool,
    /// The namespace's `net.bridge.bridge-nf-call-iptables` / `-ip6tables`.
    pub call_iptables: Option<bool>,
    pub call_ip6tables: Option<bool>,
    /// The bridge's own `nf_call_iptables` / `nf_call_ip6tables` options.
    pub bridge_nf_call_iptables: Option<bool>,
    pub bridge_nf_call_ip6tables: Option<bool>,
}

impl BridgeState {
    /// Whether bridged IPv4 (or IPv6) frames of this bridge go through iptables.
    pub fn calls_netfilter(&self, v6: bool) -> bool {
        let (global, own) = if v6 {
            (self.call_ip6tables, self.bridge_nf_call_ip6tables)
        } else {
            (self.call_iptables, self.bridge_nf_call_iptables)
        };
        self.br_netfilter_loaded && (global == Some(true) || own == Some(true))
    }
}

/// Field access to a copied record (`record[i]` is the record's byte `8 + i`).
struct Record<'a> {
    format: &'a TracepointFormat,
    bytes: &'a [u8],
}

impl<'a> Record<'a> {
    fn bytes(&self, name: &str) -> Option<&'a [u8]> {
        let f = self.format.field(name)?;
        let start = (f.offset as usize).checked_sub(8)?;
        self.bytes.get(start..start + f.size as usize)
    }

    fn uint(&self, name: &str) -> Option<u64> {
        let b = self.bytes(name)?;
        Some(match b.len() {
            1 => b[0] as u64,
            2 => u16::from_ne_bytes(b.try_into().ok()?) as u64,
            4 => u32::from_ne_bytes(b.try_into().ok()?) as u64,
            8 => u64::from_ne_bytes(b.try_into().ok()?),
            _ => return None,
        })
    }

    /// The name `__print_symbolic` gives the field's value, else the number.
    fn symbol(&self, name: &str) -> Option<String> {
        let value = self.uint(name)?;
        Some(
            self.format.symbolic_values(name).and_then(|t| t.get(&value).cloned()).unwrap_or_else(|| value.to_string()),
        )
    }

    /// Source and destination endpoints: `sockaddr` fields (6.10+ resets) or separate
    /// address, IPv6 address, port and family fields.
    fn endpoints(&self) -> Option<((IpAddr, u16), (IpAddr, u16))> {
        let (s, d) = (self.bytes("saddr")?, self.bytes("daddr")?);
        if s.len() >= 24 && d.len() >= 24 {
            return Some((sockaddr(s)?, sockaddr(d)?));
        }
        let family = self.uint("family").map(|f| f as u16);
        let v6 = match family {
            Some(AF_INET6) => {
                // IPv4-mapped peers of a dual-stack socket are IPv4 traffic.
                let mapped = self
                    .bytes("daddr_v6")
                    .is_some_and(|a| a.get(..12) == Some(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255][..]));
                !mapped
            }
            Some(_) => false,
            None => s.iter().all(|&b| b == 0) && self.bytes("saddr_v6").is_some(),
        };
        let addr = |v4: &[u8], v6_field: &str| -> Option<IpAddr> {
            if v6 {
                let b: [u8; 16] = self.bytes(v6_field)?.try_into().ok()?;
                Some(IpAddr::V6(Ipv6Addr::from(b)))
            } else {
                let b: [u8; 4] = v4.get(..4)?.try_into().ok()?;
                Some(IpAddr::V4(Ipv4Addr::from(b)))
            }
        };
        // These tracepoints store ports with ntohs(): host order.
        let sport = self.uint("sport").unwrap_or(0) as u16;
        let dport = self.uint("dport").unwrap_or(0) as u16;
        Some(((addr(s, "saddr_v6")?, sport), (addr(d, "daddr_v6")?, dport)))
    }
}

/// `struct sockaddr_in` / `sockaddr_in6` as the kernel stores them (family in host order,
/// port in network order).
fn sockaddr(b: &[u8]) -> Option<(IpAddr, u16)> {
    let family = u16::from_ne_bytes([b[0], b[1]]);
    let port = u16::from_be_bytes([b[2], b[3]]);
    match family {
        AF_INET => Some((IpAddr::V4(Ipv4Addr::new(b[4], b[5], b[6], b[7])), port)),
        AF_INET6 => {
            let a: [u8; 16] = b.get(8..24)?.try_into().ok()?;
            let v6 = Ipv6Addr::from(a);
            Some((v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4), port))
        }
        _ => None,
    }
}

fn tcp_flow(((src, sport), (dst, dport)): ((IpAddr, u16), (IpAddr, u16))) -> Flow {
    Flow {
        l4: "tcp".into(),
        src,
        dst,
        sport: Some(sport),
        dport: Some(dport),
        icmp_type: None,
        icmp_code: None,
        tcp_flags: None,
    }
}

/// A packet answered by a kprobed kernel function ([`AnswerFunction`]): the RST or ICMP
/// error it sends, oriented as sent (from the answering host to the packet's source).
pub fn decode_answer(
    packet: super::DropRecord,
    args: [u64; 3],
    functions: &[AnswerFunction],
) -> Option<NetfilterEvent> {
    let name = packet.function.as_deref()?;
    let f = functions.iter().find(|f| f.name == name)?;
    let arg = |i: Option<usize>| i.map(|i| args[i]);
    let reversed = packet.flow.as_ref().map(|p| Flow {
        l4: p.l4.clone(),
        src: p.dst,
        dst: p.src,
        sport: p.dport,
        dport: p.sport,
        icmp_type: None,
        icmp_code: None,
        tcp_flags: None,
    });
    let by_reject = f.answer.starts_with("reject");
    match f.answer {
        "stack-rst" | "reject-rst" => Some(NetfilterEvent::Reset(TcpReset {
            time: packet.time,
            ts_ns: packet.ts_ns,
            direction: "sent".into(),
            netns: packet.netns,
            netns_name: packet.netns_name,
            pod: None,
            ifindex: packet.ifindex,
            flow: reversed.map(|mut f| {
                f.l4 = "tcp".into();
                f
            }),
            socket: arg(f.sk).is_some_and(|sk| sk != 0),
            state: None,
            reason: None,
            skb: Some(packet.skb),
            task: packet.task,
            origin: f.name.into(),
            by_reject,
        })),
        _ => {
            let v6 = f.answer == "icmp6" || f.name.ends_with('6');
            // nf_send_unreach* take only the code: the type is destination unreachable.
            let icmp_type = arg(f.icmp_type).map_or(if v6 { 1 } else { 3 }, |t| t as u8);
            let icmp_code = arg(f.code).unwrap_or(0) as u8;
            Some(NetfilterEvent::Icmp(IcmpError {
                time: packet.time,
                ts_ns: packet.ts_ns,
                netns: packet.netns,
                netns_name: packet.netns_name,
                pod: None,
                ifindex: packet.ifindex,
                icmp_type,
                icmp_code,
                meaning: if v6 { icmp6_meaning(icmp_type, icmp_code) } else { icmp_meaning(icmp_type, icmp_code) },
                // The packet the error is about, as for the tracepoint.
                flow: packet.flow,
                skb: packet.skb,
                task: packet.task,
                origin: f.name.into(),
                by_reject,
                packet_len: None,
                egress: None,
            }))
        }
    }
}

/// A DROP verdict read in the kernel (kprobes on `nft_do_chain` / `ipt_do_table`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NfVerdict {
    pub time: String,
    pub ts_ns: u64,
    pub netns: Option<u32>,
    pub netns_name: Option<String>,
    /// The pod whose network namespace this is: its UID, and namespace and name when the
    /// container runtime (crictl) knows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<crate::pods::Pod>,
    pub device: Option<String>,
    pub flow: Option<Flow>,
    pub skb: String,
    /// nftables family name (`ip`, `ip6`, `inet`, `bridge`, `arp`, `netdev`).
    pub family: String,
    pub table: String,
    /// The base chain (`nft_do_chain`); None for iptables-legacy tables.
    pub chain: Option<String>,
    /// `prerouting`, `input`, `forward`, `output`, `postrouting` (`ingress` for netdev).
    pub hook: Option<String>,
    pub verdict: Word,
    /// `nft_do_chain` (nf_tables: nftables and iptables-nft) or `ipt_do_table`/`ip6t_do_table`.
    pub origin: String,
}

/// `NFPROTO_*` (UAPI) as nftables names its families.
pub fn nfproto_name(family: u32) -> String {
    match family {
        1 => "inet".into(),
        2 => "ip".into(),
        3 => "arp".into(),
        5 => "netdev".into(),
        7 => "bridge".into(),
        10 => "ip6".into(),
        other => format!("family-{other}"),
    }
}

/// `NF_INET_*` hooks (UAPI); netdev chains have only ingress (0) and egress (1).
pub fn hook_name(family: u32, hook: u32) -> Option<String> {
    let name = match (family, hook) {
        (5, 0) => "ingress",
        (5, 1) => "egress",
        (_, 0) => "prerouting",
        (_, 1) => "input",
        (_, 2) => "forward",
        (_, 3) => "output",
        (_, 4) => "postrouting",
        (_, 5) => "ingress",
        _ => return None,
    };
    Some(name.into())
}

/// Names of ICMPv6 destination-unreachable codes (RFC 4443).
pub fn icmp6_meaning(icmp_type: u8, code: u8) -> String {
    match (icmp_type, code) {
        (1, 0) => "no-route".into(),
        (1, 1) => "admin-prohibited".into(),
        (1, 3) => "addr-unreachable".into(),
        (1, 4) => "port-unreachable".into(),
        (2, _) => "packet-too-big".into(),
        (3, _) => "time-exceeded".into(),
        (t, c) => format!("icmpv6 type {t} code {c}"),
    }
}

/// Names of ICMP destination-unreachable codes (RFC 792, RFC 1812).
pub fn icmp_meaning(icmp_type: u8, code: u8) -> String {
    match (icmp_type, code) {
        (3, 0) => "net-unreachable".into(),
        (3, 1) => "host-unreachable".into(),
        (3, 2) => "protocol-unreachable".into(),
        (3, 3) => "port-unreachable".into(),
        (3, 4) => "fragmentation-needed".into(),
        (3, 9) => "net-prohibited".into(),
        (3, 10) => "host-prohibited".into(),
        (3, 13) => "admin-prohibited".into(),
        (11, _) => "time-exceeded".into(),
        (t, c) => format!("type {t} code {c}"),
    }
}

/// Decodes one record; None when its source has no format (not attached) or it is short.
pub fn decode(
    raw: &TraceRecordEvent,
    formats: &crate::probes::netfilter::RecordFormats,
    time: String,
    netns_name: Option<String>,
) -> Option<NetfilterEvent> {
    let source = raw.source as usize;
    let format = formats.get(source)?.as_ref()?;
    let len = (raw.len as usize).min(raw.record.len());
    let record = Record { format, bytes: &raw.record[..len] };
    let netns = (raw.netns != 0).then_some(raw.netns);
    let ifindex = (raw.ifindex != 0).then_some(raw.ifindex);
    let ts_ns = raw.header.ts_ns;
    let task = task(&raw.header);
    let pointer = |name: &str| record.uint(name).filter(|&p| p != 0);
    Some(match source {
        s if s == RecordSource::TcpSendReset as usize || s == RecordSource::TcpReceiveReset as usize => {
            let sent = s == RecordSource::TcpSendReset as usize;
            NetfilterEvent::Reset(TcpReset {
                time,
                ts_ns,
                direction: if sent { "sent" } else { "received" }.into(),
                netns,
                netns_name,
                pod: None,
                ifindex,
                flow: record.endpoints().map(tcp_flow),
                socket: pointer("skaddr").is_some(),
                state: record.symbol("state").filter(|s| s != "UNKNOWN" && s != "0"),
                reason: record.symbol("reason"),
                skb: pointer("skbaddr").map(|p| format!("{p:#x}")),
                task,
                origin: format!("tcp:{}", format.name),
                by_reject: false,
            })
        }
        s if s == RecordSource::IcmpSend as usize => {
            let icmp_type = record.uint("type")? as u8;
            let icmp_code = record.uint("code")? as u8;
            let flow = record.endpoints().map(|((src, sport), (dst, dport))| {
                let udp = record.uint("ulen").unwrap_or(0) != 0;
                Flow {
                    l4: if udp { "udp" } else { "ip" }.into(),
                    src,
                    dst,
                    sport: udp.then_some(sport),
                    dport: udp.then_some(dport),
                    icmp_type: None,
                    icmp_code: None,
                    tcp_flags: None,
                }
            });
            NetfilterEvent::Icmp(IcmpError {
                time,
                ts_ns,
                netns,
                netns_name,
                pod: None,
                ifindex,
                icmp_type,
                icmp_code,
                meaning: icmp_meaning(icmp_type, icmp_code),
                flow,
                skb: format!("{:#x}", record.uint("skbaddr").unwrap_or(0)),
                task,
                origin: "icmp:icmp_send".into(),
                by_reject: false,
                packet_len: None,
                egress: None,
            })
        }
        s if s == RecordSource::TcpConnect as usize => NetfilterEvent::Connect(TcpConnect {
            time,
            ts_ns,
            netns,
            netns_name,
            pod: None,
            flow: record.endpoints().map(tcp_flow),
            task,
        }),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_ebpf::{EventHeader, EventKind, TRACE_RECORD_BYTES};

    const SEND_RESET_6_18: &str = include_str!("../../tests/fixtures/6.18-tcp_send_reset.format");
    const SET_STATE_6_18: &str = include_str!("../../tests/fixtures/6.18-inet_sock_set_state.format");
    const ICMP_SEND_6_18: &str = include_str!("../../tests/fixtures/6.18-icmp_send.format");

    fn event(source: RecordSource, record: &[(usize, &[u8])]) -> TraceRecordEvent {
        let mut bytes = [0u8; TRACE_RECORD_BYTES];
        for (offset, value) in record {
            bytes[offset - 8..offset - 8 + value.len()].copy_from_slice(value);
        }
        TraceRecordEvent {
            header: EventHeader {
                kind: EventKind::TraceRecord as u16,
                _pad: 0,
                cpu: 0,
                ts_ns: 5,
                pid: 0,
                tid: 0,
                comm: [0; 16],
            },
            source: source as u16,
            len: 120,
            netns: 7,
            ifindex: 2,
            _pad: 0,
            record: bytes,
        }
    }

    fn formats() -> crate::probes::netfilter::RecordFormats {
        let parse = |t: &str| Some(TracepointFormat::parse(t).unwrap());
        [parse(SEND_RESET_6_18), parse(SEND_RESET_6_18), parse(ICMP_SEND_6_18), parse(SET_STATE_6_18)]
    }

    #[test]
    fn decodes_a_6_18_reset_with_sockaddrs_and_reason() {
        let mut src = [0u8; 28];
        src[..2].copy_from_slice(&AF_INET.to_ne_bytes());
        src[2..4].copy_from_slice(&6443u16.to_be_bytes());
        src[4..8].copy_from_slice(&[10, 250, 0, 2]);
        let mut dst = [0u8; 28];
        dst[..2].copy_from_slice(&AF_INET.to_ne_bytes());
        dst[2..4].copy_from_slice(&40000u16.to_be_bytes());
        dst[4..8].copy_from_slice(&[10, 250, 0, 1]);
        // skbaddr@8, skaddr@16 (NULL), state@24, reason@28 (1 = NO_SOCKET), saddr@32, daddr@60.
        let raw = event(
            RecordSource::TcpSendReset,
            &[(8, &0xffff_8881_0000_1000u64.to_ne_bytes()), (28, &1u32.to_ne_bytes()), (32, &src), (60, &dst)],
        );
        let Some(NetfilterEvent::Reset(r)) = decode(&raw, &formats(), "t".into(), None) else { panic!() };
        assert_eq!(r.flow.unwrap().to_string(), "tcp 10.250.0.2:6443 > 10.250.0.1:40000");
        assert_eq!(r.reason.as_deref(), Some("NO_SOCKET"));
        assert!(!r.socket);
        assert_eq!(r.direction, "sent");
    }

    #[test]
    fn decodes_connect_attempts_with_separate_address_fields() {
        // skaddr@8, newstate@20, sport@24, dport@26, family@28, protocol@30, saddr_v6@40, daddr_v6@56.
        let v6 = |last: u8| {
            let mut a = [0u8; 16];
            a[0] = 0xfd;
            a[15] = last;
            a
        };
        let raw = event(
            RecordSource::TcpConnect,
            &[
                (8, &1u64.to_ne_bytes()),
                (20, &2i32.to_ne_bytes()),
                (24, &41000u16.to_ne_bytes()),
                (26, &80u16.to_ne_bytes()),
                (28, &AF_INET6.to_ne_bytes()),
                (30, &6u16.to_ne_bytes()),
                (40, &v6(2)),
                (56, &v6(0x10)),
            ],
        );
        let Some(NetfilterEvent::Connect(c)) = decode(&raw, &formats(), "t".into(), None) else { panic!() };
        assert_eq!(c.flow.unwrap().to_string(), "tcp [fd00::2]:41000 > [fd00::10]:80");
    }

    #[test]
    fn decodes_icmp_errors() {
        let raw = event(
            RecordSource::IcmpSend,
            &[
                (16, &3i32.to_ne_bytes()),
                (20, &3i32.to_ne_bytes()),
                (24, &[10, 0, 0, 1]),
                (28, &[10, 0, 0, 2]),
                (32, &5000u16.to_ne_bytes()),
                (34, &53u16.to_ne_bytes()),
                (36, &12u16.to_ne_bytes()),
            ],
        );
        let Some(NetfilterEvent::Icmp(i)) = decode(&raw, &formats(), "t".into(), None) else { panic!() };
        assert_eq!(i.meaning, "port-unreachable");
        assert_eq!(i.flow.unwrap().to_string(), "udp 10.0.0.1:5000 > 10.0.0.2:53");
    }
}
