//! Packet paths (userspace twin: tracer/src/probes/path.rs).
//!
//! Five tracepoints every kernel has see a packet at each device: `net:netif_receive_skb`
//! (a device received it), `net:net_dev_queue` (handed to a device), `net:net_dev_xmit` (only
//! its failures), and the end of its life, `skb:kfree_skb` / `skb:consume_skb`; as raw
//! tracepoints where BTF gives their prototypes, else classic ones (same logic, `HopArgs`).
//! A packet that matches the filter gets a trace id, kept per `sk_buff` address in
//! `PATH_TRACKED`; later hooks follow the same `sk_buff` without looking at its headers again,
//! so the trace survives NAT, encapsulation and encryption. The filter runs here so that unwanted packets cost one
//! map lookup and a few header reads; userspace re-checks the whole expression.
//!
//! With `aggregate` set nothing is sent per packet: each hop (previous point → this point)
//! counts packets, bytes and a log2 latency histogram in `PATH_HOPS`.

use aya_ebpf::{
    helpers::{
        bpf_get_func_ip, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_buf,
    },
    macros::{kprobe, map, raw_tracepoint, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::{ProbeContext, RawTracePointContext, TracePointContext},
    EbpfContext,
};
use tracer_ebpf::{
    filter_kind, filter_side, path_hook, DropConfig, EventKind, FilterTerm, PathConfig, PathEvent, PathHopKey,
    PathHopStats, PathPoint, PathTrack, ABSENT, FILTER_CLAUSES, FILTER_TERMS, LATENCY_BUCKETS, PATH_HOP_END_TO_END,
    PATH_NO_HEADER, PATH_SNAP_BYTES,
};

use crate::events::{count_lost, fill_header, probe_args, read_field, submit_flags, EVENTS};

#[no_mangle]
static PATH_CONFIG: PathConfig = PathConfig::absent();

/// Traced `sk_buff`s between hops. LRU: packets freed without a tracepoint age out.
#[map(name = "PATH_TRACKED")]
static PATH_TRACKED: LruHashMap<u64, PathTrack> = LruHashMap::with_max_entries(16384, 0);

#[map(name = "PATH_HOPS")]
static PATH_HOPS: HashMap<PathHopKey, PathHopStats> = HashMap::with_max_entries(4096, 0);

/// Per-CPU trace id counters: ids are `cpu << 48 | n`, unique without atomics.
#[map(name = "PATH_IDS")]
static PATH_IDS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// A new `PATH_HOPS` entry starts from this.
static ZERO_STATS: PathHopStats =
    PathHopStats { packets: 0, bytes: 0, total_ns: 0, max_ns: 0, buckets: [0; LATENCY_BUCKETS] };

const UNSET_HEADER: u16 = u16::MAX;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;
/// IPv6 extension headers skipped at most.
const IPV6_EXTENSIONS: usize = 4;
const ETH_P_TEB: u16 = 0x6558;
/// VXLAN and Geneve base headers; Ethernet header.
const TUNNEL_HEADER: u64 = 8;
const ETH_HEADER: u64 = 14;
/// A link-layer header longer than this is not one (stale `mac_header`).
const MAX_L2: u64 = 64;

/// Reads one field of the configuration. Volatile: the global is patched at load time, so
/// the compiler must not fold its compile-time value; per field, because the whole struct
/// does not fit the 512-byte stack.
macro_rules! setting {
    ($($field:tt)+) => {
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!(PATH_CONFIG.$($field)+)) }
    };
}

#[tracepoint]
pub fn path_receive(ctx: TracePointContext) -> u32 {
    hop(&ctx, path_hook::RECEIVE);
    0
}

#[tracepoint]
pub fn path_queue(ctx: TracePointContext) -> u32 {
    hop(&ctx, path_hook::QUEUE);
    0
}

#[tracepoint]
pub fn path_xmit(ctx: TracePointContext) -> u32 {
    hop(&ctx, path_hook::XMIT_ERROR);
    0
}

#[tracepoint]
pub fn path_free(ctx: TracePointContext) -> u32 {
    hop(&ctx, path_hook::FREE);
    0
}

#[tracepoint]
pub fn path_deliver(ctx: TracePointContext) -> u32 {
    hop(&ctx, path_hook::DELIVER);
    0
}

#[tracepoint]
pub fn path_consume(ctx: TracePointContext) -> u32 {
    hop(&ctx, path_hook::CONSUME);
    0
}

// The same hooks as raw tracepoints, where BTF shows their prototypes (userspace checks the
// argument types): no trace record is built (the device tracepoints' records copy the
// device's name) and arguments are plain loads. Every hop of every packet on the machine
// runs these, traced or not. Each reads only the arguments its tracepoint has: the kernel
// refuses to attach a program that reads past them.

#[raw_tracepoint(tracepoint = "netif_receive_skb")]
pub fn path_rcv_raw(ctx: RawTracePointContext) -> u32 {
    hop(&RawHop::<1>::new(&ctx), path_hook::RECEIVE);
    0
}

#[raw_tracepoint(tracepoint = "net_dev_queue")]
pub fn path_queue_raw(ctx: RawTracePointContext) -> u32 {
    hop(&RawHop::<1>::new(&ctx), path_hook::QUEUE);
    0
}

/// `net_dev_xmit(skb, rc, dev, skb_len)`.
#[raw_tracepoint(tracepoint = "net_dev_xmit")]
pub fn path_xmit_raw(ctx: RawTracePointContext) -> u32 {
    hop(&RawHop::<2>::new(&ctx), path_hook::XMIT_ERROR);
    0
}

/// `kfree_skb(skb, location, reason, …)` (5.17+: userspace attaches this one only then).
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn path_free_raw(ctx: RawTracePointContext) -> u32 {
    hop(&RawHop::<3>::new(&ctx), path_hook::FREE);
    0
}

#[raw_tracepoint(tracepoint = "skb_copy_datagram_iovec")]
pub fn path_deliv_raw(ctx: RawTracePointContext) -> u32 {
    hop(&RawHop::<1>::new(&ctx), path_hook::DELIVER);
    0
}

#[raw_tracepoint(tracepoint = "consume_skb")]
pub fn path_cons_raw(ctx: RawTracePointContext) -> u32 {
    hop(&RawHop::<1>::new(&ctx), path_hook::CONSUME);
    0
}

/// Where a hop's skb and results come from: a classic tracepoint's record (offsets from
/// tracefs, read with a helper each) or a raw tracepoint's arguments.
trait HopArgs {
    fn skb(&self, hook: u32) -> Option<u64>;
    /// `net_dev_xmit`'s return code.
    fn xmit_rc(&self) -> i32;
    /// `kfree_skb`'s reason ([`ABSENT`] when the kernel has none) and location.
    fn free_reason(&self) -> u32;
    fn free_location(&self) -> u64;
}

impl HopArgs for TracePointContext {
    #[inline(always)]
    fn skb(&self, hook: u32) -> Option<u64> {
        let offset = match hook {
            path_hook::RECEIVE => setting!(tp_skb[1]),
            path_hook::QUEUE => setting!(tp_skb[2]),
            path_hook::XMIT_ERROR => setting!(tp_skb[3]),
            path_hook::FREE => setting!(tp_skb[4]),
            path_hook::CONSUME => setting!(tp_skb[5]),
            _ => setting!(tp_skb[6]),
        };
        if offset == ABSENT {
            return None;
        }
        unsafe { self.read_at::<u64>(offset as usize) }.ok()
    }

    #[inline(always)]
    fn xmit_rc(&self) -> i32 {
        let offset = setting!(tp_xmit_rc);
        if offset == ABSENT {
            return 0;
        }
        unsafe { self.read_at(offset as usize) }.unwrap_or(0)
    }

    #[inline(always)]
    fn free_reason(&self) -> u32 {
        let offset = setting!(tp_free_reason);
        if offset == ABSENT {
            return ABSENT;
        }
        unsafe { self.read_at(offset as usize) }.unwrap_or(ABSENT)
    }

    #[inline(always)]
    fn free_location(&self) -> u64 {
        let offset = setting!(tp_free_location);
        if offset == ABSENT {
            return 0;
        }
        unsafe { self.read_at(offset as usize) }.unwrap_or(0)
    }
}

/// A raw tracepoint's first `N` arguments, copied at constant positions (the verifier wants
/// constant context offsets, and the kernel checks at attach time that the tracepoint has
/// as many arguments as the program reads).
struct RawHop<const N: usize>([u64; N]);

impl<const N: usize> RawHop<N> {
    #[inline(always)]
    fn new(ctx: &RawTracePointContext) -> Self {
        let mut args = [0u64; N];
        for (i, a) in args.iter_mut().enumerate() {
            *a = ctx.arg(i);
        }
        Self(args)
    }
}

impl<const N: usize> HopArgs for RawHop<N> {
    #[inline(always)]
    fn skb(&self, _hook: u32) -> Option<u64> {
        Some(self.0[0])
    }

    #[inline(always)]
    fn xmit_rc(&self) -> i32 {
        if N > 1 {
            self.0[1] as i32
        } else {
            0
        }
    }

    #[inline(always)]
    fn free_reason(&self) -> u32 {
        if N > 2 {
            self.0[2] as u32
        } else {
            ABSENT
        }
    }

    #[inline(always)]
    fn free_location(&self) -> u64 {
        if N > 1 {
            self.0[1]
        } else {
            0
        }
    }
}

/// Where the kernel has kprobes: datapath functions (`ip_forward`, `vxlan_xmit`, `br_forward`,
/// …) show what happened to a traced packet between two devices. Only packets already traced
/// are reported; the others cost one map lookup.
#[kprobe]
pub fn path_fn_skb0(ctx: ProbeContext) -> u32 {
    let args = probe_args(&ctx);
    function_hop(&ctx, args[0]);
    0
}

#[kprobe]
pub fn path_fn_skb1(ctx: ProbeContext) -> u32 {
    let args = probe_args(&ctx);
    function_hop(&ctx, args[1]);
    0
}

#[kprobe]
pub fn path_fn_skb2(ctx: ProbeContext) -> u32 {
    let args = probe_args(&ctx);
    function_hop(&ctx, args[2]);
    0
}

#[inline(always)]
fn function_hop(ctx: &ProbeContext, skb: u64) {
    if skb == 0 || setting!(aggregate) != 0 {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let trace_id = match unsafe { PATH_TRACKED.get(&skb) } {
        Some(t) if now.wrapping_sub(t.last_ns) <= setting!(follow_ns) => t.trace_id,
        _ => return,
    };
    let function = unsafe { bpf_get_func_ip(ctx.as_ptr()) };
    let d = drops();
    let dev: u64 = read_field(skb, d.skb_dev).unwrap_or(0);
    let ifindex: u32 = read_field(dev, d.dev_ifindex).unwrap_or(0);
    let net: u64 = read_field(dev, d.dev_net).unwrap_or(0);
    let netns: u32 = read_field(net, d.net_inum).unwrap_or(0);
    let point = PathPoint { netns, ifindex, hook: path_hook::FUNCTION, _pad: 0 };
    let len: u32 = read_field(skb, setting!(skb_len)).unwrap_or(0);
    emit(skb, path_hook::FUNCTION, trace_id, point, len, 0, function, &d, dev);
}

/// Where an `sk_buff` is: its device, the device's index and namespace.
#[derive(Clone, Copy)]
struct Place {
    dev: u64,
    ifindex: u32,
    netns: u32,
}

/// One field of the drops family's configuration, without copying all of it onto the stack
/// (the verifier allows 512 bytes for a program and the functions it calls together).
macro_rules! drop_field {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!(crate::drops::DROP_CONFIG.$field)) }
    };
}

#[inline(always)]
fn place(skb: u64) -> Place {
    let dev: u64 = read_field(skb, drop_field!(skb_dev)).unwrap_or(0);
    let mut net: u64 = read_field(dev, drop_field!(dev_net)).unwrap_or(0);
    if net == 0 {
        // Queued to a socket, the packet has no device any more: its socket's namespace.
        let sk: u64 = read_field(skb, drop_field!(skb_sk)).unwrap_or(0);
        net = read_field(sk, drop_field!(sk_net)).unwrap_or(0);
    }
    let ifindex = read_field(dev, drop_field!(dev_ifindex)).unwrap_or(0);
    Place { dev, ifindex, netns: read_field(net, drop_field!(net_inum)).unwrap_or(0) }
}

#[inline(always)]
fn drops() -> DropConfig {
    crate::drops::config()
}

/// The headers a filter looks at.
struct Flow {
    family: u8,
    proto: u8,
    has_ports: bool,
    sport: u16,
    dport: u16,
    src: [u8; 16],
    dst: [u8; 16],
}

impl Flow {
    const fn empty() -> Self {
        Self { family: 0, proto: 0, has_ports: false, sport: 0, dport: 0, src: [0; 16], dst: [0; 16] }
    }
}

#[inline(always)]
fn hop<A: HopArgs>(args: &A, hook: u32) {
    let Some(skb) = args.skb(hook) else { return };
    if skb == 0 {
        return;
    }
    let mut result: u32 = 0;
    if hook == path_hook::XMIT_ERROR {
        let rc = args.xmit_rc();
        if rc == 0 {
            return;
        }
        result = rc as u32;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let follow_ns = setting!(follow_ns);
    // The map's own copy, not one on the stack: this frame is near the verifier's limit; and
    // a followed packet's entry is updated in place below, as an LRU map update (locks, a
    // node taken from the free list and one given back) costs more than the rest of a hop.
    let mut tracked = match PATH_TRACKED.get_ptr_mut(&skb) {
        Some(t) if now.wrapping_sub(unsafe { (*t).last_ns }) <= follow_ns => Some(t),
        _ => None,
    };
    let is_end = hook == path_hook::XMIT_ERROR
        || hook == path_hook::FREE
        || hook == path_hook::CONSUME
        || hook == path_hook::DELIVER;
    if let Some(t) = tracked {
        let t = unsafe { &*t };
        // A packet delivered to a socket may be freed without a tracepoint (UDP), and its
        // `sk_buff` memory reused at once. A received packet is never sent again by a local
        // socket, nor received twice on one device or in another namespace without being
        // sent in between: such a hop is a new packet, not the tracked one. Checked only
        // where it can happen, since every read here is paid per hop of every traced packet.
        let fresh = t.last.hook == path_hook::RECEIVE
            && match hook {
                path_hook::QUEUE => read_field::<u64>(skb, drop_field!(skb_sk)).unwrap_or(0) != 0,
                path_hook::RECEIVE => {
                    let p = place(skb);
                    t.last.netns != p.netns || t.last.ifindex == p.ifindex
                }
                _ => false,
            };
        if fresh {
            tracked = None;
            let _ = PATH_TRACKED.remove(&skb);
        }
    }
    if tracked.is_none() && (is_end || !matches(skb, hook)) {
        return;
    }
    let mut location: u64 = 0;
    if hook == path_hook::FREE {
        result = args.free_reason();
        location = args.free_location();
    }
    // Read again rather than kept across `matches`: the verifier's 512-byte stack limit
    // counts this frame and the filter's together (6.1 refused 544).
    let Place { dev, ifindex, netns, .. } = place(skb);
    let point = PathPoint { netns, ifindex, hook, _pad: 0 };
    let (trace_id, first_ns, previous) = match tracked {
        Some(t) => unsafe { ((*t).trace_id, (*t).first_ns, Some(((*t).last, (*t).last_ns))) },
        None => (new_trace_id(), now, None),
    };
    match tracked {
        _ if is_end => {
            let _ = PATH_TRACKED.remove(&skb);
        }
        // SAFETY: the map's value; a packet is handled by one CPU at a time.
        Some(t) => unsafe {
            (*t).last_ns = now;
            (*t).last = point;
        },
        None => {
            let track = PathTrack { trace_id, first_ns, last_ns: now, last: point };
            let _ = PATH_TRACKED.insert(&skb, &track, 0);
        }
    }
    let len: u32 = read_field(skb, setting!(skb_len)).unwrap_or(0);
    if setting!(aggregate) != 0 {
        let from = previous.map_or(PathPoint::default(), |(p, _)| p);
        let delta = previous.map_or(0, |(_, at)| now.wrapping_sub(at));
        count_hop(&PathHopKey { from, to: point }, delta, len);
        if is_end {
            let start = PathPoint { hook: PATH_HOP_END_TO_END, ..PathPoint::default() };
            count_hop(&PathHopKey { from: start, to: point }, now.wrapping_sub(first_ns), len);
        }
        return;
    }
    emit(skb, hook, trace_id, point, len, result, location, &drops(), dev);
}

#[inline(always)]
fn new_trace_id() -> u64 {
    let cpu = unsafe { bpf_get_smp_processor_id() } as u64;
    match PATH_IDS.get_ptr_mut(0) {
        Some(n) => unsafe {
            *n += 1;
            (cpu << 48) | (*n & 0xffff_ffff_ffff)
        },
        None => cpu << 48,
    }
}

#[inline(always)]
fn count_hop(key: &PathHopKey, delta: u64, len: u32) {
    let stats = match PATH_HOPS.get_ptr_mut(key) {
        Some(stats) => stats,
        None => {
            let _ = PATH_HOPS.insert(key, &ZERO_STATS, 1 /* BPF_NOEXIST */);
            let Some(stats) = PATH_HOPS.get_ptr_mut(key) else { return };
            stats
        }
    };
    // Fixed-point log2: the highest set bit of the delta picks the bucket.
    let bucket = if delta == 0 { 0 } else { (63 - delta.leading_zeros()) as usize };
    let bucket = if bucket >= LATENCY_BUCKETS { LATENCY_BUCKETS - 1 } else { bucket };
    // SAFETY: a map value we hold; concurrent CPUs may lose an increment (counts are
    // statistics, and atomics on every hop would cost more than they are worth here).
    unsafe {
        (*stats).packets += 1;
        (*stats).bytes += len as u64;
        (*stats).total_ns += delta;
        if delta > (*stats).max_ns {
            (*stats).max_ns = delta;
        }
        (*stats).buckets[bucket] += 1;
    }
}

/// Where the packet's network header and (if it has one) link-layer header are.
#[inline(always)]
fn header_addresses(skb: u64, hook: u32, d: &DropConfig) -> (u64, u64, u64) {
    let head: u64 = read_field(skb, d.skb_head).unwrap_or(0);
    if head == 0 {
        return (0, 0, 0);
    }
    // At receive, `data` is at the network header (the link header was pulled) while
    // `network_header` may still be stale; elsewhere `network_header` is right.
    let l3 = if hook == path_hook::RECEIVE {
        read_field::<u64>(skb, setting!(skb_data)).unwrap_or(0)
    } else {
        let network: u16 = read_field(skb, d.skb_network_header).unwrap_or(UNSET_HEADER);
        if network == UNSET_HEADER {
            0
        } else {
            head + network as u64
        }
    };
    let mac: u16 = read_field(skb, setting!(skb_mac_header)).unwrap_or(UNSET_HEADER);
    let l2 = if mac == UNSET_HEADER { 0 } else { head + mac as u64 };
    let l2 = if l2 != 0 && l3 > l2 && l3 - l2 <= MAX_L2 { l2 } else { 0 };
    let tail: u32 = read_field(skb, d.skb_tail).unwrap_or(0);
    (l2, l3, head + tail as u64)
}

#[inline(always)]
fn matches(skb: u64, hook: u32) -> bool {
    let clauses = setting!(clauses);
    if clauses == 0 {
        return true;
    }
    let d = drops();
    let (_, l3, _) = header_addresses(skb, hook, &d);
    if l3 == 0 {
        return false;
    }
    let mut outer = Flow::empty();
    let Some(l4) = parse_ip(l3, &mut outer) else { return false };
    if filter(&outer, clauses) {
        return true;
    }
    let mut inner = Flow::empty();
    match inner_l3(&outer, l4) {
        Some(inner_l3) if parse_ip(inner_l3, &mut inner).is_some() => filter(&inner, clauses),
        _ => false,
    }
}

/// Parses the IP header at `l3` (and TCP/UDP/SCTP ports); returns the transport header's address.
#[inline(always)]
fn parse_ip(l3: u64, flow: &mut Flow) -> Option<u64> {
    let first: u8 = unsafe { bpf_probe_read_kernel(l3 as *const u8) }.ok()?;
    let l4 = match first >> 4 {
        4 => {
            let ip: [u8; 20] = unsafe { bpf_probe_read_kernel(l3 as *const [u8; 20]) }.ok()?;
            flow.family = 4;
            flow.proto = ip[9];
            flow.src[..4].copy_from_slice(&ip[12..16]);
            flow.dst[..4].copy_from_slice(&ip[16..20]);
            // Later fragments carry no transport header.
            if (u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff) != 0 {
                return Some(0);
            }
            l3 + ((ip[0] & 0x0f) as u64) * 4
        }
        6 => {
            let ip: [u8; 40] = unsafe { bpf_probe_read_kernel(l3 as *const [u8; 40]) }.ok()?;
            flow.family = 6;
            flow.src.copy_from_slice(&ip[8..24]);
            flow.dst.copy_from_slice(&ip[24..40]);
            // Skip extension headers as the decoder does, so both see the same protocol.
            let mut next = ip[6];
            let mut at = l3 + 40;
            for _ in 0..IPV6_EXTENSIONS {
                let length = match next {
                    IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                        let h: [u8; 2] = unsafe { bpf_probe_read_kernel(at as *const [u8; 2]) }.ok()?;
                        next = h[0];
                        (h[1] as u64 + 1) * 8
                    }
                    IPV6_FRAGMENT => {
                        let h: [u8; 4] = unsafe { bpf_probe_read_kernel(at as *const [u8; 4]) }.ok()?;
                        next = h[0];
                        // A later fragment carries no transport header.
                        if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                            flow.proto = next;
                            return Some(0);
                        }
                        8
                    }
                    IPV6_AUTH => {
                        let h: [u8; 2] = unsafe { bpf_probe_read_kernel(at as *const [u8; 2]) }.ok()?;
                        next = h[0];
                        (h[1] as u64 + 2) * 4
                    }
                    _ => break,
                };
                at += length;
            }
            flow.proto = next;
            at
        }
        _ => return None,
    };
    // Ports where the decoder reads them too (it gives SCTP none), so that negated port
    // terms mean the same on both sides.
    if flow.proto == IPPROTO_TCP || flow.proto == IPPROTO_UDP {
        if let Ok(ports) = unsafe { bpf_probe_read_kernel(l4 as *const [u8; 4]) } {
            flow.has_ports = true;
            flow.sport = u16::from_be_bytes([ports[0], ports[1]]);
            flow.dport = u16::from_be_bytes([ports[2], ports[3]]);
        }
    }
    Some(l4)
}

/// The encapsulated packet's IP header, for UDP to a VXLAN or Geneve port.
#[inline(always)]
fn inner_l3(outer: &Flow, l4: u64) -> Option<u64> {
    if l4 == 0 || outer.proto != IPPROTO_UDP || !outer.has_ports || outer.dport == 0 {
        return None;
    }
    let tunnel = l4 + 8;
    let eth = if outer.dport == setting!(vxlan_ports[0])
        || outer.dport == setting!(vxlan_ports[1])
        || outer.dport == setting!(vxlan_ports[2])
    {
        tunnel + TUNNEL_HEADER
    } else if outer.dport == setting!(geneve_port) {
        let g: [u8; 4] = unsafe { bpf_probe_read_kernel(tunnel as *const [u8; 4]) }.ok()?;
        if u16::from_be_bytes([g[2], g[3]]) != ETH_P_TEB {
            return None;
        }
        tunnel + TUNNEL_HEADER + ((g[0] & 0x3f) as u64) * 4
    } else {
        return None;
    };
    Some(eth + ETH_HEADER)
}

/// Conjunctive normal form: every clause needs one matching term.
#[inline(always)]
fn filter(flow: &Flow, clauses: u32) -> bool {
    for c in 0..FILTER_CLAUSES {
        if c as u32 >= clauses {
            break;
        }
        let mut any = false;
        for t in 0..FILTER_TERMS {
            let term: FilterTerm = setting!(filter[c][t]);
            if term.kind != filter_kind::NONE && term_matches(&term, flow) {
                any = true;
                break;
            }
        }
        if !any {
            return false;
        }
    }
    true
}

#[inline(always)]
fn term_matches(term: &FilterTerm, flow: &Flow) -> bool {
    let hit = match term.kind {
        filter_kind::PROTO => flow.proto == term.proto && (term.family == 0 || term.family == flow.family),
        filter_kind::FAMILY => flow.family == term.family,
        filter_kind::ADDR => {
            flow.family == term.family
                && match term.side {
                    filter_side::SRC => prefix_matches(&flow.src, term),
                    filter_side::DST => prefix_matches(&flow.dst, term),
                    _ => prefix_matches(&flow.src, term) || prefix_matches(&flow.dst, term),
                }
        }
        filter_kind::PORT => {
            let within = |p: u16| p >= term.port_lo && p <= term.port_hi;
            flow.has_ports
                && match term.side {
                    filter_side::SRC => within(flow.sport),
                    filter_side::DST => within(flow.dport),
                    _ => within(flow.sport) || within(flow.dport),
                }
        }
        _ => false,
    };
    hit != (term.negate != 0)
}

#[inline(always)]
fn prefix_matches(addr: &[u8; 16], term: &FilterTerm) -> bool {
    let bits = term.prefix as usize;
    for i in 0..16 {
        let start = i * 8;
        if start >= bits {
            break;
        }
        let mask: u8 = if bits - start >= 8 { 0xff } else { 0xffu8 << (8 - (bits - start)) };
        if (addr[i] ^ term.addr[i]) & mask != 0 {
            return false;
        }
    }
    true
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn emit(
    skb: u64,
    hook: u32,
    trace_id: u64,
    point: PathPoint,
    len: u32,
    result: u32,
    location: u64,
    d: &DropConfig,
    dev: u64,
) {
    let Some(mut entry) = EVENTS.reserve::<PathEvent>(0) else {
        count_lost();
        return;
    };
    // SAFETY: the entry is `size_of::<PathEvent>()` bytes of ring buffer we own until submit.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut ev.header, EventKind::PacketHop);
    ev.skb = skb;
    ev.trace_id = trace_id;
    ev.location = location;
    ev.hook = point.hook;
    ev.netns = point.netns;
    ev.ifindex = point.ifindex;
    ev.len = len;
    ev.result = result;
    ev.protocol = u16::from_be(read_field(skb, d.skb_protocol).unwrap_or(0));
    ev.ifname = read_field(dev, d.dev_name).unwrap_or([0; 16]);
    ev.l2_offset = PATH_NO_HEADER;
    ev.l3_offset = PATH_NO_HEADER;
    ev.caplen = 0;
    let (l2, l3, end) = header_addresses(skb, hook, d);
    let start = if l2 != 0 { l2 } else { l3 };
    if start != 0 {
        // Fixed-size reads keep the verifier simple; `caplen` says how much is packet.
        let copied: u64 = if unsafe { bpf_probe_read_kernel_buf(start as *const u8, &mut ev.data) }.is_ok() {
            PATH_SNAP_BYTES as u64
        } else if unsafe { bpf_probe_read_kernel_buf(start as *const u8, &mut ev.data[..64]) }.is_ok() {
            64
        } else {
            0
        };
        let available = if end > start { end - start } else { copied };
        ev.caplen = if available < copied { available } else { copied } as u16;
        if l2 != 0 {
            ev.l2_offset = 0;
        }
        ev.l3_offset = (l3 - start) as u16;
    }
    entry.submit(submit_flags());
}
