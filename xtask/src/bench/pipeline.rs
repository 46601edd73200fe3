//! The event pipeline under a flood of real events across a veth pair, sent at controlled rates
//! by threads of this process that joined the sending namespace (sendmmsg). Two sources (see
//! [`Source`]): Ethernet frames to a MAC address nobody has (an OTHERHOST drop each, cheap
//! enough to offer 500,000/s on two CPUs) and UDP datagrams to closed ports (a NO_SOCKET drop
//! each, through the whole socket path). A counter of the receiver's is the ground truth
//! dptrace's counts (seen + lost) are checked against.
//!
//! Besides the floods at set rates: an untraced baseline (the kernel's own cost per datagram),
//! a backlog drain (dptrace stopped while events queue, then timed while it catches up: its
//! capacity on one core without the generator competing), an overflow of a small buffer (the
//! lost count must make up exactly for what did not fit), and the long session: RSS sampled
//! every second while dptrace takes 100,000 events/s.

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::Value;

use super::{
    bpf_cost::{Accounting, ProgramCost},
    procs::{self, HostCpu, Proc},
    topology::{enter_netns, snmp_counter, Pair},
};

/// Closed destination ports start here.
const BASE_PORT: u16 = 20000;
/// The destination of [`Source::Frames`]: locally administered, on no interface.
const NOBODYS_MAC: [u8; 6] = [0x02, 0xd7, 0x00, 0x00, 0x00, 0x99];

/// What a flood sends, and the receiver's counter of what arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// Ethernet frames (IPv4/UDP inside) to a MAC address nobody has, written to the sender's
    /// veth by an AF_PACKET socket that bypasses the qdisc: an OTHERHOST drop each at IP
    /// receive, counted by the receiver's `otherhost` RX error counter (6.0+). About 1.3 µs of
    /// CPU per frame untraced, against 4 µs for a datagram: two CPUs can offer 500,000/s and
    /// still leave dptrace a core.
    Frames,
    /// UDP datagrams to closed ports (unconnected sockets, so the ICMP port-unreachable
    /// answers do not stop them): a NO_SOCKET drop each in UDP receive, counted by the
    /// receiver's `Udp NoPorts`. The whole socket path, as an application's traffic takes.
    Udp,
}

impl Source {
    pub fn describe(self) -> &'static str {
        match self {
            Source::Frames => {
                "Ethernet frames to a MAC address nobody has (AF_PACKET, qdisc bypassed), each one an OTHERHOST drop \
                 at IP receive; ground truth: the receiver's `otherhost` RX error counter"
            }
            Source::Udp => {
                "UDP datagrams to a closed port (sendmmsg), each one a NO_SOCKET drop in UDP receive; ground truth: \
                 the receiver's Udp NoPorts counter"
            }
        }
    }

    /// The receiver's count of packets this source sent that arrived (and were dropped).
    fn delivered(self, net: &Pair) -> anyhow::Result<u64> {
        match self {
            Source::Udp => snmp_counter(&net.rx, "Udp", "NoPorts"),
            Source::Frames => {
                let out =
                    Command::new("ip").args(["-n", &net.rx, "-j", "-s", "-s", "link", "show", "eth0"]).output()?;
                let stats: Value = serde_json::from_slice(&out.stdout).context("ip -j -s -s link")?;
                let rx = &stats[0]["stats64"]["rx"];
                if !rx.is_object() {
                    bail!("no RX statistics for eth0 in {}", net.rx);
                }
                // `ip` leaves the counter out while it is 0.
                Ok(rx["otherhost"].as_u64().unwrap_or(0))
            }
        }
    }

    /// Fails when packets were sent but the receiver counted none: with frames, a kernel
    /// before 6.0 (no `otherhost` counter).
    fn check_delivered(self, flood: &Flood, delivered: u64) -> anyhow::Result<()> {
        if flood.sent > 0 && delivered == 0 {
            bail!(
                "{} packets sent, none counted by the receiver{}",
                flood.sent,
                if self == Source::Frames { " (the otherhost counter came in 6.0): try --flood udp" } else { "" }
            );
        }
        Ok(())
    }

    /// The drops of this source dptrace reported, from the summary's drop table.
    fn seen(self, summary: &Value) -> u64 {
        let (reason, location) = match self {
            Source::Udp => ("NO_SOCKET", "udp"),
            Source::Frames => ("OTHERHOST", ""),
        };
        summary["drops_by_reason"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter(|r| {
                        r["reason"].as_str() == Some(reason)
                            && r["location"].as_str().is_some_and(|l| l.contains(location))
                    })
                    .filter_map(|r| r["count"].as_u64())
                    .sum()
            })
            .unwrap_or(0)
    }
}
const BATCH: usize = 64;
/// A sender below this share of its target rate is called the limit.
const GENERATOR_SHORTFALL: f64 = 0.95;
/// A ring buffer far too small for the drain test's backlog.
pub const OVERFLOW_BUFFER: &str = "16m";

/// What the senders achieved.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Flood {
    pub sent: u64,
    pub secs: f64,
    pub send_errors: u64,
    /// CPU time of the sender threads (CLOCK_THREAD_CPUTIME_ID) and of the ksoftirqd threads
    /// during the flood: the sending, and the receiving and dropping the kernel does in softirq
    /// (in the senders' context, or in ksoftirqd when it falls behind).
    pub sender_cpu_secs: f64,
    pub ksoftirqd_cpu_secs: f64,
}

impl Flood {
    /// CPU time the kernel and the senders spent per datagram, in nanoseconds.
    pub fn ns_per_datagram(&self) -> f64 {
        (self.sender_cpu_secs + self.ksoftirqd_cpu_secs) * 1e9 / self.sent.max(1) as f64
    }
}

impl Flood {
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.sent as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// A flood from namespace `ns` to `dst` (UDP ports `BASE_PORT..BASE_PORT+ports`).
#[derive(Debug, Clone, Copy)]
pub struct FloodSpec<'a> {
    pub source: Source,
    pub ns: &'a str,
    pub dst: Ipv4Addr,
    /// Datagrams per second in total; None: as fast as the threads can.
    pub rate: Option<u64>,
    pub secs: f64,
    pub threads: usize,
    pub ports: u16,
    /// Stop after about this many datagrams in total.
    pub limit: Option<u64>,
}

impl<'a> FloodSpec<'a> {
    pub fn to(source: Source, net: &'a Pair, rate: Option<u64>, secs: f64, threads: usize) -> Self {
        Self { source, ns: &net.tx, dst: net.rx_ip, rate, secs, threads, ports: 1, limit: None }
    }
}

/// Runs a flood until its time or limit is reached, or `stop` is set.
pub fn flood(spec: FloodSpec<'_>, stop: &AtomicBool) -> anyhow::Result<Flood> {
    let threads = spec.threads.max(1);
    let started = Instant::now();
    let ksoftirqd_before = ksoftirqd_cpu_secs();
    let results: Vec<anyhow::Result<(u64, u64, f64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let thread = Thread {
                    rate: spec.rate.map(|r| r as f64 / threads as f64),
                    limit: spec.limit.map(|l| l.div_ceil(threads as u64)).unwrap_or(u64::MAX),
                    first_port: (i * 7919) as u64,
                };
                s.spawn(move || {
                    enter_netns(spec.ns)?;
                    send_loop(&spec, &thread, stop)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a sender panicked")))).collect()
    });
    let secs = started.elapsed().as_secs_f64();
    let mut total = Flood {
        sent: 0,
        secs,
        send_errors: 0,
        sender_cpu_secs: 0.0,
        ksoftirqd_cpu_secs: ksoftirqd_cpu_secs() - ksoftirqd_before,
    };
    for r in results {
        let (sent, errors, cpu) = r?;
        total.sent += sent;
        total.send_errors += errors;
        total.sender_cpu_secs += cpu;
    }
    Ok(total)
}

/// One sender thread's share.
struct Thread {
    rate: Option<f64>,
    limit: u64,
    first_port: u64,
}

/// One sender thread: batches of `sendmmsg`, paced to its rate when it has one.
fn send_loop(spec: &FloodSpec<'_>, thread: &Thread, stop: &AtomicBool) -> anyhow::Result<(u64, u64, f64)> {
    let socket = open_socket(spec.source)?;
    // Paced senders send small batches often (about 2000 per second), unpaced ones full batches.
    let batch = thread.rate.map_or(BATCH, |r| ((r / 2000.0) as usize).clamp(1, BATCH));
    let payload = match spec.source {
        Source::Udp => vec![0x5au8; 18],
        Source::Frames => frame_to_nobody(spec.dst),
    };
    let mut iov = libc::iovec { iov_base: payload.as_ptr() as *mut libc::c_void, iov_len: payload.len() };
    let mut addrs: Vec<libc::sockaddr_in> = (0..batch)
        .map(|_| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from(spec.dst).to_be() },
            sin_zero: [0; 8],
        })
        .collect();
    let mut link = match spec.source {
        Source::Frames => Some(sender_device()?),
        Source::Udp => None,
    };
    // SAFETY: mmsghdr is plain old data; the pointers are set below.
    let mut msgs: Vec<libc::mmsghdr> = (0..batch).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (msg, addr) in msgs.iter_mut().zip(addrs.iter_mut()) {
        (msg.msg_hdr.msg_name, msg.msg_hdr.msg_namelen) = match link.as_mut() {
            Some(link) => {
                ((link as *mut libc::sockaddr_ll).cast(), std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t)
            }
            None => {
                ((addr as *mut libc::sockaddr_in).cast(), std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t)
            }
        };
        msg.msg_hdr.msg_iov = &mut iov;
        msg.msg_hdr.msg_iovlen = 1;
    }
    let ports = u64::from(spec.ports.max(1));
    let (mut sent, mut errors) = (0u64, 0u64);
    let mut next_port = thread.first_port;
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(spec.secs);
    loop {
        let now = Instant::now();
        if now >= end || sent >= thread.limit || stop.load(Ordering::Relaxed) || procs::interrupted() {
            break;
        }
        if let Some(rate) = thread.rate {
            let due = sent as f64 / rate;
            let elapsed = (now - started).as_secs_f64();
            if due > elapsed {
                std::thread::sleep(Duration::from_secs_f64(due - elapsed).min(Duration::from_millis(10)));
                continue;
            }
        }
        for (msg, addr) in msgs.iter_mut().zip(addrs.iter_mut()) {
            addr.sin_port = (BASE_PORT + (next_port % ports) as u16).to_be();
            next_port += 1;
            msg.msg_len = 0;
        }
        let n = batch.min(usize::try_from(thread.limit - sent).unwrap_or(batch));
        // SAFETY: every mmsghdr points at a live address (sockaddr_in or sockaddr_ll) and the live
        // iovec above.
        let n = unsafe { libc::sendmmsg(socket.as_raw_fd(), msgs.as_mut_ptr(), n as libc::c_uint, 0) };
        if n > 0 {
            sent += n as u64;
        } else {
            // ENOBUFS and the like under overload: count it and go on.
            errors += 1;
            std::thread::yield_now();
        }
    }
    Ok((sent, errors, thread_cpu_secs()))
}

fn open_socket(source: Source) -> anyhow::Result<OwnedFd> {
    let (domain, kind) = match source {
        Source::Udp => (libc::AF_INET, libc::SOCK_DGRAM),
        // Protocol 0: the socket only sends, it receives nothing.
        Source::Frames => (libc::AF_PACKET, libc::SOCK_RAW),
    };
    // SAFETY: socket has no memory-safety preconditions.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    if source == Source::Frames {
        let one: libc::c_int = 1;
        // SAFETY: the option value is a live c_int of the size given.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            bail!("PACKET_QDISC_BYPASS: {}", std::io::Error::last_os_error());
        }
    }
    Ok(socket)
}

/// Where [`Source::Frames`] writes: the sending namespace's `eth0`, to [`NOBODYS_MAC`].
fn sender_device() -> anyhow::Result<libc::sockaddr_ll> {
    // SAFETY: a NUL-terminated name; the calling thread is in the sending namespace.
    let ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
    if ifindex == 0 {
        bail!("no eth0 in the sending namespace: {}", std::io::Error::last_os_error());
    }
    let mut addr = [0u8; 8];
    addr[..6].copy_from_slice(&NOBODYS_MAC);
    Ok(libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: (libc::ETH_P_IP as u16).to_be(),
        sll_ifindex: ifindex as i32,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 6,
        sll_addr: addr,
    })
}

/// A 60-byte Ethernet frame to [`NOBODYS_MAC`] carrying a valid IPv4/UDP datagram to `dst`
/// port [`BASE_PORT`] (so dptrace decodes a flow from it), with an 18-byte payload.
fn frame_to_nobody(dst: Ipv4Addr) -> Vec<u8> {
    let src = Ipv4Addr::from(u32::from(dst) & !0xff | 1);
    let mut frame = Vec::with_capacity(60);
    frame.extend_from_slice(&NOBODYS_MAC);
    frame.extend_from_slice(&[0x02, 0xd7, 0x00, 0x00, 0x00, 0x01]);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    let ip_start = frame.len();
    #[rustfmt::skip]
    frame.extend_from_slice(&[
        0x45, 0, 0, 46, // version 4, 20-byte header, total length 20 + 8 + 18
        0, 0, 0, 0,     // id, flags, fragment offset
        64, 17, 0, 0,   // TTL, UDP, checksum (below)
    ]);
    frame.extend_from_slice(&src.octets());
    frame.extend_from_slice(&dst.octets());
    let sum = frame[ip_start..].chunks(2).fold(0u32, |s, w| s + u32::from(u16::from_be_bytes([w[0], w[1]])));
    let sum = (sum & 0xffff) + (sum >> 16);
    let checksum = !((sum & 0xffff) + (sum >> 16)) as u16;
    frame[ip_start + 10..ip_start + 12].copy_from_slice(&checksum.to_be_bytes());
    frame.extend_from_slice(&40000u16.to_be_bytes());
    frame.extend_from_slice(&BASE_PORT.to_be_bytes());
    frame.extend_from_slice(&26u16.to_be_bytes());
    frame.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
    frame.extend_from_slice(&[0x5a; 18]);
    frame
}

/// CPU time of the calling thread.
fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is valid for writes.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// CPU time of all ksoftirqd threads so far.
fn ksoftirqd_cpu_secs() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0.0 };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("ksoftirqd/")))
        .filter_map(|pid| procs::proc_cpu_secs(pid).ok())
        .sum()
}

/// One flood run under dptrace.
#[derive(Debug, Clone, Serialize)]
pub struct FloodRun {
    /// Datagrams per second asked for; None: as fast as the senders can.
    pub offered: Option<u64>,
    pub buffer: String,
    pub flood: Flood,
    /// Packets that reached the receiver and were dropped there (its counter), per second.
    pub delivered: u64,
    pub delivered_rate: f64,
    /// From dptrace's summary: events analyzed, decoded (analyzed + outside the --netns filter +
    /// undecodable), drops of the source's kind seen, and events lost in the ring buffer.
    pub events: u64,
    pub decoded: u64,
    pub seen: u64,
    pub lost: u64,
    /// delivered - seen - lost: above 0 means drops that were neither reported nor counted lost.
    pub unaccounted: i64,
    /// dptrace's CPU time from the start of the flood until it had drained the ring buffer.
    pub cpu_secs: f64,
    pub window_secs: f64,
    pub decoded_per_cpu_sec: f64,
    pub cpu_secs_per_million: f64,
    /// The senders reached less than 95% of the offered rate.
    pub generator_limited: bool,
    /// Times dptrace's event loop went to sleep and was woken (voluntary context switches of
    /// its main thread) during the window, and events decoded per wake-up.
    pub wakeups: u64,
    pub decoded_per_wakeup: f64,
    /// The accounting run only: what dptrace's programs cost in the kernel during the flood.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub programs: Option<Vec<ProgramCost>>,
}

impl FloodRun {
    /// Program runs and nanoseconds per packet delivered (the accounting run).
    pub fn programs_per_packet(&self) -> Option<(f64, f64)> {
        let programs = self.programs.as_ref()?;
        let packets = (self.delivered > 0).then_some(self.delivered as f64)?;
        let runs: u64 = programs.iter().map(|p| p.runs).sum();
        let ns: u64 = programs.iter().map(|p| p.run_ns).sum();
        Some((runs as f64 / packets, ns as f64 / packets))
    }
}

/// The fastest flood without a tracer: what the kernel's path costs per datagram by itself.
#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    pub flood: Flood,
    pub delivered: u64,
    /// Busy cores of the whole machine during the flood (other work included).
    pub busy_cores: f64,
    /// Senders' and ksoftirqd's CPU per datagram.
    pub ns_per_datagram: f64,
}

/// dptrace's decoding capacity on one core, without the generator competing: dptrace is
/// stopped (SIGSTOP) while a flood queues events in a large ring buffer, then continued and
/// timed while it drains them.
#[derive(Debug, Clone, Serialize)]
pub struct Drain {
    pub buffer: String,
    pub flood: Flood,
    /// While the events queued: busy cores of the whole machine, and the senders' and
    /// ksoftirqd's CPU per datagram: the kernel's path plus dptrace's eBPF hooks writing to the
    /// ring buffer (compare with the baseline).
    pub fill_busy_cores: f64,
    pub fill_ns_per_datagram: f64,
    pub queued: u64,
    pub decoded: u64,
    pub seen: u64,
    pub lost: u64,
    pub unaccounted: i64,
    pub drain_wall_secs: f64,
    pub drain_cpu_secs: f64,
    pub decoded_per_cpu_sec: f64,
    pub decoded_per_wall_sec: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub source: Source,
    pub seconds: u32,
    pub senders: usize,
    pub baseline: Option<Baseline>,
    pub runs: Vec<FloodRun>,
    pub drain: Option<Drain>,
    /// The same with a ring buffer too small for the backlog: the lost count must make up
    /// exactly for the events that did not fit.
    pub overflow: Option<Drain>,
    /// One more flood at [`ACCOUNTING_RATE`] with BPF run-time statistics on (kept out of
    /// `runs`: the statistics slow every program run a little).
    pub accounting: Option<FloodRun>,
    pub errors: Vec<String>,
}

/// `--buffer-size` values and the rates tried with each.
pub fn plan(quick: bool) -> Vec<(&'static str, Option<u64>)> {
    let mut plan = Vec::new();
    let (default_rates, big_rates): (&[Option<u64>], &[Option<u64>]) = if quick {
        (&[Some(100_000), Some(500_000), None], &[None])
    } else {
        (
            &[Some(50_000), Some(100_000), Some(250_000), Some(500_000), Some(1_000_000), None],
            &[Some(500_000), Some(1_000_000), None],
        )
    };
    plan.extend(default_rates.iter().map(|&r| ("4m", r)));
    plan.extend(big_rates.iter().map(|&r| ("64m", r)));
    plan
}

pub fn run(
    source: Source,
    bin: &Path,
    net: &Pair,
    seconds: u32,
    senders: usize,
    quick: bool,
) -> anyhow::Result<Results> {
    let mut results = Results {
        source,
        seconds,
        senders,
        baseline: None,
        runs: Vec::new(),
        drain: None,
        overflow: None,
        accounting: None,
        errors: Vec::new(),
    };
    eprintln!("flood as fast as possible without a tracer (the baseline)");
    match baseline(source, net, seconds, senders) {
        Ok(b) => {
            eprintln!("  sent {:.0}/s, {:.0} ns of CPU per datagram", b.flood.rate(), b.ns_per_datagram);
            results.baseline = Some(b);
        }
        Err(e) if procs::interrupted() => return Err(e),
        Err(e) => results.errors.push(format!("baseline: {e:#}")),
    }
    let plan = plan(quick);
    for (i, &(buffer, offered)) in plan.iter().enumerate() {
        procs::check_interrupted()?;
        let rate_text = offered.map_or("as fast as possible".to_string(), |r| format!("{r}/s"));
        eprintln!("[{}/{}] flood {rate_text}, --buffer-size {buffer}", i + 1, plan.len());
        match one(source, bin, net, buffer, offered, seconds, senders, false) {
            Ok(run) => {
                eprintln!(
                    "  sent {:.0}/s, dptrace decoded {} ({:.0} per CPU-second), lost {}, unaccounted {}",
                    run.flood.rate(),
                    run.decoded,
                    run.decoded_per_cpu_sec,
                    run.lost,
                    run.unaccounted
                );
                results.runs.push(run);
            }
            Err(e) if procs::interrupted() => return Err(e),
            Err(e) => {
                eprintln!("  failed: {e:#}");
                results.errors.push(format!("{rate_text} with {buffer}: {e:#}"));
            }
        }
    }
    procs::check_interrupted()?;
    eprintln!("accounting: flood {ACCOUNTING_RATE}/s with BPF statistics on");
    match one(source, bin, net, "4m", Some(ACCOUNTING_RATE), seconds.min(3), senders, true) {
        Ok(run) => {
            if let Some((runs, ns)) = run.programs_per_packet() {
                eprintln!("  {runs:.2} program runs, {ns:.0} ns per drop");
            }
            results.accounting = Some(run);
        }
        Err(e) if procs::interrupted() => return Err(e),
        Err(e) => results.errors.push(format!("accounting: {e:#}")),
    }
    let events = if quick { 500_000 } else { 1_000_000 };
    // About 224 bytes per drop record: the big buffer holds the backlog, 16m does not.
    let big = if quick { "256m" } else { "512m" };
    for (buffer, overflow) in [(big, false), (OVERFLOW_BUFFER, true)] {
        procs::check_interrupted()?;
        let what = if overflow { "overflow" } else { "backlog drain" };
        eprintln!("{what}: {events} events queued while dptrace is stopped, --buffer-size {buffer}");
        match drain(source, bin, net, buffer, events, senders) {
            Ok(d) => {
                eprintln!(
                    "  drained {} events in {:.2} s ({:.0} per CPU-second), lost {}, unaccounted {}",
                    d.decoded, d.drain_wall_secs, d.decoded_per_cpu_sec, d.lost, d.unaccounted
                );
                if overflow {
                    results.overflow = Some(d);
                } else {
                    results.drain = Some(d);
                }
            }
            Err(e) if procs::interrupted() => return Err(e),
            Err(e) => {
                eprintln!("  failed: {e:#}");
                results.errors.push(format!("{what}: {e:#}"));
            }
        }
    }
    Ok(results)
}

fn baseline(source: Source, net: &Pair, seconds: u32, senders: usize) -> anyhow::Result<Baseline> {
    let delivered_before = source.delivered(net)?;
    let host_before = HostCpu::now();
    let flood = flood(FloodSpec::to(source, net, None, f64::from(seconds), senders), &AtomicBool::new(false))?;
    let busy = HostCpu::now().busy - host_before.busy;
    let delivered = source.delivered(net)? - delivered_before;
    source.check_delivered(&flood, delivered)?;
    Ok(Baseline { flood, delivered, busy_cores: busy / flood.secs.max(1e-9), ns_per_datagram: flood.ns_per_datagram() })
}

fn drain(source: Source, bin: &Path, net: &Pair, buffer: &str, events: u64, senders: usize) -> anyhow::Result<Drain> {
    let mut p = start_dptrace(bin, net, buffer)?;
    let delivered_before = source.delivered(net)?;
    p.signal(libc::SIGSTOP);
    procs::sleep(Duration::from_millis(100))?;
    let host_before = HostCpu::now();
    let spec = FloodSpec { limit: Some(events), ..FloodSpec::to(source, net, None, 60.0, senders) };
    let flood = flood(spec, &AtomicBool::new(false));
    let busy = HostCpu::now().busy - host_before.busy;
    let queued = source.delivered(net).map(|n| n - delivered_before);
    let cpu_before = p.cpu_secs();
    let continued = Instant::now();
    p.signal(libc::SIGCONT);
    let (flood, queued, cpu_before) = (flood?, queued?, cpu_before?);
    source.check_delivered(&flood, queued)?;
    // Drained when the CPU time has not moved for 300 ms; the drain ended at its last move.
    let (mut last_cpu, mut last_move) = (cpu_before, continued);
    while last_move.elapsed() < Duration::from_millis(300) && continued.elapsed() < Duration::from_secs(120) {
        procs::sleep(Duration::from_millis(5))?;
        let cpu = p.cpu_secs()?;
        if cpu > last_cpu {
            (last_cpu, last_move) = (cpu, Instant::now());
        }
    }
    let drain_wall_secs = (last_move - continued).as_secs_f64();
    let drain_cpu_secs = last_cpu - cpu_before;
    let exit = p.interrupt(Duration::from_secs(30))?;
    if !exit.success() {
        let tail = p.tail(10);
        bail!("dptrace ended with {}:\n{tail}", exit.describe());
    }
    let summary = super::dptrace_summary(&mut p).context("dptrace printed no summary")?;
    let count = |key: &str| summary[key].as_u64().unwrap_or(0);
    let decoded = count("events") + count("filtered_events") + count("decode_errors");
    let (lost, seen) = (count("lost_events"), source.seen(&summary));
    Ok(Drain {
        buffer: buffer.to_string(),
        flood,
        fill_busy_cores: busy / flood.secs.max(1e-9),
        fill_ns_per_datagram: flood.ns_per_datagram(),
        queued,
        decoded,
        seen,
        lost,
        unaccounted: queued as i64 - seen as i64 - lost as i64,
        drain_wall_secs,
        drain_cpu_secs,
        decoded_per_cpu_sec: if drain_cpu_secs > 0.0 { decoded as f64 / drain_cpu_secs } else { 0.0 },
        decoded_per_wall_sec: if drain_wall_secs > 0.0 { decoded as f64 / drain_wall_secs } else { 0.0 },
    })
}

/// Starts `dptrace trace --json --quiet --netns RX` and waits until it is attached.
fn start_dptrace(bin: &Path, net: &Pair, buffer: &str) -> anyhow::Result<Proc> {
    let mut p = Proc::spawn(
        "dptrace",
        Command::new(bin).args(["trace", "--json", "--quiet", "--netns", &net.rx, "--buffer-size", buffer]),
    )?;
    p.wait_for_line("dptrace: tracing on kernel", Duration::from_secs(30))?;
    procs::sleep(Duration::from_millis(300))?;
    Ok(p)
}

/// Waits until dptrace's CPU time stops growing: it has drained the ring buffer.
fn wait_drained(p: &Proc) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last = p.cpu_secs()?;
    let mut still = 0;
    while start.elapsed() < Duration::from_secs(10) {
        procs::sleep(Duration::from_millis(100))?;
        let now = p.cpu_secs()?;
        // Less than a clock tick per 100 ms: idle.
        if now - last < 0.015 {
            still += 1;
            if still >= 2 {
                return Ok(());
            }
        } else {
            still = 0;
        }
        last = now;
    }
    Ok(())
}

/// The rate of the accounting flood: one every dptrace keeps up with.
const ACCOUNTING_RATE: u64 = 100_000;

#[allow(clippy::too_many_arguments)]
fn one(
    source: Source,
    bin: &Path,
    net: &Pair,
    buffer: &str,
    offered: Option<u64>,
    seconds: u32,
    senders: usize,
    account: bool,
) -> anyhow::Result<FloodRun> {
    let mut p = start_dptrace(bin, net, buffer)?;
    let stats = if account { Some(Accounting::start(p.pid as u32)?) } else { None };
    let delivered_before = source.delivered(net)?;
    let cpu_before = p.cpu_secs()?;
    let switches_before = p.status_kib("voluntary_ctxt_switches").unwrap_or(0);
    let started = Instant::now();
    let stop = AtomicBool::new(false);
    let flood = flood(FloodSpec::to(source, net, offered, f64::from(seconds), senders), &stop)?;
    wait_drained(&p)?;
    let programs = stats.map(Accounting::finish).transpose()?;
    let window_secs = started.elapsed().as_secs_f64();
    let cpu_secs = p.cpu_secs()? - cpu_before;
    let wakeups = p.status_kib("voluntary_ctxt_switches").unwrap_or(0).saturating_sub(switches_before);
    let delivered = source.delivered(net)? - delivered_before;
    source.check_delivered(&flood, delivered)?;
    let exit = p.interrupt(Duration::from_secs(30))?;
    if !exit.success() {
        bail!("dptrace ended with {}:\n{}", exit.describe(), p.tail(10));
    }
    let summary = super::dptrace_summary(&mut p).context("dptrace printed no summary")?;
    let count = |key: &str| summary[key].as_u64().unwrap_or(0);
    let (events, lost) = (count("events"), count("lost_events"));
    let decoded = events + count("filtered_events") + count("decode_errors");
    let seen = source.seen(&summary);
    let offered_rate = offered.map(|r| r as f64);
    Ok(FloodRun {
        offered,
        buffer: buffer.to_string(),
        flood,
        delivered,
        delivered_rate: delivered as f64 / flood.secs.max(1e-9),
        events,
        decoded,
        seen,
        lost,
        unaccounted: delivered as i64 - seen as i64 - lost as i64,
        cpu_secs,
        window_secs,
        decoded_per_cpu_sec: if cpu_secs > 0.0 { decoded as f64 / cpu_secs } else { 0.0 },
        cpu_secs_per_million: if decoded > 0 { cpu_secs / (decoded as f64 / 1e6) } else { 0.0 },
        generator_limited: offered_rate.is_some_and(|r| flood.rate() < GENERATOR_SHORTFALL * r),
        wakeups,
        decoded_per_wakeup: decoded as f64 / wakeups.max(1) as f64,
        programs,
    })
}

/// One RSS sample of the long session.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RssSample {
    pub secs: f64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub cpu_secs: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub seconds: u32,
    pub offered: u64,
    pub ports: u16,
    pub flood: Flood,
    pub events: u64,
    pub lost: u64,
    pub rss_first_kib: u64,
    pub rss_max_kib: u64,
    pub rss_last_kib: u64,
    /// VmHWM just before the end (the peak the kernel saw, between samples too).
    pub hwm_kib: u64,
    /// Least-squares slope of RSS over the second half of the session, KiB per minute.
    pub slope_kib_per_min: f64,
    pub cpu_cores: f64,
    pub samples: Vec<RssSample>,
}

/// Destination ports of the long session: more than dptrace keeps drop groups for (4096), so
/// its per-flow state reaches its bounds.
pub const LONG_PORTS: u16 = 8192;
pub const LONG_RATE: u64 = 100_000;

pub fn memory(bin: &Path, net: &Pair, seconds: u32, senders: usize) -> anyhow::Result<Memory> {
    let mut p = start_dptrace(bin, net, "4m")?;
    let started = Instant::now();
    let stop = AtomicBool::new(false);
    let cpu_before = p.cpu_secs()?;
    let (flood, samples) = std::thread::scope(|s| -> anyhow::Result<(Flood, Vec<RssSample>)> {
        let sender = s.spawn(|| {
            let spec = FloodSpec {
                ports: LONG_PORTS,
                ..FloodSpec::to(Source::Udp, net, Some(LONG_RATE), f64::from(seconds), senders)
            };
            flood(spec, &stop)
        });
        let mut samples = Vec::new();
        let mut next = 1.0;
        while !sender.is_finished() {
            if procs::interrupted() {
                stop.store(true, Ordering::Relaxed);
                break;
            }
            let secs = started.elapsed().as_secs_f64();
            if secs >= next {
                next += 1.0;
                let sample = RssSample {
                    secs,
                    rss_kib: p.status_kib("VmRSS").unwrap_or(0),
                    hwm_kib: p.status_kib("VmHWM").unwrap_or(0),
                    cpu_secs: p.cpu_secs().unwrap_or(0.0) - cpu_before,
                };
                if (sample.secs as u64).is_multiple_of(10) {
                    eprintln!("  {:>4.0} s: RSS {} KiB", sample.secs, sample.rss_kib);
                }
                samples.push(sample);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let flood = sender.join().map_err(|_| anyhow::anyhow!("the flood panicked"))??;
        Ok((flood, samples))
    })?;
    procs::check_interrupted()?;
    let hwm_kib = p.status_kib("VmHWM").unwrap_or(0);
    let cpu = p.cpu_secs()? - cpu_before;
    let exit = p.interrupt(Duration::from_secs(60))?;
    if !exit.success() {
        bail!("dptrace ended with {}:\n{}", exit.describe(), p.tail(10));
    }
    let summary = super::dptrace_summary(&mut p).context("dptrace printed no summary")?;
    let rss: Vec<u64> = samples.iter().map(|s| s.rss_kib).collect();
    let half = &samples[samples.len() / 2..];
    Ok(Memory {
        seconds,
        offered: LONG_RATE,
        ports: LONG_PORTS,
        flood,
        events: summary["events"].as_u64().unwrap_or(0),
        lost: summary["lost_events"].as_u64().unwrap_or(0),
        rss_first_kib: rss.first().copied().unwrap_or(0),
        rss_max_kib: rss.iter().copied().max().unwrap_or(0),
        rss_last_kib: rss.last().copied().unwrap_or(0),
        hwm_kib,
        slope_kib_per_min: slope(half.iter().map(|s| (s.secs / 60.0, s.rss_kib as f64))),
        cpu_cores: cpu / flood.secs.max(1e-9),
        samples,
    })
}

/// Least-squares slope of y over x.
fn slope(points: impl Iterator<Item = (f64, f64)>) -> f64 {
    let points: Vec<(f64, f64)> = points.collect();
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx > 0.0 {
        sxy / sxx
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flood_frame_is_a_minimal_ethernet_frame_with_a_valid_ipv4_header() {
        let frame = frame_to_nobody(Ipv4Addr::new(10, 99, 0, 2));
        assert_eq!(frame.len(), 60);
        assert_eq!(frame[..6], NOBODYS_MAC);
        let header = &frame[14..34];
        let sum = header.chunks(2).fold(0u32, |s, w| s + u32::from(u16::from_be_bytes([w[0], w[1]])));
        assert_eq!((sum & 0xffff) + (sum >> 16), 0xffff, "the header checksum verifies");
        assert_eq!(header[12..20], [10, 99, 0, 1, 10, 99, 0, 2]);
        assert_eq!(u16::from_be_bytes([frame[36], frame[37]]), BASE_PORT);
    }

    #[test]
    fn slope_of_a_line() {
        let points = (0..10).map(|x| (f64::from(x), 3.0 * f64::from(x) + 1.0));
        assert!((super::slope(points) - 3.0).abs() < 1e-9);
        assert_eq!(super::slope(std::iter::once((1.0, 1.0))), 0.0);
    }
}
