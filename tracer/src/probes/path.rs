//! The path family (kernel twin: tracer-ebpf/src/path.rs): follows packets that match
//! `--filter` from device to device with the device tracepoints every kernel has
//! (`net:netif_receive_skb`, `net:net_dev_queue`, `net:net_dev_xmit`) and ends their journey
//! at `skb:kfree_skb` / `skb:consume_skb`. Each hook is a raw tracepoint where BTF gives its
//! prototype (no trace record is built: these run for every hop of every packet), else a
//! classic one. Tracepoint offsets come from tracefs, `sk_buff` offsets from BTF; the
//! filter's kernel part (see `packet_filter`) is passed as a global.

use aya::{
    maps::HashMap as BpfHashMap,
    programs::{KProbe, RawTracePoint, TracePoint},
    Ebpf,
};
use serde::Serialize;
use tracer_ebpf::{names, path_hook, PathConfig, PathHopKey, PathHopStats, ABSENT};

use super::{error_chain, program};
use crate::{kernel::KernelFacts, packet_filter::PacketFilter};

/// UDP ports whose payload is VXLAN: IANA's 4789, Linux's historical default 8472 (flannel).
pub const VXLAN_PORTS: [u16; 3] = [4789, 8472, 0];
pub const GENEVE_PORT: u16 = 6081;
/// A tracked `sk_buff` unseen for this long is taken for a new packet.
const FOLLOW_NS: u64 = 200_000_000;

/// What `--path` asked for.
#[derive(Debug, Clone, Default)]
pub struct PathOptions {
    /// Which packets to trace; None: all of them.
    pub filter: Option<PacketFilter>,
    /// Count hops and latencies in the kernel, without per-packet events.
    pub aggregate: bool,
}

/// One hook: its tracepoint, its classic and raw programs, and the leading arguments the raw
/// program reads (C types as BTF spells them, `const` aside).
struct Hook {
    hook: u32,
    program: &'static str,
    raw_program: &'static str,
    system: &'static str,
    event: &'static str,
    raw_params: &'static [&'static str],
}

const SKB: &str = "struct sk_buff *";

/// The hooks, in [`path_hook`] order.
const HOOKS: [Hook; 6] = [
    Hook {
        hook: path_hook::RECEIVE,
        program: names::PROG_PATH_RECEIVE,
        raw_program: names::PROG_PATH_RECEIVE_RAW,
        system: "net",
        event: "netif_receive_skb",
        raw_params: &[SKB],
    },
    Hook {
        hook: path_hook::QUEUE,
        program: names::PROG_PATH_QUEUE,
        raw_program: names::PROG_PATH_QUEUE_RAW,
        system: "net",
        event: "net_dev_queue",
        raw_params: &[SKB],
    },
    Hook {
        hook: path_hook::XMIT_ERROR,
        program: names::PROG_PATH_XMIT,
        raw_program: names::PROG_PATH_XMIT_RAW,
        system: "net",
        event: "net_dev_xmit",
        raw_params: &[SKB, "int"],
    },
    Hook {
        hook: path_hook::FREE,
        program: names::PROG_PATH_FREE,
        raw_program: names::PROG_PATH_FREE_RAW,
        system: "skb",
        event: "kfree_skb",
        // Without the reason (before 5.17) the classic tracepoint serves: it says so itself.
        raw_params: &[SKB, "void *", "enum skb_drop_reason"],
    },
    Hook {
        hook: path_hook::CONSUME,
        program: names::PROG_PATH_CONSUME,
        raw_program: names::PROG_PATH_CONSUME_RAW,
        system: "skb",
        event: "consume_skb",
        raw_params: &[SKB],
    },
    Hook {
        hook: path_hook::DELIVER,
        program: names::PROG_PATH_DELIVER,
        raw_program: names::PROG_PATH_DELIVER_RAW,
        system: "skb",
        event: "skb_copy_datagram_iovec",
        raw_params: &[SKB],
    },
];

/// Datapath functions hooked with kprobes where the kernel has them, with the module whose
/// BTF describes them (None: vmlinux). They show, between two devices, what the stack did to
/// a traced packet: received, forwarded, delivered locally, sent out, bridged, encapsulated.
const FUNCTIONS: [(&str, Option<&str>); 20] = [
    ("ip_rcv", None),
    ("ipv6_rcv", None),
    ("ip_forward", None),
    ("ip6_forward", None),
    ("ip_local_deliver", None),
    ("ip6_input", None),
    ("ip_output", None),
    ("ip6_output", None),
    ("iptunnel_xmit", None),
    ("nf_hook_slow", None),
    ("br_forward", Some("bridge")),
    ("br_pass_frame_up", Some("bridge")),
    ("br_dev_xmit", Some("bridge")),
    ("vxlan_xmit", Some("vxlan")),
    ("vxlan_rcv", Some("vxlan")),
    ("udp_tunnel_xmit_skb", Some("udp_tunnel")),
    ("geneve_xmit", Some("geneve")),
    ("wg_xmit", Some("wireguard")),
    ("wg_packet_receive", Some("wireguard")),
    ("veth_xmit", Some("veth")),
];

/// A datapath function to hook, and where its skb argument is.
#[derive(Debug, Clone, Serialize)]
pub struct PathFunction {
    pub name: &'static str,
    pub skb_arg: usize,
}

/// What the path family sees on this kernel.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PathCoverage {
    /// Tracepoints found, as `system:event`.
    pub tracepoints: Vec<String>,
    /// Those whose prototype BTF gives as the raw programs expect (`system:event`).
    pub raw_tracepoints: Vec<String>,
    /// Datapath functions hooked with kprobes (needs kprobes and BTF).
    pub functions: Vec<String>,
    /// Headers can be read (BTF offsets of `sk_buff`): filters and captures work.
    pub headers: bool,
    /// Which part of the filter runs in the kernel.
    pub filter: Option<String>,
    pub aggregate: bool,
    pub gaps: Vec<String>,
}

pub fn path_config(facts: &KernelFacts, options: &PathOptions) -> (PathConfig, PathCoverage) {
    let mut cfg = PathConfig::absent();
    let mut cov = PathCoverage { aggregate: options.aggregate, ..Default::default() };
    for Hook { hook, system, event, raw_params, .. } in HOOKS {
        let Ok(format) = facts.tracefs.format(system, event) else {
            cov.gaps.push(format!("no {system}:{event} tracepoint"));
            continue;
        };
        cfg.tp_skb[hook as usize] = format.field("skbaddr").map_or(ABSENT, |f| f.offset);
        if cfg.tp_skb[hook as usize] != ABSENT {
            cov.tracepoints.push(format!("{system}:{event}"));
            if facts.btf.as_ref().is_some_and(|btf| btf.raw_tracepoint_fits(event, raw_params).is_ok()) {
                cov.raw_tracepoints.push(format!("{system}:{event}"));
            }
        }
        match hook {
            path_hook::XMIT_ERROR => cfg.tp_xmit_rc = format.field("rc").map_or(ABSENT, |f| f.offset),
            path_hook::FREE => {
                cfg.tp_free_reason = format.field("reason").map_or(ABSENT, |f| f.offset);
                cfg.tp_free_location = format.field("location").map_or(ABSENT, |f| f.offset);
            }
            _ => {}
        }
    }
    if cfg.tp_free_reason == ABSENT {
        cov.gaps.push("drop reasons (skb:kfree_skb has no reason field before 5.17)".into());
    }
    if let Some(btf) = &facts.btf {
        let m = |strct: &str, path: &str| btf.member(strct, path).map_or(ABSENT, |m| m.offset);
        cfg.skb_len = m("sk_buff", "len");
        cfg.skb_data = m("sk_buff", "data");
        cfg.skb_mac_header = m("sk_buff", "mac_header");
    }
    cov.headers = cfg.skb_data != ABSENT && cfg.skb_mac_header != ABSENT;
    if !cov.headers {
        cov.gaps.push("packet headers, devices and filters: need kernel BTF for the sk_buff layout".into());
    }
    if !std::path::Path::new(super::KPROBE_PMU).exists() {
        cov.gaps
            .push("datapath functions between devices (ip_forward, vxlan_xmit, …): this kernel has no kprobes".into());
    }
    cfg.vxlan_ports = VXLAN_PORTS;
    cfg.geneve_port = GENEVE_PORT;
    cfg.follow_ns = FOLLOW_NS;
    cfg.aggregate = u32::from(options.aggregate);
    if let Some(filter) = &options.filter {
        let kernel = filter.kernel_part();
        cfg.filter = kernel.terms;
        cfg.clauses = kernel.clauses;
        cov.filter = Some(kernel.description);
    }
    (cfg, cov)
}

/// The datapath functions this kernel has, with their skb argument (from BTF).
pub fn functions(facts: &KernelFacts) -> Vec<PathFunction> {
    let Some(vmlinux) = &facts.btf else { return vec![] };
    if !std::path::Path::new(super::KPROBE_PMU).exists() {
        return vec![];
    }
    FUNCTIONS
        .iter()
        .filter_map(|&(name, module)| {
            let module_btf;
            let btf = match module {
                // Built into vmlinux on some kernels, a module on others.
                Some(m) if vmlinux.function_params(name).is_none() => {
                    module_btf = vmlinux.module(m)?;
                    &module_btf
                }
                _ => vmlinux,
            };
            let params = btf.function_params(name)?;
            let skb_arg = params.iter().position(|p| p == "skb").filter(|&i| i < 3)?;
            Some(PathFunction { name, skb_arg })
        })
        .collect()
}

/// Attaches the five programs, and kprobes on `functions`; `Err` says why the family is
/// unavailable. Functions that cannot be hooked are left out of `coverage.functions`.
pub fn attach(ebpf: &mut Ebpf, coverage: &mut PathCoverage, functions: &[PathFunction]) -> Result<String, String> {
    if !coverage.headers {
        return Err(coverage.gaps.join("; "));
    }
    let (mut attached, mut raw) = (Vec::new(), Vec::new());
    for Hook { program: prog, raw_program, system, event, .. } in HOOKS {
        let name = format!("{system}:{event}");
        if !coverage.tracepoints.contains(&name) {
            continue;
        }
        if coverage.raw_tracepoints.contains(&name) {
            match attach_raw(ebpf, raw_program, event) {
                Ok(()) => {
                    raw.push(event);
                    attached.push(name);
                    continue;
                }
                // The classic tracepoint sees the same, at a higher cost per hop.
                Err(e) => {
                    coverage.raw_tracepoints.retain(|r| *r != name);
                    coverage.gaps.push(format!("raw tracepoint {event} (classic one used): {e}"));
                }
            }
        }
        let p: &mut TracePoint = program(ebpf, prog)?;
        p.load().map_err(|e| format!("{prog}: {}", error_chain(&e)))?;
        p.attach(system, event).map_err(|e| format!("{name}: {}", error_chain(&e)))?;
        attached.push(name);
    }
    let required = ["net:netif_receive_skb", "net:net_dev_queue"];
    if let Some(missing) = required.iter().find(|r| !attached.iter().any(|a| a == *r)) {
        return Err(format!("no {missing} tracepoint"));
    }
    let classic: Vec<&String> = attached.iter().filter(|a| !coverage.raw_tracepoints.contains(a)).collect();
    let mut parts = Vec::new();
    if !raw.is_empty() {
        parts.push(format!("raw tracepoints {}", raw.join(" ")));
    }
    if !classic.is_empty() {
        parts.push(format!("tracepoints {}", classic.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(" ")));
    }
    let mut detail = parts.join(", ");
    for (position, prog) in
        [names::PROG_PATH_FN_SKB0, names::PROG_PATH_FN_SKB1, names::PROG_PATH_FN_SKB2].iter().enumerate()
    {
        let wanted: Vec<&PathFunction> = functions.iter().filter(|f| f.skb_arg == position).collect();
        if wanted.is_empty() {
            continue;
        }
        let p: &mut KProbe = program(ebpf, prog)?;
        if let Err(e) = p.load() {
            coverage.gaps.push(format!("datapath functions: {prog}: {}", error_chain(&e)));
            continue;
        }
        for f in wanted {
            match p.attach(f.name, 0) {
                Ok(_) => coverage.functions.push(f.name.to_string()),
                Err(e) => coverage.gaps.push(format!("kprobe {}: {}", f.name, error_chain(&e))),
            }
        }
    }
    if !coverage.functions.is_empty() {
        detail.push_str(&format!(", kprobes {}", coverage.functions.join(" ")));
    }
    Ok(detail)
}

fn attach_raw(ebpf: &mut Ebpf, prog: &str, event: &str) -> Result<(), String> {
    let p: &mut RawTracePoint = program(ebpf, prog)?;
    p.load().map_err(|e| format!("{prog}: {}", error_chain(&e)))?;
    p.attach(event).map_err(|e| format!("{event}: {}", error_chain(&e)))?;
    Ok(())
}

/// The per-hop counters of an aggregate session.
pub fn hop_counters(ebpf: &Ebpf) -> Vec<(PathHopKey, PathHopStats)> {
    let Some(map) = ebpf.map(names::PATH_HOPS) else { return vec![] };
    let Ok(counts) = BpfHashMap::<_, PathHopKey, PathHopStats>::try_from(map) else { return vec![] };
    counts.iter().filter_map(Result::ok).collect()
}
