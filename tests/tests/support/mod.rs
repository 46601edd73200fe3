//! Shared by reliability.rs and bad_input.rs: a dptrace child process to watch and stop,
//! what it holds in the kernel (BPF programs, links, maps), and what it may leave behind.
//! Other dptrace processes may run on this machine at the same time (other tests): nothing
//! here compares global counts; everything is tied to a process id or to objects this test
//! created.

#![allow(dead_code)]

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use dptrace_e2e::{dptrace_bin, sh};

/// How long a well-behaved dptrace may take to do something that should be immediate
/// (attach, exit after a signal, the kernel freeing objects). Generous: not a speed test.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A running `dptrace`, its output collected line by line (with arrival times) by threads.
/// Dropping it kills the process, so a failing test leaves nothing running.
pub struct Tracer {
    pub child: Child,
    pub stdout: Arc<Mutex<Vec<(Instant, String)>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    stderr_lines: mpsc::Receiver<String>,
    readers: Vec<JoinHandle<()>>,
}

impl Tracer {
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(dptrace_bin())
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn dptrace");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, stderr_lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let readers = vec![
            {
                let stdout = stdout.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(out).lines().map_while(Result::ok) {
                        stdout.lock().unwrap().push((Instant::now(), line));
                    }
                })
            },
            {
                let stderr = stderr.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(err).lines().map_while(Result::ok) {
                        stderr.lock().unwrap().push(line.clone());
                        let _ = tx.send(line);
                    }
                })
            },
        ];
        Self { child, stdout, stderr, stderr_lines, readers }
    }

    /// `dptrace trace --json --quiet` on the whole machine, returned once everything is
    /// attached (the field tests: real software acts wherever it acts).
    pub fn whole_machine() -> Self {
        let mut t = Self::spawn(&["trace", "--json", "--quiet"], &[]);
        t.wait_attached();
        t
    }

    /// Stops the session (after half a second, so the link monitor and the ring buffer deliver
    /// the last events) and returns its JSON lines. They are also kept in
    /// target/field/sessions/TEST.jsonl for whoever reads a failure.
    pub fn finish(mut self) -> Vec<serde_json::Value> {
        std::thread::sleep(Duration::from_millis(500));
        self.signal("INT");
        let status = self.wait_exit();
        assert!(status.success(), "dptrace failed: {status}\n{}", self.stderr_text());
        let lines = self.json_lines();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/field/sessions");
        let _ = std::fs::create_dir_all(&dir);
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let _ = std::fs::write(dir.join(format!("{}.jsonl", dptrace_e2e::current_test())), text);
        lines
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until dptrace says it is tracing (everything attached); panics with its stderr
    /// if it exits or does not get there.
    pub fn wait_attached(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            match self.stderr_lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.starts_with("dptrace: tracing on kernel") => return,
                Ok(_) => {}
                Err(_) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        panic!("dptrace exited ({status}) before attaching: {}", self.stderr_text());
                    }
                }
            }
        }
        panic!("dptrace did not attach within {PATIENCE:?}: {}", self.stderr_text());
    }

    pub fn signal(&self, signal: &str) {
        sh("kill", &[&format!("-{signal}"), &self.pid().to_string()]);
    }

    /// Waits for the process to exit and its output to be read; panics after [`PATIENCE`].
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for dptrace") {
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("dptrace did not exit within {PATIENCE:?}: {}", self.stderr_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// The stdout lines parsed as JSON (a non-JSON line fails the test).
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .map(|(_, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// VmRSS in KiB, None once the process is gone.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The BPF objects a process holds open, by id (from /proc/PID/fdinfo: `prog_id:` of
/// program and link fds, `link_id:` of link fds, `map_id:` of map fds).
#[derive(Debug, Default, Clone)]
pub struct HeldIds {
    pub progs: BTreeSet<u32>,
    pub links: BTreeSet<u32>,
    pub maps: BTreeSet<u32>,
}

pub fn held_ids(pid: u32) -> HeldIds {
    let mut ids = HeldIds::default();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return ids };
    for entry in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else { continue };
            let Ok(id) = value.trim().parse::<u32>() else { continue };
            match key {
                "prog_id" => ids.progs.insert(id),
                "link_id" => ids.links.insert(id),
                "map_id" => ids.maps.insert(id),
                _ => false,
            };
        }
    }
    ids
}

/// Whether `bpftool KIND show id ID` finds the object (KIND: prog, link, map).
pub fn bpf_object_exists(kind: &str, id: u32) -> bool {
    let out = Command::new("bpftool")
        .args([kind, "show", "id", &id.to_string()])
        .output()
        .expect("bpftool is needed (Debian package bpftool; `cargo xtask setup` installs it with the test tools)");
    out.status.success()
}

/// Waits until none of `ids` exists any more; panics naming those that remain.
pub fn assert_all_gone(ids: &HeldIds) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let remaining: Vec<String> = [("prog", &ids.progs), ("link", &ids.links), ("map", &ids.maps)]
            .iter()
            .flat_map(|(kind, set)| {
                set.iter().filter(|id| bpf_object_exists(kind, **id)).map(move |id| format!("{kind} {id}"))
            })
            .collect();
        if remaining.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!("still in the kernel {PATIENCE:?} after dptrace exited: {remaining:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every path under the BPF filesystem (pins), wherever it is mounted.
pub fn bpf_pins() -> BTreeSet<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut pins = BTreeSet::new();
    for mountpoint in mounts.lines().filter_map(|l| {
        let mut f = l.split_whitespace();
        let (_, at, fs) = (f.next()?, f.next()?, f.next()?);
        (fs == "bpf").then(|| PathBuf::from(at))
    }) {
        walk(&mountpoint, &mut pins);
    }
    pins
}

fn walk(dir: &Path, into: &mut BTreeSet<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, into);
        }
        into.insert(path);
    }
}

/// The mount table's lines that are BPF or tracefs/debugfs mounts (dptrace may mount tracefs
/// at its standard place, by design; a bpffs mount would be new state).
pub fn bpffs_mounts() -> BTreeSet<String> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split_whitespace().nth(2) == Some("bpf"))
        .map(str::to_string)
        .collect()
}

/// Lines of tracefs's dynamic probe lists (kprobe_events, uprobe_events) that name `pid`
/// (aya names legacy probes `aya_<pid>_…`), and tracefs instances that do.
pub fn tracefs_entries_of(pid: u32) -> Vec<String> {
    let mut found = Vec::new();
    let needle = format!("_{pid}_");
    for root in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        for list in ["kprobe_events", "uprobe_events"] {
            let text = std::fs::read_to_string(Path::new(root).join(list)).unwrap_or_default();
            found.extend(text.lines().filter(|l| l.contains(&needle)).map(|l| format!("{root}/{list}: {l}")));
        }
        if let Ok(dir) = std::fs::read_dir(Path::new(root).join("instances")) {
            found.extend(
                dir.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.contains(&pid.to_string()) || n.contains("dptrace"))
                    .map(|n| format!("{root}/instances/{n}")),
            );
        }
    }
    found
}

/// Namespaces, mounts, scratch directories and cgroups named after `pid` (the lab names
/// everything `dptlab-<pid>-…`).
pub fn named_leftovers_of(pid: u32) -> Vec<String> {
    let tag = format!("dptlab-{pid}");
    let mut found: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with(&tag))
        .map(|n| format!("namespace /run/netns/{n}"))
        .collect();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    found.extend(mounts.lines().filter(|l| l.contains(&tag)).map(|l| format!("mount {l}")));
    let scratch = std::env::temp_dir().join(&tag);
    if scratch.exists() {
        found.push(format!("directory {}", scratch.display()));
    }
    if let Some(root) = cgroup2_root() {
        let slice = root.join(format!("{tag}.slice"));
        if slice.exists() {
            found.push(format!("cgroup {}", slice.display()));
        }
    }
    found
}

fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, at, fs) = (f.next()?, f.next()?, f.next()?);
        (fs == "cgroup2").then(|| PathBuf::from(at))
    })
}

/// A BPF program as bpftool lists it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Prog {
    pub id: u32,
    pub kind: String,
    pub name: String,
}

pub fn all_progs() -> Vec<Prog> {
    let out = Command::new("bpftool").args(["prog", "show", "--json"]).output().expect("bpftool");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    list.as_array()
        .map(|a| {
            a.iter()
                .map(|p| Prog {
                    id: p["id"].as_u64().unwrap_or(0) as u32,
                    kind: p["type"].as_str().unwrap_or("").to_string(),
                    name: p["name"].as_str().unwrap_or("").to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Program ids some process holds (directly or through a link).
pub fn held_by_anyone() -> BTreeSet<u32> {
    let mut held = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() {
            held.extend(held_ids(pid).progs);
        }
    }
    held
}

/// Programs of the kinds dptrace loads (tracepoint, kprobe, fentry, raw tracepoint) that
/// appeared since `before`, are held by no process (so nothing will ever detach them) and
/// stay so: a program of a process that is exiting just then is held by none for a moment.
pub fn new_orphan_progs(before: &BTreeSet<u32>) -> Vec<Prog> {
    let tracing = ["tracepoint", "kprobe", "tracing", "raw_tracepoint", "perf_event"];
    let candidates = || -> Vec<Prog> {
        let held = held_by_anyone();
        all_progs()
            .into_iter()
            .filter(|p| !before.contains(&p.id) && tracing.contains(&p.kind.as_str()) && !held.contains(&p.id))
            .collect()
    };
    let mut orphans = candidates();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !orphans.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        let now = candidates();
        orphans.retain(|p| now.contains(p));
    }
    orphans
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A network namespace this test creates (IPv6 off, loopback up), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(role: &str) -> Self {
        let name = format!("dptrel-{}-{}-{role}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        sh("ip", &["netns", "add", &name]);
        let ns = Self { name };
        // No IPv6: neither router solicitations nor MLD reports may add packets of their own.
        ns.exec(&[
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6",
        ]);
        sh("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    pub fn exec(&self, args: &[&str]) {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh("ip", &full);
    }

    /// Output of a command run inside the namespace.
    pub fn output(&self, args: &[&str]) -> String {
        let out = Command::new("ip").args(["netns", "exec", &self.name]).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    pub fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(self.path()).unwrap().ino()
    }

    /// Runs `f` on a thread that entered this namespace: sockets it creates live there.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
        let file = std::fs::File::open(self.path()).unwrap();
        std::thread::spawn(move || {
            // SAFETY: setns on this thread only; the fd is a namespace file kept open by `file`.
            let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }

    /// A counter of `/proc/net/snmp` in this namespace, e.g. ("Udp", "NoPorts").
    pub fn snmp(&self, group: &str, field: &str) -> u64 {
        let text = self.output(&["cat", "/proc/net/snmp"]);
        let mut lines = text.lines().filter(|l| l.starts_with(&format!("{group}:")));
        let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
        let at = names.split_whitespace().position(|n| n == field).unwrap_or_else(|| panic!("no {group} {field}"));
        values.split_whitespace().nth(at).unwrap().parse().unwrap()
    }

    /// A device's packet and byte counters (`ip -s -j link`): rx_packets, tx_packets, rx_bytes,
    /// tx_bytes, rx_dropped, tx_dropped.
    pub fn counters(&self, dev: &str) -> DeviceCounters {
        let out = Command::new("ip").args(["-n", &self.name, "-s", "-j", "link", "show", "dev", dev]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let stats = &v[0]["stats64"];
        let n = |dir: &str, what: &str| stats[dir][what].as_u64().unwrap_or_else(|| panic!("{dev}: {v}"));
        DeviceCounters {
            rx_packets: n("rx", "packets"),
            tx_packets: n("tx", "packets"),
            rx_bytes: n("rx", "bytes"),
            tx_bytes: n("tx", "bytes"),
            rx_dropped: n("rx", "dropped"),
            tx_dropped: n("tx", "dropped"),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceCounters {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

impl std::ops::Sub for DeviceCounters {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Self {
            rx_packets: self.rx_packets - o.rx_packets,
            tx_packets: self.tx_packets - o.tx_packets,
            rx_bytes: self.rx_bytes - o.rx_bytes,
            tx_bytes: self.tx_bytes - o.tx_bytes,
            rx_dropped: self.rx_dropped - o.rx_dropped,
            tx_dropped: self.tx_dropped - o.tx_dropped,
        }
    }
}
