//! XDP requests for lab scenarios: iproute2's `ip link set dev DEV xdp… obj FILE program
//! NAME`, run inside a lab namespace (as itself or as a copy named like an agent), with what
//! the tool and the kernel answered. Devices touched here are always inside lab namespaces.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context;

use super::netns::{actor_output, iproute2_ip, Unreproducible};

/// The XDP mode an attach request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// In the driver (`xdpdrv`, XDP_FLAGS_DRV_MODE); needs the driver's `ndo_bpf`.
    Native,
    /// On the generic skb path (`xdpgeneric`, XDP_FLAGS_SKB_MODE); every device has it.
    Generic,
}

impl Mode {
    /// `ip link`'s keyword for the mode.
    pub fn keyword(self) -> &'static str {
        match self {
            Mode::Native => "xdpdrv",
            Mode::Generic => "xdpgeneric",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::Generic => "generic",
        }
    }
}

/// One `ip link set … xdp…` request and its result.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The command line, as an operator would type it (`ip` is the actor's name).
    pub command: String,
    pub ok: bool,
    pub status: Option<i32>,
    /// What the tool printed on stderr (libbpf's log and iproute2's `Error: <extack>`).
    pub stderr: String,
}

impl Attempt {
    /// The essential part of what the tool said: iproute2's `Error: …` line (the kernel's
    /// extended ack), or libbpf's load failure with the verifier's reason.
    pub fn said(&self) -> String {
        if self.ok {
            return "ok".into();
        }
        let lines: Vec<&str> = self.stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let mut parts = Vec::new();
        if let Some(failed) = lines.iter().find(|l| l.contains("BPF program load failed")) {
            parts.push(failed.trim_start_matches("libbpf: ").to_string());
        }
        if let Some(reason) = verifier_reason(&lines) {
            parts.push(format!("verifier: {reason}"));
        }
        if let Some(error) = lines.iter().find(|l| l.starts_with("Error:")) {
            parts.push(error.to_string());
        }
        if parts.is_empty() {
            parts.push(lines.last().map_or_else(|| "(no message)".to_string(), |l| l.to_string()));
        }
        let status = self.status.map_or_else(|| "killed".into(), |s| format!("exit status {s}"));
        format!("{status}: {}", parts.join("; "))
    }
}

/// The verifier's reason in libbpf's "PROG LOAD LOG": the line before its `processed N insns`
/// statistics.
fn verifier_reason<'a>(lines: &[&'a str]) -> Option<&'a str> {
    let processed = lines.iter().position(|l| l.starts_with("processed ") && l.contains(" insns"))?;
    lines[..processed].last().copied().filter(|l| !l.contains("BEGIN PROG LOAD LOG"))
}

/// Runs `<program> link set dev DEV <mode> obj OBJECT program NAME` inside namespace `netns`
/// (`program` is iproute2's `ip` or a copy of it named like an agent).
pub fn attach(
    program: &Path,
    netns: &str,
    dev: &str,
    mode: Mode,
    object: &Path,
    prog: &str,
) -> anyhow::Result<Attempt> {
    let object = object.to_string_lossy();
    let args = ["link", "set", "dev", dev, mode.keyword(), "obj", &object, "program", prog];
    run(program, netns, &args)
}

/// Removes the XDP program of `mode` from `dev` in `netns`.
pub fn detach(netns: &str, dev: &str, mode: Mode) -> anyhow::Result<Attempt> {
    run(&iproute2_ip(), netns, &["link", "set", "dev", dev, mode.keyword(), "off"])
}

fn run(program: &Path, netns: &str, args: &[&str]) -> anyhow::Result<Attempt> {
    let name = program.file_name().map_or_else(|| program.to_string_lossy(), |n| n.to_string_lossy());
    let command = format!("{name} {}", args.join(" "));
    let out = actor_output(Command::new(iproute2_ip()).args(["netns", "exec", netns]).arg(program).args(args))
        .with_context(|| format!("cannot run `{command}` in {netns}"))?;
    Ok(Attempt {
        command,
        ok: out.status.success(),
        status: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs `attempt` `times` times, `interval` apart (a loader retrying), and returns every result.
pub fn retry(
    times: usize,
    interval: Duration,
    mut attempt: impl FnMut() -> anyhow::Result<Attempt>,
) -> anyhow::Result<Vec<Attempt>> {
    let mut attempts = Vec::with_capacity(times);
    for i in 0..times {
        let started = Instant::now();
        attempts.push(attempt()?);
        if i + 1 < times {
            std::thread::sleep(interval.saturating_sub(started.elapsed()));
        }
    }
    Ok(attempts)
}

/// One line per distinct outcome: `who: COMMAND: WHAT IT SAID (n of N attempts)`.
pub fn attempt_lines(who: &str, attempts: &[Attempt]) -> Vec<String> {
    let mut seen: Vec<(String, String, usize)> = Vec::new();
    for a in attempts {
        let said = a.said();
        match seen.iter_mut().find(|(c, s, _)| *c == a.command && *s == said) {
            Some((_, _, n)) => *n += 1,
            None => seen.push((a.command.clone(), said, 1)),
        }
    }
    seen.into_iter()
        .map(|(command, said, n)| format!("{who}: `{command}`: {said} ({n} of {} attempts)", attempts.len()))
        .collect()
}

/// The XDP program attached to `dev` in `netns`, as `ip -d link show` says it
/// (`xdp`/`xdpgeneric` mode and `prog/xdp id N name NAME …`); None when there is none.
pub fn attached(netns: &str, dev: &str) -> anyhow::Result<Option<String>> {
    let out = Command::new(iproute2_ip())
        .args(["-n", netns, "-d", "link", "show", "dev", dev])
        .output()
        .with_context(|| format!("cannot run `ip -d link show dev {dev}` in {netns}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mode = text.split_whitespace().find(|w| ["xdp", "xdpgeneric", "xdpdrv", "xdpoffload"].contains(w));
    let prog = text.lines().map(str::trim).find(|l| l.starts_with("prog/xdp"));
    Ok(match (mode, prog) {
        (None, None) => None,
        (mode, prog) => Some(format!("{} {}", mode.unwrap_or("xdp"), prog.unwrap_or("(program unknown)"))),
    })
}

/// Checks, with a harmless XDP_PASS fixture attached to `dev` in generic mode and removed
/// again, that this kernel and this iproute2 can load the lab's fixtures (iproute2 may be
/// built without libbpf/libelf: "No ELF library support compiled in").
pub fn check_loader(netns: &str, dev: &str, object: &Path, pass_program: &str) -> anyhow::Result<()> {
    let probe = attach(&iproute2_ip(), netns, dev, Mode::Generic, object, pass_program)?;
    if !probe.ok {
        // iproute2 built without libbpf/libelf is a fact of the tool, not of the kernel.
        let fact = if probe.stderr.contains("No ELF library support") {
            "missing-tool:ip-with-libbpf"
        } else {
            "kernel-refuses-xdp-fixtures"
        };
        return Err(Unreproducible::new(
            fact,
            format!(
                "iproute2 or the kernel cannot load the lab's XDP fixtures here: `{}`: {}",
                probe.command,
                probe.said()
            ),
        )
        .into());
    }
    let off = detach(netns, dev, Mode::Generic)?;
    anyhow::ensure!(off.ok, "`{}` failed: {}", off.command, off.said());
    Ok(())
}
