//! Ring-buffer records → typed events: raw reason numbers become names, addresses become
//! `symbol+0xoff`, header bytes become a flow, netns inodes get their names, netlink bytes
//! become link requests (`links`).

pub mod links;
pub mod netfilter;
pub mod path;
pub mod xdp;

use std::{
    fmt,
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};
use serde::{Deserialize, Serialize};
use tracer_ebpf::{
    AnswerEvent, BpfEvent, DropEvent, EventHeader, EventKind, NetlinkEvent, PathEvent, TraceRecordEvent, VerdictEvent,
    ABSENT, VERDICT_NFT,
};

use crate::kernel::{
    drop_reasons::DropReasons,
    kallsyms::Kallsyms,
    netns::{self, NetnsNames},
    routes::{self, Egress},
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u16),
    #[error("netlink record that is not a link request, ack or message")]
    NotALinkEvent,
    #[error("tracepoint record from source {0} that this session did not attach")]
    UnknownRecord(u16),
}

/// A word from a small fixed vocabulary (`create`, `netlink`, `sent`, …): borrowed from the
/// binary when decoded live, owned when read back from a record (`dptrace report`).
pub type Word = std::borrow::Cow<'static, str>;

/// A decoded event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Event {
    Drop(DropRecord),
    LinkRequest(links::LinkRequest),
    NetlinkAck(links::NetlinkAck),
    KernelMessage(links::KernelMessage),
    LinkState(links::LinkState),
    Module(links::ModuleEvent),
    TcpReset(netfilter::TcpReset),
    IcmpError(netfilter::IcmpError),
    TcpConnect(netfilter::TcpConnect),
    /// A netfilter rule or chain policy whose counters moved during the session.
    RuleCounter(netfilter::RuleCounter),
    /// A bridge and the br_netfilter state of its namespace, with the traffic it carried.
    Bridge(netfilter::BridgeState),
    /// A DROP verdict read in the kernel (kprobes).
    NetfilterVerdict(netfilter::NfVerdict),
    /// A BPF object load or attach (`bpf()`), and its result.
    BpfCommand(xdp::BpfCommand),
    /// XDP exceptions counted in the kernel for one device and program.
    XdpException(xdp::XdpException),
    /// A traced packet seen at one point of its path (the path family).
    PacketHop(path::PacketHop),
    /// A traced packet's whole path, assembled from its hops (derived by `analyze::paths`).
    PacketPath(path::PacketPath),
}

impl Event {
    /// Monotonic timestamp, for ordering.
    pub fn ts_ns(&self) -> u64 {
        match self {
            Event::Drop(e) => e.ts_ns,
            Event::LinkRequest(e) => e.ts_ns,
            Event::NetlinkAck(e) => e.ts_ns,
            Event::KernelMessage(e) => e.ts_ns,
            Event::LinkState(e) => e.ts_ns,
            Event::Module(e) => e.ts_ns,
            Event::TcpReset(e) => e.ts_ns,
            Event::IcmpError(e) => e.ts_ns,
            Event::TcpConnect(e) => e.ts_ns,
            Event::RuleCounter(e) => e.ts_ns,
            Event::Bridge(e) => e.ts_ns,
            Event::NetfilterVerdict(e) => e.ts_ns,
            Event::BpfCommand(e) => e.ts_ns,
            Event::XdpException(e) => e.ts_ns,
            Event::PacketHop(e) => e.ts_ns,
            Event::PacketPath(e) => e.steps.first().map_or(0, |s| s.hop.ts_ns),
        }
    }
}

/// The task that was running when an event fired.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Task {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DropRecord {
    /// Wall-clock time, RFC 3339 with microseconds.
    pub time: String,
    /// CLOCK_MONOTONIC nanoseconds, for ordering and deltas.
    pub ts_ns: u64,
    pub cpu: u32,
    pub netns: Option<u32>,
    pub netns_name: Option<String>,
    /// The pod whose network namespace this is: its UID, and namespace and name when the
    /// container runtime (crictl) knows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<crate::pods::Pod>,
    pub ifindex: Option<u32>,
    pub device: Option<String>,
    /// `ipv4`, `ipv6`, `arp` or the ethertype in hex.
    pub protocol: String,
    pub flow: Option<Flow>,
    /// Drop reason name without the `SKB_DROP_REASON_` prefix. Without reasons (kernels
    /// before 5.17) it is inferred from `function` where that is unambiguous enough.
    pub reason: Option<String>,
    pub reason_code: Option<u32>,
    /// `reason` was inferred from the location, not reported by the kernel.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reason_inferred: bool,
    /// Where the packet was freed: `symbol+0xoff`, or the raw address without kallsyms.
    pub location: String,
    /// Function name part of `location`, for grouping.
    pub function: Option<String>,
    pub skb: String,
    /// Absent for drops in interrupt context of the idle task (pid 0).
    pub task: Option<Task>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packet_len: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<crate::kernel::routes::Egress>,
    /// For drops in an XDP receive path: the XDP program attached to the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp: Option<xdp::XdpAttachment>,
}

/// The addresses and ports of a packet, as far as its captured headers show them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct Flow {
    /// `tcp`, `udp`, `icmp`, `icmpv6`, or `proto-N`.
    pub l4: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
    /// TCP flags such as `SYN` or `RST|ACK`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<String>,
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let endpoint = |f: &mut fmt::Formatter<'_>, addr: &IpAddr, port: Option<u16>| match (addr, port) {
            (IpAddr::V6(a), Some(p)) => write!(f, "[{a}]:{p}"),
            (a, Some(p)) => write!(f, "{a}:{p}"),
            (a, None) => write!(f, "{a}"),
        };
        write!(f, "{} ", self.l4)?;
        endpoint(f, &self.src, self.sport)?;
        f.write_str(" > ")?;
        endpoint(f, &self.dst, self.dport)?;
        if let (Some(t), Some(c)) = (self.icmp_type, self.icmp_code) {
            write!(f, " type {t} code {c}")?;
        }
        if let Some(flags) = &self.tcp_flags {
            write!(f, " [{flags}]")?;
        }
        Ok(())
    }
}

/// Converts monotonic timestamps to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    realtime_minus_monotonic_ns: i128,
}

impl WallClock {
    pub fn now() -> Self {
        use nix::time::{clock_gettime, ClockId};
        let ns = |id| clock_gettime(id).map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128).unwrap_or(0);
        let mono = ns(ClockId::CLOCK_MONOTONIC);
        let real = ns(ClockId::CLOCK_REALTIME);
        Self { realtime_minus_monotonic_ns: real - mono }
    }

    pub fn to_system_time(self, monotonic_ns: u64) -> SystemTime {
        let ns = (monotonic_ns as i128 + self.realtime_minus_monotonic_ns).max(0) as u128;
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    }
}

/// What decoding needs to know about the kernel and the session.
pub struct Decoder {
    pub reasons: DropReasons,
    pub kallsyms: Arc<Kallsyms>,
    pub cgroups: crate::kernel::cgroups::CgroupPaths,
    pub netns: NetnsNames,
    pub clock: WallClock,
    /// Formats of the tracepoints whose records the netfilter family copies.
    pub record_formats: Arc<crate::probes::netfilter::RecordFormats>,
    /// Functions the answer kprobes are attached to, with their argument positions.
    pub answer_functions: Arc<Vec<crate::probes::netfilter::AnswerFunction>>,
    /// This kernel's `enum bpf_cmd` values of PROG_LOAD, BTF_LOAD, LINK_CREATE, and the names
    /// of program and attach types.
    pub bpf_cmds: [u32; 3],
    pub bpf_names: Arc<xdp::BpfNames>,
    /// Interface names by (netns inode, ifindex), for requests that name only the index.
    pub ifnames: foldhash::HashMap<(u32, u32), String>,
    /// Route and device lookups for packets too big for their way out (cached).
    pub mtus: MtuLookups,
    /// Drop locations already resolved to `symbol+0xoff`.
    pub locations: LocationCache,
    pub times: TimeFormat,
    /// Network namespace → pod, for the `pod` fields of kept events (cached).
    pub pods: crate::pods::PodResolver,
}

/// RFC 3339 times with microseconds. The date and time of day are formatted once per second:
/// formatting all of it per event was 4% of decoding (perf, a drop flood).
#[derive(Default)]
pub struct TimeFormat {
    /// The second last formatted, and its `YYYY-MM-DDTHH:MM:SS`.
    second: std::cell::Cell<Option<(u64, [u8; 19])>>,
}

impl TimeFormat {
    pub fn rfc3339_micros(&self, t: SystemTime) -> String {
        let Ok(since_epoch) = t.duration_since(UNIX_EPOCH) else {
            return humantime::format_rfc3339_micros(t).to_string();
        };
        let secs = since_epoch.as_secs();
        let prefix = match self.second.get() {
            Some((cached, prefix)) if cached == secs => prefix,
            _ => {
                let whole = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string();
                let Some(prefix) = whole.as_bytes().get(..19).and_then(|p| <[u8; 19]>::try_from(p).ok()) else {
                    return humantime::format_rfc3339_micros(t).to_string();
                };
                self.second.set(Some((secs, prefix)));
                prefix
            }
        };
        let mut out = String::with_capacity(27);
        out.push_str(std::str::from_utf8(&prefix).unwrap_or_default());
        let _ = std::fmt::Write::write_fmt(&mut out, format_args!(".{:06}Z", since_epoch.subsec_micros()));
        out
    }
}

/// Drop locations already resolved: a flood has a handful of them, and searching the ~200,000
/// kernel symbols for each event was 5% of decoding (perf, a drop flood).
#[derive(Default)]
pub struct LocationCache(foldhash::HashMap<u64, (String, Option<String>)>);

/// Locations kept at most; the cache starts over beyond.
const LOCATIONS: usize = 4096;

impl LocationCache {
    /// `symbol+0xoff` (or the bare address) and the symbol's name.
    fn resolve(&mut self, kallsyms: &Kallsyms, addr: u64) -> (String, Option<String>) {
        if let Some(hit) = self.0.get(&addr) {
            return hit.clone();
        }
        let value = match kallsyms.resolve(addr) {
            Some(sym) => (sym.to_string(), Some(sym.name.to_string())),
            None => (format!("{addr:#x}"), None),
        };
        if self.0.len() >= LOCATIONS {
            self.0.clear();
        }
        self.0.insert(addr, value.clone());
        value
    }
}

/// Cached answers of `kernel::routes`: each lookup enters a namespace (about 1.5 ms).
#[derive(Default)]
pub struct MtuLookups {
    routes: std::collections::HashMap<(u32, IpAddr, Option<IpAddr>, u32), Option<Egress>>,
    devices: std::collections::HashMap<(u32, u32), Option<Egress>>,
    /// Never look anything up (a [`Decoder::detached`]).
    off: bool,
}

/// Lookups kept at most; the caches start over beyond.
const MTU_LOOKUPS: usize = 1024;

impl Decoder {
    /// A decoder that knows the kernel only from what it is given (drop reasons, symbols,
    /// tracepoint formats, answering functions, `enum bpf_cmd` values) and never enters a
    /// namespace to look up routes and MTUs: for records decoded away from a live session, as
    /// the fuzz targets (fuzz/) do. Namespace names still come from this machine.
    pub fn detached(
        reasons: DropReasons,
        kallsyms: Arc<Kallsyms>,
        record_formats: Arc<crate::probes::netfilter::RecordFormats>,
        answer_functions: Arc<Vec<crate::probes::netfilter::AnswerFunction>>,
        bpf_cmds: [u32; 3],
    ) -> Self {
        Self {
            reasons,
            kallsyms,
            cgroups: Default::default(),
            netns: NetnsNames::new(),
            clock: WallClock::now(),
            record_formats,
            answer_functions,
            bpf_cmds,
            bpf_names: Default::default(),
            ifnames: Default::default(),
            mtus: MtuLookups { off: true, ..Default::default() },
            locations: Default::default(),
            times: Default::default(),
            pods: Default::default(),
        }
    }

    pub fn decode(&mut self, bytes: &[u8]) -> Result<Event, DecodeError> {
        let header: EventHeader = read_record(bytes).ok_or(DecodeError::Short(bytes.len()))?;
        match header.kind {
            k if k == EventKind::Drop as u16 => {
                let raw: DropEvent = read_record(bytes).ok_or(DecodeError::Short(bytes.len()))?;
                let mut drop = self.decode_drop(&raw);
                self.add_mtus(&mut drop);
                self.add_xdp(&mut drop);
                Ok(Event::Drop(drop))
            }
            k if k == EventKind::NetlinkRequest as u16
                || k == EventKind::NetlinkAck as u16
                || k == EventKind::NetlinkExtack as u16
                || k == EventKind::IoctlRequest as u16
                || k == EventKind::ModuleRequest as u16
                || k == EventKind::ModuleLoad as u16
                || k == EventKind::RtnlResult as u16 =>
            {
                let raw: NetlinkEvent = read_record(bytes).ok_or(DecodeError::Short(bytes.len()))?;
                match self.decode_netlink(&raw).ok_or(DecodeError::NotALinkEvent)? {
                    links::LinkEvent::Request(r) => Ok(Event::LinkRequest(r)),
                    links::LinkEvent::Ack(a) => Ok(Event::NetlinkAck(a)),
                    links::LinkEvent::Message(m) => Ok(Event::KernelMessage(m)),
                    links::LinkEvent::Module(m) => Ok(Event::Module(m)),
                }
            }
            k if k == EventKind::TraceRecord as u16 => {
                let raw: TraceRecordEvent = read_record(bytes).ok_or(DecodeError::Short(bytes.len()))?;
                let netns_name = (raw.netns != 0).then(|| self.netns.name(raw.netns).map(str::to_string)).flatten();
                let time = self.time(raw.header.ts_ns);
                match netfilter::decode(&raw, &self.record_formats, time, netns_name) {
                    Some(netfilter::NetfilterEvent::Reset(r)) => Ok(Event::TcpReset(r)),
                    Some(netfilter::NetfilterEvent::Icmp(mut i)) => {
                        self.add_icmp_mtus(&mut i);
                        Ok(Event::IcmpError(i))
                    }
                    Some(netfilter::NetfilterEvent::Connect(c)) => Ok(Event::TcpConnect(c)),
                    None => Err(DecodeError::UnknownRecord(raw.source)),
                }
            }
            k if k == EventKind::PacketAnswer as u16 => {
                let raw: AnswerEvent = read_record(bytes).ok_or(DecodeError::Short(bytes.len()))?;
                let packet = self.decode_drop(&raw.packet);
                match netfilter::decode_answer(packet, raw.args, &self.answer_functions) {
                    Some(netfilter::NetfilterEvent::Reset(r)) => Ok(Event::TcpReset(r)),
                    Some(netfilter::NetfilterEvent::Icmp(mut i)) => {
                        self.add_icmp_mtus(&mut i);
                        Ok(Event::IcmpError(i))
                    }
                    _ => Err(DecodeError::UnknownRecord(u16::MAX)),
                }
            }
            k if k == EventKind::NetfilterVerdict as u16 => {
                let raw: VerdictEvent = read_record(bytes).ok_or(DecodeError::Short(bytes.len()))?;
                let packet = self.decode_drop(&raw.packet);
                let chain = c_string(&raw.chain);
                Ok(Event::NetfilterVerdict(netfilter::NfVerdict {
                    time: packet.time,
                    ts_ns: packet.ts_ns,
                    netns: packet.netns,
                    netns_name: packet.netns_name,
                    pod: None,
                    device: packet.device,
                    flow: packet.flow,
                    skb: packet.skb,
                    family: netfilter::nfproto_name(raw.family),
                    table: c_string(&raw.table),
                    chain: (raw.source == VERDICT_NFT && !chain.is_empty()).then_some(chain),
                    hook: (raw.hook != ABSENT).then(|| netfilter::hook_name(raw.family, raw.hook)).flatten(),
                    // The kernel side keeps only drops (NF_DROP, or NF_STOLEN with an errno).
                    verdict: "drop".into(),
                    origin: packet.function.unwrap_or_else(|| "?".into()),
                }))
            }
            k if k == EventKind::BpfCommand as u16 => {
                let raw: BpfEvent = read_record(bytes).ok_or(DecodeError::Short(bytes.len()))?;
                let time = self.time(raw.header.ts_ns);
                let actor = self.actor(&raw.header, &raw.actor);
                Ok(Event::BpfCommand(xdp::decode_command(&raw, self.bpf_cmds, &self.bpf_names, time, actor)))
            }
            k if k == EventKind::PacketHop as u16 => {
                let raw: PathEvent = read_record(bytes).ok_or(DecodeError::Short(bytes.len()))?;
                let is_drop = raw.hook == tracer_ebpf::path_hook::FREE;
                let reason = (is_drop && raw.result != ABSENT).then(|| {
                    self.reasons.name(raw.result).map_or_else(|| format!("reason-{}", raw.result), str::to_string)
                });
                let location = (is_drop && raw.location != 0).then(|| match self.kallsyms.resolve(raw.location) {
                    Some(sym) => sym.to_string(),
                    None => format!("{:#x}", raw.location),
                });
                let function = (raw.hook == tracer_ebpf::path_hook::FUNCTION)
                    .then(|| self.kallsyms.resolve(raw.location).map(|sym| sym.name.to_string()))
                    .flatten();
                let wall = self.clock.to_system_time(raw.header.ts_ns);
                let context = path::HopContext {
                    function,
                    time: self.times.rfc3339_micros(wall),
                    wall_ns: wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64),
                    netns_name: (raw.netns != 0).then(|| self.netns.name(raw.netns).map(str::to_string)).flatten(),
                    location,
                    reason,
                };
                Ok(Event::PacketHop(path::decode_hop(&raw, context)))
            }
            other => Err(DecodeError::UnknownKind(other)),
        }
    }

    /// Where a too-big packet would have left, and that device's MTU (for
    /// `tunnel-mtu-exceeded`): the route for `PKT_TOO_BIG` drops and drops in the forwarding
    /// path, the device itself for reasonless drops at a device.
    fn add_mtus(&mut self, drop: &mut DropRecord) {
        let (Some(netns), Some(flow)) = (drop.netns, drop.flow.as_ref()) else { return };
        let reason = drop.reason.as_deref();
        let forwarding = matches!(drop.function.as_deref(), Some("ip_forward" | "ip6_forward"));
        let too_big = reason == Some("PKT_TOO_BIG") || (forwarding && matches!(reason, None | Some("NOT_SPECIFIED")));
        let silent = matches!(reason, None | Some("NOT_SPECIFIED")) && drop.ifindex.is_some();
        if !too_big && !silent {
            return;
        }
        drop.egress = if too_big {
            self.route_egress(netns, flow.dst, flow.src, drop.ifindex)
        } else {
            // Only tunnels are of interest here, and only for packets they cannot carry.
            self.device_egress(netns, drop.ifindex.unwrap_or(0))
                .filter(|d| d.kind.as_deref().is_some_and(routes::is_tunnel_kind))
        };
    }

    /// For "fragmentation needed" / "packet too big": where the packet would have left.
    fn add_icmp_mtus(&mut self, icmp: &mut netfilter::IcmpError) {
        let v4_frag_needed =
            icmp.icmp_type == 3 && icmp.icmp_code == 4 && icmp.flow.as_ref().is_some_and(|f| f.src.is_ipv4());
        let v6_too_big = icmp.icmp_type == 2 && icmp.flow.as_ref().is_some_and(|f| f.src.is_ipv6());
        if icmp.by_reject || !(v4_frag_needed || v6_too_big) {
            return;
        }
        let (Some(netns), Some(flow)) = (icmp.netns, icmp.flow.as_ref()) else { return };
        let (dst, src) = (flow.dst, flow.src);
        icmp.egress = self.route_egress(netns, dst, src, icmp.ifindex);
    }

    /// Where a packet from `src` to `dst` that came in on `ifindex` leaves namespace `netns`.
    /// Cached per key, misses included: a lookup enters the namespace, and drops repeat.
    fn route_egress(&mut self, netns: u32, dst: IpAddr, src: IpAddr, ifindex: Option<u32>) -> Option<Egress> {
        let key = (netns, dst, Some(src), ifindex.unwrap_or(0));
        if self.mtus.off {
            return None;
        }
        if let Some(known) = self.mtus.routes.get(&key) {
            return known.clone();
        }
        self.trim_mtu_lookups();
        let found = self.netns_path(netns).and_then(|path| routes::egress_in(&path, dst, Some(src), ifindex));
        self.mtus.routes.insert(key, found.clone());
        found
    }

    /// Device `ifindex` of namespace `netns` (cached like [`Self::route_egress`]).
    fn device_egress(&mut self, netns: u32, ifindex: u32) -> Option<Egress> {
        if self.mtus.off {
            return None;
        }
        if let Some(known) = self.mtus.devices.get(&(netns, ifindex)) {
            return known.clone();
        }
        self.trim_mtu_lookups();
        let found = self.netns_path(netns).and_then(|path| routes::device_in(&path, ifindex));
        self.mtus.devices.insert((netns, ifindex), found.clone());
        found
    }

    fn trim_mtu_lookups(&mut self) {
        if self.mtus.routes.len() > MTU_LOOKUPS || self.mtus.devices.len() > MTU_LOOKUPS {
            self.mtus = MtuLookups { off: self.mtus.off, ..Default::default() };
        }
    }

    /// A path that enters namespace `inode`: ours, PID 1's, or a named one.
    pub(crate) fn netns_path(&mut self, inode: u32) -> Option<std::path::PathBuf> {
        let own = netns::inode_of(std::path::Path::new("/proc/self/ns/net"));
        if own == Some(inode) {
            return Some("/proc/self/ns/net".into());
        }
        let name = self.netns.name(inode)?.to_string();
        Some(netns::path_of_name(&name))
    }

    /// A wall-clock time for a monotonic timestamp, and a netns name for an inode.
    pub fn name_netns(&mut self, inode: u32) -> Option<String> {
        self.netns.name(inode).map(str::to_string)
    }

    pub fn wall_time(&self, ts_ns: u64) -> String {
        self.time(ts_ns)
    }

    /// RFC 3339 wall-clock time of a monotonic timestamp.
    fn time(&self, ts_ns: u64) -> String {
        self.times.rfc3339_micros(self.clock.to_system_time(ts_ns))
    }

    fn decode_drop(&mut self, raw: &DropEvent) -> DropRecord {
        // The tracepoint stores `ntohs(skb->protocol)`: already host order.
        let protocol = match raw.protocol {
            ETH_P_IP => "ipv4".to_string(),
            ETH_P_IPV6 => "ipv6".to_string(),
            ETH_P_ARP => "arp".to_string(),
            other => format!("{other:#06x}"),
        };
        let header_len = (raw.header_len as usize).min(raw.headers.len());
        let flow = match raw.protocol {
            ETH_P_IP | ETH_P_IPV6 => parse_flow(&raw.headers[..header_len]),
            _ => None,
        };
        let (location, function) = self.locations.resolve(&self.kallsyms, raw.location);
        let reason_code = (raw.reason != ABSENT).then_some(raw.reason);
        let reported = reason_code
            .map(|code| self.reasons.name(code).map(str::to_string).unwrap_or_else(|| format!("reason-{code}")));
        let inferred = match (&reported, &function) {
            (None, Some(f)) => infer_reason(f),
            _ => None,
        };
        let reason_inferred = inferred.is_some();
        let reason = reported.or(inferred.map(str::to_string));
        let netns = (raw.netns != 0).then_some(raw.netns);
        DropRecord {
            time: self.time(raw.header.ts_ns),
            ts_ns: raw.header.ts_ns,
            cpu: raw.header.cpu,
            netns,
            netns_name: netns.and_then(|inode| self.netns.name(inode).map(str::to_string)),
            pod: None,
            ifindex: (raw.ifindex != 0).then_some(raw.ifindex),
            device: (raw.ifindex != 0).then(|| c_string(&raw.ifname)),
            protocol,
            flow,
            reason,
            reason_code,
            reason_inferred,
            location,
            function,
            skb: format!("{:#x}", raw.skb),
            task: task(&raw.header),
            packet_len: ip_length(&raw.headers[..header_len]),
            egress: None,
            xdp: None,
        }
    }
}

/// The drop reason implied by the function that freed the packet, for kernels without
/// reasons: netfilter verdicts are freed in the hook or table code, and a UDP/TCP packet
/// freed at the end of its protocol's receive function found no socket (checksum errors end
/// there too, which is why the result is marked as inferred).
pub fn infer_reason(function: &str) -> Option<&'static str> {
    match function {
        "nf_hook_slow" | "nft_do_chain" | "ipt_do_table" | "ip6t_do_table" => Some("NETFILTER_DROP"),
        "__udp4_lib_rcv" | "__udp6_lib_rcv" | "tcp_v4_rcv" | "tcp_v6_rcv" => Some("NO_SOCKET"),
        _ => None,
    }
}

pub(crate) fn task(header: &EventHeader) -> Option<Task> {
    (header.pid != 0).then(|| Task { pid: header.pid, tid: header.tid, comm: c_string(&header.comm) })
}

/// Copies a `repr(C)` record out of a ring-buffer slice (which has no alignment guarantee).
fn read_record<T: Copy>(bytes: &[u8]) -> Option<T> {
    (bytes.len() >= std::mem::size_of::<T>()).then(|| {
        // SAFETY: length checked above; T is a plain-data ABI struct valid for any bytes.
        unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
    })
}

pub(crate) fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The length an IP header announces: IPv4 total length, IPv6 payload length + 40.
pub fn ip_length(ip: &[u8]) -> Option<u32> {
    let word = |i: usize| Some(u16::from_be_bytes([*ip.get(i)?, *ip.get(i + 1)?]) as u32);
    match ip.first()? >> 4 {
        4 => word(2),
        6 => word(4).map(|n| n + 40),
        _ => None,
    }
}

/// Parses IPv4/IPv6 + TCP/UDP/ICMP headers, tolerating truncation.
pub fn parse_flow(headers: &[u8]) -> Option<Flow> {
    let packet = LaxSlicedPacket::from_ip(headers).ok()?;
    let (src, dst, proto): (IpAddr, IpAddr, u8) = match packet.net.as_ref()? {
        LaxNetSlice::Ipv4(ip) => {
            let h = ip.header();
            (h.source_addr().into(), h.destination_addr().into(), h.protocol().0)
        }
        LaxNetSlice::Ipv6(ip) => {
            let h = ip.header();
            (h.source_addr().into(), h.destination_addr().into(), ip.payload().ip_number.0)
        }
        _ => return None,
    };
    let mut flow = Flow {
        l4: format!("proto-{proto}"),
        src,
        dst,
        sport: None,
        dport: None,
        icmp_type: None,
        icmp_code: None,
        tcp_flags: None,
    };
    match packet.transport {
        Some(TransportSlice::Tcp(tcp)) => {
            flow.l4 = "tcp".into();
            flow.sport = Some(tcp.source_port());
            flow.dport = Some(tcp.destination_port());
            let names =
                [(tcp.syn(), "SYN"), (tcp.ack(), "ACK"), (tcp.fin(), "FIN"), (tcp.rst(), "RST"), (tcp.psh(), "PSH")];
            let set: Vec<&str> = names.iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect();
            flow.tcp_flags = Some(set.join("|"));
        }
        Some(TransportSlice::Udp(udp)) => {
            flow.l4 = "udp".into();
            flow.sport = Some(udp.source_port());
            flow.dport = Some(udp.destination_port());
        }
        Some(TransportSlice::Icmpv4(icmp)) => {
            flow.l4 = "icmp".into();
            flow.icmp_type = Some(icmp.type_u8());
            flow.icmp_code = Some(icmp.code_u8());
        }
        Some(TransportSlice::Icmpv6(icmp)) => {
            flow.l4 = "icmpv6".into();
            flow.icmp_type = Some(icmp.type_u8());
            flow.icmp_code = Some(icmp.code_u8());
        }
        None => match proto {
            6 => flow.l4 = "tcp".into(),
            17 => flow.l4 = "udp".into(),
            1 => flow.l4 = "icmp".into(),
            58 => flow.l4 = "icmpv6".into(),
            _ => {}
        },
    }
    Some(flow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::tracefs::TracepointFormat;
    use etherparse::PacketBuilder;
    use tracer_ebpf::HEADER_BYTES;

    #[test]
    fn times_match_humantime_across_seconds() {
        let f = TimeFormat::default();
        for ns in [
            0u64,
            999_999_999,
            1_000_000_000,
            1_764_144_000_123_456_789,
            1_764_144_000_999_999_000,
            1_764_144_001_000_001_000,
        ] {
            let t = UNIX_EPOCH + Duration::from_nanos(ns);
            assert_eq!(f.rfc3339_micros(t), humantime::format_rfc3339_micros(t).to_string(), "{ns}");
        }
        // The same second again, from the cache.
        let t = UNIX_EPOCH + Duration::from_nanos(1_764_144_001_500_000_000);
        assert_eq!(f.rfc3339_micros(t), "2025-11-26T08:00:01.500000Z");
    }

    fn decoder() -> Decoder {
        let format = TracepointFormat::parse(include_str!("../../tests/fixtures/6.18-kfree_skb.format")).unwrap();
        Decoder {
            reasons: DropReasons::resolve(None, Some(&format)),
            kallsyms: Arc::new(Kallsyms::parse("ffffffff81a00000 T __udp4_lib_rcv\n")),
            cgroups: Default::default(),
            netns: NetnsNames::new(),
            clock: WallClock::now(),
            record_formats: Default::default(),
            answer_functions: Default::default(),
            bpf_cmds: [5, 18, 28],
            bpf_names: Default::default(),
            ifnames: Default::default(),
            mtus: Default::default(),
            locations: Default::default(),
            times: Default::default(),
            pods: Default::default(),
        }
    }

    fn raw_drop(protocol: u16, packet: &[u8], reason: u32) -> Vec<u8> {
        let mut headers = [0u8; HEADER_BYTES];
        let len = packet.len().min(HEADER_BYTES);
        headers[..len].copy_from_slice(&packet[..len]);
        let mut ifname = [0u8; 16];
        ifname[..2].copy_from_slice(b"s0");
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"bash");
        let event = DropEvent {
            header: EventHeader { kind: EventKind::Drop as u16, _pad: 0, cpu: 1, ts_ns: 1_000, pid: 42, tid: 43, comm },
            skb: 0xffff_8881_0000_0000,
            location: 0xffff_ffff_81a0_04bc,
            reason,
            netns: 4026531840,
            ifindex: 7,
            protocol,
            header_len: len as u16,
            ifname,
            headers,
        };
        // SAFETY: DropEvent is plain repr(C) data.
        unsafe {
            std::slice::from_raw_parts((&event as *const DropEvent).cast::<u8>(), std::mem::size_of::<DropEvent>())
        }
        .to_vec()
    }

    /// Not a test: how many drop records per second one core decodes and analyzes
    /// (`cargo test --release -p dptrace --lib decode_rate -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn decode_rate() {
        let mut packet = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).udp(40000, 9999).write(&mut packet, b"hi").unwrap();
        let raw = raw_drop(ETH_P_IP, &packet, 3);
        let mut decoder = decoder();
        let mut analyzer = crate::analyze::Analyzer::new();
        let n = 1_000_000;
        let start = std::time::Instant::now();
        for _ in 0..n {
            let event = decoder.decode(&raw).unwrap();
            analyzer.observe(&event);
        }
        let secs = start.elapsed().as_secs_f64();
        println!("decode+analyze: {:.0} events/s ({:.0} ns each)", n as f64 / secs, secs * 1e9 / n as f64);
    }

    #[test]
    fn decodes_an_ipv4_udp_drop() {
        let mut packet = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).udp(40000, 9999).write(&mut packet, b"hi").unwrap();
        let Event::Drop(d) = decoder().decode(&raw_drop(ETH_P_IP, &packet, 3)).unwrap() else { panic!("not a drop") };
        assert_eq!(d.reason.as_deref(), Some("NO_SOCKET"));
        assert_eq!(d.location, "__udp4_lib_rcv+0x4bc");
        assert_eq!(d.function.as_deref(), Some("__udp4_lib_rcv"));
        assert_eq!(d.device.as_deref(), Some("s0"));
        assert_eq!(d.protocol, "ipv4");
        let flow = d.flow.unwrap();
        assert_eq!(flow.to_string(), "udp 10.0.0.1:40000 > 10.0.0.2:9999");
        assert_eq!(d.task.unwrap().comm, "bash");
    }

    #[test]
    fn decodes_an_ipv6_tcp_syn_and_truncated_headers() {
        let mut packet = Vec::new();
        let (src, dst) =
            ([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        PacketBuilder::ipv6(src, dst, 64).tcp(50000, 6443, 1, 1024).syn().write(&mut packet, &[]).unwrap();
        let Event::Drop(d) = decoder().decode(&raw_drop(ETH_P_IPV6, &packet, 12)).unwrap() else {
            panic!("not a drop")
        };
        assert_eq!(d.reason.as_deref(), Some("NETFILTER_DROP"));
        assert_eq!(d.flow.as_ref().unwrap().to_string(), "tcp [fd00::1]:50000 > [fd00::2]:6443 [SYN]");
        // Only the IPv6 header captured: addresses and protocol still come out.
        let Event::Drop(d) = decoder().decode(&raw_drop(ETH_P_IPV6, &packet[..40], 12)).unwrap() else {
            panic!("not a drop")
        };
        let flow = d.flow.unwrap();
        assert_eq!((flow.l4.as_str(), flow.dport), ("tcp", None));
    }

    #[test]
    fn rejects_short_and_unknown_records_and_handles_no_reason() {
        let mut d = decoder();
        assert_eq!(d.decode(&[0u8; 8]).unwrap_err(), DecodeError::Short(8));
        let mut unknown = raw_drop(ETH_P_IP, &[], 3);
        unknown[0] = 99;
        assert_eq!(d.decode(&unknown).unwrap_err(), DecodeError::UnknownKind(99));
        let Event::Drop(arp) = d.decode(&raw_drop(ETH_P_ARP, &[1, 2, 3], ABSENT)).unwrap() else {
            panic!("not a drop")
        };
        // No reason field: inferred from the location (__udp4_lib_rcv in this test's kallsyms).
        assert_eq!((arp.protocol.as_str(), arp.reason.as_deref(), arp.flow), ("arp", Some("NO_SOCKET"), None));
        assert!(arp.reason_inferred);
        assert_eq!(infer_reason("nf_hook_slow"), Some("NETFILTER_DROP"));
        assert_eq!(infer_reason("ip_rcv_core"), None);
    }

    #[test]
    fn a_detached_decoder_looks_nothing_up() {
        let own = netns::inode_of(std::path::Path::new("/proc/self/ns/net")).unwrap();
        let lo = IpAddr::from([127, 0, 0, 1]);
        let d = decoder();
        let mut detached = Decoder::detached(
            d.reasons.clone(),
            d.kallsyms.clone(),
            Default::default(),
            Default::default(),
            d.bpf_cmds,
        );
        assert_eq!(detached.route_egress(own, lo, lo, None), None);
        assert_eq!(detached.device_egress(own, 1), None);
        if nix::unistd::geteuid().is_root() {
            // A live decoder does enter the namespace (setns needs root) and finds lo.
            let live = decoder().route_egress(own, lo, lo, None).expect("a route to 127.0.0.1");
            assert_eq!(live.device, "lo");
        }
        // Emptying the caches keeps it detached.
        detached.mtus.routes.extend((0..=MTU_LOOKUPS as u32).map(|i| ((i, lo, None, 0), None)));
        detached.trim_mtu_lookups();
        assert!(detached.mtus.off && detached.mtus.routes.is_empty());
    }
}
