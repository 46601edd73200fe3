//! `dptrace lab`: every scenario is diagnosed as expected and leaves nothing behind.

use dptrace_e2e::{dptrace, json_lines, namespaces_with_prefix, of_type, require_root, sh, stderr};

#[test]
fn lab_list_names_every_scenario() {
    let out = dptrace(&["lab", "list"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for name in ["udp-closed-port", "iptables-drop", "wireguard-unsupported", "veth-mac-rewrite", "link-flap"] {
        assert!(text.contains(name), "{text}");
    }
}

#[test]
fn lab_run_all_diagnoses_each_scenario_and_cleans_up() {
    require_root!();
    // A leftover from a "crashed" run (a pid that cannot exist) must be removed.
    let stale = "dptlab-4999999-server";
    sh("ip", &["netns", "add", stale]);
    let out = dptrace(&["lab", "run", "--all", "--json"]);
    assert!(out.status.success(), "exit {:?}: {}\n{}", out.status, stderr(&out), String::from_utf8_lossy(&out.stdout));
    let lines = json_lines(&out);
    let results = of_type(&lines, "lab-result");
    assert_eq!(results.len(), 5, "{lines:#?}");
    for r in &results {
        // A scenario may only be skipped when this kernel cannot show its failure.
        assert!(r["diagnosed"] == true || r["skipped"] == true, "{r}");
    }
    let findings = of_type(&lines, "finding");
    let no_listener: Vec<_> = findings.iter().filter(|f| f["rule"] == "no-listener").collect();
    assert_eq!(no_listener.len(), 2, "IPv4 and IPv6: {findings:#?}");
    assert!(no_listener.iter().all(|f| f["evidence"][0]["reason"] == "NO_SOCKET" && f["place"]["device"] == "s0"));
    let netfilter: Vec<_> = findings.iter().filter(|f| f["rule"] == "netfilter-drop").collect();
    assert_eq!(netfilter.len(), 2, "IPv4 and IPv6: {findings:#?}");
    assert!(netfilter.iter().any(|f| f["flows"][0].as_str().unwrap().starts_with("icmpv6 ")));
    // Field report 5: the creator and the rewriting actor are both named.
    let mac = findings.iter().find(|f| f["rule"] == "veth-mac-changed").expect("veth-mac-changed");
    assert_eq!(mac["actor"]["comm"], "systemd-udevd");
    assert!(mac["summary"].as_str().unwrap().contains("created by bridge"), "{mac}");
    assert!(mac["evidence"].as_array().unwrap().iter().any(|e| e["kind"] == "link-state"), "{mac}");
    let flap = findings.iter().find(|f| f["rule"] == "link-flapping").expect("link-flapping");
    assert_eq!(flap["actor"]["comm"], "crio-cni");
    // Field report 1, where this kernel lacks WireGuard.
    let wg = results.iter().find(|r| r["scenario"] == "wireguard-unsupported").unwrap();
    if wg["diagnosed"] == true {
        let f = findings.iter().find(|f| f["rule"] == "link-kind-unsupported").expect("link-kind-unsupported");
        assert_eq!(f["actor"]["comm"], "flanneld");
        assert_eq!(f["place"]["device"], "flannel-wg");
    }
    assert!(stderr(&out).contains("left behind") || namespaces_with_prefix(stale).is_empty());
    assert!(
        namespaces_with_prefix(&format!("dptlab-{}", "")).iter().all(|n| !n.starts_with("dptlab-4999999")),
        "stale namespace left"
    );
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
