//! `cargo xtask fuzz [--seconds N] [TARGET…]`: the libFuzzer targets in `fuzz/` (cargo-fuzz),
//! each for a while; `cargo xtask test` runs each one briefly. A crash fails the task and
//! names the input that caused it.
//!
//! cargo-fuzz is built into `.tools/` on first use, like bpf-linker. The targets build
//! without a sanitizer: the stable compiler here needs no `-Z` flag then, and the code under
//! test is safe Rust but for the decoder's bounds-checked unaligned reads, where a sanitizer
//! adds little. Debug assertions and overflow checks are on: an overflow is a finding.
//!
//! Where things go (all under the git-ignored `target/`): the instrumented build in
//! `target/fuzz`, the corpus each run grows in `target/fuzz-corpus/TARGET` (the committed seeds
//! in `fuzz/corpus/TARGET` are read, never written), crashing inputs in
//! `target/fuzz-artifacts/TARGET/`, libFuzzer's output in `target/fuzz-logs/TARGET.log`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context};
use clap::Args;

use crate::{run_cmd, setup, step};

const CARGO_FUZZ_VERSION: &str = "~0.13";
/// How long `cargo xtask test` runs each target.
pub const TEST_SECONDS: u64 = 25;

#[derive(Args, Debug)]
pub struct FuzzArgs {
    /// How long to run each target.
    #[arg(long, default_value_t = 300)]
    pub seconds: u64,
    /// Targets to run (default: all of them; see fuzz/fuzz_targets/).
    pub targets: Vec<String>,
}

/// Builds and runs `targets` (all when empty) for `seconds` each; fails on the first crash.
pub fn fuzz(root: &Path, targets: &[String], seconds: u64) -> anyhow::Result<()> {
    let cargo_fuzz = ensure_cargo_fuzz(root)?;
    let all = list_targets(root)?;
    let chosen: Vec<String> = if targets.is_empty() { all.clone() } else { targets.to_vec() };
    if let Some(unknown) = chosen.iter().find(|t| !all.contains(t)) {
        bail!("no fuzz target `{unknown}`; there are: {}", all.join(", "));
    }
    step(&format!("cargo fuzz build ({})", chosen.join(", ")));
    let started = Instant::now();
    run_cmd(fuzz_command(root, &cargo_fuzz, "build").args(chosen_bins(&chosen)))
        .context("building the fuzz targets failed")?;
    eprintln!("built in {:.0} s", started.elapsed().as_secs_f64());
    let mut results = Vec::new();
    for target in &chosen {
        step(&format!("fuzz {target} for {seconds} s"));
        let result = run_target(root, &cargo_fuzz, target, seconds)?;
        eprintln!("{target}: {result}");
        results.push(format!("{target}: {result}"));
    }
    eprintln!("\nfuzzing: no crash\n  {}", results.join("\n  "));
    Ok(())
}

/// `--bin T` for each target: `cargo fuzz build` takes one target or all of them.
fn chosen_bins(chosen: &[String]) -> Vec<String> {
    if chosen.len() == 1 {
        chosen.to_vec()
    } else {
        Vec::new()
    }
}

fn fuzz_command(root: &Path, cargo_fuzz: &Path, verb: &str) -> Command {
    let mut cmd = Command::new(cargo_fuzz);
    cmd.current_dir(root).args(["fuzz", verb, "--fuzz-dir", "fuzz", "--sanitizer", "none", "--debug-assertions"]);
    cmd.arg("--target-dir").arg(root.join("target/fuzz"));
    cmd
}

/// Runs one target for `seconds`; its corpus grows in target/fuzz-corpus. A crash is an error
/// that names the input and how to reproduce it.
fn run_target(root: &Path, cargo_fuzz: &Path, target: &str, seconds: u64) -> anyhow::Result<String> {
    let corpus = root.join("target/fuzz-corpus").join(target);
    let artifacts = root.join("target/fuzz-artifacts").join(target);
    let logs = root.join("target/fuzz-logs");
    for dir in [&corpus, &artifacts, &logs] {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let log_path = logs.join(format!("{target}.log"));
    let log = fs::File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    let seeds = root.join("fuzz/corpus").join(target);
    let mut cmd = fuzz_command(root, cargo_fuzz, "run");
    cmd.arg(target).arg(&corpus);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    cmd.arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        // An input that takes this long is a finding too (a hang).
        .arg("-timeout=10")
        .arg("-print_final_stats=1")
        .stdout(log.try_clone()?)
        .stderr(log);
    let status = cmd.status().with_context(|| format!("cannot run {cmd:?}"))?;
    let output = fs::read_to_string(&log_path).unwrap_or_default();
    if !status.success() {
        // The panic (or libFuzzer's report of a crash, leak or timeout), else the end of the log.
        let lines: Vec<&str> = output.lines().filter(|l| !l.starts_with('"')).collect();
        let start = lines
            .iter()
            .position(|l| l.contains("panicked at") || l.starts_with("==") || l.contains("ERROR: libFuzzer"))
            .unwrap_or(lines.len().saturating_sub(40));
        let report = lines[start..].iter().take(25).copied().collect::<Vec<_>>().join("\n");
        let crash = newest_file(&artifacts).map_or_else(|| "(no input saved)".to_string(), |p| p.display().to_string());
        bail!(
            "fuzz target {target} failed ({status}): input {crash}\n{report}\n\nreproduce: {} fuzz run --fuzz-dir fuzz \
             --sanitizer none --debug-assertions --target-dir target/fuzz {target} {crash}\n(full log: {})",
            cargo_fuzz.display(),
            log_path.display()
        );
    }
    let stat = |name: &str| {
        output
            .lines()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .map_or_else(|| "?".to_string(), |v| v.trim().to_string())
    };
    let corpus_size = fs::read_dir(&corpus).map_or(0, |d| d.count());
    Ok(format!(
        "{} runs, {} per second, corpus {corpus_size} inputs, no crash",
        stat("number_of_executed_units"),
        stat("average_exec_per_sec")
    ))
}

fn newest_file(dir: &Path) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, p)| p)
}

/// The targets: one per file in fuzz/fuzz_targets/.
fn list_targets(root: &Path) -> anyhow::Result<Vec<String>> {
    let dir = root.join("fuzz/fuzz_targets");
    let mut targets: Vec<String> = fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".rs").map(str::to_string))
        .collect();
    targets.sort();
    Ok(targets)
}

/// cargo-fuzz in `.tools/bin` (built there on first use) or on PATH; libFuzzer's C++ needs
/// a C++ compiler.
fn ensure_cargo_fuzz(root: &Path) -> anyhow::Result<PathBuf> {
    step("setup: cargo-fuzz and a C++ compiler (libFuzzer)");
    if Command::new("c++").arg("--version").output().is_err() {
        setup::ensure_packages(&["g++"])?;
    }
    let local = root.join(".tools/bin/cargo-fuzz");
    if local.is_file() {
        eprintln!("cargo-fuzz: {} (present)", local.display());
        return Ok(local);
    }
    if let Some(found) = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("cargo-fuzz")).find(|f| f.is_file()))
    {
        eprintln!("cargo-fuzz: {} (present on PATH)", found.display());
        return Ok(found);
    }
    let tools = root.join(".tools");
    eprintln!("cargo-fuzz: building {CARGO_FUZZ_VERSION} into {} (about a minute and a half)", tools.display());
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["install", "cargo-fuzz", "--locked", "--version", CARGO_FUZZ_VERSION, "--root"]).arg(&tools);
    run_cmd(&mut cmd).context("building cargo-fuzz failed")?;
    Ok(local)
}
