//! Field report 4 with the real XDP loaders: Debian's xdp-tools (`xdp-filter`, which drops
//! by design, and `xdp-loader`) and bpftool (`bpftool net attach`), run unmodified in a node
//! namespace this test creates, with traffic from a peer namespace, under `dptrace trace`
//! (tracing the whole machine, as an operator would; findings are then taken from this
//! test's namespaces, since other tests may run beside it).
//!
//! - `xdp-filter port N` in native and skb mode: dptrace must say at warning level which
//!   program (the kernel's name and id, as `ip -d link` shows them), in which mode, on which
//!   device, attached by whom, dropped which flow, and as many packets as xdp-filter itself
//!   counted. Healthy twin: the same filter while traffic goes to another port.
//! - `xdp-loader load --mode native` on devices whose drivers have no native XDP (a bridge,
//!   a vxlan device): `xdp-attach-failed` naming xdp-loader, the device, the mode and the
//!   kernel's message. Healthy twin: `--mode skb` on the same devices.
//! - `bpftool prog load` + `bpftool net attach xdp|xdpgeneric` of xdp-tools' deny-all filter
//!   object: the same `xdp-drop`, naming bpftool.
//!
//! libxdp and xdp-filter need a bpffs in their own mount namespace: each `ip netns exec`
//! makes a new one, so the mount and every xdp-filter/xdp-loader command of one scenario run
//! in one `ip netns exec NODE sh -c '…'` (field-components.md §4). Names, subnets and ports
//! are new on every run.

mod support;

use std::{
    process::Command,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
};

use dptrace_e2e::{field, require_root, sh};
use serde_json::Value;
use support::Tracer;

const OBJECTS: &str = "/usr/lib/x86_64-linux-gnu/bpf";

/// One scenario at a time: each traces the whole machine.
static SERIAL: Mutex<()> = Mutex::new(());
static NEXT: AtomicUsize = AtomicUsize::new(0);

fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes)).unwrap();
    u32::from_ne_bytes(bytes)
}

fn hex(n: usize) -> String {
    format!("{:08x}{:08x}", random_u32(), random_u32())[..n].to_string()
}

fn random_port() -> u16 {
    20000 + (random_u32() % 30000) as u16
}

/// A node namespace and a peer namespace joined by a veth pair with random names, in a
/// random 10.X.Y.0/24; removed on drop (whatever is attached goes with them).
struct Pair {
    node: String,
    peer: String,
    /// The node's end, where the XDP programs go, and the peer's.
    dev: String,
    peer_dev: String,
    node_ip: String,
    peer_ip: String,
}

impl Pair {
    fn new() -> Self {
        let (pid, n) = (std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        let node = format!("dptxdp-{pid}-{n}-node");
        let peer = format!("dptxdp-{pid}-{n}-peer");
        sh("ip", &["netns", "add", &node]);
        // Drop removes the node namespace if adding the peer fails.
        let mut pair = Self {
            node,
            peer: String::new(),
            dev: format!("x{}", hex(8)),
            peer_dev: format!("p{}", hex(8)),
            node_ip: String::new(),
            peer_ip: String::new(),
        };
        sh("ip", &["netns", "add", &peer]);
        pair.peer = peer;
        let r = random_u32();
        let prefix = format!("10.{}.{}", 1 + r % 250, (r >> 8) % 250);
        pair.node_ip = format!("{prefix}.{}", 2 + (r >> 16) % 100);
        pair.peer_ip = format!("{prefix}.{}", 110 + (r >> 24) % 100);
        sh("ip", &["-n", &pair.node, "link", "set", "lo", "up"]);
        sh("ip", &["-n", &pair.peer, "link", "set", "lo", "up"]);
        sh(
            "ip",
            &[
                "-n",
                &pair.node,
                "link",
                "add",
                &pair.dev,
                "type",
                "veth",
                "peer",
                "name",
                &pair.peer_dev,
                "netns",
                &pair.peer,
            ],
        );
        sh("ip", &["-n", &pair.node, "addr", "add", &format!("{}/24", pair.node_ip), "dev", &pair.dev]);
        sh("ip", &["-n", &pair.peer, "addr", "add", &format!("{}/24", pair.peer_ip), "dev", &pair.peer_dev]);
        sh("ip", &["-n", &pair.node, "link", "set", &pair.dev, "up"]);
        sh("ip", &["-n", &pair.peer, "link", "set", &pair.peer_dev, "up"]);
        pair
    }

    /// Runs `script` with `sh -c` in the node namespace after mounting a bpffs there (one
    /// mount namespace for the whole script); returns (success, stdout + stderr).
    fn node_sh(&self, script: &str) -> (bool, String) {
        let full = format!("mount -t bpf bpf /sys/fs/bpf && {script}");
        let out = Command::new("ip").args(["netns", "exec", &self.node, "sh", "-c", &full]).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// A shell command (for node scripts) that sends `count` UDP datagrams from the peer to
    /// the node's `port`, 20 ms apart.
    fn send_udp(&self, port: u16, count: u32) -> String {
        format!(
            "ip netns exec {} python3 -c 'import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor i in range({count}):\n  s.sendto(b\"dptrace-field\",(\"{}\",{port})); time.sleep(0.02)'",
            self.peer, self.node_ip
        )
    }

    /// A shell command that receives UDP on `port` in the node (in the background; writes how
    /// many datagrams arrived to FILE when `count` did or after 5 s).
    fn receive_udp(&self, port: u16, count: u32, file: &str) -> String {
        format!(
            "python3 -c 'import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind((\"{}\",{port}))\ns.settimeout(5)\nn=0\ntry:\n  while n<{count}:\n    s.recv(100); n+=1\nexcept Exception: pass\nopen(\"{file}\",\"w\").write(str(n))' & sleep 0.3",
            self.node_ip
        )
    }

    fn namespaces(&self) -> [&str; 2] {
        [&self.node, &self.peer]
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.node, &self.peer] {
            if !ns.is_empty() {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
    }
}

/// The lines of findings placed in one of `namespaces` (by name), or whose actor ran there:
/// other tests may run beside this one, and their findings are theirs.
fn ours(lines: &[Value], namespaces: &[&str]) -> Vec<Value> {
    lines
        .iter()
        .filter(|v| v["type"] == "finding")
        .filter(|f| {
            let place = f["place"]["netns_name"].as_str();
            let actor = f["actor"]["netns_name"].as_str();
            namespaces.iter().any(|ns| place == Some(ns) || actor == Some(ns))
        })
        .cloned()
        .collect()
}

/// `prog/xdp id 42 name xdpfilt_alw_all` (or `prog/xdp id …` under `xdpgeneric`) as
/// `ip -d link show` prints it: (id, name).
fn attached_prog(ip_link: &str) -> (u64, String) {
    let words: Vec<&str> = ip_link.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| w.starts_with("prog/xdp"))
        .unwrap_or_else(|| panic!("no XDP program attached: {ip_link}"));
    assert_eq!(words[at + 1], "id", "{ip_link}");
    assert_eq!(words[at + 3], "name", "{ip_link}");
    (words[at + 2].parse().unwrap(), words[at + 4].to_string())
}

/// xdp-filter's own count of XDP_DROP (`xdp-filter status`).
fn xdp_filter_drops(status: &str) -> u64 {
    let line = status
        .lines()
        .find(|l| l.trim_start().starts_with("XDP_DROP"))
        .unwrap_or_else(|| panic!("no XDP_DROP line in xdp-filter status: {status}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The one `xdp-drop` finding on `pair`'s node device; checks what every such finding must
/// say: warning, the device, the node namespace, the program's kernel name and id, the mode,
/// the peer's flow to `port`.
fn the_xdp_drop<'a>(
    found: &'a [Value],
    pair: &Pair,
    prog: &(u64, String),
    mode: &str,
    l4: &str,
    port: Option<u16>,
) -> &'a Value {
    let all: Vec<&Value> = found.iter().collect();
    let drops: Vec<&Value> = found.iter().filter(|f| f["rule"] == "xdp-drop").collect();
    assert_eq!(drops.len(), 1, "one xdp-drop finding expected; findings:\n{}", field::describe(&all));
    let f = drops[0];
    let summary = f["summary"].as_str().unwrap();
    assert_eq!(f["severity"], "warning", "{summary}");
    assert_eq!(f["place"]["device"], pair.dev.as_str(), "{summary}");
    assert_eq!(f["place"]["netns_name"], pair.node.as_str(), "{summary}");
    for part in [prog.1.as_str(), &format!("id {}", prog.0), &format!("{mode} mode"), &pair.dev] {
        assert!(summary.contains(part), "the summary does not say {part:?}: {summary}");
    }
    let flows: Vec<&str> = f["flows"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let flow = match port {
        Some(port) => format!("{l4} {} > {}:{port}", pair.peer_ip, pair.node_ip),
        None => format!("{l4} {} > {}", pair.peer_ip, pair.node_ip),
    };
    assert!(flows.iter().any(|f| f.starts_with(&flow)), "no flow {flow} in {flows:?}");
    assert!(summary.contains(&flow), "the summary does not name the flow {flow}: {summary}");
    // The program as the kernel knows it, in the evidence (the drop events carry it).
    let evidence_prog = f["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|e| e.get("xdp").filter(|x| x.get("prog_id").is_some()))
        .unwrap_or_else(|| panic!("no drop evidence names the program: {f}"));
    assert_eq!(evidence_prog["prog_id"].as_u64(), Some(prog.0));
    assert_eq!(evidence_prog["prog_name"], prog.1.as_str());
    assert_eq!(evidence_prog["mode"], mode);
    f
}

fn xdp_filter_drops_a_port(mode: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pair = Pair::new();
    let port = random_port();
    let sent = 3 + random_u32() % 5;
    let tracer = Tracer::whole_machine();
    let (ok, out) = pair.node_sh(&format!(
        "xdp-filter load {dev} --mode {mode} && xdp-filter port {port} && ip -d link show {dev} && {send} && xdp-filter status && xdp-filter unload {dev}",
        dev = pair.dev,
        send = pair.send_udp(port, sent)
    ));
    let lines = tracer.finish();
    assert!(ok, "xdp-filter failed: {out}");
    let prog = attached_prog(&out);
    let counted = xdp_filter_drops(&out);
    assert_eq!(counted, sent as u64, "xdp-filter counted {counted} drops of the {sent} datagrams sent: {out}");
    let found = ours(&lines, &pair.namespaces());
    let f = the_xdp_drop(&found, &pair, &prog, if mode == "skb" { "generic" } else { "native" }, "udp", Some(port));
    assert_eq!(f["count"].as_u64(), Some(counted), "{}", f["summary"]);
    assert_eq!(f["actor"]["comm"], "xdp-filter", "{}", f["summary"]);
    assert!(f["summary"].as_str().unwrap().contains("attached by xdp-filter"), "{}", f["summary"]);
    // Nothing else may be an alarm.
    let others: Vec<&Value> = found.iter().filter(|f| f["rule"] != "xdp-drop").collect();
    let alarms: Vec<&Value> = others.iter().copied().filter(|f| f["severity"] != "info").collect();
    assert!(alarms.is_empty(), "other alarms:\n{}", field::describe(&alarms));
    field::record(
        "xdp-tools",
        &format!("xdp-filter load --mode {mode}, port N, UDP to N from a peer"),
        &format!(
            "warning xdp-drop naming {} (id), {} mode, the device, xdp-filter, the flow, xdp-filter's own drop count",
            prog.1,
            if mode == "skb" { "generic" } else { "native" }
        ),
    );
}

#[test]
fn xdp_filter_native_drops_are_named_by_program_device_and_flow() {
    require_root!();
    xdp_filter_drops_a_port("native");
}

#[test]
fn xdp_filter_skb_mode_drops_are_named_by_program_device_and_flow() {
    require_root!();
    xdp_filter_drops_a_port("skb");
}

/// Healthy twin: the filter is loaded and its port gets no traffic, while traffic to another
/// port (with a listener) flows through the program.
#[test]
fn xdp_filter_loaded_while_traffic_passes_raises_no_alarm() {
    require_root!();
    for mode in ["native", "skb"] {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let pair = Pair::new();
        let filtered = random_port();
        let open = if filtered == 65000 { 65001 } else { filtered + 1 + (random_u32() % 100) as u16 };
        let sent = 3 + random_u32() % 5;
        let file = format!("/tmp/dptxdp-{}-{}-recv", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        let tracer = Tracer::whole_machine();
        let (ok, out) = pair.node_sh(&format!(
            "xdp-filter load {dev} --mode {mode} && xdp-filter port {filtered} && {recv} && {send} && wait && xdp-filter status && xdp-filter unload {dev}",
            dev = pair.dev,
            recv = pair.receive_udp(open, sent, &file),
            send = pair.send_udp(open, sent)
        ));
        let lines = tracer.finish();
        let received = std::fs::read_to_string(&file).unwrap_or_default();
        let _ = std::fs::remove_file(&file);
        assert!(ok, "xdp-filter failed: {out}");
        assert_eq!(received.trim(), sent.to_string(), "the listener did not get all {sent} datagrams: {out}");
        assert_eq!(xdp_filter_drops(&out), 0, "{out}");
        let found = ours(&lines, &pair.namespaces());
        field::assert_no_alarms(&found, &format!("xdp-filter --mode {mode}, traffic to another port"));
        field::record(
            "xdp-tools",
            &format!("healthy: xdp-filter load --mode {mode}, port N, UDP to another port"),
            "healthy: no warning or error",
        );
    }
}

/// `xdp-loader load --mode native` on devices whose drivers have no native XDP.
#[test]
fn xdp_loader_native_on_a_driver_without_it_is_an_attach_failure() {
    require_root!();
    for kind in ["bridge", "vxlan"] {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let pair = Pair::new();
        let dev = format!("{}{}", &kind[..2], hex(8));
        let vni = (1 + random_u32() % 16_000_000).to_string();
        let port = random_port().to_string();
        let mut add = vec!["-n", &pair.node, "link", "add", &dev, "type", kind];
        if kind == "vxlan" {
            add.extend(["id", &vni, "dstport", &port, "dev", &pair.dev]);
        }
        sh("ip", &add);
        sh("ip", &["-n", &pair.node, "link", "set", &dev, "up"]);
        let object = format!("{OBJECTS}/xdpfilt_alw_all.o");
        let tracer = Tracer::whole_machine();
        let (ok, out) = pair.node_sh(&format!("xdp-loader load --mode native {dev} {object}"));
        let (_, status) = pair.node_sh(&format!("ip -d link show {dev}"));
        let lines = tracer.finish();
        assert!(!ok, "xdp-loader attached natively to a {kind}: {out}");
        // What the real tool says, and that it does not fall back to another mode.
        assert!(out.contains("native mode not supported"), "xdp-loader said: {out}");
        assert!(!status.contains("prog/xdp"), "something is attached after the failure: {status}");
        let found = ours(&lines, &pair.namespaces());
        let all: Vec<&Value> = found.iter().collect();
        let failed: Vec<&Value> =
            found.iter().filter(|f| f["rule"] == "xdp-attach-failed" && f["place"]["device"] == dev.as_str()).collect();
        assert_eq!(failed.len(), 1, "one xdp-attach-failed for {dev} expected:\n{}", field::describe(&all));
        let f = failed[0];
        let summary = f["summary"].as_str().unwrap();
        assert_eq!(f["severity"], "error", "{summary}");
        assert_eq!(f["actor"]["comm"], "xdp-loader", "{summary}");
        assert_eq!(f["actor"]["netns_name"], pair.node.as_str(), "{summary}");
        for part in ["xdp-loader", "native mode", &dev, "EOPNOTSUPP"] {
            assert!(summary.contains(part), "the summary does not say {part:?}: {summary}");
        }
        // The kernel's own words (extack) are in the evidence and quoted in the summary.
        let message = f["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "kernel-message")
            .and_then(|e| e["message"].as_str())
            .unwrap_or_else(|| panic!("no kernel message in the evidence: {f}"));
        assert!(message.to_lowercase().contains("native"), "{message}");
        assert!(summary.contains(message), "{summary}");
        let alarms: Vec<&Value> =
            all.iter().copied().filter(|g| g["severity"] != "info" && g["rule"] != "xdp-attach-failed").collect();
        assert!(alarms.is_empty(), "other alarms:\n{}", field::describe(&alarms));
        field::record(
            "xdp-tools",
            &format!("xdp-loader load --mode native on a {kind} (no native XDP; exits, no fallback)"),
            &format!(
                "error xdp-attach-failed naming xdp-loader, the {kind}, native mode, EOPNOTSUPP and \"{message}\""
            ),
        );

        // Healthy twin: skb mode on the same device works and raises nothing.
        let tracer = Tracer::whole_machine();
        let (ok, out) = pair.node_sh(&format!(
            "xdp-loader load --mode skb {dev} {object} && ip -d link show {dev} && xdp-loader unload {dev} --all"
        ));
        let lines = tracer.finish();
        assert!(ok, "xdp-loader --mode skb failed: {out}");
        assert!(out.contains("prog/xdp"), "nothing was attached: {out}");
        let found = ours(&lines, &pair.namespaces());
        field::assert_no_alarms(&found, &format!("xdp-loader --mode skb on a {kind}"));
        field::record(
            "xdp-tools",
            &format!("healthy: xdp-loader load --mode skb on a {kind}, unload"),
            "healthy: no warning or error",
        );
    }
}

/// `bpftool net attach` of a program that drops everything (xdp-tools' deny-all filter).
#[test]
fn bpftool_net_attach_of_a_dropping_program_is_named() {
    require_root!();
    for (attach, mode) in [("xdp", "native"), ("xdpgeneric", "generic")] {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let pair = Pair::new();
        let port = random_port();
        let sent = 3 + random_u32() % 5;
        // The deny-all filter drops ARP too: the peer gets the node's MAC by hand.
        let mac = pair_mac(&pair);
        sh("ip", &["-n", &pair.peer, "neigh", "replace", &pair.node_ip, "lladdr", &mac, "dev", &pair.peer_dev]);
        let pin = format!("/sys/fs/bpf/dpt{}", hex(8));
        let tracer = Tracer::whole_machine();
        let (ok, out) = pair.node_sh(&format!(
            "bpftool prog load {OBJECTS}/xdpfilt_dny_all.o {pin} && bpftool net attach {attach} pinned {pin} dev {dev} && ip -d link show {dev} && {send} && bpftool net detach {attach} dev {dev}",
            dev = pair.dev,
            send = pair.send_udp(port, sent)
        ));
        let lines = tracer.finish();
        assert!(ok, "bpftool failed: {out}");
        let prog = attached_prog(&out);
        let found = ours(&lines, &pair.namespaces());
        let f = the_xdp_drop(&found, &pair, &prog, mode, "udp", Some(port));
        assert_eq!(f["actor"]["comm"], "bpftool", "{}", f["summary"]);
        assert!(f["summary"].as_str().unwrap().contains("attached by bpftool"), "{}", f["summary"]);
        // Everything that reached the device was dropped: at least the datagrams sent.
        assert!(f["count"].as_u64().unwrap() >= sent as u64, "{}", f["summary"]);
        field::record(
            "bpftool",
            &format!("bpftool net attach {attach} of xdpfilt_dny_all.o, UDP from a peer"),
            &format!("warning xdp-drop naming {} (id), {mode} mode, the device, bpftool, the flow", prog.1),
        );
    }
}

/// The node device's MAC address.
fn pair_mac(pair: &Pair) -> String {
    let out = Command::new("ip").args(["-n", &pair.node, "-j", "link", "show", "dev", &pair.dev]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["address"].as_str().unwrap().to_string()
}
