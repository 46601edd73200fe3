//! `dptrace lab`: every scenario is diagnosed as expected and leaves nothing behind.

use std::{
    collections::BTreeSet,
    sync::{RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use dptrace_e2e::{
    current_test, dptrace, json_lines, namespaces_with_prefix, of_type, record_skip, require_root, sh, stderr,
};
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

/// The keys every `lab-result` has (the VM matrix reads them): `diagnosed` true only when
/// every check that could be made passed, `degraded` always, `unchecked` (what could not be
/// checked here and why) non-empty exactly when degraded, `problems` empty exactly when
/// diagnosed; a skipped scenario names the fact of the machine behind it (`skip_fact`).
fn assert_result_contract(r: &Value) {
    assert!(r["diagnosed"].is_boolean(), "{r}");
    assert!(r["degraded"].is_boolean(), "{r}");
    let unchecked = r["unchecked"].as_array().unwrap_or_else(|| panic!("no `unchecked` array: {r}"));
    assert!(unchecked.iter().all(|u| u.as_str().is_some_and(|u| !u.is_empty())), "{r}");
    assert_eq!(r["degraded"] == true, !unchecked.is_empty(), "degraded exactly when something was not checked: {r}");
    let problems = r["problems"].as_array().unwrap_or_else(|| panic!("no `problems` array: {r}"));
    assert_eq!(r["diagnosed"] == true, problems.is_empty(), "{r}");
    if r["skipped"] == true {
        assert_eq!(r["diagnosed"], false, "{r}");
        assert_eq!(r["degraded"], false, "{r}");
        assert!(r["skip_fact"].as_str().is_some_and(|f| !f.is_empty()), "a skip names its fact: {r}");
        assert!(problems[0].as_str().is_some_and(|p| !p.is_empty()), "skipped without a reason: {r}");
    } else {
        assert!(r.get("skip_fact").is_none(), "{r}");
    }
}

/// Records a skipped scenario as a skip of part of the running test (`test/scenario`), with
/// the scenario's fact id as the reason: `cargo xtask test` checks the fact and decides.
fn record_scenario_skip(r: &Value) {
    let scenario = r["scenario"].as_str().unwrap_or("?");
    let fact = r["skip_fact"].as_str().unwrap_or_default();
    let why = r["problems"][0].as_str().unwrap_or_default();
    record_skip(&format!("{}/{scenario}", current_test()), fact, why);
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
    let kernel_btf = std::path::Path::new("/sys/kernel/btf/vmlinux").exists();
    for (r, name) in results.iter().zip(SCENARIOS) {
        assert_eq!(r["scenario"], name, "{r}");
        assert_result_contract(r);
        // A scenario may only be skipped when this machine cannot show its failure, and says
        // which fact of the machine that is: the skip is recorded, `cargo xtask test` judges it.
        assert!(r["diagnosed"] == true || r["skipped"] == true, "{r}");
        if r["skipped"] == true {
            record_scenario_skip(r);
        } else if kernel_btf {
            // With BTF everything the full checks ask for is visible: nothing is degraded.
            assert_eq!(r["degraded"], false, "{r}");
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
    for r in &results {
        assert_result_contract(r);
        if r["skipped"] == true {
            record_scenario_skip(r);
        }
    }
    for (scenario, text) in expect {
        let r = results.iter().find(|r| r["scenario"] == scenario).unwrap();
        if r["skipped"] == true {
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
/// drop scenario is still diagnosed, degraded, with an honest note on what is missing.
#[test]
fn without_btf_the_drop_scenario_is_still_diagnosed() {
    require_root!();
    let _lab = lab_alone();
    let out = dptrace_e2e::dptrace_env(&[("DPTRACE_BTF", "none")], &["lab", "run", "udp-closed-port", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    let result = of_type(&lines, "lab-result")[0];
    assert_result_contract(result);
    assert_eq!(result["diagnosed"], true, "{result}");
    assert_eq!(result["degraded"], true, "{result}");
    let unchecked: Vec<&str> = result["unchecked"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(unchecked.iter().any(|u| u.contains("namespace and device") && u.contains("no BTF")), "{result}");
    let finding = of_type(&lines, "finding").into_iter().find(|f| f["rule"] == "no-listener").expect("no-listener");
    assert!(finding["summary"].as_str().unwrap().contains("no BTF"), "{finding}");
    assert!(stderr(&out).contains("no BTF"), "the degraded mode must be said: {}", stderr(&out));
    assert!(stderr(&out).contains("degraded: "), "the degraded mode must be said: {}", stderr(&out));
    // And in text: what was not checked.
    let text = dptrace_e2e::dptrace_env(&[("DPTRACE_BTF", "none")], &["lab", "run", "udp-closed-port"]);
    let said = String::from_utf8_lossy(&text.stdout);
    assert!(
        said.contains("=> udp-closed-port: diagnosed as no-listener (degraded: not checked: namespace and device"),
        "{said}"
    );

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
    assert_result_contract(result);
    if result["skipped"] == true {
        let fact = result["skip_fact"].as_str().unwrap_or_default();
        dptrace_e2e::skip!(fact, "wireguard-unsupported: {}", result["problems"][0].as_str().unwrap_or_default());
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

/// Sends UDP datagrams from this (the test) process to closed ports on the host's loopback,
/// IPv4 and IPv6, every 10 ms until dropped: the kernel drops them with NO_SOCKET in
/// `__udp4_lib_rcv` and `__udp6_lib_rcv`, as it drops udp-closed-port's datagrams. Without
/// BTF only the sending task tells them apart (their ports and addresses are not shown).
struct ForeignFlood {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ForeignFlood {
    /// The comm of the sending thread, as drops show it.
    const THREAD: &'static str = "foreign-flood";

    fn start() -> Self {
        use std::net::UdpSocket;
        // Ports nothing listens on: bound for a moment by the kernel's choice, then released.
        let closed = |any: &str| UdpSocket::bind(any).and_then(|s| s.local_addr()).expect("a free UDP port");
        let targets = [closed("127.0.0.1:0"), closed("[::1]:0")];
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name(Self::THREAD.into())
            .spawn(move || {
                let v4 = UdpSocket::bind("127.0.0.1:0").unwrap();
                let v6 = UdpSocket::bind("[::1]:0").unwrap();
                while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    // The ICMP port unreachable that answers each makes the next send fail
                    // with ECONNREFUSED on some kernels: not a problem, the drop happened.
                    let _ = v4.send_to(b"not the lab's", targets[0]);
                    let _ = v6.send_to(b"not the lab's", targets[1]);
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            })
            .unwrap();
        Self { stop, thread: Some(thread) }
    }

    /// Whether `event` is a drop of these datagrams.
    fn dropped(event: &Value) -> bool {
        event["type"] == "event"
            && event["kind"] == "drop"
            && event["reason"] == "NO_SOCKET"
            && event["task"]["pid"] == std::process::id()
    }
}

impl Drop for ForeignFlood {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Once namespace `netns` exists, adds a real nftables rule there (its own table) that drops
/// UDP to `port`, IPv4 and IPv6. Returns how long after the call it was in place.
fn block_udp_port_once_created(
    netns: &str,
    port: u16,
    deadline: std::time::Duration,
) -> Result<std::time::Duration, String> {
    let started = std::time::Instant::now();
    let ruleset = format!(
        "add table inet dpte2e-block; \
         add chain inet dpte2e-block input {{ type filter hook input priority 0; policy accept; }}; \
         add rule inet dpte2e-block input udp dport {port} drop"
    );
    let mut last = String::new();
    while started.elapsed() < deadline {
        if std::path::Path::new("/run/netns").join(netns).exists() {
            // Until `ip netns add` has bind-mounted the namespace, entering it fails: retry.
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", netns, "nft", &ruleset])
                .output()
                .map_err(|e| format!("ip netns exec … nft: {e}"))?;
            if out.status.success() {
                return Ok(started.elapsed());
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    Err(format!("{netns} never appeared, or the rule could not be added: {last}"))
}

/// What each scenario's result is with DPTRACE_BTF=none on this kernel, where the full check
/// of the scenario does not need BTF (`full`), where a degraded check diagnoses it, and where
/// no diagnosis is possible without BTF.
const FULL_WITHOUT_BTF: [&str; 3] = ["veth-mac-rewrite", "link-flap", "bpf-load-retry-loop"];
const DEGRADED_WITHOUT_BTF: [&str; 7] = [
    "node-icmp-blocked",
    "apiserver-rejected",
    "apiserver-down",
    "wireguard-unsupported",
    "xdp-native-unsupported",
    "xdp-aborted",
    "vxlan-mtu",
];
const UNDIAGNOSABLE_WITHOUT_BTF: [&str; 1] = ["br-netfilter-off"];

/// The acceptance of issue 17: `dptrace lab run --all --json` without BTF marks the degraded
/// scenarios and still fails a scenario whose own traffic was not seen.
///
/// Without BTF drops carry no namespace, device or addresses, so a degraded check ties the
/// finding to the scenario's own traffic (the lab's traffic thread, pid and comm, during the
/// trigger); a finding of the right rule caused by anything else on the node must not pass
/// it. Provoked with real traffic and a real firewall, no test hook in dptrace: this test
/// process sends UDP to closed ports of the host ([`ForeignFlood`]) all along, drops the kernel
/// makes exactly like udp-closed-port's. In the `--all` run, as soon as udp-closed-port's
/// server namespace exists (its session, let alone its traffic, starts a good 100 ms later)
/// the test adds an nftables rule there that drops UDP to the scenario's port: the scenario's
/// own datagrams never reach the closed port (NETFILTER_DROP instead of NO_SOCKET) while the
/// foreign ones still show the `no-listener` drops. The lab must say `"diagnosed": false` and
/// why (the escape hatch this replaces took the foreign drops for the scenario's). Should the
/// rule come too late (the scenario's own NO_SOCKET drops are in the trace), the run is
/// repeated. The healthy twin, same flood and no rule, is diagnosed, degraded, with what it
/// could not check.
#[test]
fn without_btf_a_scenario_whose_own_traffic_is_not_seen_is_not_diagnosed() {
    require_root!();
    let _lab = lab_alone();
    let _flood = ForeignFlood::start();
    let no_btf = [("DPTRACE_BTF", "none")];

    // The healthy twin, amid the foreign drops.
    let out = dptrace_e2e::dptrace_env(&no_btf, &["lab", "run", "udp-closed-port", "--json", "--verbose"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    assert!(lines.iter().any(ForeignFlood::dropped), "the foreign drops were not traced: {}", stderr(&out));
    let twin = of_type(&lines, "lab-result")[0];
    assert_result_contract(twin);
    assert_eq!(twin["diagnosed"], true, "{twin}");
    assert_eq!(twin["degraded"], true, "{twin}");

    // The provoked run.
    const PORT: u16 = 9999;
    for attempt in 1..=3 {
        let child = std::process::Command::new(dptrace_e2e::dptrace_bin())
            .envs(no_btf)
            .args(["lab", "run", "--all", "--json", "--verbose"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let lab_pid = child.id();
        let server = format!("dptlab-{lab_pid}-server");
        let blocker =
            std::thread::spawn(move || block_udp_port_once_created(&server, PORT, std::time::Duration::from_secs(30)));
        let out = child.wait_with_output().unwrap();
        let blocked = blocker.join().unwrap().unwrap_or_else(|e| panic!("{e}\n{}", stderr(&out)));
        let lines = json_lines(&out);
        let results = of_type(&lines, "lab-result");
        assert_eq!(results.len(), SCENARIOS.len(), "{}", stderr(&out));
        // udp-closed-port runs first: its events come before the first result.
        let first = lines.iter().position(|v| v["type"] == "lab-result").unwrap();
        let own: Vec<&Value> = lines[..first]
            .iter()
            .filter(|v| v["kind"] == "drop" && v["task"]["pid"] == lab_pid && v["task"]["comm"] == "lab-client")
            .collect();
        if own.iter().any(|d| d["reason"] == "NO_SOCKET") {
            eprintln!("attempt {attempt}: the rule came {blocked:?} after the namespace, too late; again");
            continue;
        }
        assert!(own.iter().any(|d| d["reason"] == "NETFILTER_DROP"), "the rule did not drop the datagrams: {own:#?}");
        assert!(lines[..first].iter().any(ForeignFlood::dropped), "no foreign drops during udp-closed-port");

        assert_eq!(out.status.code(), Some(1), "a scenario was not diagnosed: {}", stderr(&out));
        for r in &results {
            assert_result_contract(r);
        }
        let result = |name: &str| *results.iter().find(|r| r["scenario"] == name).unwrap();

        let provoked = result("udp-closed-port");
        assert_eq!(provoked["diagnosed"], false, "{provoked}");
        assert_eq!(provoked["degraded"], true, "{provoked}");
        let problems: Vec<&str> = provoked["problems"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        for (protocol, function) in [("ipv4", "__udp4_lib_rcv"), ("ipv6", "__udp6_lib_rcv")] {
            let why = problems
                .iter()
                .find(|p| p.contains(&format!("showed no NO_SOCKET drop of {protocol} traffic at {function}")))
                .unwrap_or_else(|| panic!("no problem about the {protocol} drops: {provoked}"));
            assert!(why.contains(&format!("lab-client of the lab (pid {lab_pid})")), "{why}");
            assert!(why.contains("NETFILTER_DROP"), "what happened to its traffic: {why}");
            assert!(why.contains("not from this scenario"), "the foreign drops are named as such: {why}");
        }

        for name in FULL_WITHOUT_BTF {
            let r = result(name);
            if r["skipped"] != true {
                assert_eq!((&r["diagnosed"], &r["degraded"]), (&Value::Bool(true), &Value::Bool(false)), "{r}");
            }
        }
        for name in DEGRADED_WITHOUT_BTF {
            let r = result(name);
            if r["skipped"] != true {
                assert_eq!((&r["diagnosed"], &r["degraded"]), (&Value::Bool(true), &Value::Bool(true)), "{r}");
            }
        }
        for name in UNDIAGNOSABLE_WITHOUT_BTF {
            let r = result(name);
            if r["skipped"] != true {
                assert_eq!((&r["diagnosed"], &r["degraded"]), (&Value::Bool(false), &Value::Bool(true)), "{r}");
                assert!(r["problems"][0].as_str().unwrap().contains("cannot be diagnosed on this kernel"), "{r}");
            }
        }
        for r in results.iter().filter(|r| r["skipped"] == true) {
            // Path demonstrations cannot follow packets without BTF: pretended here, so the
            // fact is not this machine's and not a skip of this test.
            if r["skip_fact"] == "no-kernel-btf" {
                assert_eq!(r["expected_rule"], "path", "{r}");
            } else {
                record_scenario_skip(r);
            }
        }
        assert_eq!(result("vxlan-overlay")["skipped"], true);
        return;
    }
    panic!("in 3 attempts the firewall rule never came before udp-closed-port's traffic");
}
