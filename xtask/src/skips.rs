//! Which skips `cargo xtask test` accepts: a short, reviewed allow-list, each entry tied to a
//! fact of the machine that xtask checks itself.
//!
//! A skipped test is not a passed test. Every end-to-end test that cannot run records why with
//! a reason id (`tests/src/lib.rs`: `skip!`, `record_skip`). The run fails unless the id is
//! listed here *and* the fact behind it holds on this machine when checked here, independently
//! of the test: a test cannot excuse itself with a claim about the machine that is not true.
//! Reasons that are never allowed: `not-root` (CI runs as root), `missing-tool:NAME` (`cargo
//! xtask setup` installs every tool the tests use), and anything not listed.

use std::{path::Path, process::Command};

/// One acceptable reason to skip, and how to check it.
pub struct Allowed {
    pub reason: &'static str,
    /// The fact of the machine that makes the skip unavoidable, as people read it.
    pub fact: &'static str,
    /// Whether the fact holds here (Err: it could not be checked, which does not excuse).
    pub holds: fn() -> Result<bool, String>,
}

pub const ALLOWED: &[Allowed] = &[
    Allowed {
        reason: "kernel-has-wireguard",
        fact: "the kernel creates wireguard links (a scenario of a kernel without WireGuard cannot be reproduced)",
        holds: || link_kinds_work(&["wireguard"]),
    },
    Allowed {
        reason: "kernel-lacks-wireguard",
        fact: "the kernel refuses to create wireguard links",
        holds: || link_kinds_work(&["wireguard"]).map(|works| !works),
    },
    Allowed {
        reason: "kernel-has-link-kinds",
        fact: "the kernel creates wireguard, geneve and ipip links (no missing kind to provoke)",
        holds: || link_kinds_work(&["wireguard", "geneve", "ipip"]),
    },
    Allowed {
        reason: "kernel-lacks-bridge",
        fact: "the kernel refuses to create bridge links",
        holds: || link_kinds_work(&["bridge"]).map(|works| !works),
    },
    Allowed {
        reason: "kernel-lacks-vxlan",
        fact: "the kernel refuses to create vxlan links",
        holds: || link_kinds_work(&["vxlan"]).map(|works| !works),
    },
    Allowed {
        reason: "kernel-lacks-ipvlan",
        fact: "the kernel refuses to create ipvlan links (on a veth parent)",
        holds: || ipvlan_works().map(|works| !works),
    },
    Allowed {
        reason: "no-kernel-btf",
        fact: "the kernel has no BTF (/sys/kernel/btf/vmlinux)",
        holds: || Ok(!Path::new("/sys/kernel/btf/vmlinux").exists()),
    },
    Allowed {
        reason: "no-cgroup2",
        fact: "no cgroup v2 hierarchy is mounted (/proc/self/mountinfo)",
        holds: || {
            let mounts = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
            Ok(!mounts.lines().any(|l| l.split_once(" - ").is_some_and(|(_, fs)| fs.starts_with("cgroup2 "))))
        },
    },
    Allowed {
        reason: "no-cheap-links-hook",
        fact: "the kernel has neither the sock:sock_send_length tracepoint nor kprobes",
        holds: || Ok(!tracefs_event("sock/sock_send_length") && !has_kprobes()),
    },
    Allowed {
        reason: "no-listenerless-reset-hook",
        fact: "tcp:tcp_send_reset has no `reason` field (it skips resets without a socket) and there are no kprobes",
        holds: || {
            let format =
                std::fs::read_to_string(tracefs().join("events/tcp/tcp_send_reset/format")).unwrap_or_default();
            Ok(!format.contains(" reason;") && !has_kprobes())
        },
    },
];

/// What xtask concluded about one recorded skip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// On the allow-list and its fact holds here.
    Allowed(&'static str),
    /// Why the skip fails the run.
    Refused(String),
}

/// Judges a skip's reason id. Facts are checked once per reason (`cache`).
pub fn judge(reason: &str, cache: &mut Vec<(String, Judgement)>) -> Judgement {
    if let Some((_, j)) = cache.iter().find(|(r, _)| r == reason) {
        return j.clone();
    }
    let judgement = match ALLOWED.iter().find(|a| a.reason == reason) {
        None if reason == "not-root" => Judgement::Refused("not on the allow-list: run the tests as root".into()),
        None if reason.starts_with("missing-tool:") => Judgement::Refused(format!(
            "not on the allow-list: `cargo xtask setup` installs every tool the tests use; is {} hidden from PATH?",
            &reason["missing-tool:".len()..]
        )),
        None => Judgement::Refused("not on the allow-list (xtask/src/skips.rs)".into()),
        Some(a) => match (a.holds)() {
            Ok(true) => Judgement::Allowed(a.fact),
            Ok(false) => Judgement::Refused(format!("allowed only when {}, which is not so here", a.fact)),
            Err(e) => Judgement::Refused(format!("allowed only when {}, which could not be checked: {e}", a.fact)),
        },
    };
    cache.push((reason.to_string(), judgement.clone()));
    judgement
}

fn tracefs() -> &'static Path {
    if Path::new("/sys/kernel/tracing/events").is_dir() {
        Path::new("/sys/kernel/tracing")
    } else {
        Path::new("/sys/kernel/debug/tracing")
    }
}

fn tracefs_event(event: &str) -> bool {
    tracefs().join("events").join(event).is_dir()
}

fn has_kprobes() -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe").exists()
}

/// Whether links of every one of `kinds` can be created, tried in a scratch namespace.
/// Whether an ipvlan link can be made on a veth in a scratch namespace (ipvlan needs a parent).
fn ipvlan_works() -> Result<bool, String> {
    let ns = format!("dptskipfact-iv-{}", std::process::id());
    let ip = |args: &[&str]| Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"));
    let added = ip(&["netns", "add", &ns])?;
    if !added.status.success() {
        return Err(format!("ip netns add: {}", String::from_utf8_lossy(&added.stderr).trim()));
    }
    let works = ip(&["-n", &ns, "link", "add", "p0", "type", "veth", "peer", "name", "p1"]).and_then(|veth| {
        if !veth.status.success() {
            return Err(format!("a veth for the ipvlan parent: {}", String::from_utf8_lossy(&veth.stderr).trim()));
        }
        Ok(ip(&["-n", &ns, "link", "add", "link", "p0", "name", "iv0", "type", "ipvlan", "mode", "l2"])?
            .status
            .success())
    });
    let _ = ip(&["netns", "del", &ns]);
    works
}

fn link_kinds_work(kinds: &[&str]) -> Result<bool, String> {
    let ns = format!("dptskipfact-{}", std::process::id());
    let ip = |args: &[&str]| Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"));
    let added = ip(&["netns", "add", &ns])?;
    if !added.status.success() {
        return Err(format!("ip netns add: {}", String::from_utf8_lossy(&added.stderr).trim()));
    }
    let mut all = Ok(true);
    for (i, kind) in kinds.iter().enumerate() {
        let name = format!("fact{i}");
        let mut args = vec!["-n", &ns, "link", "add", &name, "type", kind];
        // Kinds that need parameters to be created at all.
        let extra: &[&str] = match *kind {
            "vxlan" => &["id", "42", "dstport", "4789"],
            "geneve" => &["id", "42", "remote", "192.0.2.1"],
            _ => &[],
        };
        args.extend_from_slice(extra);
        match ip(&args) {
            Ok(out) if out.status.success() => {}
            Ok(_) => {
                all = Ok(false);
                break;
            }
            Err(e) => {
                all = Err(e);
                break;
            }
        }
    }
    let _ = ip(&["netns", "del", &ns]);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_allowed_reasons_are_refused_with_what_to_do() {
        let mut cache = vec![];
        let Judgement::Refused(why) = judge("missing-tool:python3", &mut cache) else { panic!("allowed") };
        assert!(why.contains("setup` installs") && why.contains("python3"), "{why}");
        assert!(matches!(judge("not-root", &mut cache), Judgement::Refused(w) if w.contains("root")));
        assert!(matches!(judge("made-up", &mut cache), Judgement::Refused(w) if w.contains("allow-list")));
    }

    #[test]
    fn the_list_names_each_reason_once() {
        let mut reasons: Vec<_> = ALLOWED.iter().map(|a| a.reason).collect();
        reasons.sort();
        reasons.dedup();
        assert_eq!(reasons.len(), ALLOWED.len());
    }

    #[test]
    fn a_fact_that_holds_allows_and_one_that_does_not_refuses() {
        let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
        let mut cache = vec![];
        assert_eq!(matches!(judge("no-kernel-btf", &mut cache), Judgement::Allowed(_)), !btf);
    }
}
