//! Cgroup v2 ids → paths, and the Kubernetes pod and container they belong to.
//!
//! The eBPF side records `bpf_get_current_cgroup_id()`, which on cgroup v2 is the inode of
//! the task's cgroup directory; the path is found by walking the cgroup2 mount (cached,
//! rescanned at most every 500 ms on a miss). Pod UIDs and container ids are read from the
//! names kubelet and the runtimes give their cgroups (systemd and cgroupfs drivers).

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Instant,
};

/// Directories visited per walk: bounds the cost on hosts with very many cgroups.
const MAX_CGROUPS: usize = 100_000;

#[derive(Debug, Default)]
pub struct CgroupPaths {
    /// The cgroup2 mount point; None on cgroup v1-only hosts.
    root: Option<PathBuf>,
    paths: HashMap<u64, String>,
    scanned_at: Option<Instant>,
}

/// What a cgroup path says about Kubernetes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRef {
    pub pod_uid: Option<String>,
    /// The container id, shortened to 12 characters as `crictl ps` shows it.
    pub container: Option<String>,
}

impl CgroupPaths {
    pub fn new() -> Self {
        Self { root: cgroup2_mount(), ..Self::default() }
    }

    /// The path of cgroup `id` relative to the cgroup2 root (`/` for the root).
    pub fn path(&mut self, id: u64) -> Option<&str> {
        let root = self.root.clone()?;
        if id == 0 {
            return None;
        }
        if !self.paths.contains_key(&id) && self.scanned_at.is_none_or(|t| t.elapsed().as_millis() > 500) {
            self.paths.clear();
            walk(&root, &root, &mut self.paths);
            self.scanned_at = Some(Instant::now());
        }
        self.paths.get(&id).map(String::as_str)
    }
}

fn walk(root: &Path, dir: &Path, paths: &mut HashMap<u64, String>) {
    if paths.len() >= MAX_CGROUPS {
        return;
    }
    if let Ok(meta) = std::fs::metadata(dir) {
        let relative = dir.strip_prefix(root).map(|p| format!("/{}", p.display())).unwrap_or_default();
        paths.insert(meta.ino(), relative);
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(root, &entry.path(), paths);
        }
    }
}

/// Where cgroup v2 is mounted, if it is.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next() != Some("cgroup2") {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// Reads the pod UID and container id out of a cgroup path, e.g.
/// `/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0f3a_…_.slice/crio-5d2c….scope`
/// (systemd driver) or `/kubepods/besteffort/pod0f3a…/5d2c…` (cgroupfs driver).
pub fn pod_ref(path: &str) -> PodRef {
    let mut result = PodRef::default();
    for segment in path.split('/') {
        let name = segment.trim_end_matches(".slice").trim_end_matches(".scope");
        if let Some(pos) = name.rfind("-pod").map(|p| p + 4).or_else(|| name.strip_prefix("pod").map(|_| 3)) {
            let uid = name[pos..].replace('_', "-");
            if uid.len() >= 32 {
                result.pod_uid = Some(uid);
            }
        }
        let id = ["crio-", "cri-containerd-", "docker-", "libpod-"]
            .iter()
            .find_map(|prefix| name.strip_prefix(prefix))
            .or_else(|| (name.len() == 64 && name.chars().all(|c| c.is_ascii_hexdigit())).then_some(name));
        if let Some(id) = id.filter(|id| id.len() >= 12 && id.chars().all(|c| c.is_ascii_hexdigit())) {
            result.container = Some(id[..12].to_string());
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pods_and_containers_from_both_cgroup_drivers() {
        let systemd = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0f3a1b2c_4d5e_6f70_8192_a3b4c5d6e7f8.slice/crio-5d2c9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d.scope";
        assert_eq!(
            pod_ref(systemd),
            PodRef {
                pod_uid: Some("0f3a1b2c-4d5e-6f70-8192-a3b4c5d6e7f8".into()),
                container: Some("5d2c9e8f7a6b".into())
            }
        );
        let cgroupfs = "/kubepods/burstable/pod0f3a1b2c-4d5e-6f70-8192-a3b4c5d6e7f8/5d2c9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d";
        assert_eq!(pod_ref(cgroupfs).pod_uid.as_deref(), Some("0f3a1b2c-4d5e-6f70-8192-a3b4c5d6e7f8"));
        assert_eq!(pod_ref(cgroupfs).container.as_deref(), Some("5d2c9e8f7a6b"));
        assert_eq!(pod_ref("/system.slice/systemd-udevd.service"), PodRef::default());
    }
}
