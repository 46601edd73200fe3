//! Netfilter and "connection refused" evidence (userspace twin: tracer/src/probes/netfilter.rs).
//!
//! Who answered a connection attempt, and how, is what tells a REJECT rule from a missing
//! listener from a silent DROP. These tracepoints show it without kprobes:
//! - `tcp:tcp_send_reset`: the stack sent a RST (for missing listeners too since 6.10);
//! - `tcp:tcp_receive_reset`: a socket got a RST (the client's "connection refused");
//! - `icmp:icmp_send` (6.15+): an ICMP error left, from the stack or a REJECT rule;
//! - `sock:inet_sock_set_state` → TCP_SYN_SENT: a connection attempt with its addresses.
//!
//! Where kprobes exist, the functions that answer a packet are hooked too (`answer_skb*`):
//! the stack's `tcp_v4/v6_send_reset` (which the tracepoint misses for missing listeners
//! before 6.10), the REJECT target's `nf_send_reset*`/`nf_send_unreach*`, and
//! `__icmp_send`/`icmp6_send` before 6.15. One program per position of the skb argument;
//! the function is told by its address in userspace.
//!
//! And where kprobes exist, the verdicts themselves: `nft_do_chain` (table and base chain)
//! and `ipt_do_table`/`ip6t_do_table` (iptables-legacy tables) returning DROP, with the hook.
//!
//! Each record is copied whole and decoded in userspace by field name with the tracefs
//! format, so layout changes across kernels (`tcp_send_reset` changed twice) need no code
//! here. Only the netns and device of the record's skb (or socket) are read here, with
//! offsets from BTF in `NETFILTER_CONFIG`.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_func_ip, bpf_probe_read_kernel_buf, bpf_probe_read_kernel_str_bytes},
    macros::{kprobe, kretprobe, map, tracepoint},
    maps::HashMap,
    programs::{ProbeContext, RetProbeContext, TracePointContext},
    EbpfContext,
};
use tracer_ebpf::{
    AnswerEvent, EventKind, NetfilterConfig, NfFrame, NfStack, RecordSource, TraceRecordEvent, VerdictEvent, ABSENT,
    NF_NAME_BYTES, TRACE_RECORD_BYTES, VERDICT_IPT, VERDICT_NFT,
};

use crate::events::{count_lost, fill_header, probe_args, read_field, submit_flags, EVENTS};

#[no_mangle]
static NETFILTER_CONFIG: NetfilterConfig = NetfilterConfig::absent();

/// The common header (type, flags, preempt count, pid) every record starts with.
const COMMON_HEADER: u64 = 8;

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    copy_record(&ctx, &config(), RecordSource::TcpSendReset);
    0
}

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    copy_record(&ctx, &config(), RecordSource::TcpReceiveReset);
    0
}

#[tracepoint]
pub fn icmp_send(ctx: TracePointContext) -> u32 {
    copy_record(&ctx, &config(), RecordSource::IcmpSend);
    0
}

/// Every TCP state change of every socket passes here; only connection attempts are kept,
/// so the cost of the rest is two reads and two compares.
#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let cfg = config();
    if cfg.state_newstate == ABSENT || cfg.state_protocol == ABSENT {
        return 0;
    }
    let newstate: i32 = unsafe { ctx.read_at(cfg.state_newstate as usize) }.unwrap_or(-1);
    // `__u8 protocol` before 5.6, `__u16` since: the first byte is the value either way
    // (little-endian).
    let protocol: u8 = unsafe { ctx.read_at(cfg.state_protocol as usize) }.unwrap_or(0);
    if newstate as u32 == cfg.tcp_syn_sent && protocol as u32 == cfg.ipproto_tcp {
        copy_record(&ctx, &cfg, RecordSource::TcpConnect);
    }
    0
}

#[inline(always)]
fn config() -> NetfilterConfig {
    // Volatile: the value is patched into the object at load time.
    unsafe { core::ptr::read_volatile(&NETFILTER_CONFIG) }
}

#[inline(always)]
fn copy_record(ctx: &TracePointContext, cfg: &NetfilterConfig, source: RecordSource) {
    let rc = match source {
        RecordSource::TcpSendReset => cfg.records[0],
        RecordSource::TcpReceiveReset => cfg.records[1],
        RecordSource::IcmpSend => cfg.records[2],
        RecordSource::TcpConnect => cfg.records[3],
    };
    if rc.len == 0 {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<TraceRecordEvent>(0) else {
        count_lost();
        return;
    };
    // SAFETY: the entry is `size_of::<TraceRecordEvent>()` bytes we own until submit.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut ev.header, EventKind::TraceRecord);
    ev.source = source as u16;
    ev._pad = 0;
    let base = ctx.as_ptr() as u64;
    // A fixed-size read keeps the verifier simple: perf tracepoint records live in a
    // per-CPU buffer far larger than any record, so reading past a short one is safe.
    let src = (base + COMMON_HEADER) as *const u8;
    let copied =
        if unsafe { bpf_probe_read_kernel_buf(src, &mut ev.record) }.is_ok() { TRACE_RECORD_BYTES as u32 } else { 0 };
    let wanted = rc.len.saturating_sub(COMMON_HEADER as u32);
    ev.len = if wanted < copied { wanted } else { copied } as u16;

    let skb: u64 = if rc.skb == ABSENT { 0 } else { read_field(base, rc.skb).unwrap_or(0) };
    let sk: u64 = if rc.sk == ABSENT { 0 } else { read_field(base, rc.sk).unwrap_or(0) };
    let dev: u64 = read_field(skb, cfg.skb_dev).unwrap_or(0);
    ev.ifindex = read_field(dev, cfg.dev_ifindex).unwrap_or(0);
    let mut net: u64 = read_field(dev, cfg.dev_net).unwrap_or(0);
    if net == 0 {
        net = read_field(sk, cfg.sk_net).unwrap_or(0);
    }
    ev.netns = read_field(net, cfg.net_inum).unwrap_or(0);
    entry.submit(submit_flags());
}

#[kprobe]
pub fn answer_skb0(ctx: ProbeContext) -> u32 {
    let args = probe_args(&ctx);
    answer(&ctx, args, args[0]);
    0
}

#[kprobe]
pub fn answer_skb1(ctx: ProbeContext) -> u32 {
    let args = probe_args(&ctx);
    answer(&ctx, args, args[1]);
    0
}

#[kprobe]
pub fn answer_skb2(ctx: ProbeContext) -> u32 {
    let args = probe_args(&ctx);
    answer(&ctx, args, args[2]);
    0
}

#[inline(always)]
fn answer(ctx: &ProbeContext, args: [u64; 3], skb: u64) {
    if skb == 0 {
        return;
    }
    let cfg = crate::drops::config();
    let Some(mut entry) = EVENTS.reserve::<AnswerEvent>(0) else {
        count_lost();
        return;
    };
    // SAFETY: the entry is `size_of::<AnswerEvent>()` bytes we own until submit.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut ev.packet.header, EventKind::PacketAnswer);
    // SAFETY: plain helper on the program's own context.
    let function = unsafe { bpf_get_func_ip(ctx.as_ptr()) };
    let protocol = u16::from_be(read_field(skb, cfg.skb_protocol).unwrap_or(0));
    crate::drops::fill_packet(&cfg, &mut ev.packet, skb, function, ABSENT, protocol);
    ev.args = args;
    entry.submit(submit_flags());
}

/// Netfilter calls in progress, per thread (bounded: entries are removed when a thread's
/// outermost call returns).
#[map(name = "NF_CALLS")]
static NF_CALLS: HashMap<u64, NfStack> = HashMap::with_max_entries(4096, 0);

/// `NF_DROP` and `NF_STOLEN` (UAPI), and the verdict bits of a hook's return value.
const NF_DROP: u32 = 0;
const NF_STOLEN: u32 = 2;
const NF_VERDICT_MASK: u32 = 0xff;

/// A DROP verdict: `NF_DROP` (errno, if any, in the upper bits), or what newer kernels return
/// when the chain freed the packet itself with a drop reason (`NF_DROP_REASON`: the skb is
/// freed in nft_do_chain, which returns `NF_STOLEN` with the errno in the upper bits).
#[inline(always)]
fn is_drop(verdict: u32) -> bool {
    let code = verdict & NF_VERDICT_MASK;
    code == NF_DROP || (code == NF_STOLEN && verdict >> 16 != 0)
}

#[kprobe]
pub fn nft_chain_enter(ctx: ProbeContext) -> u32 {
    let cfg = config();
    let args = probe_args(&ctx);
    // nft_do_chain(struct nft_pktinfo *pkt, void *priv /* the nft_chain */)
    let skb: u64 = read_field(args[0], cfg.nft_pkt_skb).unwrap_or(0);
    let state: u64 = read_field(args[0], cfg.nft_pkt_state).unwrap_or(0);
    push(NfFrame { skb, object: args[1], state, source: VERDICT_NFT as u64 });
    0
}

#[kprobe]
pub fn ipt_table_enter(ctx: ProbeContext) -> u32 {
    let cfg = config();
    let args = probe_args(&ctx);
    let pick = |i: u32| match i {
        0 => args[0],
        1 => args[1],
        2 => args[2],
        _ => 0,
    };
    push(NfFrame {
        skb: pick(cfg.ipt_arg_skb),
        object: pick(cfg.ipt_arg_table),
        state: pick(cfg.ipt_arg_state),
        source: VERDICT_IPT as u64,
    });
    0
}

#[kretprobe]
pub fn nf_verdict_exit(ctx: RetProbeContext) -> u32 {
    let verdict: u32 = ctx.ret::<u64>() as u32;
    if let Some(frame) = pop() {
        if is_drop(verdict) && frame.skb != 0 {
            report_verdict(&ctx, &frame, verdict);
        }
    }
    0
}

/// The thread a call runs on; softirqs interrupting the idle task all run as pid 0, so
/// those are told apart by CPU (a softirq does not migrate).
#[inline(always)]
fn call_key() -> u64 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if pid_tgid >> 32 == 0 {
        // SAFETY: helper without arguments.
        (1 << 63) | unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() } as u64
    } else {
        pid_tgid
    }
}

#[inline(always)]
fn push(frame: NfFrame) {
    let key = call_key();
    if NF_CALLS.get_ptr_mut(&key).is_none() {
        let empty = NfStack { depth: 0, frames: [NfFrame { skb: 0, object: 0, state: 0, source: 0 }; 4] };
        let _ = NF_CALLS.insert(&key, &empty, 0);
    }
    let Some(stack) = NF_CALLS.get_ptr_mut(&key) else { return };
    // SAFETY: the map value stays valid while this program runs; only this thread uses it.
    let stack = unsafe { &mut *stack };
    // Deeper calls than the stack holds are counted, not kept, so returns stay paired.
    // Constant indexes: the verifier rejects a map-value offset it cannot bound.
    match stack.depth {
        0 => stack.frames[0] = frame,
        1 => stack.frames[1] = frame,
        2 => stack.frames[2] = frame,
        3 => stack.frames[3] = frame,
        // Returns were missed (a kretprobe that could not fire): start over rather than
        // lose this thread's verdicts for good.
        _ => {
            stack.depth = 0;
            stack.frames[0] = frame;
        }
    }
    stack.depth += 1;
}

#[inline(always)]
fn pop() -> Option<NfFrame> {
    let key = call_key();
    let stack = NF_CALLS.get_ptr_mut(&key)?;
    // SAFETY: as in `push`.
    let stack = unsafe { &mut *stack };
    if stack.depth == 0 {
        return None;
    }
    stack.depth -= 1;
    let frame = match stack.depth {
        0 => Some(stack.frames[0]),
        1 => Some(stack.frames[1]),
        2 => Some(stack.frames[2]),
        3 => Some(stack.frames[3]),
        _ => None,
    };
    if stack.depth == 0 {
        let _ = NF_CALLS.remove(&key);
    }
    frame
}

#[inline(always)]
fn report_verdict(ctx: &RetProbeContext, frame: &NfFrame, verdict: u32) {
    let cfg = config();
    let drops = crate::drops::config();
    let Some(mut entry) = EVENTS.reserve::<VerdictEvent>(0) else {
        count_lost();
        return;
    };
    // SAFETY: the entry is `size_of::<VerdictEvent>()` bytes we own until submit.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut ev.packet.header, EventKind::NetfilterVerdict);
    // SAFETY: plain helper on the program's own context.
    let function = unsafe { bpf_get_func_ip(ctx.as_ptr()) };
    let protocol = u16::from_be(read_field(frame.skb, drops.skb_protocol).unwrap_or(0));
    crate::drops::fill_packet(&drops, &mut ev.packet, frame.skb, function, ABSENT, protocol);
    ev.verdict = verdict;
    ev.source = frame.source as u32;
    ev.hook = read_field::<u8>(frame.state, cfg.state_hook).map_or(ABSENT, |h| h as u32);
    ev.table = [0; NF_NAME_BYTES];
    ev.chain = [0; NF_NAME_BYTES];
    if frame.source == VERDICT_NFT as u64 {
        read_name(read_field(frame.object, cfg.nft_chain_name).unwrap_or(0), &mut ev.chain);
        let table: u64 = read_field(frame.object, cfg.nft_chain_table).unwrap_or(0);
        read_name(read_field(table, cfg.nft_table_name).unwrap_or(0), &mut ev.table);
        ev.family = read_field::<u16>(table, cfg.nft_table_family).map_or(ABSENT, |f| f as u32);
    } else {
        if cfg.xt_table_name != ABSENT && frame.object != 0 {
            read_name(frame.object + cfg.xt_table_name as u64, &mut ev.table);
        }
        ev.family = read_field::<u8>(frame.object, cfg.xt_table_af).map_or(ABSENT, |f| f as u32);
    }
    entry.submit(submit_flags());
}

/// Copies a NUL-terminated kernel string (a table or chain name).
#[inline(always)]
fn read_name(src: u64, dst: &mut [u8; NF_NAME_BYTES]) {
    if src != 0 {
        // SAFETY: the helper checks the source address; dst is ours.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(src as *const u8, dst) };
    }
}
