//! Sysctls under `/proc/sys`: br_netfilter's `net.bridge.bridge-nf-call-ip{,6}tables` (which
//! exist only while br_netfilter is active) and the IPv4/IPv6 forwarding switches. `/proc/sys/net`
//! follows the reading thread's network namespace, so these are read from the host namespace
//! thread (see `host_netns.rs`). A missing file and an unreadable one are told apart.

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

impl Sysctl {
    pub(super) fn is_off(&self) -> bool {
        self.value.as_deref() == Some("0")
    }
}
