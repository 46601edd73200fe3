//! The subcommands: `check`, `trace` and `lab`, on top of `session`.

use std::{collections::HashSet, time::Duration};

use anyhow::{bail, Context};

use crate::{
    cli::{self, TraceArgs},
    kernel::netns::inode_of,
    output::{self, pcapng::PcapngWriter},
    probes::path::PathOptions,
    session::{EventFilter, Session, SessionOptions},
};

/// How long to keep reading after the traced command exits: events of its last packets
/// may still be in flight (softirq on another CPU).
const COMMAND_GRACE: Duration = Duration::from_millis(300);

/// What a command found, for the exit status: `Problem` → 1. Errors → 2 (in main).
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Problem,
}

pub fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("dptrace must run as root (it loads eBPF programs and reads tracefs): run it with sudo");
    }
    Ok(())
}

fn event_filter(args: &TraceArgs) -> anyhow::Result<EventFilter> {
    let netns = match &args.netns {
        Some(spec) => {
            let path = cli::netns_path(spec);
            let inode = inode_of(&path).with_context(|| {
                format!("unknown network namespace `{spec}`: {} does not exist (list names with `ip netns list`, or pass /proc/PID/ns/net or a PID)", path.display())
            })?;
            Some(HashSet::from([inode]))
        }
        None => None,
    };
    Ok(EventFilter::new(netns, args.iface.clone()))
}

enum StopCause {
    Duration,
    Signal(&'static str),
    CommandExited(std::process::ExitStatus),
    CommandFailed(std::io::Error),
}

pub async fn trace(args: TraceArgs) -> anyhow::Result<Outcome> {
    for hook in &args.hooks {
        if !cli::HOOK_FAMILIES.contains(&hook.as_str()) {
            bail!("unknown hook family `{hook}`; available: {}", cli::HOOK_FAMILIES.join(", "));
        }
    }
    let filter = event_filter(&args)?;
    require_root()?;
    let mut probes = args.backends.probe_options(args.buffer_size);
    probes.links = args.hooks.iter().any(|h| h == "links");
    probes.netfilter = args.hooks.iter().any(|h| h == "netfilter");
    probes.xdp = args.hooks.iter().any(|h| h == "xdp");
    if args.path {
        if args.filter.is_none() && !args.aggregate {
            eprintln!("dptrace: --path without --filter follows every packet of this node: expect many events and lost ones on a busy node");
        }
        probes.path = Some(PathOptions { filter: args.filter.clone(), aggregate: args.aggregate });
    }
    // Created before tracing starts: a path that cannot be written is an error up front.
    let pcap = match &args.pcap {
        Some(path) => Some(
            PcapngWriter::create(path).with_context(|| format!("cannot write the pcapng file {}", path.display()))?,
        ),
        None => None,
    };
    let monitor_netns = args.netns.as_deref().map(|spec| vec![cli::netns_path(spec)]);
    // Registered before attaching: a signal that arrives while the probes attach and the
    // rulesets are read still ends the session cleanly, with its summary.
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigterm = signal(SignalKind::terminate()).ok();
    let mut sigint = signal(SignalKind::interrupt()).ok();
    let mut session = Session::start(SessionOptions { probes, filter, monitor_netns })?;
    let mut sink = output::sink(args.json, !args.quiet);
    if let Some(writer) = pcap {
        sink = Box::new(output::PcapTee::new(sink, writer, args.pcap.clone().unwrap_or_default()));
    }
    let mut child = match args.command.split_first() {
        Some((program, rest)) => {
            let mut command = tokio::process::Command::new(program);
            command.args(rest);
            if args.json {
                // stdout carries JSON Lines; keep the command's output out of it.
                command.stdout(std::io::stderr());
            }
            Some(command.spawn().with_context(|| format!("cannot run `{program}`"))?)
        }
        None => None,
    };
    let backends: Vec<String> = session.hooks().iter().map(|h| format!("{} via {}", h.family, h.backend)).collect();
    eprintln!("dptrace: tracing on kernel {} ({}); Ctrl-C to stop", session.facts().release, backends.join(", "));

    let duration = args.duration;
    let stop = async {
        let sleep = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let exited = async {
            match child.as_mut() {
                Some(c) => {
                    let status = c.wait().await;
                    tokio::time::sleep(COMMAND_GRACE).await;
                    status
                }
                None => std::future::pending().await,
            }
        };
        let term = received(sigterm.as_mut());
        let int = received(sigint.as_mut());
        tokio::select! {
            _ = sleep => StopCause::Duration,
            _ = int => StopCause::Signal("SIGINT"),
            _ = term => StopCause::Signal("SIGTERM"),
            status = exited => match status {
                Ok(s) => StopCause::CommandExited(s),
                Err(e) => StopCause::CommandFailed(e),
            },
        }
    };
    let cause = session.run_until(stop, sink.as_mut()).await.context("reading the event ring buffer")?;
    let command_status = match (cause, child.as_mut()) {
        (StopCause::CommandExited(status), _) => Some(format!("exited: {status}")),
        (StopCause::CommandFailed(e), _) => Some(format!("could not be waited for: {e}")),
        (other, Some(c)) => {
            let _ = c.start_kill();
            let _ = c.wait().await;
            Some(match other {
                StopCause::Signal(s) => format!("killed when dptrace received {s}"),
                _ => "killed when --duration ended".to_string(),
            })
        }
        (_, None) => None,
    };
    session.finish(sink.as_mut(), command_status);
    Ok(Outcome::Ok)
}

/// Completes when `signal` is delivered; never when it could not be registered.
async fn received(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}
