//! A skipped test is not a passed test: `cargo xtask test` (and `cargo xtask e2e`) fails when a
//! test skips for a reason its allow-list does not excuse. Shown here by hiding a tool the
//! tests need from PATH and running the real xtask end-to-end stage on one test that uses it.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use dptrace_e2e::require_root;

/// A directory of symlinks to every program on PATH except `hidden` (removed on drop).
struct PathWithout(PathBuf);

impl PathWithout {
    fn new(hidden: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("dptrace-e2e-path-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = std::env::var_os("PATH").unwrap();
        for d in std::env::split_paths(&path) {
            let Ok(entries) = std::fs::read_dir(&d) else { continue };
            for e in entries.flatten() {
                let name = e.file_name();
                let name_str = name.to_string_lossy();
                let executable =
                    std::fs::metadata(e.path()).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
                if !executable || hidden.iter().any(|h| name_str == *h) || dir.join(&name).exists() {
                    continue;
                }
                // The first directory of PATH wins, as for the shell.
                std::os::unix::fs::symlink(e.path(), dir.join(&name)).unwrap();
            }
        }
        Self(dir)
    }
}

impl Drop for PathWithout {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_test_skipped_for_a_missing_tool_fails_the_run_and_is_named() {
    require_root!();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let path = PathWithout::new(&["python3"]);
    assert!(
        !Command::new(path.0.join("python3")).arg("-V").status().is_ok_and(|s| s.success()),
        "python3 is still reachable"
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let test = "udp_datagrams_to_a_local_socket_are_separate_paths";
    let out = Command::new(cargo)
        .current_dir(workspace)
        .args(["xtask", "e2e", "--test", "path", "--", test, "--exact"])
        .env("PATH", &path.0)
        .env_remove("DPTRACE_SKIP_LOG")
        .output()
        .expect("run cargo xtask e2e");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the run passed although a test skipped without python3:\n{err}");
    assert!(
        err.contains(&format!("path::{test} [missing-tool:python3]")) && err.contains("NOT ALLOWED"),
        "the skip is not named in the table:\n{err}"
    );
    assert!(err.contains("1 skip(s) not excused by the allow-list"), "{err}");
    // The table counts it as skipped, not passed: `path  1 test, 0 passed, 0 failed, 1 skipped`.
    let row = err.lines().find(|l| l.trim_start().starts_with("path ")).unwrap_or_else(|| panic!("no row:\n{err}"));
    assert_eq!(row.split_whitespace().take(5).collect::<Vec<_>>(), ["path", "1", "0", "0", "1"], "{err}");
}
