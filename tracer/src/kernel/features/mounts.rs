//! tracefs and bpffs: whether the kernel has them (`/proc/filesystems`) and where they are mounted
//! (`/proc/self/mountinfo`, mount points unescaped).

use std::fs;

use serde::Serialize;

use super::Support;

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

pub(super) fn probe_mounts() -> Mounts {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo() {
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
    }
}
