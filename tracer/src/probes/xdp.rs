//! XDP and BPF attach observation (kernel side: tracer-ebpf/src/xdp.rs): `bpf()` loads and
//! attaches with their results, the kernel's reason for failed XDP link attaches, and XDP
//! exceptions counted in the kernel. XDP attaches over netlink come with the links family.

use aya::{
    maps::HashMap as BpfHashMap,
    programs::{RawTracePoint, TracePoint},
    Ebpf,
};
use serde::Serialize;
use tracer_ebpf::{names, XdpConfig, XdpExceptionCount, XdpExceptionKey, ABSENT};

use super::{error_chain, program};
use crate::kernel::KernelFacts;

/// How XDP exceptions are observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpBackend {
    /// Raw tracepoint `xdp_exception`: device and program pointers, so namespace, device
    /// name and program name are known (needs BTF for their offsets).
    RawTracepoint,
    /// Classic `xdp:xdp_exception`: program id, action and ifindex only.
    Tracepoints,
}

impl XdpBackend {
    pub const CHAIN: [XdpBackend; 2] = [XdpBackend::RawTracepoint, XdpBackend::Tracepoints];

    pub fn name(self) -> &'static str {
        match self {
            XdpBackend::RawTracepoint => "raw-tracepoint",
            XdpBackend::Tracepoints => "tracepoints",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::CHAIN.into_iter().find(|b| b.name() == name)
    }
}

/// What the xdp family sees on this kernel.
#[derive(Debug, Clone, Default, Serialize)]
pub struct XdpCoverage {
    /// `bpf()` PROG_LOAD / BTF_LOAD / LINK_CREATE and their results.
    pub bpf_commands: bool,
    /// The kernel's message for a failed XDP link attach (5.18+).
    pub attach_messages: bool,
    pub exceptions: bool,
    /// Exceptions carry the namespace and names (raw tracepoint + BTF).
    pub exception_places: bool,
    pub gaps: Vec<String>,
}

/// `enum bpf_cmd` values (UAPI); BTF's enum confirms them where it exists.
const BPF_PROG_LOAD: u32 = 5;
const BPF_BTF_LOAD: u32 = 18;
const BPF_LINK_CREATE: u32 = 28;

pub fn xdp_config(facts: &KernelFacts, backend: XdpBackend) -> (XdpConfig, XdpCoverage) {
    let mut cfg = XdpConfig::absent();
    let mut cov = XdpCoverage::default();
    let tracefs = &facts.tracefs;
    let field = |system: &str, event: &str, name: &str| {
        tracefs.format(system, event).ok().and_then(|f| f.field(name).map(|f| f.offset)).unwrap_or(ABSENT)
    };
    cfg.tp_bpf_cmd = field("syscalls", "sys_enter_bpf", "cmd");
    cfg.tp_bpf_uattr = field("syscalls", "sys_enter_bpf", "uattr");
    cfg.tp_bpf_size = field("syscalls", "sys_enter_bpf", "size");
    cfg.tp_bpf_ret = field("syscalls", "sys_exit_bpf", "ret");
    cov.bpf_commands = [cfg.tp_bpf_cmd, cfg.tp_bpf_uattr, cfg.tp_bpf_size, cfg.tp_bpf_ret].iter().all(|o| *o != ABSENT);
    if !cov.bpf_commands {
        cov.gaps.push("BPF loads and attaches: no syscalls:sys_enter_bpf/sys_exit_bpf tracepoints".into());
    }
    cfg.tp_attach_failed_msg = field("xdp", "bpf_xdp_link_attach_failed", "msg");
    cov.attach_messages = cfg.tp_attach_failed_msg != ABSENT;
    if !cov.attach_messages {
        cov.gaps.push("kernel messages of failed XDP link attaches: no xdp:bpf_xdp_link_attach_failed (5.18+)".into());
    }
    cfg.tp_exc_prog_id = field("xdp", "xdp_exception", "prog_id");
    cfg.tp_exc_act = field("xdp", "xdp_exception", "act");
    cfg.tp_exc_ifindex = field("xdp", "xdp_exception", "ifindex");
    let cmds = facts.btf.as_ref().and_then(|b| b.enum_values("bpf_cmd").ok()).unwrap_or_default();
    let cmd = |name: &str, uapi: u32| cmds.iter().find(|(n, _)| n == name).map_or(uapi, |(_, v)| *v as u32);
    cfg.cmd_prog_load = cmd("BPF_PROG_LOAD", BPF_PROG_LOAD);
    cfg.cmd_btf_load = cmd("BPF_BTF_LOAD", BPF_BTF_LOAD);
    cfg.cmd_link_create = cmd("BPF_LINK_CREATE", BPF_LINK_CREATE);
    cfg.own_tgid = std::process::id();
    if let Some(btf) = &facts.btf {
        let m = |strct: &str, path: &str| btf.member(strct, path).map_or(ABSENT, |m| m.offset);
        cfg.dev_ifindex = m("net_device", "ifindex");
        cfg.dev_name = m("net_device", "name");
        cfg.dev_net = m("net_device", "nd_net.net");
        cfg.net_inum = m("net", "ns.inum");
        cfg.prog_aux = m("bpf_prog", "aux");
        cfg.aux_id = m("bpf_prog_aux", "id");
        cfg.aux_name = m("bpf_prog_aux", "name");
    }
    match backend {
        XdpBackend::RawTracepoint => {
            cov.exceptions = cfg.dev_net != ABSENT && cfg.aux_id != ABSENT;
            cov.exception_places = cov.exceptions;
            if !cov.exceptions {
                cov.gaps.push("XDP exceptions with their device: needs kernel BTF".into());
            }
        }
        XdpBackend::Tracepoints => {
            cov.exceptions = cfg.tp_exc_act != ABSENT;
            if cov.exceptions {
                cov.gaps.push("XDP exceptions: program id and ifindex only (no namespace, no names)".into());
            } else {
                cov.gaps.push("XDP exceptions: no xdp:xdp_exception tracepoint".into());
            }
        }
    }
    (cfg, cov)
}

/// Attaches the `bpf()` command programs (the same with every backend).
pub fn attach_commands(ebpf: &mut Ebpf, coverage: &XdpCoverage) -> Result<Vec<String>, String> {
    let mut attached = Vec::new();
    if coverage.bpf_commands {
        for (prog, event) in [(names::PROG_BPF_ENTER, "sys_enter_bpf"), (names::PROG_BPF_EXIT, "sys_exit_bpf")] {
            let p: &mut TracePoint = program(ebpf, prog)?;
            p.load().map_err(|e| format!("{prog}: {}", error_chain(&e)))?;
            p.attach("syscalls", event).map_err(|e| format!("syscalls:{event}: {}", error_chain(&e)))?;
            attached.push(event.to_string());
        }
    }
    if coverage.attach_messages {
        let p: &mut TracePoint = program(ebpf, names::PROG_XDP_ATTACH_FAILED)?;
        p.load().map_err(|e| format!("{}: {}", names::PROG_XDP_ATTACH_FAILED, error_chain(&e)))?;
        p.attach("xdp", "bpf_xdp_link_attach_failed").map_err(|e| error_chain(&e))?;
        attached.push("xdp:bpf_xdp_link_attach_failed".into());
    }
    Ok(attached)
}

/// Attaches the exception counter of `backend`; `Err` says why the backend is unavailable.
pub fn attach_exceptions(ebpf: &mut Ebpf, backend: XdpBackend, coverage: &XdpCoverage) -> Result<String, String> {
    let mut attached: Vec<String> = Vec::new();
    if !coverage.exceptions {
        return Err(coverage.gaps.join("; "));
    }
    match backend {
        XdpBackend::RawTracepoint => {
            let p: &mut RawTracePoint = program(ebpf, names::PROG_XDP_EXCEPTION_RAW)?;
            p.load().map_err(|e| format!("{}: {}", names::PROG_XDP_EXCEPTION_RAW, error_chain(&e)))?;
            p.attach("xdp_exception").map_err(|e| format!("raw tracepoint xdp_exception: {}", error_chain(&e)))?;
            attached.push("raw tracepoint xdp_exception".into());
            // Redirect errors: the same counters (raw tracepoint only: it names the device).
            let p: &mut RawTracePoint = program(ebpf, names::PROG_XDP_REDIRECT_ERR_RAW)?;
            p.load().map_err(|e| format!("{}: {}", names::PROG_XDP_REDIRECT_ERR_RAW, error_chain(&e)))?;
            p.attach("xdp_redirect_err")
                .map_err(|e| format!("raw tracepoint xdp_redirect_err: {}", error_chain(&e)))?;
            attached.push("xdp_redirect_err".into());
        }
        XdpBackend::Tracepoints => {
            let p: &mut TracePoint = program(ebpf, names::PROG_XDP_EXCEPTION_TP)?;
            p.load().map_err(|e| format!("{}: {}", names::PROG_XDP_EXCEPTION_TP, error_chain(&e)))?;
            p.attach("xdp", "xdp_exception").map_err(|e| error_chain(&e))?;
            attached.push("xdp:xdp_exception".into());
        }
    }
    Ok(attached.join(" "))
}

/// The exception counters the kernel side kept.
pub fn exceptions(ebpf: &Ebpf) -> Vec<(XdpExceptionKey, XdpExceptionCount)> {
    let Some(map) = ebpf.map(names::XDP_EXCEPTIONS) else { return vec![] };
    let Ok(counts) = BpfHashMap::<_, XdpExceptionKey, XdpExceptionCount>::try_from(map) else { return vec![] };
    counts.iter().filter_map(Result::ok).collect()
}
