//! `dptrace check`: every backend and feature it reports is consistent with the problems it
//! lists and with its exit status, on whatever kernel runs the test.

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
