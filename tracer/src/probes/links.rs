//! Link control plane (kernel side: tracer-ebpf/src/links.rs): rtnetlink link requests
//! seen at the syscall tracepoints, the kernel's acks and extended-ack messages. Works
//! where there are no kprobes; fills `LINK_CONFIG` from tracefs formats and BTF.

use aya::{
    programs::{KProbe, RawTracePoint, TracePoint},
    Ebpf,
};
use serde::Serialize;
use tracer_ebpf::{names, LinkConfig, ABSENT};

use super::{error_chain, program};
use crate::kernel::{btf::KernelBtf, kallsyms::Kallsyms, tracefs::Tracefs, KernelFacts};

/// How link requests are observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkBackend {
    /// Raw tracepoint `sock_send_length` (6.5+, BTF): fires for socket sends only, so other
    /// syscalls pay nothing, and builds no trace record (it runs for every datagram); the request is read from the user buffer the syscall's saved registers point
    /// to, the answer from the sender's socket queue. No ioctls.
    Sockets,
    /// Syscall tracepoints (sendmsg/sendto and the receives of the answer): stable fields.
    Tracepoints,
    /// The same without `netlink:netlink_extack`, as kernels before 4.16.
    TracepointsNoExtack,
    /// kprobe/kretprobe on rtnl_newlink/setlink/dellink: run for link requests only, however
    /// they were sent (io_uring, 32-bit callers too); requests refused before the handler
    /// (permission, parse errors) are not seen.
    Kprobes,
}

impl LinkBackend {
    pub fn name(self) -> &'static str {
        match self {
            LinkBackend::Sockets => "sockets",
            LinkBackend::Tracepoints => "tracepoints",
            LinkBackend::TracepointsNoExtack => "tracepoints-noextack",
            LinkBackend::Kprobes => "kprobes",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [LinkBackend::Sockets, LinkBackend::Tracepoints, LinkBackend::TracepointsNoExtack, LinkBackend::Kprobes]
            .into_iter()
            .find(|b| b.name() == name)
    }

    /// Best first. kprobes on the rtnl handlers run for link requests only; the sockets
    /// backend's hook runs for every socket send on the machine (about 100 ns each, a few
    /// percent of small-packet rates, `bench/README.md`), so it serves kernels without
    /// kprobes. Syscall tracepoints come last although they have stable fields: while one is
    /// attached, every syscall of every process takes the slow path (+90 ns each).
    pub const CHAIN: [LinkBackend; 3] = [LinkBackend::Kprobes, LinkBackend::Sockets, LinkBackend::Tracepoints];

    /// Whether this backend attaches syscall tracepoints (and so taxes every syscall).
    pub fn uses_syscall_tracepoints(self) -> bool {
        matches!(self, LinkBackend::Tracepoints | LinkBackend::TracepointsNoExtack)
    }
}

/// The rtnetlink handlers the kprobes backend hooks.
const RTNL_HANDLERS: [&str; 3] = ["rtnl_newlink", "rtnl_setlink", "rtnl_dellink"];

/// What the links family sees on this kernel.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LinkCoverage {
    pub requests: bool,
    pub acks: bool,
    pub extack_messages: bool,
    /// SIOCSIFHWADDR / SIOCSIFFLAGS / SIOCSIFNAME requests.
    pub ioctls: bool,
    /// Module autoload requests and loads (kernels with loadable modules).
    pub modules: bool,
    pub actor_netns_and_parent: bool,
    pub gaps: Vec<String>,
}

/// The sockets backend's raw tracepoints, and the prototype (after the tracepoint's own
/// `void *`) its programs are written for.
const SOCKET_EVENTS: [&str; 1] = ["sock_send_length"];
const SOCKET_PROGRAMS: [&str; 1] = [names::PROG_SOCK_SEND];
const SOCKET_EVENT_PARAMS: [&str; 3] = ["struct sock *", "int", "int"];

/// The tracepoints the programs attach to: (program, category, event).
const ATTACHMENTS: [(&str, &str, &str); 10] = [
    (names::PROG_SENDMSG, "syscalls", "sys_enter_sendmsg"),
    (names::PROG_SENDTO, "syscalls", "sys_enter_sendto"),
    (names::PROG_RECVMSG_ENTER, "syscalls", "sys_enter_recvmsg"),
    (names::PROG_RECVFROM_ENTER, "syscalls", "sys_enter_recvfrom"),
    (names::PROG_RECV_EXIT, "syscalls", "sys_exit_recvmsg"),
    (names::PROG_RECV_EXIT, "syscalls", "sys_exit_recvfrom"),
    (names::PROG_EXTACK, "netlink", "netlink_extack"),
    (names::PROG_IOCTL, "syscalls", "sys_enter_ioctl"),
    (names::PROG_MODULE_REQUEST, "module", "module_request"),
    (names::PROG_MODULE_LOAD, "module", "module_load"),
];

/// Offsets for this kernel. Missing pieces disable what needs them and are listed as gaps.
/// Configuration for `backend` (tracepoint offsets are filled in any case: extack, ioctl and
/// module events come from tracepoints with every backend).
pub fn link_config(facts: &KernelFacts, backend: LinkBackend) -> (LinkConfig, LinkCoverage) {
    let without_extack = backend == LinkBackend::TracepointsNoExtack;
    let mut cfg = LinkConfig::absent();
    let mut cov = LinkCoverage::default();
    let field = |tracefs: &Tracefs, event: (&str, &str), name: &str, cov: &mut LinkCoverage| -> u32 {
        match tracefs.format(event.0, event.1) {
            Ok(f) => f.field(name).map(|f| f.offset).unwrap_or_else(|| {
                cov.gaps.push(format!("{}:{} has no `{name}` field", event.0, event.1));
                ABSENT
            }),
            Err(e) => {
                cov.gaps.push(e.to_string());
                ABSENT
            }
        }
    };
    let tracefs = &facts.tracefs;
    cfg.tp_msghdr = field(tracefs, ("syscalls", "sys_enter_sendmsg"), "msg", &mut cov);
    cfg.tp_sendto_buff = field(tracefs, ("syscalls", "sys_enter_sendto"), "buff", &mut cov);
    cfg.tp_sendto_len = field(tracefs, ("syscalls", "sys_enter_sendto"), "len", &mut cov);
    cfg.tp_recvfrom_buf = field(tracefs, ("syscalls", "sys_enter_recvfrom"), "ubuf", &mut cov);
    cfg.tp_exit_ret = field(tracefs, ("syscalls", "sys_exit_recvmsg"), "ret", &mut cov);
    if backend.uses_syscall_tracepoints() {
        cfg.tp_ioctl_cmd = field(tracefs, ("syscalls", "sys_enter_ioctl"), "cmd", &mut cov);
        cfg.tp_ioctl_arg = field(tracefs, ("syscalls", "sys_enter_ioctl"), "arg", &mut cov);
        cov.ioctls = cfg.tp_ioctl_cmd != ABSENT && cfg.tp_ioctl_arg != ABSENT;
    } else {
        cov.gaps.push(format!(
            "ioctl link changes (ifconfig): not attributed to a process with the {} backend (the changes \
             still show as link states); --backend links=tracepoints sees them at the price of slowing \
             every syscall",
            backend.name()
        ));
    }
    match backend {
        LinkBackend::Sockets => {
            sockets_config(facts, &mut cfg, &mut cov);
            cov.requests = cfg.defer_messages != 0;
            cov.acks = cov.requests;
        }
        _ => {
            cov.requests = cfg.tp_msghdr != ABSENT && cfg.tp_sendto_buff != ABSENT;
            cov.acks = cov.requests && cfg.tp_exit_ret != ABSENT && cfg.tp_recvfrom_buf != ABSENT;
        }
    }
    if without_extack {
        cov.gaps.push(
            "kernel messages: left out (--backend links=tracepoints-noextack emulates kernels before 4.16)".into(),
        );
    } else if tracefs.has_event("netlink", "netlink_extack") {
        cfg.tp_extack_msg = field(tracefs, ("netlink", "netlink_extack"), "msg", &mut cov);
        cov.extack_messages = cfg.tp_extack_msg != ABSENT;
    } else {
        cov.gaps.push("kernel messages: no netlink:netlink_extack tracepoint (added in 4.16)".into());
    }
    if tracefs.has_event("module", "module_request") && tracefs.has_event("module", "module_load") {
        cfg.tp_module_request_name = field(tracefs, ("module", "module_request"), "name", &mut cov);
        cfg.tp_module_load_name = field(tracefs, ("module", "module_load"), "name", &mut cov);
        cov.modules = cfg.tp_module_request_name != ABSENT && cfg.tp_module_load_name != ABSENT;
    } else {
        cov.gaps.push("module autoload: no module:* tracepoints (kernel without loadable modules)".into());
    }
    fill_user_abi(facts.btf.as_ref(), &mut cfg);
    // kprobes backend: where the nlmsghdr is among the handler's arguments (BTF), else the
    // upstream signature `(struct sk_buff *skb, struct nlmsghdr *nlh, struct netlink_ext_ack *)`.
    let params = facts.btf.as_ref().and_then(|b| b.function_params("rtnl_newlink"));
    cfg.arg_nlh = params.and_then(|p| p.iter().position(|n| n == "nlh")).map_or(1, |i| i as u32);
    match &facts.btf {
        Some(btf) => {
            let mut member = |strct: &str, path: &str| {
                btf.member(strct, path).map(|m| m.offset).unwrap_or_else(|e| {
                    cov.gaps.push(e.to_string());
                    ABSENT
                })
            };
            cfg.task_nsproxy = member("task_struct", "nsproxy");
            cfg.nsproxy_net = member("nsproxy", "net_ns");
            cfg.net_inum = member("net", "ns.inum");
            cfg.task_parent = member("task_struct", "real_parent");
            cfg.task_tgid = member("task_struct", "tgid");
            cfg.task_comm = member("task_struct", "comm");
            cov.actor_netns_and_parent = cfg.task_nsproxy != ABSENT && cfg.task_parent != ABSENT;
        }
        None => cov.gaps.push("actor's netns and parent: no kernel BTF".into()),
    }
    (cfg, cov)
}

/// The sockets backend's offsets: the raw tracepoints' prototypes and `struct sock`'s family
/// and protocol (BTF), where the saved registers keep the syscall number and arguments (BTF),
/// and this architecture's syscall numbers. Sets `defer_messages` only when everything is
/// there.
fn sockets_config(facts: &KernelFacts, cfg: &mut LinkConfig, cov: &mut LinkCoverage) {
    let Some(btf) = facts.btf.as_ref() else {
        cov.gaps.push("sockets backend: needs kernel BTF (for struct sock and the saved registers)".into());
        return;
    };
    // The programs read `sk`, `ret` and `flags` as raw tracepoint arguments 0, 1 and 2.
    for event in SOCKET_EVENTS {
        match btf.raw_tracepoint_params(event) {
            Some(params) if params == SOCKET_EVENT_PARAMS => {}
            Some(params) => {
                cov.gaps.push(format!(
                    "sockets backend: raw tracepoint {event} takes ({}), not ({}) as this dptrace expects",
                    params.join(", "),
                    SOCKET_EVENT_PARAMS.join(", ")
                ));
                return;
            }
            None => {
                cov.gaps.push(format!(
                    "sockets backend: no {event} tracepoint in BTF (the sock:sock_*_length tracepoints came in 6.5)"
                ));
                return;
            }
        }
    }
    let sixteen_bits = |path: &str| match btf.member("sock", path) {
        Ok(m) if m.size == 2 => Ok(m.offset),
        Ok(m) => Err(format!("struct sock.{path} is {} bytes, not 2", m.size)),
        Err(e) => Err(e.to_string()),
    };
    let (family, protocol) = match (sixteen_bits("__sk_common.skc_family"), sixteen_bits("sk_protocol")) {
        (Ok(f), Ok(p)) => (f, p),
        (Err(e), _) | (_, Err(e)) => {
            cov.gaps.push(format!("sockets backend: {e}"));
            return;
        }
    };
    // Answers are read from the sender's receive queue: its head (the newest message is its
    // `prev`) and the message's data.
    let member = |strct: &str, path: &str| btf.member(strct, path).map(|m| m.offset);
    let queue =
        (member("sock", "sk_receive_queue"), member("sock", "sk_receive_queue.prev"), member("sk_buff", "data"));
    let (sk_queue, sk_queue_prev, skb_data) = match queue {
        (Ok(head), Ok(prev), Ok(data)) => (head, prev, data),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            cov.gaps.push(format!("sockets backend: {e}"));
            return;
        }
    };
    let Some(regs) = syscall_registers(btf) else {
        cov.gaps.push(format!(
            "sockets backend: where struct pt_regs keeps syscall arguments is not known for {}",
            std::env::consts::ARCH
        ));
        return;
    };
    [cfg.sk_family, cfg.sk_protocol] = [family, protocol];
    [cfg.sk_queue, cfg.sk_queue_prev, cfg.skb_data] = [sk_queue, sk_queue_prev, skb_data];
    [cfg.regs_nr, cfg.regs_arg1, cfg.regs_arg2] = regs;
    // UAPI syscall numbers of the architecture dptrace was built for (the kernel's own).
    cfg.sys_sendmsg = libc::SYS_sendmsg as u32;
    cfg.sys_sendto = libc::SYS_sendto as u32;
    cfg.sys_write = libc::SYS_write as u32;
    cfg.defer_messages = 1;
}

/// Offsets in `struct pt_regs` of the syscall number and the second and third arguments.
fn syscall_registers(btf: &KernelBtf) -> Option<[u32; 3]> {
    let member = |name: &str| btf.member("pt_regs", name).ok().map(|m| m.offset);
    match std::env::consts::ARCH {
        "x86_64" => Some([member("orig_ax")?, member("si")?, member("dx")?]),
        // arm64: x0 is overwritten by the return value; arguments 1 and 2 stay in regs[].
        "aarch64" => {
            let regs = member("regs")?;
            Some([member("syscallno")?, regs + 8, regs + 16])
        }
        _ => None,
    }
}

/// `struct user_msghdr` and `struct iovec` are user ABI; BTF confirms their layout where it
/// exists, otherwise the 64-bit ABI applies (msg_iov after msg_name and msg_namelen).
fn fill_user_abi(btf: Option<&KernelBtf>, cfg: &mut LinkConfig) {
    let from_btf = |strct: &str, member: &str| btf.and_then(|b| b.member(strct, member).ok()).map(|m| m.offset);
    let ptr = std::mem::size_of::<usize>() as u32;
    cfg.msghdr_iov = from_btf("user_msghdr", "msg_iov").unwrap_or(2 * ptr);
    cfg.iov_base = from_btf("iovec", "iov_base").unwrap_or(0);
    cfg.iov_len = from_btf("iovec", "iov_len").unwrap_or(ptr);
}

/// Whether this kernel has what `backend` needs, before loading anything: the chain takes
/// the first such backend (the link configuration is fixed at load time).
pub fn available(facts: &KernelFacts, backend: LinkBackend) -> bool {
    match backend {
        LinkBackend::Kprobes => {
            std::path::Path::new(super::KPROBE_PMU).exists()
                && RTNL_HANDLERS.iter().any(|h| facts.kallsyms.range(h).is_some())
        }
        _ => link_config(facts, backend).1.requests,
    }
}

/// Loads and attaches the programs; `Err` says why the backend is unavailable.
pub fn attach(
    ebpf: &mut Ebpf,
    coverage: &LinkCoverage,
    backend: LinkBackend,
    kallsyms: &Kallsyms,
) -> Result<String, String> {
    let mut attached = Vec::new();
    if backend == LinkBackend::Kprobes {
        if !std::path::Path::new(super::KPROBE_PMU).exists() {
            return Err(format!("this kernel has no kprobes (no {})", super::KPROBE_PMU));
        }
        let handlers: Vec<&str> = RTNL_HANDLERS.into_iter().filter(|h| kallsyms.range(h).is_some()).collect();
        if handlers.is_empty() {
            return Err(format!("none of {} is in /proc/kallsyms", RTNL_HANDLERS.join(", ")));
        }
        for (prog, kind) in [(names::PROG_RTNL_REQUEST, "kprobe"), (names::PROG_RTNL_RESULT, "kretprobe")] {
            let program: &mut KProbe = program(ebpf, prog)?;
            program.load().map_err(|e| format!("{prog}: {}", error_chain(&e)))?;
            for handler in &handlers {
                program.attach(handler, 0).map_err(|e| format!("{kind} on {handler}: {}", error_chain(&e)))?;
            }
        }
        attached.push(format!("kprobes {}", handlers.join(" ")));
    } else if backend == LinkBackend::Sockets && coverage.requests {
        for (prog, event) in SOCKET_PROGRAMS.into_iter().zip(SOCKET_EVENTS) {
            let program: &mut RawTracePoint = program(ebpf, prog)?;
            program.load().map_err(|e| format!("{prog}: {}", error_chain(&e)))?;
            program.attach(event).map_err(|e| format!("raw tracepoint {event}: {}", error_chain(&e)))?;
        }
        attached.push(format!("raw tracepoints {}", SOCKET_EVENTS.join(" ")));
    } else if !coverage.requests {
        let what = match backend {
            LinkBackend::Sockets => "no sock_send_length raw tracepoint to read requests at",
            _ => "no syscall tracepoints for sendmsg/sendto",
        };
        return Err(format!("{what}: {}", coverage.gaps.join("; ")));
    }
    for (prog, category, event) in ATTACHMENTS {
        let syscall_capture = matches!(
            event,
            "sys_enter_sendmsg"
                | "sys_enter_sendto"
                | "sys_enter_recvmsg"
                | "sys_enter_recvfrom"
                | "sys_exit_recvmsg"
                | "sys_exit_recvfrom"
        );
        if syscall_capture && !backend.uses_syscall_tracepoints() {
            continue;
        }
        let wanted = match event {
            "netlink_extack" => coverage.extack_messages,
            "sys_enter_ioctl" => coverage.ioctls,
            "module_request" | "module_load" => coverage.modules,
            _ => true,
        };
        if !wanted {
            continue;
        }
        let program: &mut TracePoint = program(ebpf, prog)?;
        if program.fd().is_err() {
            program.load().map_err(|e| format!("{prog}: {}", error_chain(&e)))?;
        }
        program.attach(category, event).map_err(|e| format!("{category}:{event}: {}", error_chain(&e)))?;
        attached.push(event.to_string());
    }
    Ok(attached.join(" "))
}
