//! `dptrace trace` against real drops in namespaces this test creates.

use dptrace_e2e::{dptrace, json_lines, of_type, require_root, sh, stderr, NodePair};
use serde_json::Value;

/// Runs `dptrace trace --json FILTER… -- ip netns exec CLIENT_NS bash -c SCRIPT` and
/// returns its JSON lines, failing the test if dptrace fails.
fn trace_json(filter: &[&str], client_ns: &str, script: &str) -> Vec<Value> {
    let mut args = vec!["trace", "--json"];
    args.extend_from_slice(filter);
    args.extend_from_slice(&["--", "ip", "netns", "exec", client_ns, "bash", "-c", script]);
    let out = dptrace(&args);
    assert!(out.status.success(), "dptrace failed: {}", stderr(&out));
    json_lines(&out)
}

/// Traces namespace `pair.server` while `pair.client` runs `script`.
fn trace_in(pair: &NodePair, script: &str) -> Vec<Value> {
    trace_json(&["--netns", &pair.server], &pair.client, script)
}

fn drops_to<'a>(lines: &'a [Value], dst: &str) -> Vec<&'a Value> {
    of_type(lines, "event").into_iter().filter(|e| e["kind"] == "drop" && e["flow"]["dst"] == dst).collect()
}

#[test]
fn udp_to_closed_port_is_a_no_socket_drop_ipv4_and_ipv6() {
    require_root!();
    let pair = NodePair::new();
    let script = format!("echo a > /dev/udp/{}/9999; echo b > /dev/udp/{}/9999", pair.server_v4, pair.server_v6);
    let lines = trace_in(&pair, &script);
    let server_inode = NodePair::inode(&pair.server);
    for (src, dst) in [(pair.client_v4, pair.server_v4), (pair.client_v6, pair.server_v6)] {
        let drops = drops_to(&lines, &dst.to_string());
        assert_eq!(drops.len(), 1, "one drop to {dst} expected in {lines:#?}");
        let d = drops[0];
        assert_eq!(d["reason"], "NO_SOCKET");
        assert_eq!(d["flow"]["l4"], "udp");
        assert_eq!(d["flow"]["src"], src.to_string());
        assert_eq!(d["flow"]["dport"], 9999);
        assert!(d["flow"]["sport"].as_u64().unwrap() > 0);
        assert_eq!(d["device"], "s0");
        assert_eq!(d["netns"], server_inode);
        assert_eq!(d["netns_name"], pair.server.as_str());
        assert_eq!(d["protocol"], if dst.is_ipv4() { "ipv4" } else { "ipv6" });
        assert!(d["location"].as_str().unwrap().contains("udp"), "location {}", d["location"]);
        assert_eq!(d["task"]["comm"], "bash", "the sender runs the receive path on loopback-like veth");
        let finding = of_type(&lines, "finding")
            .into_iter()
            .find(|f| f["rule"] == "no-listener" && f["destination"] == dst.to_string())
            .unwrap_or_else(|| panic!("no no-listener finding for {dst}"));
        assert_eq!(finding["place"]["netns"], server_inode);
        assert!(finding["remediation"].as_str().unwrap().contains("9999"));
        assert!(!finding["evidence"].as_array().unwrap().is_empty());
    }
    let summary = of_type(&lines, "summary")[0];
    assert_eq!(summary["lost_events"], 0);
    // Neighbour discovery may add routine drops in the namespace; ours are two.
    assert!(summary["drops"].as_u64().unwrap() >= 2);
    assert!(summary["command_status"].as_str().unwrap().contains("exit status: 0"));
    // Raw where BTF shows the tracepoint's prototype (5.17+), else the classic one.
    let backend = summary["hooks"][0]["backend"].as_str();
    assert!(matches!(backend, Some("raw tracepoint kfree_skb" | "tracepoint skb:kfree_skb")), "{backend:?}");
}

#[test]
fn iptables_drop_is_a_netfilter_drop_with_its_flow() {
    require_root!();
    let pair = NodePair::new();
    sh(
        "ip",
        &["netns", "exec", &pair.server, "iptables", "-w", "-A", "INPUT", "-p", "udp", "--dport", "7777", "-j", "DROP"],
    );
    let script = format!("for i in 1 2 3; do echo x > /dev/udp/{}/7777; done", pair.server_v4);
    let lines = trace_in(&pair, &script);
    let drops = drops_to(&lines, &pair.server_v4.to_string());
    assert_eq!(drops.len(), 3, "{lines:#?}");
    assert!(drops.iter().all(|d| d["reason"] == "NETFILTER_DROP" && d["flow"]["dport"] == 7777 && d["device"] == "s0"));
    let finding =
        of_type(&lines, "finding").into_iter().find(|f| f["rule"] == "netfilter-drop").expect("netfilter-drop finding");
    assert_eq!(finding["severity"], "error");
    assert_eq!(finding["count"], 3);
    assert_eq!(finding["flows"][0], format!("udp {} > {}:7777", pair.client_v4, pair.server_v4));
    // The rule whose counter moved, and how to remove it.
    assert_eq!(finding["netfilter"]["backend"], "iptables-nft", "{finding}");
    assert_eq!(
        (finding["netfilter"]["table"].as_str(), finding["netfilter"]["chain"].as_str()),
        (Some("filter"), Some("INPUT"))
    );
    assert_eq!(finding["netfilter"]["hook"], "input");
    assert_eq!(finding["netfilter"]["packets"], 3);
    assert!(finding["remediation"]
        .as_str()
        .unwrap()
        .contains(&format!("ip netns exec {} iptables -t filter -D INPUT -p udp", pair.server)));
}

#[test]
fn netns_filter_keeps_other_namespaces_out() {
    require_root!();
    let pair = NodePair::new();
    let other = NodePair::new();
    // Traffic in `other` while tracing only `pair.server`: none of it may show.
    let script = format!("echo a > /dev/udp/{}/9999", other.server_v4);
    let lines = trace_json(&["--netns", &pair.server], &other.client, &script);
    // Only events of the traced namespace (routine IPv6 multicast drops may appear there).
    let inode = NodePair::inode(&pair.server);
    for event in of_type(&lines, "event") {
        // Module loads are global (another test's `ip link add` may load one): no namespace.
        if event["kind"] == "module" && event["action"] == "loaded" {
            continue;
        }
        assert_eq!(event["netns"], inode, "{event}");
        assert_ne!(event["flow"]["dst"], other.server_v4.to_string(), "{event}");
    }
    assert!(of_type(&lines, "summary")[0]["filtered_events"].as_u64().unwrap() >= 1);
}

#[test]
fn text_output_names_reason_flow_and_place() {
    require_root!();
    let pair = NodePair::new();
    let script = format!("echo a > /dev/udp/{}/4242", pair.server_v4);
    let out =
        dptrace(&["trace", "--netns", &pair.server, "--", "ip", "netns", "exec", &pair.client, "bash", "-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    // Routine IPv6 multicast drops may come first: look for the line of our datagram.
    let line = text
        .lines()
        .find(|l| l.contains(" drop ") && l.contains(":4242"))
        .unwrap_or_else(|| panic!("no drop line in {text}"));
    assert!(
        line.contains("NO_SOCKET") && line.contains(&format!("{}:4242", pair.server_v4)) && line.contains("dev s0"),
        "{line}"
    );
    assert!(text.contains("[warning] no-listener"), "{text}");
    assert!(text.contains("== summary:"), "{text}");
}

#[test]
fn duration_and_sigterm_end_the_session_with_a_summary() {
    require_root!();
    let started = std::time::Instant::now();
    let out = dptrace(&["trace", "--json", "--quiet", "--duration", "1s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(of_type(&json_lines(&out), "summary").len(), 1);

    let child = std::process::Command::new(dptrace_e2e::dptrace_bin())
        .args(["trace", "--json", "--quiet"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    sh("kill", &["-TERM", &child.id().to_string()]);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(of_type(&json_lines(&out), "summary").len(), 1);
}

#[test]
fn iface_filter_keeps_only_that_device() {
    require_root!();
    let pair = NodePair::new();
    // One drop on s0 (from the client) and one on lo (inside the server): only s0 is traced.
    let script = format!(
        "echo a > /dev/udp/{}/9999; ip netns exec {} bash -c 'echo b > /dev/udp/127.0.0.1/9998'",
        pair.server_v4, pair.server
    );
    let lines = trace_json(&["--iface", "s0"], &pair.client, &script);
    let events = of_type(&lines, "event");
    let server = pair.server_v4.to_string();
    assert!(events.iter().any(|e| e["flow"]["dport"] == 9999 && e["flow"]["dst"] == server), "{lines:#?}");
    // Every event that names a device names s0. Other tests running in parallel have their own
    // `s0` in other namespaces, and the name matches there too (no --netns here), so their
    // events may show up: what must not show up is another device.
    fn device<'a>(e: &&'a Value) -> Option<&'a str> {
        ["device", "ifname", "bridge"].iter().find_map(|k| e[*k].as_str())
    }
    assert!(events.iter().filter_map(device).all(|d| d == "s0"), "{lines:#?}");
    // Events that name no device are kept only through one that does: netlink answers and
    // kernel messages follow their link request (same thread), rule counters belong to the
    // namespace, module loads are global.
    let requests: Vec<_> = events.iter().filter(|e| e["kind"] == "link-request").collect();
    let after_request = |e: &Value| requests.iter().any(|r| r["actor"]["tid"] == e["actor"]["tid"]);
    for e in events.iter().filter(|e| device(e).is_none()) {
        match e["kind"].as_str() {
            Some("netlink-ack" | "kernel-message") => assert!(after_request(e), "{e:#}"),
            Some("module") if e["action"] == "loaded" || after_request(e) => {}
            Some("rule-counter") => {}
            _ => panic!("an event naming no device passed --iface: {e:#}"),
        }
    }
    assert!(!events.iter().any(|e| e["flow"]["dport"] == 9998), "{lines:#?}");
}

/// Every drops backend `check` reports as available must report the drop (same reason,
/// flow and location as the tracepoint); every unavailable one must be refused clearly.
#[test]
fn each_backend_that_check_offers_reports_the_drop() {
    require_root!();
    let check = dptrace(&["check", "--json"]);
    assert_ne!(check.status.code(), Some(2), "{}", stderr(&check));
    let report = json_lines(&check).into_iter().find(|v| v["type"] == "check").expect("check object");
    let backends = report["backends"].as_array().expect("backends").clone();
    assert!(backends.iter().any(|b| b["backend"] == "tracepoint" && b["available"] == true), "{report}");
    let pair = NodePair::new();
    let script = format!("echo a > /dev/udp/{}/9999", pair.server_v4);
    for b in backends.iter().filter(|b| b["family"] == "drops") {
        let name = b["backend"].as_str().unwrap();
        let flag = format!("drops={name}");
        let mut args = vec!["trace", "--json", "--backend", &flag, "--netns", &pair.server, "--"];
        args.extend_from_slice(&["ip", "netns", "exec", &pair.client, "bash", "-c", &script]);
        let out = dptrace(&args);
        if b["available"] == true {
            assert!(out.status.success(), "{name}: {}", stderr(&out));
            let lines = json_lines(&out);
            let drop = drops_to(&lines, &pair.server_v4.to_string());
            assert_eq!(drop.len(), 1, "{name}: {lines:#?}");
            assert_eq!(drop[0]["reason"], "NO_SOCKET", "{name}");
            assert_eq!(drop[0]["device"], "s0", "{name}");
            assert!(
                drop[0]["location"].as_str().unwrap().starts_with("__udp4_lib_rcv+"),
                "{name}: {}",
                drop[0]["location"]
            );
            assert_eq!(drop[0]["reason_inferred"].as_bool().unwrap_or(false), name == "tracepoint-noreason", "{name}");
            assert_eq!(of_type(&lines, "summary")[0]["hooks"][0]["backend_id"], name);
            assert!(of_type(&lines, "finding").iter().any(|f| f["rule"] == "no-listener"), "{name}");
        } else {
            assert_eq!(out.status.code(), Some(2), "{name} is unavailable and must be refused");
            assert!(stderr(&out).contains("no backend could attach the drops hooks"), "{name}: {}", stderr(&out));
        }
    }
}

/// Field report 1: `ip link add X type <kind the kernel lacks>` names the kind, the errno,
/// the kernel's message, the actor and the fix. Kinds this kernel has are skipped.
#[test]
fn creating_a_link_kind_the_kernel_lacks_is_explained() {
    require_root!();
    let pair = NodePair::new();
    let check = json_lines(&dptrace(&["check", "--json"]));
    let kinds = check[0]["features"]["link_kinds"].as_array().expect("link kinds").clone();
    let missing: Vec<String> = kinds
        .iter()
        .filter(|k| k["supported"] == "no" && ["wireguard", "geneve", "ipip"].contains(&k["kind"].as_str().unwrap()))
        .map(|k| k["kind"].as_str().unwrap().to_string())
        .collect();
    if missing.is_empty() {
        dptrace_e2e::skip!("kernel-has-link-kinds", "this kernel has wireguard, geneve and ipip");
    }
    for kind in missing {
        let script = format!("ip link add dpt-{kind} type {kind} 2>/dev/null; true");
        let lines = trace_json(&["--netns", &pair.client], &pair.client, &script);
        let finding = of_type(&lines, "finding")
            .into_iter()
            .find(|f| f["rule"] == "link-kind-unsupported")
            .unwrap_or_else(|| panic!("{kind}: no link-kind-unsupported finding in {lines:#?}"));
        let summary = finding["summary"].as_str().unwrap();
        assert!(summary.contains(&format!("`{kind}`")) && summary.contains("EOPNOTSUPP"), "{summary}");
        assert_eq!(finding["place"]["device"], format!("dpt-{kind}"));
        assert_eq!(finding["place"]["netns"], NodePair::inode(&pair.client));
        assert_eq!(finding["actor"]["comm"], "ip");
        assert_eq!(finding["actor"]["netns_name"], pair.client.as_str());
        assert!(finding["remediation"].as_str().unwrap().len() > 40, "{finding}");
        let evidence = finding["evidence"].as_array().unwrap();
        assert!(evidence
            .iter()
            .any(|e| e["kind"] == "link-request" && e["link_kind"] == kind.as_str() && e["op"] == "create"));
        assert!(evidence.iter().any(|e| e["kind"] == "netlink-ack" && e["error"] == "EOPNOTSUPP"), "{evidence:#?}");
    }
}

/// Every links backend this kernel offers tells the same story of a failed link creation:
/// the request, then the kernel's message, then the errno. The sockets backend sees the
/// request only when its send returns, after the message was produced, so it must hold the
/// message back; the syscall-tracepoints backend must agree with it.
#[test]
fn every_links_backend_reports_request_message_and_errno_in_order() {
    require_root!();
    let check = json_lines(&dptrace(&["check", "--json"]));
    let backends: Vec<String> = check
        .iter()
        .filter_map(|l| l["backends"].as_array())
        .flatten()
        .filter(|b| b["family"] == "links" && b["available"] == true)
        .map(|b| b["backend"].as_str().unwrap().to_string())
        .collect();
    assert!(!backends.is_empty(), "no links backend: {check:#?}");
    for backend in backends {
        let pair = NodePair::new();
        let forced = format!("links={backend}");
        let lines = trace_json(
            &["--netns", &pair.client, "--backend", &forced],
            &pair.client,
            "ip link add dpt-bogus type bogus 2>/dev/null; true",
        );
        let events: Vec<&Value> = of_type(&lines, "event")
            .into_iter()
            .filter(|e| e["actor"]["comm"] == "ip" || e["link_kind"] == "bogus")
            .collect();
        // iproute2 first asks whether the name exists (a "change" answered ENODEV).
        let position = |kind: &str, pick: &dyn Fn(&Value) -> bool| {
            events
                .iter()
                .position(|e| e["kind"] == kind && pick(e))
                .unwrap_or_else(|| panic!("{backend}: no {kind}: {events:#?}"))
        };
        let request = position("link-request", &|e| e["link_kind"] == "bogus");
        let message = position("kernel-message", &|_| true);
        let ack = position("netlink-ack", &|e| e["error"] == "EOPNOTSUPP");
        assert!(events[message]["message"].as_str().unwrap().contains("Unknown device type"), "{backend}: {events:#?}");
        assert_eq!(events[ack]["error"], "EOPNOTSUPP", "{backend}");
        assert!(request < message && message < ack, "{backend}: out of order: {events:#?}");
        let finding = of_type(&lines, "finding")
            .into_iter()
            .find(|f| f["rule"] == "link-kind-unsupported")
            .unwrap_or_else(|| panic!("{backend}: no link-kind-unsupported finding: {lines:#?}"));
        assert!(finding["summary"].as_str().unwrap().contains("bogus"), "{backend}: {finding}");
        assert!(
            finding["evidence"].as_array().unwrap().iter().any(|e| e["kind"] == "kernel-message"),
            "{backend}: {finding}"
        );
    }
}

/// With the default hooks on a kernel that has cheaper hooks, nothing is attached to a
/// syscall tracepoint: one would slow every syscall of every process on the machine.
#[test]
fn default_hooks_attach_no_syscall_tracepoint_where_cheaper_hooks_exist() {
    require_root!();
    if !std::path::Path::new("/sys/kernel/tracing/events/sock/sock_send_length").exists()
        && !std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists()
    {
        dptrace_e2e::skip!("no-cheap-links-hook", "neither sock:sock_send_length nor kprobes on this kernel");
    }
    let out = dptrace(&["trace", "--json", "--quiet", "--", "sleep", "0.2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    let summary = of_type(&lines, "summary")[0];
    let hooks = summary["hooks"].as_array().unwrap();
    for hook in hooks {
        let detail = hook["backend"].as_str().unwrap_or_default();
        assert!(!detail.contains("sys_enter") && !detail.contains("sys_exit"), "{hook}");
    }
    // Asked for, the syscall tracepoints are used.
    let out =
        dptrace(&["trace", "--json", "--quiet", "--backend", "links=tracepoints,bpf=syscalls", "--", "sleep", "0.2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    let hooks = of_type(&lines, "summary")[0]["hooks"].to_string();
    assert!(hooks.contains("sys_enter_sendmsg") && hooks.contains("sys_enter_bpf"), "{hooks}");
}

#[test]
fn other_link_creation_failures_carry_the_errno() {
    require_root!();
    let pair = NodePair::new();
    // c0 exists in the client namespace: creating it again fails with EEXIST.
    let lines = trace_json(
        &["--netns", &pair.client],
        &pair.client,
        "ip link add c0 type dummy 2>/dev/null; ip link add c0 type veth peer name c9 2>/dev/null; true",
    );
    let finding = of_type(&lines, "finding")
        .into_iter()
        .find(|f| f["rule"] == "link-create-failed")
        .unwrap_or_else(|| panic!("no link-create-failed finding: {lines:#?}"));
    assert!(finding["summary"].as_str().unwrap().contains("EEXIST"), "{finding}");
    assert_eq!(finding["place"]["device"], "c0");
}

/// A veth MAC rewritten with the old SIOCSIFHWADDR ioctl (as ifconfig does) is attributed
/// like one made over netlink by the syscall-tracepoints backend; the default backends
/// (sockets, kprobes) do not see ioctls, but the change itself is still found.
#[test]
fn a_mac_change_by_ioctl_is_attributed() {
    require_root!();
    if std::process::Command::new("python3")
        .arg("-c")
        .arg("import fcntl")
        .output()
        .map_or(true, |o| !o.status.success())
    {
        dptrace_e2e::skip!("missing-tool:python3", "python3 is needed to issue the ioctl");
    }
    let pair = NodePair::new();
    let script = "ip link add vx0 type veth peer name vx1; sleep 0.2; python3 -c \"import fcntl,socket,struct; \
                  s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); \
                  fcntl.ioctl(s.fileno(),0x8924,struct.pack('16sH14s',b'vx0',1,bytes.fromhex('020000000042')))\"; sleep 0.2";
    let lines = trace_json(&["--netns", &pair.client, "--backend", "links=tracepoints"], &pair.client, script);
    let finding = of_type(&lines, "finding")
        .into_iter()
        .find(|f| f["rule"] == "veth-mac-changed")
        .unwrap_or_else(|| panic!("no veth-mac-changed finding: {lines:#?}"));
    assert_eq!(finding["place"]["device"], "vx0");
    assert_eq!(finding["actor"]["comm"], "python3");
    assert!(finding["summary"].as_str().unwrap().contains("→ 02:00:00:00:00:42"), "{finding}");
    assert!(finding["evidence"].as_array().unwrap().iter().any(|e| e["via"] == "ioctl"), "{finding}");
    drop(pair);
    let pair = NodePair::new();
    let lines = trace_json(&["--netns", &pair.client], &pair.client, script);
    let finding = of_type(&lines, "finding")
        .into_iter()
        .find(|f| f["rule"] == "veth-mac-changed")
        .unwrap_or_else(|| panic!("default backends: no veth-mac-changed finding: {lines:#?}"));
    assert!(finding["summary"].as_str().unwrap().contains("→ 02:00:00:00:00:42"), "{finding}");
}

/// On cgroup v2, the actor of a link request carries its cgroup, pod UID and container id.
#[test]
fn the_actor_names_its_pod_and_container() {
    require_root!();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let Some(root) = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.starts_with("cgroup2 ")).then(|| left.split_whitespace().nth(4).unwrap().to_string())
    }) else {
        dptrace_e2e::skip!("no-cgroup2", "no cgroup v2 mount");
    };
    let uid = "0f3a1b2c_4d5e_6f70_8192_a3b4c5d6e7f8";
    let container = "5d2c9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d";
    let top = format!("{root}/dpte2e-{}.slice", std::process::id());
    let leaf = format!("{top}/kubepods-besteffort-pod{uid}.slice/crio-{container}.scope");
    std::fs::create_dir_all(&leaf).unwrap();
    let pair = NodePair::new();
    // c0 exists: the create fails with EEXIST, which gives a finding with the actor. The
    // cgroup is joined before `ip netns exec`, which remounts /sys for the namespace.
    let script = format!(
        "echo $$ > {leaf}/cgroup.procs && exec ip netns exec {} ip link add c0 type veth peer name c9",
        pair.client
    );
    let out = dptrace(&["trace", "--json", "--netns", &pair.client, "--", "sh", "-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    let _ = std::fs::remove_dir(&leaf);
    let _ = std::fs::remove_dir(format!("{top}/kubepods-besteffort-pod{uid}.slice"));
    let _ = std::fs::remove_dir(&top);
    let finding = of_type(&lines, "finding")
        .into_iter()
        .find(|f| f["rule"] == "link-create-failed")
        .unwrap_or_else(|| panic!("no link-create-failed finding: {lines:#?}"));
    assert_eq!(finding["actor"]["pod_uid"], "0f3a1b2c-4d5e-6f70-8192-a3b4c5d6e7f8", "{finding}");
    assert_eq!(finding["actor"]["container"], "5d2c9e8f7a6b");
    assert!(finding["actor"]["cgroup"].as_str().unwrap().ends_with(".scope"));
}

/// `dptrace check` run beside a session (an operator in a second terminal) creates links of
/// every kind and attaches native XDP in throwaway namespaces, and many of those fail on
/// purpose. The session sees the requests, but they are not findings about the node.
#[test]
fn dptrace_check_beside_a_session_raises_no_finding() {
    require_root!();
    let bin = dptrace_e2e::dptrace_bin();
    let check = format!("'{}' check >/dev/null 2>&1; true", bin.display());
    let out = dptrace(&["trace", "--json", "--", "bash", "-c", &check]);
    assert!(out.status.success(), "dptrace failed: {}", stderr(&out));
    let lines = json_lines(&out);
    // check's own requests were seen (the session watched them)...
    let probe_requests = of_type(&lines, "event")
        .into_iter()
        .filter(|e| {
            e["kind"] == "link-request" && e["actor"]["comm"].as_str().is_some_and(|c| c.starts_with("dptrace-"))
        })
        .count();
    assert!(probe_requests > 0, "no request of check's probe threads was traced: {lines:#?}");
    // ...and none of them became a finding (other tests running alongside may raise theirs).
    for f in of_type(&lines, "finding") {
        let comm = f["actor"]["comm"].as_str().unwrap_or_default();
        assert!(!comm.starts_with("dptrace-"), "a finding about check's own probe: {f:#}");
        let text = f.to_string();
        assert!(!text.contains("dptprobe0") && !text.contains("dptxdp0"), "a finding about a probe device: {f:#}");
    }
}
