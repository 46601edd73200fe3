//! What the running kernel and host offer to CNI plugins, for `dptrace check`: which link kinds
//! can be created, br_netfilter and forwarding sysctls, XDP per interface, the iptables backend,
//! tracefs/bpffs mounts and module support. Every answer is probed on this host, never inferred
//! from `uname -r` alone, and each comes with how it was found out; a probe that cannot run gives
//! an "unknown" state with the reason instead of failing the report.
//!
//! Methods, and why:
//! - Link kinds: a test link of each kind is created (and deleted) over rtnetlink in a throwaway
//!   network namespace, which is what a CNI does and so fails the way a CNI fails (EOPNOTSUPP,
//!   "Unknown device type"). The namespace is made with `unshare(CLONE_NEWNET)` on a dedicated
//!   thread: it has no name, nothing else can see it, and the kernel frees it (and any link left
//!   in it) when the thread ends, even if dptrace is killed mid-probe — so unlike `ip netns add`
//!   there is never a leftover to clean up. The host's namespace is never touched. On kernels with
//!   loadable modules, creating a link of a kind whose module is not loaded makes the kernel load
//!   `rtnl-link-<kind>` itself; that is fine (a CNI would trigger the same) and is reported.
//! - Per-namespace state (sysctls, links and XDP, iptables rules) is read in the host's network
//!   namespace, PID 1's, entered on a dedicated thread when dptrace runs in another one.
//!   `/proc/sys/net` and `/proc/thread-self/net` follow the reading thread's namespace; `/proc/net`
//!   would follow the main thread's, so it is not used.
//! - XDP: an `RTM_GETLINK` dump (raw rtnetlink, no iproute2 needed) gives each link's kind and its
//!   `IFLA_XDP` attachment (program ids and mode); the driver comes from sysfs. See [`native_xdp`]
//!   for how native XDP support is judged.

use std::{
    collections::HashSet,
    fs::{self, File},
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
    process::Command,
};

use serde::Serialize;

/// A yes/no answer that may not be known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Support {
    Yes,
    No,
    Unknown,
}

/// Everything `dptrace check` reports about CNI-relevant kernel and host features.
#[derive(Debug, Clone, Serialize)]
pub struct FeatureReport {
    pub kernel_release: String,
    /// The network namespace whose per-namespace state (sysctls, links, iptables rules) was read:
    /// `host (PID 1's, net:[N])`, or `dptrace's own (net:[N])` when PID 1's could not be entered.
    pub host_netns: String,
    /// Why that is not PID 1's namespace, when it is not.
    pub host_netns_note: Option<String>,
    pub link_kinds: Vec<LinkKindSupport>,
    pub br_netfilter: BrNetfilter,
    pub ip_forward: IpForward,
    /// Interfaces of the host namespace with their XDP state.
    pub xdp: Vec<InterfaceXdp>,
    /// Why `xdp` is empty, when the interfaces could not be listed.
    pub xdp_unknown: Option<String>,
    pub iptables_backend: IptablesBackend,
    pub mounts: Mounts,
    pub modules: ModuleSupport,
    pub problems: Vec<Problem>,
}

/// Something an operator should know or fix, with what to do about it.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// `error` | `warning` | `info`.
    pub severity: &'static str,
    /// `link-kind:<kind>`, `br_netfilter`, `ip_forward`, `iptables`, `tracefs`, `bpffs`, `modules`, `xdp`.
    pub feature: String,
    pub summary: String,
    pub remediation: String,
}

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

/// One sysctl as read in [`FeatureReport::host_netns`].
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

/// One interface of the host namespace and its XDP state.
#[derive(Debug, Clone, Serialize)]
pub struct InterfaceXdp {
    pub name: String,
    pub ifindex: u32,
    /// rtnetlink link kind (`veth`, `bridge`, `vxlan`, …); none for physical devices and `lo`.
    pub kind: Option<String>,
    /// The bound driver (from `/sys/class/net/<name>/device/driver`), `virtual`, or `unknown (why)`.
    pub driver: String,
    /// Attached XDP programs; `None` when the kernel reports no XDP state (before 4.8).
    pub attached: Option<Vec<XdpAttachment>>,
    /// Whether the device supports native (driver) XDP; generic XDP works on every device.
    pub native: Support,
    pub native_how: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct XdpAttachment {
    /// `native` (driver), `generic` (skb) or `offload` (hardware).
    pub mode: &'static str,
    /// The BPF program id (`bpftool prog show id N`); kernels before 4.13 do not report it.
    pub prog_id: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IptablesBackend {
    /// `legacy` | `nft` | `both-in-use` | `not-installed` | `unknown`.
    pub backend: &'static str,
    pub how: String,
    /// From `iptables -V`.
    pub iptables_version: Option<String>,
    /// The backend the host's `iptables` command uses: `legacy` or `nft`.
    pub iptables_mode: Option<&'static str>,
    /// x_tables (legacy) tables instantiated in the namespace, IPv4 and IPv6 (`ip6:` prefix).
    pub legacy_tables: Vec<String>,
    /// Rules in the legacy tables (`iptables-legacy-save`, `ip6tables-legacy-save`).
    pub legacy_rules: Option<usize>,
    /// Rules in nf_tables, iptables-nft's and native nft's (`nft -j list ruleset`).
    pub nft_rules: Option<usize>,
    /// What could not be found out, and why.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Mounts {
    /// Whether the kernel has tracefs at all (`/proc/filesystems`).
    pub tracefs_in_kernel: Support,
    /// Where tracefs is mounted (empty: nowhere).
    pub tracefs: Vec<String>,
    pub bpffs_in_kernel: Support,
    pub bpffs: Vec<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModuleSupport {
    /// CONFIG_MODULES: whether `/proc/modules` exists.
    pub config_modules: Support,
    /// `/lib/modules/<release>`.
    pub modules_dir: String,
    pub modules_dir_present: bool,
    /// `kernel.modules_disabled`; `None` when the sysctl does not exist (no module support).
    pub modules_disabled: Option<bool>,
    /// Where `modprobe` is, if installed.
    pub modprobe: Option<String>,
}

/// Probes everything. Never panics: a probe that fails leaves an "unknown" state with its reason.
pub fn probe_features() -> FeatureReport {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into());
    let version = kernel_version(&release);
    let index = ModuleIndex::load(&release);
    let loaded_before = index.loaded.clone();
    let kind_results = probe_link_kinds();
    // Re-read /proc/modules: the probes may have autoloaded modules.
    let index = ModuleIndex { loaded: read_proc_modules(), ..index };
    let link_kinds: Vec<LinkKindSupport> = KINDS
        .iter()
        .zip(kind_results)
        .map(|(spec, outcome)| {
            let (supported, how, errno, kernel_message) = outcome;
            LinkKindSupport {
                kind: spec.kind,
                supported,
                how,
                errno,
                kernel_message,
                module: spec.module,
                module_state: settle(index.state(spec.module, loaded_before.as_ref()), supported),
                config: spec.config,
            }
        })
        .collect();

    let (host, host_netns, host_netns_note) = in_host_netns(probe_host_netns);
    let host = host.unwrap_or_else(HostFacts::unknown);
    let br_netfilter = BrNetfilter {
        active: host.call_iptables.present,
        module_state: settle(index.state("br_netfilter", loaded_before.as_ref()), host.call_iptables.present),
        call_iptables: host.call_iptables,
        call_ip6tables: host.call_ip6tables,
        note: if version >= (5, 3) {
            format!(
                "per network namespace since Linux 5.3: these are the values in {host_netns}. A bridge follows the \
                 namespace it lives in, so for a CNI bridge in the host namespace (cni0, docker0) these apply; new \
                 namespaces start with 1"
            )
        } else {
            "global on this kernel (before 5.3 they are not per network namespace)".to_string()
        },
    };
    let ip_forward = IpForward { ipv4: host.ip_forward, ipv6: host.ipv6_forwarding };
    let (xdp, xdp_unknown) = match host.links {
        Ok(links) => (links.into_iter().map(|link| interface_xdp(link, version)).collect(), None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let mounts = probe_mounts();
    let modules = probe_modules(&release, &index);

    let mut report = FeatureReport {
        kernel_release: release,
        host_netns,
        host_netns_note,
        link_kinds,
        br_netfilter,
        ip_forward,
        xdp,
        xdp_unknown,
        iptables_backend: host.iptables,
        mounts,
        modules,
        problems: Vec::new(),
    };
    report.problems = problems(&report);
    report
}

// ---------------------------------------------------------------------------------------------
// Link kinds

/// A link kind worth probing: who needs it and what to tell the operator when it is missing.
pub struct KindSpec {
    pub kind: &'static str,
    /// Its name in problems ("WireGuard").
    pub title: &'static str,
    pub module: &'static str,
    pub config: &'static str,
    /// What the kernel needs, in operator terms.
    pub requirement: &'static str,
    pub severity: &'static str,
    /// What breaks without it, and for whom.
    pub consequence: &'static str,
    /// Ways around it without changing the kernel ("" when there is none).
    pub alternatives: &'static str,
}

/// What dptrace knows about link kind `kind` (module, config option, who needs it, fixes):
/// shared with the rules that explain failed link creations.
pub fn link_kind_spec(kind: &str) -> Option<&'static KindSpec> {
    KINDS.iter().find(|k| k.kind == kind)
}

/// The state of the module providing `module` on the running kernel (loaded, built-in,
/// available but not loaded, or absent and why), given whether the feature works.
pub fn module_state(module: &str, works: Support) -> String {
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    settle(ModuleIndex::load(&release).state(module, None), works)
}

const KINDS: &[KindSpec] = &[
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
type KindOutcome = (Support, String, Option<String>, Option<String>);

/// Creates and deletes a test link of each kind in [`KINDS`] in a throwaway network namespace
/// that lives only as long as a dedicated thread (see the module comment).
fn probe_link_kinds() -> Vec<KindOutcome> {
    let unknown = |why: String| KINDS.iter().map(|_| (Support::Unknown, why.clone(), None, None)).collect();
    let thread = std::thread::Builder::new().name("dptrace-linkprobe".into()).spawn(|| {
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

fn if_index(name: &str) -> Option<u32> {
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

// ---------------------------------------------------------------------------------------------
// Modules

const NO_MODULES: &str = "kernel without module support";

/// What the module tooling knows: loaded modules, built-in ones, installed ones.
#[derive(Debug, Clone, Default)]
struct ModuleIndex {
    /// `/lib/modules/<release>`.
    dir: PathBuf,
    /// `/sys/module`: loaded modules, and built-in ones that have parameters or a version.
    sysfs: PathBuf,
    /// `/proc/modules`; `None` without CONFIG_MODULES.
    loaded: Option<HashSet<String>>,
    /// `modules.builtin` of this release.
    builtin: Option<HashSet<String>>,
    /// `modules.dep` of this release: what `modprobe` can load.
    available: Option<HashSet<String>>,
}

impl ModuleIndex {
    fn load(release: &str) -> Self {
        let dir = Path::new("/lib/modules").join(release);
        let read = |file: &str| fs::read_to_string(dir.join(file)).ok().map(|t| module_names(&t));
        Self {
            loaded: read_proc_modules(),
            builtin: read("modules.builtin"),
            available: read("modules.dep"),
            sysfs: PathBuf::from("/sys/module"),
            dir,
        }
    }

    /// The state of `name`, given the loaded set read before the link probes ran.
    fn state(&self, name: &str, loaded_before: Option<&HashSet<String>>) -> String {
        let in_sysfs = self.sysfs.join(name).exists();
        match &self.loaded {
            Some(loaded) if loaded.contains(name) => {
                if loaded_before.is_some_and(|before| !before.contains(name)) {
                    "loaded (autoloaded by this probe)".into()
                } else {
                    "loaded".into()
                }
            }
            _ if self.builtin.as_ref().is_some_and(|b| b.contains(name)) || in_sysfs => "built-in".into(),
            None => format!("{NO_MODULES} (built in if the probe found it supported)"),
            Some(_) if self.available.as_ref().is_some_and(|a| a.contains(name)) => "available, not loaded".into(),
            Some(_) if !self.dir.is_dir() => format!("unknown: {} is missing", self.dir.display()),
            Some(_) => format!("absent: not in {}/modules.dep or modules.builtin", self.dir.display()),
        }
    }
}

/// Without module support, what works is built in, and what does not work is simply absent.
fn settle(state: String, works: Support) -> String {
    match works {
        Support::Yes if state.starts_with(NO_MODULES) => "built-in".into(),
        Support::No if state.starts_with(NO_MODULES) => "absent (kernel without module support)".into(),
        _ => state,
    }
}

fn read_proc_modules() -> Option<HashSet<String>> {
    let text = fs::read_to_string("/proc/modules").ok()?;
    Some(text.lines().filter_map(|l| l.split_whitespace().next()).map(|n| n.replace('-', "_")).collect())
}

/// Module names from `modules.dep` (`kernel/…/vxlan.ko.zst: deps…`) or `modules.builtin` lines.
fn module_names(text: &str) -> HashSet<String> {
    text.lines()
        .filter_map(|line| {
            let path = line.split(':').next()?.trim();
            let file = path.rsplit('/').next()?;
            let name = file.split(".ko").next()?;
            (!name.is_empty()).then(|| name.replace('-', "_"))
        })
        .collect()
}

fn probe_modules(release: &str, index: &ModuleIndex) -> ModuleSupport {
    let disabled = fs::read_to_string("/proc/sys/kernel/modules_disabled").ok().map(|v| v.trim() != "0");
    ModuleSupport {
        config_modules: if Path::new("/proc/modules").exists() { Support::Yes } else { Support::No },
        modules_dir: Path::new("/lib/modules").join(release).display().to_string(),
        modules_dir_present: index.dir.is_dir(),
        modules_disabled: disabled,
        modprobe: find_program("modprobe").map(|p| p.display().to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// The host namespace: sysctls, links, iptables

/// What is read inside the host's network namespace.
struct HostFacts {
    call_iptables: Sysctl,
    call_ip6tables: Sysctl,
    ip_forward: Sysctl,
    ipv6_forwarding: Sysctl,
    links: Result<Vec<nl::Link>, String>,
    iptables: IptablesBackend,
}

impl HostFacts {
    fn unknown(why: String) -> Self {
        let sysctl = |name| Sysctl { name, present: Support::Unknown, value: None, error: Some(why.clone()) };
        Self {
            call_iptables: sysctl("net.bridge.bridge-nf-call-iptables"),
            call_ip6tables: sysctl("net.bridge.bridge-nf-call-ip6tables"),
            ip_forward: sysctl("net.ipv4.ip_forward"),
            ipv6_forwarding: sysctl("net.ipv6.conf.all.forwarding"),
            links: Err(why.clone()),
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

fn probe_host_netns() -> HostFacts {
    HostFacts {
        call_iptables: read_sysctl("net.bridge.bridge-nf-call-iptables"),
        call_ip6tables: read_sysctl("net.bridge.bridge-nf-call-ip6tables"),
        ip_forward: read_sysctl("net.ipv4.ip_forward"),
        ipv6_forwarding: read_sysctl("net.ipv6.conf.all.forwarding"),
        links: nl::Socket::open()
            .map_err(|e| format!("cannot open an rtnetlink socket: {e}"))
            .and_then(|mut s| s.dump_links().map_err(|e| format!("RTM_GETLINK dump failed: {e}"))),
        iptables: probe_iptables(),
    }
}

/// Runs `f` in PID 1's network namespace (on a dedicated thread when dptrace is elsewhere), or in
/// dptrace's own when PID 1's cannot be entered. Returns its result, a label for the namespace it
/// ran in, and why that is not PID 1's when it is not.
fn in_host_netns<T: Send>(f: impl FnOnce() -> T + Send) -> (Result<T, String>, String, Option<String>) {
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

fn read_sysctl(name: &'static str) -> Sysctl {
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
    fn is_off(&self) -> bool {
        self.value.as_deref() == Some("0")
    }
}

// ---------------------------------------------------------------------------------------------
// XDP

fn interface_xdp(link: nl::Link, version: (u32, u32)) -> InterfaceXdp {
    let driver = device_driver(&link.name, link.index);
    let (native, native_how) = native_xdp(&link.name, link.kind.as_deref(), &driver, version);
    InterfaceXdp {
        name: link.name,
        ifindex: link.index,
        kind: link.kind,
        driver,
        attached: link.xdp,
        native,
        native_how,
    }
}

/// The driver bound to a device, as `ethtool -i` would say, or `virtual`. sysfs shows the
/// namespace that mounted it, so the ifindex must match for the answer to be about this device.
fn device_driver(name: &str, ifindex: u32) -> String {
    let dir = Path::new("/sys/class/net").join(name);
    match fs::read_to_string(dir.join("ifindex")) {
        Ok(index) if index.trim().parse::<u32>().ok() == Some(ifindex) => {}
        Ok(_) => return "unknown (sysfs shows another namespace's device of that name)".into(),
        Err(_) => return "unknown (not in /sys/class/net: sysfs belongs to another network namespace)".into(),
    }
    if !dir.join("device").exists() {
        return "virtual".into();
    }
    match fs::read_link(dir.join("device/driver")) {
        Ok(target) => target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "unknown".into()),
        Err(_) => "unknown (device without a bound driver)".into(),
    }
}

/// Link kinds (virtual devices) without a native XDP hook (`ndo_bpf`): XDP runs there only in
/// generic mode.
const GENERIC_ONLY_KINDS: &[&str] = &[
    "bridge",
    "dummy",
    "vxlan",
    "geneve",
    "wireguard",
    "ipip",
    "gre",
    "gretap",
    "ip6gre",
    "ip6gretap",
    "ip6tnl",
    "sit",
    "vti",
    "vti6",
    "macvlan",
    "macvtap",
    "ipvlan",
    "ipvtap",
    "vlan",
    "ifb",
    "vrf",
    "team",
    "nlmon",
    "bareudp",
];

/// Drivers known to implement native XDP upstream, with a conservative first kernel version.
/// The kernel does not say whether a driver implements `ndo_bpf` without trying an attach, so
/// this list is the only signal; an older kernel than listed may still have it through a backport.
const NATIVE_XDP_DRIVERS: &[(&str, (u32, u32))] = &[
    ("mlx4_core", (4, 8)),
    ("mlx5_core", (4, 9)),
    ("virtio_net", (4, 10)),
    ("nfp", (4, 10)),
    ("qede", (4, 10)),
    ("bnxt_en", (4, 11)),
    ("ixgbe", (4, 12)),
    ("i40e", (4, 13)),
    ("ixgbevf", (4, 17)),
    ("fsl_dpaa2_eth", (5, 0)),
    ("ice", (5, 5)),
    ("sfc", (5, 5)),
    ("mvneta", (5, 5)),
    ("ena", (5, 6)),
    ("hv_netvsc", (5, 6)),
    ("mvpp2", (5, 9)),
    ("vif", (5, 9)),
    ("igb", (5, 10)),
    ("stmmaceth", (5, 13)),
    ("igc", (5, 14)),
    ("atlantic", (5, 19)),
    ("fec", (6, 2)),
    ("gve", (6, 4)),
    ("vmxnet3", (6, 6)),
    ("ionic", (6, 9)),
];

/// Whether `name` supports native (driver-mode) XDP, and how that was judged.
///
/// Native XDP needs the driver's `ndo_bpf`, which the kernel does not expose: the only exact test
/// is attaching a program in driver mode, which dptrace will not do to a live interface. So:
/// veth (since 4.19) and tun (since 4.14) have it; the virtual kinds in [`GENERIC_ONLY_KINDS`]
/// and loopback do not; physical devices are judged by their driver against
/// [`NATIVE_XDP_DRIVERS`]; everything else is "unknown", with how to find out.
fn native_xdp(name: &str, kind: Option<&str>, driver: &str, version: (u32, u32)) -> (Support, String) {
    let since = |what: &str, first: (u32, u32)| {
        if version >= first {
            (Support::Yes, format!("{what} implements native XDP since Linux {}.{}", first.0, first.1))
        } else {
            (
                Support::No,
                format!("{what} implements native XDP only since Linux {}.{}; this kernel is older", first.0, first.1),
            )
        }
    };
    match kind {
        Some("veth") => return since("veth", (4, 19)),
        Some("tun") => return since("tun/tap", (4, 14)),
        Some("bond") => {
            return (
                Support::Unknown,
                "bonding has native XDP since Linux 5.15 only when every slave's driver has it".into(),
            )
        }
        Some(k) if GENERIC_ONLY_KINDS.contains(&k) => {
            return (Support::No, format!("{k} devices have no native XDP hook: generic (skb) mode only"))
        }
        _ => {}
    }
    if name == "lo" {
        return (Support::No, "loopback has no native XDP hook: generic (skb) mode only".into());
    }
    if let Some((_, first)) = NATIVE_XDP_DRIVERS.iter().find(|(d, _)| *d == driver) {
        let (support, how) = since(&format!("driver {driver}"), *first);
        // A driver older than its XDP support may still have it through a distribution backport.
        return if support == Support::No { (Support::Unknown, how + " (unless backported)") } else { (support, how) };
    }
    let what = match kind {
        Some(k) => format!("link kind {k}"),
        None if driver == "virtual" => "this virtual device".to_string(),
        None => format!("driver {driver}"),
    };
    (
        Support::Unknown,
        format!(
            "{what} is not in dptrace's lists; the kernel does not expose native XDP support without an attach: \
             `ip link set dev {name} xdpdrv obj PROG.o` on a test system tells"
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// iptables

fn probe_iptables() -> IptablesBackend {
    let mut notes = Vec::new();
    let (version, mode) = match run_program("iptables", &["-V"]) {
        Ok(out) => parse_iptables_version(&out),
        Err(e) => {
            notes.push(format!("iptables -V: {e}"));
            (None, None)
        }
    };
    let installed = find_program("iptables").is_some();

    let mut legacy_tables = Vec::new();
    let mut tables_known = true;
    for (file, prefix) in [("ip_tables_names", ""), ("ip6_tables_names", "ip6:")] {
        // /proc/thread-self/net follows this thread's namespace; /proc/net the main thread's.
        match fs::read_to_string(Path::new("/proc/thread-self/net").join(file)) {
            Ok(text) => legacy_tables.extend(text.split_whitespace().map(|t| format!("{prefix}{t}"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                notes.push(format!("/proc/thread-self/net/{file}: {e}"));
                tables_known = false;
            }
        }
    }
    // Only dump legacy tables that exist: nothing here may instantiate tables or load modules.
    let legacy_rules = if !tables_known {
        None
    } else if legacy_tables.is_empty() {
        Some(0)
    } else {
        let mut total = Some(0);
        for (family, has) in [
            ("iptables", legacy_tables.iter().any(|t| !t.starts_with("ip6:"))),
            ("ip6tables", legacy_tables.iter().any(|t| t.starts_with("ip6:"))),
        ] {
            if !has {
                continue;
            }
            let save = if find_program(&format!("{family}-legacy-save")).is_some() {
                format!("{family}-legacy-save")
            } else if mode == Some("legacy") {
                format!("{family}-save")
            } else {
                notes.push(format!("{family}-legacy-save is not installed: legacy {family} rules not counted"));
                total = None;
                continue;
            };
            match run_program(&save, &[]) {
                Ok(out) => total = total.map(|t| t + count_save_rules(&out)),
                Err(e) => {
                    notes.push(format!("{save}: {e}"));
                    total = None;
                }
            }
        }
        total
    };
    let nft_rules = match run_program("nft", &["-j", "list", "ruleset"]) {
        Ok(out) => count_nft_rules(&out).map_err(|e| notes.push(format!("nft -j list ruleset: {e}"))).ok(),
        Err(e) => {
            notes.push(format!("nft -j list ruleset: {e}"));
            // Without nft, iptables-nft's own tables can still be counted.
            let mut total = Some(0);
            for save in ["iptables-nft-save", "ip6tables-nft-save"] {
                match run_program(save, &[]) {
                    Ok(out) => total = total.map(|t| t + count_save_rules(&out)),
                    Err(e) => {
                        notes.push(format!("{save}: {e}"));
                        total = None;
                    }
                }
            }
            total
        }
    };
    let legacy_in_use = legacy_rules.map_or(!legacy_tables.is_empty(), |n| n > 0);
    let nft_in_use = nft_rules.is_some_and(|n| n > 0);
    let backend = decide_backend(installed, mode, legacy_in_use, nft_in_use);
    let how = format!(
        "`iptables -V` says {}; legacy tables: {}; legacy rules: {}; nf_tables rules: {}",
        version
            .as_deref()
            .map_or("nothing (not run)".to_string(), |v| format!("v{v} ({})", mode.unwrap_or("mode not stated"))),
        match (tables_known, legacy_tables.is_empty()) {
            (false, _) => "not readable".to_string(),
            (true, true) => "none".to_string(),
            (true, false) => legacy_tables.join(" "),
        },
        legacy_rules.map_or("not counted".to_string(), |n| n.to_string()),
        nft_rules.map_or("not counted".to_string(), |n| n.to_string()),
    );
    IptablesBackend {
        backend,
        how,
        iptables_version: version,
        iptables_mode: mode,
        legacy_tables,
        legacy_rules,
        nft_rules,
        notes,
    }
}

/// `iptables v1.8.9 (nf_tables)` → ("1.8.9", nft); `(legacy)` → legacy; before 1.8 there was
/// only the legacy backend and no suffix.
fn parse_iptables_version(output: &str) -> (Option<String>, Option<&'static str>) {
    let line = output.lines().find(|l| l.contains('v')).unwrap_or("").trim();
    let version = line.split_whitespace().find_map(|w| w.strip_prefix('v')).map(str::to_string);
    let mode = if line.contains("(nf_tables)") {
        Some("nft")
    } else if line.contains("(legacy)") {
        Some("legacy")
    } else {
        let major_minor =
            version.as_deref().map(|v| v.split('.').take(2).map(|p| p.parse::<u32>().unwrap_or(0)).collect::<Vec<_>>());
        match major_minor.as_deref() {
            Some([major, minor]) if (*major, *minor) < (1, 8) => Some("legacy"),
            _ => None,
        }
    };
    (version, mode)
}

fn decide_backend(installed: bool, mode: Option<&'static str>, legacy_in_use: bool, nft_in_use: bool) -> &'static str {
    match (legacy_in_use, nft_in_use) {
        (true, true) => "both-in-use",
        _ if !installed => "not-installed",
        _ => mode.unwrap_or("unknown"),
    }
}

/// Rules in `iptables-save` output: the `-A` lines.
fn count_save_rules(output: &str) -> usize {
    output.lines().filter(|l| l.starts_with("-A ")).count()
}

/// Rules in `nft -j list ruleset` output.
fn count_nft_rules(json: &str) -> Result<usize, String> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("unexpected output: {e}"))?;
    let items = value.get("nftables").and_then(|v| v.as_array()).ok_or("no `nftables` array in the output")?;
    Ok(items.iter().filter(|item| item.get("rule").is_some()).count())
}

/// Finds a program in PATH or the sbin directories (root's PATH sometimes lacks them).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Runs a program (found with [`find_program`]) and returns its stdout.
fn run_program(name: &str, args: &[&str]) -> Result<String, String> {
    let program = find_program(name).ok_or_else(|| "not installed".to_string())?;
    let output = Command::new(&program).args(args).output().map_err(|e| format!("cannot run: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!("{}: {}", output.status, stderr.trim().lines().collect::<Vec<_>>().join("; ")));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

// ---------------------------------------------------------------------------------------------
// Mounts

fn probe_mounts() -> Mounts {
    let filesystems = fs::read_to_string("/proc/filesystems");
    let in_kernel = |fs_name: &str| match &filesystems {
        Ok(text) => {
            if text.lines().any(|l| l.split_whitespace().last() == Some(fs_name)) {
                Support::Yes
            } else {
                Support::No
            }
        }
        Err(_) => Support::Unknown,
    };
    let (tracefs_in_kernel, bpffs_in_kernel) = (in_kernel("tracefs"), in_kernel("bpf"));
    match fs::read_to_string("/proc/self/mountinfo") {
        Ok(text) => {
            let mounts = parse_mountinfo(&text);
            let at = |fs_type: &str| mounts.iter().filter(|(t, _)| t == fs_type).map(|(_, p)| p.clone()).collect();
            Mounts { tracefs_in_kernel, tracefs: at("tracefs"), bpffs_in_kernel, bpffs: at("bpf"), error: None }
        }
        Err(e) => Mounts {
            tracefs_in_kernel,
            tracefs: Vec::new(),
            bpffs_in_kernel,
            bpffs: Vec::new(),
            error: Some(format!("/proc/self/mountinfo: {e}")),
        },
    }
}

/// (filesystem type, mount point) of each `/proc/self/mountinfo` line.
fn parse_mountinfo(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            let fs_type = right.split_whitespace().next()?;
            Some((fs_type.to_string(), unescape_octal(mount_point)))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\040`-style octal.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// (major, minor) of a release string such as `6.18.44-fc-v669`; (0, 0) when unparsable.
fn kernel_version(release: &str) -> (u32, u32) {
    let mut parts = release.split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

// ---------------------------------------------------------------------------------------------
// Problems

fn problem(severity: &'static str, feature: &str, summary: String, remediation: String) -> Problem {
    Problem { severity, feature: feature.to_string(), summary, remediation }
}

fn problems(r: &FeatureReport) -> Vec<Problem> {
    let mut out = Vec::new();
    let no_modules = r.modules.config_modules == Support::No;
    let persist = |m: &str| format!("`modprobe {m}` and persist it with `echo {m} > /etc/modules-load.d/{m}.conf`");

    for (spec, link) in KINDS.iter().zip(&r.link_kinds) {
        let feature = format!("link-kind:{}", spec.kind);
        match link.supported {
            Support::Yes => {}
            Support::No => {
                let kernel = if link.module_state.starts_with("available") {
                    format!(
                        "{}: its module is installed but could not be loaded automatically: {}",
                        spec.requirement,
                        persist(spec.module)
                    )
                } else if no_modules {
                    format!(
                        "{}; this kernel cannot load modules, so it needs a build with {}=y",
                        spec.requirement, spec.config
                    )
                } else {
                    format!(
                        "{} (as a module: install the kernel's extra modules package, e.g. \
                         linux-modules-extra-$(uname -r) on Ubuntu, then {})",
                        spec.requirement,
                        persist(spec.module)
                    )
                };
                let alternatives =
                    if spec.alternatives.is_empty() { String::new() } else { format!("; {}", spec.alternatives) };
                out.push(problem(
                    spec.severity,
                    &feature,
                    format!("{} is not available: {}", spec.title, spec.consequence),
                    format!("{kernel}{alternatives}"),
                ));
            }
            Support::Unknown => out.push(problem(
                "info",
                &feature,
                format!("could not tell whether {} links can be created: {}", spec.kind, link.how),
                format!(
                    "run `dptrace check` as root, or try it by hand in a scratch namespace: `ip netns add t; ip -n t \
                     link add t0 type {} …; ip netns del t`",
                    spec.kind
                ),
            )),
        }
    }

    let br = &r.br_netfilter;
    let sysctl_fix = "set `net.bridge.bridge-nf-call-iptables = 1` and `net.bridge.bridge-nf-call-ip6tables = 1` in \
                      /etc/sysctl.d/k8s.conf and apply them with `sysctl --system`";
    match br.active {
        Support::No => {
            let load = if no_modules {
                "this kernel cannot load modules: it needs a build with CONFIG_BRIDGE_NETFILTER=y; then ".to_string()
            } else {
                format!("{}; then ", persist("br_netfilter"))
            };
            out.push(problem(
                "warning",
                "br_netfilter",
                "br_netfilter is not loaded: traffic between pods on the same bridge bypasses iptables, so kube-proxy's \
                 Service NAT and network policies do not apply to it (kubeadm and flannel fail with 'stat \
                 /proc/sys/net/bridge/bridge-nf-call-iptables: no such file or directory')"
                    .to_string(),
                format!("{load}{sysctl_fix}"),
            ));
        }
        Support::Unknown => out.push(problem(
            "info",
            "br_netfilter",
            format!(
                "could not read the br_netfilter sysctls: {}",
                br.call_iptables.error.as_deref().unwrap_or("unknown")
            ),
            "run `dptrace check` as root".to_string(),
        )),
        Support::Yes => {
            for (sysctl, family) in [(&br.call_iptables, "iptables"), (&br.call_ip6tables, "ip6tables")] {
                if sysctl.is_off() {
                    out.push(problem(
                        "warning",
                        "br_netfilter",
                        format!(
                            "{} is 0 in {}: bridged {} traffic bypasses {family}, so Service NAT and network \
                             policies do not apply between pods on the same bridge",
                            sysctl.name,
                            r.host_netns,
                            if family == "iptables" { "IPv4" } else { "IPv6" }
                        ),
                        format!("`sysctl -w {}=1`, and {sysctl_fix}", sysctl.name),
                    ));
                }
            }
        }
    }

    let fwd = &r.ip_forward;
    if fwd.ipv4.is_off() {
        out.push(problem(
            "warning",
            "ip_forward",
            "IPv4 forwarding is off (net.ipv4.ip_forward = 0): the node drops pod traffic it should route to other \
             nodes and Services, and kubeadm's preflight fails"
                .to_string(),
            "`sysctl -w net.ipv4.ip_forward=1` and persist `net.ipv4.ip_forward = 1` in /etc/sysctl.d/k8s.conf (most \
             CNIs turn it on when they start: on a running node, check that the CNI agent did start)"
                .to_string(),
        ));
    }
    if fwd.ipv6.is_off() {
        out.push(problem(
            "info",
            "ip_forward",
            "IPv6 forwarding is off (net.ipv6.conf.all.forwarding = 0): only IPv6 and dual-stack clusters need it"
                .to_string(),
            "for IPv6 pods: `sysctl -w net.ipv6.conf.all.forwarding=1` and persist it in /etc/sysctl.d/k8s.conf"
                .to_string(),
        ));
    }
    for sysctl in [&fwd.ipv4, &fwd.ipv6] {
        if sysctl.present != Support::Yes {
            out.push(problem(
                "info",
                "ip_forward",
                format!("could not read {}: {}", sysctl.name, sysctl.error.as_deref().unwrap_or("unknown")),
                "run `dptrace check` as root".to_string(),
            ));
        }
    }

    let ipt = &r.iptables_backend;
    match ipt.backend {
        "both-in-use" => out.push(problem(
            "warning",
            "iptables",
            format!(
                "iptables rules exist in both backends ({} legacy rules, {} nf_tables rules): components that use \
                 different iptables binaries (kube-proxy, the CNI, the host's firewall) do not see each other's rules, \
                 a classic cause of broken Services and network policies",
                ipt.legacy_rules.map_or("some".to_string(), |n| n.to_string()),
                ipt.nft_rules.map_or("some".to_string(), |n| n.to_string()),
            ),
            "make every component use one backend: compare `iptables-legacy-save` with `iptables-nft-save`, point the \
             host at the one kube-proxy and the CNI use (`update-alternatives --set iptables /usr/sbin/iptables-nft` \
             or `…-legacy`), flush the other backend's stale rules, then restart kube-proxy and the CNI agent"
                .to_string(),
        )),
        "not-installed" => out.push(problem(
            "info",
            "iptables",
            "iptables is not installed on the host: kube-proxy and CNIs bring their own in their images, but there is \
             nothing here to inspect their rules with"
                .to_string(),
            "install iptables (the same backend kube-proxy uses) for debugging".to_string(),
        )),
        _ => {
            let mismatch = match ipt.iptables_mode {
                Some("legacy") if ipt.nft_rules.unwrap_or(0) > 0 && ipt.legacy_rules == Some(0) => {
                    Some(("legacy", "nf_tables", "iptables-nft-save` or `nft list ruleset"))
                }
                Some("nft") if ipt.legacy_rules.unwrap_or(0) > 0 && ipt.nft_rules == Some(0) => {
                    Some(("nf_tables", "legacy", "iptables-legacy-save"))
                }
                _ => None,
            };
            if let Some((command_backend, rules_backend, tool)) = mismatch {
                out.push(problem(
                    "info",
                    "iptables",
                    format!(
                        "the host's `iptables` uses the {command_backend} backend but the rules are in {rules_backend}: \
                         `iptables -L` does not show them"
                    ),
                    format!("inspect them with `{tool}`"),
                ));
            }
        }
    }

    let m = &r.mounts;
    if m.tracefs_in_kernel == Support::No {
        out.push(problem(
            "warning",
            "tracefs",
            "the kernel has no tracefs (CONFIG_TRACING off, or older than 4.1): dptrace cannot attach its tracepoints"
                .to_string(),
            "a kernel built with CONFIG_FTRACE and CONFIG_EVENT_TRACING".to_string(),
        ));
    } else if m.tracefs.is_empty() && m.error.is_none() {
        out.push(problem(
            "info",
            "tracefs",
            "tracefs is not mounted; dptrace mounts it at /sys/kernel/tracing when it traces".to_string(),
            "nothing to do; to have it anyway: `mount -t tracefs nodev /sys/kernel/tracing`".to_string(),
        ));
    }
    if m.bpffs_in_kernel == Support::No {
        out.push(problem(
            "warning",
            "bpffs",
            "the kernel has no BPF filesystem (CONFIG_BPF_SYSCALL off): eBPF dataplanes (Cilium, Calico eBPF) cannot run"
                .to_string(),
            "a kernel built with CONFIG_BPF_SYSCALL=y".to_string(),
        ));
    } else if m.bpffs.is_empty() && m.error.is_none() {
        out.push(problem(
            "info",
            "bpffs",
            "bpffs is not mounted: Cilium and the Calico eBPF dataplane pin their maps in /sys/fs/bpf (their agents \
             mount it when they can; without a host mount, pinned state is lost when the agent's container restarts)"
                .to_string(),
            "`mount -t bpf bpf /sys/fs/bpf`, persisted with `bpffs /sys/fs/bpf bpf defaults 0 0` in /etc/fstab"
                .to_string(),
        ));
    }

    let modules = &r.modules;
    if modules.config_modules == Support::No {
        out.push(problem(
            "info",
            "modules",
            "the kernel has no loadable module support: every feature must be built in, `modprobe` cannot add one"
                .to_string(),
            "for a missing feature, boot a kernel built with it (=y)".to_string(),
        ));
    } else {
        if !modules.modules_dir_present {
            out.push(problem(
                "warning",
                "modules",
                format!("{} is missing: `modprobe` cannot load any module for this kernel", modules.modules_dir),
                "install the modules package of the running kernel (e.g. linux-modules-$(uname -r), kernel-modules), or \
                 reboot into the kernel whose modules are installed"
                    .to_string(),
            ));
        }
        if modules.modules_disabled == Some(true) {
            out.push(problem(
                "warning",
                "modules",
                "module loading is disabled (kernel.modules_disabled = 1): features that are modules cannot be loaded \
                 until reboot"
                    .to_string(),
                "load the needed modules at boot (/etc/modules-load.d) before modules_disabled is set".to_string(),
            ));
        }
    }

    if let Some(why) = &r.xdp_unknown {
        out.push(problem(
            "info",
            "xdp",
            format!("could not list interfaces and their XDP programs: {why}"),
            "run `dptrace check` as root, or look with `ip -d link show`".to_string(),
        ));
    }
    for iface in &r.xdp {
        for a in iface.attached.iter().flatten() {
            out.push(problem(
                "info",
                "xdp",
                format!(
                    "an XDP program{} is attached to {} in {} mode",
                    a.prog_id.map(|id| format!(" (id {id})")).unwrap_or_default(),
                    iface.name,
                    a.mode
                ),
                format!(
                    "if traffic on {} misbehaves, see which program it is (`bpftool prog show{}`, `bpftool net`) and \
                     who attached it; `ip link set dev {} xdp off` detaches it",
                    iface.name,
                    a.prog_id.map(|id| format!(" id {id}")).unwrap_or_default(),
                    iface.name
                ),
            ));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// rtnetlink, just what this module needs

/// A minimal rtnetlink client: create/delete a link with extended-ack error messages, and dump
/// links with their kind and XDP state. Values are the stable uapi ones from `linux/netlink.h`,
/// `linux/rtnetlink.h` and `linux/if_link.h`.
mod nl {
    use super::*;

    const NLMSG_HDRLEN: usize = 16;
    const IFINFOMSG_LEN: usize = 16;
    pub const NLMSG_ERROR: u16 = 2;
    pub const NLMSG_DONE: u16 = 3;
    pub const RTM_NEWLINK: u16 = 16;
    const RTM_DELLINK: u16 = 17;
    const RTM_GETLINK: u16 = 18;
    #[cfg(test)]
    pub const RTM_SETLINK: u16 = 19;
    pub const NLM_F_REQUEST: u16 = 0x1;
    pub const NLM_F_ACK: u16 = 0x4;
    const NLM_F_EXCL: u16 = 0x200;
    const NLM_F_CREATE: u16 = 0x400;
    const NLM_F_DUMP: u16 = 0x300;
    /// On an NLMSG_ERROR: the echoed request is only its header.
    pub const NLM_F_CAPPED: u16 = 0x100;
    /// On an NLMSG_ERROR: extended-ack attributes follow.
    pub const NLM_F_ACK_TLVS: u16 = 0x200;
    pub const NLMSGERR_ATTR_MSG: u16 = 1;
    const SOL_NETLINK: libc::c_int = 270;
    const NETLINK_CAP_ACK: libc::c_int = 10;
    const NETLINK_EXT_ACK: libc::c_int = 11;

    pub const IFLA_IFNAME: u16 = 3;
    const IFLA_LINK: u16 = 5;
    pub const IFLA_LINKINFO: u16 = 18;
    pub const IFLA_XDP: u16 = 43;
    pub const IFLA_INFO_KIND: u16 = 1;
    const IFLA_INFO_DATA: u16 = 2;
    pub const IFLA_XDP_ATTACHED: u16 = 2;
    pub const IFLA_XDP_PROG_ID: u16 = 4;
    pub const IFLA_XDP_DRV_PROG_ID: u16 = 5;
    pub const IFLA_XDP_SKB_PROG_ID: u16 = 6;
    pub const IFLA_XDP_HW_PROG_ID: u16 = 7;
    const VETH_INFO_PEER: u16 = 1;
    const IFLA_VXLAN_ID: u16 = 1;
    const IFLA_VXLAN_PORT: u16 = 15;
    const IFLA_GENEVE_ID: u16 = 1;
    const IFLA_GENEVE_REMOTE: u16 = 2;
    const IFLA_IPTUN_REMOTE: u16 = 3;
    const IFLA_GRE_REMOTE: u16 = 7;
    /// TEST-NET-1 (RFC 5737): a tunnel remote that is never a real host.
    const TEST_REMOTE: [u8; 4] = [192, 0, 2, 1];

    #[derive(Debug)]
    pub enum Error {
        /// The kernel refused: errno and its extended-ack message.
        Kernel { errno: i32, message: Option<String> },
        /// The socket or the reply failed.
        Local(String),
    }

    impl std::fmt::Display for Error {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                Error::Kernel { errno, message } => {
                    write!(f, "{:?}", nix::errno::Errno::from_raw(*errno))?;
                    if let Some(m) = message {
                        write!(f, ": {m}")?;
                    }
                    Ok(())
                }
                Error::Local(e) => f.write_str(e),
            }
        }
    }

    /// A link from a dump.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Link {
        pub index: u32,
        pub name: String,
        pub kind: Option<String>,
        pub xdp: Option<Vec<XdpAttachment>>,
    }

    /// A request under construction: netlink header, `ifinfomsg`, attributes.
    pub struct Message {
        buf: Vec<u8>,
        nests: Vec<usize>,
    }

    impl Message {
        pub fn link(msg_type: u16, flags: u16, index: i32) -> Self {
            let mut buf = vec![0u8; NLMSG_HDRLEN];
            buf[4..6].copy_from_slice(&msg_type.to_ne_bytes());
            buf[6..8].copy_from_slice(&flags.to_ne_bytes());
            let mut m = Self { buf, nests: Vec::new() };
            m.raw(&ifinfomsg(index));
            m
        }

        fn raw(&mut self, data: &[u8]) -> &mut Self {
            self.buf.extend_from_slice(data);
            self.buf.resize(align(self.buf.len()), 0);
            self
        }

        pub fn attr(&mut self, attr_type: u16, data: &[u8]) -> &mut Self {
            let len = (4 + data.len()) as u16;
            self.buf.extend_from_slice(&len.to_ne_bytes());
            self.buf.extend_from_slice(&attr_type.to_ne_bytes());
            self.raw(data)
        }

        pub fn attr_str(&mut self, attr_type: u16, s: &str) -> &mut Self {
            let mut data = s.as_bytes().to_vec();
            data.push(0);
            self.attr(attr_type, &data)
        }

        /// Opens a nested attribute. NLA_F_NESTED is left off, as older kernels and iproute2 do.
        pub fn begin(&mut self, attr_type: u16) -> &mut Self {
            self.nests.push(self.buf.len());
            self.attr(attr_type, &[])
        }

        pub fn end(&mut self) -> &mut Self {
            if let Some(start) = self.nests.pop() {
                let len = (self.buf.len() - start) as u16;
                self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
            }
            self
        }

        pub fn finish(mut self, seq: u32) -> Vec<u8> {
            let len = self.buf.len() as u32;
            self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
            self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
            self.buf
        }
    }

    fn ifinfomsg(index: i32) -> [u8; IFINFOMSG_LEN] {
        let mut m = [0u8; IFINFOMSG_LEN];
        m[4..8].copy_from_slice(&index.to_ne_bytes());
        m
    }

    pub fn align(len: usize) -> usize {
        (len + 3) & !3
    }

    /// The RTM_NEWLINK request for a test link of `kind`, with the least each kind needs.
    pub fn new_link_request(kind: &str, name: &str, lower: Option<u32>) -> Message {
        let mut m = Message::link(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, 0);
        m.attr_str(IFLA_IFNAME, name);
        if let Some(index) = lower {
            m.attr(IFLA_LINK, &index.to_ne_bytes());
        }
        m.begin(IFLA_LINKINFO);
        m.attr(IFLA_INFO_KIND, kind.as_bytes());
        match kind {
            "vxlan" => {
                m.begin(IFLA_INFO_DATA)
                    .attr(IFLA_VXLAN_ID, &42u32.to_ne_bytes())
                    .attr(IFLA_VXLAN_PORT, &4789u16.to_be_bytes())
                    .end();
            }
            "geneve" => {
                m.begin(IFLA_INFO_DATA)
                    .attr(IFLA_GENEVE_ID, &42u32.to_ne_bytes())
                    .attr(IFLA_GENEVE_REMOTE, &TEST_REMOTE)
                    .end();
            }
            "ipip" => {
                m.begin(IFLA_INFO_DATA).attr(IFLA_IPTUN_REMOTE, &TEST_REMOTE).end();
            }
            // Without a remote, a GRE link would clash with the namespace's fallback gre0.
            "gre" => {
                m.begin(IFLA_INFO_DATA).attr(IFLA_GRE_REMOTE, &TEST_REMOTE).end();
            }
            "veth" => {
                // The peer ("x0" gets "x1") is an ifinfomsg followed by its attributes.
                let peer = format!("{}1", name.strip_suffix('0').unwrap_or(name));
                m.begin(IFLA_INFO_DATA)
                    .begin(VETH_INFO_PEER)
                    .raw(&ifinfomsg(0))
                    .attr_str(IFLA_IFNAME, &peer)
                    .end()
                    .end();
            }
            _ => {}
        }
        m.end();
        m
    }

    /// Attributes in `data`, with the NLA_F_NESTED/NET_BYTEORDER flags masked off the type.
    pub fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
        std::iter::from_fn(move || {
            if data.len() < 4 {
                return None;
            }
            let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
            let attr_type = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
            if len < 4 || len > data.len() {
                return None;
            }
            let payload = &data[4..len];
            data = &data[align(len).min(data.len())..];
            Some((attr_type, payload))
        })
    }

    /// Netlink messages in one datagram: (type, flags, seq, payload).
    pub fn messages(mut buf: &[u8]) -> impl Iterator<Item = (u16, u16, u32, &[u8])> {
        std::iter::from_fn(move || {
            if buf.len() < NLMSG_HDRLEN {
                return None;
            }
            let len = u32::from_ne_bytes(buf[0..4].try_into().ok()?) as usize;
            if len < NLMSG_HDRLEN || len > buf.len() {
                return None;
            }
            let msg_type = u16::from_ne_bytes([buf[4], buf[5]]);
            let flags = u16::from_ne_bytes([buf[6], buf[7]]);
            let seq = u32::from_ne_bytes(buf[8..12].try_into().ok()?);
            let payload = &buf[NLMSG_HDRLEN..len];
            buf = &buf[align(len).min(buf.len())..];
            Some((msg_type, flags, seq, payload))
        })
    }

    /// An NLMSG_ERROR payload: `Ok` for an ack, else errno and the extended-ack message.
    pub fn parse_ack(flags: u16, payload: &[u8]) -> Result<(), Error> {
        let errno = payload
            .get(0..4)
            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| Error::Local("truncated netlink error message".into()))?;
        if errno == 0 {
            return Ok(());
        }
        let mut message = None;
        if flags & NLM_F_ACK_TLVS != 0 {
            // After the errno comes the request's header, or (not capped) the whole request.
            let echoed = if flags & NLM_F_CAPPED != 0 {
                NLMSG_HDRLEN
            } else {
                payload.get(4..8).map_or(NLMSG_HDRLEN, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize)
            };
            if let Some(tlvs) = payload.get(4 + align(echoed)..) {
                message = attrs(tlvs).find(|(t, _)| *t == NLMSGERR_ATTR_MSG).map(|(_, m)| c_string(m));
            }
        }
        Err(Error::Kernel { errno: -errno, message })
    }

    fn c_string(data: &[u8]) -> String {
        let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
        String::from_utf8_lossy(&data[..end]).trim().to_string()
    }

    /// One RTM_NEWLINK message of a dump.
    pub fn parse_link(payload: &[u8]) -> Option<Link> {
        let index = u32::from_ne_bytes(payload.get(4..8)?.try_into().ok()?);
        let mut link = Link { index, name: String::new(), kind: None, xdp: None };
        for (attr_type, data) in attrs(payload.get(IFINFOMSG_LEN..)?) {
            match attr_type {
                IFLA_IFNAME => link.name = c_string(data),
                IFLA_LINKINFO => {
                    link.kind = attrs(data).find(|(t, _)| *t == IFLA_INFO_KIND).map(|(_, k)| c_string(k));
                }
                IFLA_XDP => link.xdp = Some(parse_xdp(data)),
                _ => {}
            }
        }
        Some(link)
    }

    /// The nested IFLA_XDP attribute: XDP_ATTACHED_{NONE, DRV, SKB, HW, MULTI} = 0..4.
    pub fn parse_xdp(data: &[u8]) -> Vec<XdpAttachment> {
        let (mut attached, mut prog, mut drv, mut skb, mut hw) = (0u8, None, None, None, None);
        for (attr_type, value) in attrs(data) {
            let id = value.get(0..4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
            match attr_type {
                IFLA_XDP_ATTACHED => attached = value.first().copied().unwrap_or(0),
                IFLA_XDP_PROG_ID => prog = id,
                IFLA_XDP_DRV_PROG_ID => drv = id,
                IFLA_XDP_SKB_PROG_ID => skb = id,
                IFLA_XDP_HW_PROG_ID => hw = id,
                _ => {}
            }
        }
        let one = |mode| vec![XdpAttachment { mode, prog_id: prog }];
        match attached {
            0 => Vec::new(),
            1 => one("native"),
            2 => one("generic"),
            3 => one("offload"),
            _ => [("native", drv), ("generic", skb), ("offload", hw)]
                .into_iter()
                .filter(|(_, id)| id.is_some())
                .map(|(mode, prog_id)| XdpAttachment { mode, prog_id })
                .collect(),
        }
    }

    pub struct Socket {
        fd: OwnedFd,
        seq: u32,
    }

    impl Socket {
        /// A NETLINK_ROUTE socket in the calling thread's network namespace.
        pub fn open() -> io::Result<Self> {
            // SAFETY: socket(2) with constant arguments; the descriptor is owned right away.
            let raw =
                unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `raw` is a fresh descriptor nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // Extended acks carry the kernel's message ("Unknown device type"); kernels before
            // 4.12 lack them, which only loses the message.
            for option in [NETLINK_EXT_ACK, NETLINK_CAP_ACK] {
                set_option(&fd, SOL_NETLINK, option, &1 as *const libc::c_int as *const libc::c_void, 4);
            }
            // Never hang `dptrace check`; a module autoload can take a moment, though.
            let timeout = libc::timeval { tv_sec: 10, tv_usec: 0 };
            set_option(
                &fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &timeout as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            Ok(Self { fd, seq: 0 })
        }

        fn send(&mut self, message: Message) -> Result<u32, Error> {
            self.seq += 1;
            let buf = message.finish(self.seq);
            // SAFETY: `buf` is valid for its length; an unconnected netlink socket sends to the kernel.
            let sent = unsafe { libc::send(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
            if sent < 0 {
                return Err(Error::Local(format!("send: {}", io::Error::last_os_error())));
            }
            Ok(self.seq)
        }

        fn recv(&self, buf: &mut [u8]) -> Result<usize, Error> {
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(Error::Local(format!("recv: {}", io::Error::last_os_error())));
            }
            Ok(n as usize)
        }

        /// Sends a request with NLM_F_ACK and waits for its acknowledgement.
        pub fn transact(&mut self, message: Message) -> Result<(), Error> {
            let seq = self.send(message)?;
            let mut buf = vec![0u8; 65536];
            loop {
                let n = self.recv(&mut buf)?;
                for (msg_type, flags, msg_seq, payload) in messages(&buf[..n]) {
                    if msg_type == NLMSG_ERROR && msg_seq == seq {
                        return parse_ack(flags, payload);
                    }
                }
            }
        }

        pub fn create_link(&mut self, kind: &str, name: &str, lower: Option<u32>) -> Result<(), Error> {
            self.transact(new_link_request(kind, name, lower))
        }

        pub fn delete_link(&mut self, name: &str) -> Result<(), Error> {
            let mut m = Message::link(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, 0);
            m.attr_str(IFLA_IFNAME, name);
            self.transact(m)
        }

        /// Every link of the socket's namespace.
        pub fn dump_links(&mut self) -> Result<Vec<Link>, Error> {
            let seq = self.send(Message::link(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, 0))?;
            let mut buf = vec![0u8; 65536];
            let mut links = Vec::new();
            loop {
                let n = self.recv(&mut buf)?;
                if n == 0 {
                    return Err(Error::Local("the dump ended without NLMSG_DONE".into()));
                }
                for (msg_type, flags, msg_seq, payload) in messages(&buf[..n]) {
                    if msg_seq != seq {
                        continue;
                    }
                    match msg_type {
                        NLMSG_DONE => return Ok(links),
                        NLMSG_ERROR => parse_ack(flags, payload)?,
                        RTM_NEWLINK => links.extend(parse_link(payload)),
                        _ => {}
                    }
                }
            }
        }
    }

    fn set_option(
        fd: &OwnedFd,
        level: libc::c_int,
        name: libc::c_int,
        value: *const libc::c_void,
        len: libc::socklen_t,
    ) {
        // SAFETY: `value` points to `len` readable bytes for the duration of the call. Failure
        // only loses an optional feature.
        unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, value, len) };
    }
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

    /// An NLMSG_ERROR datagram as the kernel sends it with NETLINK_CAP_ACK and NETLINK_EXT_ACK.
    fn error_datagram(errno: i32, message: &str) -> Vec<u8> {
        let mut payload = (-errno).to_ne_bytes().to_vec();
        payload.extend_from_slice(&nl::Message::link(nl::RTM_NEWLINK, 0, 0).finish(7)[..16]);
        let mut text = message.as_bytes().to_vec();
        text.push(0);
        payload.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
        payload.extend_from_slice(&nl::NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend_from_slice(&text);
        payload.resize(nl::align(payload.len()), 0);
        let mut datagram = ((16 + payload.len()) as u32).to_ne_bytes().to_vec();
        datagram.extend_from_slice(&nl::NLMSG_ERROR.to_ne_bytes());
        datagram.extend_from_slice(&(nl::NLM_F_CAPPED | nl::NLM_F_ACK_TLVS).to_ne_bytes());
        datagram.extend_from_slice(&7u32.to_ne_bytes());
        datagram.extend_from_slice(&0u32.to_ne_bytes());
        datagram.extend_from_slice(&payload);
        datagram
    }

    #[test]
    fn parses_extended_acks() {
        let datagram = error_datagram(libc::EOPNOTSUPP, "Unknown device type");
        let (msg_type, flags, seq, payload) = nl::messages(&datagram).next().unwrap();
        assert_eq!((msg_type, seq), (nl::NLMSG_ERROR, 7));
        match nl::parse_ack(flags, payload) {
            Err(nl::Error::Kernel { errno, message }) => {
                assert_eq!(errno, libc::EOPNOTSUPP);
                assert_eq!(message.as_deref(), Some("Unknown device type"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(nl::parse_ack(0, &0i32.to_ne_bytes()).is_ok());
        // Without ext-ack flags, only the errno.
        assert!(matches!(
            nl::parse_ack(0, &(-libc::EEXIST).to_ne_bytes()),
            Err(nl::Error::Kernel { errno: libc::EEXIST, message: None })
        ));
        assert!(matches!(nl::parse_ack(0, &[1, 2]), Err(nl::Error::Local(_))));
    }

    /// An RTM_NEWLINK payload as a dump returns it.
    fn link_payload(index: i32, name: &str, kind: Option<&str>, xdp: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut m = nl::Message::link(nl::RTM_NEWLINK, 0, index);
        m.attr_str(nl::IFLA_IFNAME, name);
        if let Some(kind) = kind {
            m.begin(nl::IFLA_LINKINFO).attr(nl::IFLA_INFO_KIND, kind.as_bytes()).end();
        }
        m.begin(nl::IFLA_XDP);
        for (attr_type, value) in xdp {
            m.attr(*attr_type, value);
        }
        m.end();
        m.finish(1)[16..].to_vec()
    }

    #[test]
    fn parses_links_and_xdp_state() {
        let payload = link_payload(
            4,
            "veth1",
            Some("veth"),
            &[(nl::IFLA_XDP_ATTACHED, vec![1]), (nl::IFLA_XDP_PROG_ID, 77u32.to_ne_bytes().to_vec())],
        );
        let link = nl::parse_link(&payload).unwrap();
        assert_eq!(link.index, 4);
        assert_eq!(link.name, "veth1");
        assert_eq!(link.kind.as_deref(), Some("veth"));
        assert_eq!(link.xdp, Some(vec![XdpAttachment { mode: "native", prog_id: Some(77) }]));

        let none = nl::parse_link(&link_payload(1, "lo", None, &[(nl::IFLA_XDP_ATTACHED, vec![0])])).unwrap();
        assert_eq!((none.kind, none.xdp), (None, Some(vec![])));

        let multi = nl::parse_link(&link_payload(
            2,
            "eth0",
            None,
            &[
                (nl::IFLA_XDP_ATTACHED, vec![4]),
                (nl::IFLA_XDP_DRV_PROG_ID, 5u32.to_ne_bytes().to_vec()),
                (nl::IFLA_XDP_SKB_PROG_ID, 6u32.to_ne_bytes().to_vec()),
            ],
        ))
        .unwrap();
        assert_eq!(
            multi.xdp,
            Some(vec![
                XdpAttachment { mode: "native", prog_id: Some(5) },
                XdpAttachment { mode: "generic", prog_id: Some(6) }
            ])
        );
        // Truncated input yields nothing rather than panicking.
        assert!(nl::parse_link(&payload[..3]).is_none());
        assert_eq!(nl::attrs(&[8, 0, 1, 0, 1]).count(), 0);
    }

    #[test]
    fn judges_native_xdp() {
        let v6 = (6, 18);
        assert_eq!(native_xdp("veth0", Some("veth"), "virtual", v6).0, Support::Yes);
        assert_eq!(native_xdp("veth0", Some("veth"), "virtual", (4, 14)).0, Support::No);
        assert_eq!(native_xdp("cni0", Some("bridge"), "virtual", v6).0, Support::No);
        assert_eq!(native_xdp("lo", None, "virtual", v6).0, Support::No);
        assert_eq!(native_xdp("eth0", None, "virtio_net", v6).0, Support::Yes);
        assert_eq!(native_xdp("eth0", None, "vmxnet3", (5, 4)).0, Support::Unknown);
        let (s, how) = native_xdp("eth0", None, "e1000e", v6);
        assert_eq!(s, Support::Unknown);
        assert!(how.contains("xdpdrv"), "{how}");
    }

    #[test]
    fn parses_iptables_version() {
        assert_eq!(parse_iptables_version("iptables v1.8.9 (nf_tables)\n"), (Some("1.8.9".into()), Some("nft")));
        assert_eq!(parse_iptables_version("iptables v1.8.7 (legacy)\n"), (Some("1.8.7".into()), Some("legacy")));
        assert_eq!(parse_iptables_version("iptables v1.4.21\n"), (Some("1.4.21".into()), Some("legacy")));
        assert_eq!(parse_iptables_version("iptables v1.8.0\n"), (Some("1.8.0".into()), None));
        assert_eq!(parse_iptables_version(""), (None, None));
    }

    #[test]
    fn decides_iptables_backend() {
        assert_eq!(decide_backend(true, Some("nft"), false, true), "nft");
        assert_eq!(decide_backend(true, Some("legacy"), true, false), "legacy");
        assert_eq!(decide_backend(true, Some("nft"), true, true), "both-in-use");
        assert_eq!(decide_backend(false, None, true, true), "both-in-use");
        assert_eq!(decide_backend(false, None, false, false), "not-installed");
        assert_eq!(decide_backend(true, None, false, false), "unknown");
    }

    #[test]
    fn counts_rules() {
        let save =
            "# Generated\n*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p icmp -j DROP\n-A FORWARD -j KUBE-FORWARD\nCOMMIT\n";
        assert_eq!(count_save_rules(save), 2);
        let nft = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "ip", "name": "filter"}},
            {"chain": {"family": "ip", "table": "filter", "name": "INPUT"}},
            {"rule": {"family": "ip", "table": "filter", "chain": "INPUT", "expr": []}}]}"#;
        assert_eq!(count_nft_rules(nft), Ok(1));
        assert_eq!(count_nft_rules(r#"{"nftables": [{"metainfo": {}}]}"#), Ok(0));
        assert!(count_nft_rules("Error: cannot open").is_err());
    }

    #[test]
    fn parses_module_lists_and_mountinfo() {
        let names = module_names(
            "kernel/drivers/net/vxlan/vxlan.ko.zst: kernel/net/ipv4/udp_tunnel.ko.zst\nkernel/net/bridge/br_netfilter.ko:\n\
             kernel/drivers/net/wireguard/wireguard.ko.xz:\nkernel/foo/nf-nat.ko\n",
        );
        for n in ["vxlan", "br_netfilter", "wireguard", "nf_nat"] {
            assert!(names.contains(n), "{n} missing from {names:?}");
        }
        assert!(!names.contains("udp_tunnel"), "dependencies are not entries");
        let index = ModuleIndex {
            dir: PathBuf::from("/nonexistent/modules"),
            sysfs: PathBuf::from("/nonexistent/sys/module"),
            loaded: Some(HashSet::from(["vxlan".to_string(), "geneve".to_string()])),
            builtin: Some(HashSet::new()),
            available: Some(names),
        };
        let before = HashSet::from(["vxlan".to_string()]);
        assert_eq!(index.state("vxlan", Some(&before)), "loaded");
        assert_eq!(index.state("geneve", Some(&before)), "loaded (autoloaded by this probe)");
        assert_eq!(index.state("wireguard", Some(&before)), "available, not loaded");
        assert!(index.state("dptrace_no_such_module", Some(&before)).starts_with("unknown"));

        let mountinfo = "42 23 0:13 / /sys/kernel/tracing rw,relatime - tracefs nodev rw\n\
                         50 23 0:40 / /sys/fs/bpf rw shared:9 - bpf bpf rw,mode=700\n\
                         51 23 0:41 / /mnt/with\\040space rw - bpf bpf rw\n";
        assert_eq!(
            parse_mountinfo(mountinfo),
            [
                ("tracefs".to_string(), "/sys/kernel/tracing".to_string()),
                ("bpf".to_string(), "/sys/fs/bpf".to_string()),
                ("bpf".to_string(), "/mnt/with space".to_string())
            ]
        );
        assert_eq!(kernel_version("6.18.44-fc-v669"), (6, 18));
        assert_eq!(kernel_version("5.4.0-189-generic"), (5, 4));
        assert_eq!(kernel_version("garbage"), (0, 0));
    }

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
        let mut names: Vec<_> = facts.links.unwrap().into_iter().map(|l| l.name).collect();
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
            let mut m = nl::Message::link(nl::RTM_SETLINK, nl::NLM_F_REQUEST | nl::NLM_F_ACK, index as i32);
            const IFLA_XDP_FD: u16 = 1;
            const IFLA_XDP_FLAGS: u16 = 3;
            const XDP_FLAGS_SKB_MODE: u32 = 2;
            m.begin(nl::IFLA_XDP)
                .attr(IFLA_XDP_FD, &prog.as_raw_fd().to_ne_bytes())
                .attr(IFLA_XDP_FLAGS, &XDP_FLAGS_SKB_MODE.to_ne_bytes())
                .end();
            sock.transact(m).map_err(|e| format!("attach: {e}"))?;
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

    /// Loads `r0 = XDP_PASS; exit` as an XDP program.
    fn load_xdp_pass() -> Result<OwnedFd, String> {
        // BPF_MOV64_IMM(BPF_REG_0, 2) and BPF_EXIT_INSN().
        let insns: [u8; 16] = [0xb7, 0, 0, 0, 2, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
        let license = b"GPL\0";
        // union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license; the rest zero.
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&6u32.to_ne_bytes()); // BPF_PROG_TYPE_XDP
        attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
        attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
        attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
        // SAFETY: BPF_PROG_LOAD (5) reads `attr` and the buffers it points to, all alive here.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, 5, attr.as_ptr(), attr.len()) };
        if fd < 0 {
            return Err(format!("BPF_PROG_LOAD: {}", io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// Runs the real probes (root only): veth and bridge exist on any kernel dptrace targets, every
    /// kind gets a definite answer, missing kinds become problems, and nothing is left behind.
    #[test]
    fn real_probes_on_this_host() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping real_probes_on_this_host: needs root (creates links in a throwaway namespace)");
            return;
        }
        let report = probe_features();
        println!("{}", serde_json::to_string_pretty(&report).unwrap());
        let kind = |k: &str| report.link_kinds.iter().find(|l| l.kind == k).unwrap();
        assert_eq!(kind("veth").supported, Support::Yes, "{:?}", kind("veth"));
        assert_eq!(kind("bridge").supported, Support::Yes, "{:?}", kind("bridge"));
        for link in &report.link_kinds {
            assert_ne!(link.supported, Support::Unknown, "{link:?}");
            if link.supported == Support::No {
                assert_eq!(link.errno.as_deref(), Some("EOPNOTSUPP"));
                let feature = format!("link-kind:{}", link.kind);
                assert!(report.problems.iter().any(|p| p.feature == feature), "no problem for {}", link.kind);
            }
        }
        assert!(report.xdp_unknown.is_none(), "{:?}", report.xdp_unknown);
        assert!(report.xdp.iter().any(|i| i.name == "lo" && i.native == Support::No));
        assert!(["legacy", "nft", "both-in-use", "not-installed"].contains(&report.iptables_backend.backend));
        assert!(report.problems.iter().all(|p| ["error", "warning", "info"].contains(&p.severity)));

        // Nothing leaked into the host: no probe links, no named namespaces.
        let links = nl::Socket::open().unwrap().dump_links().unwrap();
        assert!(!links.iter().any(|l| l.name.starts_with("dptprobe") || l.name.starts_with("dptlower")), "{links:?}");
        let leftovers: Vec<_> = fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("dptcheck-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
