//! Per-namespace state (sysctls, links and XDP, iptables rules) is read in the host's network
//! namespace, PID 1's, entered on a dedicated thread when dptrace runs in another one.
//! `/proc/sys/net` and `/proc/thread-self/net` follow the reading thread's namespace; `/proc/net`
//! would follow the main thread's, so it is not used. Programs spawned from that thread (iptables,
//! nft) run in it too. When PID 1's namespace cannot be entered, dptrace's own is read and the
//! report says so.

use std::{
    fs::{self, File},
    os::unix::fs::MetadataExt,
    path::Path,
};

use super::{
    iptables::probe_iptables,
    netlink as nl,
    sysctl::read_sysctl,
    xdp::{read_xdp_features, XdpFeatures},
    IptablesBackend, Support, Sysctl,
};

/// What is read inside the host's network namespace.
pub(super) struct HostFacts {
    pub(super) call_iptables: Sysctl,
    pub(super) call_ip6tables: Sysctl,
    pub(super) ip_forward: Sysctl,
    pub(super) ipv6_forwarding: Sysctl,
    pub(super) links: Result<Vec<nl::Link>, String>,
    /// Each device's XDP features, as the kernel reports them (netdev netlink family).
    pub(super) xdp_features: XdpFeatures,
    pub(super) iptables: IptablesBackend,
}

impl HostFacts {
    pub(super) fn unknown(why: String) -> Self {
        let sysctl = |name| Sysctl { name, present: Support::Unknown, value: None, error: Some(why.clone()) };
        Self {
            call_iptables: sysctl("net.bridge.bridge-nf-call-iptables"),
            call_ip6tables: sysctl("net.bridge.bridge-nf-call-ip6tables"),
            ip_forward: sysctl("net.ipv4.ip_forward"),
            ipv6_forwarding: sysctl("net.ipv6.conf.all.forwarding"),
            links: Err(why.clone()),
            xdp_features: Err(why.clone()),
            iptables: IptablesBackend {
                backend: "unknown",
                how: why.clone(),
                iptables_version: None,
                iptables_mode: None,
                legacy_tables: Vec::new(),
                legacy_rules: None,
                nft_rules: None,
                notes: Vec::new(),
            },
        }
    }
}

pub(super) fn probe_host_netns() -> HostFacts {
    HostFacts {
        call_iptables: read_sysctl("net.bridge.bridge-nf-call-iptables"),
        call_ip6tables: read_sysctl("net.bridge.bridge-nf-call-ip6tables"),
        ip_forward: read_sysctl("net.ipv4.ip_forward"),
        ipv6_forwarding: read_sysctl("net.ipv6.conf.all.forwarding"),
        links: nl::Socket::open()
            .map_err(|e| format!("cannot open an rtnetlink socket: {e}"))
            .and_then(|mut s| s.dump_links().map_err(|e| format!("RTM_GETLINK dump failed: {e}"))),
        xdp_features: read_xdp_features(),
        iptables: probe_iptables(),
    }
}

/// Runs `f` in PID 1's network namespace (on a dedicated thread when dptrace is elsewhere), or in
/// dptrace's own when PID 1's cannot be entered. Returns its result, a label for the namespace it
/// ran in, and why that is not PID 1's when it is not.
pub(super) fn in_host_netns<T: Send>(f: impl FnOnce() -> T + Send) -> (Result<T, String>, String, Option<String>) {
    in_netns_at(Path::new("/proc/1/ns/net"), "PID 1's", f)
}

/// [`in_host_netns`] for any namespace file; `whose` names it in the label (`host (whose, net:[N])`).
fn in_netns_at<T: Send>(
    path: &Path,
    whose: &str,
    f: impl FnOnce() -> T + Send,
) -> (Result<T, String>, String, Option<String>) {
    let own = fs::metadata("/proc/thread-self/ns/net").map(|m| m.ino()).unwrap_or(0);
    let own_label = format!("dptrace's own (net:[{own}])");
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) => {
            let note = format!(
                "{} could not be opened ({e}): these are the host's values only if dptrace runs in the host's \
                 network namespace",
                path.display()
            );
            return (Ok(f()), own_label, Some(note));
        }
    };
    let host = file.metadata().map(|m| m.ino()).unwrap_or(0);
    let host_label = format!("host ({whose}, net:[{host}])");
    if host == own {
        return (Ok(f()), host_label, None);
    }
    let thread = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("dptrace-hostns".into())
            .spawn_scoped(scope, move || match nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET) {
                Ok(()) => (f(), host_label, None),
                Err(e) => (
                    f(),
                    own_label,
                    Some(format!(
                        "entering {} (net:[{host}]) failed ({e}): these are not the host's values",
                        path.display()
                    )),
                ),
            })
            .map(|handle| handle.join())
    });
    match thread {
        Ok(Ok((value, label, note))) => (Ok(value), label, note),
        Ok(Err(_)) => (Err("the host-namespace probe thread panicked".into()), "unknown".into(), None),
        Err(e) => (Err(format!("cannot start the host-namespace probe thread: {e}")), "unknown".into(), None),
    }
}

#[cfg(test)]
mod tests {
    use std::{os::fd::AsRawFd, process::Command};

    use super::*;
    use crate::kernel::features::{link_kinds::if_index, xdp::load_xdp_pass, XdpAttachment};

    /// Reading "in the host namespace" from another one: sysctls, /proc/thread-self/net, the link
    /// dump and spawned programs must all follow the entered namespace, not dptrace's (root only).
    #[test]
    fn reads_follow_the_entered_namespace() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping reads_follow_the_entered_namespace: needs root (creates a namespace)");
            return;
        }
        let name = format!("dptfeat-{}", std::process::id());
        struct Guard(String);
        impl Drop for Guard {
            fn drop(&mut self) {
                let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
            }
        }
        assert!(Command::new("ip").args(["netns", "add", &name]).status().unwrap().success());
        let _guard = Guard(name.clone());
        // Give the namespace the opposite ip_forward of ours, so a wrong read cannot pass, one
        // legacy and one nf_tables rule (both backends in use), and a bridge.
        let ours = read_sysctl("net.ipv4.ip_forward").value.unwrap();
        let theirs = if ours == "0" { "1" } else { "0" };
        let setup = format!(
            "sysctl -qw net.ipv4.ip_forward={theirs} && iptables-legacy -A INPUT -j ACCEPT && nft add table ip t && \
             nft add chain ip t c && nft add rule ip t c accept && ip link add br9 type bridge"
        );
        let status = Command::new("ip").args(["netns", "exec", &name, "sh", "-c", &setup]).status().unwrap();
        assert!(status.success(), "setting up {name} failed");

        let path = Path::new("/run/netns").join(&name);
        let (facts, label, note) = in_netns_at(&path, "test", probe_host_netns);
        let facts = facts.unwrap();
        assert!(label.starts_with("host (test, net:["), "{label}");
        assert_eq!(note, None);
        assert_eq!(facts.ip_forward.value.as_deref(), Some(theirs));
        // Per-device XDP features (kernels with the netdev family) are the namespace's devices'.
        let links = facts.links.unwrap();
        if let Ok(features) = &facts.xdp_features {
            let mut listed: Vec<_> = features.keys().copied().collect();
            let mut indexes: Vec<_> = links.iter().map(|l| l.index).collect();
            listed.sort();
            indexes.sort();
            assert_eq!(listed, indexes, "{features:?} {links:?}");
            assert!(features.values().all(|&f| f == 0), "lo and a bridge have no XDP features: {features:?}");
        }
        let mut names: Vec<_> = links.into_iter().map(|l| l.name).collect();
        names.sort();
        assert_eq!(names, ["br9", "lo"]);
        let ipt = &facts.iptables;
        assert_eq!(ipt.legacy_tables, ["filter"], "{ipt:?}");
        assert_eq!((ipt.legacy_rules, ipt.nft_rules), (Some(1), Some(1)), "{ipt:?}");
        assert_eq!(ipt.backend, "both-in-use");
        // A real XDP attachment, as the kernel reports it: a 2-instruction program (return
        // XDP_PASS) attached in generic mode to the namespace's bridge.
        let (attached, ..) = in_netns_at(&path, "test", || -> Result<Option<Vec<XdpAttachment>>, String> {
            let prog = load_xdp_pass()?;
            let index = if_index("br9").ok_or("no br9")?;
            let mut sock = nl::Socket::open().map_err(|e| e.to_string())?;
            sock.set_xdp(index, prog.as_raw_fd(), nl::XDP_FLAGS_SKB_MODE).map_err(|e| format!("attach: {e}"))?;
            let links = sock.dump_links().map_err(|e| e.to_string())?;
            Ok(links.into_iter().find(|l| l.name == "br9").and_then(|l| l.xdp))
        });
        let attached = attached.unwrap().unwrap().expect("br9 reports IFLA_XDP");
        assert_eq!(attached.len(), 1, "{attached:?}");
        assert_eq!(attached[0].mode, "generic");
        assert!(attached[0].prog_id.is_some_and(|id| id > 0), "{attached:?}");

        // And this thread never moved.
        assert_eq!(read_sysctl("net.ipv4.ip_forward").value.as_deref(), Some(ours.as_str()));

        let (_, label, note) = in_netns_at(Path::new("/nonexistent/ns"), "test", || ());
        assert!(label.starts_with("dptrace's own"), "{label}");
        assert!(note.unwrap().contains("could not be opened"));
    }
}
