//! `dptrace check`: every backend and feature it reports is consistent with the problems it
//! lists and with its exit status, on whatever kernel runs the test; capabilities come from
//! probes, not version numbers, and the probes leave nothing behind.

mod support;

use std::time::{Duration, Instant};

use dptrace_e2e::{dptrace, json_lines, namespaces_with_prefix, require_root, stderr};
use serde_json::Value;

fn check_report() -> (Value, i32) {
    let out = dptrace(&["check", "--json"]);
    let code = out.status.code().unwrap_or(-1);
    assert!(code == 0 || code == 1, "check must exit 0 or 1: {}", stderr(&out));
    let report = json_lines(&out).into_iter().find(|v| v["type"] == "check").expect("a check object");
    (report, code)
}

#[test]
fn problems_explain_every_missing_backend_and_feature() {
    require_root!();
    let (report, code) = check_report();
    let problems = report["problems"].as_array().unwrap();
    let has_problem = |feature: &str| problems.iter().any(|p| p["feature"] == feature);
    for p in problems {
        assert!(["error", "warning", "info"].contains(&p["severity"].as_str().unwrap()), "{p}");
        assert!(!p["summary"].as_str().unwrap().is_empty() && !p["remediation"].as_str().unwrap().is_empty(), "{p}");
    }
    // Exit 1 exactly when something is worse than info.
    let failing = problems.iter().any(|p| p["severity"] != "info");
    assert_eq!(code, i32::from(failing), "{problems:#?}");

    let backends = report["backends"].as_array().unwrap();
    let available = |name: &str| backends.iter().any(|b| b["backend"] == name && b["available"] == true);
    assert_eq!(!available("kprobe"), has_problem("kprobes"), "kprobes: {backends:#?}");
    assert_eq!(!available("fentry"), has_problem("fentry"), "fentry: {backends:#?}");
    if !std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        assert!(!available("kprobe"), "no kprobe PMU, yet check says kprobes attach");
    }
    assert_eq!(report["hooks"][0]["family"], "drops");

    let kinds = report["features"]["link_kinds"].as_array().unwrap();
    for kind in ["veth", "bridge", "vxlan", "wireguard", "geneve"] {
        let k = kinds.iter().find(|k| k["kind"] == kind).unwrap_or_else(|| panic!("{kind} not probed"));
        if k["supported"] == "no" {
            assert!(has_problem(&format!("link-kind:{kind}")), "{kind} missing but no problem");
            assert!(k["errno"].is_string(), "{k}");
        }
    }
    assert!(kinds.iter().any(|k| k["kind"] == "veth" && k["supported"] == "yes"), "veth must work here");
    assert!(namespaces_with_prefix("dptcheck").is_empty());
}

#[test]
fn text_report_names_backends_and_features() {
    require_root!();
    let out = dptrace(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "hook families",
        "* drops     tracepoint",
        "netfilter tracepoints",
        "CNI features",
        "link kind wireguard",
        "br_netfilter",
        "ip_forward",
    ] {
        assert!(text.contains(needle), "`{needle}` missing in:\n{text}");
    }
}

/// The host namespace's link names (`ip -o link`), for leftovers of the probes.
fn host_link_names() -> Vec<String> {
    let out = std::process::Command::new("ip").args(["-o", "link", "show"]).output().expect("ip");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n).to_string()))
        .collect()
}

/// Native XDP and br_netfilter's scope are never read off a version number. The kinds `check`
/// probes (loopback, veth, bridge, and the host's kinds) got the kernel's own answer to a native
/// attach on a test device in a throwaway namespace (success, or EOPNOTSUPP and its message);
/// every interface of those kinds carries that verdict and says so; every other verdict names
/// its source, and "unknown" says how to find out. Nothing of the probes is left behind: no
/// named namespace, no test device, no test program.
#[test]
fn native_xdp_and_br_netfilter_scope_come_from_probes() {
    require_root!();
    let (report, _) = check_report();
    let features = &report["features"];

    let probes = features["xdp_native_probes"].as_array().expect("xdp_native_probes");
    let probe = |kind: &str| {
        probes.iter().find(|p| p["kind"] == kind).unwrap_or_else(|| panic!("{kind} not probed: {probes:#?}")).clone()
    };
    for kind in ["loopback", "veth", "bridge"] {
        let p = probe(kind);
        let how = p["how"].as_str().unwrap();
        assert!(how.starts_with("probed: attaching a test XDP program in native (driver) mode"), "{p}");
        assert!(how.contains("throwaway network namespace"), "{p}");
    }
    // The kernel's answers: veth has a native hook; a bridge and loopback refuse, with EOPNOTSUPP
    // and (where the kernel sends extended acks) its message.
    assert_eq!(probe("veth")["native"], "yes", "{}", probe("veth"));
    for kind in ["loopback", "bridge"] {
        let p = probe(kind);
        assert_eq!((p["native"].as_str(), p["errno"].as_str()), (Some("no"), Some("EOPNOTSUPP")), "{p}");
        if let Some(message) = p["kernel_message"].as_str() {
            assert!(message.to_lowercase().contains("native mode"), "{p}");
            assert!(p["how"].as_str().unwrap().contains(message), "{p}");
        }
    }

    let interfaces = features["xdp"].as_array().expect("xdp");
    assert!(!interfaces.is_empty(), "{features:#}");
    for iface in interfaces {
        let how = iface["native_how"].as_str().unwrap();
        let source = iface["native_source"].as_str().unwrap();
        assert!(!how.contains("since Linux"), "a verdict from a version number: {iface}");
        assert!(["attached", "probed", "xdp-features", "none"].contains(&source), "{iface}");
        assert_eq!(iface["native"] == "unknown", source == "none", "{iface}");
        if source == "none" {
            assert!(how.contains("To find out") && how.contains("xdpdrv"), "{iface}");
        }
        if source == "xdp-features" {
            assert!(iface["xdp_features"].is_array(), "{iface}");
        }
        // An interface of a probed kind (bonds aside: theirs depends on their setup) carries the
        // probe's verdict, unless a native program is attached to it right now.
        let kind = if iface["name"] == "lo" { Some("loopback") } else { iface["kind"].as_str() };
        if let Some(p) = kind.and_then(|k| probes.iter().find(|p| p["kind"] == k)) {
            if p["native"] != "unknown" && kind != Some("bond") && source != "attached" {
                assert_eq!((source, &iface["native"]), ("probed", &p["native"]), "{iface} vs {p}");
                assert!(how.contains(p["how"].as_str().unwrap()), "{iface} vs {p}");
            }
        }
    }

    let br = &features["br_netfilter"];
    assert!(["per-namespace", "global", "unknown"].contains(&br["scope"].as_str().unwrap()), "{br}");
    assert_ne!(br["fresh_netns"]["present"], "unknown", "the fresh-namespace read failed: {br}");
    if br["fresh_netns"]["present"] == "yes" {
        assert_eq!(br["scope"], "per-namespace", "{br}");
    }
    assert!(!br["note"].as_str().unwrap().contains("since Linux"), "{br}");

    // Nothing left behind. check's namespaces have no name; its devices and program live in them.
    assert!(namespaces_with_prefix("dptcheck").is_empty());
    let links = host_link_names();
    assert!(!links.iter().any(|l| l.starts_with("dptxdp") || l.starts_with("dptprobe")), "{links:?}");
    // The test program (`dptrace_probe`) goes when its check exits; other tests' checks may be
    // probing right now, so wait for theirs to end too.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left: Vec<_> = support::all_progs().into_iter().filter(|p| p.name == "dptrace_probe").collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "dptrace check's test XDP program outlived it: {left:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
