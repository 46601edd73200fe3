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
//! Each record is copied whole and decoded in userspace by field name with the tracefs
//! format, so layout changes across kernels (`tcp_send_reset` changed twice) need no code
//! here. Only the netns and device of the record's skb (or socket) are read here, with
//! offsets from BTF in `NETFILTER_CONFIG`.

use aya_ebpf::{
    helpers::{bpf_get_func_ip, bpf_probe_read_kernel_buf},
    macros::{kprobe, tracepoint},
    programs::{ProbeContext, TracePointContext},
    EbpfContext,
};
use tracer_ebpf::{
    AnswerEvent, EventKind, NetfilterConfig, RecordSource, TraceRecordEvent, ABSENT, TRACE_RECORD_BYTES,
};

use crate::events::{count_lost, fill_header, probe_args, read_field, EVENTS};

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
    let protocol: u16 = unsafe { ctx.read_at(cfg.state_protocol as usize) }.unwrap_or(0);
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
    entry.submit(0);
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
    entry.submit(0);
}
