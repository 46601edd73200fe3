//! Drop monitoring (kernel side: tracer-ebpf/src/drops.rs): fills the program's
//! `DROP_CONFIG` from the kfree_skb format file and BTF.

use tracer_ebpf::{DropConfig, ABSENT};

use crate::kernel::{btf::KernelBtf, drop_reasons::DropReasons, tracefs::TracepointFormat, KernelError, KernelFacts};

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
    let btf = facts.btf.as_ref().ok_or(facts.btf_missing.as_deref().unwrap_or("unknown"));
    config_from(&facts.kfree_skb, &facts.drop_reasons, btf)
}

/// The configuration from a kfree_skb format, the reason names, and BTF (or why it is missing).
pub fn config_from(
    format: &TracepointFormat,
    reasons: &DropReasons,
    btf: Result<&KernelBtf, &str>,
) -> Result<(DropConfig, DropCoverage), KernelError> {
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
    cfg.reason_consumed = reasons.value_of("CONSUMED").unwrap_or(ABSENT);
    cfg.reason_not_dropped = reasons.value_of("NOT_DROPPED_YET").unwrap_or(ABSENT);

    match btf {
        Ok(btf) => fill_from_btf(btf, &mut cfg, &mut coverage),
        Err(why) => coverage.gaps.push(format!(
            "device, netns and packet headers: no kernel BTF ({why}); only reason, location and protocol are reported"
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
        let reasons = DropReasons::resolve(None, &format);
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
        let r61 = DropReasons::resolve(None, &f61);
        let r618 = DropReasons::resolve(None, &f618);
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
        let reasons = DropReasons::resolve(Some(&btf), &format);
        let (cfg, cov) = config_from(&format, &reasons, Ok(&btf)).unwrap();
        assert!(cov.device_and_netns && cov.headers, "{:?}", cov.gaps);
        assert_ne!(cfg.skb_dev, cfg.skb_head);
        assert_ne!(cfg.net_inum, ABSENT);
    }
}
