//! Kubernetes context: which pod a network namespace belongs to, so that events and findings
//! name pods (`kube-system/coredns-5d78c9869d-8xq2p`) and not only namespace inodes, and so
//! that `trace --pod` can keep one pod's traffic.
//!
//! A namespace's pod is found from its processes (`/proc/*/ns/net`) and their cgroups
//! (`/proc/PID/cgroup`, read by `kernel::cgroups::pod_ref`: kubelet's names under both cgroup
//! drivers, with containerd, CRI-O and Docker container ids), and named by the container
//! runtime through crictl (`cri`) when crictl is there; without it pods are shown by UID.
//! The node's own namespace never gets a pod (host-network pods share it).
//!
//! Cost: answers are cached per namespace. A namespace not in the cache triggers a rescan of
//! /proc at most every [`RESCAN_INTERVAL`], and one that a rescan did not find is not looked
//! for again before [`MISS_TTL`]: the event path never scans per event, and never runs crictl.

pub mod cri;

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::{
    decode::{links::Actor, Event},
    kernel::{
        cgroups::{pod_ref, PodRef},
        netns::{inode_of, path_of_name, NetnsNames},
    },
};

/// Rescans of /proc on a cache miss happen at most this often.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(1);
/// A namespace a rescan did not find is looked for again only after this long.
pub const MISS_TTL: Duration = Duration::from_secs(5);
/// Processes of one namespace whose cgroups are read per scan.
const PIDS_PER_NETNS: usize = 16;
/// Entries kept in the miss and history caches; they start over beyond.
const MAX_CACHED: usize = 4096;

/// The pod a network namespace belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pod {
    /// `metadata.uid`, as kubelet names the pod's cgroup.
    pub uid: String,
    /// Namespace and name, when the container runtime (crictl) knows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl std::fmt::Display for Pod {
    /// `NAMESPACE/NAME`, or `uid:UID` without names (both are what `--pod` accepts).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.namespace, &self.name) {
            (Some(ns), Some(name)) => write!(f, "{ns}/{name}"),
            _ => write!(f, "uid:{}", self.uid),
        }
    }
}

/// What `trace --pod` names: `NAMESPACE/NAME` (needs crictl) or `uid:POD_UID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodSpec {
    Name { namespace: String, name: String },
    Uid(String),
}

impl std::fmt::Display for PodSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PodSpec::Name { namespace, name } => write!(f, "{namespace}/{name}"),
            PodSpec::Uid(uid) => write!(f, "uid:{uid}"),
        }
    }
}

/// Parses `--pod`.
pub fn parse_pod_spec(text: &str) -> Result<PodSpec, String> {
    if let Some(uid) = text.strip_prefix("uid:") {
        let uid = uid.to_ascii_lowercase().replace('_', "-");
        if uid.len() < 32 || !uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Err(format!("`{text}`: a pod UID is 32 hex digits with dashes, e.g. uid:0f3a1b2c-4d5e-6f70-8192-a3b4c5d6e7f8 (kubectl get pod -n NAMESPACE NAME -o jsonpath='{{.metadata.uid}}')"));
        }
        return Ok(PodSpec::Uid(uid));
    }
    let usage = "expected NAMESPACE/NAME (e.g. kube-system/coredns-5d78c9869d-8xq2p) or uid:POD_UID";
    let (namespace, name) = text.split_once('/').ok_or_else(|| format!("`{text}`: {usage}"))?;
    let valid = |s: &str| !s.is_empty() && s.len() <= 253 && !s.contains(|c: char| c == '/' || c.is_whitespace());
    if !valid(namespace) || !valid(name) {
        return Err(format!("`{text}`: {usage}"));
    }
    Ok(PodSpec::Name { namespace: namespace.to_string(), name: name.to_string() })
}

/// The cgroup path of a `/proc/PID/cgroup` file that names a pod, with what it names: the
/// cgroup v2 line (`0::PATH`) when it names one, else the first v1 hierarchy's that does
/// (kubelet on v1 or hybrid hosts). Without a pod, the v2 path (or the first) and no pod.
pub fn pod_cgroup(file: &str) -> Option<(String, PodRef)> {
    let mut lines: Vec<(bool, &str)> = file
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (id, _controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some((id == "0", path))
        })
        .collect();
    // The v2 line first.
    lines.sort_by_key(|(v2, _)| !v2);
    lines
        .iter()
        .map(|(_, path)| (path.to_string(), pod_ref(path)))
        .find(|(_, pod)| pod.pod_uid.is_some())
        .or_else(|| lines.first().map(|(_, path)| (path.to_string(), pod_ref(path))))
}

/// The kubelet cgroup driver a cgroup path was made by: `systemd` (`kubepods.slice`, …) or
/// `cgroupfs` (`/kubepods/…`).
pub fn cgroup_driver_of(path: &str) -> Option<&'static str> {
    path.split('/').find_map(|segment| {
        if segment.ends_with(".slice") && segment.contains("kubepods") {
            Some("systemd")
        } else if segment == "kubepods" {
            Some("cgroupfs")
        } else {
            None
        }
    })
}

/// Network namespace inode → the processes in it (at most [`PIDS_PER_NETNS`] each), from
/// `PROC/*/ns/net`.
pub fn pids_by_netns(proc_root: &Path) -> HashMap<u32, Vec<u32>> {
    let mut found: HashMap<u32, Vec<u32>> = HashMap::new();
    let Ok(entries) = std::fs::read_dir(proc_root) else { return found };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        // Processes exit while we look: those are skipped.
        let Some(inode) = inode_of(&entry.path().join("ns/net")) else { continue };
        let pids = found.entry(inode).or_default();
        if pids.len() < PIDS_PER_NETNS {
            pids.push(pid);
        }
    }
    found
}

/// One look at /proc: per network namespace, the pod UIDs its processes' cgroups name.
#[derive(Debug, Default)]
struct Scan {
    uids: HashMap<u32, BTreeSet<String>>,
    /// A process in each namespace, to enter it.
    pid: HashMap<u32, u32>,
    /// Cgroup drivers seen in pod cgroup paths.
    drivers: BTreeSet<&'static str>,
}

fn scan(proc_root: &Path) -> Scan {
    let mut result = Scan::default();
    for (inode, pids) in pids_by_netns(proc_root) {
        let mut uids = BTreeSet::new();
        for pid in &pids {
            let Ok(file) = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")) else { continue };
            if let Some((path, PodRef { pod_uid: Some(uid), .. })) = pod_cgroup(&file) {
                result.drivers.extend(cgroup_driver_of(&path));
                uids.insert(uid);
            }
        }
        result.pid.insert(inode, pids[0]);
        result.uids.insert(inode, uids);
    }
    result
}

fn host_netns() -> Option<u32> {
    inode_of(Path::new("/proc/1/ns/net"))
}

/// Network namespace → pod, cached (see the module's notes on cost).
#[derive(Debug)]
pub struct PodResolver {
    names: cri::Names,
    host: Option<u32>,
    /// From the last scan: namespace → the UID of its pod (None: its processes are in no
    /// pod's cgroup, or in several pods').
    by_netns: foldhash::HashMap<u32, Option<String>>,
    /// Pod namespaces seen during the session, still named after they are gone.
    history: foldhash::HashMap<u32, String>,
    misses: foldhash::HashMap<u32, Instant>,
    scanned_at: Option<Instant>,
}

impl Default for PodResolver {
    /// Pods by UID only: no crictl.
    fn default() -> Self {
        Self::with_names(cri::Names::default())
    }
}

impl PodResolver {
    /// Uses crictl from PATH, if any, and starts listing pod names in the background.
    pub fn start() -> Self {
        Self::with_names(cri::Names::start())
    }

    fn with_names(names: cri::Names) -> Self {
        Self {
            names,
            host: host_netns(),
            by_netns: Default::default(),
            history: Default::default(),
            misses: Default::default(),
            scanned_at: None,
        }
    }

    /// Waits (bounded by crictl's timeout) until the first listing of pod names is done.
    pub fn wait_ready(&self) {
        self.names.wait_first_listing();
    }

    /// The UID of the pod of namespace `inode`.
    pub fn netns_uid(&mut self, inode: u32) -> Option<String> {
        if inode == 0 || Some(inode) == self.host {
            return None;
        }
        if let Some(known) = self.by_netns.get(&inode) {
            return known.clone();
        }
        let recently_missed = self.misses.get(&inode).is_some_and(|t| t.elapsed() < MISS_TTL);
        // A miss is remembered only once a scan looked for it: a namespace first seen just
        // after another one's scan is looked for as soon as the rate limit allows.
        if !recently_missed && self.scanned_at.is_none_or(|t| t.elapsed() >= RESCAN_INTERVAL) {
            self.rescan();
            if let Some(known) = self.by_netns.get(&inode) {
                return known.clone();
            }
            if self.misses.len() >= MAX_CACHED {
                self.misses.clear();
            }
            self.misses.insert(inode, Instant::now());
        }
        // Gone (or not entered by any process now): what it was earlier in the session.
        self.history.get(&inode).cloned()
    }

    fn rescan(&mut self) {
        let found = scan(Path::new("/proc"));
        self.by_netns = found
            .uids
            .into_iter()
            .filter(|(inode, _)| Some(*inode) != self.host)
            .map(|(inode, uids)| (inode, (uids.len() == 1).then(|| uids.into_iter().next()).flatten()))
            .collect();
        if self.history.len() >= MAX_CACHED {
            self.history.clear();
        }
        for (inode, uid) in &self.by_netns {
            if let Some(uid) = uid {
                self.history.insert(*inode, uid.clone());
            }
        }
        self.scanned_at = Some(Instant::now());
    }

    /// The pod of namespace `inode`, named when the runtime knows it.
    pub fn pod_of_netns(&mut self, inode: u32) -> Option<Pod> {
        let uid = self.netns_uid(inode)?;
        Some(self.pod_of_uid(&uid))
    }

    /// Pod `uid`, named when the runtime knows it.
    pub fn pod_of_uid(&self, uid: &str) -> Pod {
        let (namespace, name) = self.names.name(uid).unzip();
        Pod { uid: uid.to_string(), namespace, name }
    }

    fn pod_of(&mut self, inode: Option<u32>) -> Option<Pod> {
        self.pod_of_netns(inode?)
    }

    fn actor(&mut self, actor: &mut Actor) {
        actor.pod = self.pod_of(actor.netns);
    }

    /// Fills the `pod` fields of an event from its network namespace(s).
    pub fn annotate(&mut self, event: &mut Event) {
        match event {
            Event::Drop(d) => d.pod = self.pod_of(d.netns),
            Event::LinkRequest(r) => self.actor(&mut r.actor),
            Event::NetlinkAck(a) => self.actor(&mut a.actor),
            Event::KernelMessage(m) => self.actor(&mut m.actor),
            Event::Module(m) => self.actor(&mut m.actor),
            Event::BpfCommand(c) => self.actor(&mut c.actor),
            Event::LinkState(l) => l.pod = self.pod_of_netns(l.netns),
            Event::TcpReset(r) => r.pod = self.pod_of(r.netns),
            Event::IcmpError(i) => i.pod = self.pod_of(i.netns),
            Event::TcpConnect(c) => c.pod = self.pod_of(c.netns),
            Event::RuleCounter(c) => c.pod = self.pod_of_netns(c.netns),
            Event::Bridge(b) => b.pod = self.pod_of_netns(b.netns),
            Event::NetfilterVerdict(v) => v.pod = self.pod_of(v.netns),
            Event::XdpException(x) => x.pod = self.pod_of(x.netns),
            Event::PacketHop(h) => h.pod = self.pod_of(h.netns),
            Event::PacketPath(p) => {
                for step in &mut p.steps {
                    if step.hop.pod.is_none() {
                        step.hop.pod = self.pod_of(step.hop.netns);
                    }
                }
            }
        }
    }
}

/// The (namespace, pod) pairs an event carries.
fn event_pods(event: &Event) -> Vec<(u32, &Pod)> {
    fn pair(netns: Option<u32>, pod: &Option<Pod>) -> Option<(u32, &Pod)> {
        netns.zip(pod.as_ref())
    }
    fn actor(a: &Actor) -> Option<(u32, &Pod)> {
        pair(a.netns, &a.pod)
    }
    let one = match event {
        Event::Drop(d) => pair(d.netns, &d.pod),
        Event::LinkRequest(r) => actor(&r.actor),
        Event::NetlinkAck(a) => actor(&a.actor),
        Event::KernelMessage(m) => actor(&m.actor),
        Event::Module(m) => actor(&m.actor),
        Event::BpfCommand(c) => actor(&c.actor),
        Event::LinkState(l) => pair(Some(l.netns), &l.pod),
        Event::TcpReset(r) => pair(r.netns, &r.pod),
        Event::IcmpError(i) => pair(i.netns, &i.pod),
        Event::TcpConnect(c) => pair(c.netns, &c.pod),
        Event::RuleCounter(c) => pair(Some(c.netns), &c.pod),
        Event::Bridge(b) => pair(Some(b.netns), &b.pod),
        Event::NetfilterVerdict(v) => pair(v.netns, &v.pod),
        Event::XdpException(x) => pair(x.netns, &x.pod),
        Event::PacketHop(h) => pair(h.netns, &h.pod),
        Event::PacketPath(p) => return p.steps.iter().filter_map(|s| pair(s.hop.netns, &s.hop.pod)).collect(),
    };
    one.into_iter().collect()
}

/// The pod of namespace `netns` as the evidence names it (for a finding's place).
pub fn pod_at(netns: Option<u32>, evidence: &[Event]) -> Option<Pod> {
    let netns = netns?;
    evidence.iter().find_map(|e| event_pods(e).into_iter().find(|(n, _)| *n == netns).map(|(_, p)| p.clone()))
}

/// A pod's network namespace, found for `--pod`.
#[derive(Debug, Clone)]
pub struct PodNetns {
    pub pod: Pod,
    pub inode: u32,
    /// A path that enters the namespace (for the link monitor and the netfilter family).
    pub path: PathBuf,
    /// The pod uses the node's network namespace.
    pub host_network: bool,
}

/// Finds the network namespace of the pod `spec` names: through the runtime (crictl pods,
/// then inspectp for the sandbox's namespace) and, for a UID or when the runtime does not
/// tell, through the processes in the pod's cgroups.
pub fn resolve(spec: &PodSpec) -> anyhow::Result<PodNetns> {
    let crictl = cri::find_crictl();
    match spec {
        PodSpec::Name { namespace, name } => {
            let Some(crictl) = crictl else {
                bail!("--pod {spec}: crictl is not in PATH, so pod names cannot be read on this node; pass --pod uid:POD_UID (kubectl get pod -n {namespace} {name} -o jsonpath='{{.metadata.uid}}') or --netns")
            };
            let sandboxes =
                cri::list(&crictl).map_err(|e| anyhow!("--pod {spec}: cannot list the pods of this node: {e}"))?;
            let Some(sandbox) = cri::best(sandboxes.iter().filter(|s| &s.namespace == namespace && &s.name == name))
            else {
                bail!("{}", unknown_pod(namespace, name, &sandboxes))
            };
            from_sandbox(&crictl, sandbox)
        }
        PodSpec::Uid(uid) => {
            let listed = crictl.as_ref().map(|c| cri::list(c));
            if let (Some(crictl), Some(Ok(sandboxes))) = (&crictl, &listed) {
                if let Some(sandbox) = cri::best(sandboxes.iter().filter(|s| &s.uid == uid)) {
                    return from_sandbox(crictl, sandbox);
                }
            }
            let pod = Pod { uid: uid.clone(), namespace: None, name: None };
            from_cgroups(pod).ok_or_else(|| {
                let runtime = match &listed {
                    None => "crictl is not in PATH".to_string(),
                    Some(Ok(s)) => format!("crictl pods lists {} pods, none with this UID", s.len()),
                    Some(Err(e)) => format!("crictl failed: {e}"),
                };
                anyhow!("no pod with UID {uid} on this node: no process runs in its cgroups (…pod{uid}… or …pod{}…) and {runtime}", uid.replace('-', "_"))
            })
        }
    }
}

/// `no pod kube-system/foo on this node (crictl pods found 12 pods; names are NAMESPACE/NAME)`,
/// with the namespaces that do have a pod of that name.
fn unknown_pod(namespace: &str, name: &str, sandboxes: &[cri::Sandbox]) -> String {
    let mut elsewhere: Vec<String> =
        sandboxes.iter().filter(|s| s.name == name).map(|s| format!("{}/{}", s.namespace, s.name)).collect();
    elsewhere.sort();
    elsewhere.dedup();
    let hint = if elsewhere.is_empty() { String::new() } else { format!("; did you mean {}?", elsewhere.join(" or ")) };
    let pods = sandboxes.iter().map(|s| &s.uid).collect::<BTreeSet<_>>().len();
    format!("no pod {namespace}/{name} on this node (crictl pods found {pods} pods; names are NAMESPACE/NAME{hint})")
}

fn from_sandbox(crictl: &Path, sandbox: &cri::Sandbox) -> anyhow::Result<PodNetns> {
    let pod =
        Pod { uid: sandbox.uid.clone(), namespace: Some(sandbox.namespace.clone()), name: Some(sandbox.name.clone()) };
    let network = cri::inspect(crictl, &sandbox.id);
    match &network {
        Ok(net) if net.host_network => {
            let path = PathBuf::from("/proc/1/ns/net");
            let inode = inode_of(&path).ok_or_else(|| anyhow!("cannot read {}", path.display()))?;
            return Ok(PodNetns { pod, inode, path, host_network: true });
        }
        Ok(net) => {
            let paths =
                net.netns_path.iter().cloned().chain(net.pid.map(|p| PathBuf::from(format!("/proc/{p}/ns/net"))));
            for path in paths {
                if let Some(inode) = inode_of(&path) {
                    return Ok(PodNetns { pod, inode, path, host_network: false });
                }
            }
        }
        Err(e) => log::warn!("crictl inspectp {}: {e}; looking for the pod's processes instead", sandbox.id),
    }
    from_cgroups(pod.clone()).ok_or_else(|| {
        let state = if sandbox.ready { "ready" } else { "not ready" };
        let why = match network {
            Ok(_) => "crictl inspectp names no namespace that exists".to_string(),
            Err(e) => e,
        };
        anyhow!("pod {pod} has no network namespace on this node (sandbox {} is {state}; {why}; no process runs in its cgroups)", short(&sandbox.id))
    })
}

fn short(id: &str) -> &str {
    id.get(..13).unwrap_or(id)
}

/// The namespace whose processes are in pod `pod.uid`'s cgroups.
fn from_cgroups(pod: Pod) -> Option<PodNetns> {
    let host = host_netns();
    let found = scan(Path::new("/proc"));
    let mut inodes: Vec<u32> =
        found.uids.iter().filter(|(_, uids)| uids.contains(&pod.uid)).map(|(inode, _)| *inode).collect();
    // Several: the pod's own namespace, not the host's (where a sidecar may have wandered).
    inodes.sort_by_key(|inode| Some(*inode) == host);
    let inode = *inodes.first()?;
    let host_network = Some(inode) == host;
    let path = match NetnsNames::new().name(inode) {
        Some(name) => path_of_name(name),
        None => PathBuf::from(format!("/proc/{}/ns/net", found.pid[&inode])),
    };
    Some(PodNetns { pod, inode, path, host_network })
}

/// What `dptrace check` says about Kubernetes on this node.
#[derive(Debug, Clone, Serialize)]
pub struct KubernetesStatus {
    /// Where crictl is; None: not in PATH (pods are shown by UID).
    pub crictl: Option<String>,
    /// Pods crictl listed (by UID: a pod's older sandboxes are not counted again).
    pub crictl_pods: Option<usize>,
    pub crictl_error: Option<String>,
    /// `systemd` and/or `cgroupfs`, from the pod cgroups seen.
    pub cgroup_drivers: Vec<&'static str>,
    /// Network namespaces (not the node's) whose processes are in a pod's cgroups.
    pub pod_netns: usize,
}

impl KubernetesStatus {
    pub fn read() -> Self {
        let crictl = cri::find_crictl();
        let listed = crictl.as_deref().map(cri::list);
        let found = scan(Path::new("/proc"));
        let mut drivers = found.drivers.clone();
        if drivers.is_empty() {
            drivers.extend(cgroup_dirs_driver());
        }
        let host = host_netns();
        Self {
            crictl: crictl.map(|p| p.display().to_string()),
            crictl_pods: listed
                .as_ref()
                .and_then(|l| l.as_ref().ok())
                .map(|s| s.iter().map(|s| &s.uid).collect::<BTreeSet<_>>().len()),
            crictl_error: listed.and_then(Result::err),
            cgroup_drivers: drivers.into_iter().collect(),
            pod_netns: found.uids.iter().filter(|(inode, uids)| Some(**inode) != host && !uids.is_empty()).count(),
        }
    }

    /// One line for `dptrace check`.
    pub fn line(&self) -> String {
        let runtime = match (&self.crictl, self.crictl_pods, &self.crictl_error) {
            (Some(path), Some(n), _) => format!("crictl {path} ({n} pods): pods are named NAMESPACE/NAME"),
            (Some(path), None, Some(e)) => format!("crictl {path} failed ({e}): pods are shown by UID"),
            (Some(path), None, None) => format!("crictl {path}"),
            (None, ..) => "crictl not found: pods are shown by UID from cgroups, --pod needs uid:UID".to_string(),
        };
        let drivers = if self.cgroup_drivers.is_empty() {
            "no kubepods cgroups (not a Kubernetes node?)".to_string()
        } else {
            format!("cgroup driver {}", self.cgroup_drivers.join("+"))
        };
        format!("{runtime}; {drivers}; {} pod network namespaces", self.pod_netns)
    }
}

/// The driver kubelet's top cgroup says, for nodes without running pods: `kubepods.slice`
/// (systemd) or `kubepods` (cgroupfs) under a cgroup mount.
fn cgroup_dirs_driver() -> Option<&'static str> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if !right.starts_with("cgroup") {
            return None;
        }
        let mount = Path::new(left.split_whitespace().nth(4)?);
        if mount.join("kubepods.slice").is_dir() {
            Some("systemd")
        } else if mount.join("kubepods").is_dir() {
            Some("cgroupfs")
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f3a1b2c-4d5e-6f70-8192-a3b4c5d6e7f8";
    const UID_SYSTEMD: &str = "0f3a1b2c_4d5e_6f70_8192_a3b4c5d6e7f8";
    const ID: &str = "5d2c9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d";

    fn v2(path: &str) -> String {
        format!("0::{path}\n")
    }

    #[test]
    fn pods_and_containers_from_cgroup_files_of_every_driver_and_runtime() {
        let cases = [
            // systemd driver: the UID's dashes become underscores in slice names.
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope"),
                "systemd",
            ),
            (format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_SYSTEMD}.slice/crio-{ID}.scope"), "systemd"),
            (format!("/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/docker-{ID}.scope"), "systemd"),
            // cgroupfs driver: dashes, and bare ids (containerd, docker) or crio- ones.
            (format!("/kubepods/besteffort/pod{UID}/{ID}"), "cgroupfs"),
            (format!("/kubepods/burstable/pod{UID}/crio-{ID}"), "cgroupfs"),
            (format!("/kubepods/pod{UID}/{ID}"), "cgroupfs"),
            // kind: a node in a Docker container, kubelet under --cgroup-root=/kubelet.
            (
                format!("/system.slice/docker-{}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope", "ab".repeat(32)),
                "systemd",
            ),
        ];
        for (path, driver) in &cases {
            let (seen, pod) = pod_cgroup(&v2(path)).unwrap();
            assert_eq!(&seen, path);
            assert_eq!(pod.pod_uid.as_deref(), Some(UID), "{path}");
            assert_eq!(pod.container.as_deref(), Some(&ID[..12]), "{path}");
            assert_eq!(cgroup_driver_of(path), Some(*driver), "{path}");
        }
        // CRI-O's monitor runs in the pod's slice, with no container id of its own.
        let conmon = format!("/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/crio-conmon-{ID}.scope");
        let (_, pod) = pod_cgroup(&v2(&conmon)).unwrap();
        assert_eq!((pod.pod_uid.as_deref(), pod.container), (Some(UID), None));
        // Not pods: system services, sessions, a plain Docker container.
        for path in ["/system.slice/containerd.service", "/user.slice/user-0.slice/session-3.scope", "/"] {
            let (_, pod) = pod_cgroup(&v2(path)).unwrap();
            assert_eq!(pod, PodRef::default(), "{path}");
            assert_eq!(cgroup_driver_of(path), None);
        }
        let docker = format!("/system.slice/docker-{ID}.scope");
        assert_eq!(pod_cgroup(&v2(&docker)).unwrap().1, PodRef { pod_uid: None, container: Some(ID[..12].into()) });
    }

    #[test]
    fn pods_on_cgroup_v1_and_hybrid_hosts_come_from_any_hierarchy() {
        // Hybrid: systemd's v2 tree is empty ("0::/"), kubelet uses the v1 controllers.
        let hybrid = format!(
            "12:pids:/kubepods/besteffort/pod{UID}/{ID}\n11:memory:/kubepods/besteffort/pod{UID}/{ID}\n1:name=systemd:/kubepods/besteffort/pod{UID}/{ID}\n0::/\n"
        );
        let (path, pod) = pod_cgroup(&hybrid).unwrap();
        assert_eq!(path, format!("/kubepods/besteffort/pod{UID}/{ID}"));
        assert_eq!(pod.pod_uid.as_deref(), Some(UID));
        // v2 only, and v2 first even when listed last.
        let both =
            format!("1:name=systemd:/system.slice/x.service\n0::/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice\n");
        assert_eq!(pod_cgroup(&both).unwrap().1.pod_uid.as_deref(), Some(UID));
        // No pod anywhere: the v2 path is reported.
        let none = "4:memory:/system.slice/sshd.service\n0::/system.slice/sshd.service\n";
        assert_eq!(pod_cgroup(none).unwrap(), ("/system.slice/sshd.service".to_string(), PodRef::default()));
        assert_eq!(pod_cgroup(""), None);
    }

    #[test]
    fn pod_specs_parse_names_and_uids() {
        assert_eq!(
            parse_pod_spec("kube-system/coredns-5d78c9869d-8xq2p"),
            Ok(PodSpec::Name { namespace: "kube-system".into(), name: "coredns-5d78c9869d-8xq2p".into() })
        );
        assert_eq!(parse_pod_spec(&format!("uid:{UID}")), Ok(PodSpec::Uid(UID.into())));
        // kubelet's systemd spelling is accepted too.
        assert_eq!(parse_pod_spec(&format!("uid:{}", UID_SYSTEMD.to_uppercase())), Ok(PodSpec::Uid(UID.into())));
        for bad in [
            "coredns",
            "/coredns",
            "kube-system/",
            "a/b/c",
            "a b/c",
            "uid:123",
            "uid:zz3a1b2c-4d5e-6f70-8192-a3b4c5d6e7f8",
        ] {
            assert!(parse_pod_spec(bad).is_err(), "{bad}");
        }
        let named = Pod { uid: UID.into(), namespace: Some("default".into()), name: Some("web-0".into()) };
        assert_eq!(named.to_string(), "default/web-0");
        assert_eq!(Pod { uid: UID.into(), namespace: None, name: None }.to_string(), format!("uid:{UID}"));
        // What is shown is what --pod takes.
        assert_eq!(parse_pod_spec(&named.to_string()).unwrap().to_string(), "default/web-0");
    }

    #[test]
    fn crictl_pods_json_of_new_and_old_crictl() {
        let pods = cri::parse_pods(include_str!("../../tests/fixtures/crictl-pods.json")).unwrap();
        assert_eq!(pods.len(), 4);
        let coredns = &pods[0];
        assert_eq!(coredns.namespace, "kube-system");
        assert_eq!(coredns.name, "coredns-5d78c9869d-8xq2p");
        assert_eq!(coredns.uid, "b0e7a4f2-3c51-4d8e-9a6b-2f1c0d9e8a7b");
        assert!(coredns.id.starts_with("4b5d2e1f"));
        assert!(coredns.ready);
        assert_eq!(coredns.created_at, 1_732_550_401_123_456_789);
        // Two sandboxes of one pod: the ready one is chosen.
        let web: Vec<_> = pods.iter().filter(|p| p.name == "web-0").collect();
        assert_eq!(web.len(), 2);
        let best = cri::best(web.into_iter()).unwrap();
        assert!(best.ready && best.attempt == 1, "{best:?}");
        // crictl before protojson: a bare array, numeric state (NOTREADY = 1), created_at.
        let old = cri::parse_pods(include_str!("../../tests/fixtures/crictl-pods-old.json")).unwrap();
        assert_eq!(old.len(), 2);
        assert_eq!((old[0].namespace.as_str(), old[0].name.as_str(), old[0].ready), ("default", "nginx", true));
        assert!(!old[1].ready);
        assert_eq!(old[1].created_at, 1_560_000_000_000_000_000);
        // Nothing running; garbage.
        assert_eq!(cri::parse_pods("{\"items\": []}").unwrap(), vec![]);
        assert_eq!(cri::parse_pods("{}").unwrap(), vec![]);
        assert!(cri::parse_pods("level=fatal msg=\"connect: connection refused\"").is_err());
        assert!(cri::parse_pods("\"items\"").is_err());
    }

    #[test]
    fn crictl_inspectp_json_gives_the_sandbox_namespace() {
        let containerd =
            cri::parse_inspectp(include_str!("../../tests/fixtures/crictl-inspectp-containerd.json")).unwrap();
        assert_eq!(
            containerd,
            cri::SandboxNetwork {
                netns_path: Some("/var/run/netns/cni-7c1e9a52-1f3b-4c2d-8e5f-6a7b8c9d0e1f".into()),
                pid: Some(2817),
                host_network: false,
            }
        );
        let crio = cri::parse_inspectp(include_str!("../../tests/fixtures/crictl-inspectp-crio.json")).unwrap();
        assert_eq!(crio.netns_path.as_deref(), Some(Path::new("/var/run/netns/3f1e2d4c-5b6a-4798-8a9b-0c1d2e3f4a5b")));
        assert_eq!((crio.pid, crio.host_network), (None, false));
        let host = cri::parse_inspectp(include_str!("../../tests/fixtures/crictl-inspectp-hostnetwork.json")).unwrap();
        assert!(host.host_network);
        // Several ids: an array; the first is used.
        let array = format!("[{}]", include_str!("../../tests/fixtures/crictl-inspectp-crio.json"));
        assert_eq!(cri::parse_inspectp(&array).unwrap(), crio);
        assert!(cri::parse_inspectp("[]").is_err());
    }

    #[test]
    fn unknown_pods_are_reported_with_the_pod_count_and_near_misses() {
        let pods = cri::parse_pods(include_str!("../../tests/fixtures/crictl-pods.json")).unwrap();
        assert_eq!(
            unknown_pod("kube-system", "foo", &pods),
            "no pod kube-system/foo on this node (crictl pods found 3 pods; names are NAMESPACE/NAME)"
        );
        assert_eq!(
            unknown_pod("kube-system", "web-0", &pods),
            "no pod kube-system/web-0 on this node (crictl pods found 3 pods; names are NAMESPACE/NAME; did you mean shop/web-0?)"
        );
    }

    #[test]
    fn netns_to_pids_finds_this_process_and_a_child_in_its_own_namespace() {
        let own = inode_of(Path::new("/proc/self/ns/net")).unwrap();
        let map = pids_by_netns(Path::new("/proc"));
        let mine = map.get(&own).expect("our own namespace");
        // Bounded per namespace: only assert when the namespace is not crowded.
        if mine.len() < PIDS_PER_NETNS {
            assert!(mine.contains(&std::process::id()), "{mine:?}");
        }
        if !nix::unistd::geteuid().is_root() {
            eprintln!("not root: the new-namespace half of this test is skipped");
            return;
        }
        let mut child = std::process::Command::new("unshare").args(["--net", "sleep", "30"]).spawn().unwrap();
        let pid = child.id();
        let ns = Path::new("/proc").join(pid.to_string()).join("ns/net");
        // unshare execs sleep in the same process once the namespace exists.
        let deadline = Instant::now() + Duration::from_secs(5);
        let inode = loop {
            let inode = inode_of(&ns).unwrap();
            if inode != own || Instant::now() > deadline {
                break inode;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let map = pids_by_netns(Path::new("/proc"));
        let _ = child.kill();
        let _ = child.wait();
        assert_ne!(inode, own);
        assert_eq!(map.get(&inode), Some(&vec![pid]));
        // The namespace has no process in a pod's cgroup (unless this test runs in a pod).
        let mut resolver = PodResolver::default();
        assert_eq!(resolver.netns_uid(own), pod_of_self());
        // The node's namespace never gets a pod (where PID 1's namespace can be read).
        if let Some(host) = host_netns() {
            assert_eq!(resolver.netns_uid(host), None);
        }
        assert_eq!(resolver.netns_uid(inode), None, "a namespace that is gone has no pod");
    }

    #[test]
    fn lookups_rescan_at_most_once_per_interval_and_remember_what_a_scan_missed() {
        let mut r = PodResolver::default();
        // No namespace has inode 1 or 2.
        assert_eq!(r.netns_uid(1), None);
        let first = r.scanned_at.expect("a miss scans");
        assert!(r.misses.contains_key(&1));
        // Within the interval: no new scan, for this or another unknown namespace, and no
        // miss is remembered for one that no scan looked for.
        assert_eq!((r.netns_uid(1), r.netns_uid(2)), (None, None));
        assert_eq!(r.scanned_at, Some(first));
        assert!(!r.misses.contains_key(&2));
        std::thread::sleep(RESCAN_INTERVAL);
        // A remembered miss does not scan again before MISS_TTL; the other one gets its scan.
        assert_eq!(r.netns_uid(1), None);
        assert_eq!(r.scanned_at, Some(first));
        assert_eq!(r.netns_uid(2), None);
        assert!(r.scanned_at.unwrap() > first);
        // Namespaces with processes are answered from the scan, without scanning again.
        let own = inode_of(Path::new("/proc/self/ns/net")).unwrap();
        if Some(own) != r.host {
            assert!(r.by_netns.contains_key(&own));
            let scanned = r.scanned_at;
            r.netns_uid(own);
            assert_eq!(r.scanned_at, scanned);
        }
    }

    fn pod_of_self() -> Option<String> {
        let own = inode_of(Path::new("/proc/self/ns/net"))?;
        if Some(own) == host_netns() {
            return None;
        }
        pod_cgroup(&std::fs::read_to_string("/proc/self/cgroup").ok()?)?.1.pod_uid
    }

    #[test]
    fn findings_take_the_pod_of_their_namespace_from_the_evidence() {
        use crate::decode::{links::LinkState, Event};
        let pod = Pod { uid: UID.into(), namespace: Some("shop".into()), name: Some("web-0".into()) };
        let state = |netns: u32, pod: Option<Pod>| {
            Event::LinkState(LinkState {
                time: String::new(),
                ts_ns: 0,
                // A `&str` or a `Cow` as the record format evolves; not what is tested.
                change: Default::default(),
                netns,
                netns_name: None,
                pod,
                ifindex: 2,
                ifname: Some("eth0".into()),
                link_kind: None,
                mac: None,
                up: true,
                carrier: true,
                xdp: None,
            })
        };
        let evidence = [state(7, None), state(8, Some(pod.clone()))];
        assert_eq!(pod_at(Some(8), &evidence), Some(pod));
        assert_eq!(pod_at(Some(7), &evidence), None);
        assert_eq!(pod_at(None, &evidence), None);
    }
}
