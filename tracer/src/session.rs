//! A tracing session: attach the probes, stream ring-buffer records through
//! decode → correlate → sinks until told to stop, then run the rules and summarise.

use std::{collections::HashSet, future::Future, path::PathBuf, time::Instant};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::{
    analyze::paths::PathAssembler,
    analyze::{Analyzer, Finding},
    decode::path::{PacketPath, PathOutcome},
    decode::{
        netfilter::{BridgeState, RuleCounter},
        DecodeError, Decoder, Event, WallClock,
    },
    kernel::{netns::NetnsNames, KernelFacts},
    output::{DropRow, PathsSummary, Sink, Summary},
    probes::{
        link_monitor::{LinkMonitor, MonitorRecord},
        netfilter::{namespace_scope, NamespaceState},
        ProbeError, ProbeOptions, Probes,
    },
};

/// Which events a session keeps.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Keep only events in these network namespaces (by inode).
    pub netns: Option<foldhash::HashSet<u32>>,
    /// Keep only events on this device name.
    pub iface: Option<String>,
    /// Threads whose link request was kept: their acks and kernel messages are kept too.
    kept_tids: foldhash::HashSet<u32>,
    /// Keep events whose namespace the kernel cannot tell (no BTF): without this, a netns
    /// filter would hide everything on such kernels.
    pub keep_unknown_netns: bool,
}

impl EventFilter {
    pub fn new(netns: Option<HashSet<u32>>, iface: Option<String>) -> Self {
        let netns = netns.map(|set| set.into_iter().collect());
        Self { netns, iface, kept_tids: Default::default(), keep_unknown_netns: false }
    }
}

impl EventFilter {
    fn keeps(&mut self, event: &Event) -> bool {
        match event {
            Event::Drop(d) => self.in_netns(d.netns) && self.on_iface(d.device.as_deref()),
            Event::LinkRequest(r) => {
                let keep = self.in_netns(r.actor.netns) && self.on_iface(r.ifname.as_deref());
                if keep {
                    // Bounded: a thread's answer follows its request within the same syscall pair.
                    if self.kept_tids.len() > 4096 {
                        self.kept_tids.clear();
                    }
                    self.kept_tids.insert(r.actor.tid);
                } else {
                    self.kept_tids.remove(&r.actor.tid);
                }
                keep
            }
            // Acks and messages follow their request (the correlation joins them by thread).
            Event::NetlinkAck(a) => self.kept_tids.contains(&a.actor.tid),
            Event::KernelMessage(m) => self.kept_tids.contains(&m.actor.tid),
            Event::LinkState(l) => self.in_netns(Some(l.netns)) && self.on_iface(l.ifname.as_deref()),
            // Module loads are global; requests belong to the thread's link request.
            Event::Module(m) => m.action == "loaded" || self.kept_tids.contains(&m.actor.tid),
            // These records name no device: with a device filter they cannot be told to
            // belong to it and are left out.
            Event::TcpReset(r) => self.in_netns(r.netns) && self.iface.is_none(),
            Event::IcmpError(i) => self.in_netns(i.netns) && self.iface.is_none(),
            Event::TcpConnect(c) => self.in_netns(c.netns) && self.iface.is_none(),
            // Counters belong to the namespace: they attribute the device's drops too.
            Event::RuleCounter(c) => self.in_netns(Some(c.netns)),
            Event::Bridge(b) => self.in_netns(Some(b.netns)) && self.on_iface(Some(&b.bridge)),
            Event::NetfilterVerdict(v) => self.in_netns(v.netns) && self.on_iface(v.device.as_deref()),
            // Loads name no device; attaches name an ifindex only.
            Event::BpfCommand(c) => self.in_netns(c.actor.netns) && self.iface.is_none(),
            Event::XdpException(x) => self.in_netns(x.netns) && self.on_iface(x.device.as_deref()),
            // A path is kept whole when one of its hops is in the namespace or on the device.
            Event::PacketHop(_) => true,
            Event::PacketPath(p) => {
                p.steps.iter().any(|s| self.in_netns(s.hop.netns) && self.on_iface(s.hop.device.as_deref()))
            }
        }
    }

    fn in_netns(&self, netns: Option<u32>) -> bool {
        match (&self.netns, netns) {
            (None, _) => true,
            (Some(set), Some(n)) => set.contains(&n),
            (Some(_), None) => self.keep_unknown_netns,
        }
    }

    fn on_iface(&self, device: Option<&str>) -> bool {
        self.iface.as_ref().is_none_or(|name| device == Some(name.as_str()))
    }
}

pub struct SessionOptions {
    pub probes: ProbeOptions,
    pub filter: EventFilter,
    /// Namespaces the link monitor watches; None: this one and every named one.
    pub monitor_netns: Option<Vec<PathBuf>>,
}

/// What a finished session found.
pub struct SessionReport {
    pub findings: Vec<Finding>,
    pub summary: Summary,
    /// Traced packets, when the path family was on.
    pub paths: Vec<crate::decode::path::PacketPath>,
}

/// decode → filter → correlate → sink, for records from any source.
struct Pipeline {
    decoder: Decoder,
    analyzer: Analyzer,
    filter: EventFilter,
    filtered: u64,
    decode_errors: u64,
    /// Joins hops into paths (with `--path`).
    paths: Option<PathAssembler>,
    path_counts: PathsSummary,
    /// Paths for the session report (bounded).
    kept_paths: Vec<PacketPath>,
}

/// Paths kept for the session report at most (the lab checks them; about 5 KiB each).
const MAX_KEPT_PATHS: usize = 1024;

impl Pipeline {
    fn process(&mut self, decoded: Result<Event, DecodeError>, sink: &mut dyn Sink) {
        match decoded {
            Ok(Event::PacketHop(mut hop)) => {
                if let Some(assembler) = self.paths.as_mut() {
                    if let Some(netns) = hop.netns {
                        hop.pod = self.decoder.pods.pod_of_netns(netns);
                    }
                    for path in assembler.push(hop) {
                        self.path(path, sink);
                    }
                }
            }
            Ok(mut event) if self.filter.keeps(&event) => {
                // Only kept events are looked up: the lookup is cached, but not free.
                self.decoder.pods.annotate(&mut event);
                self.analyzer.observe(&event);
                sink.event(&event);
            }
            Ok(_) => self.filtered += 1,
            Err(e) => {
                self.decode_errors += 1;
                log::debug!("undecodable record: {e}");
            }
        }
    }

    /// A completed path: counted, analysed, written out and kept for the report.
    fn path(&mut self, path: PacketPath, sink: &mut dyn Sink) {
        let event = Event::PacketPath(path);
        if !self.filter.keeps(&event) {
            self.filtered += 1;
            return;
        }
        let Event::PacketPath(path) = &event else { return };
        let counts = &mut self.path_counts;
        counts.traced += 1;
        match path.outcome {
            PathOutcome::Delivered | PathOutcome::Sent { .. } => counts.delivered += 1,
            PathOutcome::Dropped { .. } | PathOutcome::TransmitFailed { .. } => counts.dropped += 1,
            PathOutcome::Unfinished => counts.unfinished += 1,
        }
        if self.kept_paths.len() < MAX_KEPT_PATHS {
            // The report needs the hops, not the captured bytes (sinks had them).
            let mut kept = path.clone();
            kept.steps.iter_mut().for_each(|s| s.hop.bytes = Vec::new());
            self.kept_paths.push(kept);
        }
        self.analyzer.observe(&event);
        sink.event(&event);
    }

    /// Closes the paths still open (end of session).
    fn close_paths(&mut self, sink: &mut dyn Sink) {
        let closed = self.paths.as_mut().map(|a| a.close_idle(u64::MAX)).unwrap_or_default();
        for path in closed {
            self.path(path, sink);
        }
    }

    fn drain_ring(&mut self, ring: &mut RingBuf<MapData>, sink: &mut dyn Sink) {
        while let Some(record) = ring.next() {
            let decoded = self.decoder.decode(&record);
            self.process(decoded, sink);
        }
    }

    fn monitor_record(&mut self, record: &MonitorRecord, sink: &mut dyn Sink) {
        // Notifications other than link changes (none are subscribed) are ignored.
        if let Some(state) = self.decoder.decode_monitor(record) {
            self.process(Ok(Event::LinkState(state)), sink);
        }
    }
}

pub struct Session {
    /// The kernel's facts, without its BTF once the probes are attached.
    facts: KernelFacts,
    kernel: crate::kernel::KernelSummary,
    probes: Probes,
    events: AsyncFd<RingBuf<MapData>>,
    monitor: Option<LinkMonitor>,
    pipeline: Pipeline,
    started: Instant,
    /// Rulesets and bridges at the start, for the netfilter family (None when it is off).
    namespaces: Option<NamespaceWatch>,
}

/// What the netfilter family read from the namespaces at the start.
struct NamespaceWatch {
    /// The namespaces asked for; None: this one and every named one, re-listed at the end.
    only: Option<Vec<PathBuf>>,
    before: NamespaceState,
}

impl Session {
    /// Reads the kernel's facts and attaches the probes. Must run inside a tokio runtime.
    pub fn start(options: SessionOptions) -> Result<Self, ProbeError> {
        // The rulesets and bridges are read while the probes attach (both take a while).
        let namespace_reader = options.probes.netfilter.then(|| {
            let only = options.monitor_netns.clone();
            std::thread::spawn(move || {
                let before = NamespaceState::take(&namespace_scope(only.as_deref()));
                NamespaceWatch { only, before }
            })
        });
        // Pod names are listed (crictl, in the background) while the probes attach.
        let pods = crate::pods::PodResolver::start();
        let mut facts = KernelFacts::probe()?;
        // What needs the kernel's BTF, before `Probes::attach` drops it.
        let kernel = facts.summary();
        let bpf_cmds = {
            let (xdp, _) = crate::probes::xdp::xdp_config(&facts, crate::probes::xdp::XdpBackend::Tracepoints);
            [xdp.cmd_prog_load, xdp.cmd_btf_load, xdp.cmd_link_create]
        };
        let bpf_names = std::sync::Arc::new(crate::decode::xdp::BpfNames::resolve(facts.btf.as_ref()));
        let mut probes = Probes::attach(&mut facts, &options.probes)?;
        // aya's own parse of the BTF is gone too: give the memory back for a long session.
        crate::kernel::release_free_memory();
        let ring = probes.take_events().ok_or_else(|| ProbeError::Load("the EVENTS ring buffer is missing".into()))?;
        // SAFETY: the ring buffer owns its map fd and keeps it open and unchanged until the
        // AsyncFd (which owns the ring buffer) is dropped.
        let events = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| ProbeError::Load(format!("cannot poll the ring buffer: {e}")))?;
        let decoder = Decoder {
            reasons: facts.drop_reasons.clone(),
            kallsyms: facts.kallsyms.clone(),
            cgroups: crate::kernel::cgroups::CgroupPaths::new(),
            netns: NetnsNames::new(),
            clock: WallClock::now(),
            record_formats: std::sync::Arc::new(probes.record_formats.clone()),
            answer_functions: std::sync::Arc::new(probes.answer_functions.clone()),
            bpf_cmds,
            bpf_names,
            ifnames: Default::default(),
            mtus: Default::default(),
            locations: Default::default(),
            times: Default::default(),
            pods: {
                pods.wait_ready();
                pods
            },
        };
        let namespaces = namespace_reader.and_then(|reader| reader.join().ok());
        let monitor = options.probes.links.then(|| LinkMonitor::start(options.monitor_netns));
        let mut filter = options.filter;
        let blind: Vec<&str> = probes
            .hooks
            .iter()
            .filter(|h| h.coverage["device_and_netns"] == false || h.coverage["actor_netns_and_parent"] == false)
            .map(|h| h.family.as_ref())
            .collect();
        if filter.netns.is_some() && !blind.is_empty() {
            filter.keep_unknown_netns = true;
            log::warn!(
                "this kernel does not tell the network namespace of {} events (no BTF): the namespace filter keeps them all",
                blind.join(" and ")
            );
        }
        let path_filter = options.probes.path.as_ref().and_then(|p| p.filter.clone());
        let pipeline = Pipeline {
            decoder,
            analyzer: Analyzer::new(),
            filter,
            filtered: 0,
            decode_errors: 0,
            paths: options.probes.path.as_ref().map(|_| PathAssembler::new(path_filter)),
            path_counts: PathsSummary::default(),
            kept_paths: Vec::new(),
        };
        Ok(Self { facts, kernel, probes, events, monitor, pipeline, started: Instant::now(), namespaces })
    }

    pub fn facts(&self) -> &KernelFacts {
        &self.facts
    }

    /// The kernel facts the rules read (taken before the BTF was dropped).
    pub fn kernel(&self) -> &crate::kernel::KernelSummary {
        &self.kernel
    }

    /// The backend each hook family got.
    pub fn hooks(&self) -> &[crate::probes::HookStatus] {
        &self.probes.hooks
    }

    /// Streams events to `sink` until `stop` completes, then drains what is left.
    pub async fn run_until<T>(&mut self, stop: impl Future<Output = T>, sink: &mut dyn Sink) -> std::io::Result<T> {
        tokio::pin!(stop);
        // Records below the wake-up threshold do not wake us: collect them regularly.
        let mut drain = tokio::time::interval(crate::probes::DRAIN_INTERVAL);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            let monitor = async {
                match self.monitor.as_mut() {
                    Some(m) => m.receiver.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                guard = self.events.readable_mut() => {
                    let mut guard = guard?;
                    self.pipeline.drain_ring(guard.get_inner_mut(), sink);
                    guard.clear_ready();
                }
                Some(record) = monitor => self.pipeline.monitor_record(&record, sink),
                _ = drain.tick() => self.pipeline.drain_ring(self.events.get_mut(), sink),
                result = &mut stop => break result,
            }
        };
        self.drain(sink);
        Ok(result)
    }

    /// Processes whatever has arrived, without waiting.
    pub fn drain(&mut self, sink: &mut dyn Sink) {
        self.pipeline.drain_ring(self.events.get_mut(), sink);
        if let Some(monitor) = self.monitor.as_mut() {
            while let Ok(record) = monitor.receiver.try_recv() {
                self.pipeline.monitor_record(&record, sink);
            }
        }
    }

    /// The path family's counts and latencies: from the paths seen, or (aggregate mode) from
    /// the kernel's per-hop counters.
    fn paths_summary(&mut self) -> Option<PathsSummary> {
        let assembler = self.pipeline.paths.as_ref()?;
        let mut summary = self.pipeline.path_counts.clone();
        summary.filtered = assembler.filtered;
        summary.filter = self
            .probes
            .hooks
            .iter()
            .find(|h| h.family == "path")
            .and_then(|h| h.coverage["filter"].as_str().map(str::to_string));
        summary.latency = assembler.latency.summary();
        if self.probes.path_aggregate() {
            let counters = self.probes.path_hops();
            let decoder = &mut self.pipeline.decoder;
            let mut names = std::collections::HashMap::new();
            for (key, _) in &counters {
                for point in [key.from, key.to] {
                    names.entry((point.netns, point.ifindex)).or_insert_with(|| {
                        let netns = decoder.name_netns(point.netns);
                        let device = netns.as_deref().and_then(|n| {
                            crate::kernel::netns::ifname_in(&crate::kernel::netns::path_of_name(n), point.ifindex)
                        });
                        (
                            netns.unwrap_or_else(|| point.netns.to_string()),
                            device.unwrap_or_else(|| format!("if{}", point.ifindex)),
                        )
                    });
                }
            }
            let label = |p: &tracer_ebpf::PathPoint| {
                let (netns, device) = &names[&(p.netns, p.ifindex)];
                format!("{} {device}@{netns}", crate::decode::path::hook_word(p.hook))
            };
            summary.latency = crate::analyze::paths::PathLatency::from_counters(&counters, label).summary();
            let ends = |hook: u32| {
                counters
                    .iter()
                    .filter(|(k, _)| k.from.hook == tracer_ebpf::PATH_HOP_END_TO_END && k.to.hook == hook)
                    .map(|(_, s)| s.packets)
                    .sum::<u64>()
            };
            summary.delivered = ends(tracer_ebpf::path_hook::CONSUME) + ends(tracer_ebpf::path_hook::DELIVER);
            summary.dropped = ends(tracer_ebpf::path_hook::FREE) + ends(tracer_ebpf::path_hook::XMIT_ERROR);
            summary.traced = counters.iter().filter(|(k, _)| k.from.hook == 0).map(|(_, s)| s.packets).sum();
            summary.unfinished = summary.traced.saturating_sub(summary.delivered + summary.dropped);
        }
        Some(summary)
    }

    /// Feeds the XDP exception counters the kernel kept into the pipeline as events.
    fn xdp_exceptions(&mut self, sink: &mut dyn Sink) {
        let counters = self.probes.xdp_exceptions();
        for (key, value) in counters {
            let decoder = &mut self.pipeline.decoder;
            let times = (decoder.wall_time(value.first_ns), decoder.wall_time(value.last_ns));
            let name = (key.netns != 0).then(|| decoder.name_netns(key.netns)).flatten();
            let event = crate::decode::xdp::decode_exception(&key, &value, times, name);
            self.pipeline.process(Ok(Event::XdpException(event)), sink);
        }
    }

    /// Feeds what changed in the watched namespaces (rule counters, bridge traffic) into the
    /// pipeline as events.
    fn namespace_changes(&mut self, watch: &NamespaceWatch, sink: &mut dyn Sink) {
        let after = NamespaceState::take(&namespace_scope(watch.only.as_deref()));
        let (hits, bridges) = after.changes_since(&watch.before);
        let now = crate::kernel::monotonic_ns();
        let decoder = &mut self.pipeline.decoder;
        let time = decoder.wall_time(now);
        let mut events = Vec::new();
        for (hit, no_baseline) in hits {
            let name = decoder.name_netns(hit.netns);
            events.push(Event::RuleCounter(RuleCounter::from_hit(hit, time.clone(), now, name, no_baseline)));
        }
        for (snapshot, bridge, packets) in bridges {
            events.push(Event::Bridge(BridgeState {
                time: time.clone(),
                ts_ns: now,
                netns: snapshot.netns,
                netns_name: decoder.name_netns(snapshot.netns),
                pod: None,
                bridge: bridge.name.clone(),
                ports: bridge.ports.clone(),
                packets,
                br_netfilter_loaded: snapshot.br_netfilter_loaded,
                call_iptables: snapshot.call_iptables,
                call_ip6tables: snapshot.call_ip6tables,
                bridge_nf_call_iptables: bridge.nf_call_iptables,
                bridge_nf_call_ip6tables: bridge.nf_call_ip6tables,
            }));
        }
        for event in events {
            self.pipeline.process(Ok(event), sink);
        }
    }

    /// Runs the rules, writes findings and the summary to `sink`, and detaches everything.
    pub fn finish(mut self, sink: &mut dyn Sink, command_status: Option<String>) -> SessionReport {
        // Stop the monitor first: its sockets hold the namespaces they watch.
        self.monitor.take();
        if let Some(watch) = self.namespaces.take() {
            self.namespace_changes(&watch, sink);
        }
        self.xdp_exceptions(sink);
        self.pipeline.close_paths(sink);
        let paths_summary = self.paths_summary();
        let kernel = self.kernel.clone();
        let analyzer = &self.pipeline.analyzer;
        let findings = analyzer.findings(&kernel);
        for f in &findings {
            sink.finding(f);
        }
        let state = analyzer.state();
        let summary = Summary {
            duration_secs: self.started.elapsed().as_secs_f64(),
            events: state.events,
            drops: state.total_drops(),
            drops_by_reason: state
                .drops_by_reason_and_location()
                .into_iter()
                .map(|(reason, location, count)| DropRow { reason, location, count })
                .collect(),
            lost_events: self.probes.lost(),
            filtered_events: self.pipeline.filtered,
            decode_errors: self.pipeline.decode_errors,
            findings: findings.len(),
            kernel,
            hooks: self.probes.hooks.clone(),
            command_status,
            paths: paths_summary,
            record: None,
        };
        sink.summary(&summary);
        SessionReport { findings, summary, paths: std::mem::take(&mut self.pipeline.kept_paths) }
    }
}
