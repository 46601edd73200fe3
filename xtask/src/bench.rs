//! `cargo xtask bench`: what dptrace costs the node it traces. Benchmarks, not tests: nothing
//! here fails on a number; the targets of issue 8 are reported as holding or not.
//!
//! - Datapath overhead (`datapath`): iperf3 TCP, UDP and small-packet runs between two pods of a
//!   flannel-style VXLAN overlay, under no tracer, dptrace's default hooks, `--path`,
//!   `--path --aggregate` and bpftrace counting `skb:kfree_skb`, interleaved round by round;
//!   and what syscall tracepoints cost every syscall on the machine.
//! - Event pipeline (`pipeline`): a flood of real drops (frames to a MAC address nobody has, or
//!   UDP to a closed port) at set rates:
//!   events decoded per CPU-second, lost events, and whether lost counts are exact.
//! - Start-up (`startup`) and memory over a long session at 100,000 events/s (`memory`).
//!
//! Results go to `bench/results/<UTC time>-<host>.{json,md}` and `bench/results/latest.md`.
//! Everything runs in namespaces `dptbench-<pid>-…` of its own (topology.rs).

mod bpf_cost;
mod datapath;
mod pipeline;
mod procs;
mod report;
mod startup;
mod topology;

use std::{fs, path::Path, process::Command, time::Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::Value;

use crate::step;

pub use datapath::call_timing;

/// Options of `cargo xtask bench`.
#[derive(clap::Args, Debug, Default)]
pub struct BenchArgs {
    /// Short run (about 2 minutes): 1 round of 2 s per iperf3 test, 3 s floods at fewer rates, a
    /// 10 s memory session, 5 start-ups. Explicit options below still win.
    #[arg(long)]
    pub quick: bool,
    /// Rounds of the datapath tests; each round runs every test under every variant once.
    /// [default: 3]
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Seconds per iperf3 run. [default: 5]
    #[arg(long)]
    pub seconds: Option<u32>,
    /// Seconds per flood of the event-pipeline test. [default: 5]
    #[arg(long)]
    pub flood_seconds: Option<u32>,
    /// Seconds of the memory session at 100,000 events/s (the target is stated for 600).
    /// [default: 60]
    #[arg(long)]
    pub long_seconds: Option<u32>,
    /// Start-up measurements. [default: 10]
    #[arg(long)]
    pub startup_runs: Option<u32>,
    /// Offered rate of the UDP throughput test, as iperf3 -b takes it: best high, but below what
    /// the machine carries untraced. [default: 500M]
    #[arg(long)]
    pub udp_rate: Option<String>,
    /// Sender threads of the floods. [default: one per CPU]
    #[arg(long)]
    pub senders: Option<usize>,
    /// Run only these parts (comma-separated): datapath, pipeline, startup, memory.
    #[arg(long, value_delimiter = ',', value_parser = ["datapath", "pipeline", "startup", "memory"])]
    pub only: Vec<String>,
    /// What the event-pipeline floods send: `frames` (to a MAC address nobody has: cheap
    /// enough to offer 500,000 drops/s on two CPUs) or `udp` (to a closed port: the whole
    /// socket path). The memory session always sends UDP. [default: frames]
    #[arg(long, value_enum)]
    pub flood: Option<pipeline::Source>,
    /// Tracer variants of the datapath tests (comma-separated; the untraced run is always
    /// added): default, no-syscalls, path, aggregate, bpftrace. [default: all but no-syscalls]
    #[arg(long, value_delimiter = ',', value_parser = ["default", "no-syscalls", "path", "aggregate", "bpftrace"])]
    pub variants: Vec<String>,
}

/// The options in effect, after `--quick` and the defaults.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub mode: &'static str,
    pub rounds: u32,
    pub seconds: u32,
    pub flood_seconds: u32,
    pub long_seconds: u32,
    pub startup_runs: u32,
    pub udp_rate: String,
    pub senders: usize,
    pub flood: pipeline::Source,
    pub parts: Vec<String>,
    pub variants: Vec<datapath::Variant>,
}

impl Settings {
    fn from(args: &BenchArgs) -> Self {
        let pick =
            |explicit: Option<u32>, quick: u32, full: u32| explicit.unwrap_or(if args.quick { quick } else { full });
        let parts = if args.only.is_empty() {
            ["startup", "datapath", "pipeline", "memory"].map(String::from).to_vec()
        } else {
            args.only.clone()
        };
        let customized = args.rounds.is_some()
            || args.seconds.is_some()
            || args.flood_seconds.is_some()
            || args.long_seconds.is_some()
            || args.startup_runs.is_some()
            || !args.only.is_empty()
            || !args.variants.is_empty()
            || args.flood.is_some();
        let variants = datapath::VARIANTS
            .into_iter()
            .filter(|v| match v {
                datapath::Variant::None => true,
                _ if args.variants.is_empty() => *v != datapath::Variant::NoSyscalls,
                _ => args.variants.iter().any(|name| name == v.name()),
            })
            .collect();
        Self {
            mode: match (args.quick, customized) {
                (true, false) => "quick",
                (false, false) => "default",
                (true, true) => "quick, customized",
                (false, true) => "customized",
            },
            rounds: pick(args.rounds, 1, 3).max(1),
            seconds: pick(args.seconds, 2, 5).max(1),
            flood_seconds: pick(args.flood_seconds, 3, 5).max(1),
            long_seconds: pick(args.long_seconds, 10, 60).max(2),
            startup_runs: pick(args.startup_runs, 5, 10).max(1),
            udp_rate: args.udp_rate.clone().unwrap_or_else(|| "500M".into()),
            senders: args.senders.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())).max(1),
            flood: args.flood.unwrap_or(pipeline::Source::Frames),
            parts,
            variants,
        }
    }

    fn wants(&self, part: &str) -> bool {
        self.parts.iter().any(|p| p == part)
    }
}

/// Median, minimum and maximum of some runs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Stat {
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Self { median, min: v[0], max: v[n - 1], n })
    }
}

/// The machine and software the numbers come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub hostname: String,
    pub cpu_model: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub os: String,
    pub dptrace: String,
    pub commit: String,
    pub bpftrace: String,
    pub iperf3: String,
    pub load_before: String,
    pub load_after: String,
    /// Other processes using more than 10% of a core in the second before and after the run.
    pub busy_before: Vec<String>,
    pub busy_after: Vec<String>,
}

/// Everything one run measured; written as JSON, summarised as Markdown.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub started_utc: String,
    pub total_secs: f64,
    pub settings: Settings,
    pub machine: Machine,
    pub targets: Vec<report::Target>,
    pub startup: Option<startup::Results>,
    pub datapath: Option<datapath::Results>,
    pub syscalls: Option<datapath::Syscalls>,
    pub pipeline: Option<pipeline::Results>,
    pub memory: Option<pipeline::Memory>,
    pub notes: Vec<String>,
}

pub fn require_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("cargo xtask bench must run as root: it creates network namespaces, loads eBPF programs and installs iperf3 and bpftrace (try: sudo -E cargo xtask bench)");
    }
    Ok(())
}

pub fn bench(root: &Path, bin: &Path, args: &BenchArgs) -> anyhow::Result<()> {
    require_root()?;
    let settings = Settings::from(args);
    let started = Instant::now();
    let started_utc = utc_now();
    procs::catch_interrupts();
    topology::remove_stale();
    step("bench: iperf3 and bpftrace");
    crate::setup::ensure_packages(&["iperf3", "bpftrace"])?;
    // Every measurement must run the same binary, even if a `cargo build` replaces it meanwhile.
    let out = root.join("target/bench");
    fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let snapshot = out.join("dptrace");
    fs::copy(bin, &snapshot).with_context(|| format!("cannot copy {} to {}", bin.display(), snapshot.display()))?;
    let bin = snapshot.as_path();
    let mut machine = machine(root, bin);
    eprintln!(
        "machine: {} ({} cores, {:.1} GiB), kernel {}, {} at {}; load average {}",
        machine.cpu_model,
        machine.cores,
        machine.memory_gib,
        machine.kernel,
        machine.dptrace,
        machine.commit,
        machine.load_before
    );
    eprintln!(
        "settings: {} mode; {} round(s) of {} s per iperf3 test, {} s per flood, {} s memory session, {} start-ups, {} sender thread(s)",
        settings.mode,
        settings.rounds,
        settings.seconds,
        settings.flood_seconds,
        settings.long_seconds,
        settings.startup_runs,
        settings.senders
    );

    let mut report = Report {
        started_utc: started_utc.clone(),
        total_secs: 0.0,
        settings: settings.clone(),
        machine: machine.clone(),
        targets: Vec::new(),
        startup: None,
        datapath: None,
        syscalls: None,
        pipeline: None,
        memory: None,
        notes: Vec::new(),
    };
    let mut nss = topology::Namespaces::new();
    if settings.wants("startup") {
        step(&format!("start-up: {} runs of `dptrace trace --quiet --duration 1s`", settings.startup_runs));
        report.startup = Some(startup::run(bin, settings.startup_runs)?);
    }
    if settings.wants("datapath") {
        step("datapath: iperf3 between pods of a VXLAN overlay, per tracer variant, interleaved");
        let net = topology::overlay(&mut nss).context("building the overlay")?;
        report.datapath =
            Some(datapath::run(bin, &net, settings.rounds, settings.seconds, &settings.udp_rate, &settings.variants)?);
        nss.clear();
        step("syscall overhead: getppid with no tracer, default hooks, --hooks drops");
        report.syscalls = Some(datapath::syscalls(bin, settings.rounds)?);
    }
    if settings.wants("pipeline") || settings.wants("memory") {
        let net = topology::pair(&mut nss, "flood").context("building the veth pair")?;
        if settings.wants("pipeline") {
            step(&format!(
                "event pipeline: floods of {} under `dptrace trace --json --quiet --netns`",
                match settings.flood {
                    pipeline::Source::Frames => "frames to a MAC address nobody has",
                    pipeline::Source::Udp => "UDP datagrams to a closed port",
                }
            ));
            report.pipeline = Some(pipeline::run(
                settings.flood,
                bin,
                &net,
                settings.flood_seconds,
                settings.senders,
                settings.mode.starts_with("quick"),
            )?);
        }
        if settings.wants("memory") {
            step(&format!(
                "memory: RSS every second over {} s at {} events/s",
                settings.long_seconds,
                pipeline::LONG_RATE
            ));
            report.memory = Some(pipeline::memory(bin, &net, settings.long_seconds, settings.senders)?);
        }
        nss.clear();
    }
    drop(nss);
    machine.load_after = loadavg();
    machine.busy_after = busy_processes();
    report.machine = machine;
    report.total_secs = started.elapsed().as_secs_f64();
    report.targets = report::targets(&report);
    report.notes = report::notes(&report);

    let dir = root.join("bench/results");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let stem = format!("{}-{}", started_utc.replace([':', '-'], ""), report.machine.hostname);
    let markdown = report::markdown(&report);
    fs::write(dir.join(format!("{stem}.json")), serde_json::to_string_pretty(&report)? + "\n")?;
    fs::write(dir.join(format!("{stem}.md")), &markdown)?;
    fs::write(dir.join("latest.md"), &markdown)?;
    eprintln!("\n{markdown}");
    eprintln!("results: bench/results/{stem}.md, bench/results/{stem}.json and bench/results/latest.md");
    Ok(())
}

/// The last `summary` object dptrace printed with `--json`.
pub fn dptrace_summary(p: &mut procs::Proc) -> Option<Value> {
    p.lines()
        .iter()
        .rev()
        .filter(|l| !l.stderr && l.text.contains("\"summary\""))
        .filter_map(|l| serde_json::from_str::<Value>(&l.text).ok())
        .find(|v| v["type"] == "summary")
}

fn machine(root: &Path, bin: &Path) -> Machine {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_string()))
        .unwrap_or_else(|| "unknown".into());
    let mem_kib: f64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_default();
    let output = |cmd: &mut Command| {
        cmd.output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| {
                let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
                String::from_utf8_lossy(&text).lines().next().unwrap_or_default().trim().to_string()
            })
            .unwrap_or_else(|| "unknown".into())
    };
    let mut commit = output(Command::new("git").arg("-C").arg(root).args(["rev-parse", "--short", "HEAD"]));
    let dirty = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    if dirty {
        commit.push_str(" (with uncommitted changes)");
    }
    Machine {
        hostname: read("/proc/sys/kernel/hostname").trim().to_string(),
        cpu_model,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory_gib: mem_kib / 1024.0 / 1024.0,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        os,
        dptrace: output(Command::new(bin).arg("--version")),
        commit,
        bpftrace: output(Command::new("bpftrace").arg("--version")),
        iperf3: output(Command::new("iperf3").arg("--version")),
        load_before: loadavg(),
        load_after: String::new(),
        busy_before: busy_processes(),
        busy_after: Vec::new(),
    }
}

/// Processes that used more than 10% of a core over one second, busiest first: other work that
/// makes the numbers noisy.
fn busy_processes() -> Vec<String> {
    let sample = || -> std::collections::HashMap<i32, (String, f64)> {
        let Ok(dir) = fs::read_dir("/proc") else { return Default::default() };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter_map(|pid| {
                let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let comm = stat.split_once('(')?.1.rsplit_once(')')?.0.to_string();
                Some((pid, (comm, procs::proc_cpu_secs(pid).ok()?)))
            })
            .collect()
    };
    let before = sample();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let mut busy: Vec<(f64, String)> = sample()
        .into_iter()
        .filter_map(|(pid, (comm, cpu))| {
            let used = cpu - before.get(&pid)?.1;
            (used > 0.1 && pid != std::process::id() as i32).then(|| (used, format!("{comm} ({:.0}%)", used * 100.0)))
        })
        .collect();
    busy.sort_by(|a, b| b.0.total_cmp(&a.0));
    busy.into_iter().map(|(_, text)| text).collect()
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Now in UTC as `YYYY-MM-DDTHH:MM:SSZ` (civil date from days since the epoch, H. Hinnant's algorithm).
fn utc_now() -> String {
    utc(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64)
}

fn utc(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max() {
        let s = Stat::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(Stat::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert!(Stat::of(&[f64::NAN]).is_none());
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_795_647_127), "2026-11-25T22:52:07Z");
    }
}
