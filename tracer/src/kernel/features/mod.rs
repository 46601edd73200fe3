//! What the running kernel and host offer to CNI plugins, for `dptrace check`: which link kinds
//! can be created, br_netfilter and forwarding sysctls, XDP per interface, the iptables backend,
//! tracefs/bpffs mounts and module support. Every answer is probed on this host, never inferred
//! from `uname -r` alone, and each comes with how it was found out; a probe that cannot run gives
//! an "unknown" state with the reason instead of failing the report.
//!
//! This file assembles the report and the problems an operator should act on. The probes live
//! next to it, one file per concern, each saying what it probes and how:
//! - `link_kinds.rs`: which link kinds can be created, by creating test links in a throwaway
//!   network namespace;
//! - `host_netns.rs`: reading per-namespace state in the host's network namespace, PID 1's;
//! - `fresh_netns.rs`: running probes in a fresh, throwaway network namespace, with a timeout;
//! - `sysctl.rs`: the br_netfilter and forwarding sysctls, and whether br_netfilter's are per
//!   namespace (read in a fresh namespace);
//! - `xdp.rs`: interfaces, their XDP programs and native XDP support (attached to test devices in
//!   a fresh namespace, or as the kernel reports it per device);
//! - `iptables.rs`: which iptables backend is installed and which one holds rules;
//! - `mounts.rs`: tracefs and bpffs, in the kernel and mounted;
//! - `modules.rs`: module support and the state of the module behind each feature;
//! - `netlink.rs`: the minimal raw rtnetlink (and generic netlink) client the link and XDP probes
//!   use.

mod fresh_netns;
mod host_netns;
mod iptables;
mod link_kinds;
mod modules;
mod mounts;
mod netlink;
mod sysctl;
mod xdp;

use serde::Serialize;

use self::{
    host_netns::{in_host_netns, probe_host_netns, HostFacts},
    link_kinds::{probe_link_kinds, KINDS},
    modules::{probe_modules, read_proc_modules, settle, ModuleIndex},
    mounts::probe_mounts,
    sysctl::{br_netfilter_scope, read_sysctl},
    xdp::{interface_xdp, kinds_to_probe, probe_native_kinds},
};
pub use self::{
    iptables::IptablesBackend,
    link_kinds::LinkKindSupport,
    modules::ModuleSupport,
    mounts::Mounts,
    sysctl::{BrNetfilter, IpForward, Sysctl},
    xdp::{InterfaceXdp, XdpAttachment, XdpKindProbe},
};

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
    /// Native XDP by kind: a test device of each kind (loopback, veth, bridge, and the kinds of
    /// the host's interfaces) in a throwaway namespace, given a native XDP program.
    pub xdp_native_probes: Vec<XdpKindProbe>,
    /// Why the interfaces' `xdp_features` are unknown, when the kernel could not be asked.
    pub xdp_features_unknown: Option<String>,
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

/// Probes everything. Never panics: a probe that fails leaves an "unknown" state with its reason.
pub fn probe_features() -> FeatureReport {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into());
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

    // In a fresh namespace: whether br_netfilter's sysctls exist there, and which kinds of
    // device take a native XDP program.
    let kinds = kinds_to_probe(host.links.as_deref().unwrap_or_default());
    let fresh = fresh_netns::in_fresh_netns(PROBE_THREADS[1], fresh_netns::TIMEOUT, {
        let kinds = kinds.clone();
        move || (read_sysctl("net.bridge.bridge-nf-call-iptables"), probe_native_kinds(&kinds))
    });
    let (fresh_call_iptables, xdp_native_probes) = fresh.unwrap_or_else(|why| {
        let sysctl = Sysctl {
            name: "net.bridge.bridge-nf-call-iptables",
            present: Support::Unknown,
            value: None,
            error: Some(why.clone()),
        };
        let probes = kinds
            .iter()
            .map(|kind| XdpKindProbe {
                kind: kind.clone(),
                native: Support::Unknown,
                how: why.clone(),
                errno: None,
                kernel_message: None,
            })
            .collect();
        (sysctl, probes)
    });

    let (scope, note) = br_netfilter_scope(&host.call_iptables, &fresh_call_iptables, &host_netns);
    let br_netfilter = BrNetfilter {
        active: host.call_iptables.present,
        module_state: settle(index.state("br_netfilter", loaded_before.as_ref()), host.call_iptables.present),
        call_iptables: host.call_iptables,
        call_ip6tables: host.call_ip6tables,
        note,
        fresh_netns: fresh_call_iptables,
        scope,
    };
    let ip_forward = IpForward { ipv4: host.ip_forward, ipv6: host.ipv6_forwarding };
    let xdp_features_unknown = host.xdp_features.as_ref().err().cloned();
    let (xdp, xdp_unknown) = match host.links {
        Ok(links) => {
            (links.into_iter().map(|link| interface_xdp(link, &xdp_native_probes, &host.xdp_features)).collect(), None)
        }
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
        xdp_native_probes,
        xdp_features_unknown,
        iptables_backend: host.iptables,
        mounts,
        modules,
        problems: Vec::new(),
    };
    report.problems = problems(&report);
    report
}

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

/// The threads `check` makes its throwaway probes from (link kinds; native XDP and the
/// br_netfilter sysctls in a fresh namespace). Their requests fail on purpose: a session
/// running at the same time must not report them as the node's failures.
pub const PROBE_THREADS: [&str; 2] = ["dptrace-linkprobe", "dptrace-freshns"];

/// Whether a task's `comm` (cut to 15 bytes by the kernel) is one of [`PROBE_THREADS`].
pub fn is_probe_thread(comm: &str) -> bool {
    PROBE_THREADS.iter().any(|t| comm == &t[..t.len().min(15)])
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::{netlink as nl, *};

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
        // Native XDP comes from evidence: lo from the probe of a throwaway loopback, refused with
        // EOPNOTSUPP; veth takes a native program, a bridge does not; every interface says where
        // its verdict comes from.
        let lo = report.xdp.iter().find(|i| i.name == "lo").expect("lo is listed");
        assert_eq!((lo.native, lo.native_source), (Support::No, "probed"), "{lo:?}");
        let probe = |k: &str| report.xdp_native_probes.iter().find(|p| p.kind == k).unwrap();
        assert_eq!(probe("veth").native, Support::Yes, "{:?}", probe("veth"));
        assert_eq!(probe("bridge").errno.as_deref(), Some("EOPNOTSUPP"), "{:?}", probe("bridge"));
        for iface in &report.xdp {
            assert!(["attached", "probed", "xdp-features", "none"].contains(&iface.native_source), "{iface:?}");
            assert_eq!(iface.native == Support::Unknown, iface.native_source == "none", "{iface:?}");
        }
        // br_netfilter's scope comes from a fresh namespace, not the release.
        let br = &report.br_netfilter;
        assert_ne!(br.fresh_netns.present, Support::Unknown, "{br:?}");
        if br.fresh_netns.present == Support::Yes {
            assert_eq!(br.scope, "per-namespace", "{br:?}");
        }
        assert!(["legacy", "nft", "both-in-use", "not-installed"].contains(&report.iptables_backend.backend));
        assert!(report.problems.iter().all(|p| ["error", "warning", "info"].contains(&p.severity)));

        // Nothing leaked into the host: no probe links, no named namespaces.
        let links = nl::Socket::open().unwrap().dump_links().unwrap();
        assert!(
            !links.iter().any(|l| ["dptprobe", "dptlower", "dptxdp"].iter().any(|p| l.name.starts_with(p))),
            "{links:?}"
        );
        let leftovers: Vec<_> = fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("dptcheck-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
