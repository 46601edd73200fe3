//! Loads dptrace's eBPF object (embedded at build time), configures it for this kernel and
//! attaches each hook family. Everything is attached through fd-owned links: when the
//! process exits, however it exits, the kernel detaches it all. Nothing is pinned.

pub mod bridges;
pub mod drops;
pub mod link_monitor;
pub mod links;
pub mod netfilter;
pub mod path;
pub mod rule_counters;
pub mod xdp;

use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{FEntry, KProbe, RawTracePoint, TracePoint},
    Btf, Ebpf, EbpfLoader,
};
use serde::{Deserialize, Serialize};
use tracer_ebpf::{names, DropConfig};

use self::drops::{DropBackend, DropCoverage};
use crate::kernel::KernelFacts;
use tracer_ebpf::{LinkConfig, NetfilterConfig, PathConfig, XdpConfig};

/// The kernel-side object, built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf"));

/// Present when the kernel can create kprobes through perf (CONFIG_KPROBES + KPROBE_EVENTS).
pub(crate) const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

/// Default ring buffer size: about 19,000 drop events in flight.
pub const DEFAULT_BUFFER_BYTES: u32 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Kernel(#[from] crate::kernel::KernelError),
    #[error("loading the eBPF programs failed: {0}. dptrace needs root (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN)")]
    Load(String),
    #[error("no backend could attach the {family} hooks: {tried}; `dptrace check` shows what this kernel offers")]
    NoBackend { family: &'static str, tried: String },
}

/// A backend that was tried and did not attach, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Unavailable {
    pub backend: String,
    pub why: String,
}

/// Which backend a hook family got on this kernel, and what it cannot see.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HookStatus {
    pub family: crate::decode::Word,
    /// Backend id, as `--backend FAMILY=ID` takes it.
    pub backend_id: String,
    /// What exactly was attached, e.g. `tracepoint skb:kfree_skb` or `kprobe kfree_skb_reason`.
    pub backend: String,
    /// What the backend can and cannot see (`gaps`).
    pub coverage: serde_json::Value,
    /// Better backends that were tried first, and why they did not attach.
    pub unavailable: Vec<Unavailable>,
}

/// One backend of one hook family, as probed by attaching it.
#[derive(Debug, Clone, Serialize)]
pub struct BackendProbe {
    pub family: &'static str,
    pub backend: &'static str,
    pub available: bool,
    /// What attached (`kprobe kfree_skb_reason`) or why it did not.
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coverage: Option<serde_json::Value>,
}

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    pub buffer_bytes: u32,
    /// Forces one drops backend instead of the automatic chain.
    pub drops_backend: Option<DropBackend>,
    /// Attach the link control-plane family too.
    pub links: bool,
    /// Forces one links backend instead of the chain (tracepoints, then kprobes).
    pub links_backend: Option<links::LinkBackend>,
    /// Attach the netfilter family (resets, ICMP errors, connection attempts) too.
    pub netfilter: bool,
    /// Forces one netfilter backend.
    pub netfilter_backend: Option<netfilter::NetfilterBackend>,
    /// Attach the xdp family (BPF loads and attaches, XDP exceptions) too.
    pub xdp: bool,
    /// Forces one xdp backend.
    pub xdp_backend: Option<xdp::XdpBackend>,
    /// Forces how the xdp family observes `bpf()` commands.
    pub bpf_backend: Option<xdp::CommandBackend>,
    /// Observe `bpf()` commands with syscall tracepoints where nothing cheaper works,
    /// although every syscall on the machine pays for it (the lab does; sessions do not).
    pub bpf_syscalls_fallback: bool,
    /// Trace packets hop by hop (the path family), off unless asked for.
    pub path: Option<path::PathOptions>,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            buffer_bytes: DEFAULT_BUFFER_BYTES,
            drops_backend: None,
            links: true,
            links_backend: None,
            netfilter: true,
            netfilter_backend: None,
            xdp: true,
            xdp_backend: None,
            bpf_backend: None,
            bpf_syscalls_fallback: false,
            path: None,
        }
    }
}

/// The loaded, attached programs. Dropping this detaches everything.
pub struct Probes {
    ebpf: Ebpf,
    pub hooks: Vec<HookStatus>,
    /// Formats of the tracepoints whose records the netfilter family copies.
    pub record_formats: netfilter::RecordFormats,
    /// Functions the netfilter family's answer kprobes are attached to.
    pub answer_functions: Vec<netfilter::AnswerFunction>,
}

impl Probes {
    /// Attaches each hook family with the first backend of its chain that works here (or
    /// the one forced by `options`). Everything that needs the kernel's BTF is worked out
    /// first; the parsed BTF (about 40 MiB) is then dropped from `facts` before aya parses
    /// the kernel's BTF again to load the object, so that the two never coexist: this is
    /// the session's memory peak.
    pub fn attach(facts: &mut KernelFacts, options: &ProbeOptions) -> Result<Self, ProbeError> {
        let chain: Vec<DropBackend> = match options.drops_backend {
            Some(forced) => vec![forced],
            None => DropBackend::CHAIN.to_vec(),
        };
        let mut unavailable = Vec::new();
        let link_chain = match options.links_backend {
            Some(forced) => vec![forced],
            None => links::LinkBackend::CHAIN.to_vec(),
        };
        // The link configuration is fixed at load time: take the first backend whose
        // prerequisites this kernel has (attach errors of the links family are reported below).
        let link_backend = link_chain.iter().copied().find(|b| links::available(facts, *b)).unwrap_or(link_chain[0]);
        let (link_config, link_coverage) = links::link_config(facts, link_backend);
        let nf_chain: Vec<netfilter::NetfilterBackend> = match options.netfilter_backend {
            Some(forced) => vec![forced],
            None => netfilter::NetfilterBackend::CHAIN.to_vec(),
        };
        // The backends of one chain share their configuration (they differ in kprobes).
        let (nf_config, _, record_formats) = netfilter::netfilter_config(facts, nf_chain[0]);
        let nf_plans: Vec<NetfilterPlan> = nf_chain.iter().map(|&b| NetfilterPlan::new(facts, b)).collect();
        let xdp_chain: Vec<xdp::XdpBackend> = match options.xdp_backend {
            Some(forced) => vec![forced],
            None => xdp::XdpBackend::CHAIN.to_vec(),
        };
        let xdp_plans: Vec<(xdp::XdpBackend, XdpConfig, xdp::XdpCoverage)> = xdp_chain
            .iter()
            .map(|&b| {
                let (config, coverage) = xdp::xdp_config(facts, b);
                (b, config, coverage)
            })
            .collect();
        let xdp_config = xdp_plans[0].1;
        let command_chain = xdp::CommandBackend::chain(options.bpf_backend, options.bpf_syscalls_fallback);
        let path_options = options.path.clone().unwrap_or_default();
        let (path_config, mut path_coverage) = path::path_config(facts, &path_options);
        let path_functions = if options.path.is_some() { path::functions(facts) } else { vec![] };
        let configs = Configs { links: link_config, netfilter: nf_config, xdp: xdp_config, path: path_config };
        let drop_plans: Vec<(DropBackend, DropPlan)> =
            chain.iter().map(|&b| (b, drops::drop_config(facts, b).map_err(|e| e.to_string()))).collect();
        let had_btf = facts.btf.is_some();
        facts.btf = None;
        crate::kernel::release_free_memory();
        for (backend, plan) in drop_plans {
            match attach_drops(plan, backend, options.buffer_bytes, &configs) {
                Ok((mut ebpf, detail, coverage)) => {
                    for gap in &coverage.gaps {
                        log::info!("drops: {gap}");
                    }
                    let mut hooks = vec![HookStatus {
                        family: "drops".into(),
                        backend_id: backend.name().into(),
                        backend: detail,
                        coverage: serde_json::to_value(&coverage).unwrap_or_default(),
                        unavailable,
                    }];
                    if options.links {
                        hooks.push(attach_links(&mut ebpf, &link_coverage, link_backend, &facts.kallsyms)?);
                    }
                    let mut answer_functions = vec![];
                    if options.netfilter {
                        let (status, answers) = attach_netfilter(&mut ebpf, &nf_plans)?;
                        hooks.push(status);
                        answer_functions = answers;
                    }
                    if options.xdp {
                        let forced = options.bpf_backend.is_some();
                        hooks.push(attach_xdp(&mut ebpf, facts, &xdp_plans, &command_chain, forced)?);
                    }
                    if options.path.is_some() {
                        let detail = path::attach(&mut ebpf, &mut path_coverage, &path_functions).map_err(|why| {
                            // Without BTF there is nothing to try: say why it is missing.
                            let advice = match &facts.btf_missing {
                                Some(missing) if !had_btf => format!(
                                    " (kernel BTF: {missing}); --path needs a kernel built with CONFIG_DEBUG_INFO_BTF: trace without --path"
                                ),
                                _ => String::new(),
                            };
                            ProbeError::NoBackend { family: "path", tried: format!("tracepoints: {why}{advice}") }
                        })?;
                        for gap in &path_coverage.gaps {
                            log::info!("path: {gap}");
                        }
                        hooks.push(HookStatus {
                            family: "path".into(),
                            backend_id: "tracepoints".into(),
                            backend: detail,
                            coverage: serde_json::to_value(&path_coverage).unwrap_or_default(),
                            unavailable: vec![],
                        });
                    }
                    let record_formats = if options.netfilter { record_formats } else { Default::default() };
                    return Ok(Self { ebpf, hooks, record_formats, answer_functions });
                }
                Err(why) => {
                    log::info!("drops: backend {backend} unavailable: {why}");
                    unavailable.push(Unavailable { backend: backend.name().into(), why });
                }
            }
        }
        let tried = unavailable.iter().map(|u| format!("{}: {}", u.backend, u.why)).collect::<Vec<_>>().join("; ");
        Err(ProbeError::NoBackend { family: "drops", tried })
    }

    /// Tries every backend of every family (attaching and detaching each): what `check` reports.
    pub fn survey(facts: &KernelFacts) -> Vec<BackendProbe> {
        let (link_config, _) = links::link_config(facts, links::LinkBackend::Tracepoints);
        let configs = Configs {
            links: link_config,
            netfilter: NetfilterConfig::absent(),
            xdp: XdpConfig::absent(),
            path: PathConfig::absent(),
        };
        let probe =
            |family: &'static str, backend: &'static str, result: Result<(String, serde_json::Value), String>| {
                match result {
                    Ok((detail, coverage)) => {
                        BackendProbe { family, backend, available: true, detail, coverage: Some(coverage) }
                    }
                    Err(why) => BackendProbe { family, backend, available: false, detail: why, coverage: None },
                }
            };
        let mut probes: Vec<BackendProbe> = DropBackend::ALL
            .into_iter()
            .map(|backend| {
                let plan = drops::drop_config(facts, backend).map_err(|e| e.to_string());
                let result =
                    attach_drops(plan, backend, 4096, &configs).map(|(_detached_on_drop, detail, coverage)| {
                        (detail, serde_json::to_value(coverage).unwrap_or_default())
                    });
                probe("drops", backend.name(), result)
            })
            .collect();
        for backend in links::LinkBackend::CHAIN {
            let (link_config, link_coverage) = links::link_config(facts, backend);
            let configs = Configs {
                links: link_config,
                netfilter: NetfilterConfig::absent(),
                xdp: XdpConfig::absent(),
                path: PathConfig::absent(),
            };
            let result = load_object(&DropConfig::absent(), &configs, 4096)
                .and_then(|mut ebpf| links::attach(&mut ebpf, &link_coverage, backend, &facts.kallsyms))
                .map(|detail| (detail, serde_json::to_value(&link_coverage).unwrap_or_default()));
            probes.push(probe("links", backend.name(), result));
        }
        for backend in netfilter::NetfilterBackend::ALL {
            let (nf_config, mut nf_coverage, formats) = netfilter::netfilter_config(facts, backend);
            let (answers, verdicts) = netfilter_kprobes(facts, backend, &nf_config, &formats);
            nf_coverage.set_answer_functions(&answers);
            nf_coverage.verdict_functions = verdicts.iter().map(|(f, _)| f.to_string()).collect();
            let configs = Configs {
                links: LinkConfig::absent(),
                netfilter: nf_config,
                xdp: XdpConfig::absent(),
                path: PathConfig::absent(),
            };
            let result = load_object(&DropConfig::absent(), &configs, 4096)
                .and_then(|mut ebpf| match backend {
                    b if b.uses_kprobes() && !std::path::Path::new(KPROBE_PMU).exists() => {
                        Err(format!("this kernel has no kprobes (no {KPROBE_PMU})"))
                    }
                    _ => netfilter::attach(&mut ebpf, &formats, &answers, &verdicts),
                })
                .map(|detail| (detail, serde_json::to_value(&nf_coverage).unwrap_or_default()));
            probes.push(probe("netfilter", backend.name(), result));
        }
        for backend in xdp::XdpBackend::CHAIN {
            let (config, mut coverage) = xdp::xdp_config(facts, backend);
            let configs = Configs {
                links: LinkConfig::absent(),
                netfilter: NetfilterConfig::absent(),
                xdp: config,
                path: PathConfig::absent(),
            };
            // What a session gets without options: bpf() commands only where that is cheap.
            let chain = xdp::CommandBackend::chain(None, false);
            let result = load_object(&DropConfig::absent(), &configs, 4096)
                .and_then(|mut ebpf| {
                    let mut parts = xdp::attach_commands(&mut ebpf, facts, &config, &mut coverage, &chain, false)?;
                    parts.push(xdp::attach_exceptions(&mut ebpf, backend, &coverage)?);
                    Ok(parts.join(" "))
                })
                .map(|detail| (detail, serde_json::to_value(&coverage).unwrap_or_default()));
            probes.push(probe("xdp", backend.name(), result));
        }
        let (config, mut coverage) = path::path_config(facts, &path::PathOptions::default());
        let configs = Configs {
            links: LinkConfig::absent(),
            netfilter: NetfilterConfig::absent(),
            xdp: XdpConfig::absent(),
            path: config,
        };
        // The path programs read the skb offsets of the drops configuration.
        let drop_config =
            drops::drop_config(facts, DropBackend::Tracepoint).map(|(c, _, _)| c).unwrap_or(DropConfig::absent());
        let result = load_object(&drop_config, &configs, 4096)
            .and_then(|mut ebpf| path::attach(&mut ebpf, &mut coverage, &path::functions(facts)))
            .map(|detail| (detail, serde_json::to_value(&coverage).unwrap_or_default()));
        probes.push(probe("path", "tracepoints", result));
        probes
    }

    /// XDP exceptions the kernel side counted (per namespace, device, program and action).
    pub fn xdp_exceptions(&self) -> Vec<(tracer_ebpf::XdpExceptionKey, tracer_ebpf::XdpExceptionCount)> {
        xdp::exceptions(&self.ebpf)
    }

    /// Whether the path family counts in the kernel instead of sending hops.
    pub fn path_aggregate(&self) -> bool {
        self.hooks.iter().any(|h| h.family == "path" && h.coverage["aggregate"] == true)
    }

    /// The path family's per-hop counters (aggregate mode).
    pub fn path_hops(&self) -> Vec<(tracer_ebpf::PathHopKey, tracer_ebpf::PathHopStats)> {
        path::hop_counters(&self.ebpf)
    }

    /// The event ring buffer; can be taken once.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        RingBuf::try_from(self.ebpf.take_map(names::EVENTS)?).ok()
    }

    /// Events the kernel side could not fit into the ring buffer, summed over CPUs.
    pub fn lost(&self) -> u64 {
        let Some(map) = self.ebpf.map(names::LOST) else { return 0 };
        let Ok(array) = PerCpuArray::<_, u64>::try_from(map) else { return 0 };
        array.get(&0, 0).map(|values| values.iter().sum()).unwrap_or(0)
    }
}

/// The xdp family's status with the first exception backend of `chain` that attaches.
fn attach_xdp(
    ebpf: &mut Ebpf,
    facts: &KernelFacts,
    plans: &[(xdp::XdpBackend, XdpConfig, xdp::XdpCoverage)],
    command_chain: &[xdp::CommandBackend],
    forced_commands: bool,
) -> Result<HookStatus, ProbeError> {
    let (_, config, mut first) = plans[0].clone();
    let commands = xdp::attach_commands(ebpf, facts, &config, &mut first, command_chain, forced_commands)
        .map_err(|why| ProbeError::NoBackend { family: "xdp", tried: format!("bpf() commands: {why}") })?;
    let mut unavailable = Vec::new();
    for (backend, _, coverage) in plans {
        let (backend, mut coverage) = (*backend, coverage.clone());
        coverage.bpf_commands = first.bpf_commands;
        coverage.bpf_commands_via = first.bpf_commands_via;
        coverage.gaps.extend(first.gaps.iter().filter(|g| g.starts_with("BPF loads")).cloned());
        match xdp::attach_exceptions(ebpf, backend, &coverage) {
            Ok(detail) => {
                for gap in &coverage.gaps {
                    log::info!("xdp: {gap}");
                }
                let mut parts = commands.clone();
                parts.push(detail);
                return Ok(HookStatus {
                    family: "xdp".into(),
                    backend_id: backend.name().into(),
                    backend: parts.join(" "),
                    coverage: serde_json::to_value(&coverage).unwrap_or_default(),
                    unavailable,
                });
            }
            Err(why) => unavailable.push(Unavailable { backend: backend.name().into(), why }),
        }
    }
    let tried = unavailable.iter().map(|u| format!("{}: {}", u.backend, u.why)).collect::<Vec<_>>().join("; ");
    Err(ProbeError::NoBackend { family: "xdp", tried })
}

/// The answer functions and verdict functions `backend` hooks with kprobes on this kernel.
fn netfilter_kprobes(
    facts: &KernelFacts,
    backend: netfilter::NetfilterBackend,
    config: &NetfilterConfig,
    formats: &netfilter::RecordFormats,
) -> (Vec<netfilter::AnswerFunction>, Vec<(&'static str, &'static str)>) {
    let answers = if backend.uses_kprobes() { netfilter::answer_functions(facts, formats) } else { vec![] };
    let verdicts = match backend {
        netfilter::NetfilterBackend::Verdicts => netfilter::verdict_functions(facts, config),
        _ => vec![],
    };
    (answers, verdicts)
}

/// The netfilter family's status with the first backend of `chain` that attaches, and the
/// answer functions it hooked.
/// One netfilter backend, worked out while the kernel's BTF is at hand.
struct NetfilterPlan {
    backend: netfilter::NetfilterBackend,
    coverage: netfilter::NetfilterCoverage,
    formats: netfilter::RecordFormats,
    answers: Vec<netfilter::AnswerFunction>,
    verdicts: Vec<(&'static str, &'static str)>,
}

impl NetfilterPlan {
    fn new(facts: &KernelFacts, backend: netfilter::NetfilterBackend) -> Self {
        let (config, mut coverage, formats) = netfilter::netfilter_config(facts, backend);
        let (answers, verdicts) = netfilter_kprobes(facts, backend, &config, &formats);
        coverage.set_answer_functions(&answers);
        coverage.verdict_functions = verdicts.iter().map(|(f, _)| f.to_string()).collect();
        Self { backend, coverage, formats, answers, verdicts }
    }
}

fn attach_netfilter(
    ebpf: &mut Ebpf,
    plans: &[NetfilterPlan],
) -> Result<(HookStatus, Vec<netfilter::AnswerFunction>), ProbeError> {
    let mut unavailable = Vec::new();
    for plan in plans {
        let NetfilterPlan { backend, coverage, formats, answers, verdicts } = plan;
        let backend = *backend;
        if backend.uses_kprobes() && !std::path::Path::new(KPROBE_PMU).exists() {
            let why = format!("this kernel has no kprobes (no {KPROBE_PMU})");
            unavailable.push(Unavailable { backend: backend.name().into(), why });
            continue;
        }
        match netfilter::attach(ebpf, formats, answers, verdicts) {
            Ok(detail) => {
                for gap in &coverage.gaps {
                    log::info!("netfilter: {gap}");
                }
                let status = HookStatus {
                    family: "netfilter".into(),
                    backend_id: backend.name().into(),
                    backend: detail,
                    coverage: serde_json::to_value(coverage).unwrap_or_default(),
                    unavailable,
                };
                return Ok((status, answers.clone()));
            }
            Err(why) => {
                // Whatever attached before the failure is detached before the next backend.
                for name in [
                    names::PROG_ANSWER_SKB0,
                    names::PROG_ANSWER_SKB1,
                    names::PROG_ANSWER_SKB2,
                    names::PROG_TCP_SEND_RESET,
                    names::PROG_TCP_RECEIVE_RESET,
                    names::PROG_ICMP_SEND,
                    names::PROG_SOCK_SET_STATE,
                    names::PROG_NFT_ENTER,
                    names::PROG_IPT_ENTER,
                    names::PROG_VERDICT_EXIT,
                ] {
                    match ebpf.program_mut(name) {
                        Some(aya::programs::Program::KProbe(p)) => {
                            let _ = p.unload();
                        }
                        Some(aya::programs::Program::TracePoint(p)) => {
                            let _ = p.unload();
                        }
                        _ => {}
                    }
                }
                unavailable.push(Unavailable { backend: backend.name().into(), why });
            }
        }
    }
    let tried = unavailable.iter().map(|u| format!("{}: {}", u.backend, u.why)).collect::<Vec<_>>().join("; ");
    Err(ProbeError::NoBackend { family: "netfilter", tried })
}

/// The links family's status, or an error when it was asked for and cannot attach.
fn attach_links(
    ebpf: &mut Ebpf,
    coverage: &links::LinkCoverage,
    backend: links::LinkBackend,
    kallsyms: &crate::kernel::kallsyms::Kallsyms,
) -> Result<HookStatus, ProbeError> {
    let id = backend.name();
    let detail = links::attach(ebpf, coverage, backend, kallsyms)
        .map_err(|why| ProbeError::NoBackend { family: "links", tried: format!("{id}: {why}") })?;
    for gap in &coverage.gaps {
        log::info!("links: {gap}");
    }
    Ok(HookStatus {
        family: "links".into(),
        backend_id: id.into(),
        backend: detail,
        coverage: serde_json::to_value(coverage).unwrap_or_default(),
        unavailable: vec![],
    })
}

/// The configurations of the families other than drops (whose backend is chosen by loading).
struct Configs {
    links: LinkConfig,
    netfilter: NetfilterConfig,
    xdp: XdpConfig,
    path: PathConfig,
}

/// Records wake the session up only once this much of the ring buffer is used (an eighth);
/// the session drains the rest every [`DRAIN_INTERVAL`]. Fewer wake-ups cost the CPUs that
/// produce events (softirqs of the traced traffic) less.
fn wakeup_bytes(buffer_bytes: u32) -> u64 {
    u64::from(buffer_bytes / 8)
}

/// How often a session drains the ring buffer without being woken up.
pub const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// Loads the object with this kernel's configuration (nothing attached yet).
fn load_object(drop_config: &DropConfig, configs: &Configs, buffer_bytes: u32) -> Result<Ebpf, String> {
    EbpfLoader::new()
        .override_global(names::DROP_CONFIG, drop_config, true)
        .override_global(names::LINK_CONFIG, &configs.links, true)
        .override_global(names::NETFILTER_CONFIG, &configs.netfilter, true)
        .override_global(names::XDP_CONFIG, &configs.xdp, true)
        .override_global(names::PATH_CONFIG, &configs.path, true)
        .override_global(names::WAKEUP_BYTES, &wakeup_bytes(buffer_bytes), true)
        .map_max_entries(names::EVENTS, buffer_bytes)
        .load(EBPF_OBJECT)
        .map_err(|e| format!("loading the object: {}", error_chain(&e)))
}

/// Loads the object configured for `backend` and attaches the drop program.
/// Returns what was attached (`kprobe kfree_skb_reason`, …) and its coverage.
/// A drops backend's configuration, coverage and hooked function, or why it has none.
type DropPlan = Result<(DropConfig, DropCoverage, Option<drops::DropFunction>), String>;

fn attach_drops(
    plan: DropPlan,
    backend: DropBackend,
    buffer_bytes: u32,
    configs: &Configs,
) -> Result<(Ebpf, String, DropCoverage), String> {
    let (config, mut coverage, function) = plan?;
    let mut ebpf = load_object(&config, configs, buffer_bytes)?;
    let detail = match (backend, function) {
        (DropBackend::Tracepoint, _) if coverage.raw_tracepoint => match attach_raw_kfree_skb(&mut ebpf) {
            Ok(()) => "raw tracepoint kfree_skb".to_string(),
            // The classic tracepoint sees the same, at a higher cost per drop.
            Err(e) => {
                log::info!("drops: raw tracepoint kfree_skb: {e}; using the classic one");
                coverage.raw_tracepoint = false;
                attach_kfree_skb(&mut ebpf)?
            }
        },
        (DropBackend::Tracepoint | DropBackend::TracepointNoreason, _) => attach_kfree_skb(&mut ebpf)?,
        (DropBackend::Fentry, Some(function)) => {
            let btf = kernel_btf_for_aya().map_err(|e| format!("fentry needs BTF: {e}"))?;
            let program: &mut FEntry = program(&mut ebpf, names::PROG_DROP_FENTRY)?;
            program.load(function.name, &btf).map_err(|e| {
                format!("the kernel refused a `tracing` (fentry) program on {}: {}", function.name, error_chain(&e))
            })?;
            program.attach().map_err(|e| error_chain(&e))?;
            format!("fentry {}", function.name)
        }
        (DropBackend::Kprobe, Some(function)) => {
            if !std::path::Path::new(KPROBE_PMU).exists() {
                return Err(format!("this kernel has no kprobes (CONFIG_KPROBES off: no {KPROBE_PMU})"));
            }
            let program: &mut KProbe = program(&mut ebpf, names::PROG_DROP_KPROBE)?;
            program.load().map_err(|e| error_chain(&e))?;
            program
                .attach(function.name, 0)
                .map_err(|e| format!("kprobe on {}: {}", function.name, error_chain(&e)))?;
            format!("kprobe {}", function.name)
        }
        (_, None) => return Err("no drop function found".into()),
    };
    Ok((ebpf, detail, coverage))
}

fn attach_kfree_skb(ebpf: &mut Ebpf) -> Result<String, String> {
    let program: &mut TracePoint = program(ebpf, names::PROG_KFREE_SKB)?;
    program.load().map_err(|e| error_chain(&e))?;
    program.attach("skb", "kfree_skb").map_err(|e| error_chain(&e))?;
    Ok("tracepoint skb:kfree_skb".to_string())
}

fn attach_raw_kfree_skb(ebpf: &mut Ebpf) -> Result<(), String> {
    let program: &mut RawTracePoint = program(ebpf, names::PROG_KFREE_SKB_RAW)?;
    program.load().map_err(|e| error_chain(&e))?;
    program.attach("kfree_skb").map_err(|e| error_chain(&e))?;
    Ok(())
}

pub(crate) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the object"))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| error_chain(&e))
}

/// The kernel's BTF as aya reads it, honouring the `DPTRACE_BTF` override.
fn kernel_btf_for_aya() -> Result<Btf, String> {
    match std::env::var("DPTRACE_BTF").ok().as_deref() {
        Some("none") => Err("disabled by DPTRACE_BTF=none".into()),
        Some(path) => Btf::parse_file(path, aya::Endianness::default()).map_err(|e| e.to_string()),
        None => Btf::from_sys_fs().map_err(|e| e.to_string()),
    }
}

/// An error and its sources on one line: aya's top-level messages alone rarely say why.
/// A verifier log is reduced to its verdict (the line before the statistics).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let text = full_error_chain(e);
    match text.split_once(" Verifier output:") {
        Some((head, log)) => {
            let verdict = log
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("verification time"))
                .filter(|l| !l.is_empty())
                .last();
            match verdict {
                Some(v) => format!("{head} (verifier: {v})"),
                None => head.trim_end_matches('.').to_string(),
            }
        }
        None => text,
    }
}

fn full_error_chain(e: &dyn std::error::Error) -> String {
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
