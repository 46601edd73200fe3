//! The lab: reproduce known failures in throwaway namespaces while tracing, and check that
//! dptrace explains each with the expected finding. Used by `dptrace lab`, the demo and the
//! tests; everything it creates is removed afterwards, also when a step fails.

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
            {
                let text = format!("=> {}: skipped, {skip}\n", scenario.name());
                let value = json!({"scenario": scenario.name(), "expected_rule": scenario.expected_rule(), "diagnosed": false, "skipped": true, "problems": [skip.to_string()]});
                sink.record("lab-result", value, &text);
                continue;
            }
        }
        let ran = match outcome {
            Ok(ran) => ran,
            Err(e) => Ran {
                problems: vec![format!("the scenario could not run: {}", crate::probes::error_chain(e.as_ref()))],
                paths: None,
            },
        };
        let problems = &ran.problems;
        let ok = problems.is_empty();
        failed += usize::from(!ok);
        let demo = scenario.expected_rule() == PATH_DEMO;
        let text = match (ok, demo) {
            (true, true) => format!("=> {}: path traced, {}\n", scenario.name(), ran.paths_text()),
            (true, false) => format!("=> {}: diagnosed as {}\n", scenario.name(), scenario.expected_rule()),
            (false, true) => format!("=> {}: path NOT as expected: {}\n", scenario.name(), problems.join("; ")),
            (false, false) => {
                format!(
                    "=> {}: NOT diagnosed as {}: {}\n",
                    scenario.name(),
                    scenario.expected_rule(),
                    problems.join("; ")
                )
            }
        };
        let mut value = json!({"scenario": scenario.name(), "expected_rule": scenario.expected_rule(), "diagnosed": ok, "problems": problems});
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
    let mut session = match Session::start(options(probes.clone())) {
        // Kernels where packets cannot be followed (no BTF): a path demonstration cannot be
        // reproduced; any other scenario is diagnosed without its paths.
        Err(ProbeError::NoBackend { family: "path", tried }) => {
            if scenario.expected_rule() == scenarios::PATH_DEMO {
                return Err(
                    netns::Unreproducible(format!("packets cannot be followed on this kernel ({tried})")).into()
                );
            }
            sink.note(&format!("   paths not checked: packets cannot be followed on this kernel ({tried})"));
            path_filter = None;
            Session::start(options(ProbeOptions { path: None, ..probes }))?
        }
        other => other?,
    };
    let mut scoped = LabSink { inner: sink, verbose };
    let trigger_topology = topology.clone();
    let triggered = session
        .run_until(
            async move {
                let result = tokio::task::spawn_blocking(move || scenario.trigger(&trigger_topology)).await;
                tokio::time::sleep(SETTLE).await;
                result
            },
            &mut scoped,
        )
        .await?;
    for line in triggered.map_err(|e| anyhow::anyhow!("traffic task failed: {e}"))?? {
        scoped.note(&format!("   {line}"));
    }
    let report = session.finish(&mut scoped, None);
    let mut problems = scenario.verify(&lab, &topology, &report.findings);
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
    // Kernels without BTF give drops no namespace, device or flow: the diagnosis is then
    // the rule alone, which is what such a kernel allows. Say so rather than fail.
    let blind = report.summary.hooks.iter().any(|h| h.coverage["device_and_netns"] == false);
    if !problems.is_empty()
        && blind
        && report.findings.iter().any(|f| f.rule == scenario.expected_rule() && f.place.netns.is_none())
    {
        scoped.note(&format!(
            "   degraded: `{}` reported without namespace, device or flow (this kernel has no BTF)",
            scenario.expected_rule()
        ));
        problems.clear();
    }
    Ok(Ran { problems, paths })
}

/// Forwards findings; events and the summary only with --verbose.
struct LabSink<'a> {
    inner: &'a mut dyn Sink,
    verbose: bool,
}

impl Sink for LabSink<'_> {
    fn event(&mut self, event: &Event) {
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
