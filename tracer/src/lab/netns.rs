//! Throwaway network namespaces for the lab, removed when the `Lab` is dropped (also on
//! error or panic), plus clean-up of leftovers from a run that was killed.

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::Mutex,
};

use anyhow::{bail, Context};

use crate::kernel::netns::inode_of;

/// Every lab namespace is named `dptlab-<pid>-<role>`, so leftovers can be attributed.
const PREFIX: &str = "dptlab-";
const NETNS_DIR: &str = "/run/netns";

pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    /// Scratch directory for actor binaries and files (`/tmp/dptlab-<pid>`), created on demand.
    scratch: Option<PathBuf>,
    /// Cgroups created for actors (under `<cgroup2>/dptlab-<pid>.slice`), deepest last.
    cgroups: Vec<PathBuf>,
}

/// A scenario that cannot show its failure on this machine: the feature it lacks exists
/// here, or the kernel lacks one it needs, or a tool is missing.
#[derive(Debug, thiserror::Error)]
#[error("{}: {why}", if self.fact.starts_with(MISSING_TOOL) { "cannot run here" } else { "not reproducible on this kernel" })]
pub struct Unreproducible {
    /// A stable id of the machine fact behind it, which whoever runs the lab can check for
    /// themselves (`cargo xtask test` does): `kernel-has-wireguard`, `kernel-lacks-wireguard`,
    /// `kernel-lacks-bridge`, `kernel-lacks-vxlan`, `bridge-native-xdp`, `no-xdp-fixtures`,
    /// `no-kernel-btf`, … A missing tool is `missing-tool:NAME`: not a fact of the kernel.
    pub fact: &'static str,
    /// What was seen, for people.
    pub why: String,
}

/// The prefix of a fact id saying a tool is missing (`missing-tool:wg`).
pub const MISSING_TOOL: &str = "missing-tool:";

impl Unreproducible {
    pub fn new(fact: &'static str, why: impl Into<String>) -> Self {
        Self { fact, why: why.into() }
    }
}

impl Lab {
    pub fn new() -> anyhow::Result<Self> {
        for stale in cleanup_leftovers() {
            log::warn!("removed namespace {stale} left behind by an earlier lab run");
        }
        Ok(Self {
            prefix: format!("{PREFIX}{}-", std::process::id()),
            namespaces: Vec::new(),
            scratch: None,
            cgroups: Vec::new(),
        })
    }

    /// Creates namespace `dptlab-<pid>-<role>` with loopback up; returns its name.
    pub fn add_netns(&mut self, role: &str) -> anyhow::Result<String> {
        let name = format!("{}{role}", self.prefix);
        ip(&["netns", "add", &name])?;
        self.namespaces.push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(name)
    }

    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// A copy of `program` (found on PATH) named `name`, so that the kernel sees the process
    /// as `name` (its comm): how the lab plays agents such as `flanneld` with real tools.
    pub fn actor_binary(&mut self, program: &str, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.scratch_dir()?;
        let source = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|d| d.join(program))
            .find(|p| p.is_file())
            .with_context(|| format!("`{program}` not found"))?;
        let target = dir.join(name);
        std::fs::copy(&source, &target)
            .with_context(|| format!("copy {} to {}", source.display(), target.display()))?;
        Ok(target)
    }

    /// Writes `bytes` to file `name` in the lab's scratch directory (removed with the lab), for
    /// tools that need a file, such as an object file for `ip link set … xdp obj FILE`.
    pub fn scratch_file(&mut self, name: &str, bytes: &[u8]) -> anyhow::Result<PathBuf> {
        let path = self.scratch_dir()?.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("write {}", path.display()))?;
        Ok(path)
    }

    /// `/tmp/dptlab-<pid>`, created on first use, removed with the lab.
    pub fn scratch_dir(&mut self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.scratch {
            return Ok(dir.clone());
        }
        let dir = std::env::temp_dir().join(self.prefix.trim_end_matches('-'));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        self.scratch = Some(dir.clone());
        Ok(dir)
    }

    /// A cgroup `<cgroup2>/dptlab-<pid>.slice/<relative>` for an actor to run in (so the
    /// kernel reports it as, say, `system.slice/systemd-udevd.service`); None without cgroup v2.
    /// Returns its `cgroup.procs` file.
    pub fn actor_cgroup(&mut self, relative: &str) -> Option<PathBuf> {
        let base =
            crate::kernel::cgroups::cgroup2_mount()?.join(format!("{}.slice", self.prefix.trim_end_matches('-')));
        let dir = relative.split('/').filter(|p| !p.is_empty()).fold(base.clone(), |dir, part| dir.join(part));
        std::fs::create_dir_all(&dir).ok()?;
        // Remember every level so that Drop can remove them, deepest first.
        let mut level = dir.clone();
        while level.starts_with(&base) {
            if !self.cgroups.contains(&level) {
                self.cgroups.push(level.clone());
            }
            if !level.pop() {
                break;
            }
        }
        Some(dir.join("cgroup.procs"))
    }

    pub fn inode(&self, netns: &str) -> Option<u32> {
        inode_of(&netns_path(netns))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deepest first; a cgroup can only be removed once its processes are gone.
        self.cgroups.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for dir in self.cgroups.drain(..) {
            if let Err(e) = std::fs::remove_dir(&dir) {
                log::warn!("could not remove lab cgroup {}: {e}", dir.display());
            }
        }
        if let Some(dir) = self.scratch.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        for name in self.namespaces.drain(..).rev() {
            // Deleting the namespace deletes the veths and rules inside it too.
            if let Err(e) = ip(&["netns", "del", &name]) {
                log::warn!("could not remove lab namespace {name}: {e}");
            }
        }
    }
}

pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// The absolute path of iproute2's `ip` (not a busybox applet of the same name, which a
/// busybox `sh` would prefer when told to run plain `ip`).
pub fn iproute2_ip() -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin"), PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|dir| dir.join("ip"))
        .find(|path| {
            Command::new(path).arg("-V").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("iproute2"))
        })
        .unwrap_or_else(|| PathBuf::from("ip"))
}

/// Runs `ip ARGS…`, failing with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("ip", args)
}

/// Runs `program ARGS…` inside namespace `netns`.
pub fn exec_in(netns: &str, program: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut full = vec!["netns", "exec", netns, program];
    full.extend_from_slice(args);
    run("ip", &full)
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(program).args(args).output().with_context(|| {
        format!("cannot run `{program}` (is it installed? iproute2 and iptables are needed by the lab)")
    })?;
    if !output.status.success() {
        bail!("`{program} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// Processes the lab started during the current scenario's trigger (actors such as a copy of
/// `ip` named `flanneld`, and its own `ip` runs): their pids tie the kernel's evidence, a
/// request's actor, to the scenario where the kernel cannot show the actor's namespace or
/// parent (no BTF). Bounded; one scenario runs at a time.
static ACTOR_PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
const MAX_ACTOR_PIDS: usize = 4096;

/// Runs `command` to completion like `Command::output` (stdin empty, stdout and stderr
/// captured), remembering its pid as an actor of the current scenario. `ip netns exec NS
/// PROGRAM` execs PROGRAM in place (it forks only in batch mode), so that pid is PROGRAM's.
pub fn actor_output(command: &mut Command) -> io::Result<Output> {
    let child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    if let Ok(mut pids) = ACTOR_PIDS.lock() {
        if pids.len() < MAX_ACTOR_PIDS {
            pids.push(child.id());
        }
    }
    child.wait_with_output()
}

/// The pids remembered by [`actor_output`] since the last call, forgotten here.
pub fn take_actor_pids() -> Vec<u32> {
    ACTOR_PIDS.lock().map(|mut pids| std::mem::take(&mut *pids)).unwrap_or_default()
}

/// The comm (thread name, at most 15 bytes as the kernel keeps it) of the lab's traffic
/// thread for namespace `netns`: `lab-<role>`. Events of the scenario's own traffic name it.
pub fn traffic_thread_comm(netns: &str) -> String {
    let mut name = format!("lab-{}", role_of(netns));
    let mut end = name.len().min(15);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.truncate(end);
    name
}

/// Runs `f` on a thread that has entered namespace `netns`; the caller's thread is untouched.
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> std::io::Result<T> + Send) -> anyhow::Result<T> {
    let path = netns_path(netns);
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            // Named after the namespace's role so events show who sent the traffic.
            .name(traffic_thread_comm(netns))
            .spawn_scoped(scope, || -> anyhow::Result<T> {
                let file = File::open(&path).with_context(|| format!("open {}", path.display()))?;
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("setns {}", path.display()))?;
                Ok(f()?)
            })
            .context("cannot start the traffic thread")?
            .join()
            .map_err(|_| anyhow::anyhow!("traffic thread panicked"))?
    })
}

/// The ifindex of device `dev` inside namespace `netns`.
pub fn ifindex_in(netns: &str, dev: &str) -> anyhow::Result<u32> {
    in_netns(netns, || nix::net::if_::if_nametoindex(dev).map_err(io::Error::from))
        .with_context(|| format!("the ifindex of {dev} in {netns}"))
}

/// The role part of a lab namespace's name (`pod-a` in `dptlab-<pid>-pod-a`).
pub fn role_of(netns: &str) -> &str {
    netns.strip_prefix(PREFIX).and_then(|rest| rest.split_once('-')).map_or(netns, |(_, role)| role)
}

/// The path under /proc/sys of sysctl `key` (`net.ipv4.ip_forward`).
fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

/// Sets sysctl `key` to `value` inside namespace `netns` (`net.*` sysctls are per namespace;
/// the host's stay untouched).
pub fn set_sysctl_in(netns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    let path = sysctl_path(key);
    in_netns(netns, || std::fs::write(&path, value))
        .with_context(|| format!("set {key}={value} in {netns} ({})", path.display()))
}

/// Sysctl `key` as seen inside namespace `netns`; None when it does not exist there.
pub fn sysctl_in(netns: &str, key: &str) -> anyhow::Result<Option<String>> {
    let path = sysctl_path(key);
    in_netns(netns, || match std::fs::read_to_string(&path) {
        Ok(value) => Ok(Some(value.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    })
    .with_context(|| format!("read {key} in {netns}"))
}

/// Sysctl `key` as seen by this process (the host's, when dptrace runs in the host namespace).
pub fn sysctl_here(key: &str) -> Option<String> {
    std::fs::read_to_string(sysctl_path(key)).ok().map(|v| v.trim().to_string())
}

/// Removes `dptlab-<pid>-*` namespaces whose dptrace process is gone. Returns their names.
pub fn cleanup_leftovers() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return vec![];
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) =
            name.strip_prefix(PREFIX).and_then(|rest| rest.split('-').next()).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let owner_alive =
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "dptrace");
        if !owner_alive && ip(&["netns", "del", &name]).is_ok() {
            removed.push(name);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_threads_are_named_as_the_kernel_keeps_their_comm() {
        assert_eq!(traffic_thread_comm("dptlab-4242-client"), "lab-client");
        assert_eq!(traffic_thread_comm("dptlab-4242-vxmtu-pod-a"), "lab-vxmtu-pod-a");
        // TASK_COMM_LEN is 16 with the terminating NUL: 15 bytes are kept.
        assert_eq!(traffic_thread_comm("dptlab-4242-a-very-long-role-name"), "lab-a-very-long");
    }

    #[test]
    fn a_missing_tool_is_not_called_a_fact_of_the_kernel() {
        let tool = Unreproducible::new("missing-tool:wg", "cannot run `wg`");
        assert_eq!(tool.to_string(), "cannot run here: cannot run `wg`");
        let kernel = Unreproducible::new("kernel-lacks-vxlan", "no VXLAN");
        assert_eq!(kernel.to_string(), "not reproducible on this kernel: no VXLAN");
    }
}
