//! The command line (see DESIGN.md "Command-line contract").

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::probes::{
    drops::DropBackend,
    links::LinkBackend,
    netfilter::NetfilterBackend,
    xdp::{CommandBackend, XdpBackend},
    ProbeOptions,
};

#[derive(Debug, Parser)]
#[command(
    name = "dptrace",
    version,
    about = "Explains why packets die on a Kubernetes node: eBPF datapath tracing with diagnoses",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// What this kernel supports: per hook family, the backend dptrace gets. Exit 1 if a hook cannot attach.
    Check {
        /// JSON Lines on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Trace live; with `-- COMMAND ARGS…`, trace while the command runs, then report.
    // Boxed: its options dwarf the other subcommands' (clippy::large_enum_variant).
    Trace(Box<TraceArgs>),
    /// Analyze a session recorded with `trace --record FILE`: the same findings and summary,
    /// offline, on any machine, without root.
    Report(ReportArgs),
    /// Reproduce known failures in throwaway namespaces and diagnose them.
    Lab {
        #[command(subcommand)]
        action: LabAction,
    },
    /// Print the man page or a shell completion script (used by `cargo xtask dist`).
    #[command(hide = true)]
    Generate {
        #[arg(value_enum)]
        kind: crate::generate::GenerateKind,
    },
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Stop after this long (e.g. `10s`, `2m`, `1h30m`).
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub duration: Option<Duration>,
    /// JSON Lines on stdout: `event`, `finding` and `summary` objects.
    #[arg(long)]
    pub json: bool,
    /// Comma-separated hook families to attach: drops (always on), links (rtnetlink link
    /// requests, their errors and kernel messages) and netfilter (resets, ICMP errors and
    /// connection attempts; rule counters) and xdp (BPF loads and attaches, XDP exceptions).
    #[arg(long, value_delimiter = ',', default_value = "drops,links,netfilter,xdp")]
    pub hooks: Vec<String>,
    /// Keep only events on this network device (by name).
    #[arg(long, value_parser = parse_ifname)]
    pub iface: Option<String>,
    /// Keep only events in this network namespace: a name from `ip netns`, a path such as
    /// /proc/PID/ns/net, or a PID.
    #[arg(long)]
    pub netns: Option<String>,
    /// Keep only events in this pod's network namespace: NAMESPACE/NAME (read from the
    /// container runtime with crictl, which must be in PATH) or uid:POD_UID (found from the
    /// pod's cgroups; works without crictl). Resolved once at the start: an unknown pod is an
    /// error; a pod recreated during the session is not followed. A hostNetwork pod shares
    /// the node's namespace, so all of the node's events are kept.
    #[arg(long, value_name = "NAMESPACE/NAME|uid:UID", value_parser = crate::pods::parse_pod_spec, conflicts_with = "netns")]
    pub pod: Option<crate::pods::PodSpec>,
    /// Do not print each event, only findings and the summary.
    #[arg(long)]
    pub quiet: bool,
    /// Follow packets device by device (pod veth → bridge → tunnel → uplink → …) with per-hop
    /// latency; best with --filter. Adds a path per packet and latency tables to the report.
    #[arg(long)]
    pub path: bool,
    /// Which packets --path follows, in pcap-filter syntax: host, net, port, portrange, tcp,
    /// udp, icmp, icmp6, ip, ip6, proto N, with and/or/not and parentheses, e.g.
    /// `icmp and host 10.244.2.2`. Matches outer or VXLAN/Geneve inner headers. The kernel
    /// evaluates what fits its fixed form; dptrace re-checks the whole expression.
    #[arg(long, value_name = "EXPR", requires = "path", value_parser = parse_filter)]
    pub filter: Option<crate::packet_filter::PacketFilter>,
    /// With --path: count hops and latencies in kernel maps, without per-packet events (for
    /// long, low-overhead sessions; latencies are log2 buckets).
    #[arg(long, requires = "path", conflicts_with = "pcap")]
    pub aggregate: bool,
    /// With --path: write every hop of the traced packets to this pcapng file (one interface
    /// per device, comments naming hook, direction and drop reason).
    #[arg(long, value_name = "FILE", requires = "path")]
    pub pcap: Option<PathBuf>,
    /// Ring buffer size in bytes: a power of two, at least 4096 (suffixes k/m allowed).
    #[arg(long, value_parser = parse_buffer_size, default_value = "4m", allow_hyphen_values = true)]
    pub buffer_size: u32,
    /// Also write every event the analysis sees, the kernel facts and the session's totals to
    /// FILE (gzip'd JSON Lines), for `dptrace report FILE` later or on another machine.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    #[command(flatten)]
    pub backends: BackendArgs,
    /// Command to run while tracing (after `--`).
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A file written by `dptrace trace --record FILE`.
    pub file: PathBuf,
    /// JSON Lines on stdout: `event`, `finding` and `summary` objects.
    #[arg(long)]
    pub json: bool,
    /// Do not print each event, only findings and the summary.
    #[arg(long)]
    pub quiet: bool,
    /// Report a truncated or damaged record from the events before the damage (with a
    /// warning) instead of refusing it.
    #[arg(long)]
    pub partial: bool,
}

#[derive(Debug, Subcommand)]
pub enum LabAction {
    /// List the scenarios.
    List,
    /// Run scenarios by name, or all of them. Exit 1 if one is not diagnosed as expected.
    Run {
        /// Scenario names (see `dptrace lab list`).
        names: Vec<String>,
        /// Run every scenario.
        #[arg(long)]
        all: bool,
        /// JSON Lines on stdout.
        #[arg(long)]
        json: bool,
        /// Also print every traced event.
        #[arg(long)]
        verbose: bool,
        #[command(flatten)]
        backends: BackendArgs,
    },
}

/// `--backend FAMILY=BACKEND`: force a backend instead of the automatic fallback chain.
#[derive(Debug, Args, Clone, Default)]
pub struct BackendArgs {
    /// Force a hook family's backend instead of the best one this kernel offers, e.g.
    /// `drops=kprobe`. Drops: tracepoint, tracepoint-noreason (as kernels before 5.17), fentry,
    /// kprobe. Links: kprobes, sockets (6.5+: a hook on every socket send), tracepoints (syscall tracepoints: also sees
    /// ioctls, but slows every syscall on the machine while attached), tracepoints-noextack
    /// (as kernels before 4.16).
    /// Netfilter: verdicts (kprobes on nft_do_chain/ipt_do_table: table and chain of every DROP,
    /// per-packet cost), kprobes, tracepoints, tracepoints-noreset (as kernels without
    /// tcp_send_reset/icmp_send). Xdp: raw-tracepoint, tracepoints (exceptions without names).
    /// Bpf (the xdp family's view of bpf() loads and attaches): kprobes (the default, where
    /// the kernel has them), syscalls (syscall tracepoints: every kernel, but every syscall
    /// on the machine is slower while attached, so only when asked for).
    #[arg(long = "backend", value_name = "FAMILY=BACKEND", value_delimiter = ',', value_parser = parse_backend)]
    pub backend: Vec<ForcedBackend>,
}

/// A backend forced with `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForcedBackend {
    Drops(DropBackend),
    Links(LinkBackend),
    Netfilter(NetfilterBackend),
    Xdp(XdpBackend),
    /// How the xdp family observes `bpf()` commands.
    Bpf(CommandBackend),
}

impl BackendArgs {
    pub fn probe_options(&self, buffer_bytes: u32) -> ProbeOptions {
        let drops_backend = self.backend.iter().rev().find_map(|b| match b {
            ForcedBackend::Drops(d) => Some(*d),
            _ => None,
        });
        let links_backend = self.backend.iter().rev().find_map(|b| match b {
            ForcedBackend::Links(l) => Some(*l),
            _ => None,
        });
        let netfilter_backend = self.backend.iter().rev().find_map(|b| match b {
            ForcedBackend::Netfilter(n) => Some(*n),
            _ => None,
        });
        let xdp_backend = self.backend.iter().rev().find_map(|b| match b {
            ForcedBackend::Xdp(x) => Some(*x),
            _ => None,
        });
        let bpf_backend = self.backend.iter().rev().find_map(|b| match b {
            ForcedBackend::Bpf(x) => Some(*x),
            _ => None,
        });
        ProbeOptions {
            buffer_bytes,
            drops_backend,
            links: true,
            links_backend,
            netfilter: true,
            netfilter_backend,
            xdp: true,
            xdp_backend,
            bpf_backend,
            bpf_syscalls_fallback: false,
            path: None,
        }
    }
}

pub fn parse_backend(text: &str) -> Result<ForcedBackend, String> {
    let (family, backend) =
        text.split_once('=').ok_or_else(|| "expected FAMILY=BACKEND, e.g. drops=kprobe".to_string())?;
    match family {
        "drops" => DropBackend::from_name(backend).map(ForcedBackend::Drops).ok_or_else(|| {
            let names = DropBackend::ALL.iter().map(|b| b.name()).collect::<Vec<_>>().join(", ");
            format!("unknown backend `{backend}` for drops; available: {names}")
        }),
        "links" => LinkBackend::from_name(backend).map(ForcedBackend::Links).ok_or_else(|| {
            format!("unknown backend `{backend}` for links; available: kprobes, sockets, tracepoints, tracepoints-noextack")
        }),
        "netfilter" => NetfilterBackend::from_name(backend).map(ForcedBackend::Netfilter).ok_or_else(|| {
            format!("unknown backend `{backend}` for netfilter; available: verdicts, kprobes, tracepoints, tracepoints-noreset")
        }),
        "xdp" => XdpBackend::from_name(backend)
            .map(ForcedBackend::Xdp)
            .ok_or_else(|| format!("unknown backend `{backend}` for xdp; available: raw-tracepoint, tracepoints")),
        "bpf" => CommandBackend::from_name(backend)
            .map(ForcedBackend::Bpf)
            .ok_or_else(|| format!("unknown backend `{backend}` for bpf; available: kprobes, syscalls")),
        _ => Err(format!("unknown hook family `{family}`; available: {}", HOOK_FAMILIES.join(", "))),
    }
}

/// Known hook families.
pub const HOOK_FAMILIES: [&str; 4] = ["drops", "links", "netfilter", "xdp"];

pub fn parse_filter(text: &str) -> Result<crate::packet_filter::PacketFilter, String> {
    crate::packet_filter::PacketFilter::parse(text).map_err(|e| e.to_string())
}

/// The longest `--duration`: longer ones are typos (`10000h`?); a session without
/// `--duration` runs until Ctrl-C.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.trim_start().starts_with('-') {
        return Err("a duration cannot be negative; use a duration such as 500ms, 10s, 2m".into());
    }
    let d = humantime::parse_duration(text).map_err(|e| format!("{e}; use a duration such as 500ms, 10s, 2m"))?;
    if d.is_zero() {
        return Err("the duration must be greater than zero".into());
    }
    if d > MAX_DURATION {
        return Err("longer than 366 days; leave --duration out to trace until Ctrl-C".into());
    }
    Ok(d)
}

pub fn parse_ifname(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() < 16
        && text != "."
        && text != ".."
        && !text.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
    if valid {
        Ok(text.to_string())
    } else {
        Err("not a valid interface name (1-15 characters, no '/', ':' or spaces)".into())
    }
}

pub fn parse_buffer_size(text: &str) -> Result<u32, String> {
    let lower = text.to_ascii_lowercase();
    let (digits, multiplier) = match lower.strip_suffix('k').or_else(|| lower.strip_suffix("kib")) {
        Some(d) => (d, 1u64 << 10),
        None => match lower.strip_suffix('m').or_else(|| lower.strip_suffix("mib")) {
            Some(d) => (d, 1u64 << 20),
            None => (lower.as_str(), 1),
        },
    };
    let bytes = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("`{text}` is not a size; use bytes or a k/m suffix, e.g. 4m"))?;
    if bytes < 4096 || !bytes.is_power_of_two() || bytes > (1 << 30) {
        return Err(format!("{bytes} bytes: the ring buffer size must be a power of two between 4k and 1024m"));
    }
    Ok(bytes as u32)
}

/// Where `--netns` points.
pub fn netns_path(spec: &str) -> PathBuf {
    if !spec.is_empty() && spec.chars().all(|c| c.is_ascii_digit()) {
        PathBuf::from(format!("/proc/{spec}/ns/net"))
    } else if spec.contains('/') {
        PathBuf::from(spec)
    } else {
        PathBuf::from("/run/netns").join(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_buffer_size("4m").unwrap(), 4 << 20);
        assert_eq!(parse_buffer_size("65536").unwrap(), 65536);
        assert!(parse_buffer_size("3000").is_err());
        assert!(parse_buffer_size("5m").is_err());
        assert!(parse_buffer_size("lots").is_err());
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-5s").unwrap_err().contains("negative"));
        assert!(parse_duration("400d").unwrap_err().contains("366 days"));
        assert_eq!(parse_duration("366d").unwrap(), MAX_DURATION);
        assert!(parse_ifname("veth0").is_ok());
        assert!(parse_ifname("this-name-is-too-long").is_err());
        assert_eq!(netns_path("1234"), PathBuf::from("/proc/1234/ns/net"));
        assert_eq!(netns_path("blue"), PathBuf::from("/run/netns/blue"));
        assert_eq!(parse_backend("drops=kprobe"), Ok(ForcedBackend::Drops(DropBackend::Kprobe)));
        assert!(parse_backend("drops=magic").unwrap_err().contains("tracepoint-noreason"));
        assert_eq!(
            parse_backend("links=tracepoints-noextack"),
            Ok(ForcedBackend::Links(LinkBackend::TracepointsNoExtack))
        );
        assert!(parse_backend("links=kprobe").unwrap_err().contains("tracepoints-noextack"));
        assert!(parse_backend("xdp=kprobe").unwrap_err().contains("raw-tracepoint"));
        assert!(parse_backend("bridge=kprobe").unwrap_err().contains("unknown hook family"));
        assert!(parse_backend("kprobe").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
