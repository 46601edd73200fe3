//! Shared by the field suite (`tests/tests/field_*.rs`): real, unmodified software from
//! Debian's packages driven through the field reports, and what dptrace said about it.
//!
//! Each field test ends with [`record`]: one line per (component, scenario) with the
//! package's installed version, the kernel and the result, appended to `$DPTRACE_FIELD_LOG`.
//! `cargo xtask e2e` turns these lines into the table README shows, so the table is what the
//! suite observed, not what someone wrote. A test records only after its assertions passed.

use std::process::Command;

use serde_json::Value;

/// The environment variable `cargo xtask e2e` sets to the file field results are appended to.
pub const FIELD_LOG_ENV: &str = "DPTRACE_FIELD_LOG";

/// The installed version of Debian package `package` (`dpkg-query`), or a panic naming the
/// package: a field test runs the real thing or fails, it never runs without it.
pub fn package_version(package: &str) -> String {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", package])
        .output()
        .unwrap_or_else(|e| panic!("dpkg-query: {e}"));
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && !version.is_empty(),
        "Debian package {package} is not installed: run `cargo xtask setup` (installs the field suite's packages)"
    );
    version
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Records what a field test observed: `component` is the Debian package driven (its version
/// is read here), `scenario` says what was done (e.g. "bridge ADD, MAC rewritten, CHECK"),
/// `result` what dptrace said (e.g. "error veth-mac-changed naming ip" or "healthy: no
/// warning or error"). Printed always; appended to `$DPTRACE_FIELD_LOG` when set.
pub fn record(component: &str, scenario: &str, result: &str) {
    let version = package_version(component);
    let kernel = kernel_release();
    eprintln!("FIELD {component} {version} on {kernel}: {scenario}: {result}");
    let Some(path) = std::env::var_os(FIELD_LOG_ENV) else {
        return;
    };
    let line = serde_json::json!({
        "component": component, "version": version, "scenario": scenario,
        "kernel": kernel, "result": result, "test": crate::current_test(),
    });
    crate::append_line(std::path::Path::new(&path), &line, "the field result");
}

/// The findings among dptrace's JSON lines.
pub fn findings(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|v| v["type"] == "finding").collect()
}

/// One line per finding: `severity rule: summary`, for assertion messages.
pub fn describe(findings: &[&Value]) -> String {
    findings
        .iter()
        .map(|f| {
            format!(
                "  {} {}: {}",
                f["severity"].as_str().unwrap_or("?"),
                f["rule"].as_str().unwrap_or("?"),
                f["summary"].as_str().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Fails unless no finding is a warning or an error: a healthy node must not raise alarms.
/// Returns the info findings' count for the record.
pub fn assert_no_alarms(lines: &[Value], what: &str) -> usize {
    let all = findings(lines);
    let alarms: Vec<&Value> =
        all.iter().copied().filter(|f| f["severity"] == "warning" || f["severity"] == "error").collect();
    assert!(alarms.is_empty(), "{what}: a healthy run raised warnings or errors:\n{}", describe(&alarms));
    all.len()
}

/// Whether a finding is about this test's namespaces (names starting with `prefix`), the
/// root namespace, or no namespace at all: what a test that shares the machine with other
/// tests (each making faults of its own in namespaces of other names) must answer for.
pub fn is_about(finding: &Value, prefix: &str) -> bool {
    match finding["place"]["netns_name"].as_str() {
        Some(name) => name.starts_with(prefix),
        None => finding["place"]["netns"].as_u64().is_none_or(|n| Some(n) == root_netns()),
    }
}

/// The inode of the network namespace this test runs in (the root one).
fn root_netns() -> Option<u64> {
    let link = std::fs::read_link("/proc/self/ns/net").ok()?;
    link.to_str()?.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// [`assert_no_alarms`] for the findings [`is_about`] the test's namespaces.
pub fn assert_no_alarms_about(lines: &[Value], prefix: &str, what: &str) -> usize {
    let ours: Vec<Value> = lines.iter().filter(|v| v["type"] != "finding" || is_about(v, prefix)).cloned().collect();
    assert_no_alarms(&ours, what)
}

/// The findings of `rule`.
pub fn findings_of<'a>(lines: &'a [Value], rule: &str) -> Vec<&'a Value> {
    lines.iter().filter(|v| v["type"] == "finding" && v["rule"] == rule).collect()
}
