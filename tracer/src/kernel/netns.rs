//! Network namespace names: inode → the name `ip netns` gave it, or "host" for PID 1's.

use std::{os::unix::fs::MetadataExt, path::Path, time::Instant};

use foldhash::{HashMap, HashMapExt};

const NAMED_NETNS_DIR: &str = "/run/netns";

#[derive(Debug)]
pub struct NetnsNames {
    names: HashMap<u32, String>,
    scanned_at: Option<Instant>,
}

impl Default for NetnsNames {
    fn default() -> Self {
        Self::new()
    }
}

impl NetnsNames {
    pub fn new() -> Self {
        let mut names = Self { names: HashMap::new(), scanned_at: None };
        names.rescan();
        names
    }

    pub fn rescan(&mut self) {
        self.names.clear();
        if let Some(inode) = inode_of(Path::new("/proc/1/ns/net")) {
            self.names.insert(inode, "host".to_string());
        }
        if let Ok(entries) = std::fs::read_dir(NAMED_NETNS_DIR) {
            for entry in entries.flatten() {
                if let Some(inode) = inode_of(&entry.path()) {
                    self.names.insert(inode, entry.file_name().to_string_lossy().into_owned());
                }
            }
        }
        self.scanned_at = Some(Instant::now());
    }

    /// The name of `inode`, rescanning (at most every 200 ms) when it is unknown, since
    /// namespaces come and go during a session.
    pub fn name(&mut self, inode: u32) -> Option<&str> {
        if inode == 0 {
            return None;
        }
        if !self.names.contains_key(&inode) && self.scanned_at.is_none_or(|t| t.elapsed().as_millis() > 200) {
            self.rescan();
        }
        self.names.get(&inode).map(String::as_str)
    }
}

/// The namespace inode a path (a `/proc/PID/ns/net` link or a `/run/netns` bind mount) refers to.
pub fn inode_of(path: &Path) -> Option<u32> {
    std::fs::metadata(path).ok().map(|m| m.ino() as u32)
}

/// The name of interface `ifindex` in the namespace at `netns_path`, asked from inside that
/// namespace (a short-lived thread enters it: interface indexes are per namespace).
pub fn ifname_in(netns_path: &Path, ifindex: u32) -> Option<String> {
    let file = std::fs::File::open(netns_path).ok()?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
            nix::net::if_::if_indextoname(ifindex).ok().map(|n| n.to_string_lossy().into_owned())
        })
        .join()
        .ok()
        .flatten()
    })
}

/// Where a named namespace can be opened: `/run/netns/NAME`, or PID 1's for `host`.
pub fn path_of_name(name: &str) -> std::path::PathBuf {
    if name == "host" {
        "/proc/1/ns/net".into()
    } else {
        Path::new(NAMED_NETNS_DIR).join(name)
    }
}
