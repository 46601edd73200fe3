//! Datapath overhead: iperf3 between two pods of the VXLAN overlay, each test run once per
//! tracer variant per round, the variants interleaved (ABCDE ABCDE …) so drift hits all alike.

use std::{path::Path, process::Command, time::Duration};

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;

use super::{
    bpf_cost::{Accounting, ProgramCost},
    procs::{self, HostCpu, Proc},
    topology::Overlay,
    Stat,
};

const IPERF_PORT: &str = "5201";
/// UDP payload of the throughput test: fits the pods' MTU of 1450 (1450 - 20 - 8).
const UDP_LEN: &str = "1400";
/// Time given to a tracer after it says it is ready, before traffic starts.
const SETTLE: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    None,
    Default,
    /// Default hooks minus the families that attach syscall tracepoints (links, xdp): what
    /// the syscall tax costs.
    NoSyscalls,
    Path,
    Aggregate,
    Bpftrace,
}

/// Every variant, in table order; `--variants` picks some (the untraced one always runs).
pub const VARIANTS: [Variant; 6] =
    [Variant::None, Variant::Default, Variant::NoSyscalls, Variant::Path, Variant::Aggregate, Variant::Bpftrace];

impl Variant {
    /// The name `--variants` takes.
    pub fn name(self) -> &'static str {
        match self {
            Variant::None => "none",
            Variant::Default => "default",
            Variant::NoSyscalls => "no-syscalls",
            Variant::Path => "path",
            Variant::Aggregate => "aggregate",
            Variant::Bpftrace => "bpftrace",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Variant::None => "no tracer",
            Variant::Default => "dptrace (default hooks)",
            Variant::NoSyscalls => "dptrace --hooks drops,netfilter",
            Variant::Path => "dptrace --path",
            Variant::Aggregate => "dptrace --path --aggregate",
            Variant::Bpftrace => "bpftrace kfree_skb count",
        }
    }

    /// The tracer's command line and the line it prints once attached.
    fn command(self, bin: &Path, filter: &str) -> Option<(Command, &'static str)> {
        let dptrace = |extra: &[&str]| {
            let mut cmd = Command::new(bin);
            cmd.args(["trace", "--json", "--quiet"]).args(extra);
            Some((cmd, "dptrace: tracing on kernel"))
        };
        match self {
            Variant::None => None,
            Variant::Default => dptrace(&[]),
            Variant::NoSyscalls => dptrace(&["--hooks", "drops,netfilter"]),
            Variant::Path => dptrace(&["--path", "--filter", filter]),
            Variant::Aggregate => dptrace(&["--path", "--aggregate", "--filter", filter]),
            Variant::Bpftrace => {
                let mut cmd = Command::new("bpftrace");
                cmd.args(["-e", "tracepoint:skb:kfree_skb { @[args->reason] = count(); }"]);
                Some((cmd, "Attaching"))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Test {
    Tcp,
    Udp,
    Pps,
}

pub const TESTS: [Test; 3] = [Test::Tcp, Test::Udp, Test::Pps];

impl Test {
    pub fn label(self, udp_rate: &str) -> String {
        match self {
            Test::Tcp => "TCP bulk, Gbit/s".into(),
            Test::Udp => format!("UDP {UDP_LEN} B at {udp_rate}bit/s offered, Gbit/s received"),
            Test::Pps => "UDP 64 B as fast as possible, kpackets/s received".into(),
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Test::Tcp => "TCP",
            Test::Udp => "UDP",
            Test::Pps => "64 B UDP pps",
        }
    }

    /// The result in the unit of its label.
    pub fn display_value(self, value: f64) -> f64 {
        match self {
            Test::Tcp | Test::Udp => value / 1e9,
            Test::Pps => value / 1e3,
        }
    }

    fn iperf_args(self, seconds: u32, udp_rate: &str) -> Vec<String> {
        let mut args = vec!["-t".to_string(), seconds.to_string()];
        match self {
            Test::Tcp => {}
            Test::Udp => args.extend(["-u", "-b", udp_rate, "-l", UDP_LEN].map(String::from)),
            Test::Pps => args.extend(["-u", "-b", "0", "-l", "64"].map(String::from)),
        }
        args
    }
}

/// One iperf3 run under one variant.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub round: u32,
    pub test: Test,
    pub variant: Variant,
    /// bits/s received (TCP, UDP) or packets/s received (pps).
    pub value: Option<f64>,
    /// UDP: datagrams the receiver missed, in percent.
    pub loss_percent: Option<f64>,
    pub wall_secs: f64,
    /// The tracer's CPU time during the test, in seconds per second (cores).
    pub tracer_cpu: Option<f64>,
    /// Busy cores of the whole machine during the test.
    pub host_busy_cores: f64,
    /// What dptrace's summary said: events analyzed, lost, paths traced.
    pub events: Option<u64>,
    pub lost_events: Option<u64>,
    pub paths_traced: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The tracer did not stop cleanly on SIGINT (the measurement still counts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracer_note: Option<String>,
    /// Accounting runs only: what the tracer's BPF programs cost in the kernel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bpf: Option<BpfCost>,
}

/// Kernel time in the tracer's programs during one accounting run.
#[derive(Debug, Clone, Serialize)]
pub struct BpfCost {
    /// Datagrams the server received (UDP tests): the per-packet figures divide by this.
    pub packets: Option<f64>,
    pub runs: u64,
    pub run_ns: u64,
    /// Cores (CPU-seconds per second) the programs took.
    pub cores: f64,
    pub programs: Vec<ProgramCost>,
}

impl BpfCost {
    /// Program runs and nanoseconds per datagram.
    pub fn per_packet(&self) -> Option<(f64, f64)> {
        let p = self.packets.filter(|&p| p > 0.0)?;
        Some((self.runs as f64 / p, self.run_ns as f64 / p))
    }
}

/// Median and spread of one test under one variant, with the ratio to the untraced median.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub test: Test,
    pub variant: Variant,
    pub value: Option<Stat>,
    pub ratio: Option<f64>,
    pub tracer_cpu: Option<Stat>,
    pub host_busy_cores: Option<Stat>,
    pub lost_events_max: Option<u64>,
    pub paths_traced: Option<Stat>,
    pub loss_percent: Option<Stat>,
    pub failed_runs: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub rounds: u32,
    pub seconds: u32,
    pub udp_rate: String,
    pub server: String,
    pub variants: Vec<Variant>,
    pub cells: Vec<Cell>,
    pub runs: Vec<Run>,
    /// One more run per test and tracer variant with BPF run-time statistics on (they slow
    /// every program run a little, so these runs are not in `cells`).
    pub accounting: Vec<Run>,
}

impl Results {
    pub fn cell(&self, test: Test, variant: Variant) -> Option<&Cell> {
        self.cells.iter().find(|c| c.test == test && c.variant == variant)
    }
}

pub fn run(
    bin: &Path,
    net: &Overlay,
    rounds: u32,
    seconds: u32,
    udp_rate: &str,
    variants: &[Variant],
) -> anyhow::Result<Results> {
    let filter = format!("host {}", net.server_ip);
    let mut runs = Vec::new();
    let total = rounds as usize * TESTS.len() * variants.len();
    for round in 1..=rounds {
        for test in TESTS {
            for &variant in variants {
                procs::check_interrupted()?;
                eprintln!(
                    "[{}/{total}] round {round}: {} under {}",
                    runs.len() + 1,
                    test.label(udp_rate),
                    variant.label()
                );
                let run = match one(bin, net, &filter, round, test, variant, seconds, udp_rate, false) {
                    Ok(run) => run,
                    Err(e) if procs::interrupted() => return Err(e),
                    Err(e) => {
                        eprintln!("  failed: {e:#}");
                        Run::failed(round, test, variant, &e)
                    }
                };
                if let Some(v) = run.value {
                    eprintln!(
                        "  {:.3}{}{}",
                        test.display_value(v),
                        run.tracer_cpu.map(|c| format!(", tracer CPU {c:.3} cores")).unwrap_or_default(),
                        run.lost_events.filter(|&l| l > 0).map(|l| format!(", {l} events lost")).unwrap_or_default()
                    );
                }
                runs.push(run);
            }
        }
    }
    let mut accounting = Vec::new();
    for test in TESTS {
        for &variant in variants.iter().filter(|&&v| v != Variant::None) {
            procs::check_interrupted()?;
            eprintln!("[accounting] {} under {}, BPF statistics on", test.label(udp_rate), variant.label());
            let run = match one(bin, net, &filter, 0, test, variant, seconds, udp_rate, true) {
                Ok(run) => run,
                Err(e) if procs::interrupted() => return Err(e),
                Err(e) => {
                    eprintln!("  failed: {e:#}");
                    Run::failed(0, test, variant, &e)
                }
            };
            if let Some(b) = &run.bpf {
                let per_packet = b.per_packet().map(|(r, ns)| format!(", {r:.2} runs and {ns:.0} ns per datagram"));
                eprintln!("  programs: {:.4} cores{}", b.cores, per_packet.unwrap_or_default());
            }
            accounting.push(run);
        }
    }
    let mut cells = Vec::new();
    for test in TESTS {
        let base = median_value(&runs, test, Variant::None);
        for &variant in variants {
            let these: Vec<&Run> = runs.iter().filter(|r| r.test == test && r.variant == variant).collect();
            let values: Vec<f64> = these.iter().filter_map(|r| r.value).collect();
            let value = Stat::of(&values);
            let ratio = match (&value, base) {
                (Some(v), Some(b)) if b > 0.0 => Some(v.median / b),
                _ => None,
            };
            let ok: Vec<&&Run> = these.iter().filter(|r| r.value.is_some()).collect();
            cells.push(Cell {
                test,
                variant,
                value,
                ratio,
                tracer_cpu: Stat::of(&ok.iter().filter_map(|r| r.tracer_cpu).collect::<Vec<_>>()),
                host_busy_cores: Stat::of(&ok.iter().map(|r| r.host_busy_cores).collect::<Vec<_>>()),
                lost_events_max: ok.iter().filter_map(|r| r.lost_events).max(),
                paths_traced: Stat::of(&ok.iter().filter_map(|r| r.paths_traced.map(|p| p as f64)).collect::<Vec<_>>()),
                loss_percent: Stat::of(&ok.iter().filter_map(|r| r.loss_percent).collect::<Vec<_>>()),
                failed_runs: these.len() - values.len(),
            });
        }
    }
    Ok(Results {
        rounds,
        seconds,
        udp_rate: udp_rate.to_string(),
        server: net.server_ip.to_string(),
        variants: variants.to_vec(),
        cells,
        runs,
        accounting,
    })
}

impl Run {
    fn failed(round: u32, test: Test, variant: Variant, e: &anyhow::Error) -> Self {
        Run {
            round,
            test,
            variant,
            value: None,
            loss_percent: None,
            wall_secs: 0.0,
            tracer_cpu: None,
            host_busy_cores: 0.0,
            events: None,
            lost_events: None,
            paths_traced: None,
            error: Some(format!("{e:#}")),
            tracer_note: None,
            bpf: None,
        }
    }
}

fn median_value(runs: &[Run], test: Test, variant: Variant) -> Option<f64> {
    let values: Vec<f64> =
        runs.iter().filter(|r| r.test == test && r.variant == variant).filter_map(|r| r.value).collect();
    Stat::of(&values).map(|s| s.median)
}

#[allow(clippy::too_many_arguments)]
fn one(
    bin: &Path,
    net: &Overlay,
    filter: &str,
    round: u32,
    test: Test,
    variant: Variant,
    seconds: u32,
    udp_rate: &str,
    account: bool,
) -> anyhow::Result<Run> {
    let mut server = Proc::spawn(
        "iperf3 server",
        Command::new("ip").args(["netns", "exec", &net.server, "iperf3", "-s", "-1", "-p", IPERF_PORT]),
    )?;
    wait_listening(&mut server)?;
    let mut tracer = match variant.command(bin, filter) {
        Some((mut cmd, ready)) => {
            let mut p = Proc::spawn(variant.label(), &mut cmd)?;
            p.wait_for_line(ready, Duration::from_secs(30))?;
            Some(p)
        }
        None => None,
    };
    procs::sleep(SETTLE)?;
    // Accounting: statistics on before the first sample, off (dropped) after the second.
    let stats = match (&tracer, account) {
        (Some(t), true) => Some(Accounting::start(t.pid as u32)?),
        _ => None,
    };
    let cpu_before = tracer.as_ref().map(|t| t.cpu_secs()).transpose()?;
    let host_before = HostCpu::now();
    let started = std::time::Instant::now();
    let mut client_cmd = Command::new("ip");
    client_cmd
        .args(["netns", "exec", &net.client, "iperf3", "-c", &net.server_ip.to_string(), "-p", IPERF_PORT, "-J"])
        .args(test.iperf_args(seconds, udp_rate));
    let mut client = Proc::spawn("iperf3 client", &mut client_cmd)?;
    let exit = client.wait(Duration::from_secs(u64::from(seconds) + 30))?;
    let wall_secs = started.elapsed().as_secs_f64();
    let programs = stats.map(Accounting::finish).transpose()?;
    let host_after = HostCpu::now();
    let cpu_after = tracer.as_ref().map(|t| t.cpu_secs()).transpose()?;
    let report: Value = serde_json::from_str(&client.stdout()).map_err(|e| {
        anyhow::anyhow!("iperf3 client ({}) wrote no JSON report: {e}\n{}", exit.describe(), client.tail(10))
    })?;
    if let Some(error) = report.get("error").and_then(Value::as_str) {
        anyhow::bail!("iperf3: {error}");
    }
    let end = &report["end"];
    let received = &end["sum_received"];
    let datagrams = match test {
        Test::Tcp => None,
        Test::Udp | Test::Pps => {
            received["packets"].as_f64().map(|p| p - received["lost_packets"].as_f64().unwrap_or(0.0))
        }
    };
    let bpf = programs.map(|programs| {
        let runs = programs.iter().map(|p| p.runs).sum();
        let run_ns: u64 = programs.iter().map(|p| p.run_ns).sum();
        BpfCost { packets: datagrams, runs, run_ns, cores: run_ns as f64 / 1e9 / wall_secs, programs }
    });
    let (value, loss_percent) = match test {
        Test::Tcp => (received["bits_per_second"].as_f64(), None),
        Test::Udp => (received["bits_per_second"].as_f64(), received["lost_percent"].as_f64()),
        Test::Pps => {
            let packets =
                received["packets"].as_f64().unwrap_or(0.0) - received["lost_packets"].as_f64().unwrap_or(0.0);
            let secs = received["seconds"].as_f64().filter(|&s| s > 0.0);
            (secs.map(|s| packets / s), received["lost_percent"].as_f64())
        }
    };
    let value = value.ok_or_else(|| anyhow::anyhow!("iperf3's report has no received rate"))?;
    let mut run = Run {
        round,
        test,
        variant,
        value: Some(value),
        loss_percent,
        wall_secs,
        tracer_cpu: cpu_before.zip(cpu_after).map(|(b, a)| (a - b) / wall_secs),
        host_busy_cores: host_before.busy_cores_until(&host_after, wall_secs),
        events: None,
        lost_events: None,
        paths_traced: None,
        error: None,
        tracer_note: None,
        bpf,
    };
    if let Some(t) = tracer.as_mut() {
        // The measurement stands however the tracer ends; a bad ending is noted with the run.
        match t.interrupt(Duration::from_secs(20)) {
            Ok(exit) if exit.success() => {}
            Ok(exit) => run.tracer_note = Some(format!("{} ended with {}", t.name, exit.describe())),
            Err(e) => run.tracer_note = Some(format!("{e:#}").lines().next().unwrap_or_default().to_string()),
        }
        if let Some(note) = &run.tracer_note {
            eprintln!("  note: {note}");
        }
        if let Some(summary) = super::dptrace_summary(t) {
            run.events = summary["events"].as_u64();
            run.lost_events = summary["lost_events"].as_u64();
            run.paths_traced = summary["paths"]["traced"].as_u64();
        }
    }
    let _ = server.wait(Duration::from_secs(5));
    Ok(run)
}

/// Waits until the iperf3 server listens (its namespace's /proc/PID/net/tcp{,6} shows it).
fn wait_listening(server: &mut Proc) -> anyhow::Result<()> {
    let port = format!(":{:04X} ", IPERF_PORT.parse::<u16>().unwrap_or(5201));
    let start = std::time::Instant::now();
    loop {
        procs::check_interrupted()?;
        let listening = ["tcp", "tcp6"].iter().any(|f| {
            std::fs::read_to_string(format!("/proc/{}/net/{f}", server.pid)).is_ok_and(|text| {
                text.lines().skip(1).any(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    cols.len() > 3 && format!("{} ", cols[1]).ends_with(&port) && cols[3] == "0A"
                })
            })
        });
        if listening {
            return Ok(());
        }
        if server.has_exited() || start.elapsed() > Duration::from_secs(10) {
            anyhow::bail!("the iperf3 server does not listen:\n{}", server.tail(10));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Syscalls per measurement of the syscall-overhead test.
const SYSCALLS: u32 = 2_000_000;

/// The cost every syscall on the machine pays while a tracer is attached: syscall tracepoints
/// (dptrace's links and xdp families hook `sys_enter_*`/`sys_exit_*`) put every task's
/// syscalls on the kernel's tracing slow path, whichever syscall the programs are for. And
/// the cost every socket send pays: the links family's `sockets` backend (kernels without
/// kprobes) runs a program on the `sock_send_length` raw tracepoint at each one.
#[derive(Debug, Clone, Serialize)]
pub struct Syscalls {
    pub calls: u32,
    pub rounds: u32,
    /// Nanoseconds per `getppid` and per socket send under each setup: median [min–max].
    pub rows: Vec<SyscallRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SyscallRow {
    pub setup: String,
    pub command: String,
    pub ns_per_call: Option<Stat>,
    /// Per `send()` of one byte on an unconnected UDP socket: it goes through the socket
    /// layer (and its tracepoint) and fails with EDESTADDRREQ, so nothing leaves the machine.
    pub ns_per_send: Option<Stat>,
}

/// Times `calls` runs of `call` in nanoseconds per call.
fn ns_per(calls: u32, mut call: impl FnMut()) -> f64 {
    let started = std::time::Instant::now();
    for _ in 0..calls {
        call();
    }
    started.elapsed().as_secs_f64() * 1e9 / f64::from(calls)
}

/// Nanoseconds per `getppid` and per socket send (see [`SyscallRow::ns_per_send`]), each
/// over `calls` calls, in this process (`cargo xtask call-timing`).
pub fn call_timing(calls: u32) -> anyhow::Result<(f64, f64)> {
    // SAFETY: getppid takes no arguments and cannot fail.
    let getppid = ns_per(calls, || unsafe {
        libc::syscall(libc::SYS_getppid);
    });
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").context("a UDP socket for the send test")?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
    // SAFETY: a valid socket and a one-byte buffer that outlives the call.
    let send = ns_per(calls, || unsafe {
        libc::send(fd, b"x".as_ptr().cast(), 1, 0);
    });
    Ok((getppid, send))
}

/// Times `SYSCALLS` getppid calls and as many socket sends with no tracer, with dptrace's
/// default hooks and with `--hooks drops` only, interleaved over `rounds`; in a process of
/// its own, as any process on the machine.
pub fn syscalls(bin: &Path, rounds: u32) -> anyhow::Result<Syscalls> {
    let setups: [(&str, &[&str]); 3] = [
        ("no tracer", &[]),
        ("dptrace (default hooks)", &["trace", "--quiet"]),
        ("dptrace --hooks drops", &["trace", "--quiet", "--hooks", "drops"]),
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    let mut send_samples: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    for round in 1..=rounds {
        for (i, (label, args)) in setups.iter().enumerate() {
            procs::check_interrupted()?;
            let mut tracer = if args.is_empty() {
                None
            } else {
                let mut p = Proc::spawn(label, Command::new(bin).args(*args))?;
                p.wait_for_line("dptrace: tracing on kernel", Duration::from_secs(30))?;
                Some(p)
            };
            procs::sleep(SETTLE)?;
            let timing = Command::new(std::env::current_exe()?)
                .args(["call-timing", &SYSCALLS.to_string()])
                .output()
                .context("running `xtask call-timing`")?;
            let text = String::from_utf8_lossy(&timing.stdout);
            let Some((ns, send_ns)) = text
                .split_once(' ')
                .and_then(|(a, b)| Some((a.trim().parse::<f64>().ok()?, b.trim().parse::<f64>().ok()?)))
            else {
                anyhow::bail!("xtask call-timing printed {text:?}: {}", String::from_utf8_lossy(&timing.stderr));
            };
            if let Some(t) = tracer.as_mut() {
                t.interrupt(Duration::from_secs(20))?;
            }
            eprintln!("  round {round}: {label}: {ns:.0} ns per syscall, {send_ns:.0} ns per socket send");
            samples[i].push(ns);
            send_samples[i].push(send_ns);
        }
    }
    let rows = setups
        .iter()
        .zip(samples.iter().zip(&send_samples))
        .map(|((label, args), (s, sends))| SyscallRow {
            setup: label.to_string(),
            command: if args.is_empty() { String::new() } else { format!("dptrace {}", args.join(" ")) },
            ns_per_call: Stat::of(s),
            ns_per_send: Stat::of(sends),
        })
        .collect();
    Ok(Syscalls { calls: SYSCALLS, rounds, rows })
}
