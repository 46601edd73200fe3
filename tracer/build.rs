//! Builds the kernel-side programs (`tracer-ebpf`) for `bpfel-unknown-none` and hands the
//! object to `src/probes/mod.rs`, which embeds it: `dptrace` is one self-contained binary.
//!
//! Two toolchains are accepted, checked in this order:
//! 1. Debian's `rustc-web` (+ `libstd-rust-web-dev-bpf`: a prebuilt `core` for the BPF
//!    target) with `bpf-linker` in `.tools/bin` or on PATH: what `cargo xtask setup` installs.
//! 2. rustup nightly with `rust-src` and `bpf-linker`: the usual aya path (`-Z build-std`).
//!
//! The same cargo call builds `lab-fixtures`, the XDP programs `dptrace lab` attaches inside
//! its namespaces (`src/lab/fixtures.rs` embeds them as `$OUT_DIR/lab-fixtures`).
//!
//! `DPTRACE_EBPF_OBJECT=/path/to/object` skips the build and embeds that object instead; the
//! lab's fixtures then come from `DPTRACE_LAB_FIXTURES=/path/to/object`, or are left empty
//! (the lab's XDP scenarios then say that this build has no fixtures).

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const TARGET: &str = "bpfel-unknown-none";
/// The lab's XDP test fixtures: the bin's name in tracer-ebpf and the file in `OUT_DIR`.
const FIXTURES: &str = "lab-fixtures";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap().to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let out = out_dir.join("tracer-ebpf");
    let fixtures_out = out_dir.join(FIXTURES);
    println!("cargo:rerun-if-env-changed=DPTRACE_EBPF_OBJECT");
    println!("cargo:rerun-if-env-changed=DPTRACE_LAB_FIXTURES");
    println!("cargo:rerun-if-changed=../tracer-ebpf/src");
    println!("cargo:rerun-if-changed=../tracer-ebpf/Cargo.toml");

    if let Ok(object) = env::var("DPTRACE_EBPF_OBJECT") {
        std::fs::copy(&object, &out)
            .unwrap_or_else(|e| fail(&format!("cannot copy DPTRACE_EBPF_OBJECT={object}: {e}")));
        match env::var("DPTRACE_LAB_FIXTURES") {
            Ok(fixtures) => std::fs::copy(&fixtures, &fixtures_out)
                .map(drop)
                .unwrap_or_else(|e| fail(&format!("cannot copy DPTRACE_LAB_FIXTURES={fixtures}: {e}"))),
            // No toolchain, no fixtures: the lab's XDP scenarios say so and are skipped.
            Err(_) => std::fs::write(&fixtures_out, b"")
                .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", fixtures_out.display()))),
        }
        return;
    }
    let linker_dir =
        find_bpf_linker(&workspace).unwrap_or_else(|| fail("bpf-linker not found (looked in .tools/bin and PATH)"));
    let target_dir = workspace.join("target").join("bpf");
    let mut cmd = match toolchain() {
        Some(Toolchain::Debian) => {
            let mut cmd = Command::new("/usr/bin/cargo");
            cmd.env("RUSTC", "/usr/bin/rustc").env("RUSTC_BOOTSTRAP", "1");
            cmd.args(["build"]);
            cmd
        }
        Some(Toolchain::RustupNightly) => {
            let mut cmd = Command::new("rustup");
            cmd.args(["run", "nightly", "cargo", "build", "-Z", "build-std=core"]);
            cmd.env_remove("RUSTC");
            cmd
        }
        None => fail("no Rust compiler that can target bpfel-unknown-none (Debian rustc-web + libstd-rust-web-dev-bpf, or rustup nightly with rust-src)"),
    };
    // The outer cargo's settings are for the host build; they must not leak into this one.
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTUP_TOOLCHAIN",
        "CARGO_BUILD_RUSTC",
        "RUSTDOC",
    ] {
        cmd.env_remove(var);
    }
    let path = format!("{}:{}", linker_dir.display(), env::var("PATH").unwrap_or_default());
    cmd.env("PATH", path)
        .current_dir(&workspace)
        .args(["--release", "--package", "tracer-ebpf", "--bin", "tracer-ebpf", "--bin", FIXTURES, "--target", TARGET])
        .arg("--target-dir")
        .arg(&target_dir);
    let status = cmd.status().unwrap_or_else(|e| fail(&format!("cannot run {cmd:?}: {e}")));
    if !status.success() {
        fail(&format!("building the eBPF programs failed ({status}); command: {cmd:?}"));
    }
    for (bin, dest) in [("tracer-ebpf", &out), (FIXTURES, &fixtures_out)] {
        let built = target_dir.join(TARGET).join("release").join(bin);
        std::fs::copy(&built, dest).unwrap_or_else(|e| fail(&format!("cannot copy {}: {e}", built.display())));
    }
}

enum Toolchain {
    Debian,
    RustupNightly,
}

fn toolchain() -> Option<Toolchain> {
    if Path::new("/usr/bin/rustc").exists() && Path::new("/usr/lib/rustlib").join(TARGET).join("lib").is_dir() {
        return Some(Toolchain::Debian);
    }
    let sysroot = Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]).output().ok()?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    sysroot.join("lib/rustlib/src/rust/library/core").is_dir().then_some(Toolchain::RustupNightly)
}

fn find_bpf_linker(workspace: &Path) -> Option<PathBuf> {
    let local = workspace.join(".tools").join("bin");
    if local.join("bpf-linker").is_file() {
        return Some(local);
    }
    env::split_paths(&env::var_os("PATH")?).find(|dir| dir.join("bpf-linker").is_file())
}

fn fail(why: &str) -> ! {
    eprintln!("\nerror: cannot build dptrace's eBPF programs: {why}.\n  Run `cargo xtask setup` (installs the toolchain; see README.md), then build again.\n");
    std::process::exit(1);
}
