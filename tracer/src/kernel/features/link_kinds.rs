//! Link kinds: a test link of each kind is created (and deleted) over rtnetlink in a throwaway
//! network namespace, which is what a CNI does and so fails the way a CNI fails (EOPNOTSUPP,
//! "Unknown device type"). The namespace is made with `unshare(CLONE_NEWNET)` on a dedicated
//! thread: it has no name, nothing else can see it, and the kernel frees it (and any link left in
//! it) when the thread ends, even if dptrace is killed mid-probe — so unlike `ip netns add` there
//! is never a leftover to clean up. The host's namespace is never touched. On kernels with
//! loadable modules, creating a link of a kind whose module is not loaded makes the kernel load
//! `rtnl-link-<kind>` itself; that is fine (a CNI would trigger the same) and is reported.

use serde::Serialize;

use super::{netlink as nl, KindSpec, Support};

/// Whether links of one kind can be created on this kernel.
#[derive(Debug, Clone, Serialize)]
pub struct LinkKindSupport {
    pub kind: &'static str,
    pub supported: Support,
    /// How that was determined, in words.
    pub how: String,
    /// The errno name the kernel answered with, when creating the test link failed.
    pub errno: Option<String>,
    /// The kernel's extended-ack message (e.g. "Unknown device type"), when it sent one.
    pub kernel_message: Option<String>,
    /// The module that provides the kind.
    pub module: &'static str,
    /// `loaded`, `loaded (autoloaded by this probe)`, `built-in`, `available, not loaded`, `absent …`, …
    pub module_state: String,
    /// The kernel config option that provides the kind.
    pub config: &'static str,
}

pub(super) const KINDS: &[KindSpec] = &[
    KindSpec {
        kind: "veth",
        title: "veth",
        module: "veth",
        config: "CONFIG_VETH",
        requirement: "a kernel built with CONFIG_VETH",
        severity: "error",
        consequence: "almost every CNI (bridge, ptp, Flannel, Calico, Cilium, Weave, OVN-Kubernetes, Antrea) connects \
                      each pod to the host with a veth pair, so pod sandboxes fail with 'operation not supported'",
        alternatives: "",
    },
    KindSpec {
        kind: "bridge",
        title: "The Linux bridge",
        module: "bridge",
        config: "CONFIG_BRIDGE",
        requirement: "a kernel built with CONFIG_BRIDGE",
        severity: "warning",
        consequence: "the CNI bridge plugin (Flannel's and K3s' cni0, kubenet, containerd's default config) and \
                      Docker's docker0 cannot create their bridge",
        alternatives: "or a CNI that routes pods without a bridge (Calico, Cilium)",
    },
    KindSpec {
        kind: "vxlan",
        title: "VXLAN",
        module: "vxlan",
        config: "CONFIG_VXLAN",
        requirement: "a kernel built with CONFIG_VXLAN",
        severity: "warning",
        consequence: "overlays using it (Flannel's default vxlan backend, Calico VXLAN mode, Cilium's default tunnel \
                      mode, Canal) fail with 'operation not supported'",
        alternatives: "or a backend without encapsulation (Flannel host-gw, Calico BGP without encapsulation, Cilium \
                       native routing) when the nodes share a network",
    },
    KindSpec {
        kind: "wireguard",
        title: "WireGuard",
        module: "wireguard",
        config: "CONFIG_WIREGUARD",
        requirement: "kernel >= 5.6 with CONFIG_WIREGUARD, or the wireguard module (older kernels: wireguard-dkms)",
        severity: "warning",
        consequence: "a CNI using the wireguard backend (Flannel --flannel-backend=wireguard-native, Calico WireGuard \
                      encryption, Cilium encryption wireguard) will fail with 'operation not supported'",
        alternatives: "or use another backend such as vxlan or host-gw (Flannel), or IPsec encryption",
    },
    KindSpec {
        kind: "geneve",
        title: "Geneve",
        module: "geneve",
        config: "CONFIG_GENEVE",
        requirement: "a kernel built with CONFIG_GENEVE",
        severity: "warning",
        consequence: "CNIs tunnelling with Geneve (OVN-Kubernetes, Kube-OVN, Antrea's default tunnel, Cilium with \
                      tunnel-protocol=geneve) fail with 'operation not supported'",
        alternatives: "or switch Antrea (tunnelType: vxlan) or Cilium (tunnel-protocol=vxlan) to VXLAN; \
                       OVN-Kubernetes needs Geneve",
    },
    KindSpec {
        kind: "ipip",
        title: "IP-in-IP",
        module: "ipip",
        config: "CONFIG_NET_IPIP",
        requirement: "a kernel built with CONFIG_NET_IPIP",
        severity: "warning",
        consequence: "Calico's IPIP encapsulation (ipipMode Always or CrossSubnet) and kube-router's overlay fail \
                      to create their tunnel (tunl0)",
        alternatives: "or Calico VXLAN mode (vxlanMode) or no encapsulation when the nodes share a network",
    },
    KindSpec {
        kind: "gre",
        title: "GRE",
        module: "ip_gre",
        config: "CONFIG_NET_IPGRE",
        requirement: "a kernel built with CONFIG_NET_IPGRE",
        severity: "info",
        consequence: "GRE overlays (Antrea with tunnelType: gre) fail to create their tunnel",
        alternatives: "or a VXLAN or Geneve tunnel",
    },
    KindSpec {
        kind: "dummy",
        title: "The dummy link",
        module: "dummy",
        config: "CONFIG_DUMMY",
        requirement: "a kernel built with CONFIG_DUMMY",
        severity: "info",
        consequence: "kube-proxy in IPVS mode (kube-ipvs0) and NodeLocal DNSCache (nodelocaldns) cannot create their \
                      dummy interface",
        alternatives: "or kube-proxy in iptables or nftables mode",
    },
    KindSpec {
        kind: "macvlan",
        title: "macvlan",
        module: "macvlan",
        config: "CONFIG_MACVLAN",
        requirement: "a kernel built with CONFIG_MACVLAN",
        severity: "info",
        consequence: "the macvlan CNI plugin (usually with Multus) fails",
        alternatives: "or the ipvlan or bridge plugin",
    },
    KindSpec {
        kind: "ipvlan",
        title: "ipvlan",
        module: "ipvlan",
        config: "CONFIG_IPVLAN",
        requirement: "a kernel built with CONFIG_IPVLAN",
        severity: "info",
        consequence: "the ipvlan CNI plugin (usually with Multus) fails",
        alternatives: "or the macvlan or bridge plugin",
    },
];

/// Kinds that need a lower (parent) Ethernet device.
fn needs_lower(kind: &str) -> bool {
    matches!(kind, "macvlan" | "ipvlan")
}

/// (supported, how, errno name, kernel message) for one kind.
pub(super) type KindOutcome = (Support, String, Option<String>, Option<String>);

/// Creates and deletes a test link of each kind in [`KINDS`] in a throwaway network namespace
/// that lives only as long as a dedicated thread (see the module comment).
pub(super) fn probe_link_kinds() -> Vec<KindOutcome> {
    let unknown = |why: String| KINDS.iter().map(|_| (Support::Unknown, why.clone(), None, None)).collect();
    let thread = std::thread::Builder::new().name(super::PROBE_THREADS[0].into()).spawn(|| {
        // Only this thread moves; the namespace dies with it, and the links in it too.
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
            return Err(format!("could not create a throwaway network namespace ({e}): run as root"));
        }
        let mut sock = nl::Socket::open().map_err(|e| format!("cannot open an rtnetlink socket: {e}"))?;
        // macvlan and ipvlan get one end each of a veth pair as their parent.
        let lowers = match sock.create_link("veth", "dptlower0", None) {
            Ok(()) => Ok((if_index("dptlower0"), if_index("dptlower1"))),
            Err(e) => Err(e.to_string()),
        };
        let mut outcomes = Vec::new();
        for spec in KINDS {
            let lower = match (&lowers, spec.kind) {
                (_, k) if !needs_lower(k) => None,
                (Ok((Some(a), _)), "macvlan") => Some(*a),
                (Ok((_, Some(b))), _) => Some(*b),
                (Ok(_), _) => {
                    outcomes.push((
                        Support::Unknown,
                        "the test veth pair to be its parent has no ifindex".into(),
                        None,
                        None,
                    ));
                    continue;
                }
                (Err(e), _) => {
                    outcomes.push((
                        Support::Unknown,
                        format!("needs a parent device and the test veth pair could not be created: {e}"),
                        None,
                        None,
                    ));
                    continue;
                }
            };
            let created = sock.create_link(spec.kind, "dptprobe0", lower);
            let mut outcome = classify_create(spec.kind, &created);
            if created.is_ok() {
                if let Err(e) = sock.delete_link("dptprobe0") {
                    outcome.1.push_str(&format!(" (deleting it failed: {e}; it went away with the namespace)"));
                }
            }
            outcomes.push(outcome);
        }
        Ok(outcomes)
    });
    match thread
        .map_err(|e| format!("cannot start the probe thread: {e}"))
        .and_then(|t| t.join().map_err(|_| "the link probe thread panicked".to_string())?)
    {
        Ok(outcomes) => outcomes,
        Err(why) => unknown(why),
    }
}

pub(super) fn if_index(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string; the call only reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// What the answer to creating a test link of `kind` means.
fn classify_create(kind: &str, result: &Result<(), nl::Error>) -> KindOutcome {
    let (errno, message) = match result {
        Ok(()) => {
            return (
                Support::Yes,
                format!("created a test {kind} link in a throwaway network namespace and deleted it"),
                None,
                None,
            )
        }
        Err(nl::Error::Local(e)) => return (Support::Unknown, format!("rtnetlink request failed: {e}"), None, None),
        Err(nl::Error::Kernel { errno, message }) => (*errno, message.clone()),
    };
    let name = format!("{:?}", nix::errno::Errno::from_raw(errno));
    let said = match &message {
        Some(m) => format!("{name}: {m}"),
        None => name.clone(),
    };
    let how = match errno {
        libc::EOPNOTSUPP => format!(
            "creating a test {kind} link in a throwaway network namespace failed with {said}: the kernel has no \
             {kind} link type (not built in, and no module for it was loaded)"
        ),
        libc::EPERM | libc::EACCES => {
            format!("creating a test {kind} link was refused ({said}): run as root (needs CAP_NET_ADMIN)")
        }
        _ => format!(
            "creating a test {kind} link in a throwaway network namespace failed with {said}; the kernel may well \
             know the kind, but the probe cannot tell"
        ),
    };
    let supported = if errno == libc::EOPNOTSUPP { Support::No } else { Support::Unknown };
    (supported, how, Some(name), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_errors_map_to_support() {
        let (s, how, errno, msg) = classify_create("vxlan", &Ok(()));
        assert_eq!((s, errno, msg), (Support::Yes, None, None));
        assert!(how.contains("created a test vxlan link"));

        let unsupported =
            Err(nl::Error::Kernel { errno: libc::EOPNOTSUPP, message: Some("Unknown device type".into()) });
        let (s, how, errno, msg) = classify_create("wireguard", &unsupported);
        assert_eq!(s, Support::No);
        assert_eq!(errno.as_deref(), Some("EOPNOTSUPP"));
        assert_eq!(msg.as_deref(), Some("Unknown device type"));
        assert!(how.contains("EOPNOTSUPP: Unknown device type"), "{how}");

        // Old kernels say nothing but EOPNOTSUPP.
        let (s, ..) = classify_create("geneve", &Err(nl::Error::Kernel { errno: libc::EOPNOTSUPP, message: None }));
        assert_eq!(s, Support::No);
        let (s, how, ..) = classify_create("veth", &Err(nl::Error::Kernel { errno: libc::EPERM, message: None }));
        assert_eq!(s, Support::Unknown);
        assert!(how.contains("root"));
        let (s, ..) = classify_create("vxlan", &Err(nl::Error::Kernel { errno: libc::EINVAL, message: None }));
        assert_eq!(s, Support::Unknown);
    }
}
