//! Link control plane (kernel side: tracer-ebpf/src/links.rs): rtnetlink link requests
//! seen at the syscall tracepoints, the kernel's acks and extended-ack messages. Works
//! where there are no kprobes; fills `LINK_CONFIG` from tracefs formats and BTF.

use aya::{
    programs::{KProbe, TracePoint},
    Ebpf,
};
use serde::Serialize;
use tracer_ebpf::{names, LinkConfig, ABSENT};

use super::{error_chain, program};
use crate::kernel::{btf::KernelBtf, kallsyms::Kallsyms, tracefs::Tracefs, KernelFacts};

/// How link requests are observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkBackend {
    /// Syscall tracepoints (sendmsg/sendto and the receives of the answer): stable fields.
    Tracepoints,
    /// The same without `netlink:netlink_extack`, as kernels before 4.16.
    TracepointsNoExtack,
    /// kprobe/kretprobe on rtnl_newlink/setlink/dellink: for kernels without syscall
    /// tracepoints (CONFIG_FTRACE_SYSCALLS off); sees requests however they were sent.
    Kprobes,
}

impl LinkBackend {
    pub fn name(self) -> &'static str {
        match self {
            LinkBackend::Tracepoints => "tracepoints",
            LinkBackend::TracepointsNoExtack => "tracepoints-noextack",
            LinkBackend::Kprobes => "kprobes",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [LinkBackend::Tracepoints, LinkBackend::TracepointsNoExtack, LinkBackend::Kprobes]
            .into_iter()
            .find(|b| b.name() == name)
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
    cfg.tp_ioctl_cmd = field(tracefs, ("syscalls", "sys_enter_ioctl"), "cmd", &mut cov);
    cfg.tp_ioctl_arg = field(tracefs, ("syscalls", "sys_enter_ioctl"), "arg", &mut cov);
    cov.ioctls = cfg.tp_ioctl_cmd != ABSENT && cfg.tp_ioctl_arg != ABSENT;
    cov.requests = cfg.tp_msghdr != ABSENT && cfg.tp_sendto_buff != ABSENT;
    cov.acks = cov.requests && cfg.tp_exit_ret != ABSENT && cfg.tp_recvfrom_buf != ABSENT;
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

/// `struct user_msghdr` and `struct iovec` are user ABI; BTF confirms their layout where it
/// exists, otherwise the 64-bit ABI applies (msg_iov after msg_name and msg_namelen).
fn fill_user_abi(btf: Option<&KernelBtf>, cfg: &mut LinkConfig) {
    let from_btf = |strct: &str, member: &str| btf.and_then(|b| b.member(strct, member).ok()).map(|m| m.offset);
    let ptr = std::mem::size_of::<usize>() as u32;
    cfg.msghdr_iov = from_btf("user_msghdr", "msg_iov").unwrap_or(2 * ptr);
    cfg.iov_base = from_btf("iovec", "iov_base").unwrap_or(0);
    cfg.iov_len = from_btf("iovec", "iov_len").unwrap_or(ptr);
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
    } else if !coverage.requests {
        return Err(format!("no syscall tracepoints for sendmsg/sendto: {}", coverage.gaps.join("; ")));
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
        if backend == LinkBackend::Kprobes && syscall_capture {
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
