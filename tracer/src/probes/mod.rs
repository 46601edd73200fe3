//! Loads dptrace's eBPF object (embedded at build time), configures it for this kernel and
//! attaches each hook family. Everything is attached through fd-owned links: when the
//! process exits, however it exits, the kernel detaches it all. Nothing is pinned.

pub mod drops;

use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
    Ebpf, EbpfLoader,
};
use serde::Serialize;
use tracer_ebpf::names;

use crate::kernel::KernelFacts;

/// The kernel-side object, built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf"));

/// Default ring buffer size: about 19,000 drop events in flight.
pub const DEFAULT_BUFFER_BYTES: u32 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Kernel(#[from] crate::kernel::KernelError),
    #[error("loading the eBPF programs failed: {0}. dptrace needs root (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN)")]
    Load(String),
    #[error("attaching {hook} failed: {why}")]
    Attach { hook: String, why: String },
}

/// Which backend a hook family got on this kernel, and what it cannot see.
#[derive(Debug, Clone, Serialize)]
pub struct HookStatus {
    pub family: &'static str,
    pub backend: String,
    pub coverage: serde_json::Value,
}

/// The loaded, attached programs. Dropping this detaches everything.
pub struct Probes {
    ebpf: Ebpf,
    pub hooks: Vec<HookStatus>,
}

impl Probes {
    pub fn attach(facts: &KernelFacts, buffer_bytes: u32) -> Result<Self, ProbeError> {
        let (drop_config, coverage) = drops::drop_config(facts)?;
        let mut ebpf = EbpfLoader::new()
            .override_global(names::DROP_CONFIG, &drop_config, true)
            .map_max_entries(names::EVENTS, buffer_bytes)
            .load(EBPF_OBJECT)
            .map_err(|e| ProbeError::Load(error_chain(&e)))?;
        let program: &mut TracePoint = ebpf
            .program_mut(names::PROG_KFREE_SKB)
            .ok_or_else(|| ProbeError::Load("program kfree_skb missing from the object".into()))?
            .try_into()
            .map_err(|e| ProbeError::Load(error_chain(&e)))?;
        program.load().map_err(|e| ProbeError::Load(error_chain(&e)))?;
        program
            .attach("skb", "kfree_skb")
            .map_err(|e| ProbeError::Attach { hook: "skb:kfree_skb".into(), why: error_chain(&e) })?;
        let hooks = vec![HookStatus {
            family: "drops",
            backend: "tracepoint skb:kfree_skb".into(),
            coverage: serde_json::to_value(&coverage).unwrap_or_default(),
        }];
        for gap in &coverage.gaps {
            log::warn!("drops: {gap}");
        }
        Ok(Self { ebpf, hooks })
    }

    /// The event ring buffer; can be taken once.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        RingBuf::try_from(self.ebpf.take_map(names::EVENTS)?).ok()
    }

    /// Events the kernel side could not fit into the ring buffer, summed over CPUs.
    pub fn lost(&self) -> u64 {
        let Some(map) = self.ebpf.map(names::LOST) else {
            return 0;
        };
        let Ok(array) = PerCpuArray::<_, u64>::try_from(map) else {
            return 0;
        };
        array.get(&0, 0).map(|values| values.iter().sum()).unwrap_or(0)
    }
}

/// An error and its sources on one line: aya's top-level messages alone rarely say why.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}
