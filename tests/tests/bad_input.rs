//! Bad input, case by case: each gives exit status 2, exactly one line on stderr
//! (`dptrace: error: …`) that says what is wrong and what to do, no panic, and leaves
//! nothing behind (no BPF program held by nobody, no pin, no tracefs probe, no namespace,
//! mount or scratch directory named after the process, no half-written output file).
//!
//! tests/tests/cli.rs has the first bad-input checks (`--duration soon`, `--buffer-size 3000`,
//! `--hooks bogus`, …); the cases here are other inputs. The cases run one after the other
//! in one table-driven test that reports every failing case by name.

mod support;

use std::{
    collections::BTreeSet,
    path::PathBuf,
    process::{Command, Stdio},
};

use dptrace_e2e::{dptrace_bin, require_root};
use support::{all_progs, bpf_pins, bpffs_mounts, named_leftovers_of, new_orphan_progs, tracefs_entries_of, Netns};

/// How a case runs the binary.
#[derive(Clone, Copy, Debug)]
enum Runner {
    /// As this (root) test process.
    Root,
    /// As nobody with no capabilities (setpriv).
    Nobody,
    /// As uid 0 with an empty bounding set: no capabilities at all (setpriv).
    RootWithoutCapabilities,
    /// As uid 0 without CAP_SYS_ADMIN, CAP_BPF and CAP_PERFMON (capsh --drop).
    RootCapshDrop,
    /// In a private mount namespace where tracefs (and debugfs) are hidden under empty
    /// tmpfs mounts, without CAP_SYS_ADMIN (so mounting tracefs again fails with EPERM, as
    /// in a container granted only CAP_BPF and CAP_PERFMON).
    NoTracefsNoMount,
    /// In a private mount namespace where /sys/kernel is an empty tmpfs: nothing to mount
    /// tracefs on (ENOENT), as with a masked /sys.
    NoTracefsMountpoint,
}

struct Case {
    name: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    runner: Runner,
    /// Substrings the error line must contain: what is wrong, and the advice.
    expect: Vec<&'static str>,
    /// A file the case must not leave behind.
    absent: Option<PathBuf>,
}

fn case(name: &'static str, args: &[&str], expect: &[&'static str]) -> Case {
    Case {
        name,
        args: args.iter().map(|a| a.to_string()).collect(),
        env: vec![],
        runner: Runner::Root,
        expect: expect.to_vec(),
        absent: None,
    }
}

impl Case {
    fn env(mut self, key: &'static str, value: &str) -> Self {
        self.env.push((key, value.to_string()));
        self
    }

    fn runner(mut self, runner: Runner) -> Self {
        self.runner = runner;
        self
    }

    fn absent(mut self, path: PathBuf) -> Self {
        self.absent = Some(path);
        self
    }

    fn command(&self) -> Command {
        let bin = dptrace_bin();
        let quoted = || {
            std::iter::once(bin.display().to_string())
                .chain(self.args.iter().cloned())
                .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut command = match self.runner {
            Runner::Root => Command::new(&bin),
            Runner::Nobody => {
                let mut c = Command::new("setpriv");
                c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--"]).arg(&bin);
                c
            }
            Runner::RootWithoutCapabilities => {
                let mut c = Command::new("setpriv");
                c.args(["--bounding-set=-all", "--inh-caps=-all", "--"]).arg(&bin);
                c
            }
            Runner::RootCapshDrop => {
                let mut c = Command::new("capsh");
                c.args(["--drop=cap_sys_admin,cap_bpf,cap_perfmon", "--", "-c", &format!("exec {}", quoted())]);
                return with_env(c, &self.env);
            }
            Runner::NoTracefsNoMount => {
                // unshare(1) makes the new mount namespace's mounts private: nothing here
                // reaches the host's mount table.
                let script = format!(
                    "mount -t tmpfs dptrace-test /sys/kernel/tracing && \
                     {{ ! [ -d /sys/kernel/debug ] || mount -t tmpfs dptrace-test /sys/kernel/debug; }} && \
                     exec setpriv --bounding-set=-sys_admin -- {}",
                    quoted()
                );
                let mut c = Command::new("unshare");
                c.args(["--mount", "--", "sh", "-c", &script]);
                return with_env(c, &self.env);
            }
            Runner::NoTracefsMountpoint => {
                let script = format!("mount -t tmpfs dptrace-test /sys/kernel && exec {}", quoted());
                let mut c = Command::new("unshare");
                c.args(["--mount", "--", "sh", "-c", &script]);
                return with_env(c, &self.env);
            }
        };
        command.args(&self.args);
        with_env(command, &self.env)
    }
}

fn with_env(mut command: Command, env: &[(&'static str, String)]) -> Command {
    command.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    command
}

/// Runs one case; returns what was wrong with it, if anything.
fn run(case: &Case) -> Result<String, String> {
    let progs_before: BTreeSet<u32> = all_progs().into_iter().map(|p| p.id).collect();
    let pins_before = bpf_pins();
    let bpffs_before = bpffs_mounts();
    let child = case
        .command()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run: {e}"))?;
    // unshare, setpriv and capsh (with `exec`) exec dptrace in this same process.
    let pid = child.id();
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut problems = Vec::new();
    if out.status.code() != Some(2) {
        problems.push(format!("exit status {} instead of 2", out.status));
    }
    if stderr.contains("panicked at") {
        problems.push("it panicked".into());
    }
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() != 1 {
        problems.push(format!("{} lines on stderr instead of one", lines.len()));
    }
    let line = lines.last().copied().unwrap_or("");
    if !line.starts_with("dptrace: error: ") {
        problems.push("the line does not start with `dptrace: error: `".into());
    }
    for needle in &case.expect {
        if !line.contains(needle) {
            problems.push(format!("no `{needle}` in the message"));
        }
    }
    // What it may have left behind.
    let orphans = new_orphan_progs(&progs_before);
    if !orphans.is_empty() {
        problems.push(format!("BPF programs held by no process: {orphans:?}"));
    }
    let new_pins: Vec<_> = bpf_pins().difference(&pins_before).cloned().collect();
    if !new_pins.is_empty() {
        problems.push(format!("new pins: {new_pins:?}"));
    }
    if bpffs_mounts() != bpffs_before {
        problems.push("the BPF filesystem mounts changed".into());
    }
    let traces = tracefs_entries_of(pid);
    if !traces.is_empty() {
        problems.push(format!("tracefs entries: {traces:?}"));
    }
    let named = named_leftovers_of(pid);
    if !named.is_empty() {
        problems.push(format!("left behind: {named:?}"));
    }
    if let Some(path) = &case.absent {
        if path.exists() {
            let _ = std::fs::remove_file(path);
            problems.push(format!("{} was left behind", path.display()));
        }
    }
    if problems.is_empty() {
        Ok(line.to_string())
    } else {
        Err(format!("{}; stderr: {stderr}", problems.join("; ")))
    }
}

fn tool_exists(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

#[test]
fn every_bad_input_is_one_clear_line_exit_2_and_leaves_nothing() {
    require_root!();
    assert!(tool_exists("bpftool"), "bpftool is needed (Debian package bpftool; `cargo xtask setup` installs it)");
    let ns = Netns::new("bad-input");
    // A PID that existed and is gone now.
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let gone_pid = gone.id().to_string();
    let pcap = std::env::temp_dir().join(format!("dptrace-bad-input-{}.pcapng", std::process::id()));
    let pcap_arg = pcap.display().to_string();
    let scratch = std::env::temp_dir().join(format!("dptrace-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let _cleanup = RemoveOnDrop(vec![scratch.clone(), pcap.clone()]);
    let dir_arg = scratch.display().to_string();
    let help = "see `dptrace trace --help`";

    let mut cases = vec![
        // Flags.
        case("unknown flag", &["trace", "--bogus"], &["unexpected argument '--bogus'", help]),
        case("no subcommand", &[], &["needs a subcommand: check, trace", "see `dptrace --help`"]),
        case("lab without action", &["lab"], &["needs a subcommand: list, run", "see `dptrace lab --help`"]),
        case(
            "unknown lab flag",
            &["lab", "run", "--bogus"],
            &["unexpected argument '--bogus'", "see `dptrace lab run --help`"],
        ),
        case(
            "check with a stray argument",
            &["check", "--json", "extra"],
            &["unexpected argument 'extra'", "see `dptrace check --help`"],
        ),
        case("flag given twice", &["trace", "--json", "--json"], &["'--json' cannot be used multiple times", help]),
        // Durations.
        case("duration without value", &["trace", "--duration"], &["a value is required for '--duration", help]),
        case("duration 0", &["trace", "--duration", "0"], &["greater than zero"]),
        case("negative duration", &["trace", "--duration", "-5s"], &["cannot be negative", "such as 500ms, 10s"]),
        case(
            "duration in parsecs",
            &["trace", "--duration", "10parsecs"],
            &["unknown time unit \"parsecs\"", "such as 500ms, 10s"],
        ),
        case(
            "duration beyond a year",
            &["trace", "--duration", "500d"],
            &["longer than 366 days", "leave --duration out"],
        ),
        case(
            "duration overflowing",
            &["trace", "--duration", "99999999999999999999s"],
            &["too large", "such as 500ms"],
        ),
        // Packet filters.
        case(
            "filter: port without number",
            &["trace", "--path", "--filter", "port"],
            &["expected a port number (0-65535) after \"port\""],
        ),
        case(
            "filter: unclosed parenthesis",
            &["trace", "--path", "--filter", "(tcp"],
            &["the \"(\" at column 1 is not closed"],
        ),
        case(
            "filter: unmatched parenthesis",
            &["trace", "--path", "--filter", "tcp)"],
            &["unmatched \")\" at column 4"],
        ),
        case(
            "filter: bad address",
            &["trace", "--path", "--filter", "host 300.1.1.1"],
            &["expected an address after \"host\"", "write an IPv4 or IPv6 address"],
        ),
        case(
            "filter without --path",
            &["trace", "--filter", "tcp"],
            &["required arguments were not provided: --path", help],
        ),
        case("aggregate without --path", &["trace", "--aggregate"], &["required arguments were not provided: --path"]),
        case(
            "aggregate with pcap",
            &["trace", "--path", "--aggregate", "--pcap", &pcap_arg],
            &["'--aggregate' cannot be used with '--pcap"],
        )
        .absent(pcap.clone()),
        // Devices and namespaces.
        case(
            "unknown interface",
            &["trace", "--iface", "dptnosuch0"],
            &["no network device `dptnosuch0`", "check the name"],
        ),
        case(
            "unknown interface in a namespace",
            &["trace", "--iface", "dptnosuch0", "--netns", &ns.name],
            &["no network device `dptnosuch0` in network namespace", "ip link"],
        ),
        case(
            "interface name too long",
            &["trace", "--iface", "a-name-longer-than-15"],
            &["not a valid interface name (1-15 characters"],
        ),
        case(
            "unknown netns path",
            &["trace", "--netns", "/nonexistent/ns/net"],
            &["unknown network namespace `/nonexistent/ns/net`", "ip netns list"],
        ),
        case(
            "netns: not a namespace file",
            &["trace", "--netns", "/etc/passwd"],
            &["`/etc/passwd` is not a network namespace", "ip netns list"],
        ),
        case("netns: a directory", &["trace", "--netns", "/run/netns"], &["`/run/netns` is not a network namespace"]),
        case(
            "netns: another kind of namespace",
            &["trace", "--netns", "/proc/self/ns/mnt"],
            &["is not a network namespace"],
        ),
        case("netns: empty", &["trace", "--netns", ""], &["--netns is empty", "ip netns list"]),
        case("netns: PID that has exited", &["trace", "--netns", &gone_pid], &["no process", "is running", "or a PID"]),
        case("netns: PID 0", &["trace", "--netns", "0"], &["no process 0 is running"]),
        // Hook families and backends.
        case("hooks empty", &["trace", "--hooks", ""], &["--hooks has an empty entry", "e.g. --hooks drops,links"]),
        case("hooks with an empty entry", &["trace", "--hooks", "drops,,links"], &["--hooks has an empty entry"]),
        case(
            "hooks: unknown family",
            &["trace", "--hooks", "drops,bridges"],
            &["unknown hook family `bridges`", "available: drops, links"],
        ),
        case("backend without =", &["trace", "--backend", "drops"], &["expected FAMILY=BACKEND, e.g. drops=kprobe"]),
        case("backend empty", &["trace", "--backend", ""], &["expected FAMILY=BACKEND"]),
        case(
            "backend: unknown family",
            &["trace", "--backend", "tunnels=kprobe"],
            &["unknown hook family `tunnels`", "available:"],
        ),
        case(
            "backend: unknown backend",
            &["trace", "--backend", "links=ebpf"],
            &["unknown backend `ebpf` for links", "available: "],
        ),
        // Ring buffer sizes.
        case("buffer: not a power of two", &["trace", "--buffer-size", "5000"], &["power of two between 4k and 1024m"]),
        case("buffer: too small", &["trace", "--buffer-size", "2k"], &["2048 bytes", "power of two between 4k"]),
        case("buffer: too big", &["trace", "--buffer-size", "2048m"], &["between 4k and 1024m"]),
        case("buffer: not a number", &["trace", "--buffer-size", "lots"], &["`lots` is not a size", "e.g. 4m"]),
        case("buffer: negative", &["trace", "--buffer-size", "-4k"], &["`-4k` is not a size"]),
        case("buffer: overflowing", &["trace", "--buffer-size", "99999999999999999999999k"], &["is not a size"]),
        // Privileges.
        case("not root: check", &["check"], &["must run as root", "sudo"]).runner(Runner::Nobody),
        case("not root: lab", &["lab", "run", "udp-closed-port"], &["must run as root", "sudo"]).runner(Runner::Nobody),
        case("not root: netns of PID 1", &["trace", "--netns", "1"], &["must run as root"]).runner(Runner::Nobody),
        case(
            "root without capabilities: trace",
            &["trace", "--duration", "1s"],
            &["without CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)", "full capabilities"],
        )
        .runner(Runner::RootWithoutCapabilities),
        case("root without capabilities: check", &["check"], &["without CAP_BPF and CAP_PERFMON"])
            .runner(Runner::RootWithoutCapabilities),
        // tracefs.
        case(
            "tracefs hidden, mount not permitted",
            &["trace", "--duration", "1s"],
            &["no usable tracefs", "EPERM", "mount -t tracefs"],
        )
        .runner(Runner::NoTracefsNoMount),
        case(
            "tracefs hidden, no mount point",
            &["trace", "--duration", "1s"],
            &["no usable tracefs", "ENOENT", "mount -t tracefs"],
        )
        .runner(Runner::NoTracefsMountpoint),
        case("DPTRACE_TRACEFS without events", &["trace", "--duration", "1s"], &["has no events/ directory"])
            .env("DPTRACE_TRACEFS", &dir_arg),
        // BTF.
        case(
            "no BTF, fentry forced",
            &["trace", "--backend", "drops=fentry"],
            &["fentry programs need it (disabled by DPTRACE_BTF=none)", "dptrace check"],
        )
        .env("DPTRACE_BTF", "none"),
        case(
            "no BTF, --path with --pcap",
            &["trace", "--path", "--filter", "udp", "--pcap", &pcap_arg],
            &["need kernel BTF", "trace without --path"],
        )
        .env("DPTRACE_BTF", "none")
        .absent(pcap.clone()),
        case(
            "BTF file missing",
            &["trace", "--duration", "1s"],
            &["DPTRACE_BTF names no usable BTF file (/nonexistent", "unset it"],
        )
        .env("DPTRACE_BTF", "/nonexistent"),
        case(
            "BTF file corrupt",
            &["trace", "--path", "--filter", "udp"],
            &["DPTRACE_BTF names no usable BTF file (/etc/passwd", "set it to `none`"],
        )
        .env("DPTRACE_BTF", "/etc/passwd"),
        case("BTF file corrupt: check", &["check"], &["DPTRACE_BTF names no usable BTF file"])
            .env("DPTRACE_BTF", "/etc/passwd"),
        // Output files.
        case(
            "pcap in a missing directory",
            &["trace", "--path", "--filter", "udp", "--pcap", "/nonexistent-dir/x.pcapng"],
            &["cannot write the pcapng file /nonexistent-dir/x.pcapng", "writable directory"],
        ),
        case(
            "pcap is a directory",
            &["trace", "--path", "--filter", "udp", "--pcap", &dir_arg],
            &["is a directory: give the path of a file"],
        ),
        // Lab and commands.
        case(
            "lab: unknown scenario",
            &["lab", "run", "no-such-scenario"],
            &["unknown lab scenario `no-such-scenario`", "available: udp-closed-port"],
        ),
        case(
            "lab: names and --all",
            &["lab", "run", "udp-closed-port", "--all"],
            &["give scenario names or --all, not both"],
        ),
        case(
            "command that does not exist",
            &["trace", "--quiet", "--", "/nonexistent-command", "arg"],
            &["cannot run `/nonexistent-command`", "check the command after `--`"],
        ),
        case(
            "command that is not executable",
            &["trace", "--quiet", "--", "/etc/passwd"],
            &["cannot run `/etc/passwd`: Permission denied"],
        ),
    ];
    if tool_exists("capsh") {
        cases.push(
            case(
                "root with capabilities dropped by capsh",
                &["trace", "--duration", "1s"],
                &["without CAP_BPF and CAP_PERFMON"],
            )
            .runner(Runner::RootCapshDrop),
        );
    } else {
        eprintln!("capsh missing (Debian package libcap2-bin): its case is not run; setpriv covers the same refusal");
    }

    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    for case in &cases {
        match run(case) {
            Ok(line) => eprintln!("ok   {:<45} {line}", case.name),
            Err(why) => {
                eprintln!("FAIL {:<45} {why}", case.name);
                failures.push(format!("{} ({:?} {:?}): {why}", case.name, case.runner, case.args));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad inputs were not handled well:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Removes files and directories on drop (also when the test fails).
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_dir_all(path);
            let _ = std::fs::remove_file(path);
        }
    }
}
