//! The benchmark's own network namespaces, named `dptbench-<pid>-<label>` and removed when the
//! [`Namespaces`] guard drops (also after an error, a panic or Ctrl-C); namespaces of earlier
//! runs whose xtask is gone are removed at the start.
//!
//! Two topologies: a flannel-style VXLAN overlay for iperf3 (the one of dptrace's lab scenario
//! `vxlan-overlay`, tracer/src/lab/overlay.rs), and a plain veth pair for the event flood.

use std::{
    fs::File,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

const NETNS_DIR: &str = "/run/netns";
const PREFIX: &str = "dptbench-";

/// Namespaces this run created; deleted on drop.
pub struct Namespaces {
    prefix: String,
    names: Vec<String>,
}

impl Namespaces {
    pub fn new() -> Self {
        Self { prefix: format!("{PREFIX}{}", std::process::id()), names: Vec::new() }
    }

    /// Creates `dptbench-<pid>-<label>` with loopback up and IPv6 off (no router solicitations
    /// or multicast listener reports: the only traffic is the benchmark's).
    pub fn add(&mut self, label: &str) -> anyhow::Result<String> {
        let name = format!("{}-{label}", self.prefix);
        ip(&["netns", "add", &name])?;
        self.names.push(name.clone());
        run(Command::new("ip")
            .args(["netns", "exec", &name, "sysctl", "-qw"])
            .args(["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]))?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(name)
    }

    /// Deletes the namespaces created so far (their devices go with them).
    pub fn clear(&mut self) {
        for name in self.names.drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Removes `dptbench-<pid>-…` namespaces left by runs whose process no longer exists.
pub fn remove_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()) else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing stale namespace {name} (its bench run, pid {pid}, is gone)");
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").args(args))
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Runs `f` on a thread that has joined network namespace `ns` (setns affects only the calling
/// thread): sockets it opens live in `ns`, and /proc/thread-self/net shows `ns`.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
    std::thread::scope(|s| s.spawn(|| enter_netns(ns).and_then(|()| f())).join())
        .map_err(|_| anyhow::anyhow!("a thread in namespace {ns} panicked"))?
}

/// Moves the calling thread into network namespace `ns`.
pub fn enter_netns(ns: &str) -> anyhow::Result<()> {
    let path = Path::new(NETNS_DIR).join(ns);
    let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: the fd is open for the duration of the call; setns changes only this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns into {ns}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A counter of /proc/net/snmp in namespace `ns`, e.g. ("Udp", "NoPorts").
pub fn snmp_counter(ns: &str, group: &str, name: &str) -> anyhow::Result<u64> {
    let text = in_netns(ns, || Ok(std::fs::read_to_string("/proc/thread-self/net/snmp")?))?;
    let prefix = format!("{group}:");
    let mut rows = text.lines().filter(|l| l.starts_with(&prefix));
    let (Some(names), Some(values)) = (rows.next(), rows.next()) else { bail!("no {group} in /proc/net/snmp") };
    let index = names.split_whitespace().position(|n| n == name).with_context(|| format!("no {group} {name}"))?;
    values.split_whitespace().nth(index).context("short snmp row")?.parse().context("bad snmp value")
}

/// Two flannel-style nodes joined by VXLAN, each with one pod on its bridge:
///
/// pod-a eth0 10.244.1.2 ─veth─ node-a cni0 ─route─ flannel.1 (VNI 1, :8472) ─ eth0 192.168.50.1
///   ═underlay veth═ node-b eth0 192.168.50.2 ─ flannel.1 ─ cni0 ─veth─ pod-b eth0 10.244.2.2
///
/// Pods and bridges at MTU 1450 (as flannel configures them), the underlay at 1500.
pub struct Overlay {
    pub client: String,
    pub server: String,
    pub server_ip: Ipv4Addr,
}

pub fn overlay(nss: &mut Namespaces) -> anyhow::Result<Overlay> {
    let nodes = [nss.add("node-a")?, nss.add("node-b")?];
    let pods = [nss.add("pod-a")?, nss.add("pod-b")?];
    let mac = |n: usize| format!("0e:fa:00:00:{n:02x}:00");
    ip(&["-n", &nodes[0], "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &nodes[1]])?;
    for (i, (node, pod)) in nodes.iter().zip(&pods).enumerate() {
        let n = i + 1;
        ip(&["-n", node, "addr", "add", &format!("192.168.50.{n}/24"), "dev", "eth0"])?;
        ip(&["-n", node, "link", "set", "eth0", "up"])?;
        ip(&["-n", node, "link", "add", "cni0", "mtu", "1450", "type", "bridge"])?;
        ip(&["-n", node, "addr", "add", &format!("10.244.{n}.1/24"), "dev", "cni0"])?;
        ip(&["-n", node, "link", "set", "cni0", "up"])?;
        #[rustfmt::skip]
        ip(&[
            "-n", node, "link", "add", "flannel.1", "address", &mac(n), "mtu", "1450", "type", "vxlan", "id", "1",
            "dstport", "8472", "local", &format!("192.168.50.{n}"), "dev", "eth0", "nolearning",
        ])?;
        ip(&["-n", node, "addr", "add", &format!("10.244.{n}.0/32"), "dev", "flannel.1"])?;
        ip(&["-n", node, "link", "set", "flannel.1", "up"])?;
        run(Command::new("ip").args(["netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1"]))?;
        let port = format!("veth-pod-{}", if n == 1 { "a" } else { "b" });
        #[rustfmt::skip]
        ip(&["-n", node, "link", "add", &port, "mtu", "1450", "type", "veth", "peer", "name", "eth0", "mtu", "1450", "netns", pod])?;
        ip(&["-n", node, "link", "set", &port, "master", "cni0"])?;
        ip(&["-n", node, "link", "set", &port, "up"])?;
        ip(&["-n", pod, "addr", "add", &format!("10.244.{n}.2/24"), "dev", "eth0"])?;
        ip(&["-n", pod, "link", "set", "eth0", "up"])?;
        ip(&["-n", pod, "route", "add", "default", "via", &format!("10.244.{n}.1")])?;
    }
    for (i, node) in nodes.iter().enumerate() {
        // What flanneld installs for the other node's subnet lease.
        let peer = 2 - i;
        let peer_vtep = format!("10.244.{peer}.0");
        ip(&[
            "-n",
            node,
            "route",
            "add",
            &format!("10.244.{peer}.0/24"),
            "via",
            &peer_vtep,
            "dev",
            "flannel.1",
            "onlink",
        ])?;
        ip(&["-n", node, "neigh", "add", &peer_vtep, "lladdr", &mac(peer), "dev", "flannel.1", "nud", "permanent"])?;
        let dst = format!("192.168.50.{peer}");
        run(Command::new("bridge").args(["-n", node, "fdb", "append", &mac(peer), "dev", "flannel.1", "dst", &dst]))?;
    }
    let t = Overlay { client: pods[0].clone(), server: pods[1].clone(), server_ip: Ipv4Addr::new(10, 244, 2, 2) };
    wait_reachable(&t.client, t.server_ip)?;
    Ok(t)
}

/// A veth pair between namespaces `<label>-tx` (10.99.0.1) and `<label>-rx` (10.99.0.2).
pub struct Pair {
    pub tx: String,
    pub rx: String,
    pub rx_ip: Ipv4Addr,
}

pub fn pair(nss: &mut Namespaces, label: &str) -> anyhow::Result<Pair> {
    let (tx, rx) = (nss.add(&format!("{label}-tx"))?, nss.add(&format!("{label}-rx"))?);
    ip(&["-n", &tx, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &rx])?;
    for (ns, addr) in [(&tx, "10.99.0.1/24"), (&rx, "10.99.0.2/24")] {
        ip(&["-n", ns, "addr", "add", addr, "dev", "eth0"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    }
    let p = Pair { tx, rx, rx_ip: Ipv4Addr::new(10, 99, 0, 2) };
    wait_reachable(&p.tx, p.rx_ip)?;
    Ok(p)
}

/// Pings until `dst` answers (links come up asynchronously), for up to 10 s.
fn wait_reachable(ns: &str, dst: Ipv4Addr) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        super::procs::check_interrupted()?;
        let ok = Command::new("ip")
            .args(["netns", "exec", ns, "ping", "-c1", "-W1", "-q", &dst.to_string()])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!("{dst} does not answer pings from namespace {ns} after 10 s: the topology is broken");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
