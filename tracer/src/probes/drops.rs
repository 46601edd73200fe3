//! Drop monitoring (kernel side: tracer-ebpf/src/drops.rs): its backends, best first, and
//! the `DROP_CONFIG` each needs, filled from the kfree_skb format file, BTF and kallsyms.

use std::fmt;

use serde::Serialize;
use tracer_ebpf::{DropConfig, ABSENT};

use crate::kernel::{
    btf::KernelBtf, drop_reasons::DropReasons, kallsyms::Kallsyms, tracefs::TracepointFormat, KernelError, KernelFacts,
};

/// How drops are observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DropBackend {
    /// `skb:kfree_skb`: stable fields, cheapest, on every kernel.
    Tracepoint,
    /// The tracepoint without its `reason` field, as kernels before 5.17 have it. Only by
    /// `--backend drops=tracepoint-noreason`: it lets old kernels' behaviour be tested here.
    TracepointNoreason,
    /// fentry on the drop function: needs BTF and the `tracing` program type.
    Fentry,
    /// kprobe on the drop function: needs CONFIG_KPROBES.
    Kprobe,
}

impl DropBackend {
    /// The automatic fallback chain, best first.
    pub const CHAIN: [DropBackend; 3] = [DropBackend::Tracepoint, DropBackend::Fentry, DropBackend::Kprobe];
    pub const ALL: [DropBackend; 4] =
        [DropBackend::Tracepoint, DropBackend::TracepointNoreason, DropBackend::Fentry, DropBackend::Kprobe];

    pub fn name(self) -> &'static str {
        match self {
            DropBackend::Tracepoint => "tracepoint",
            DropBackend::TracepointNoreason => "tracepoint-noreason",
            DropBackend::Fentry => "fentry",
            DropBackend::Kprobe => "kprobe",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }
}

impl fmt::Display for DropBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which parts of a drop event this kernel lets the program fill in.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DropCoverage {
    pub reason: bool,
    pub location: bool,
    pub device_and_netns: bool,
    pub headers: bool,
    /// `tracepoint` backend: attached as a raw tracepoint (no trace record per drop), as BTF
    /// shows the prototype the program reads.
    pub raw_tracepoint: bool,
    /// Human-readable notes on what is missing and why.
    pub gaps: Vec<String>,
}

/// The kernel function the fentry/kprobe backends hook, and where its arguments are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropFunction {
    pub name: &'static str,
    pub arg_skb: u32,
    pub arg_reason: Option<u32>,
    /// From BTF (`true`) or from the known upstream signature (no BTF).
    pub params_from_btf: bool,
    /// Text range from kallsyms, to find the caller on the stack.
    pub range: Option<(u64, u64)>,
}

/// Drop functions across kernel versions, newest first, with their upstream signatures
/// (used only when BTF cannot tell the parameters): 6.11+ `sk_skb_reason_drop(sk, skb,
/// reason)`, 5.17–6.10 `kfree_skb_reason(skb, reason)`, before 5.17 `kfree_skb(skb)`.
const DROP_FUNCTIONS: [(&str, u32, Option<u32>); 3] =
    [("sk_skb_reason_drop", 1, Some(2)), ("kfree_skb_reason", 0, Some(1)), ("kfree_skb", 0, None)];

/// Picks the drop function this kernel has: in BTF (needed by fentry) or kallsyms (kprobe).
pub fn drop_function(btf: Option<&KernelBtf>, kallsyms: &Kallsyms, need_btf: bool) -> Result<DropFunction, String> {
    for (name, skb, reason) in DROP_FUNCTIONS {
        let params = btf.and_then(|b| b.function_params(name));
        let range = kallsyms.range(name);
        if need_btf && params.is_none() {
            continue;
        }
        if !need_btf && range.is_none() && params.is_none() {
            continue;
        }
        let function = match params {
            Some(params) => {
                let Some(arg_skb) = params.iter().position(|p| p == "skb") else { continue };
                let arg_reason = params.iter().position(|p| p == "reason").map(|i| i as u32);
                DropFunction { name, arg_skb: arg_skb as u32, arg_reason, params_from_btf: true, range }
            }
            None => DropFunction { name, arg_skb: skb, arg_reason: reason, params_from_btf: false, range },
        };
        return Ok(function);
    }
    let names: Vec<&str> = DROP_FUNCTIONS.iter().map(|(n, _, _)| *n).collect();
    Err(format!("none of {} is in {}", names.join(", "), if need_btf { "BTF" } else { "kallsyms or BTF" }))
}

/// Builds the program configuration for `backend` on this kernel.
pub fn drop_config(
    facts: &KernelFacts,
    backend: DropBackend,
) -> Result<(DropConfig, DropCoverage, Option<DropFunction>), KernelError> {
    let btf = facts.btf.as_ref().ok_or(facts.btf_missing.as_deref().unwrap_or("unknown"));
    match backend {
        DropBackend::Tracepoint | DropBackend::TracepointNoreason => {
            let format = facts.kfree_skb.as_ref().map_err(|why| KernelError::MissingTracepoint {
                tracepoint: "skb:kfree_skb".into(),
                why: why.clone(),
            })?;
            let (mut cfg, mut coverage) = config_from(format, &facts.drop_reasons, btf)?;
            coverage.raw_tracepoint = backend == DropBackend::Tracepoint
                && cfg.tp_reason != ABSENT
                && btf.is_ok_and(|b| b.raw_tracepoint_fits("kfree_skb", &KFREE_SKB_RAW_PARAMS).is_ok());
            if backend == DropBackend::TracepointNoreason && cfg.tp_reason != ABSENT {
                cfg.tp_reason = ABSENT;
                coverage.reason = false;
                coverage.gaps.push("drop reasons: ignored (--backend drops=tracepoint-noreason emulates kernels before 5.17); reasons are inferred from the location".into());
            }
            Ok((cfg, coverage, None))
        }
        DropBackend::Fentry | DropBackend::Kprobe => {
            if let (DropBackend::Fentry, Err(missing)) = (backend, btf) {
                return Err(KernelError::NoBtf(format!("fentry programs need it ({missing})")));
            }
            let function = drop_function(facts.btf.as_ref(), &facts.kallsyms, backend == DropBackend::Fentry)
                .map_err(|why| KernelError::MissingMember { member: "a drop function".into(), why })?;
            let (cfg, coverage) = function_config(&function, &facts.drop_reasons, btf);
            Ok((cfg, coverage, Some(function)))
        }
    }
}

/// What `kfree_skb_raw` reads: `kfree_skb(skb, location, reason, …)` (5.17+).
const KFREE_SKB_RAW_PARAMS: [&str; 3] = ["struct sk_buff *", "void *", "enum skb_drop_reason"];

/// The configuration from a kfree_skb format, the reason names, and BTF (or why it is missing).
pub fn config_from(
    format: &TracepointFormat,
    reasons: &DropReasons,
    btf: Result<&KernelBtf, &str>,
) -> Result<(DropConfig, DropCoverage), KernelError> {
    let mut cfg = DropConfig::absent();
    let mut coverage = DropCoverage { location: true, ..DropCoverage::default() };
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
        _ => coverage.gaps.push(
            "drop reasons: this kernel's skb:kfree_skb has no `reason` field (added in 5.17); reasons are inferred from the location".into(),
        ),
    }
    routine_reasons(&mut cfg, reasons);
    fill_struct_offsets(btf, &mut cfg, &mut coverage);
    Ok((cfg, coverage))
}

fn function_config(
    function: &DropFunction,
    reasons: &DropReasons,
    btf: Result<&KernelBtf, &str>,
) -> (DropConfig, DropCoverage) {
    let mut cfg = DropConfig::absent();
    let mut coverage = DropCoverage::default();
    cfg.arg_skb = function.arg_skb;
    match function.arg_reason {
        Some(index) => {
            cfg.arg_reason = index;
            coverage.reason = true;
        }
        None => coverage.gaps.push(format!(
            "drop reasons: {} has no reason argument (kernels before 5.17); reasons are inferred from the location",
            function.name
        )),
    }
    match function.range {
        Some((start, end)) => {
            (cfg.fn_start, cfg.fn_end) = (start, end);
            coverage.location = true;
        }
        None => coverage.gaps.push(format!("location: {} is not in /proc/kallsyms", function.name)),
    }
    if !function.params_from_btf {
        coverage
            .gaps
            .push(format!("arguments of {}: taken from its upstream signature (no BTF to check)", function.name));
    }
    routine_reasons(&mut cfg, reasons);
    fill_struct_offsets(btf, &mut cfg, &mut coverage);
    (cfg, coverage)
}

/// Values that are not drops (`SKB_CONSUMED`, `SKB_NOT_DROPPED_YET`) are filtered in the kernel.
fn routine_reasons(cfg: &mut DropConfig, reasons: &DropReasons) {
    cfg.reason_consumed = reasons.value_of("CONSUMED").unwrap_or(ABSENT);
    cfg.reason_not_dropped = reasons.value_of("NOT_DROPPED_YET").unwrap_or(ABSENT);
}

fn fill_struct_offsets(btf: Result<&KernelBtf, &str>, cfg: &mut DropConfig, coverage: &mut DropCoverage) {
    let btf = match btf {
        Ok(btf) => btf,
        Err(why) => {
            coverage.gaps.push(format!(
                "device, netns and packet headers: no kernel BTF ({why}); only reason, location and protocol are reported"
            ));
            return;
        }
    };
    // Each lookup is optional: a missing member only disables what depends on it.
    let mut member = |strct: &str, path: &str, size: u32| -> u32 {
        match btf.member(strct, path) {
            Ok(m) if m.size == size => m.offset,
            Ok(m) => {
                coverage.gaps.push(format!("struct {strct}.{path} has size {} (expected {size})", m.size));
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
    cfg.skb_protocol = member("sk_buff", "protocol", 2);
    // `tail` is an offset (u32) on 64-bit kernels; elsewhere a pointer, which we don't use.
    cfg.skb_tail = member("sk_buff", "tail", 4);
    cfg.dev_ifindex = member("net_device", "ifindex", 4);
    cfg.dev_name = member("net_device", "name", 16);
    cfg.dev_net = member("net_device", "nd_net.net", ptr);
    cfg.sk_net = member("sock", "__sk_common.skc_net.net", ptr);
    cfg.net_inum = member("net", "ns.inum", 4);
    coverage.device_and_netns = cfg.skb_dev != ABSENT && cfg.dev_ifindex != ABSENT && cfg.net_inum != ABSENT;
    coverage.headers = cfg.skb_head != ABSENT && cfg.skb_network_header != ABSENT;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_for(format_text: &str) -> (DropConfig, DropCoverage) {
        let format = TracepointFormat::parse(format_text).unwrap();
        let reasons = DropReasons::resolve(None, Some(&format));
        config_from(&format, &reasons, Err("not in this test")).unwrap()
    }

    /// The two kernels' layouts differ (6.11 added `rx_sk`); the offsets must follow the
    /// format files, not a compiled-in layout.
    #[test]
    fn offsets_follow_each_kernels_format() {
        let (cfg_61, cov_61) = config_for(include_str!("../../tests/fixtures/6.1-kfree_skb.format"));
        let (cfg_618, cov_618) = config_for(include_str!("../../tests/fixtures/6.18-kfree_skb.format"));
        assert_eq!((cfg_61.tp_skbaddr, cfg_61.tp_location, cfg_61.tp_protocol, cfg_61.tp_reason), (8, 16, 24, 28));
        assert_eq!((cfg_618.tp_skbaddr, cfg_618.tp_location, cfg_618.tp_protocol, cfg_618.tp_reason), (8, 16, 32, 36));
        assert!(cov_61.reason && cov_618.reason);
        // Without BTF: struct reads are off and the gap is reported.
        assert_eq!(cfg_61.skb_dev, ABSENT);
        assert!(cov_61.gaps.iter().any(|g| g.contains("no kernel BTF")));
        assert!(!cov_618.device_and_netns);
    }

    #[test]
    fn drop_reason_values_differ_between_kernels() {
        let f61 = TracepointFormat::parse(include_str!("../../tests/fixtures/6.1-kfree_skb.format")).unwrap();
        let f618 = TracepointFormat::parse(include_str!("../../tests/fixtures/6.18-kfree_skb.format")).unwrap();
        let r61 = DropReasons::resolve(None, Some(&f61));
        let r618 = DropReasons::resolve(None, Some(&f618));
        let nf61 = r61.value_of("NETFILTER_DROP").unwrap();
        let nf618 = r618.value_of("NETFILTER_DROP").unwrap();
        assert_eq!(r61.name(nf61), Some("NETFILTER_DROP"));
        assert_eq!(r618.name(nf618), Some("NETFILTER_DROP"));
        assert_eq!(r61.value_of("NO_SOCKET").and_then(|v| r61.name(v)), Some("NO_SOCKET"));
    }

    #[test]
    fn kernels_without_a_reason_field_still_attach() {
        let text = "name: kfree_skb\nID: 1\nformat:\n\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;\n\tfield:unsigned short protocol;\toffset:24;\tsize:2;\tsigned:0;\n\nprint fmt: \"x\"\n";
        let (cfg, cov) = config_for(text);
        assert_eq!(cfg.tp_reason, ABSENT);
        assert!(!cov.reason);
        assert!(cov.gaps.iter().any(|g| g.contains("5.17")));
    }

    #[test]
    fn btf_offsets_fill_the_struct_reads_on_this_kernel() {
        let Ok(btf) = KernelBtf::load(std::path::Path::new(crate::kernel::btf::VMLINUX)) else {
            eprintln!("skipped: no kernel BTF here");
            return;
        };
        let format = TracepointFormat::parse(include_str!("../../tests/fixtures/6.18-kfree_skb.format")).unwrap();
        let reasons = DropReasons::resolve(Some(&btf), Some(&format));
        let (cfg, cov) = config_from(&format, &reasons, Ok(&btf)).unwrap();
        assert!(cov.device_and_netns && cov.headers, "{:?}", cov.gaps);
        assert_ne!(cfg.skb_dev, cfg.skb_head);
        assert_ne!(cfg.net_inum, ABSENT);
        assert_ne!(cfg.skb_protocol, ABSENT);
    }

    #[test]
    fn drop_function_follows_btf_parameters() {
        let Ok(btf) = KernelBtf::load(std::path::Path::new(crate::kernel::btf::VMLINUX)) else {
            eprintln!("skipped: no kernel BTF here");
            return;
        };
        let kallsyms = Kallsyms::load().unwrap_or_default();
        let function = drop_function(Some(&btf), &kallsyms, true).unwrap();
        let params = btf.function_params(function.name).unwrap();
        assert_eq!(params[function.arg_skb as usize], "skb");
        assert_eq!(function.arg_reason.map(|i| params[i as usize].as_str()), Some("reason"));
        assert!(function.params_from_btf);
    }

    #[test]
    fn drop_function_without_btf_uses_upstream_signatures() {
        let kallsyms = Kallsyms::parse("ffffffff81000000 T kfree_skb_reason\nffffffff81000100 T next_fn\n");
        let f = drop_function(None, &kallsyms, false).unwrap();
        assert_eq!(
            (f.name, f.arg_skb, f.arg_reason, f.range),
            ("kfree_skb_reason", 0, Some(1), Some((0xffffffff81000000, 0xffffffff81000100)))
        );
        assert!(drop_function(None, &kallsyms, true).is_err(), "fentry needs BTF");
        let old = Kallsyms::parse("ffffffff81000000 T kfree_skb\nffffffff81000100 T next_fn\n");
        assert_eq!(drop_function(None, &old, false).unwrap().arg_reason, None);
        assert_eq!(DropBackend::from_name("kprobe"), Some(DropBackend::Kprobe));
        assert_eq!(DropBackend::from_name("bogus"), None);
    }
}
