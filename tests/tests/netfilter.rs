//! The netfilter family: verdicts attributed to their table, chain and rule for each
//! frontend (iptables-nft, iptables-legacy, native nftables), and the three causes of
//! "connection refused" told apart in one session.

use dptrace_e2e::{dptrace, json_lines, of_type, require_root, sh, stderr, NodePair};
use serde_json::Value;

fn in_ns(ns: &str, program: &str, args: &[&str]) {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    sh("ip", &all);
}

/// Traces the server's namespace while the client runs `script`; extra dptrace flags first.
fn trace(pair: &NodePair, flags: &[&str], script: &str) -> Vec<Value> {
    let mut args = vec!["trace", "--json", "--netns", &pair.server];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", "ip", "netns", "exec", &pair.client, "bash", "-c", script]);
    let out = dptrace(&args);
    assert!(out.status.success(), "dptrace failed: {}", stderr(&out));
    json_lines(&out)
}

/// TCP connection attempts to each port (bash's /dev/tcp), each given `secs` to fail.
fn connect_script(dst: &str, ports: &[u16], secs: u32) -> String {
    ports.iter().map(|p| format!("timeout {secs} bash -c 'echo > /dev/tcp/{dst}/{p}' 2>/dev/null; ")).collect()
}

fn finding<'a>(lines: &'a [Value], rule: &str, port: u16) -> Option<&'a Value> {
    of_type(lines, "finding").into_iter().find(|f| {
        f["rule"] == rule
            && f["flows"].as_array().unwrap().iter().any(|fl| fl.as_str().unwrap().ends_with(&format!(":{port}")))
    })
}

#[test]
fn refused_by_rule_dropped_by_rule_and_no_listener_are_told_apart() {
    require_root!();
    let pair = NodePair::new();
    let v4 = pair.server_v4.to_string();
    in_ns(
        &pair.server,
        "iptables",
        &["-w", "-A", "INPUT", "-p", "tcp", "--dport", "6443", "-j", "REJECT", "--reject-with", "tcp-reset"],
    );
    in_ns(&pair.server, "iptables", &["-w", "-A", "INPUT", "-p", "tcp", "--dport", "6444", "-j", "DROP"]);
    let lines = trace(&pair, &[], &connect_script(&v4, &[6443, 6444, 6445], 2));
    let rejected = finding(&lines, "reject-by-rule", 6443).unwrap_or_else(|| panic!("no reject-by-rule: {lines:#?}"));
    assert_eq!(rejected["netfilter"]["verdict"], "reject");
    assert!(rejected["netfilter"]["rule"].as_str().unwrap().contains("--reject-with tcp-reset"), "{rejected}");
    assert!(rejected["summary"].as_str().unwrap().contains("connection refused"), "{rejected}");
    // (The RST the client's socket received is traced too, in the client's namespace: the
    // lab's apiserver-rejected scenario asserts it; this session only watches the server.)
    let dropped = finding(&lines, "netfilter-drop", 6444).unwrap_or_else(|| panic!("no netfilter-drop: {lines:#?}"));
    assert_eq!(dropped["netfilter"]["verdict"], "drop");
    assert_eq!(dropped["netfilter"]["chain"], "INPUT");
    let no_listener = finding(&lines, "no-listener", 6445).unwrap_or_else(|| panic!("no no-listener: {lines:#?}"));
    assert_eq!(no_listener["place"]["netns_name"], pair.server.as_str());
    // Each cause only once: no port is claimed by two rules.
    for (rule, others) in
        [("reject-by-rule", [6444, 6445]), ("netfilter-drop", [6443, 6445]), ("no-listener", [6443, 6444])]
    {
        for port in others {
            assert!(finding(&lines, rule, port).is_none(), "{rule} also claims :{port}");
        }
    }
    // Where the backend says it sees them, the stack's own RST for the missing listener must
    // be among the finding's evidence.
    let nf = of_type(&lines, "summary")[0]["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["family"] == "netfilter")
        .cloned()
        .unwrap();
    let ev = no_listener["evidence"].as_array().unwrap();
    let rst_seen = ev.iter().any(|e| e["kind"] == "tcp-reset" && e["direction"] == "sent");
    if nf["coverage"]["listenerless_resets"] == true {
        assert!(rst_seen, "the backend claims to see the stack's RSTs, yet none is in: {no_listener:#}");
    } else {
        let gaps = nf["coverage"]["gaps"].as_array().unwrap();
        assert!(
            gaps.iter().any(|g| g.as_str().unwrap().contains("ports nothing listens on")),
            "the gap must be said: {nf}"
        );
        dptrace_e2e::record_skip(
            &format!("{}/stack-rst", dptrace_e2e::current_test()),
            "no-listenerless-reset-hook",
            "this kernel shows no RST for ports nothing listens on (the netfilter backend says so)",
        );
    }
}

#[test]
fn native_nftables_rules_are_attributed_with_their_chain() {
    require_root!();
    let pair = NodePair::new();
    let v4 = pair.server_v4.to_string();
    in_ns(&pair.server, "nft", &["add", "table", "inet", "e2e"]);
    in_ns(
        &pair.server,
        "nft",
        &["add", "chain", "inet", "e2e", "guard", "{ type filter hook input priority 0; policy accept; }"],
    );
    in_ns(&pair.server, "nft", &["add", "rule", "inet", "e2e", "guard", "tcp", "dport", "7001", "counter", "drop"]);
    in_ns(&pair.server, "nft", &["add", "rule", "inet", "e2e", "guard", "udp", "dport", "7002", "counter", "reject"]);
    let script = format!("{} echo x > /dev/udp/{v4}/7002; sleep 0.2", connect_script(&v4, &[7001], 2));
    let lines = trace(&pair, &[], &script);
    let dropped = finding(&lines, "netfilter-drop", 7001).unwrap_or_else(|| panic!("no netfilter-drop: {lines:#?}"));
    let nf = &dropped["netfilter"];
    assert_eq!(
        (nf["backend"].as_str(), nf["family"].as_str(), nf["table"].as_str(), nf["chain"].as_str()),
        (Some("nftables"), Some("inet"), Some("e2e"), Some("guard")),
        "{dropped}"
    );
    assert_eq!(nf["hook"], "input");
    assert!(nf["rule"].as_str().unwrap().contains("tcp dport 7001"), "{nf}");
    assert!(dropped["remediation"].as_str().unwrap().contains("nft delete rule inet e2e guard handle"), "{dropped}");
    let rejected = finding(&lines, "reject-by-rule", 7002).unwrap_or_else(|| panic!("no reject-by-rule: {lines:#?}"));
    assert_eq!(rejected["netfilter"]["verdict"], "reject");
    // REJECT's default answer is an ICMP port unreachable: "connection refused" for UDP too.
    assert!(rejected["summary"].as_str().unwrap().contains("ICMP"), "{rejected}");
}

#[test]
fn iptables_legacy_rules_are_attributed() {
    require_root!();
    if std::process::Command::new("iptables-legacy").arg("--version").output().is_err() {
        dptrace_e2e::skip!("missing-tool:iptables-legacy", "iptables-legacy is not installed");
    }
    let pair = NodePair::new();
    in_ns(&pair.server, "iptables-legacy", &["-w", "-A", "INPUT", "-p", "udp", "--dport", "7100", "-j", "DROP"]);
    let lines = trace(&pair, &[], &format!("for i in 1 2; do echo x > /dev/udp/{}/7100; done", pair.server_v4));
    let dropped = finding(&lines, "netfilter-drop", 7100).unwrap_or_else(|| panic!("no netfilter-drop: {lines:#?}"));
    assert_eq!(dropped["netfilter"]["backend"], "iptables-legacy", "{dropped}");
    assert_eq!(dropped["netfilter"]["packets"], 2);
    assert!(dropped["remediation"].as_str().unwrap().contains("iptables-legacy -t filter -D INPUT"), "{dropped}");
}

#[test]
fn without_reset_tracepoints_rejects_are_still_told_by_counters() {
    require_root!();
    let pair = NodePair::new();
    let v4 = pair.server_v4.to_string();
    in_ns(
        &pair.server,
        "iptables",
        &["-w", "-A", "INPUT", "-p", "tcp", "--dport", "6443", "-j", "REJECT", "--reject-with", "tcp-reset"],
    );
    let lines = trace(&pair, &["--backend", "netfilter=tracepoints-noreset"], &connect_script(&v4, &[6443, 6445], 2));
    let nf = of_type(&lines, "summary")[0]["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["family"] == "netfilter")
        .cloned()
        .unwrap();
    assert_eq!(nf["backend_id"], "tracepoints-noreset");
    assert_eq!(nf["coverage"]["stack_resets"], false);
    assert!(!nf["backend"].as_str().unwrap().contains("tcp_send_reset"), "{nf}");
    assert!(of_type(&lines, "event").iter().all(|e| !(e["kind"] == "tcp-reset" && e["direction"] == "sent")));
    assert!(finding(&lines, "reject-by-rule", 6443).is_some(), "{lines:#?}");
    assert!(finding(&lines, "no-listener", 6445).is_some(), "{lines:#?}");
}
