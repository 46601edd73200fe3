//! `cargo xtask …`: set-up, build, test and demo for dptrace.
//!
//! Each command sets up what it needs first (idempotently), so a fresh machine needs only
//! `cargo xtask demo` or `cargo xtask test`.

mod bench;
mod dist;
mod e2e;
mod field;
mod fuzz;
mod setup;
mod skips;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "dptrace developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain and the tools the lab and tests use (idempotent).
    Setup,
    /// Build target/release/dptrace with the eBPF programs embedded.
    Build,
    /// Set up, build, run dptrace's lab of reproduced failures (needs root).
    Demo,
    /// Set up, build, write target/dist/: dptrace, its man page dptrace.1 and shell completions
    /// (complete/dptrace.bash, complete/_dptrace for zsh, complete/dptrace.fish).
    Dist,
    /// Fuzz the decoder and the parsers (fuzz/, cargo-fuzz; builds cargo-fuzz into .tools on
    /// first use). A crash fails and names its input (target/fuzz-artifacts/).
    Fuzz(fuzz::FuzzArgs),
    /// Run the kernel-compatibility matrix (vm-images/matrix.toml) under QEMU, plus the host (needs root).
    VmTest(vm::VmTestArgs),
    /// Measure what dptrace costs: datapath overhead (iperf3), event pipeline, start-up and memory;
    /// results under bench/results/ (needs root).
    Bench(bench::BenchArgs),
    /// Set up, build, run every test: formatting, clippy, unit tests, fuzzing (each target
    /// briefly), end-to-end tests, VM.
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Skip the fuzz targets.
        #[arg(long)]
        no_fuzz: bool,
        /// Skip the kernel matrix in VMs (vm-test).
        #[arg(long)]
        no_vm: bool,
        /// Extra arguments passed to the end-to-end `cargo test` (e.g. a test name).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, build, run only the end-to-end tests (all files, or those named with --test),
    /// with the table of what ran and what was skipped; fails on a skip the allow-list
    /// (xtask/src/skips.rs) does not excuse.
    E2e {
        /// A test file of tests/tests/ (without .rs), repeatable.
        #[arg(long = "test", value_name = "FILE")]
        files: Vec<String>,
        /// Extra arguments for the test binaries (e.g. a test name).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Print the field suite's table (real component, version, scenario, kernels, what dptrace
    /// said) from the last e2e and vm-test runs; with --readme, write it into README.md.
    FieldTable {
        #[arg(long)]
        readme: bool,
    },
    /// The bench's syscall timing, run as a process of its own (prints ns per getppid and per
    /// socket send): measured inside the bench process, sends came out slower while a tracer
    /// the bench had started was running, with no such cost in a separate process.
    #[command(hide = true)]
    CallTiming { calls: u32 },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let root = workspace_root();
    match cli.task {
        Task::Setup => setup::setup(&root),
        Task::Build => {
            setup::setup(&root)?;
            build(&root).map(|_| ())
        }
        Task::Demo => {
            setup::setup(&root)?;
            let bin = build(&root)?;
            step("dptrace lab run --all");
            let status = Command::new(&bin).args(["lab", "run", "--all"]).status()?;
            if !status.success() {
                bail!("the lab did not diagnose every scenario ({status})");
            }
            Ok(())
        }
        Task::Dist => {
            setup::setup(&root)?;
            let bin = build(&root)?;
            dist::dist(&root, &bin).map(|_| ())
        }
        Task::Fuzz(args) => {
            setup::setup(&root)?;
            fuzz::fuzz(&root, &args.targets, args.seconds)
        }
        Task::VmTest(args) => {
            setup::setup(&root)?;
            let bin = build(&root)?;
            vm::vm_test(&root, &bin, &args)
        }
        Task::Bench(args) => {
            bench::require_root()?;
            setup::setup(&root)?;
            let bin = build(&root)?;
            bench::bench(&root, &bin, &args)
        }
        Task::Test { no_lint, no_fuzz, no_vm, args } => test(&root, no_lint, no_fuzz, no_vm, &args),
        Task::E2e { files, args } => {
            setup::setup_for_tests(&root)?;
            let bin = build(&root)?;
            e2e::run(&root, &bin, &files, &args)
        }
        Task::FieldTable { readme } => field::command(&root, readme),
        Task::CallTiming { calls } => {
            let (getppid, send) = bench::call_timing(calls)?;
            println!("{getppid:.1} {send:.1}");
            Ok(())
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Prints a step header, so long runs (CI logs) show where they are.
pub fn step(what: &str) {
    eprintln!("\n==> {what}");
}

/// Runs a command in the workspace, failing with its status.
pub fn run_cmd(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root);
    cmd
}

fn build(root: &Path) -> anyhow::Result<PathBuf> {
    step("cargo build --release -p dptrace (eBPF programs embedded)");
    run_cmd(cargo(root).args(["build", "--release", "-p", "dptrace"]))?;
    let bin = root.join("target/release/dptrace");
    eprintln!("built {}", bin.display());
    Ok(bin)
}

fn test(root: &Path, no_lint: bool, no_fuzz: bool, no_vm: bool, e2e_args: &[String]) -> anyhow::Result<()> {
    setup::setup_for_tests(root)?;
    if !no_lint {
        step("cargo fmt --all --check (and the fuzz workspace)");
        run_cmd(cargo(root).args(["fmt", "--all", "--check"]))?;
        run_cmd(cargo(root).args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--all", "--check"]))?;
        step("cargo clippy -- -D warnings");
        run_cmd(cargo(root).args([
            "clippy",
            "--release",
            "-p",
            "dptrace",
            "-p",
            "xtask",
            "-p",
            "dptrace-e2e",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    let bin = build(root)?;
    dist::dist(root, &bin)?;
    step("unit tests");
    run_cmd(cargo(root).args(["test", "--release", "-p", "dptrace", "-p", "xtask"]))?;
    if no_fuzz {
        eprintln!("fuzzing skipped (--no-fuzz)");
    } else {
        fuzz::fuzz(root, &[], fuzz::TEST_SECONDS)?;
    }
    if !nix_is_root() {
        eprintln!("note: not root: the end-to-end tests that need root will be skipped, and the run fails for it");
    }
    // Run the VM matrix even when the end-to-end stage fails: both results are worth having.
    let e2e = e2e::run(root, &bin, &[], e2e_args);
    let mut left_out = Vec::new();
    let vm = if no_vm {
        left_out.push("the VM matrix (--no-vm)");
        Ok(())
    } else if !nix_is_root() {
        Err(anyhow::anyhow!("the VM matrix needs root (to install QEMU and run the guests): not run"))
    } else {
        vm::vm_test(root, &bin, &vm::VmTestArgs::default())
    };
    match (e2e, vm) {
        (Ok(()), Ok(())) => {}
        (Err(e), Ok(())) | (Ok(()), Err(e)) => return Err(e),
        (Err(e2e), Err(vm)) => bail!("{e2e:#}; and {vm:#}"),
    }
    if no_lint {
        left_out.push("fmt and clippy (--no-lint)");
    }
    if no_fuzz {
        left_out.push("fuzzing (--no-fuzz)");
    }
    if left_out.is_empty() {
        eprintln!("\nall tests passed");
    } else {
        eprintln!("\nall tests that ran passed; not run: {}", left_out.join(", "));
    }
    Ok(())
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
