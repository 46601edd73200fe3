//! The lab: reproduce known failures in throwaway namespaces while tracing, and check that
//! dptrace explains each with the expected finding. Used by `dptrace lab`, the demo and the
//! tests; everything it creates is removed afterwards, also when a step fails.

pub mod degraded;
pub mod fixtures;
pub mod netns;
pub mod overlay;
pub mod paths;
pub mod scenarios;
pub mod topology;
pub mod traffic;
pub mod xdp;

use std::{collections::HashSet, time::Duration};

use anyhow::{bail, Context};
use serde_json::json;

use self::{
    degraded::{Blind, Own},
    netns::Lab,
    scenarios::{AnyScenario, PATH_DEMO},
};
use crate::{
    analyze::{Finding, Severity},
    commands::{require_root, Outcome},
    decode::{path::PacketPath, Event},
    output::{self, Sink, Summary},
    packet_filter::PacketFilter,
    probes::{path::PathOptions, ProbeError, ProbeOptions},
    session::{EventFilter, Session, SessionOptions},
};

/// Time for the last events to arrive after the traffic was sent.
const SETTLE: Duration = Duration::from_millis(300);
/// Traced paths shown one line each; the rest are counted.
const MAX_PATH_NOTES: usize = 12;

pub fn list() -> anyhow::Result<Outcome> {
    let all = scenarios::all();
    let name_width = all.iter().map(|s| s.name().len()).max().unwrap_or(0);
    let rule_width = all.iter().map(|s| s.expected_rule().len()).max().unwrap_or(0);
    for s in all {
        println!("{:<name_width$} {:<rule_width$} {}", s.name(), s.expected_rule(), s.about());
    }
    Ok(Outcome::Ok)
}

pub async fn run(
    names: &[String],
    all: bool,
    json: bool,
    verbose: bool,
    probes: ProbeOptions,
) -> anyhow::Result<Outcome> {
    let available = scenarios::all();
    let chosen: Vec<&dyn AnyScenario> = if all {
        if !names.is_empty() {
            bail!("give scenario names or --all, not both");
        }
        available
    } else {
        if names.is_empty() {
            bail!("name the scenarios to run, or --all (see `dptrace lab list`)");
        }
        names
            .iter()
            .map(|n| {
                available.iter().copied().find(|s| s.name() == n).ok_or_else(|| {
                    anyhow::anyhow!(
                        "unknown lab scenario `{n}`; available: {}",
                        available.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
                    )
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    require_root()?;
    let mut sink = output::sink(json, verbose);
    let mut failed = 0;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    for scenario in &chosen {
        // On a signal the scenario's future is dropped, and with it the `Lab` guard that
        // removes its namespaces.
        let outcome = tokio::select! {
            r = run_one(*scenario, sink.as_mut(), verbose, &probes) => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted by SIGINT; lab namespaces removed"),
            _ = sigterm.recv() => bail!("interrupted by SIGTERM; lab namespaces removed"),
        };
        if let Err(Some(skip)) = outcome.as_ref().map_err(|e| e.downcast_ref::<netns::Unreproducible>()) {
            let text = format!("=> {}: skipped, {skip}\n", scenario.name());
            let value = json!({
                "scenario": scenario.name(),
                "expected_rule": scenario.expected_rule(),
                "diagnosed": false,
                "degraded": false,
                "unchecked": [],
                "skipped": true,
                "skip_fact": skip.fact,
                "problems": [skip.to_string()],
            });
            sink.record("lab-result", value, &text);
            continue;
        }
        let ran = match outcome {
            Ok(ran) => ran,
            Err(e) => Ran {
                problems: vec![format!("the scenario could not run: {}", crate::probes::error_chain(e.as_ref()))],
                unchecked: vec![],
                degraded: false,
                paths: None,
            },
        };
        let problems = &ran.problems;
        let ok = problems.is_empty();
        failed += usize::from(!ok);
        let demo = scenario.expected_rule() == PATH_DEMO;
        let degraded = if ran.degraded {
            format!(" (degraded: not checked: {})", ran.unchecked.join("; "))
        } else {
            String::new()
        };
        let text = match (ok, demo) {
            (true, true) => format!("=> {}: path traced, {}{degraded}\n", scenario.name(), ran.paths_text()),
            (true, false) => format!("=> {}: diagnosed as {}{degraded}\n", scenario.name(), scenario.expected_rule()),
            (false, true) => {
                format!("=> {}: path NOT as expected: {}{degraded}\n", scenario.name(), problems.join("; "))
            }
            (false, false) => {
                format!(
                    "=> {}: NOT diagnosed as {}: {}{degraded}\n",
                    scenario.name(),
                    scenario.expected_rule(),
                    problems.join("; ")
                )
            }
        };
        // `diagnosed`: every check that could be made passed; `degraded`: some could not be
        // made on this kernel (`unchecked` says which and why).
        let mut value = json!({
            "scenario": scenario.name(),
            "expected_rule": scenario.expected_rule(),
            "diagnosed": ok,
            "degraded": ran.degraded,
            "unchecked": ran.unchecked,
            "problems": problems,
        });
        if let Some(paths) = &ran.paths {
            value["paths"] = json!({"packets": paths.packets, "min_hops": paths.min_hops, "max_hops": paths.max_hops});
        }
        sink.record("lab-result", value, &text);
    }
    Ok(if failed == 0 { Outcome::Ok } else { Outcome::Problem })
}

/// What one scenario's run found.
struct Ran {
    /// Why it was not diagnosed (or its paths not as expected); empty when it was.
    problems: Vec<String>,
    /// What could not be checked on this kernel, and why.
    unchecked: Vec<String>,
    /// Checked with less than the full verification (`unchecked` says what is missing).
    degraded: bool,
    /// What the path family traced, for scenarios that turn it on.
    paths: Option<PathCounts>,
}

/// How many packet paths were traced, and their lengths in hops.
struct PathCounts {
    packets: usize,
    min_hops: usize,
    max_hops: usize,
}

impl PathCounts {
    fn of(paths: &[PacketPath]) -> Self {
        let hops = paths.iter().map(|p| p.steps.len());
        Self { packets: paths.len(), min_hops: hops.clone().min().unwrap_or(0), max_hops: hops.max().unwrap_or(0) }
    }
}

impl Ran {
    /// `6 packets, 11 hops each` (or `9-11 hops`).
    fn paths_text(&self) -> String {
        let Some(p) = &self.paths else {
            return "no paths".into();
        };
        if p.min_hops == p.max_hops {
            format!("{} packets, {} hops each", p.packets, p.max_hops)
        } else {
            format!("{} packets, {}-{} hops", p.packets, p.min_hops, p.max_hops)
        }
    }
}

/// Builds, traces, triggers and verifies one scenario. The `Lab` guard removes its
/// namespaces when this returns, errors and cancellation included.
async fn run_one(
    scenario: &'static dyn AnyScenario,
    sink: &mut dyn Sink,
    verbose: bool,
    probes: &ProbeOptions,
) -> anyhow::Result<Ran> {
    sink.note(&format!("== lab {}: {}", scenario.name(), scenario.about()));
    let mut lab = Lab::new()?;
    let topology = scenario.setup(&mut lab)?;
    let inodes: HashSet<u32> = lab.namespaces().iter().filter_map(|n| lab.inode(n)).collect();
    let mut probes = probes.clone();
    // Lab sessions are short and on throwaway namespaces: they see bpf() loads on every
    // kernel, even where that slows every syscall while they run.
    probes.bpf_syscalls_fallback = true;
    let path_filter = scenario.path_filter(&topology);
    if let Some(text) = &path_filter {
        let filter = PacketFilter::parse(text).with_context(|| format!("the scenario's path filter `{text}`"))?;
        probes.path = Some(PathOptions { filter: Some(filter), aggregate: false });
    }
    let options = |probes: ProbeOptions| SessionOptions {
        probes,
        filter: EventFilter::new(Some(inodes.clone()), None),
        monitor_netns: Some(lab.namespaces().iter().map(|n| netns::netns_path(n)).collect()),
    };
    let mut path_filter = path_filter;
    let mut unchecked = Vec::new();
    let mut session = match Session::start(options(probes.clone())) {
        // Kernels where packets cannot be followed (no BTF): a path demonstration cannot be
        // reproduced; any other scenario is diagnosed without its paths.
        Err(ProbeError::NoBackend { family: "path", tried }) => {
            if scenario.expected_rule() == scenarios::PATH_DEMO {
                let fact = if kernel_has_btf() { "no-path-backend" } else { "no-kernel-btf" };
                return Err(netns::Unreproducible::new(
                    fact,
                    format!("packets cannot be followed on this kernel ({tried})"),
                )
                .into());
            }
            sink.note(&format!("   paths not checked: packets cannot be followed on this kernel ({tried})"));
            unchecked.push(format!(
                "the packets' path hop by hop (packets cannot be followed on this kernel{})",
                if kernel_has_btf() { "" } else { ": no BTF" }
            ));
            path_filter = None;
            Session::start(options(ProbeOptions { path: None, ..probes }))?
        }
        other => other?,
    };
    let mut scoped = LabSink { inner: sink, verbose, own: Own::new(std::process::id()) };
    let trigger_topology = topology.clone();
    netns::take_actor_pids();
    let (triggered, window) = session
        .run_until(
            async move {
                let start = monotonic_ns();
                let result = tokio::task::spawn_blocking(move || scenario.trigger(&trigger_topology)).await;
                tokio::time::sleep(SETTLE).await;
                (result, (start, monotonic_ns()))
            },
            &mut scoped,
        )
        .await?;
    scoped.own.window = window;
    scoped.own.actor_pids = netns::take_actor_pids();
    for line in triggered.map_err(|e| anyhow::anyhow!("traffic task failed: {e}"))?? {
        scoped.note(&format!("   {line}"));
    }
    let report = session.finish(&mut scoped, None);
    let mut problems = scenario.verify(&lab, &topology, &report.findings);
    // Kernels that cannot show all the full check asks for (no BTF: drops without namespace,
    // device or flow; requests without the actor's namespace): the scenario checks all such
    // a kernel does show, tied to its own traffic, and says what it could not check.
    let blind = Blind::of(&report.summary.hooks);
    let mut degraded = !unchecked.is_empty();
    if !problems.is_empty() && blind.any() {
        if let Some(check) = scenario.verify_degraded(&lab, &topology, &report.findings, blind, &scoped.own) {
            scoped.note(&format!(
                "   degraded: this kernel cannot show all the full check needs ({}); checked instead what it shows of this scenario's own traffic",
                problems.join("; ")
            ));
            problems = check.problems;
            unchecked.extend(check.unchecked);
            degraded = true;
        }
    }
    let paths = path_filter.as_ref().map(|_| {
        let names: Vec<paths::NsRef> = lab
            .namespaces()
            .iter()
            .map(|n| paths::NsRef { label: netns::role_of(n).to_string(), name: n.clone(), inode: lab.inode(n) })
            .collect();
        // One line per path; with --verbose the sink shows each path hop by hop itself.
        let shown = if verbose { 0 } else { MAX_PATH_NOTES };
        for path in report.paths.iter().take(shown) {
            scoped.note(&format!("   {}", paths::summary_line(path, &names)));
        }
        if report.paths.len() > shown && !verbose {
            scoped.note(&format!("   … and {} more paths", report.paths.len() - shown));
        }
        problems.extend(scenario.verify_paths(&topology, &report.paths));
        // Where datapath functions were hooked (kernels with kprobes), paths must show them.
        let hooked = report
            .summary
            .hooks
            .iter()
            .any(|h| h.family == "path" && h.coverage["functions"].as_array().is_some_and(|f| !f.is_empty()));
        let seen = report.paths.iter().any(|p| p.steps.iter().any(|s| s.hop.function.is_some()));
        if hooked && !report.paths.is_empty() && !seen {
            problems.push("datapath functions were hooked with kprobes, but no path shows one".into());
        }
        PathCounts::of(&report.paths)
    });
    Ok(Ran { problems, unchecked, degraded, paths })
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of the kernel's event timestamps.
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| (t.tv_sec() as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec() as u64))
        .unwrap_or(0)
}

/// Whether dptrace reads a kernel BTF here (`DPTRACE_BTF=none` pretends there is none).
fn kernel_has_btf() -> bool {
    match std::env::var("DPTRACE_BTF").ok().as_deref() {
        Some("none") => false,
        Some(_) => true,
        None => std::path::Path::new(crate::kernel::btf::VMLINUX).exists(),
    }
}

/// Forwards findings; events and the summary only with --verbose. Keeps the events of the
/// lab's own threads for a degraded check.
struct LabSink<'a> {
    inner: &'a mut dyn Sink,
    verbose: bool,
    own: Own,
}

impl Sink for LabSink<'_> {
    fn event(&mut self, event: &Event) {
        self.own.observe(event);
        self.inner.event(event);
    }

    fn finding(&mut self, finding: &Finding) {
        // Routine drops (multicast listener reports and the like) are noise in a demo.
        if self.verbose || finding.severity > Severity::Info {
            self.inner.finding(finding);
        }
    }

    fn summary(&mut self, summary: &Summary) {
        if self.verbose {
            self.inner.summary(summary);
        }
    }

    fn note(&mut self, text: &str) {
        self.inner.note(text);
    }

    fn record(&mut self, kind: &str, value: serde_json::Value, text: &str) {
        self.inner.record(kind, value, text);
    }
}
