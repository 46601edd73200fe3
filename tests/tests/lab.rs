//! `dptrace lab`: every scenario is diagnosed as expected and leaves nothing behind.

use std::{
    collections::BTreeSet,
    sync::{RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use dptrace_e2e::{dptrace, json_lines, namespaces_with_prefix, of_type, require_root, sh, stderr};
use serde_json::Value;

/// Every scenario, in `lab list` order.
const SCENARIOS: [&str; 14] = [
    "udp-closed-port",
    "node-icmp-blocked",
    "apiserver-rejected",
    "apiserver-down",
    "br-netfilter-off",
    "wireguard-unsupported",
    "veth-mac-rewrite",
    "link-flap",
    "xdp-native-unsupported",
    "xdp-aborted",
    "bpf-load-retry-loop",
    "vxlan-overlay",
    "vxlan-mtu",
    "wireguard-overlay",
];

/// Labs run side by side (shared) except those that must be alone (exclusive): a lab without
/// BTF cannot filter by namespace and would take another lab's drops for its own, and a
/// starting lab removes leftover namespaces of dead labs, which would hide a leak.
static LABS: RwLock<()> = RwLock::new(());

fn lab_shared() -> RwLockReadGuard<'static, ()> {
    LABS.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn lab_alone() -> RwLockWriteGuard<'static, ()> {
    LABS.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn lab_list_names_every_scenario() {
    let out = dptrace(&["lab", "list"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for name in SCENARIOS {
        assert!(text.lines().any(|l| l.split_whitespace().next() == Some(name)), "{name}: {text}");
    }
    assert_eq!(text.lines().count(), SCENARIOS.len(), "{text}");
    assert!(!text.contains("iptables-drop"), "renamed to node-icmp-blocked: {text}");
}

/// The host's br_netfilter switches (None where br_netfilter is not loaded).
fn host_bridge_sysctls() -> [Option<String>; 2] {
    ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables"]
        .map(|name| std::fs::read_to_string(format!("/proc/sys/net/bridge/{name}")).ok())
}

/// Whether a finding happened in the lab namespace of role `role` (`dptlab-<pid>-<role>`):
/// scenarios of one `--all` run have namespaces of different roles, while their addresses
/// (and namespace inodes, which the kernel reuses) may repeat.
fn in_role(f: &Value, role: &str) -> bool {
    f["place"]["netns_name"].as_str().is_some_and(|n| n.starts_with("dptlab-") && n.ends_with(&format!("-{role}")))
}

/// Whether a finding's actor ran in the lab namespace of role `role` (for findings about a
/// request that names no device, such as a failed BPF program load).
fn actor_in_role(f: &Value, role: &str) -> bool {
    f["actor"]["netns_name"].as_str().is_some_and(|n| n.starts_with("dptlab-") && n.ends_with(&format!("-{role}")))
}

/// Each interface's XDP state as `ip -d link show` prints it (the mode word and the
/// `prog/xdp id N` of each program), for the interfaces of this (the host's) namespace.
fn host_xdp_state() -> BTreeSet<String> {
    let out = std::process::Command::new("ip").args(["-d", "-o", "link", "show"]).output().expect("ip -d link show");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let name = words.get(1).copied().unwrap_or("?");
            let modes = words
                .iter()
                .skip(2)
                .filter(|w| ["xdp", "xdpgeneric", "xdpdrv", "xdpoffload", "xdpmulti"].contains(w))
                .map(|w| w.to_string());
            let progs = words.windows(3).filter(|w| w[0] == "prog/xdp").map(|w| w.join(" "));
            format!("{name} {}", modes.chain(progs).collect::<Vec<_>>().join(" "))
        })
        .collect()
}

fn of_rule_in<'a>(findings: &[&'a Value], rule: &str, role: &str) -> Vec<&'a Value> {
    findings.iter().copied().filter(|f| f["rule"] == rule && in_role(f, role)).collect()
}

fn destinations(findings: &[&Value]) -> BTreeSet<String> {
    findings.iter().filter_map(|f| f["destination"].as_str().map(str::to_string)).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn lab_run_all_diagnoses_each_scenario_and_cleans_up() {
    require_root!();
    let _lab = lab_shared();
    let host_before = host_bridge_sysctls();
    let host_xdp_before = host_xdp_state();
    // A leftover from a "crashed" run (a pid that cannot exist) must be removed.
    let stale = "dptlab-4999999-server";
    sh("ip", &["netns", "add", stale]);
    let out = dptrace(&["lab", "run", "--all", "--json"]);
    assert!(out.status.success(), "exit {:?}: {}\n{}", out.status, stderr(&out), String::from_utf8_lossy(&out.stdout));
    let lines = json_lines(&out);
    let results = of_type(&lines, "lab-result");
    assert_eq!(results.len(), SCENARIOS.len(), "{lines:#?}");
    for (r, name) in results.iter().zip(SCENARIOS) {
        assert_eq!(r["scenario"], name, "{r}");
        // A scenario may only be skipped when this kernel cannot show its failure, and says why.
        assert!(r["diagnosed"] == true || r["skipped"] == true, "{r}");
        if r["skipped"] == true {
            let why = r["problems"][0].as_str().unwrap_or_default();
            assert!(!why.is_empty(), "skipped without a reason: {r}");
            eprintln!("SKIPPED {name}: {why}");
        }
    }
    let result = |name: &str| *results.iter().find(|r| r["scenario"] == name).unwrap();
    let findings = of_type(&lines, "finding");

    // UDP to a closed port: the server's stack answers.
    let no_listener = of_rule_in(&findings, "no-listener", "server");
    assert_eq!(no_listener.len(), 2, "IPv4 and IPv6: {findings:#?}");
    assert!(no_listener.iter().all(|f| f["evidence"][0]["reason"] == "NO_SOCKET" && f["place"]["device"] == "s0"));

    // Field report 2, ping: an iptables (nf_tables backend) INPUT rule drops ICMP echo.
    let icmp = of_rule_in(&findings, "netfilter-drop", "cplane");
    assert_eq!(icmp.len(), 2, "IPv4 and IPv6: {findings:#?}");
    assert_eq!(destinations(&icmp), set(&["10.250.0.2", "fd00:250::2"]), "{icmp:#?}");
    assert!(icmp.iter().any(|f| f["flows"][0].as_str().unwrap().starts_with("icmpv6 ")));
    for f in &icmp {
        let nf = &f["netfilter"];
        assert_eq!(nf["backend"], "iptables-nft", "{f}");
        assert_eq!(nf["table"], "filter", "{f}");
        assert_eq!(nf["chain"], "INPUT", "{f}");
        assert_eq!(nf["hook"], "input", "{f}");
        assert_eq!(nf["verdict"], "drop", "{f}");
        assert!(nf["rule"].as_str().is_some_and(|r| r.contains("-j DROP")), "{f}");
    }

    // Field report 2, "connection refused" on :6443, three causes told apart. A REJECT rule:
    let rejected = of_rule_in(&findings, "reject-by-rule", "api-fw");
    assert_eq!(destinations(&rejected), set(&["10.250.0.2", "fd00:250::2"]), "{findings:#?}");
    for f in &rejected {
        let nf = &f["netfilter"];
        assert_eq!(nf["verdict"], "reject", "{f}");
        assert_eq!(nf["backend"], "nftables", "{f}");
        assert_eq!(nf["family"], "inet", "{f}");
        assert_eq!(nf["table"], "dptlab", "{f}");
        assert_eq!(nf["chain"], "input", "{f}");
    }
    assert!(of_rule_in(&findings, "no-listener", "api-fw").is_empty(), "the rule sent the RST: {findings:#?}");
    // ... nothing listening (no rule involved):
    let down = of_rule_in(&findings, "no-listener", "api-down");
    assert_eq!(destinations(&down), set(&["10.250.0.2", "fd00:250::2"]), "{findings:#?}");
    assert!(down.iter().all(|f| f["flows"]
        .as_array()
        .unwrap()
        .iter()
        .any(|fl| fl.as_str().unwrap().ends_with(":6443"))));
    for rule in ["reject-by-rule", "netfilter-drop"] {
        assert!(of_rule_in(&findings, rule, "api-down").is_empty(), "no rule is involved: {findings:#?}");
    }

    // Field report 3: br_netfilter off, a Service call between pods on one bridge.
    if result("br-netfilter-off")["diagnosed"] == true {
        let bypass = of_rule_in(&findings, "bridge-bypasses-netfilter", "node");
        assert!(bypass.iter().all(|f| f["place"]["device"] == "cni0"), "{bypass:#?}");
        let mut vips = set(&["10.96.0.10", "fd00:96::10"]);
        if stderr(&out).contains("no IPv6 NAT on this kernel") {
            vips.remove("fd00:96::10");
        }
        assert!(destinations(&bypass).is_superset(&vips), "{bypass:#?}");
        let missing = of_rule_in(&findings, "br-netfilter-missing", "node");
        assert!(missing.iter().any(|f| f["place"]["device"] == "cni0"), "{findings:#?}");
    }
    // The lab turns br_netfilter off in its node's namespace only.
    assert_eq!(host_bridge_sysctls(), host_before, "the host's net.bridge.bridge-nf-call-* changed");

    // Field report 5: the creator and the rewriting actor are both named.
    let mac = findings.iter().find(|f| f["rule"] == "veth-mac-changed").expect("veth-mac-changed");
    assert_eq!(mac["actor"]["comm"], "systemd-udevd");
    assert!(mac["summary"].as_str().unwrap().contains("created by bridge"), "{mac}");
    assert!(mac["evidence"].as_array().unwrap().iter().any(|e| e["kind"] == "link-state"), "{mac}");
    let flap = findings.iter().find(|f| f["rule"] == "link-flapping").expect("link-flapping");
    assert_eq!(flap["actor"]["comm"], "crio-cni");
    // Field report 1, where this kernel lacks WireGuard.
    if result("wireguard-unsupported")["diagnosed"] == true {
        let f = findings.iter().find(|f| f["rule"] == "link-kind-unsupported").expect("link-kind-unsupported");
        assert_eq!(f["actor"]["comm"], "flanneld");
        assert_eq!(f["place"]["device"], "flannel-wg");
    }

    // Field report 4, XDP. Native XDP asked for on a bridge, whose driver has none, 3 times:
    if result("xdp-native-unsupported")["diagnosed"] == true {
        let failed = of_rule_in(&findings, "xdp-attach-failed", "xdp-nodrv");
        let f = failed.iter().find(|f| f["actor"]["comm"] == "calico-node").expect("calico-node's attach");
        assert_eq!(f["place"]["device"], "br-uplink", "{f}");
        assert!(f["summary"].as_str().unwrap().contains("native"), "{f}");
    }
    // ... a program returning XDP_ABORTED on the server's veth, 4 pings over IPv4 and IPv6 each:
    if result("xdp-aborted")["diagnosed"] == true {
        let aborted = of_rule_in(&findings, "xdp-aborted", "xdp-host");
        assert!(
            aborted.iter().any(|f| f["place"]["device"] == "s0" && f["count"].as_u64().is_some_and(|n| n >= 8)),
            "{aborted:#?}"
        );
        assert!(of_rule_in(&findings, "xdp-aborted", "xdp-peer").is_empty(), "the client has no XDP: {findings:#?}");
    }
    // ... and a loader retrying a program the verifier rejects, 4 times:
    if result("bpf-load-retry-loop")["diagnosed"] == true {
        let f = findings
            .iter()
            .find(|f| f["rule"] == "xdp-attach-failed" && f["actor"]["comm"] == "calico-felix")
            .expect("calico-felix's load");
        assert!(actor_in_role(f, "bpf-retry") || in_role(f, "bpf-retry"), "{f}");
        assert!(f["count"].as_u64().is_some_and(|n| n >= 4), "{f}");
        assert!(f["summary"].as_str().unwrap().to_lowercase().contains("load"), "{f}");
    }
    // Every XDP program the lab attached was inside its namespaces.
    assert_eq!(host_xdp_state(), host_xdp_before, "the XDP state of a host interface changed");

    assert!(stderr(&out).contains("left behind") || namespaces_with_prefix(stale).is_empty());
    assert!(
        namespaces_with_prefix(&format!("dptlab-{}", "")).iter().all(|n| !n.starts_with("dptlab-4999999")),
        "stale namespace left"
    );
}

/// The XDP scenarios reproduce the kernel's own failures, whatever dptrace makes of them:
/// what the agents saw (stderr) is the kernel's extended ack, the verifier's reason, and the
/// aborting program attached to the lab's veth.
#[test]
fn xdp_scenarios_reproduce_the_kernel_failures() {
    require_root!();
    let _lab = lab_shared();
    let host_xdp_before = host_xdp_state();
    let out = dptrace(&["lab", "run", "xdp-native-unsupported", "xdp-aborted", "bpf-load-retry-loop", "--json"]);
    let lines = json_lines(&out);
    let results = of_type(&lines, "lab-result");
    assert_eq!(results.len(), 3, "{}\n{lines:#?}", stderr(&out));
    let err = stderr(&out);
    let expect = [
        ("xdp-native-unsupported", "calico-node: `calico-node link set dev br-uplink xdpdrv obj "),
        ("xdp-native-unsupported", "Error: Underlying driver does not support XDP in native mode. (3 of 3 attempts)"),
        ("xdp-aborted", "s0 now has xdp prog/xdp id "),
        ("xdp-aborted", " name lab_xdp_aborted "),
        ("bpf-load-retry-loop", "calico-felix: `calico-felix link set dev eth0 xdpgeneric obj "),
        ("bpf-load-retry-loop", "BPF program load failed: Permission denied"),
        ("bpf-load-retry-loop", "verifier: invalid bpf_context access off=400 size=4 (4 of 4 attempts)"),
    ];
    for (scenario, text) in expect {
        let r = results.iter().find(|r| r["scenario"] == scenario).unwrap();
        if r["skipped"] == true {
            eprintln!("SKIPPED {scenario}: {}", r["problems"][0]);
            continue;
        }
        assert!(err.contains(text), "{scenario}: `{text}` not in:\n{err}");
    }
    assert_eq!(host_xdp_state(), host_xdp_before, "the XDP state of a host interface changed");
}

#[test]
fn lab_rejects_unknown_scenarios() {
    let out = dptrace(&["lab", "run", "no-such-scenario"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown lab scenario `no-such-scenario`"), "{}", stderr(&out));
}

#[test]
fn lab_interrupted_by_sigterm_removes_its_namespaces() {
    require_root!();
    let _lab = lab_alone();
    let child = std::process::Command::new(dptrace_e2e::dptrace_bin())
        .args(["lab", "run", "--all"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let prefix = format!("dptlab-{}-", child.id());
    // Wait until the lab has built its first namespaces, then interrupt it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while namespaces_with_prefix(&prefix).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    sh("kill", &["-TERM", &child.id().to_string()]);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("SIGTERM"), "{}", stderr(&out));
    assert!(namespaces_with_prefix(&prefix).is_empty(), "left behind: {:?}", namespaces_with_prefix(&prefix));
}

/// Without BTF (pretended with DPTRACE_BTF=none; the VM matrix has a real no-BTF kernel) the
/// drop scenario is still diagnosed, with an honest note on what is missing.
#[test]
fn without_btf_the_drop_scenario_is_still_diagnosed() {
    require_root!();
    let _lab = lab_alone();
    let out = dptrace_e2e::dptrace_env(&[("DPTRACE_BTF", "none")], &["lab", "run", "udp-closed-port", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    assert_eq!(of_type(&lines, "lab-result")[0]["diagnosed"], true);
    let finding = of_type(&lines, "finding").into_iter().find(|f| f["rule"] == "no-listener").expect("no-listener");
    assert!(finding["summary"].as_str().unwrap().contains("no BTF"), "{finding}");
    assert!(stderr(&out).contains("no BTF"), "the degraded mode must be said: {}", stderr(&out));

    let check = dptrace_e2e::dptrace_env(&[("DPTRACE_BTF", "none")], &["check", "--json"]);
    let report = json_lines(&check).into_iter().find(|v| v["type"] == "check").unwrap();
    assert_eq!(report["kernel"]["btf"], false);
    let gaps = report["hooks"][0]["coverage"]["gaps"].as_array().unwrap();
    assert!(gaps.iter().any(|g| g.as_str().unwrap().contains("no kernel BTF")), "{gaps:?}");
}

/// `--backend links=tracepoints-noextack` behaves like a kernel before 4.16 (no extended
/// ack): field report 1 is still diagnosed, from the errno alone.
#[test]
fn without_extack_link_failures_are_still_diagnosed() {
    require_root!();
    let _lab = lab_shared();
    let out = dptrace(&["lab", "run", "wireguard-unsupported", "--json", "--backend", "links=tracepoints-noextack"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    let result = of_type(&lines, "lab-result")[0];
    if result["skipped"] == true {
        eprintln!("SKIPPED: this kernel has WireGuard");
        return;
    }
    assert_eq!(result["diagnosed"], true, "{result}");
    let f = of_type(&lines, "finding").into_iter().find(|f| f["rule"] == "link-kind-unsupported").unwrap();
    assert!(!f["summary"].as_str().unwrap().contains("kernel says"), "{f}");
    assert!(f["evidence"].as_array().unwrap().iter().all(|e| e["kind"] != "kernel-message"), "{f}");
}

/// Acceptance of the path family: a ping from a pod on node A to a pod on node B across the
/// VXLAN overlay, hop by hop in JSON with outer and inner tuples, VNI and per-hop latency;
/// and the MTU scenario flagged with both MTUs.
#[test]
fn vxlan_overlay_paths_in_json() {
    require_root!();
    let _lab = lab_shared();
    let out = dptrace(&["lab", "run", "vxlan-overlay", "vxlan-mtu", "--json", "--verbose"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    let paths: Vec<&Value> = of_type(&lines, "event").into_iter().filter(|e| e["kind"] == "packet-path").collect();
    let in_role_ns = |hop: &Value, role: &str| hop["netns_name"].as_str().is_some_and(|n| n.ends_with(role));
    let request = paths
        .iter()
        .find(|p| {
            p["flow"]["dst"] == "10.244.2.2"
                && p["outcome"] == "delivered"
                && p["steps"][0]["netns_name"].as_str().is_some_and(|n| n.ends_with("-vxlan-pod-a"))
        })
        .unwrap_or_else(|| panic!("no delivered pod-a → pod-b path: {paths:#?}"));
    let steps: Vec<&Value> = request["steps"].as_array().unwrap().iter().filter(|s| s["hook"] != "function").collect();
    // The encapsulated hop on node A's uplink: outer node → node UDP to 8472, VNI 1, inner pod → pod.
    let uplink = steps
        .iter()
        .find(|s| s["hook"] == "transmit" && s["device"] == "eth0" && in_role_ns(s, "-vxlan-node-a"))
        .unwrap_or_else(|| panic!("no tx on node-a's eth0: {request:#}"));
    assert_eq!(uplink["outer"]["src"], "192.168.50.1", "{uplink:#}");
    assert_eq!(uplink["outer"]["dst"], "192.168.50.2");
    assert_eq!(uplink["outer"]["l4"], "udp");
    assert_eq!(uplink["outer"]["dport"], 8472);
    assert_eq!(uplink["tunnel"]["kind"], "vxlan");
    assert_eq!(uplink["tunnel"]["vni"], 1);
    assert_eq!(uplink["inner"]["src"], "10.244.1.2");
    assert_eq!(uplink["inner"]["dst"], "10.244.2.2");
    assert_eq!(uplink["inner"]["l4"], "icmp");
    // Decapsulated on node B: the flannel.1 hop carries the pod packet as its outer header.
    let decap = steps
        .iter()
        .find(|s| s["hook"] == "receive" && s["device"] == "flannel.1" && in_role_ns(s, "-vxlan-node-b"))
        .unwrap_or_else(|| panic!("no rx on node-b's flannel.1: {request:#}"));
    assert_eq!(decap["outer"]["src"], "10.244.1.2");
    assert!(decap["tunnel"].is_null());
    // Per-hop latency: every hop after the first has a delay, and they add up.
    let sum: u64 = request["steps"].as_array().unwrap().iter().map(|s| s["since_previous_ns"].as_u64().unwrap()).sum();
    assert_eq!(sum, request["total_ns"].as_u64().unwrap());
    assert!(steps.len() >= 10, "{request:#}");
    let mtu = of_type(&lines, "finding")
        .into_iter()
        .find(|f| f["rule"] == "tunnel-mtu-exceeded")
        .unwrap_or_else(|| panic!("no tunnel-mtu-exceeded finding"));
    let summary = mtu["summary"].as_str().unwrap();
    for needle in ["flannel.1", "1450", "1500", "10.244.2.2"] {
        assert!(summary.contains(needle), "{needle} missing in {summary}");
    }
    assert!(in_role(mtu, "vxmtu-node-a"), "{mtu:#}");
    assert_eq!(mtu["place"]["device"], "cni0");
    let results = of_type(&lines, "lab-result");
    assert!(results.iter().all(|r| r["diagnosed"] == true), "{results:#?}");
}
