//! The targets of issue 8 judged from the measurements (reported, never failed on), notes on
//! what limits the numbers, and the Markdown summary.

use std::fmt::Write as _;

use serde::Serialize;

use super::{
    datapath::{Test, Variant, TESTS},
    pipeline::{FloodRun, LONG_PORTS, LONG_RATE},
    Report, Stat,
};

/// One target and whether it holds: `holds` is None when it could not be measured here.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub target: String,
    pub holds: Option<bool>,
    pub verdict: String,
    pub measured: String,
}

fn target(name: &str, holds: Option<bool>, caveat: Option<String>, measured: String) -> Target {
    let verdict = match (holds, caveat) {
        (None, Some(c)) => format!("not measured: {c}"),
        (None, None) => "not measured".into(),
        (Some(true), None) => "holds".into(),
        (Some(false), None) => "does not hold".into(),
        (Some(true), Some(c)) => format!("holds ({c})"),
        (Some(false), Some(c)) => format!("does not hold ({c})"),
    };
    Target { target: name.into(), holds, verdict, measured }
}

const MIB: f64 = 1024.0;
const RSS_LIMIT_KIB: u64 = 64 * 1024;
const TARGET_LONG_SECS: u32 = 600;

pub fn targets(r: &Report) -> Vec<Target> {
    let mut out = Vec::new();
    let not_run = |name: &str, part: &str| target(name, None, Some(format!("`{part}` was not run")), String::new());

    let name = "≥ 98% of untraced throughput with default hooks";
    out.push(match &r.datapath {
        Some(d) => {
            let ratios: Vec<(Test, Option<f64>)> =
                TESTS.iter().map(|&t| (t, d.cell(t, Variant::Default).and_then(|c| c.ratio))).collect();
            let holds = ratios.iter().map(|(_, r)| r.map(|r| r >= 0.98)).collect::<Option<Vec<bool>>>();
            let holds = holds.map(|h| h.iter().all(|&x| x));
            // Below 98% only by less than the untraced runs' own spread: say so.
            let within_noise = ratios.iter().all(|&(t, r)| r.is_some_and(|r| r >= 0.98 - noise(d, t).unwrap_or(0.0)));
            let caveat = match holds {
                Some(false) if within_noise => Some("but within the run-to-run spread".to_string()),
                _ if d.rounds < 2 => Some("one round: noise not estimated".to_string()),
                _ => None,
            };
            let measured =
                ratios.iter().map(|(t, r)| format!("{} {}", t.short(), pct(*r))).collect::<Vec<_>>().join(", ");
            let mut measured = format!("{measured} (medians of {} rounds)", d.rounds);
            if let Some(per_packet) = programs_per_datagram(d, Test::Pps, Variant::Default) {
                measured.push_str(&format!("; in the kernel, per 64 B datagram: {per_packet}"));
            }
            target(name, holds, caveat, measured)
        }
        None => not_run(name, "datapath"),
    });

    let name = "overhead no worse than bpftrace's on the comparable job (kfree_skb drop counting)";
    out.push(match &r.datapath {
        Some(d) => {
            let mut all = Some(true);
            let mut behind_within_noise = false;
            let mut parts = Vec::new();
            for t in TESTS {
                let (ours, theirs) = (d.cell(t, Variant::Default), d.cell(t, Variant::Bpftrace));
                let ratio = |c: Option<&super::datapath::Cell>| c.and_then(|c| c.ratio);
                let cpu = |c: Option<&super::datapath::Cell>| c.and_then(|c| c.tracer_cpu).map(|s| s.median);
                match (ratio(ours), ratio(theirs)) {
                    // Worse only when behind by more than the untraced runs' spread.
                    (Some(a), Some(b)) if a < b => {
                        if b - a > noise(d, t).unwrap_or(0.0) {
                            all = all.map(|_| false);
                        } else {
                            behind_within_noise = true;
                        }
                    }
                    (Some(_), Some(_)) => {}
                    _ => all = None,
                }
                parts.push(format!(
                    "{} {} vs {} (tracer CPU {} vs {} cores)",
                    t.short(),
                    pct(ratio(ours)),
                    pct(ratio(theirs)),
                    num(cpu(ours), 3),
                    num(cpu(theirs), 3)
                ));
            }
            let caveat = if all.is_none() {
                Some("a variant has no successful run".to_string())
            } else if d.rounds < 2 {
                Some("one round: noise not estimated".to_string())
            } else if behind_within_noise && all == Some(true) {
                Some("behind in places by less than the run-to-run spread".to_string())
            } else {
                None
            };
            target(name, all, caveat, format!("dptrace vs bpftrace: {}", parts.join("; ")))
        }
        None => not_run(name, "datapath"),
    });

    let name = "≥ 1,000,000 events/s decoded and analyzed per core";
    out.push(match &r.pipeline {
        Some(p) => {
            let measured_runs: Vec<&FloodRun> = p.runs.iter().filter(|f| f.decoded >= 100_000).collect();
            let best = measured_runs.iter().max_by(|a, b| a.decoded_per_cpu_sec.total_cmp(&b.decoded_per_cpu_sec));
            let steady = best.map(|b| {
                format!(
                    "while the flood runs: best {} per CPU-second ({}), {:.2} CPU-seconds per million events",
                    int(b.decoded_per_cpu_sec),
                    run_label(b),
                    b.cpu_secs_per_million
                )
            });
            match (&p.drain, steady) {
                (Some(d), steady) => target(
                    name,
                    Some(d.decoded_per_cpu_sec >= 1e6),
                    None,
                    format!(
                        "draining a backlog of {} events alone on a core: {} per CPU-second ({} per second of wall time){}",
                        int(d.decoded as f64),
                        int(d.decoded_per_cpu_sec),
                        int(d.decoded_per_wall_sec),
                        steady.map(|s| format!("; {s}")).unwrap_or_default()
                    ),
                ),
                (None, Some(steady)) => target(name, best.map(|b| b.decoded_per_cpu_sec >= 1e6), None, steady),
                (None, None) => target(name, None, Some("no flood run decoded 100,000 events".into()), String::new()),
            }
        }
        None => not_run(name, "pipeline"),
    });

    let name = "zero loss at 500,000 events/s, exact lost counts beyond";
    out.push(match &r.pipeline {
        Some(p) => {
            let at = p.runs.iter().find(|f| f.offered == Some(500_000) && f.buffer == "4m");
            let mut inexact: Vec<String> = p
                .runs
                .iter()
                .filter(|f| f.unaccounted > 0 || (f.lost == 0 && f.unaccounted != 0))
                .map(|f| format!("{} (unaccounted {})", run_label(f), f.unaccounted))
                .collect();
            let drains = [("backlog drain", &p.drain), ("overflow", &p.overflow)];
            for (what, d) in drains.iter().filter_map(|(w, d)| d.as_ref().map(|d| (w, d))) {
                if d.unaccounted > 0 || (d.lost == 0 && d.unaccounted != 0) {
                    inexact.push(format!("{what} (unaccounted {})", d.unaccounted));
                }
            }
            let exact = !p.runs.is_empty() && inexact.is_empty();
            let mut beyond: Vec<String> = p
                .runs
                .iter()
                .filter(|f| f.buffer == "4m" && f.lost > 0)
                .map(|f| format!("{} lost at {}/s", int(f.lost as f64), int(f.delivered_rate)))
                .collect();
            if let Some(o) = p.overflow.as_ref().filter(|o| o.lost > 0) {
                beyond.push(format!(
                    "a backlog of {} in a {} buffer: {} reported + {} lost",
                    int(o.queued as f64),
                    o.buffer,
                    int(o.seen as f64),
                    int(o.lost as f64)
                ));
            }
            let exact_text = if exact {
                "in every run the drops reported plus the lost count equal the receiver's counter".to_string()
            } else {
                format!("counts do not add up in {}", inexact.join(", "))
            };
            let beyond_text = if beyond.is_empty() { String::new() } else { format!("; {}", beyond.join(", ")) };
            match at {
                Some(f) if f.generator_limited => target(
                    name,
                    None,
                    Some(format!("the senders reached only {}/s", int(f.flood.rate()))),
                    format!("{} lost at {}/s{beyond_text}; {exact_text}", int(f.lost as f64), int(f.delivered_rate)),
                ),
                Some(f) => target(
                    name,
                    Some(f.lost == 0 && exact),
                    None,
                    format!(
                        "{} lost at {}/s (4m buffer){beyond_text}; {exact_text}",
                        int(f.lost as f64),
                        int(f.delivered_rate)
                    ),
                ),
                None => target(name, None, Some("no 500,000/s run".into()), exact_text),
            }
        }
        None => not_run(name, "pipeline"),
    });

    let name = "attached and ready in < 1 s with default hooks";
    out.push(match r.startup.as_ref().and_then(|s| s.ready_secs) {
        Some(s) => target(
            name,
            Some(s.max < 1.0),
            None,
            format!("median {:.0} ms, max {:.0} ms over {} runs", s.median * 1e3, s.max * 1e3, s.n),
        ),
        None if r.startup.is_some() => target(name, None, Some("every start-up failed".into()), String::new()),
        None => not_run(name, "startup"),
    });

    let name = "RSS < 64 MiB at 100,000 events/s over 10 minutes";
    out.push(match &r.memory {
        Some(m) => {
            let peak = m.rss_max_kib.max(m.hwm_kib);
            let short = (m.seconds < TARGET_LONG_SECS)
                .then(|| format!("over {} s; the target's 10 minutes need --long-seconds 600", m.seconds));
            target(
                name,
                Some(peak < RSS_LIMIT_KIB),
                short,
                format!(
                    "peak {:.1} MiB (VmHWM {:.1} MiB), {:+.0} KiB/min over the second half, at {}/s sent",
                    m.rss_max_kib as f64 / MIB,
                    m.hwm_kib as f64 / MIB,
                    m.slope_kib_per_min,
                    int(m.flood.rate())
                ),
            )
        }
        None => not_run(name, "memory"),
    });
    out
}

/// What limits or colours the numbers of this run.
pub fn notes(r: &Report) -> Vec<String> {
    let mut notes = Vec::new();
    let load: f64 = r.machine.load_before.split_whitespace().next().and_then(|l| l.parse().ok()).unwrap_or(0.0);
    let busy = |list: &[String]| if list.is_empty() { "none".to_string() } else { list.join(", ") };
    if load > 0.3 * r.machine.cores as f64 || !r.machine.busy_before.is_empty() || !r.machine.busy_after.is_empty() {
        notes.push(format!(
            "Other work was running (load average {} before, {} after, on {} cores; busy processes before: {}; after: {}): expect more noise than on an idle machine.",
            r.machine.load_before,
            r.machine.load_after,
            r.machine.cores,
            busy(&r.machine.busy_before),
            busy(&r.machine.busy_after)
        ));
    }
    if let Some(d) = &r.datapath {
        let spreads: Vec<String> = TESTS
            .iter()
            .filter_map(|&t| {
                let s = d.cell(t, Variant::None)?.value?;
                (s.n > 1).then(|| format!("{} ±{:.1}%", t.short(), spread(&s)))
            })
            .collect();
        if !spreads.is_empty() {
            notes.push(format!(
                "Run-to-run spread of the untraced runs (half the min–max range over the median): {}; smaller differences between variants are noise.",
                spreads.join(", ")
            ));
        }
        let failed: usize = d.cells.iter().map(|c| c.failed_runs).sum();
        if failed > 0 {
            let first = d.runs.iter().find_map(|r| r.error.clone()).unwrap_or_default();
            let first = first.lines().next().unwrap_or_default();
            notes.push(format!("{failed} iperf3 run(s) failed and are left out; the first: {first}"));
        }
        let unclean: Vec<String> = d.runs.iter().filter_map(|r| r.tracer_note.clone()).collect();
        if !unclean.is_empty() {
            notes.push(format!(
                "{} tracer(s) did not stop cleanly on SIGINT (their runs still count): {}",
                unclean.len(),
                unclean.join("; ")
            ));
        }
        for t in TESTS {
            if let Some(c) = d.cell(t, Variant::Path).filter(|c| c.lost_events_max.unwrap_or(0) > 0) {
                notes.push(format!(
                    "`--path` following every packet of {} lost up to {} events per run (ring buffer full): the paths it reports are a sample.",
                    t.short(),
                    int(c.lost_events_max.unwrap_or(0) as f64)
                ));
            }
        }
    }
    if let Some(p) = &r.pipeline {
        let limited: Vec<String> = p
            .runs
            .iter()
            .filter(|f| f.generator_limited)
            .map(|f| format!("{} sent {}/s", run_label(f), int(f.flood.rate())))
            .collect();
        if !limited.is_empty() {
            notes.push(format!(
                "Generator limit: {} sender thread(s) on {} cores could not reach the offered rate ({}); the kernel's receive path runs on the senders' CPUs, and dptrace competes with them for the same cores.",
                p.senders,
                r.machine.cores,
                limited.join(", ")
            ));
        }
        if let Some(max) = p.runs.iter().map(|f| f.flood.rate()).reduce(f64::max).filter(|_| !limited.is_empty()) {
            notes.push(format!(
                "The fastest flood under dptrace reached {}/s: rates above that were not measurable on this machine.",
                int(max)
            ));
        }
        for e in &p.errors {
            notes.push(format!("Flood run failed: {e}"));
        }
    }
    if let Some(s) = &r.startup {
        for e in &s.errors {
            notes.push(format!("Start-up run failed: {e}"));
        }
    }
    if let Some(m) = &r.memory {
        if m.flood.rate() < 0.95 * LONG_RATE as f64 {
            notes.push(format!(
                "The memory session's senders reached only {}/s of {}/s.",
                int(m.flood.rate()),
                int(LONG_RATE as f64)
            ));
        }
    }
    notes.push("Tracer CPU is user + system time of the tracer process (10 ms ticks from /proc/PID/stat); the eBPF programs' own cost runs in the traffic's softirq context and shows in the throughput ratios instead.".into());
    notes
}

pub fn markdown(r: &Report) -> String {
    let m = &r.machine;
    let s = &r.settings;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# dptrace benchmark, {} on {}\n",
        r.started_utc.replace('T', " ").replace('Z', " UTC"),
        m.hostname
    );
    let _ = writeln!(
        out,
        "{} at {} · kernel {} · {}, {} cores, {:.1} GiB · {} · {} · {}  ",
        m.dptrace, m.commit, m.kernel, m.cpu_model, m.cores, m.memory_gib, m.os, m.bpftrace, m.iperf3
    );
    let _ = writeln!(
        out,
        "Mode {}: {} round(s) × {} s per iperf3 test, {} s per flood ({} sender threads), {} s memory session, {} start-ups · took {} · load average {} before, {} after\n",
        s.mode,
        s.rounds,
        s.seconds,
        s.flood_seconds,
        s.senders,
        s.long_seconds,
        s.startup_runs,
        duration(r.total_secs),
        m.load_before,
        m.load_after
    );

    let _ = writeln!(out, "## Targets\n\n| target | verdict | measured |\n|---|---|---|");
    for t in &r.targets {
        let mark = match t.holds {
            Some(true) => "✅",
            Some(false) => "❌",
            None => "–",
        };
        let _ = writeln!(out, "| {} | {mark} {} | {} |", t.target, t.verdict, t.measured);
    }

    if let Some(d) = &r.datapath {
        let _ = writeln!(
            out,
            "\n## Datapath overhead\n\niperf3 from pod-a to pod-b ({}) over veth, bridge cni0, VXLAN flannel.1 and the underlay veth (pods at MTU 1450). \
             Median [min–max] of {} run(s) of {} s, and the median as a share of the untraced one. \
             Tracer rows: the tracer's CPU in cores (CPU-seconds per second) during the test, and for dptrace the events it lost and the paths it followed.\n",
            d.server, d.rounds, d.seconds
        );
        let _ = write!(out, "| test |");
        for v in &d.variants {
            let _ = write!(out, " {} |", v.label());
        }
        let _ = writeln!(out, "\n|---|{}", "---|".repeat(d.variants.len()));
        for t in TESTS {
            let _ = write!(out, "| {} |", t.label(&d.udp_rate));
            for &v in &d.variants {
                let cell = d.cell(t, v);
                let text = match cell.and_then(|c| c.value.map(|s| (s, c.ratio))) {
                    Some((s, ratio)) => {
                        let range = format!(
                            "{:.2} [{:.2}–{:.2}]",
                            t.display_value(s.median),
                            t.display_value(s.min),
                            t.display_value(s.max)
                        );
                        if v == Variant::None {
                            range
                        } else {
                            format!("{range} **{}**", pct(ratio))
                        }
                    }
                    None => "failed".into(),
                };
                let _ = write!(out, " {text} |");
            }
            let _ = write!(out, "\n| ↳ tracer |");
            for &v in &d.variants {
                let text = match d.cell(t, v) {
                    Some(c) if v != Variant::None => {
                        let mut parts = vec![format!("CPU {}", num(c.tracer_cpu.map(|s| s.median), 3))];
                        if !matches!(v, Variant::None | Variant::Bpftrace) {
                            parts.push(format!("lost {}", c.lost_events_max.map_or("?".into(), |l| int(l as f64))));
                        }
                        if let Some(p) = c.paths_traced.filter(|_| matches!(v, Variant::Path | Variant::Aggregate)) {
                            parts.push(format!("{} paths", int(p.median)));
                        }
                        parts.join(", ")
                    }
                    _ => String::new(),
                };
                let _ = write!(out, " {text} |");
            }
            let _ = writeln!(out);
        }
        let udp_loss: Vec<String> = d
            .variants
            .iter()
            .filter_map(|&v| {
                let l = d.cell(Test::Udp, v)?.loss_percent?;
                Some(format!("{} {:.2}%", v.label(), l.median))
            })
            .collect();
        if !udp_loss.is_empty() {
            let _ =
                writeln!(out, "\nUDP datagrams lost at {}bit/s offered (median): {}.", d.udp_rate, udp_loss.join(", "));
        }
        if !d.accounting.is_empty() {
            out.push_str(&accounting_table(d));
        }
    }

    if let Some(sc) = &r.syscalls {
        let _ = writeln!(
            out,
            "\nSyscall overhead (every process on the machine pays it while syscall tracepoints are attached; {} × getppid, median [min–max] of {} round(s)): {}.",
            int(f64::from(sc.calls)),
            sc.rounds,
            overhead_parts(&sc.rows, |row| row.ns_per_call)
        );
        if sc.rows.iter().any(|row| row.ns_per_send.is_some()) {
            let _ = writeln!(
                out,
                "\nSocket-send overhead (every socket send on the machine pays it while a program is attached to `sock_send_length`, as the links family's `sockets` backend does on kernels without kprobes; {} × send() of 1 byte on an unconnected UDP socket, which fails with EDESTADDRREQ after the socket layer, median [min–max] of {} round(s)): {}.",
                int(f64::from(sc.calls)),
                sc.rounds,
                overhead_parts(&sc.rows, |row| row.ns_per_send)
            );
        }
    }

    if let Some(p) = &r.pipeline {
        let _ = writeln!(
            out,
            "\n## Event pipeline\n\nAcross a veth pair, {} s per run from {} sender thread(s) (sendmmsg): {}; \
             `dptrace trace --json --quiet --netns RX --buffer-size B`. \
             *Kernel ns per packet*: CPU time of the sender threads and ksoftirqd per packet (sending, receiving, dropping, dptrace's eBPF hooks and waking dptrace; paced runs add the senders' own sleeping). \
             *Unaccounted*: delivered (the receiver's counter) − drops of that kind dptrace reported − lost events (0 when every drop is either reported or counted lost; \
             below 0 when events of other kinds or namespaces were lost too). *Events per wake-up*: decoded events per voluntary context switch of dptrace's event loop. \
             CPU: dptrace's, from the flood's start until it had drained the ring buffer.\n",
            p.seconds,
            p.senders,
            p.source.describe()
        );
        let _ = writeln!(
            out,
            "| offered/s | buffer | sent/s | kernel ns per packet | events decoded | lost | unaccounted | dptrace CPU s | decoded per CPU-second | CPU s per million | events per wake-up |\n|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for f in &p.runs {
            let _ = writeln!(
                out,
                "| {} | {} | {}{} | {:.0} | {} | {} | {} | {:.2} | {} | {:.2} | {:.0} |",
                f.offered.map_or("max".into(), |o| int(o as f64)),
                f.buffer,
                int(f.flood.rate()),
                if f.generator_limited { " (sender limit)" } else { "" },
                f.flood.ns_per_datagram(),
                int(f.decoded as f64),
                int(f.lost as f64),
                f.unaccounted,
                f.cpu_secs,
                int(f.decoded_per_cpu_sec),
                f.cpu_secs_per_million,
                f.decoded_per_wakeup
            );
        }
        if let Some(b) = &p.baseline {
            let _ = writeln!(
                out,
                "\nWithout a tracer the senders reach {}/s, at {:.0} ns of CPU per packet (sender threads and ksoftirqd: sending, receiving and dropping it).",
                int(b.flood.rate()),
                b.ns_per_datagram
            );
        }
        if let Some(d) = &p.drain {
            let hook_cost = p.baseline.as_ref().map(|b| d.fill_ns_per_datagram - b.ns_per_datagram);
            let _ = writeln!(
                out,
                "\nBacklog drain (`--buffer-size {}`): dptrace stopped (SIGSTOP) while {} packets queued {} events at {}/s ({:.0} ns of CPU per packet{}); \
                 continued, it decoded and analyzed them in {:.2} s using {:.2} CPU-seconds: **{} events per CPU-second**; lost {}, unaccounted {}.",
                d.buffer,
                int(d.flood.sent as f64),
                int(d.queued as f64),
                int(d.flood.rate()),
                d.fill_ns_per_datagram,
                hook_cost.map_or(String::new(), |c| format!(
                    ", {c:+.0} ns against the untraced baseline: what dptrace's eBPF hooks add per drop, writing to a ring buffer too big for the caches"
                )),
                d.drain_wall_secs,
                d.drain_cpu_secs,
                int(d.decoded_per_cpu_sec),
                int(d.lost as f64),
                d.unaccounted
            );
        }
        if let Some((a, (runs, ns))) = p.accounting.as_ref().and_then(|a| Some((a, a.programs_per_packet()?))) {
            let busiest: Vec<String> = a
                .programs
                .iter()
                .flatten()
                .take(3)
                .map(|p| format!("{} {:.0} ns per run", p.name, p.run_ns as f64 / p.runs.max(1) as f64))
                .collect();
            let _ = writeln!(
                out,
                "\nKernel time in dptrace's programs (one more flood at {}/s with the kernel's BPF run-time statistics on): {runs:.2} program runs and **{ns:.0} ns per drop** ({}).",
                int(a.flood.rate()),
                busiest.join(", ")
            );
        }
        if let Some(o) = &p.overflow {
            let _ = writeln!(
                out,
                "\nOverflow (`--buffer-size {}`, the same backlog of {}): {} reported, {} counted lost, unaccounted {}.",
                o.buffer,
                int(o.queued as f64),
                int(o.seen as f64),
                int(o.lost as f64),
                o.unaccounted
            );
        }
        let mut zero_loss = Vec::new();
        for buffer in ["4m", "64m"] {
            let runs: Vec<&FloodRun> = p.runs.iter().filter(|f| f.buffer == buffer).collect();
            let best = runs.iter().filter(|f| f.lost == 0).map(|f| f.delivered_rate).reduce(f64::max);
            let first_loss = runs.iter().filter(|f| f.lost > 0).map(|f| f.delivered_rate).reduce(f64::min);
            zero_loss.push(match (best, first_loss) {
                (_, None) if runs.is_empty() => continue,
                (Some(b), None) => format!("`{buffer}` no loss at any rate reached (up to {}/s)", int(b)),
                (Some(b), Some(l)) => format!("`{buffer}` {}/s, loss from {}/s", int(b), int(l)),
                (None, Some(l)) => format!("`{buffer}` none (loss from {}/s)", int(l)),
                (None, None) => continue,
            });
        }
        if !zero_loss.is_empty() {
            let _ = writeln!(out, "\nLargest rate with zero loss: {}.", zero_loss.join("; "));
        }
    }

    if r.startup.is_some() || r.memory.is_some() {
        let _ = writeln!(out, "\n## Start-up and memory\n");
    }
    if let Some(st) = &r.startup {
        if let Some(ready) = st.ready_secs {
            let _ = writeln!(
                out,
                "- Ready (exec → `dptrace: tracing on kernel …`, default hooks, every hook attached): median {:.0} ms, min {:.0} ms, max {:.0} ms over {} runs; CPU until ready {}; RSS when ready {}; peak RSS of a 1 s session {}.",
                ready.median * 1e3,
                ready.min * 1e3,
                ready.max * 1e3,
                ready.n,
                st.cpu_secs.map_or("?".into(), |c| format!("{:.0} ms", c.median * 1e3)),
                st.rss_ready_kib.map_or("?".into(), |k| format!("{:.1} MiB", k.median / MIB)),
                st.max_rss_kib.map_or("?".into(), |k| format!("{:.1} MiB", k.max / MIB)),
            );
        }
    }
    if let Some(mem) = &r.memory {
        let _ = writeln!(
            out,
            "- Long session: {} s at {}/s offered ({}/s sent) to {} closed ports (more drop groups than dptrace keeps, 4096), `--buffer-size 4m`: \
             RSS {:.1} MiB after 1 s, max {:.1} MiB, {:.1} MiB at the end (VmHWM {:.1} MiB); trend over the second half {:+.0} KiB/min; \
             {} events, {} lost; dptrace CPU {:.2} cores.",
            mem.seconds,
            int(LONG_RATE as f64),
            int(mem.flood.rate()),
            LONG_PORTS,
            mem.rss_first_kib as f64 / MIB,
            mem.rss_max_kib as f64 / MIB,
            mem.rss_last_kib as f64 / MIB,
            mem.hwm_kib as f64 / MIB,
            mem.slope_kib_per_min,
            int(mem.events as f64),
            int(mem.lost as f64),
            mem.cpu_cores
        );
    }

    if !r.notes.is_empty() {
        let _ = writeln!(out, "\n## Notes\n");
        for n in &r.notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}

/// "1.00 program runs, 99 ns (nl_sock_send 1.00)": what a tracer's programs cost per datagram
/// in the accounting run of `test`, and the busiest program's share of the runs.
fn programs_per_datagram(d: &super::datapath::Results, test: Test, variant: Variant) -> Option<String> {
    let run = d.accounting.iter().find(|r| r.test == test && r.variant == variant)?;
    let bpf = run.bpf.as_ref()?;
    let (runs, ns) = bpf.per_packet()?;
    let packets = bpf.packets?;
    let busiest =
        bpf.programs.iter().max_by_key(|p| p.runs).map(|p| format!(" ({} {:.2})", p.name, p.runs as f64 / packets));
    Some(format!("{runs:.2} program runs, {ns:.0} ns{}", busiest.unwrap_or_default()))
}

/// The tracers' kernel-side cost: their process CPU above does not include it.
fn accounting_table(d: &super::datapath::Results) -> String {
    let mut out = String::from(
        "\nKernel time in the tracer's BPF programs (one more run per test and tracer, with the kernel's run-time statistics on; \
         these runs are not in the table above, as the statistics slow each program run a little). \
         The programs run in the context that hits their hook (the sender, softirq), so the tracer's CPU above does not include this.\n\n\
         | test | tracer | program runs/s | cores | per datagram | busiest programs (runs, ns per run) |\n|---|---|---|---|---|---|\n",
    );
    for run in &d.accounting {
        let text = match &run.bpf {
            Some(b) => {
                let per_packet =
                    b.per_packet().map_or("–".into(), |(runs, ns)| format!("{runs:.2} runs, {ns:.0} ns"));
                let busiest: Vec<String> = b
                    .programs
                    .iter()
                    .take(3)
                    .map(|p| format!("{} ({}, {:.0})", p.name, int(p.runs as f64), p.run_ns as f64 / p.runs as f64))
                    .collect();
                format!(
                    "{} | {:.4} | {per_packet} | {}",
                    int(b.runs as f64 / run.wall_secs.max(1e-9)),
                    b.cores,
                    or_dash(busiest.join(", "))
                )
            }
            None => format!(
                "failed: {} | | |",
                run.error.as_deref().unwrap_or("no statistics").lines().next().unwrap_or("")
            ),
        };
        let _ = writeln!(out, "| {} | {} | {text} |", run.test.short(), run.variant.label());
    }
    out
}

fn or_dash(s: String) -> String {
    if s.is_empty() {
        "none ran".into()
    } else {
        s
    }
}

fn run_label(f: &FloodRun) -> String {
    format!("{} offered, {}", f.offered.map_or("max".into(), |o| format!("{}/s", int(o as f64))), f.buffer)
}

/// Half the min–max range of the untraced runs of a test, as a fraction of their median (None
/// with a single run).
fn noise(d: &super::datapath::Results, t: Test) -> Option<f64> {
    let s = d.cell(t, Variant::None)?.value?;
    (s.n > 1).then(|| spread(&s) / 100.0)
}

fn spread(s: &Stat) -> f64 {
    if s.median > 0.0 {
        (s.max - s.min) / 2.0 / s.median * 100.0
    } else {
        0.0
    }
}

fn pct(ratio: Option<f64>) -> String {
    ratio.map_or("?".into(), |r| format!("{:.1}%", r * 100.0))
}

fn num(v: Option<f64>, decimals: usize) -> String {
    v.map_or("?".into(), |v| format!("{v:.decimals$}"))
}

/// An integer with thousands separators.
pub fn int(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn duration(secs: f64) -> String {
    let secs = secs.round() as u64;
    if secs >= 60 {
        format!("{} min {} s", secs / 60, secs % 60)
    } else {
        format!("{secs} s")
    }
}

/// "setup N ns [min–max] (+D ns, +P%)" for each setup, against the first (untraced) one.
fn overhead_parts(
    rows: &[super::datapath::SyscallRow],
    pick: impl Fn(&super::datapath::SyscallRow) -> Option<Stat>,
) -> String {
    let base = rows.first().and_then(&pick).map(|s| s.median);
    rows.iter()
        .map(|row| match (pick(row), base) {
            (Some(s), Some(b)) if !row.command.is_empty() => format!(
                "{} {:.0} ns [{:.0}–{:.0}] ({:+.0} ns, {:+.0}%)",
                row.setup,
                s.median,
                s.min,
                s.max,
                s.median - b,
                (s.median / b - 1.0) * 100.0
            ),
            (Some(s), _) => format!("{} {:.0} ns [{:.0}–{:.0}]", row.setup, s.median, s.min, s.max),
            (None, _) => format!("{} failed", row.setup),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{
        bpf_cost::ProgramCost,
        datapath::{BpfCost, Results, Run},
    };

    #[test]
    fn program_cost_per_datagram_names_the_busiest_program() {
        let program = |name: &str, runs, run_ns| ProgramCost { name: name.into(), runs, run_ns };
        let bpf = BpfCost {
            packets: Some(1000.0),
            runs: 1010,
            run_ns: 110_000,
            cores: 0.01,
            programs: vec![program("kfree_skb_raw", 10, 10_000), program("nl_sock_send", 1000, 100_000)],
        };
        let run = Run {
            round: 0,
            test: Test::Pps,
            variant: Variant::Default,
            value: Some(1.0),
            loss_percent: None,
            wall_secs: 1.0,
            tracer_cpu: None,
            host_busy_cores: 0.0,
            events: None,
            lost_events: None,
            paths_traced: None,
            error: None,
            tracer_note: None,
            bpf: Some(bpf),
        };
        let mut d = Results {
            rounds: 1,
            seconds: 1,
            udp_rate: "1M".into(),
            server: "10.0.0.1".into(),
            variants: vec![Variant::Default],
            cells: vec![],
            runs: vec![],
            accounting: vec![run],
        };
        assert_eq!(
            programs_per_datagram(&d, Test::Pps, Variant::Default).unwrap(),
            "1.01 program runs, 110 ns (nl_sock_send 1.00)"
        );
        assert!(programs_per_datagram(&d, Test::Tcp, Variant::Default).is_none());
        d.accounting[0].bpf.as_mut().unwrap().packets = None;
        assert!(programs_per_datagram(&d, Test::Pps, Variant::Default).is_none());
    }

    #[test]
    fn overhead_is_stated_against_the_untraced_setup() {
        use crate::bench::datapath::SyscallRow;
        let row = |setup: &str, command: &str, call: &[f64], send: &[f64]| SyscallRow {
            setup: setup.into(),
            command: command.into(),
            ns_per_call: Stat::of(call),
            ns_per_send: Stat::of(send),
        };
        let rows = [
            row("no tracer", "", &[170.0, 172.0, 171.0], &[900.0, 910.0, 905.0]),
            row("dptrace (default hooks)", "dptrace trace --quiet", &[171.0], &[1005.0]),
            row("dptrace --hooks drops", "dptrace trace --quiet --hooks drops", &[], &[906.0]),
        ];
        assert_eq!(
            overhead_parts(&rows, |r| r.ns_per_send),
            "no tracer 905 ns [900–910]; dptrace (default hooks) 1005 ns [1005–1005] (+100 ns, +11%); \
             dptrace --hooks drops 906 ns [906–906] (+1 ns, +0%)"
        );
        assert!(overhead_parts(&rows, |r| r.ns_per_call).ends_with("dptrace --hooks drops failed"));
    }

    #[test]
    fn thousands() {
        assert_eq!(int(0.0), "0");
        assert_eq!(int(999.4), "999");
        assert_eq!(int(1000.0), "1,000");
        assert_eq!(int(1_234_567.0), "1,234,567");
    }
}
