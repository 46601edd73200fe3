//! Start-up: how long `dptrace trace` takes from exec until it says it is attached and ready
//! (the `dptrace: tracing on kernel …` line on stderr, printed once every hook is attached).

use std::{path::Path, process::Command, time::Duration};

use serde::Serialize;

use super::{
    procs::{self, Proc},
    Stat,
};

#[derive(Debug, Clone, Copy, Serialize)]
pub struct StartRun {
    /// exec → ready line, seconds.
    pub ready_secs: f64,
    /// CPU time spent until ready, seconds.
    pub cpu_secs: f64,
    /// RSS when ready, and the peak over the whole (1 s) session.
    pub rss_ready_kib: u64,
    pub max_rss_kib: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub ready_secs: Option<Stat>,
    pub cpu_secs: Option<Stat>,
    pub rss_ready_kib: Option<Stat>,
    pub max_rss_kib: Option<Stat>,
    pub runs: Vec<StartRun>,
    pub errors: Vec<String>,
}

pub fn run(bin: &Path, runs: u32) -> anyhow::Result<Results> {
    let mut done = Vec::new();
    let mut errors = Vec::new();
    for i in 1..=runs {
        procs::check_interrupted()?;
        match one(bin) {
            Ok(r) => {
                eprintln!("[{i}/{runs}] ready after {:.0} ms", r.ready_secs * 1e3);
                done.push(r);
            }
            Err(e) if procs::interrupted() => return Err(e),
            Err(e) => {
                eprintln!("[{i}/{runs}] failed: {e:#}");
                errors.push(format!("{e:#}"));
            }
        }
        procs::sleep(Duration::from_millis(200))?;
    }
    let stat = |f: fn(&StartRun) -> f64| Stat::of(&done.iter().map(f).collect::<Vec<_>>());
    Ok(Results {
        ready_secs: stat(|r| r.ready_secs),
        cpu_secs: stat(|r| r.cpu_secs),
        rss_ready_kib: stat(|r| r.rss_ready_kib as f64),
        max_rss_kib: stat(|r| r.max_rss_kib as f64),
        runs: done,
        errors,
    })
}

fn one(bin: &Path) -> anyhow::Result<StartRun> {
    let mut p = Proc::spawn("dptrace", Command::new(bin).args(["trace", "--quiet", "--duration", "1s"]))?;
    let ready = p.wait_for_line("dptrace: tracing on kernel", Duration::from_secs(30))?;
    let cpu_secs = p.cpu_secs()?;
    let rss_ready_kib = p.status_kib("VmRSS").unwrap_or(0);
    let exit = p.wait(Duration::from_secs(30))?;
    if !exit.success() {
        anyhow::bail!("dptrace ended with {}:\n{}", exit.describe(), p.tail(10));
    }
    Ok(StartRun {
        ready_secs: (ready - p.started).as_secs_f64(),
        cpu_secs,
        rss_ready_kib,
        max_rss_kib: exit.max_rss_kib,
    })
}
