//! `cargo xtask setup`: installs what building and testing dptrace needs, idempotently,
//! saying what it found and what it did.
//!
//! The kernel-side crate needs a compiler for `bpfel-unknown-none` with a `core` for it
//! and `bpf-linker`. On Debian without rustup downloads that is `rustc-web` +
//! `libstd-rust-web-dev-bpf` + `llvm-22-dev`, and bpf-linker built against LLVM 22 into
//! `.tools/` (see ../shared/TOOLCHAIN.md). Where rustup nightly has `rust-src`, the usual
//! aya path (`-Z build-std`) is used instead and the Debian compiler is not installed.

use std::{path::Path, process::Command};

use anyhow::{bail, Context};

use crate::{run_cmd, step};

const DEBIAN_TOOLCHAIN: [&str; 4] = ["rustc-web", "cargo-web", "libstd-rust-web-dev-bpf", "llvm-22-dev"];
/// Used by the lab, `dptrace check` and the end-to-end tests.
const RUNTIME_TOOLS: [&str; 5] = ["iproute2", "iptables", "nftables", "iputils-ping", "wireguard-tools"];
/// Used by the end-to-end tests only: tshark reads back the pcapng that `--pcap` writes;
/// bpftool checks that the BPF objects of a dead dptrace are gone (reliability.rs,
/// bad_input.rs); capsh (libcap2-bin) runs dptrace as root without its capabilities; python3
/// issues an ioctl and holds a receiving socket (trace.rs, path.rs); groff-base renders the man
/// page (dist.rs); setpriv (util-linux) drops root (cli.rs). A test without its tool does not
/// pass: it records a `missing-tool` skip, which fails `cargo xtask test`.
const TEST_TOOLS: [&str; 10] = [
    "tshark",
    "bpftool",
    "libcap2-bin",
    "python3",
    "groff-base",
    "util-linux",
    "bash",
    // The field suite's real components (tests/tests/field_*.rs); the ones that change
    // machine-wide state (udev, firewalld) run only in the VM guests, unpacked there.
    "containernetworking-plugins",
    "xdp-tools",
    "netavark",
];
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "~0.13";

pub fn setup(root: &Path) -> anyhow::Result<()> {
    setup_with(root, &[])
}

/// Setup plus the tools the tests use.
pub fn setup_for_tests(root: &Path) -> anyhow::Result<()> {
    setup_with(root, &TEST_TOOLS)
}

fn setup_with(root: &Path, extra: &[&'static str]) -> anyhow::Result<()> {
    step("setup: eBPF toolchain and tools");
    let nightly = rustup_nightly_has_rust_src();
    let mut wanted: Vec<&str> = RUNTIME_TOOLS.to_vec();
    wanted.extend(extra);
    if nightly {
        eprintln!("compiler: rustup nightly with rust-src (aya's usual path, -Z build-std)");
    } else {
        eprintln!("compiler: Debian rustc-web with the prebuilt bpfel-unknown-none core");
        wanted.extend(DEBIAN_TOOLCHAIN);
    }
    let missing: Vec<&str> = wanted.iter().copied().filter(|p| !dpkg_installed(p)).collect();
    if missing.is_empty() {
        eprintln!("packages: all present ({})", wanted.join(", "));
    } else {
        apt_install(&missing)?;
    }
    ensure_bpf_linker(root, nightly)
}

/// Installs those of `packages` that are missing (apt-get, as root); used by tasks that need
/// more than building does (`bench`: iperf3, bpftrace).
pub fn ensure_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !dpkg_installed(p)).collect();
    if missing.is_empty() {
        eprintln!("packages: all present ({})", packages.join(", "));
        return Ok(());
    }
    apt_install(&missing)
}

fn rustup_nightly_has_rust_src() -> bool {
    let Ok(out) = Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]).output() else {
        return false;
    };
    out.status.success()
        && Path::new(String::from_utf8_lossy(&out.stdout).trim()).join("lib/rustlib/src/rust/library/core").is_dir()
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", package])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout == b"installed")
}

fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    if Command::new("apt-get").arg("--version").output().is_err() {
        bail!("missing packages {} and no apt-get here: install their equivalents, or use rustup nightly with rust-src plus bpf-linker", packages.join(" "));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("missing packages: {0}. Run as root, or first: sudo apt-get install -y {0}", packages.join(" "));
    }
    eprintln!("installing with apt-get: {}", packages.join(" "));
    let install = |quiet_update: bool| {
        if quiet_update {
            run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
        }
        run_cmd(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(packages)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    // A fresh machine's package lists may be stale or empty: update and retry once.
    install(false).or_else(|_| install(true))
}

fn ensure_bpf_linker(root: &Path, nightly: bool) -> anyhow::Result<()> {
    let tools = root.join(".tools");
    let local = tools.join("bin/bpf-linker");
    if local.is_file() {
        eprintln!("bpf-linker: {} (present)", local.display());
        return Ok(());
    }
    if let Some(found) = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("bpf-linker")).find(|f| f.is_file()))
    {
        eprintln!("bpf-linker: {} (present on PATH)", found.display());
        return Ok(());
    }
    eprintln!("bpf-linker: building {BPF_LINKER_VERSION} into {} (about a minute)", tools.display());
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--root"]).arg(&tools);
    if !nightly {
        // Link against Debian's LLVM 22, the one rustc-web uses; without LLVM_PREFIX the
        // build looks for the wrong LLVM and fails with "unable to find library -lLLVM".
        cmd.args(["--no-default-features", "--features", "llvm-22"]).env("LLVM_PREFIX", LLVM_PREFIX);
    }
    run_cmd(&mut cmd).context("building bpf-linker failed")?;
    Ok(())
}
