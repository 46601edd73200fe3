//! XDP and BPF attach observation (userspace twin: tracer/src/probes/xdp.rs).
//!
//! - `bpf_enter`/`bpf_exit` (`syscalls:sys_enter_bpf`/`sys_exit_bpf`), or
//!   `bpf_syscall_enter`/`bpf_syscall_exit` (kprobe/kretprobe on the `bpf()` syscall wrapper,
//!   which unlike a syscall tracepoint costs nothing to other syscalls): every PROG_LOAD,
//!   BTF_LOAD and LINK_CREATE with its `union bpf_attr` and result, by whom. A loader that
//!   fails to load its object and retries forever (field report 4) shows as a series of these.
//! - `xdp_attach_failed` (`xdp:bpf_xdp_link_attach_failed`, 5.18+): the kernel's reason for
//!   a failed XDP link attach, joined to the thread's pending LINK_CREATE.
//! - `xdp_exception_raw` (raw tracepoint `xdp_exception`: device and program pointers, so
//!   the namespace and names are known) or `xdp_exception_tp` (classic tracepoint: ids only):
//!   XDP_ABORTED and invalid actions, counted in the kernel per device and program, because a
//!   broken program aborts every packet and per-packet events would flood the ring buffer.
//!
//! XDP attaches over netlink (`IFLA_XDP` in RTM_SETLINK) are seen by the links family.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes, bpf_probe_read_user_buf,
        bpf_probe_read_user_str_bytes,
    },
    macros::{kprobe, kretprobe, map, raw_tracepoint, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::{ProbeContext, RawTracePointContext, RetProbeContext, TracePointContext},
};
use tracer_ebpf::{
    BpfEvent, BpfPending, EventKind, XdpConfig, XdpExceptionCount, XdpExceptionKey, ABSENT, BPF_ATTR_BYTES,
    BPF_MESSAGE_BYTES, XDP_REDIRECT_FAILED,
};

use crate::events::{count_lost, fill_header, read_field, submit_flags, EVENTS};

#[no_mangle]
static XDP_CONFIG: XdpConfig = XdpConfig::absent();

/// Commands in flight, per thread, between syscall entry and exit.
#[map(name = "BPF_PENDING")]
static BPF_PENDING: LruHashMap<u32, BpfPending> = LruHashMap::with_max_entries(1024, 0);

/// Scratch space for building a pending command (too big for the 512-byte stack).
#[map(name = "BPF_SCRATCH")]
static BPF_SCRATCH: PerCpuArray<BpfPending> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "XDP_EXCEPTIONS")]
static XDP_EXCEPTIONS: HashMap<XdpExceptionKey, XdpExceptionCount> = HashMap::with_max_entries(1024, 0);

#[inline(always)]
fn config() -> XdpConfig {
    // Volatile: patched at load time (see drops.rs).
    unsafe { core::ptr::read_volatile(&XDP_CONFIG) }
}

#[tracepoint]
pub fn bpf_enter(ctx: TracePointContext) -> u32 {
    let cfg = config();
    if cfg.tp_bpf_cmd == ABSENT {
        return 0;
    }
    let cmd: u64 = unsafe { ctx.read_at(cfg.tp_bpf_cmd as usize) }.unwrap_or(u64::MAX);
    let uattr: u64 = unsafe { ctx.read_at(cfg.tp_bpf_uattr as usize) }.unwrap_or(0);
    let size: u64 = unsafe { ctx.read_at(cfg.tp_bpf_size as usize) }.unwrap_or(0);
    command_start(&cfg, cmd as u32, uattr, size);
    0
}

#[tracepoint]
pub fn bpf_exit(ctx: TracePointContext) -> u32 {
    let cfg = config();
    let ret: i64 = unsafe { ctx.read_at(cfg.tp_bpf_ret as usize) }.unwrap_or(0);
    command_end(&cfg, ret);
    0
}

/// kprobe on the `bpf()` syscall wrapper (`__x64_sys_bpf` …): its argument is the saved
/// user registers, which hold the syscall's arguments.
#[kprobe]
pub fn bpf_syscall_enter(ctx: ProbeContext) -> u32 {
    let cfg = config();
    let Some(regs) = ctx.arg::<u64>(0) else { return 0 };
    let (Some(cmd), Some(uattr), Some(size)) = (
        read_field::<u64>(regs, cfg.regs_arg0),
        read_field::<u64>(regs, cfg.regs_arg1),
        read_field::<u64>(regs, cfg.regs_arg2),
    ) else {
        return 0;
    };
    command_start(&cfg, cmd as u32, uattr, size);
    0
}

#[kretprobe]
pub fn bpf_syscall_exit(ctx: RetProbeContext) -> u32 {
    let ret: i64 = ctx.ret();
    command_end(&config(), ret);
    0
}

/// A `bpf()` command starts: PROG_LOAD, BTF_LOAD and LINK_CREATE are kept with their
/// attributes until the call returns.
#[inline(always)]
fn command_start(cfg: &XdpConfig, cmd: u32, uattr: u64, size: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == cfg.own_tgid {
        return;
    }
    if cmd != cfg.cmd_prog_load && cmd != cfg.cmd_btf_load && cmd != cfg.cmd_link_create {
        return;
    }
    let Some(p) = BPF_SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: per-CPU scratch slot, only this program on this CPU uses it.
    let p = unsafe { &mut *p };
    p.cmd = cmd;
    p.message_len = 0;
    p._pad = 0;
    let src = uattr as *const u8;
    // Fixed-size reads keep the verifier simple; a shorter one when the long one faults.
    let copied = if unsafe { bpf_probe_read_user_buf(src, &mut p.attr) }.is_ok() {
        BPF_ATTR_BYTES as u64
    } else if unsafe { bpf_probe_read_user_buf(src, &mut p.attr[..64]) }.is_ok() {
        64
    } else {
        0
    };
    p.attr_len = if size < copied { size } else { copied } as u32;
    let _ = BPF_PENDING.insert(&(pid_tgid as u32), p, 0);
}

/// A `bpf()` command returned `ret`: the thread's kept command becomes an event.
#[inline(always)]
fn command_end(cfg: &XdpConfig, ret: i64) {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(pending) = (unsafe { BPF_PENDING.get(&tid) }) else { return };
    let Some(mut entry) = EVENTS.reserve::<BpfEvent>(0) else {
        count_lost();
        let _ = BPF_PENDING.remove(&tid);
        return;
    };
    // SAFETY: the entry is `size_of::<BpfEvent>()` bytes we own until submit.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut ev.header, EventKind::BpfCommand);
    crate::links::fill_actor(&crate::links::config(), &mut ev.actor);
    ev.ret = ret;
    ev.cmd = pending.cmd;
    ev.attr_len = pending.attr_len;
    ev.message_len = pending.message_len;
    ev._pad = 0;
    ev.attr = pending.attr;
    ev.message = pending.message;
    if ret < 0 && pending.cmd == cfg.cmd_prog_load && pending.message_len == 0 {
        // The verifier's log, when the loader asked for one (UAPI: log_level@24, log_buf@32).
        let log_level = u32::from_ne_bytes([pending.attr[24], pending.attr[25], pending.attr[26], pending.attr[27]]);
        let log_buf = u64::from_ne_bytes([
            pending.attr[32],
            pending.attr[33],
            pending.attr[34],
            pending.attr[35],
            pending.attr[36],
            pending.attr[37],
            pending.attr[38],
            pending.attr[39],
        ]);
        if log_level != 0 && log_buf != 0 {
            ev.message_len = match unsafe { bpf_probe_read_user_str_bytes(log_buf as *const u8, &mut ev.message) } {
                Ok(text) => text.len() as u32,
                Err(_) => 0,
            };
        }
    }
    entry.submit(submit_flags());
    let _ = BPF_PENDING.remove(&tid);
}

#[tracepoint]
pub fn xdp_attach_failed(ctx: TracePointContext) -> u32 {
    let cfg = config();
    if cfg.tp_attach_failed_msg == ABSENT {
        return 0;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(pending) = BPF_PENDING.get_ptr_mut(&tid) else { return 0 };
    // SAFETY: the map value stays valid while this program runs; only this thread uses it.
    let pending = unsafe { &mut *pending };
    // `__data_loc`: the low 16 bits are the string's offset in the record, the high its length.
    let loc: u32 = unsafe { ctx.read_at(cfg.tp_attach_failed_msg as usize) }.unwrap_or(0);
    let src = (ctx_base(&ctx) + (loc & 0xffff) as u64) as *const u8;
    pending.message_len = match unsafe { bpf_probe_read_kernel_str_bytes(src, &mut pending.message) } {
        Ok(text) => text.len() as u32,
        Err(_) => 0,
    };
    if pending.message_len as usize > BPF_MESSAGE_BYTES {
        pending.message_len = BPF_MESSAGE_BYTES as u32;
    }
    0
}

#[inline(always)]
fn ctx_base(ctx: &TracePointContext) -> u64 {
    use aya_ebpf::EbpfContext;
    ctx.as_ptr() as u64
}

/// `xdp_exception(const struct net_device *dev, const struct bpf_prog *xdp, u32 act)`.
#[raw_tracepoint(tracepoint = "xdp_exception")]
pub fn xdp_exception_raw(ctx: RawTracePointContext) -> u32 {
    let cfg = config();
    let args: [u64; 3] = [ctx.arg(0), ctx.arg(1), ctx.arg(2)];
    let (dev, prog, act) = (args[0], args[1], args[2] as u32);
    let net: u64 = read_field(dev, cfg.dev_net).unwrap_or(0);
    let aux: u64 = read_field(prog, cfg.prog_aux).unwrap_or(0);
    let key = XdpExceptionKey {
        netns: read_field(net, cfg.net_inum).unwrap_or(0),
        ifindex: read_field(dev, cfg.dev_ifindex).unwrap_or(0),
        prog_id: read_field(aux, cfg.aux_id).unwrap_or(0),
        action: act,
    };
    count_exception(&key, dev, aux, &cfg);
    0
}

/// `xdp_redirect_err(dev, xdp, tgt, int err, ...)`: a redirect the program asked for failed
/// (no such device, full queue, map entry missing), so the packet was dropped.
#[raw_tracepoint(tracepoint = "xdp_redirect_err")]
pub fn xdp_redirect_err_raw(ctx: RawTracePointContext) -> u32 {
    let cfg = config();
    let args: [u64; 4] = [ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(3)];
    let (dev, prog, err) = (args[0], args[1], args[3] as i32);
    let net: u64 = read_field(dev, cfg.dev_net).unwrap_or(0);
    let aux: u64 = read_field(prog, cfg.prog_aux).unwrap_or(0);
    let key = XdpExceptionKey {
        netns: read_field(net, cfg.net_inum).unwrap_or(0),
        ifindex: read_field(dev, cfg.dev_ifindex).unwrap_or(0),
        prog_id: read_field(aux, cfg.aux_id).unwrap_or(0),
        action: XDP_REDIRECT_FAILED | (err.unsigned_abs() & 0xffff),
    };
    count_exception(&key, dev, aux, &cfg);
    0
}

/// Classic tracepoint fallback: ids only (no namespace, no names).
#[tracepoint]
pub fn xdp_exception_tp(ctx: TracePointContext) -> u32 {
    let cfg = config();
    let key = XdpExceptionKey {
        netns: 0,
        ifindex: unsafe { ctx.read_at::<i32>(cfg.tp_exc_ifindex as usize) }.unwrap_or(0) as u32,
        prog_id: unsafe { ctx.read_at::<i32>(cfg.tp_exc_prog_id as usize) }.unwrap_or(0) as u32,
        action: unsafe { ctx.read_at::<u32>(cfg.tp_exc_act as usize) }.unwrap_or(0),
    };
    count_exception(&key, 0, 0, &cfg);
    0
}

#[inline(always)]
fn count_exception(key: &XdpExceptionKey, dev: u64, aux: u64, cfg: &XdpConfig) {
    // SAFETY: helper without pointer arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(v) = XDP_EXCEPTIONS.get_ptr_mut(key) {
        // SAFETY: map value valid while the program runs; a lost increment under a race
        // between CPUs only undercounts.
        unsafe {
            (*v).count += 1;
            (*v).last_ns = now;
        }
        return;
    }
    let value = XdpExceptionCount {
        count: 1,
        first_ns: now,
        last_ns: now,
        ifname: read_field(dev, cfg.dev_name).unwrap_or([0; 16]),
        prog_name: read_field(aux, cfg.aux_name).unwrap_or([0; 16]),
    };
    let _ = XDP_EXCEPTIONS.insert(key, &value, 0);
}
