//! The subcommands: `check`, `trace` and `lab`, on top of `session`.

use std::{collections::HashSet, time::Duration};

use anyhow::{bail, Context};

use crate::{
    cli::{self, TraceArgs},
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
    if let Some(missing) = missing_bpf_capabilities() {
        bail!("dptrace runs as root but without {missing}, which loading eBPF programs needs: run it with root's full capabilities (sudo; in a container: privileged, or grant CAP_BPF and CAP_PERFMON)");
    }
    Ok(())
}

/// The capabilities this process lacks to load and attach eBPF programs (CAP_BPF and
/// CAP_PERFMON, or CAP_SYS_ADMIN; only the latter before 5.8), as text; None when it has them.
/// Without this check a root without them (`capsh --drop`, a container) fails later with a
/// list of EPERMs from every backend.
fn missing_bpf_capabilities() -> Option<String> {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())?;
    let has = |cap: u32| effective & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) {
        return None;
    }
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .unwrap_or(CAP_BPF);
    if last_cap < CAP_BPF {
        return Some("CAP_SYS_ADMIN".into());
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(c, _)| !has(*c))
        .map(|(_, n)| n)
        .collect();
    (!missing.is_empty()).then(|| format!("{} (or CAP_SYS_ADMIN)", missing.join(" and ")))
}

/// How `--netns` is written, for error messages.
const NETNS_FORMS: &str = "give a name from `ip netns list`, a path such as /proc/PID/ns/net, or a PID";

/// The inode of the network namespace `--netns SPEC` names, or a one-line reason it names none.
fn netns_inode(spec: &str) -> anyhow::Result<u32> {
    use std::os::{fd::AsRawFd, unix::fs::MetadataExt};
    if spec.is_empty() {
        bail!("--netns is empty: {NETNS_FORMS}");
    }
    let path = cli::netns_path(spec);
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && spec.chars().all(|c| c.is_ascii_digit()) => {
            bail!(
                "unknown network namespace `{spec}`: no process {spec} is running ({} does not exist); {NETNS_FORMS}",
                path.display()
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("unknown network namespace `{spec}`: {} does not exist (list names with `ip netns list`, or pass /proc/PID/ns/net or a PID)", path.display())
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            require_root()?;
            bail!("cannot open the network namespace `{spec}` ({}): {e}", path.display())
        }
        Err(e) => bail!("cannot open the network namespace `{spec}` ({}): {e}; {NETNS_FORMS}", path.display()),
    };
    // A namespace file lives on nsfs; NS_GET_NSTYPE (4.11+) tells a network namespace from the
    // others. Any other file (a typo'd path, /run/netns itself) would filter out everything.
    const NS_GET_NSTYPE: u32 = 0xb703;
    let on_nsfs = nix::sys::statfs::fstatfs(&file).is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC);
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the open file's namespace type.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if !on_nsfs || (kind >= 0 && kind != libc::CLONE_NEWNET) {
        bail!(
            "`{spec}` is not a network namespace ({} is not a network namespace file); {NETNS_FORMS}",
            path.display()
        );
    }
    Ok(file.metadata()?.ino() as u32)
}

/// Whether a device named `name` exists in the network namespace at `netns` (entered by a
/// short-lived thread), or in this process's namespace when `netns` is None.
fn device_exists(name: &str, netns: Option<&std::path::Path>) -> bool {
    let Some(netns) = netns else { return nix::net::if_::if_nametoindex(name).is_ok() };
    let Ok(file) = std::fs::File::open(netns) else { return false };
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).is_ok()
                && nix::net::if_::if_nametoindex(name).is_ok()
        })
        .join()
        .unwrap_or(false)
    })
}

/// `--iface NAME` must name a device that exists: in the `--netns` namespace, or else in this
/// one or a named one. A typo would otherwise trace nothing, silently, until Ctrl-C.
fn check_iface(name: &str, netns: Option<&str>) -> anyhow::Result<()> {
    match netns {
        Some(spec) => {
            if !device_exists(name, Some(&cli::netns_path(spec))) {
                bail!("no network device `{name}` in network namespace `{spec}`: check the name (list the devices there with `ip link`), or trace while the command that creates it runs (`dptrace trace --iface {name} -- COMMAND`)");
            }
        }
        None => {
            let named = std::fs::read_dir("/run/netns")
                .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
                .unwrap_or_default();
            if !device_exists(name, None) && !named.iter().any(|ns| device_exists(name, Some(ns))) {
                bail!("no network device `{name}` here or in any namespace of `ip netns list`: check the name (`ip link`), or trace while the command that creates it runs (`dptrace trace --iface {name} -- COMMAND`)");
            }
        }
    }
    Ok(())
}

fn event_filter(args: &TraceArgs) -> anyhow::Result<EventFilter> {
    let netns = match &args.netns {
        Some(spec) => Some(HashSet::from([netns_inode(spec)?])),
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
        if hook.trim().is_empty() {
            bail!("--hooks has an empty entry: give hook families separated by commas, e.g. --hooks drops,links; available: {}", cli::HOOK_FAMILIES.join(", "));
        }
        if !cli::HOOK_FAMILIES.contains(&hook.as_str()) {
            bail!("unknown hook family `{hook}`; available: {}", cli::HOOK_FAMILIES.join(", "));
        }
    }
    let mut filter = event_filter(&args)?;
    require_root()?;
    // --pod is resolved before anything is attached: an unknown pod is the only output. It
    // then stands for its namespace, as --netns PATH would.
    let netns_spec = match args.pod.as_ref().map(crate::pods::resolve).transpose()? {
        Some(found) => {
            filter.netns = Some([found.inode].into_iter().collect());
            if found.host_network {
                eprintln!("dptrace: pod {} uses the node's network namespace (hostNetwork): all of the node's events are kept", found.pod);
            } else {
                eprintln!("dptrace: pod {}: network namespace {} ({})", found.pod, found.inode, found.path.display());
            }
            Some(found.path.display().to_string())
        }
        None => args.netns.clone(),
    };
    // With a command, the device may be one the command creates.
    if let (Some(name), true) = (&args.iface, args.command.is_empty()) {
        check_iface(name, netns_spec.as_deref())?;
    }
    let mut probes = args.backends.probe_options(args.buffer_size);
    probes.links = args.hooks.iter().any(|h| h == "links");
    probes.netfilter = args.hooks.iter().any(|h| h == "netfilter");
    probes.xdp = args.hooks.iter().any(|h| h == "xdp");
    if args.path {
        probes.path = Some(PathOptions { filter: args.filter.clone(), aggregate: args.aggregate });
    }
    // Created before tracing starts: a path that cannot be written is an error up front.
    let pcap = match &args.pcap {
        Some(path) if path.is_dir() => {
            bail!(
                "--pcap {} is a directory: give the path of a file, e.g. {}",
                path.display(),
                path.join("trace.pcapng").display()
            )
        }
        Some(path) => {
            let existed = path.exists();
            let writer = PcapngWriter::create(path).with_context(|| {
                format!("cannot write the pcapng file {} (give --pcap a file in a writable directory)", path.display())
            })?;
            Some((writer, (!existed).then(|| path.clone())))
        }
        None => None,
    };
    let record = args.record.as_deref().map(output::record::open).transpose()?;
    // After every check of the arguments: an error stays the only line.
    if args.path && args.filter.is_none() && !args.aggregate {
        eprintln!("dptrace: --path without --filter follows every packet of this node: expect many events and lost ones on a busy node");
    }
    let monitor_netns = netns_spec.as_deref().map(|spec| vec![cli::netns_path(spec)]);
    // Registered before attaching: a signal that arrives while the probes attach and the
    // rulesets are read still ends the session cleanly, with its summary.
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigterm = signal(SignalKind::terminate()).ok();
    let mut sigint = signal(SignalKind::interrupt()).ok();
    let mut session = match Session::start(SessionOptions { probes, filter, monitor_netns }) {
        Ok(session) => session,
        Err(e) => {
            // The pcapng file was created for this session only: nothing to keep.
            if let Some((_, Some(created))) = &pcap {
                let _ = std::fs::remove_file(created);
            }
            if let Some(writer) = record {
                writer.abandon();
            }
            return Err(e.into());
        }
    };
    let mut sink = output::sink(args.json, !args.quiet);
    // Inside the pcapng tee: the record's end line gets the summary with its pcapng line.
    let record_failure = match record {
        Some(writer) => {
            let header = crate::record::RecordHeader::new(session.kernel().clone(), session.hooks().to_vec());
            let path = writer.path().display().to_string();
            let (tee, failure) = output::record::RecordTee::new(sink, writer, &header)
                .map_err(|e| anyhow::anyhow!("cannot write the record file {path}: {e}"))?;
            sink = Box::new(tee);
            Some(failure)
        }
        None => None,
    };
    if let Some((writer, _)) = pcap {
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
            // The command ends with the session however dptrace ends: killed on a signal or
            // --duration (below), on a panic (dropped), and by the kernel if dptrace is killed.
            command.kill_on_drop(true);
            let parent = std::process::id();
            // SAFETY: prctl and getppid are async-signal-safe system calls; nothing is allocated.
            unsafe {
                command.pre_exec(move || {
                    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
                    // dptrace died before the prctl: nothing would deliver the signal.
                    if nix::unistd::getppid().as_raw() as u32 != parent {
                        return Err(std::io::Error::other("dptrace exited"));
                    }
                    Ok(())
                });
            }
            Some(command.spawn().map_err(|e| {
                anyhow::anyhow!(
                    "cannot run `{program}`: {e}; check the command after `--` (a path, or a program on PATH)"
                )
            })?)
        }
        None => None,
    };
    // Test-only: with DPTRACE_TEST_PANIC=after-attach, SIGUSR1 makes the session panic once
    // everything is attached, so that tests/tests/reliability.rs can check that a panicking
    // dptrace leaves nothing attached (there is no other way to make it panic on purpose).
    // It needs that exact value and a signal nothing sends by accident; without the variable
    // SIGUSR1 keeps its default action.
    let mut test_panic = match std::env::var("DPTRACE_TEST_PANIC").as_deref() {
        Ok("after-attach") => signal(SignalKind::user_defined1()).ok(),
        _ => None,
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
        let usr1 = received(test_panic.as_mut());
        tokio::select! {
            _ = usr1 => panic!("DPTRACE_TEST_PANIC=after-attach: panicking on purpose on SIGUSR1"),
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
    let why = match &cause {
        StopCause::Duration => {
            format!("--duration {} elapsed", humantime::format_duration(duration.unwrap_or_default()))
        }
        StopCause::Signal(s) => format!("received {s}"),
        StopCause::CommandExited(status) => format!("the command exited ({status})"),
        StopCause::CommandFailed(e) => format!("the command could not be waited for ({e})"),
    };
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
    let report = session.finish(sink.as_mut(), command_status);
    // The session (and with it every probe) is gone: say why it ended, on stderr.
    let s = &report.summary;
    eprintln!(
        "dptrace: {why}: session ended after {:.1} s with {} events ({} lost) and {} findings; all probes detached",
        s.duration_secs, s.events, s.lost_events, s.findings
    );
    if let Some(failure) = record_failure.and_then(|f| f.lock().ok()?.clone()) {
        let path = args.record.as_deref().unwrap_or(std::path::Path::new("")).display();
        bail!("the record file {path} is incomplete ({failure}): the findings above are complete; free space or pick another --record path and trace again");
    }
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
