//! Bad input: a clear one-line error, exit status 2, nothing left behind.

use dptrace_e2e::{dptrace, is_root, stderr};

fn assert_usage_error(args: &[&str], needle: &str) {
    let out = dptrace(args);
    assert_eq!(out.status.code(), Some(2), "{args:?} should exit 2: {}", stderr(&out));
    assert!(stderr(&out).contains(needle), "{args:?}: expected `{needle}` in: {}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{args:?} panicked");
}

#[test]
fn malformed_arguments_exit_2_with_a_reason() {
    assert_usage_error(&["trace", "--duration", "soon"], "duration");
    assert_usage_error(&["trace", "--duration", "0s"], "greater than zero");
    assert_usage_error(&["trace", "--buffer-size", "3000"], "power of two");
    assert_usage_error(&["trace", "--iface", "a/b"], "interface name");
    assert_usage_error(&["trace", "--hooks", "bogus"], "unknown hook family `bogus`");
    assert_usage_error(&["trace", "--netns", "no-such-netns-dptrace"], "unknown network namespace");
    assert_usage_error(&["frobnicate"], "unrecognized subcommand");
    assert_usage_error(&["lab", "run"], "--all");
}

#[test]
fn a_command_that_cannot_start_is_an_error() {
    if !is_root() {
        dptrace_e2e::skip!("not-root", "needs root");
    }
    assert_usage_error(&["trace", "--", "/nonexistent/command"], "cannot run `/nonexistent/command`");
}

#[test]
fn not_root_is_refused_clearly() {
    if !is_root() {
        assert_usage_error(&["check"], "must run as root");
        return;
    }
    // As root: drop to nobody with setpriv (util-linux) and check the refusal.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(dptrace_e2e::dptrace_bin())
        .args(["trace", "--duration", "1s"])
        .output();
    let Ok(out) = out else {
        dptrace_e2e::skip!("missing-tool:setpriv", "setpriv (util-linux) is not available");
    };
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("must run as root"), "{}", stderr(&out));
}

#[test]
fn help_and_version_succeed() {
    assert!(dptrace(&["--help"]).status.success());
    assert!(dptrace(&["--version"]).status.success());
    let help = String::from_utf8_lossy(&dptrace(&["trace", "--help"]).stdout).into_owned();
    for flag in ["--duration", "--json", "--netns", "--iface", "--hooks"] {
        assert!(help.contains(flag), "{help}");
    }
}
