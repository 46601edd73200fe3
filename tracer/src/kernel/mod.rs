//! What the running kernel offers, read at run time: tracefs formats, BTF, kallsyms,
//! drop-reason names, namespace names. Nothing about kernel layout is compiled in.

pub mod bpf_links;
pub mod btf;
pub mod cgroups;
pub mod drop_reasons;
pub mod features;
pub mod kallsyms;
pub mod netns;
pub mod routes;
pub mod tracefs;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use self::{btf::KernelBtf, drop_reasons::DropReasons, kallsyms::Kallsyms, tracefs::Tracefs};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("no usable tracefs: {0}. Mount it with `mount -t tracefs nodev /sys/kernel/tracing` or run as root")]
    NoTracefs(String),
    #[error("tracepoint {tracepoint} is not available: {why}")]
    MissingTracepoint { tracepoint: String, why: String },
    #[error("kernel BTF unavailable: {0}")]
    NoBtf(String),
    #[error("{member} not found in kernel BTF: {why}")]
    MissingMember { member: String, why: String },
}

/// Facts about the running kernel that the probes and the analyzer need.
#[derive(Debug)]
pub struct KernelFacts {
    pub release: String,
    pub tracefs: Tracefs,
    pub btf: Option<KernelBtf>,
    /// Why BTF is missing, when it is.
    pub btf_missing: Option<String>,
    pub kallsyms: std::sync::Arc<Kallsyms>,
    /// `skb:kfree_skb`'s format (its fields differ by version: reason 5.17+, rx_sk 6.11+),
    /// or why it cannot be read.
    pub kfree_skb: Result<tracefs::TracepointFormat, String>,
    pub drop_reasons: DropReasons,
}

/// The part of [`KernelFacts`] shown in reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KernelSummary {
    pub release: String,
    pub btf: bool,
    pub drop_reason_names: crate::decode::Word,
    pub kallsyms: bool,
}

impl KernelFacts {
    /// Reads everything. `DPTRACE_BTF` overrides the BTF path (`none` pretends there is none).
    pub fn probe() -> Result<Self, KernelError> {
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into());
        let tracefs = Tracefs::open_or_mount()?;
        let (btf, btf_missing) = match std::env::var("DPTRACE_BTF").ok().as_deref() {
            Some("none") => (None, Some("disabled by DPTRACE_BTF=none".to_string())),
            other => {
                let path = PathBuf::from(other.unwrap_or(btf::VMLINUX));
                match KernelBtf::load(&path) {
                    Ok(btf) => (Some(btf), None),
                    // A file the user named is meant to be used: not silently traced without.
                    Err(e) if other.is_some() => {
                        let why = match e {
                            KernelError::NoBtf(why) => why,
                            e => e.to_string(),
                        };
                        return Err(KernelError::NoBtf(format!(
                            "DPTRACE_BTF names no usable BTF file ({why}): point it at a kernel BTF such as {}, set it to `none`, or unset it",
                            btf::VMLINUX
                        )));
                    }
                    Err(e) => (None, Some(e.to_string())),
                }
            }
        };
        let kfree_skb = tracefs.format("skb", "kfree_skb").map_err(|e| e.to_string());
        let drop_reasons = DropReasons::resolve(btf.as_ref(), kfree_skb.as_ref().ok());
        let kallsyms = std::sync::Arc::new(Kallsyms::load().unwrap_or_default());
        Ok(Self { release, tracefs, btf, btf_missing, kallsyms, kfree_skb, drop_reasons })
    }

    pub fn summary(&self) -> KernelSummary {
        KernelSummary {
            release: self.release.clone(),
            btf: self.btf.is_some(),
            drop_reason_names: match self.drop_reasons.source {
                drop_reasons::ReasonSource::Btf => "btf".into(),
                drop_reasons::ReasonSource::TracefsFormat => "tracefs-format".into(),
                drop_reasons::ReasonSource::Unavailable => {
                    "unavailable (kfree_skb has no reason field; kernel < 5.17)".into()
                }
            },
            kallsyms: !self.kallsyms.is_empty(),
        }
    }
}

/// Returns freed heap memory to the kernel (glibc keeps it otherwise), after a large
/// structure such as the parsed BTF was dropped.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// CLOCK_MONOTONIC nanoseconds: the clock eBPF events carry (`bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}
