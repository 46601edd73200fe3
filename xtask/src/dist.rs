//! `cargo xtask dist`: the release binary with its man page and shell completions, in
//! `target/dist/`.
//!
//! The man page and completions come from the binary itself (`dptrace generate KIND`, hidden
//! from `--help`), generated from its clap definitions, as ripgrep does with
//! `rg --generate`: xtask cannot depend on the dptrace crate, whose build script needs the
//! eBPF toolchain that xtask installs.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

use crate::step;

/// `dptrace generate` kinds and where each goes under `target/dist/`.
pub const OUTPUTS: [(&str, &str); 4] = [
    ("man", "dptrace.1"),
    ("complete-bash", "complete/dptrace.bash"),
    ("complete-zsh", "complete/_dptrace"),
    ("complete-fish", "complete/dptrace.fish"),
];

/// Writes `target/dist/{dptrace, dptrace.1, complete/…}` from the built binary `bin`; returns
/// the directory.
pub fn dist(root: &Path, bin: &Path) -> anyhow::Result<PathBuf> {
    step("dist: binary, man page and shell completions in target/dist");
    let dir = root.join("target/dist");
    fs::create_dir_all(dir.join("complete")).with_context(|| format!("cannot create {}", dir.display()))?;
    for (kind, file) in OUTPUTS {
        let out = Command::new(bin)
            .args(["generate", kind])
            .output()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        if !out.status.success() || out.stdout.is_empty() {
            bail!(
                "`{} generate {kind}` failed ({}): {}",
                bin.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let path = dir.join(file);
        fs::write(&path, &out.stdout).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    let copy = dir.join("dptrace");
    fs::copy(bin, &copy).with_context(|| format!("cannot copy {} to {}", bin.display(), copy.display()))?;
    eprintln!("wrote {}", copy.display());
    eprintln!(
        "install: dptrace → /usr/local/bin, dptrace.1 → /usr/local/share/man/man1, complete/dptrace.bash → \
         /usr/share/bash-completion/completions/dptrace, complete/_dptrace → a directory on zsh's $fpath, \
         complete/dptrace.fish → /usr/share/fish/vendor_completions.d"
    );
    Ok(dir)
}
