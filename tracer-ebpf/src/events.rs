//! The ring buffer every hook family writes to, the lost-event counter, and the
//! fields every event shares.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use tracer_ebpf::{EventHeader, EventKind};

/// Default size; userspace resizes it at load time (`--buffer-size`).
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Index 0: events that did not fit in `EVENTS`. Per-CPU so counting never contends.
#[map(name = "LOST")]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Bytes waiting in `EVENTS` at which a record wakes userspace up; below that, userspace's
/// periodic drain collects the records. Each wake-up costs the producing CPU (often a
/// packet's softirq) a self-interrupt (a VM exit in a guest), so at high rates one per record
/// is the largest part of dptrace's kernel-side cost. Set at load time; 0 wakes on every
/// record.
#[no_mangle]
static WAKEUP_BYTES: u64 = 0;

/// `bpf_ringbuf_submit` flags (UAPI).
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// The largest record in `EVENTS`, with the ring buffer's 8-byte record header.
const LARGEST_RECORD: u64 = {
    use core::mem::size_of;
    let sizes = [
        size_of::<tracer_ebpf::DropEvent>(),
        size_of::<tracer_ebpf::NetlinkEvent>(),
        size_of::<tracer_ebpf::AnswerEvent>(),
        size_of::<tracer_ebpf::BpfEvent>(),
        size_of::<tracer_ebpf::PathEvent>(),
        size_of::<tracer_ebpf::TraceRecordEvent>(),
        size_of::<tracer_ebpf::VerdictEvent>(),
    ];
    let (mut i, mut largest) = (0, 0);
    while i < sizes.len() {
        if sizes[i] > largest {
            largest = sizes[i];
        }
        i += 1;
    }
    (largest + 8) as u64
};

/// Wakes userspace only for the records that take the waiting data across [`WAKEUP_BYTES`],
/// or across twice or four times that (the waiting data then lies within one record of the
/// mark). Records in between do not: userspace is already awake and draining, or its
/// periodic drain collects them. Waking on every record past the threshold, as before, made
/// a backlog cost each record a self-interrupt: 9% of the CPU time of a 460,000 drops/s
/// flood (`perf`, 2-CPU guest). The later marks are second chances for a crossing that
/// concurrent producers hid from each other.
#[inline(always)]
pub fn submit_flags() -> u64 {
    // Volatile: patched at load time (see drops.rs).
    let threshold = unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) };
    if threshold == 0 {
        return 0;
    }
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA);
    let near = |mark: u64| waiting >= mark && waiting < mark + LARGEST_RECORD;
    if near(threshold) || near(threshold * 2) || near(threshold * 4) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

#[inline(always)]
pub fn count_lost() {
    if let Some(slot) = LOST.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub fn fill_header(header: &mut EventHeader, kind: EventKind) {
    let pid_tgid = bpf_get_current_pid_tgid();
    header.kind = kind as u16;
    header._pad = 0;
    // SAFETY: plain helper calls without pointer arguments.
    header.cpu = unsafe { bpf_get_smp_processor_id() };
    header.ts_ns = unsafe { bpf_ktime_get_ns() };
    header.pid = (pid_tgid >> 32) as u32;
    header.tid = pid_tgid as u32;
    header.comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

/// The first three arguments of a kprobed function. A separate (not inlined) function keeps
/// each register read at a constant offset from the context: inlined into a larger program,
/// the compiler may share an address computation between reads, and the verifier rejects
/// any access through a modified context pointer.
#[inline(never)]
pub fn probe_args(ctx: &aya_ebpf::programs::ProbeContext) -> [u64; 3] {
    [ctx.arg(0).unwrap_or(0), ctx.arg(1).unwrap_or(0), ctx.arg(2).unwrap_or(0)]
}

/// Reads a `T` at `base + offset` from kernel memory; `None` when the base is null or the
/// field is [`tracer_ebpf::ABSENT`] on this kernel.
#[inline(always)]
pub fn read_field<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 || offset == tracer_ebpf::ABSENT {
        return None;
    }
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel((base + offset as u64) as *const T).ok() }
}
