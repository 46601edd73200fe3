//! Drop monitoring on the `skb:kfree_skb` tracepoint (userspace twin: tracer/src/probes/drops.rs).
//!
//! Every offset used here arrives in `DROP_CONFIG`, filled by userspace from the tracefs
//! format file and BTF, so one object file works across kernel versions.

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_buf},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_ebpf::{DropConfig, DropEvent, EventKind, ABSENT, HEADER_BYTES};

use crate::events::{count_lost, fill_header, EVENTS};

#[no_mangle]
static DROP_CONFIG: DropConfig = DropConfig::absent();

/// The kernel's marker for "header offset not set" (`(u16)~0U` in skbuff.h).
const UNSET_HEADER: u16 = u16::MAX;

#[tracepoint]
pub fn kfree_skb(ctx: TracePointContext) -> u32 {
    let _ = record_drop(&ctx);
    0
}

#[inline(always)]
fn config() -> DropConfig {
    // Volatile: the value is patched into the object at load time; the compiler must
    // not fold the compile-time `absent()` placeholder.
    unsafe { core::ptr::read_volatile(&DROP_CONFIG) }
}

/// Reads a `T` at `base + offset` from kernel memory; `None` when the field is absent.
#[inline(always)]
fn read_field<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 || offset == ABSENT {
        return None;
    }
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T).ok() }
}

fn record_drop(ctx: &TracePointContext) -> Result<(), i64> {
    let cfg = config();
    let reason: u32 =
        if cfg.tp_reason == ABSENT { ABSENT } else { unsafe { ctx.read_at::<u32>(cfg.tp_reason as usize)? } };
    if reason != ABSENT && (reason == cfg.reason_consumed || reason == cfg.reason_not_dropped) {
        return Ok(());
    }
    let skb: u64 = unsafe { ctx.read_at(cfg.tp_skbaddr as usize)? };
    let location: u64 = unsafe { ctx.read_at(cfg.tp_location as usize)? };
    let protocol: u16 = unsafe { ctx.read_at(cfg.tp_protocol as usize)? };

    let Some(mut entry) = EVENTS.reserve::<DropEvent>(0) else {
        count_lost();
        return Ok(());
    };
    // SAFETY: the entry is `size_of::<DropEvent>()` bytes of ring buffer we own until submit.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut ev.header, EventKind::Drop);
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
    entry.submit(0);
    Ok(())
}
