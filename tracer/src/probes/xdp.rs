//! XDP and BPF attach observation (kernel side: tracer-ebpf/src/xdp.rs): `bpf()` loads and
//! attaches with their results, the kernel's reason for failed XDP link attaches, and XDP
//! exceptions counted in the kernel. XDP attaches over netlink come with the links family.

use aya::{
    maps::HashMap as BpfHashMap,
    programs::{KProbe, RawTracePoint, TracePoint},
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

/// How `bpf()` commands (program loads, link creations) are observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandBackend {
    /// kprobe/kretprobe on the syscall's wrapper: only `bpf()` calls pay for it.
    Kprobes,
    /// `syscalls:sys_enter_bpf`/`sys_exit_bpf`: every kernel with syscall tracepoints, but
    /// while attached every syscall of every process takes the slow path (+90 ns each,
    /// `cargo xtask bench`). Used when asked for (`--backend bpf=syscalls`) and in the lab.
    Syscalls,
}

impl CommandBackend {
    pub fn name(self) -> &'static str {
        match self {
            CommandBackend::Kprobes => "kprobes",
            CommandBackend::Syscalls => "syscalls",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [CommandBackend::Kprobes, CommandBackend::Syscalls].into_iter().find(|b| b.name() == name)
    }

    /// The backends to try: the forced one, else kprobes, then the syscall tracepoints if
    /// their machine-wide cost is accepted.
    pub fn chain(forced: Option<CommandBackend>, accept_syscall_cost: bool) -> Vec<CommandBackend> {
        match forced {
            Some(b) => vec![b],
            None if accept_syscall_cost => vec![CommandBackend::Kprobes, CommandBackend::Syscalls],
            None => vec![CommandBackend::Kprobes],
        }
    }
}

/// The `bpf()` syscall's wrapper on this architecture: it takes the saved user registers.
fn bpf_wrapper() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => Some("__x64_sys_bpf"),
        "aarch64" => Some("__arm64_sys_bpf"),
        _ => None,
    }
}

/// What the xdp family sees on this kernel.
#[derive(Debug, Clone, Default, Serialize)]
pub struct XdpCoverage {
    /// `bpf()` PROG_LOAD / BTF_LOAD / LINK_CREATE and their results.
    pub bpf_commands: bool,
    /// How they are observed (kprobes, syscalls), when they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bpf_commands_via: Option<&'static str>,
    /// The kernel's message for a failed XDP link attach (5.18+).
    pub attach_messages: bool,
    pub exceptions: bool,
    /// Exceptions carry the namespace and names (raw tracepoint + BTF).
    pub exception_places: bool,
    /// Failed XDP redirects are counted with the exceptions (raw tracepoint `xdp_redirect_err`).
    pub redirect_errors: bool,
    pub gaps: Vec<String>,
}

/// The leading arguments the raw exception programs read.
const XDP_EXCEPTION_PARAMS: [&str; 3] = ["struct net_device *", "struct bpf_prog *", "u32"];
const XDP_REDIRECT_ERR_PARAMS: [&str; 4] = ["struct net_device *", "struct bpf_prog *", "void *", "int"];

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
    if let Some(btf) = &facts.btf {
        let m = |name: &str| btf.member("pt_regs", name).map_or(ABSENT, |m| m.offset);
        match std::env::consts::ARCH {
            "x86_64" => [cfg.regs_arg0, cfg.regs_arg1, cfg.regs_arg2] = [m("di"), m("si"), m("dx")],
            "aarch64" => {
                let regs = m("regs");
                if regs != ABSENT {
                    [cfg.regs_arg0, cfg.regs_arg1, cfg.regs_arg2] = [regs, regs + 8, regs + 16];
                }
            }
            _ => {}
        }
    }
    cfg.tp_attach_failed_msg = field("xdp", "bpf_xdp_link_attach_failed", "msg");
    cov.attach_messages = cfg.tp_attach_failed_msg != ABSENT;
    if !cov.attach_messages {
        cov.gaps.push("kernel messages of failed XDP link attaches: no xdp:bpf_xdp_link_attach_failed (5.18+)".into());
    }
    // XDP_DROP itself has no tracepoint: veth's native XDP and generic XDP free an skb
    // (seen by the drops family, named by `xdp-drop`); a NIC driver's native XDP recycles
    // the page before any skb exists.
    cov.gaps.push(
        "XDP_DROP by native XDP in NIC drivers (not veth): the driver recycles the page before an skb exists (no kfree_skb, no tracepoint); see the driver's xdp_drop counters (`ethtool -S DEV`) or the program's own statistics".into(),
    );
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
            if !cov.exceptions {
                cov.gaps.push("XDP exceptions with their device: needs kernel BTF".into());
            } else if let Some(btf) = &facts.btf {
                // The programs read (dev, prog, act) and (dev, prog, target, err) by position.
                if let Err(e) = btf.raw_tracepoint_fits("xdp_exception", &XDP_EXCEPTION_PARAMS) {
                    cov.exceptions = false;
                    cov.gaps.push(format!("XDP exceptions: {e}"));
                }
                match btf.raw_tracepoint_fits("xdp_redirect_err", &XDP_REDIRECT_ERR_PARAMS) {
                    Ok(()) => cov.redirect_errors = true,
                    Err(e) => cov.gaps.push(format!("failed XDP redirects: {e}")),
                }
            }
            cov.exception_places = cov.exceptions;
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

/// Attaches the `bpf()` command programs with the first backend of `chain` that works
/// (recorded in `coverage`), and the XDP link attach messages. An empty or failed chain is
/// a gap, not an error, unless a backend was forced (`forced`).
pub fn attach_commands(
    ebpf: &mut Ebpf,
    facts: &KernelFacts,
    config: &XdpConfig,
    coverage: &mut XdpCoverage,
    chain: &[CommandBackend],
    forced: bool,
) -> Result<Vec<String>, String> {
    let mut attached = Vec::new();
    let mut tried = Vec::new();
    for &backend in chain {
        match attach_command_backend(ebpf, facts, config, backend) {
            Ok(detail) => {
                attached.push(detail);
                coverage.bpf_commands = true;
                coverage.bpf_commands_via = Some(backend.name());
                break;
            }
            Err(why) => tried.push(format!("{}: {why}", backend.name())),
        }
    }
    if !coverage.bpf_commands {
        if forced {
            return Err(tried.join("; "));
        }
        let why = if tried.is_empty() { String::new() } else { format!(" ({})", tried.join("; ")) };
        let hint = if chain.contains(&CommandBackend::Syscalls) {
            String::new()
        } else {
            ": --backend bpf=syscalls sees them, at the price of slowing every syscall on the machine".into()
        };
        coverage.gaps.push(format!("BPF loads and attaches (bpf()): not observed{why}{hint}"));
    }
    if coverage.attach_messages {
        let p: &mut TracePoint = program(ebpf, names::PROG_XDP_ATTACH_FAILED)?;
        p.load().map_err(|e| format!("{}: {}", names::PROG_XDP_ATTACH_FAILED, error_chain(&e)))?;
        p.attach("xdp", "bpf_xdp_link_attach_failed").map_err(|e| error_chain(&e))?;
        attached.push("xdp:bpf_xdp_link_attach_failed".into());
    }
    Ok(attached)
}

fn attach_command_backend(
    ebpf: &mut Ebpf,
    facts: &KernelFacts,
    config: &XdpConfig,
    backend: CommandBackend,
) -> Result<String, String> {
    match backend {
        CommandBackend::Kprobes => {
            if !std::path::Path::new(super::KPROBE_PMU).exists() {
                return Err(format!("this kernel has no kprobes (no {})", super::KPROBE_PMU));
            }
            let wrapper = bpf_wrapper().ok_or("no known bpf() syscall wrapper on this architecture")?;
            if facts.kallsyms.range(wrapper).is_none() {
                return Err(format!("{wrapper} is not in /proc/kallsyms"));
            }
            if [config.regs_arg0, config.regs_arg1, config.regs_arg2].contains(&ABSENT) {
                return Err("needs kernel BTF (struct pt_regs)".into());
            }
            for (prog, ret) in [(names::PROG_BPF_KPROBE, "kprobe"), (names::PROG_BPF_KRETPROBE, "kretprobe")] {
                let p: &mut KProbe = program(ebpf, prog)?;
                p.load().map_err(|e| format!("{prog}: {}", error_chain(&e)))?;
                p.attach(wrapper, 0).map_err(|e| format!("{ret} on {wrapper}: {}", error_chain(&e)))?;
            }
            Ok(format!("kprobes {wrapper}"))
        }
        CommandBackend::Syscalls => {
            if [config.tp_bpf_cmd, config.tp_bpf_uattr, config.tp_bpf_size, config.tp_bpf_ret].contains(&ABSENT) {
                return Err("no syscalls:sys_enter_bpf/sys_exit_bpf tracepoints".into());
            }
            for (prog, event) in [(names::PROG_BPF_ENTER, "sys_enter_bpf"), (names::PROG_BPF_EXIT, "sys_exit_bpf")] {
                let p: &mut TracePoint = program(ebpf, prog)?;
                p.load().map_err(|e| format!("{prog}: {}", error_chain(&e)))?;
                p.attach("syscalls", event).map_err(|e| format!("syscalls:{event}: {}", error_chain(&e)))?;
            }
            Ok("sys_enter_bpf sys_exit_bpf".into())
        }
    }
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
            if coverage.redirect_errors {
                let p: &mut RawTracePoint = program(ebpf, names::PROG_XDP_REDIRECT_ERR_RAW)?;
                p.load().map_err(|e| format!("{}: {}", names::PROG_XDP_REDIRECT_ERR_RAW, error_chain(&e)))?;
                p.attach("xdp_redirect_err")
                    .map_err(|e| format!("raw tracepoint xdp_redirect_err: {}", error_chain(&e)))?;
                attached.push("xdp_redirect_err".into());
            }
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

/// How long the kernel may take to answer the attached-program lookup.
const ATTACHED_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(200);

/// The XDP program attached in `mode` (`native`, `generic`) to device `ifindex` of the
/// namespace at `netns_path`, with its name and tag from the kernel: `IFLA_XDP` of an
/// RTM_GETLINK answer, then the program's info by id. None when nothing is attached in that
/// mode, the namespace cannot be entered, or the kernel does not answer in time.
pub fn attached_program(
    netns_path: &std::path::Path,
    ifindex: u32,
    mode: &'static str,
) -> Option<crate::decode::xdp::XdpAttachment> {
    let file = std::fs::File::open(netns_path).ok()?;
    let (found_mode, prog_id) = std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
            attached_here(ifindex, mode)
        })
        .join()
        .ok()
        .flatten()
    })?;
    let programs: Vec<aya::programs::ProgramInfo> = aya::programs::loaded_programs().filter_map(Result::ok).collect();
    let info = programs.iter().find(|p| p.id() == prog_id);
    let name_of = |id: u32| {
        let name = programs.iter().find(|p| p.id() == id).and_then(|p| p.name_as_str()).unwrap_or("");
        format!("{} (id {id})", if name.is_empty() { "(unnamed)" } else { name })
    };
    let components = crate::kernel::bpf_links::freplace_programs_of(prog_id).into_iter().map(name_of).collect();
    Some(crate::decode::xdp::XdpAttachment {
        mode: found_mode.into(),
        prog_id,
        prog_name: info.as_ref().and_then(|p| p.name_as_str().map(str::to_string)).filter(|n| !n.is_empty()),
        prog_tag: info.as_ref().map(|p| format!("{:016x}", p.tag())),
        run_count: info.as_ref().map(|p| p.run_count()).filter(|&n| n > 0),
        components,
    })
}

/// [`attached_program`] in the calling thread's namespace: the mode and program id.
fn attached_here(ifindex: u32, mode: &'static str) -> Option<(&'static str, u32)> {
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
    use netlink_packet_route::{
        link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached},
        RouteNetlinkMessage,
    };
    use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

    let mut socket = Socket::new(NETLINK_ROUTE).ok()?;
    socket.bind_auto().ok()?;
    socket.connect(&SocketAddr::new(0, 0)).ok()?;
    let timeout = nix::sys::time::TimeVal::new(0, ATTACHED_LOOKUP_TIMEOUT.as_micros() as i64);
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReceiveTimeout, &timeout).ok()?;
    let mut request = LinkMessage::default();
    request.header.index = ifindex;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = 1;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetLink(request)));
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);
    socket.send(&bytes, 0).ok()?;
    let mut buf = vec![0u8; 1 << 16];
    // One answer (or error) for one request; a timeout ends the wait.
    for _ in 0..4 {
        let len = socket.recv(&mut &mut buf[..], 0).ok()?;
        let Ok(answer) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[..len]) else { continue };
        if answer.header.sequence_number != 1 {
            continue;
        }
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) = answer.payload else { return None };
        let xdp = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Xdp(x) => Some(x),
            _ => None,
        })?;
        let (mut attached, mut single, mut drv, mut skb, mut hw) = (None, None, None, None, None);
        for attr in xdp {
            match attr {
                LinkXdp::Attached(a) => attached = Some(*a),
                LinkXdp::ProgId(id) => single = Some(*id),
                LinkXdp::DrvProgId(id) => drv = Some(*id),
                LinkXdp::SkbProgId(id) => skb = Some(*id),
                LinkXdp::HwProgId(id) => hw = Some(*id),
                _ => {}
            }
        }
        return match attached? {
            XdpAttached::Driver => Some(("native", single.or(drv)?)),
            XdpAttached::SocketBuffer => Some(("generic", single.or(skb)?)),
            XdpAttached::Hardware => Some(("offload", single.or(hw)?)),
            // Several at once: the one of the mode that ran where the packet died.
            XdpAttached::Multiple => match mode {
                "generic" => skb.map(|id| ("generic", id)),
                _ => drv.map(|id| ("native", id)),
            },
            _ => None,
        };
    }
    None
}
