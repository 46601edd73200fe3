//! Sysctls under `/proc/sys`: br_netfilter's `net.bridge.bridge-nf-call-ip{,6}tables` (which
//! exist only while br_netfilter is active) and the IPv4/IPv6 forwarding switches. `/proc/sys/net`
//! follows the reading thread's network namespace, so these are read from the host namespace
//! thread (see `host_netns.rs`). A missing file and an unreadable one are told apart.
//!
//! Whether the br_netfilter switches are per network namespace or global is not taken from the
//! kernel version: `bridge-nf-call-iptables` is also read in a fresh, throwaway namespace
//! (`fresh_netns.rs`). A kernel that keeps them per namespace registers them in every new
//! namespace; one that keeps them global registers them in the initial namespace only.

use std::{fs, io, path::Path};

use serde::Serialize;

use super::Support;

/// One sysctl as read in [`FeatureReport::host_netns`](super::FeatureReport::host_netns).
#[derive(Debug, Clone, Serialize)]
pub struct Sysctl {
    pub name: &'static str,
    /// `yes`: read; `no`: the file does not exist; `unknown`: it could not be read (see `error`).
    pub present: Support,
    pub value: Option<String>,
    pub error: Option<String>,
}

/// br_netfilter: whether bridged IPv4/IPv6 traffic goes through iptables/ip6tables.
#[derive(Debug, Clone, Serialize)]
pub struct BrNetfilter {
    /// Whether br_netfilter is active (loaded or built in): its sysctls exist.
    pub active: Support,
    pub module_state: String,
    pub call_iptables: Sysctl,
    pub call_ip6tables: Sysctl,
    /// Which namespace the values belong to and what that means.
    pub note: String,
    /// `bridge-nf-call-iptables` as a fresh, throwaway network namespace sees it.
    pub fresh_netns: Sysctl,
    /// `per-namespace` (the sysctl exists in a fresh namespace), `global` (it exists in the host's
    /// namespace only) or `unknown` (br_netfilter is not active, or the probe failed).
    pub scope: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct IpForward {
    pub ipv4: Sysctl,
    pub ipv6: Sysctl,
}

pub(super) fn read_sysctl(name: &'static str) -> Sysctl {
    let path = Path::new("/proc/sys").join(name.replace('.', "/"));
    match fs::read_to_string(&path) {
        Ok(v) => Sysctl { name, present: Support::Yes, value: Some(v.trim().to_string()), error: None },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Sysctl {
            name,
            present: Support::No,
            value: None,
            error: Some(format!("{} does not exist", path.display())),
        },
        Err(e) => {
            Sysctl { name, present: Support::Unknown, value: None, error: Some(format!("{}: {e}", path.display())) }
        }
    }
}

/// The br_netfilter switches' scope and what it means for the values read in `host_netns`, from
/// `bridge-nf-call-iptables` there (`host`) and in a fresh namespace (`fresh`).
pub(super) fn br_netfilter_scope(host: &Sysctl, fresh: &Sysctl, host_netns: &str) -> (&'static str, String) {
    const FIND_OUT: &str = "`ip netns add t; ip netns exec t sysctl net.bridge.bridge-nf-call-iptables; ip netns del \
                            t` (they are per namespace when the sysctl exists there)";
    match (host.present, fresh.present) {
        (_, Support::Yes) => (
            "per-namespace",
            format!(
                "per network namespace: bridge-nf-call-iptables exists in a fresh throwaway namespace too (there it \
                 is {}), so these are the values in {host_netns}. A bridge follows the namespace it lives in, so for \
                 a CNI bridge in that namespace (cni0, docker0) these apply; other namespaces have their own",
                fresh.value.as_deref().unwrap_or("?")
            ),
        ),
        (Support::Yes, Support::No) => (
            "global",
            format!(
                "global: the sysctls exist in {host_netns} but not in a fresh throwaway namespace, so this kernel's \
                 br_netfilter registers them in the initial namespace only, and these values apply to bridges in \
                 every namespace"
            ),
        ),
        (Support::No, Support::No) => (
            "unknown",
            format!(
                "br_netfilter is not active: its sysctls exist neither in {host_netns} nor in a fresh throwaway \
                 namespace. Once it is loaded, whether they are per namespace shows with {FIND_OUT}"
            ),
        ),
        _ => (
            "unknown",
            format!(
                "could not tell whether these are per network namespace ({}); find out with {FIND_OUT}",
                [host, fresh].iter().filter_map(|s| s.error.as_deref()).collect::<Vec<_>>().join("; ")
            ),
        ),
    }
}

impl Sysctl {
    pub(super) fn is_off(&self) -> bool {
        self.value.as_deref() == Some("0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sysctl(present: Support, value: Option<&str>) -> Sysctl {
        let error = (present != Support::Yes).then(|| "why".to_string());
        Sysctl { name: "net.bridge.bridge-nf-call-iptables", present, value: value.map(Into::into), error }
    }

    #[test]
    fn br_netfilter_scope_comes_from_the_fresh_namespace() {
        let host = "host (PID 1's, net:[1])";
        let (scope, note) =
            br_netfilter_scope(&sysctl(Support::Yes, Some("0")), &sysctl(Support::Yes, Some("1")), host);
        assert_eq!(scope, "per-namespace");
        assert!(note.contains("there it is 1") && note.contains(host), "{note}");
        let (scope, _) = br_netfilter_scope(&sysctl(Support::Yes, Some("1")), &sysctl(Support::No, None), host);
        assert_eq!(scope, "global");
        let (scope, note) = br_netfilter_scope(&sysctl(Support::No, None), &sysctl(Support::No, None), host);
        assert_eq!(scope, "unknown");
        assert!(note.contains("not active") && note.contains("ip netns exec t sysctl"), "{note}");
        let (scope, note) = br_netfilter_scope(&sysctl(Support::Yes, Some("1")), &sysctl(Support::Unknown, None), host);
        assert_eq!(scope, "unknown");
        assert!(note.contains("why"), "{note}");
    }
}
