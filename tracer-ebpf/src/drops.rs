//! Drop monitoring (userspace twin: tracer/src/probes/drops.rs). Three backends, chosen by
//! userspace by probing, best first:
//! - `kfree_skb`: the `skb:kfree_skb` tracepoint (every kernel; `reason` field since 5.17), or
//!   `kfree_skb_raw`, the same as a raw tracepoint where BTF shows the 5.17+ prototype: it
//!   builds no trace record and reads its arguments with plain loads instead of four helper
//!   calls, which matters in a drop storm;
//! - `drop_fentry`: fentry on the drop function (`sk_skb_reason_drop`, `kfree_skb_reason` or
//!   `kfree_skb`, whichever this kernel has), needs BTF and the `tracing` program type;
//! - `drop_kprobe`: kprobe on the same function, for kernels with kprobes but no fentry.
//!
//! Every offset used here arrives in `DROP_CONFIG`, filled by userspace from the tracefs
//! format file, BTF and kallsyms, so one object file works across kernel versions.

use aya_ebpf::{
    helpers::{bpf_get_stack, bpf_probe_read_kernel_buf},
    macros::{fentry, kprobe, raw_tracepoint, tracepoint},
    programs::{FEntryContext, ProbeContext, RawTracePointContext, TracePointContext},
    EbpfContext,
};
use tracer_ebpf::{DropConfig, DropEvent, EventKind, ABSENT, HEADER_BYTES};

use crate::events::{count_lost, fill_header, probe_args, read_field, submit_flags, EVENTS};

#[no_mangle]
pub(crate) static DROP_CONFIG: DropConfig = DropConfig::absent();

/// The kernel's marker for "header offset not set" (`(u16)~0U` in skbuff.h).
const UNSET_HEADER: u16 = u16::MAX;
/// Stack frames searched for the caller of the probed drop function.
const FRAMES: usize = 8;

#[tracepoint]
pub fn kfree_skb(ctx: TracePointContext) -> u32 {
    let _ = from_tracepoint(&ctx);
    0
}

/// `kfree_skb(skb, location, reason, …)`.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn kfree_skb_raw(ctx: RawTracePointContext) -> u32 {
    let cfg = config();
    let (skb, location, reason): (u64, u64, u64) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    let reason = if cfg.tp_reason == ABSENT { ABSENT } else { reason as u32 };
    if skb == 0 || is_routine(&cfg, reason) {
        return 0;
    }
    let protocol = u16::from_be(read_field(skb, cfg.skb_protocol).unwrap_or(0));
    record(&cfg, skb, location, reason, protocol);
    0
}

#[kprobe]
pub fn drop_kprobe(ctx: ProbeContext) -> u32 {
    let cfg = config();
    // The verifier rejects variable offsets into the context (pt_regs), so the first three
    // arguments are all read at constant offsets and the configured ones picked afterwards.
    let args = probe_args(&ctx);
    let (skb, reason) = pick_args(&cfg, args);
    from_function(&ctx, &cfg, skb, reason);
    0
}

/// Attached to whichever drop function userspace picks (`FEntry::load` takes the name).
#[fentry(function = "kfree_skb_reason")]
pub fn drop_fentry(ctx: FEntryContext) -> u32 {
    let cfg = config();
    // As for kprobes: constant offsets into the context only.
    let args: [u64; 3] = [ctx.arg(0), ctx.arg(1), ctx.arg(2)];
    let (skb, reason) = pick_args(&cfg, args);
    from_function(&ctx, &cfg, skb, reason);
    0
}

/// The skb and the reason among the probed function's first arguments.
#[inline(always)]
fn pick_args(cfg: &DropConfig, args: [u64; 3]) -> (u64, u32) {
    let skb = match cfg.arg_skb {
        0 => args[0],
        1 => args[1],
        _ => 0,
    };
    let reason = match cfg.arg_reason {
        1 => args[1] as u32,
        2 => args[2] as u32,
        _ => ABSENT,
    };
    (skb, reason)
}

#[inline(always)]
pub fn config() -> DropConfig {
    // Volatile: the value is patched into the object at load time; the compiler must
    // not fold the compile-time `absent()` placeholder.
    unsafe { core::ptr::read_volatile(&DROP_CONFIG) }
}

#[inline(always)]
fn is_routine(cfg: &DropConfig, reason: u32) -> bool {
    reason != ABSENT && (reason == cfg.reason_consumed || reason == cfg.reason_not_dropped)
}

fn from_tracepoint(ctx: &TracePointContext) -> Result<(), i64> {
    let cfg = config();
    let reason: u32 =
        if cfg.tp_reason == ABSENT { ABSENT } else { unsafe { ctx.read_at::<u32>(cfg.tp_reason as usize)? } };
    if is_routine(&cfg, reason) {
        return Ok(());
    }
    let skb: u64 = unsafe { ctx.read_at(cfg.tp_skbaddr as usize)? };
    let location: u64 = unsafe { ctx.read_at(cfg.tp_location as usize)? };
    // The tracepoint already stores `ntohs(skb->protocol)`.
    let protocol: u16 = unsafe { ctx.read_at(cfg.tp_protocol as usize)? };
    record(&cfg, skb, location, reason, protocol);
    Ok(())
}

fn from_function<C: EbpfContext>(ctx: &C, cfg: &DropConfig, skb: u64, reason: u32) {
    if skb == 0 || is_routine(cfg, reason) {
        return;
    }
    let protocol = u16::from_be(read_field(skb, cfg.skb_protocol).unwrap_or(0));
    record(cfg, skb, caller(ctx, cfg), reason, protocol);
}

/// The return address of the probed function's caller: the first kernel stack frame
/// outside `[fn_start, fn_end)` after one inside it. 0 when it cannot be told.
#[inline(always)]
fn caller<C: EbpfContext>(ctx: &C, cfg: &DropConfig) -> u64 {
    if cfg.fn_start == 0 {
        return 0;
    }
    let mut frames = [0u64; FRAMES];
    let bytes = (FRAMES * 8) as u32;
    let got = unsafe { bpf_get_stack(ctx.as_ptr(), frames.as_mut_ptr().cast(), bytes, 0) };
    if got <= 0 {
        return 0;
    }
    let mut inside = false;
    for frame in frames {
        let in_fn = frame >= cfg.fn_start && frame < cfg.fn_end;
        if inside && !in_fn && frame != 0 {
            return frame;
        }
        inside |= in_fn;
    }
    0
}

#[inline(always)]
fn record(cfg: &DropConfig, skb: u64, location: u64, reason: u32, protocol: u16) {
    let Some(mut entry) = EVENTS.reserve::<DropEvent>(0) else {
        count_lost();
        return;
    };
    // SAFETY: the entry is `size_of::<DropEvent>()` bytes of ring buffer we own until submit.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut ev.header, EventKind::Drop);
    fill_packet(cfg, ev, skb, location, reason, protocol);
    entry.submit(submit_flags());
}

/// Fills everything but the header: the skb's device, namespace and headers. Shared with
/// the netfilter family's answer kprobes, which describe a packet the same way.
#[inline(always)]
pub fn fill_packet(cfg: &DropConfig, ev: &mut DropEvent, skb: u64, location: u64, reason: u32, protocol: u16) {
    ev.skb = skb;
    ev.location = location;
    ev.reason = reason;
    ev.protocol = protocol;
    ev.ifindex = 0;
    ev.ifname = [0; 16];
    ev.netns = 0;
    ev.header_len = 0;

    let dev: u64 = read_field(skb, cfg.skb_dev).unwrap_or(0);
    let mut net: u64 = 0;
    if dev != 0 {
        ev.ifindex = read_field(dev, cfg.dev_ifindex).unwrap_or(0);
        ev.ifname = read_field(dev, cfg.dev_name).unwrap_or([0; 16]);
        net = read_field(dev, cfg.dev_net).unwrap_or(0);
    }
    if net == 0 {
        let sk: u64 = read_field(skb, cfg.skb_sk).unwrap_or(0);
        net = read_field(sk, cfg.sk_net).unwrap_or(0);
    }
    ev.netns = read_field(net, cfg.net_inum).unwrap_or(0);

    let head: u64 = read_field(skb, cfg.skb_head).unwrap_or(0);
    let network: u16 = read_field(skb, cfg.skb_network_header).unwrap_or(UNSET_HEADER);
    if head != 0 && network != UNSET_HEADER {
        let start = (head + network as u64) as *const u8;
        // Fixed-size reads keep the verifier simple; `tail` says how much of it is packet.
        let copied: u32 = if unsafe { bpf_probe_read_kernel_buf(start, &mut ev.headers) }.is_ok() {
            HEADER_BYTES as u32
        } else if unsafe { bpf_probe_read_kernel_buf(start, &mut ev.headers[..40]) }.is_ok() {
            40
        } else {
            0
        };
        let tail: u32 = read_field(skb, cfg.skb_tail).unwrap_or(0);
        let available = if tail > network as u32 { tail - network as u32 } else { copied };
        ev.header_len = if available < copied { available } else { copied } as u16;
    }
}
