//! The path family (kernel twin: tracer-ebpf/src/path.rs): follows packets that match
//! `--filter` from device to device with the device tracepoints every kernel has
//! (`net:netif_receive_skb`, `net:net_dev_queue`, `net:net_dev_xmit`) and ends their journey
//! at `skb:kfree_skb` / `skb:consume_skb`. Tracepoint offsets come from tracefs, `sk_buff`
//! offsets from BTF; the filter's kernel part (see `packet_filter`) is passed as a global.

use aya::{maps::HashMap as BpfHashMap, programs::TracePoint, Ebpf};
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

/// The tracepoints of each hook, in [`path_hook`] order, and their program names.
const HOOKS: [(u32, &str, &str, &str); 5] = [
    (path_hook::RECEIVE, names::PROG_PATH_RECEIVE, "net", "netif_receive_skb"),
    (path_hook::QUEUE, names::PROG_PATH_QUEUE, "net", "net_dev_queue"),
    (path_hook::XMIT_ERROR, names::PROG_PATH_XMIT, "net", "net_dev_xmit"),
    (path_hook::FREE, names::PROG_PATH_FREE, "skb", "kfree_skb"),
    (path_hook::CONSUME, names::PROG_PATH_CONSUME, "skb", "consume_skb"),
];

/// What the path family sees on this kernel.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PathCoverage {
    /// Tracepoints found, as `system:event`.
    pub tracepoints: Vec<String>,
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
    for (hook, _, system, event) in HOOKS {
        let Ok(format) = facts.tracefs.format(system, event) else {
            cov.gaps.push(format!("no {system}:{event} tracepoint"));
            continue;
        };
        cfg.tp_skb[hook as usize] = format.field("skbaddr").map_or(ABSENT, |f| f.offset);
        if cfg.tp_skb[hook as usize] != ABSENT {
            cov.tracepoints.push(format!("{system}:{event}"));
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

/// Attaches the five programs; `Err` says why the family is unavailable.
pub fn attach(ebpf: &mut Ebpf, coverage: &PathCoverage) -> Result<String, String> {
    if !coverage.headers {
        return Err(coverage.gaps.join("; "));
    }
    let mut attached = Vec::new();
    for (_, prog, system, event) in HOOKS {
        let name = format!("{system}:{event}");
        if !coverage.tracepoints.contains(&name) {
            continue;
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
    Ok(format!("tracepoints {}", attached.join(" ")))
}

/// The per-hop counters of an aggregate session.
pub fn hop_counters(ebpf: &Ebpf) -> Vec<(PathHopKey, PathHopStats)> {
    let Some(map) = ebpf.map(names::PATH_HOPS) else { return vec![] };
    let Ok(counts) = BpfHashMap::<_, PathHopKey, PathHopStats>::try_from(map) else { return vec![] };
    counts.iter().filter_map(Result::ok).collect()
}
