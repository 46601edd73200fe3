//! Drop monitoring (kernel side: tracer-ebpf/src/drops.rs): fills the program's
//! `DROP_CONFIG` from the kfree_skb format file and BTF.

use tracer_ebpf::{DropConfig, ABSENT};

use crate::kernel::{btf::KernelBtf, KernelError, KernelFacts};

/// Which parts of a drop event this kernel lets the program fill in.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DropCoverage {
    pub reason: bool,
    pub device_and_netns: bool,
    pub headers: bool,
    /// Human-readable notes on what is missing and why.
    pub gaps: Vec<String>,
}

/// Builds the program configuration for this kernel.
pub fn drop_config(facts: &KernelFacts) -> Result<(DropConfig, DropCoverage), KernelError> {
    let format = &facts.kfree_skb;
    let mut cfg = DropConfig::absent();
    let mut coverage = DropCoverage::default();
    let required = |name: &str, size: u32| -> Result<u32, KernelError> {
        match format.field(name) {
            Some(f) if f.size == size => Ok(f.offset),
            Some(f) => Err(KernelError::MissingTracepoint {
                tracepoint: "skb:kfree_skb".into(),
                why: format!("field `{name}` has size {} (expected {size})", f.size),
            }),
            None => Err(KernelError::MissingTracepoint {
                tracepoint: "skb:kfree_skb".into(),
                why: format!("the format has no `{name}` field"),
            }),
        }
    };
    cfg.tp_skbaddr = required("skbaddr", 8)?;
    cfg.tp_location = required("location", 8)?;
    cfg.tp_protocol = required("protocol", 2)?;
    match format.field("reason") {
        Some(f) if f.size == 4 => {
            cfg.tp_reason = f.offset;
            coverage.reason = true;
        }
        _ => coverage
            .gaps
            .push("drop reasons: this kernel's skb:kfree_skb has no `reason` field (added in 5.17); drops are told apart by location only".into()),
    }
    cfg.reason_consumed = facts.drop_reasons.value_of("CONSUMED").unwrap_or(ABSENT);
    cfg.reason_not_dropped = facts
        .drop_reasons
        .value_of("NOT_DROPPED_YET")
        .unwrap_or(ABSENT);

    match &facts.btf {
        Some(btf) => fill_from_btf(btf, &mut cfg, &mut coverage),
        None => coverage.gaps.push(format!(
            "device, netns and packet headers: no kernel BTF ({}); only reason, location and protocol are reported",
            facts.btf_missing.as_deref().unwrap_or("unknown")
        )),
    }
    Ok((cfg, coverage))
}

fn fill_from_btf(btf: &KernelBtf, cfg: &mut DropConfig, coverage: &mut DropCoverage) {
    // Each lookup is optional: a missing member only disables what depends on it.
    let mut member = |strct: &str, path: &str, size: u32| -> u32 {
        match btf.member(strct, path) {
            Ok(m) if m.size == size => m.offset,
            Ok(m) => {
                coverage.gaps.push(format!(
                    "struct {strct}.{path} has size {} (expected {size})",
                    m.size
                ));
                ABSENT
            }
            Err(e) => {
                coverage.gaps.push(e.to_string());
                ABSENT
            }
        }
    };
    let ptr = std::mem::size_of::<usize>() as u32;
    cfg.skb_dev = member("sk_buff", "dev", ptr);
    cfg.skb_sk = member("sk_buff", "sk", ptr);
    cfg.skb_head = member("sk_buff", "head", ptr);
    cfg.skb_network_header = member("sk_buff", "network_header", 2);
    // `tail` is an offset (u32) on 64-bit kernels; elsewhere a pointer, which we don't use.
    cfg.skb_tail = member("sk_buff", "tail", 4);
    cfg.dev_ifindex = member("net_device", "ifindex", 4);
    cfg.dev_name = member("net_device", "name", 16);
    cfg.dev_net = member("net_device", "nd_net.net", ptr);
    cfg.sk_net = member("sock", "__sk_common.skc_net.net", ptr);
    cfg.net_inum = member("net", "ns.inum", 4);
    coverage.device_and_netns =
        cfg.skb_dev != ABSENT && cfg.dev_ifindex != ABSENT && cfg.net_inum != ABSENT;
    coverage.headers = cfg.skb_head != ABSENT && cfg.skb_network_header != ABSENT;
}
