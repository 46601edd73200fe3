//! Helpers for dptrace's end-to-end tests: they run the real `dptrace` binary (path in
//! `DPTRACE_BIN`, set by `cargo xtask test`) against the real kernel, in network
//! namespaces the tests create and remove themselves.

use std::{
    net::IpAddr,
    os::unix::fs::MetadataExt,
    path::PathBuf,
    process::{Command, Output},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod field;

pub fn dptrace_bin() -> PathBuf {
    let path = std::env::var_os("DPTRACE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/dptrace"));
    assert!(
        path.is_file(),
        "{} does not exist: run `cargo xtask test` (it builds it and sets DPTRACE_BIN)",
        path.display()
    );
    path
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Returns early from a test that needs root, recording the skip (reason `not-root`, which
/// `cargo xtask test` never allows: CI runs as root).
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            $crate::skip!("not-root", "this test needs root (CI runs as root)");
        }
    };
}

/// Returns early from a test that cannot run here, recording why (see [`record_skip`]).
/// `$reason` is a stable id naming a fact of the machine (`kernel-has-wireguard`,
/// `no-kernel-btf`, `missing-tool:python3`, …); the rest is a `format!` detail for people.
#[macro_export]
macro_rules! skip {
    ($reason:expr, $($detail:tt)+) => {{
        $crate::record_skip(&$crate::current_test(), $reason, &format!($($detail)+));
        return;
    }};
}

/// The environment variable `cargo xtask test` sets to the file skips are appended to.
pub const SKIP_LOG_ENV: &str = "DPTRACE_SKIP_LOG";

/// Records that `test` (or a part of it, such as one lab scenario: `test/scenario`) did not
/// run, and why. A skip is not a pass: `cargo xtask test` lists every skip and fails the run
/// unless `reason` is on its allow-list (xtask/src/skips.rs) and the machine fact behind it
/// holds when xtask checks it itself. Without `DPTRACE_SKIP_LOG` (a plain `cargo test`) the
/// skip is only printed.
pub fn record_skip(test: &str, reason: &str, detail: &str) {
    eprintln!("SKIPPED ({reason}): {test}: {detail}");
    let Some(path) = std::env::var_os(SKIP_LOG_ENV) else {
        return;
    };
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| s.rsplit_once('-').map_or(s.clone(), |(name, _hash)| name.to_string()))
        .unwrap_or_default();
    let line = serde_json::json!({"binary": binary, "test": test, "reason": reason, "detail": detail});
    append_line(std::path::Path::new(&path), &line, "the skip");
}

/// Appends `line` and a newline to `path` in one write with O_APPEND, so lines of tests
/// running in parallel do not mix; panics naming `what` when it cannot.
pub(crate) fn append_line(path: &std::path::Path, line: &Value, what: &str) {
    use std::io::Write;
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = written {
        panic!("cannot record {what} in {}: {e}", path.display());
    }
}

/// The running test's name (libtest names each test's thread after it).
pub fn current_test() -> String {
    std::thread::current().name().unwrap_or("?").to_string()
}

pub fn dptrace(args: &[&str]) -> Output {
    Command::new(dptrace_bin()).args(args).output().expect("run dptrace")
}

/// Runs dptrace with extra environment variables (e.g. `DPTRACE_BTF=none`).
pub fn dptrace_env(env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(dptrace_bin()).args(args).envs(env.iter().copied()).output().expect("run dptrace")
}

/// Parses JSON Lines output, failing the test on any non-JSON line.
pub fn json_lines(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

pub fn of_type<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|v| v["type"] == kind).collect()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn sh(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Two namespaces joined by a veth pair (`c0` ↔ `s0`), IPv4 and IPv6, removed on drop.
/// Each pair gets its own subnet so tests can run in parallel.
pub struct NodePair {
    pub client: String,
    pub server: String,
    pub client_v4: IpAddr,
    pub server_v4: IpAddr,
    pub client_v6: IpAddr,
    pub server_v6: IpAddr,
}

impl NodePair {
    pub fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}-{n}", std::process::id());
        let pair = Self {
            client: format!("dpte2e-{id}-c"),
            server: format!("dpte2e-{id}-s"),
            client_v4: format!("10.251.{n}.1").parse().unwrap(),
            server_v4: format!("10.251.{n}.2").parse().unwrap(),
            client_v6: format!("fd00:251:{n}::1").parse().unwrap(),
            server_v6: format!("fd00:251:{n}::2").parse().unwrap(),
        };
        sh("ip", &["netns", "add", &pair.client]);
        sh("ip", &["netns", "add", &pair.server]);
        sh(
            "ip",
            &["-n", &pair.client, "link", "add", "c0", "type", "veth", "peer", "name", "s0", "netns", &pair.server],
        );
        for (ns, dev, v4, v6) in
            [(&pair.client, "c0", pair.client_v4, pair.client_v6), (&pair.server, "s0", pair.server_v4, pair.server_v6)]
        {
            sh("ip", &["-n", ns, "link", "set", "lo", "up"]);
            sh("ip", &["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev]);
            sh("ip", &["-n", ns, "addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"]);
            sh("ip", &["-n", ns, "link", "set", dev, "up"]);
        }
        pair.wait_ready(&pair.client, "c0");
        pair.wait_ready(&pair.server, "s0");
        pair
    }

    /// linkwatch defers carrier changes; IPv6 routes appear only after it ran.
    fn wait_ready(&self, ns: &str, dev: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let out = Command::new("ip").args(["-n", ns, "-6", "route", "show", "table", "local"]).output().unwrap();
            let link = Command::new("ip").args(["-n", ns, "-o", "link", "show", "dev", dev]).output().unwrap();
            if String::from_utf8_lossy(&link.stdout).contains("state UP")
                && String::from_utf8_lossy(&out.stdout).contains("fd00:251")
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{dev} in {ns} did not come up");
    }

    pub fn inode(ns: &str) -> u64 {
        std::fs::metadata(format!("/run/netns/{ns}")).unwrap().ino()
    }
}

impl Default for NodePair {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NodePair {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.client]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.server]).status();
    }
}

/// Names of namespaces currently in /run/netns that start with `prefix`.
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}
