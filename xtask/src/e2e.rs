//! The end-to-end stage of `cargo xtask test`: runs each test binary of `tests/` itself (so
//! every file runs even when an earlier one fails), reads what each test did from libtest's
//! output and the skips the tests recorded, prints a table of what ran and what was skipped
//! and why, and fails on any failure or on any skip the allow-list (skips.rs) does not excuse.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::{skips, step};

/// Where the tests append their skips (tests/src/lib.rs reads the same variable).
const SKIP_LOG_ENV: &str = "DPTRACE_SKIP_LOG";
/// Where the field suite appends what it observed (tests/src/field.rs reads the same variable).
const FIELD_LOG_ENV: &str = "DPTRACE_FIELD_LOG";

/// One test binary (`tests/tests/NAME.rs`) and what its run printed.
#[derive(Debug, Default)]
struct FileResult {
    passed: Vec<String>,
    failed: Vec<String>,
    ignored: Vec<String>,
    /// The binary's exit status was not success (also when no test line says FAILED).
    crashed: Option<String>,
}

/// One skip a test recorded.
#[derive(Debug, Clone)]
struct Skip {
    binary: String,
    test: String,
    reason: String,
    detail: String,
}

/// Builds the end-to-end tests, runs them with `DPTRACE_BIN=bin` (extra libtest `args`
/// passed through, e.g. a test name) and judges the skips. With `only`, just those binaries.
pub fn run(root: &Path, bin: &Path, only: &[String], args: &[String]) -> anyhow::Result<()> {
    step("end-to-end tests (real binary, real kernel, as root)");
    let binaries = build(root)?;
    let chosen: Vec<&(String, PathBuf)> =
        binaries.iter().filter(|(name, _)| only.is_empty() || only.contains(name)).collect();
    if let Some(unknown) = only.iter().find(|o| !binaries.iter().any(|(n, _)| n == *o)) {
        bail!(
            "no end-to-end test file `{unknown}`; there are: {}",
            binaries.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    let dir = root.join("target/e2e");
    fs::create_dir_all(&dir)?;
    // Per run, so a run started by a test (tests/tests/skips.rs) keeps its skips to itself.
    let log = dir.join(format!("skips-{}.jsonl", std::process::id()));
    let _ = fs::remove_file(&log);
    let field_log = dir.join(format!("field-{}.jsonl", std::process::id()));
    let _ = fs::remove_file(&field_log);
    let mut results = BTreeMap::new();
    for (name, exe) in chosen {
        eprintln!("\n--- tests/tests/{name}.rs");
        results.insert(name.clone(), run_binary(root, exe, bin, &log, &field_log, args)?);
    }
    crate::field::write_host_results(root, &field_log)?;
    let skips = read_skips(&log)?;
    let _ = fs::remove_file(&log);
    let mut cache = Vec::new();
    let judged: Vec<(Skip, skips::Judgement)> =
        skips.into_iter().map(|s| (s.clone(), skips::judge(&s.reason, &mut cache))).collect();
    let table = table(&results, &judged);
    eprintln!("\n{table}");
    let failed: usize = results.values().map(|r| r.failed.len() + usize::from(r.crashed.is_some())).sum();
    let refused = judged.iter().filter(|(_, j)| matches!(j, skips::Judgement::Refused(_))).count();
    match (failed, refused) {
        (0, 0) => Ok(()),
        (0, r) => bail!("{r} skip(s) not excused by the allow-list (see the table above)"),
        (f, 0) => bail!("{f} end-to-end test(s) or file(s) failed (see above)"),
        (f, r) => bail!("{f} end-to-end test(s) or file(s) failed and {r} skip(s) not excused (see above)"),
    }
}

/// `cargo test --no-run` for the e2e package: (file name, executable) of each test target.
fn build(root: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args([
            "test",
            "--release",
            "-p",
            "dptrace-e2e",
            "--tests",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the end-to-end tests failed: {}", out.status);
    }
    let mut binaries: Vec<(String, PathBuf)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["profile"]["test"] == true)
        .filter(|v| v["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "test")))
        .filter_map(|v| Some((v["target"]["name"].as_str()?.to_string(), PathBuf::from(v["executable"].as_str()?))))
        .collect();
    binaries.sort();
    binaries.dedup();
    if binaries.is_empty() {
        bail!("cargo built no end-to-end test binaries");
    }
    Ok(binaries)
}

/// Runs one test binary as `cargo test` would (working directory: the package), echoing its
/// output and reading libtest's `test NAME ... ok` lines.
fn run_binary(
    root: &Path,
    exe: &Path,
    bin: &Path,
    log: &Path,
    field_log: &Path,
    args: &[String],
) -> anyhow::Result<FileResult> {
    let mut child = Command::new(exe)
        .args(args)
        .current_dir(root.join("tests"))
        .env("DPTRACE_BIN", bin)
        .env(SKIP_LOG_ENV, log)
        .env(FIELD_LOG_ENV, field_log)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    let mut result = FileResult::default();
    let stdout = child.stdout.take().expect("piped");
    let mut echo = std::io::stdout().lock();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        let _ = writeln!(echo, "{line}");
        parse_line(&line, &mut result);
    }
    drop(echo);
    let status = child.wait()?;
    if !status.success() && result.failed.is_empty() {
        result.crashed = Some(status.to_string());
    }
    Ok(result)
}

/// libtest's line for a finished test: `test NAME ... ok|FAILED|ignored[, reason]`.
fn parse_line(line: &str, result: &mut FileResult) {
    let Some(rest) = line.strip_prefix("test ") else { return };
    let Some((name, outcome)) = rest.split_once(" ... ") else { return };
    let name = name.to_string();
    match outcome.split([',', ' ']).next().unwrap_or_default() {
        "ok" => result.passed.push(name),
        "FAILED" => result.failed.push(name),
        "ignored" => result.ignored.push(name),
        _ => {}
    }
}

fn read_skips(log: &Path) -> anyhow::Result<Vec<Skip>> {
    let text = match fs::read_to_string(log) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", log.display())),
    };
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).with_context(|| format!("a skip record that is not JSON: {l}"))?;
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            Ok(Skip { binary: s("binary"), test: s("test"), reason: s("reason"), detail: s("detail") })
        })
        .collect()
}

/// The ran/skipped table, then one line per skip with its verdict.
fn table(results: &BTreeMap<String, FileResult>, skips: &[(Skip, skips::Judgement)]) -> String {
    // A test that skipped as a whole reports `ok` to libtest: it counts as skipped, not passed.
    let whole_skip = |file: &str, test: &str| skips.iter().any(|(s, _)| s.binary == file && s.test == test);
    let mut out = String::from("end-to-end tests: what ran, what was skipped\n");
    out += &format!(
        "  {:<14} {:>6} {:>7} {:>7} {:>8} {:>8} {:>12}\n",
        "file", "tests", "passed", "failed", "skipped", "ignored", "part-skips"
    );
    let mut totals = [0usize; 6];
    for (file, r) in results {
        let skipped = r.passed.iter().filter(|t| whole_skip(file, t)).count();
        let parts = skips.iter().filter(|(s, _)| s.binary == *file && !r.passed.contains(&s.test)).count();
        let row = [
            r.passed.len() + r.failed.len() + r.ignored.len(),
            r.passed.len() - skipped,
            r.failed.len(),
            skipped,
            r.ignored.len(),
            parts,
        ];
        for (t, v) in totals.iter_mut().zip(row) {
            *t += v;
        }
        let crashed = r.crashed.as_ref().map_or_else(String::new, |c| format!("  (exited: {c})"));
        out += &format!(
            "  {:<14} {:>6} {:>7} {:>7} {:>8} {:>8} {:>12}{crashed}\n",
            file, row[0], row[1], row[2], row[3], row[4], row[5]
        );
    }
    out += &format!(
        "  {:<14} {:>6} {:>7} {:>7} {:>8} {:>8} {:>12}\n",
        "total", totals[0], totals[1], totals[2], totals[3], totals[4], totals[5]
    );
    if skips.is_empty() {
        out += "skips: none\n";
    } else {
        out += "skips (each must be on the allow-list of xtask/src/skips.rs, with its fact true here):\n";
        for (s, j) in skips {
            let verdict = match j {
                skips::Judgement::Allowed(fact) => format!("allowed: {fact}"),
                skips::Judgement::Refused(why) => format!("NOT ALLOWED: {why}"),
            };
            out += &format!("  {}::{} [{}] {}\n      {verdict}\n", s.binary, s.test, s.reason, s.detail);
        }
    }
    for (file, r) in results {
        for t in &r.failed {
            out += &format!("  FAILED {file}::{t}\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_lines_are_read_and_skips_are_not_passes() {
        let mut r = FileResult::default();
        for line in [
            "running 3 tests",
            "test a_test ... ok",
            "test b_test ... FAILED",
            "test c_test ... ignored, needs a VM",
            "test result: FAILED. 1 passed; 1 failed; 1 ignored",
        ] {
            parse_line(line, &mut r);
        }
        assert_eq!((r.passed.len(), r.failed.len(), r.ignored.len()), (1, 1, 1));
        let results = BTreeMap::from([("trace".to_string(), r)]);
        let skip = |test: &str, reason: &str| Skip {
            binary: "trace".into(),
            test: test.into(),
            reason: reason.into(),
            detail: "why".into(),
        };
        let judged = vec![
            (skip("a_test", "missing-tool:python3"), skips::Judgement::Refused("setup installs it".into())),
            (skip("d_test/part", "kernel-has-wireguard"), skips::Judgement::Allowed("the kernel has it")),
        ];
        let t = table(&results, &judged);
        let row = t.lines().find(|l| l.trim_start().starts_with("trace")).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells, ["trace", "3", "0", "1", "1", "1", "1"], "{t}");
        assert!(t.contains("trace::a_test [missing-tool:python3] why\n      NOT ALLOWED: setup installs it"), "{t}");
        assert!(t.contains("allowed: the kernel has it"), "{t}");
        assert!(t.contains("FAILED trace::b_test"), "{t}");
    }
}
