//! Recorded sessions: `trace --record FILE` during real faults in namespaces this test
//! creates, then `report FILE` offline (as an unprivileged user) must find the same; damaged,
//! foreign and unwritable files are refused with one line and exit status 2.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use dptrace_e2e::{dptrace, dptrace_bin, dptrace_env, json_lines, of_type, require_root, sh, stderr, NodePair};
use serde_json::Value;

/// A directory for this test's files, readable by everyone (the report runs as nobody),
/// removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("dptrace-e2e-record-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs dptrace as nobody, without groups or capabilities.
fn dptrace_unprivileged(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--"])
        .arg(dptrace_bin())
        .args(args)
        .output()
        .expect("run setpriv")
}

/// Findings as sorted JSON texts: their order among equals is not part of the contract.
fn findings(lines: &[Value]) -> Vec<String> {
    let mut all: Vec<String> = of_type(lines, "finding").iter().map(|f| f.to_string()).collect();
    all.sort();
    all
}

/// The summary without the line about the record file (it names the file written or read).
fn summary_without_record(lines: &[Value]) -> Value {
    let summaries = of_type(lines, "summary");
    assert_eq!(summaries.len(), 1, "{lines:#?}");
    let mut summary = summaries[0].clone();
    summary.as_object_mut().unwrap().remove("record");
    summary
}

/// Records a session in the server's namespace while the client sends UDP to a port nothing
/// listens on and to a port an iptables rule drops; returns the live JSON lines.
fn record_faults(pair: &NodePair, file: &str, datagrams: usize) -> Vec<Value> {
    let ns = |args: &[&str]| {
        let mut all = vec!["netns", "exec", &pair.server];
        all.extend_from_slice(args);
        sh("ip", &all);
    };
    ns(&["iptables", "-w", "-A", "INPUT", "-p", "udp", "--dport", "7777", "-j", "DROP"]);
    let dst = pair.server_v4;
    let script = format!(
        "for i in $(seq {datagrams}); do echo a > /dev/udp/{dst}/9999; done; for i in 1 2 3; do echo x > /dev/udp/{dst}/7777; done"
    );
    let args =
        ["trace", "--json", "--netns", &pair.server, "--record", file, "--", "ip", "netns", "exec", &pair.client];
    let out = dptrace(&[&args[..], &["bash", "-c", &script]].concat());
    assert!(out.status.success(), "dptrace trace failed: {}", stderr(&out));
    json_lines(&out)
}

#[test]
fn a_recorded_session_reports_the_same_findings_offline_and_unprivileged() {
    require_root!();
    let dir = Scratch::new("same");
    let file = dir.file("session.dptrace");
    let pair = NodePair::new();
    let live = record_faults(&pair, &file, 1);
    let live_summary = &of_type(&live, "summary")[0];
    let written = live_summary["record"].as_str().unwrap();
    assert!(written.starts_with(&format!("{file}: ")) && written.ends_with(" bytes"), "{written}");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o044, 0o044, "readable by others");

    let out = dptrace_unprivileged(&["report", "--json", &file]);
    assert!(out.status.success(), "report as nobody failed: {}", stderr(&out));
    let offline = json_lines(&out);
    // The real faults were found, and found the same way offline.
    let rules: Vec<&str> = of_type(&offline, "finding").iter().map(|f| f["rule"].as_str().unwrap()).collect();
    assert!(rules.contains(&"netfilter-drop") && rules.contains(&"no-listener"), "{rules:?}");
    let dropped = of_type(&offline, "finding").into_iter().find(|f| f["rule"] == "netfilter-drop").unwrap();
    assert_eq!((dropped["count"].as_u64(), dropped["netfilter"]["chain"].as_str()), (Some(3), Some("INPUT")));
    assert_eq!(findings(&offline), findings(&live));
    // The same events, in the same order, and the same summary (durations bit for bit).
    let events = |lines: &[Value]| of_type(lines, "event").into_iter().cloned().collect::<Vec<_>>();
    assert_eq!(events(&offline), events(&live));
    assert_eq!(summary_without_record(&offline), summary_without_record(&live));
    let read = of_type(&offline, "summary")[0]["record"].as_str().unwrap().to_string();
    assert!(read.starts_with(&format!("{file}: {} events recorded ", events(&live).len())), "{read}");
    assert!(stderr(&out).contains("--record"), "the recording's command line: {}", stderr(&out));

    // Text, and --quiet: the same findings, no events.
    let text = dptrace_unprivileged(&["report", &file]);
    assert!(text.status.success(), "{}", stderr(&text));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("[error] netfilter-drop") && text.contains("== summary:"), "{text}");
    let quiet = dptrace_unprivileged(&["report", "--json", "--quiet", &file]);
    let quiet = json_lines(&quiet);
    assert!(of_type(&quiet, "event").is_empty());
    assert_eq!(findings(&quiet), findings(&live));
}

/// Asserts a failed command said one line on stderr (and nothing else) and exited 2.
fn one_line_error(out: &Output, expected: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("dptrace: error: "), "{err}");
    for part in expected {
        assert!(err.contains(part), "`{part}` missing from: {err}");
    }
}

#[test]
fn damaged_foreign_and_missing_records_are_refused_in_one_line() {
    require_root!();
    let dir = Scratch::new("damaged");
    let good = dir.file("good.dptrace");
    let pair = NodePair::new();
    // Enough events for several frames.
    record_faults(&pair, &good, 1500);
    let data = std::fs::read(&good).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.file(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let report = |path: &str| dptrace_unprivileged(&["report", "--json", path]);

    one_line_error(&report(&dir.file("missing.dptrace")), &["missing.dptrace does not exist"]);
    one_line_error(&report(&write("empty.dptrace", b"")), &["is empty"]);
    one_line_error(&report(&write("text.dptrace", b"not a record\n")), &["is not a dptrace record", "not gzip"]);
    let mut gzip = Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    gzip.stdin.take().unwrap().write_all(b"{\"header\":{}}\n").unwrap();
    let foreign = gzip.wait_with_output().unwrap().stdout;
    one_line_error(&report(&write("foreign.dptrace", &foreign)), &["is not a dptrace record", "mark"]);
    one_line_error(&report(dir.0.to_str().unwrap()), &["is a directory"]);

    // The mark's version, in plain bytes near the start.
    assert_eq!(&data[10..27], b"dptrace-record 1\0");
    let mut newer = data.clone();
    newer[25] = b'9';
    one_line_error(&report(&write("newer.dptrace", &newer)), &["record format version 9 is newer", "supports (1)"]);

    let half = data.len() / 2;
    let cut = write("cut.dptrace", &data[..half]);
    one_line_error(&report(&cut), &[&format!("truncated at byte {half}"), "--partial"]);
    let mut flipped = data.clone();
    flipped[half] ^= 0x40;
    let corrupt = write("corrupt.dptrace", &flipped);
    one_line_error(&report(&corrupt), &["corrupt at byte", "--partial"]);

    // --partial reports what came before the damage, and says so.
    for damaged in [&cut, &corrupt] {
        let out = dptrace_unprivileged(&["report", "--json", "--quiet", "--partial", damaged]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("dptrace: warning: ") && stderr(&out).contains("partial report"),
            "{}",
            stderr(&out)
        );
        let lines = json_lines(&out);
        assert!(of_type(&lines, "finding").iter().any(|f| f["rule"] == "no-listener"), "{lines:#?}");
        let summary = &of_type(&lines, "summary")[0];
        assert!(summary["events"].as_u64().unwrap() > 0);
        assert!(summary["record"].as_str().unwrap().contains("partial report"), "{summary}");
    }
}

#[test]
fn a_killed_session_leaves_a_record_that_says_it_did_not_finish() {
    require_root!();
    let dir = Scratch::new("killed");
    let file = dir.file("killed.dptrace");
    let pair = NodePair::new();
    let mut child = Command::new(dptrace_bin())
        .args(["trace", "--json", "--quiet", "--netns", &pair.server, "--record", &file])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it traces (the header frame is written once the probes are attached).
    let started = std::time::Instant::now();
    while std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(started.elapsed() < Duration::from_secs(60), "no record header");
        std::thread::sleep(Duration::from_millis(100));
    }
    let send = |port: u16| {
        let script = format!("for i in 1 2 3; do echo a > /dev/udp/{}/{port}; done", pair.server_v4);
        sh("ip", &["netns", "exec", &pair.client, "bash", "-c", &script]);
    };
    // A frame is closed once it is a second old, even when no more events come: wait until
    // the three drops are on disk (under load that takes longer than a second), then kill.
    send(9999);
    let drops_on_disk = || {
        let out = dptrace_unprivileged(&["report", "--json", "--partial", &file]);
        let lines = json_lines(&out);
        of_type(&lines, "event").into_iter().filter(|e| e["flow"]["dport"] == 9999 && e["kind"] == "drop").count()
    };
    let sent = std::time::Instant::now();
    while drops_on_disk() < 3 {
        assert!(sent.elapsed() < Duration::from_secs(30), "the drops never reached the record");
        std::thread::sleep(Duration::from_millis(200));
    }
    sh("kill", &["-KILL", &child.id().to_string()]);
    child.wait().unwrap();

    one_line_error(&dptrace_unprivileged(&["report", &file]), &["truncated at byte", "did not finish", "--partial"]);
    let out = dptrace_unprivileged(&["report", "--json", "--partial", &file]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    let to_9999 =
        of_type(&lines, "event").into_iter().filter(|e| e["flow"]["dport"] == 9999 && e["kind"] == "drop").count();
    assert_eq!(to_9999, 3, "{lines:#?}");
    assert!(of_type(&lines, "finding").iter().any(|f| f["rule"] == "no-listener"));
}

#[test]
fn record_to_a_path_that_cannot_be_written_fails_before_attaching() {
    require_root!();
    let dir = Scratch::new("unwritable");
    for (path, expected) in [
        ("/proc/no-such-dir/session.dptrace".to_string(), "cannot write the record file"),
        (dir.0.to_string_lossy().into_owned(), "is a directory"),
    ] {
        let started = std::time::Instant::now();
        let out = dptrace(&["trace", "--record", &path, "--duration", "30s"]);
        one_line_error(&out, &[expected]);
        // Nothing was attached: no tracing line, and no wait for the duration.
        assert!(!stderr(&out).contains("tracing on kernel"));
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    // A session that cannot start (here: no usable BTF) removes the file it created and
    // leaves an existing one as it was.
    let kept = dir.file("kept.dptrace");
    std::fs::write(&kept, b"older").unwrap();
    let new = dir.file("new.dptrace");
    for path in [&kept, &new] {
        let out = dptrace_env(&[("DPTRACE_BTF", "/nonexistent")], &["trace", "--record", path, "--duration", "1s"]);
        one_line_error(&out, &["DPTRACE_BTF names no usable BTF file"]);
    }
    assert_eq!(std::fs::read(&kept).unwrap(), b"older");
    assert!(!Path::new(&new).exists());
}
