//! Link control plane, tracepoints only (userspace twin: tracer/src/probes/links.rs): the
//! rtnetlink link requests processes send (`sendmsg`/`sendto` syscall tracepoints), the
//! kernel's answers (`NLMSG_ERROR`, read when the same task receives) and its extended-ack
//! messages (`netlink:netlink_extack`), each with the acting task. Userspace parses the
//! messages; offsets come from tracefs and BTF through `LINK_CONFIG`.
//!
//! The sockets backend sees the same requests and answers at the raw tracepoint
//! `sock_send_length` (6.5+), which fires for socket sends only: a syscall tracepoint, once
//! attached, sends every syscall of every process through the slow path (about +90 ns each,
//! measured by `cargo xtask bench`). It fires for every datagram sent on the machine, so it is
//! a raw tracepoint (no trace record is built), its fast path is one probe read of the
//! socket's family, and answers are read from the sender's socket queue rather than at a
//! second hook on every receive (hooking sends and receives cost 5% of 64-byte packets per
//! second, bpftrace's trivial program as much as dptrace's). The syscall's own arguments (the
//! user buffer) come from the task's saved registers.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_task_btf,
        bpf_probe_read_kernel_buf, bpf_probe_read_kernel_str_bytes, bpf_probe_read_user, bpf_probe_read_user_buf,
        bpf_task_pt_regs,
    },
    macros::{kprobe, kretprobe, map, raw_tracepoint, tracepoint},
    maps::{ring_buf::RingBufEntry, HashMap, LruHashMap, PerCpuArray},
    programs::{ProbeContext, RawTracePointContext, RetProbeContext, TracePointContext},
    EbpfContext,
};
use tracer_ebpf::{Actor, EventKind, LinkConfig, NetlinkEvent, ABSENT, NETLINK_BYTES};

use crate::events::{count_lost, fill_header, probe_args, read_field, submit_flags, EVENTS};

#[no_mangle]
static LINK_CONFIG: LinkConfig = LinkConfig::absent();

// Netlink message constants from the user ABI (include/uapi/linux/netlink.h, rtnetlink.h).
const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_SETLINK: u16 = 19;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_HDRLEN: u32 = 16;
const AF_NETLINK: u16 = 16;
const NETLINK_ROUTE: u16 = 0;
/// The module alias rtnetlink asks for when a link kind is missing (net/core/rtnetlink.c).
const RTNL_LINK_PREFIX: &[u8; 10] = b"rtnl-link-";
// Link-changing ioctls (include/uapi/linux/sockios.h) and the size of `struct ifreq` on 64-bit.
const SIOCSIFFLAGS: u32 = 0x8914;
const SIOCSIFNAME: u32 = 0x8923;
const SIOCSIFHWADDR: u32 = 0x8924;
const IFREQ_BYTES: u32 = 40;

/// Threads that sent a link request recently: only their receives are looked at, so
/// ordinary socket traffic costs one map lookup.
#[map(name = "NL_TIDS")]
static NL_TIDS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(4096, 0);

/// kprobes backend: the sequence number of the request a thread's rtnl handler is running.
#[map(name = "RTNL_SEQ")]
static RTNL_SEQ: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

/// sockets backend: the kernel message (slot 1) and module request (slot 0) a thread's
/// request produced, held until the send completes so that they follow the request.
#[map(name = "NL_PENDING")]
static NL_PENDING: LruHashMap<u64, NetlinkEvent> = LruHashMap::with_max_entries(1024, 0);

/// Room to build a held [`NetlinkEvent`]: too big for the stack.
#[map(name = "NL_SCRATCH")]
static NL_SCRATCH: PerCpuArray<NetlinkEvent> = PerCpuArray::with_max_entries(1, 0);

/// Receive buffer of a thread between syscall entry and exit.
#[map(name = "NL_RECV")]
static NL_RECV: HashMap<u32, u64> = HashMap::with_max_entries(4096, 0);

#[inline(always)]
pub fn config() -> LinkConfig {
    // Volatile: patched at load time (see drops.rs).
    unsafe { core::ptr::read_volatile(&LINK_CONFIG) }
}

#[inline(always)]
fn tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

#[inline(always)]
fn uread<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 || offset == ABSENT {
        return None;
    }
    unsafe { bpf_probe_read_user((base + offset as u64) as *const T).ok() }
}

/// The first iovec's base and length of a `struct user_msghdr` in user memory.
#[inline(always)]
fn first_iov(cfg: &LinkConfig, msghdr: u64) -> Option<(u64, u64)> {
    let iov: u64 = uread(msghdr, cfg.msghdr_iov)?;
    Some((uread(iov, cfg.iov_base)?, uread(iov, cfg.iov_len)?))
}

#[inline(always)]
pub fn fill_actor(cfg: &LinkConfig, actor: &mut Actor) {
    let task = unsafe { bpf_get_current_task() };
    let nsproxy: u64 = read_field(task, cfg.task_nsproxy).unwrap_or(0);
    let net: u64 = read_field(nsproxy, cfg.nsproxy_net).unwrap_or(0);
    actor.netns = read_field(net, cfg.net_inum).unwrap_or(0);
    let parent: u64 = read_field(task, cfg.task_parent).unwrap_or(0);
    actor.parent_pid = read_field(parent, cfg.task_tgid).unwrap_or(0);
    actor.parent_comm = read_field(parent, cfg.task_comm).unwrap_or([0; 16]);
    actor.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
}

/// Copies up to [`NETLINK_BYTES`] of user memory; fixed sizes keep the verifier simple, and
/// a shorter read is tried when the long one crosses into an unmapped page.
#[inline(always)]
fn copy_user(src: u64, dst: &mut [u8; NETLINK_BYTES]) -> u32 {
    let src = src as *const u8;
    if unsafe { bpf_probe_read_user_buf(src, dst) }.is_ok() {
        NETLINK_BYTES as u32
    } else if unsafe { bpf_probe_read_user_buf(src, &mut dst[..128]) }.is_ok() {
        128
    } else if unsafe { bpf_probe_read_user_buf(src, &mut dst[..32]) }.is_ok() {
        32
    } else {
        0
    }
}

/// `(nlmsg_len, nlmsg_type, nlmsg_flags)` of the netlink header at `buf`.
#[inline(always)]
fn nl_header(buf: u64) -> Option<(u32, u16, u16)> {
    Some((uread(buf, 0)?, uread(buf, 4)?, uread(buf, 6)?))
}

/// Emits a request event when `buf` holds an rtnetlink link request; returns its sequence
/// number then.
#[inline(always)]
fn maybe_request(cfg: &LinkConfig, buf: u64, len: u64) -> Option<u32> {
    let (nl_len, nl_type, flags) = nl_header(buf)?;
    let is_link_request = matches!(nl_type, RTM_NEWLINK | RTM_DELLINK | RTM_SETLINK)
        && flags & NLM_F_REQUEST != 0
        && nl_len >= NLMSG_HDRLEN
        && (nl_len as u64) <= len;
    if !is_link_request {
        return None;
    }
    let _ = NL_TIDS.insert(&tid(), &1, 0);
    emit(
        cfg,
        EventKind::NetlinkRequest,
        buf,
        if nl_len as usize > NETLINK_BYTES { NETLINK_BYTES as u32 } else { nl_len },
    );
    uread(buf, 8)
}

#[inline(always)]
fn emit(cfg: &LinkConfig, kind: EventKind, user_buf: u64, valid: u32) {
    emit_with(cfg, kind, user_buf, valid, 0);
}

/// Reserves a [`NetlinkEvent`] with its header and actor filled in; counts it as lost when
/// the ring buffer is full.
#[inline(always)]
fn start_event(cfg: &LinkConfig, kind: EventKind, aux: u32) -> Option<RingBufEntry<NetlinkEvent>> {
    let Some(mut entry) = EVENTS.reserve::<NetlinkEvent>(0) else {
        count_lost();
        return None;
    };
    // SAFETY: we own the reserved entry until submit.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut ev.header, kind);
    fill_actor(cfg, &mut ev.actor);
    ev.aux = aux;
    ev.len = 0;
    Some(entry)
}

#[inline(always)]
fn emit_with(cfg: &LinkConfig, kind: EventKind, user_buf: u64, valid: u32, aux: u32) {
    let Some(mut entry) = start_event(cfg, kind, aux) else { return };
    // SAFETY: as in `start_event`.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    let copied = copy_user(user_buf, &mut ev.data);
    ev.len = if valid < copied { valid } else { copied };
    entry.submit(submit_flags());
}

#[tracepoint]
pub fn nl_sendmsg(ctx: TracePointContext) -> u32 {
    let cfg = config();
    let Ok(msghdr) = (unsafe { ctx.read_at::<u64>(cfg.tp_msghdr as usize) }) else { return 0 };
    if let Some((base, len)) = first_iov(&cfg, msghdr) {
        let _ = maybe_request(&cfg, base, len);
    }
    0
}

#[tracepoint]
pub fn nl_sendto(ctx: TracePointContext) -> u32 {
    let cfg = config();
    let buf: u64 = unsafe { ctx.read_at(cfg.tp_sendto_buff as usize) }.unwrap_or(0);
    let len: u64 = unsafe { ctx.read_at(cfg.tp_sendto_len as usize) }.unwrap_or(0);
    let _ = maybe_request(&cfg, buf, len);
    0
}

#[tracepoint]
pub fn nl_recvmsg_enter(ctx: TracePointContext) -> u32 {
    let tid = tid();
    if unsafe { NL_TIDS.get(&tid) }.is_none() {
        return 0;
    }
    let cfg = config();
    let Ok(msghdr) = (unsafe { ctx.read_at::<u64>(cfg.tp_msghdr as usize) }) else { return 0 };
    if let Some((base, _)) = first_iov(&cfg, msghdr) {
        let _ = NL_RECV.insert(&tid, &base, 0);
    }
    0
}

#[tracepoint]
pub fn nl_recvfrom_enter(ctx: TracePointContext) -> u32 {
    let tid = tid();
    if unsafe { NL_TIDS.get(&tid) }.is_none() {
        return 0;
    }
    let cfg = config();
    if let Ok(buf) = unsafe { ctx.read_at::<u64>(cfg.tp_recvfrom_buf as usize) } {
        let _ = NL_RECV.insert(&tid, &buf, 0);
    }
    0
}

/// Shared by `sys_exit_recvmsg` and `sys_exit_recvfrom`.
#[tracepoint]
pub fn nl_recv_exit(ctx: TracePointContext) -> u32 {
    let tid = tid();
    let Some(&buf) = (unsafe { NL_RECV.get(&tid) }) else { return 0 };
    let _ = NL_RECV.remove(&tid);
    let cfg = config();
    let ret: i64 = unsafe { ctx.read_at(cfg.tp_exit_ret as usize) }.unwrap_or(-1);
    // An NLMSG_ERROR carries the error code and the request's own header: 16 + 4 + 16 bytes.
    if ret < (NLMSG_HDRLEN as i64) * 2 + 4 {
        return 0;
    }
    if let Some((_, NLMSG_ERROR, _)) = nl_header(buf) {
        emit(
            &cfg,
            EventKind::NetlinkAck,
            buf,
            if ret as usize > NETLINK_BYTES { NETLINK_BYTES as u32 } else { ret as u32 },
        );
    }
    0
}

#[tracepoint]
pub fn nl_extack(ctx: TracePointContext) -> u32 {
    let cfg = config();
    emit_string(&ctx, &cfg, EventKind::NetlinkExtack, cfg.tp_extack_msg);
    0
}

/// Module autoload: `rtnl-link-wireguard` requested while creating a wireguard link.
#[tracepoint]
pub fn module_request(ctx: TracePointContext) -> u32 {
    let cfg = config();
    emit_string(&ctx, &cfg, EventKind::ModuleRequest, cfg.tp_module_request_name);
    0
}

#[tracepoint]
pub fn module_load(ctx: TracePointContext) -> u32 {
    let cfg = config();
    emit_string(&ctx, &cfg, EventKind::ModuleLoad, cfg.tp_module_load_name);
    0
}

/// Emits the `__data_loc` string at `field` of the tracepoint record.
#[inline(always)]
fn emit_string(ctx: &TracePointContext, cfg: &LinkConfig, kind: EventKind, field: u32) {
    if field == ABSENT {
        return;
    }
    // `__data_loc`: the low 16 bits are the string's offset in the record, the high its length.
    let Ok(loc) = (unsafe { ctx.read_at::<u32>(field as usize) }) else { return };
    let src = (ctx.as_ptr() as u64 + (loc & 0xffff) as u64) as *const u8;
    let slot = match kind {
        EventKind::ModuleRequest => 0,
        EventKind::NetlinkExtack => 1,
        _ => 2,
    };
    if cfg.defer_messages != 0 && slot < 2 {
        let Some(ev) = NL_SCRATCH.get_ptr_mut(0) else { return };
        // SAFETY: per-CPU scratch, only this program run uses it.
        let ev = unsafe { &mut *ev };
        fill_header(&mut ev.header, kind);
        fill_actor(cfg, &mut ev.actor);
        ev.aux = 0;
        ev.len = match unsafe { bpf_probe_read_kernel_str_bytes(src, &mut ev.data) } {
            Ok(text) => text.len() as u32,
            Err(_) => 0,
        };
        // Only link creation's autoloads (`rtnl-link-KIND`) happen inside a netlink send;
        // other module requests (sockets, filesystems) would wait for one forever.
        if slot == 1 || ev.data[..RTNL_LINK_PREFIX.len()] == *RTNL_LINK_PREFIX {
            let _ = NL_PENDING.insert(&((tid() as u64) << 1 | slot), ev, 0);
        } else if EVENTS.output::<NetlinkEvent>(ev, submit_flags()).is_err() {
            count_lost();
        }
        return;
    }
    let Some(mut entry) = start_event(cfg, kind, 0) else { return };
    // SAFETY: as in `start_event`.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.len = match unsafe { bpf_probe_read_kernel_str_bytes(src, &mut ev.data) } {
        Ok(text) => text.len() as u32,
        Err(_) => 0,
    };
    entry.submit(submit_flags());
}

/// sockets backend: the current syscall's number and its second and third arguments, from
/// the registers saved at syscall entry.
#[inline(always)]
fn syscall_args(cfg: &LinkConfig) -> Option<(u32, u64, u64)> {
    // SAFETY: helpers without preconditions; the result is only read through probe reads.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    Some((read_field(regs, cfg.regs_nr)?, read_field(regs, cfg.regs_arg1)?, read_field(regs, cfg.regs_arg2)?))
}

/// The socket's family and protocol, from `struct sock` (the raw tracepoints' first argument).
/// The family is read first and alone: almost every call is for another family.
#[inline(always)]
fn netlink_route(sk: u64) -> Option<bool> {
    // SAFETY: a single field of a patched-at-load global; volatile so the constant is not folded.
    let family: u16 = read_field(sk, unsafe { core::ptr::read_volatile(core::ptr::addr_of!(LINK_CONFIG.sk_family)) })?;
    if family != AF_NETLINK {
        return None;
    }
    let protocol: u16 =
        read_field(sk, unsafe { core::ptr::read_volatile(core::ptr::addr_of!(LINK_CONFIG.sk_protocol)) })?;
    Some(protocol == NETLINK_ROUTE)
}

/// sockets backend: `sock_send_length(struct sock *sk, int ret, int flags)` (the prototype is
/// checked against BTF before attaching): a netlink send completed. A link request is emitted
/// now, followed by the messages its processing produced (held in `NL_PENDING`), then its
/// answer: rtnetlink processes a request inside the send, so the `NLMSG_ERROR` it answers
/// with is already queued on the sender's socket. Reading it there spares a hook on every
/// socket receive of the machine.
#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn nl_sock_send(ctx: RawTracePointContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    let Some(route) = netlink_route(sk) else { return 0 };
    let cfg = config();
    let mut request_seq = None;
    if route {
        if let Some((nr, arg1, arg2)) = syscall_args(&cfg) {
            if nr == cfg.sys_sendmsg {
                if let Some((base, len)) = first_iov(&cfg, arg1) {
                    request_seq = maybe_request(&cfg, base, len);
                }
            } else if nr == cfg.sys_sendto || nr == cfg.sys_write {
                request_seq = maybe_request(&cfg, arg1, arg2);
            }
        }
    }
    let tid = tid() as u64;
    for slot in 0..2u64 {
        let key = tid << 1 | slot;
        if let Some(held) = unsafe { NL_PENDING.get(&key) } {
            if EVENTS.output::<NetlinkEvent>(held, submit_flags()).is_err() {
                count_lost();
            }
            let _ = NL_PENDING.remove(&key);
        }
    }
    if let Some(seq) = request_seq {
        queued_answer(&cfg, sk, seq);
    }
    0
}

/// Emits the answer to request `seq` when it is the newest message queued on socket `sk`: an
/// `NLMSG_ERROR` (error 0 is the ack) with the request's sequence number.
#[inline(always)]
fn queued_answer(cfg: &LinkConfig, sk: u64, seq: u32) {
    let Some(newest) = read_field::<u64>(sk, cfg.sk_queue_prev) else { return };
    // An empty queue's head points at itself.
    if newest == sk + cfg.sk_queue as u64 {
        return;
    }
    let Some(data) = read_field::<u64>(newest, cfg.skb_data) else { return };
    // nlmsghdr: len, type (u16 at 4), flags, seq (u32 at 8), pid; then the error (i32 at 16).
    let (Some(kind), Some(answer_seq), Some(error)) =
        (read_field::<u16>(data, 4), read_field::<u32>(data, 8), read_field::<i32>(data, 16))
    else {
        return;
    };
    if kind != NLMSG_ERROR || answer_seq != seq {
        return;
    }
    let Some(mut entry) = start_event(cfg, EventKind::RtnlResult, 0) else { return };
    // SAFETY: as in `start_event`.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.data[..4].copy_from_slice(&seq.to_ne_bytes());
    ev.data[4..8].copy_from_slice(&error.to_ne_bytes());
    ev.len = 8;
    entry.submit(submit_flags());
}

/// Link changes made with the old ioctls (ifconfig, some agents): MAC, flags (up/down), name.
#[tracepoint]
pub fn link_ioctl(ctx: TracePointContext) -> u32 {
    let cfg = config();
    if cfg.tp_ioctl_cmd == ABSENT {
        return 0;
    }
    let Ok(cmd) = (unsafe { ctx.read_at::<u64>(cfg.tp_ioctl_cmd as usize) }) else { return 0 };
    let cmd = cmd as u32;
    if cmd != SIOCSIFHWADDR && cmd != SIOCSIFFLAGS && cmd != SIOCSIFNAME {
        return 0;
    }
    let Ok(arg) = (unsafe { ctx.read_at::<u64>(cfg.tp_ioctl_arg as usize) }) else { return 0 };
    emit_with(&cfg, EventKind::IoctlRequest, arg, IFREQ_BYTES, cmd);
    0
}

/// kprobes backend (kernels without syscall tracepoints, or forced): the request as the
/// rtnetlink handler receives it, whatever syscall carried it (sendmsg, write, io_uring).
#[kprobe]
pub fn rtnl_request(ctx: ProbeContext) -> u32 {
    let cfg = config();
    let args = probe_args(&ctx);
    let nlh = match cfg.arg_nlh {
        0 => args[0],
        1 => args[1],
        2 => args[2],
        _ => 0,
    };
    let (Some(len), Some(seq)) = (read_field::<u32>(nlh, 0), read_field::<u32>(nlh, 8)) else { return 0 };
    let _ = RTNL_SEQ.insert(&tid(), &seq, 0);
    let Some(mut entry) = start_event(&cfg, EventKind::NetlinkRequest, 0) else { return 0 };
    // SAFETY: as in `start_event`.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    let src = nlh as *const u8;
    let copied: u32 = if unsafe { bpf_probe_read_kernel_buf(src, &mut ev.data) }.is_ok() {
        NETLINK_BYTES as u32
    } else if unsafe { bpf_probe_read_kernel_buf(src, &mut ev.data[..128]) }.is_ok() {
        128
    } else {
        0
    };
    ev.len = if len < copied { len } else { copied };
    entry.submit(submit_flags());
    0
}

#[kretprobe]
pub fn rtnl_result(ctx: RetProbeContext) -> u32 {
    let tid = tid();
    let Some(&seq) = (unsafe { RTNL_SEQ.get(&tid) }) else { return 0 };
    let _ = RTNL_SEQ.remove(&tid);
    let ret: i64 = ctx.ret();
    let cfg = config();
    let Some(mut entry) = start_event(&cfg, EventKind::RtnlResult, 0) else { return 0 };
    // SAFETY: as in `start_event`.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.data[..4].copy_from_slice(&seq.to_ne_bytes());
    ev.data[4..8].copy_from_slice(&(ret as i32).to_ne_bytes());
    ev.len = 8;
    entry.submit(submit_flags());
    0
}
