//! Kernel time spent in a tracer's BPF programs. The tracer's process CPU does not include it:
//! a program runs in whatever context hits its hook (the sending task, a softirq), and is paid
//! by that context. The kernel counts runs and run time per program once statistics are on
//! (`BPF_ENABLE_STATS`); they cost two clock reads per run, so they are on only for the
//! accounting runs, and go off when the guard from [`enable`] is dropped (or the bench dies).

use std::{collections::BTreeSet, fs, os::fd::OwnedFd};

use anyhow::Context;
use serde::Serialize;

/// Statistics stay on while this lives.
struct StatsOn(#[allow(dead_code)] OwnedFd);

fn enable() -> anyhow::Result<StatsOn> {
    let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("BPF_ENABLE_STATS (run time statistics need Linux 5.8+)")?;
    Ok(StatsOn(fd))
}

/// One accounting window over a process's programs: statistics on from [`Accounting::start`]
/// until [`Accounting::finish`].
pub struct Accounting {
    on: StatsOn,
    ids: BTreeSet<u32>,
    before: Sample,
}

impl Accounting {
    /// Switches statistics on and takes the first sample of the programs `pid` holds.
    pub fn start(pid: u32) -> anyhow::Result<Self> {
        let on = enable()?;
        let ids = programs_of(pid)?;
        let before = sample(&ids)?;
        Ok(Self { on, ids, before })
    }

    /// The second sample, statistics off again, and what ran in between.
    pub fn finish(self) -> anyhow::Result<Vec<ProgramCost>> {
        let after = sample(&self.ids)?;
        drop(self.on);
        Ok(between(&self.before, &after))
    }
}

/// The ids of the programs a process holds open (program and link descriptors), from
/// `/proc/PID/fdinfo`: the tracer's own programs, not other tools' on the machine.
fn programs_of(pid: u32) -> anyhow::Result<BTreeSet<u32>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = BTreeSet::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(text) = fs::read_to_string(entry?.path()) else { continue };
        ids.extend(
            text.lines().filter_map(|l| l.strip_prefix("prog_id:")).filter_map(|v| v.trim().parse::<u32>().ok()),
        );
    }
    Ok(ids)
}

/// Runs and run time of some programs at one moment.
#[derive(Debug, Clone)]
struct Sample(Vec<(u32, String, u64, u64)>);

fn sample(ids: &BTreeSet<u32>) -> anyhow::Result<Sample> {
    let mut out = Vec::new();
    for info in aya::programs::loaded_programs() {
        let info = info.context("listing loaded BPF programs")?;
        if ids.contains(&info.id()) {
            let name = info.name_as_str().unwrap_or("?").to_string();
            out.push((info.id(), name, info.run_count(), info.run_time().as_nanos() as u64));
        }
    }
    Ok(Sample(out))
}

/// One program's share between two samples.
#[derive(Debug, Clone, Serialize)]
pub struct ProgramCost {
    pub name: String,
    pub runs: u64,
    pub run_ns: u64,
}

/// What the programs cost between two samples, busiest first; programs that did not run are
/// left out.
fn between(before: &Sample, after: &Sample) -> Vec<ProgramCost> {
    let mut out: Vec<ProgramCost> = after
        .0
        .iter()
        .map(|(id, name, runs, ns)| {
            let (r0, n0) = before.0.iter().find(|b| b.0 == *id).map_or((0, 0), |b| (b.2, b.3));
            ProgramCost { name: name.clone(), runs: runs.saturating_sub(r0), run_ns: ns.saturating_sub(n0) }
        })
        .filter(|p| p.runs > 0)
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.run_ns));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn between_subtracts_and_sorts_busiest_first() {
        let before = Sample(vec![(1, "a".into(), 10, 1000), (2, "b".into(), 5, 500)]);
        let after = Sample(vec![(1, "a".into(), 12, 1200), (2, "b".into(), 9, 2500), (3, "c".into(), 0, 0)]);
        let got = between(&before, &after);
        let names: Vec<(&str, u64, u64)> = got.iter().map(|p| (p.name.as_str(), p.runs, p.run_ns)).collect();
        assert_eq!(names, [("b", 4, 2000), ("a", 2, 200)]);
    }
}
