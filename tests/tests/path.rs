//! `dptrace trace --path`: packets followed device by device across namespaces this test
//! creates, the filter, per-hop latency, the aggregate mode and the pcapng export (read back
//! with tshark).

use std::process::Command;

use dptrace_e2e::{dptrace, json_lines, of_type, require_root, sh, stderr, NodePair};
use serde_json::Value;

/// `dptrace trace --json --path EXTRA… -- ip netns exec CLIENT ping …`.
/// ping uses an ICMP socket (allowed here by ping_group_range), so replies end consumed by
/// it; with a raw socket the kernel would free the original after giving raw sockets copies,
/// as a NO_SOCKET drop in `ping_rcv`.
fn trace_ping(pair: &NodePair, extra: &[&str], ping: &[&str]) -> Vec<Value> {
    sh("ip", &["netns", "exec", &pair.client, "sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"]);
    let mut args = vec!["trace", "--json", "--path"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "ip", "netns", "exec", &pair.client, "ping", "-q", "-i", "0.2", "-W", "1"]);
    args.extend_from_slice(ping);
    let out = dptrace(&args);
    assert!(out.status.success(), "dptrace failed: {}", stderr(&out));
    json_lines(&out)
}

fn paths(lines: &[Value]) -> Vec<&Value> {
    of_type(lines, "event").into_iter().filter(|e| e["kind"] == "packet-path").collect()
}

fn steps(path: &Value) -> &Vec<Value> {
    path["steps"].as_array().expect("steps")
}

/// The request and reply paths of a ping across the pair, hop by hop, IPv4 and IPv6.
#[test]
fn ping_is_followed_hop_by_hop_with_latency() {
    require_root!();
    let pair = NodePair::new();
    for (family, filter, server, client) in [
        ("v4", format!("icmp and host {}", pair.server_v4), pair.server_v4, pair.client_v4),
        ("v6", format!("icmp6 and host {}", pair.server_v6), pair.server_v6, pair.client_v6),
    ] {
        let lines = trace_ping(&pair, &["--filter", &filter], &["-c", "3", &server.to_string()]);
        let all = paths(&lines);
        // Echo requests: client's c0 transmits, server's s0 receives, the stack consumes.
        let requests: Vec<&Value> = all.iter().copied().filter(|p| p["flow"]["dst"] == server.to_string()).collect();
        let replies: Vec<&Value> = all.iter().copied().filter(|p| p["flow"]["dst"] == client.to_string()).collect();
        assert!(requests.len() >= 3 && replies.len() >= 3, "{family}: 3 requests and 3 replies expected: {all:#?}");
        assert_eq!(all.len(), requests.len() + replies.len(), "{family}: only the filtered flows: {all:#?}");
        for (path, from_ns, from_dev, to_ns, to_dev) in [
            (requests[0], &pair.client, "c0", &pair.server, "s0"),
            (replies[0], &pair.server, "s0", &pair.client, "c0"),
        ] {
            let s = steps(path);
            let points: Vec<(String, String, String)> = s
                .iter()
                .map(|h| {
                    let field = |k: &str| h[k].as_str().unwrap_or("?").to_string();
                    (field("hook"), field("device"), field("netns_name"))
                })
                .collect();
            assert_eq!(
                points[..2],
                [
                    ("transmit".into(), from_dev.into(), from_ns.clone()),
                    ("receive".into(), to_dev.into(), to_ns.clone())
                ],
                "{family}: {path:#}"
            );
            assert_eq!(path["outcome"], "delivered", "{family}: {path:#}");
            assert_eq!(s.last().unwrap()["netns_name"], to_ns.as_str());
            // Times only move forward and add up.
            let mut total = 0;
            for step in &s[1..] {
                total += step["since_previous_ns"].as_u64().unwrap();
                assert_eq!(step["since_start_ns"].as_u64().unwrap(), total);
            }
            assert_eq!(path["total_ns"].as_u64().unwrap(), total);
            assert!(s[1]["since_previous_ns"].as_u64().unwrap() > 0);
            assert_eq!(s[0]["outer"]["src"], if from_dev == "c0" { client } else { server }.to_string());
        }
        let summary = of_type(&lines, "summary")[0];
        let p = &summary["paths"];
        assert!(p["traced"].as_u64().unwrap() >= 6, "{family}: {p:#}");
        assert!(p["delivered"].as_u64().unwrap() >= 6, "{family}: {p:#}");
        let kernel_filter = p["filter"].as_str().unwrap();
        assert!(kernel_filter.contains("kernel"), "{family}: the filter's place is reported: {kernel_filter}");
        let hop = p["latency"]["hops"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["from"] == format!("tx c0@{}", pair.client) && r["to"] == format!("rx s0@{}", pair.server))
            .unwrap_or_else(|| panic!("{family}: no c0 -> s0 latency row in {p:#}"));
        assert!(hop["packets"].as_u64().unwrap() >= 3);
        assert!(hop["p50_ns"].as_u64().unwrap() > 0 && hop["max_ns"].as_u64() >= hop["p50_ns"].as_u64());
        assert!(!p["latency"]["end_to_end"].as_array().unwrap().is_empty());
        assert_eq!(summary["hooks"].as_array().unwrap().iter().filter(|h| h["family"] == "path").count(), 1);
    }
}

/// A filter for another port lets nothing through: the kernel part rejects the pings.
#[test]
fn filter_keeps_other_packets_out() {
    require_root!();
    let pair = NodePair::new();
    let lines = trace_ping(&pair, &["--filter", "tcp port 9"], &["-c", "2", &pair.server_v4.to_string()]);
    assert!(paths(&lines).is_empty(), "{:#?}", paths(&lines));
    let summary = of_type(&lines, "summary")[0];
    assert_eq!(summary["paths"]["traced"], 0);
}

/// `--aggregate`: hop counters and latency from kernel maps, no per-packet events.
#[test]
fn aggregate_counts_in_the_kernel() {
    require_root!();
    let pair = NodePair::new();
    let filter = format!("icmp and host {}", pair.server_v4);
    let lines = trace_ping(&pair, &["--aggregate", "--filter", &filter], &["-c", "4", &pair.server_v4.to_string()]);
    assert!(paths(&lines).is_empty(), "aggregate mode sends no paths");
    let p = &of_type(&lines, "summary")[0]["paths"];
    assert_eq!(p["latency"]["approximate"], true);
    assert!(p["traced"].as_u64().unwrap() >= 8, "4 requests and 4 replies: {p:#}");
    assert!(p["delivered"].as_u64().unwrap() >= 8, "{p:#}");
    let hop = p["latency"]["hops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["from"] == format!("tx c0@{}", pair.client) && r["to"] == format!("rx s0@{}", pair.server))
        .unwrap_or_else(|| panic!("no c0 -> s0 row in {p:#}"));
    assert!(hop["packets"].as_u64().unwrap() >= 4);
}

/// `--pcap`: tshark reads every hop, one interface per device and namespace.
#[test]
fn pcapng_opens_in_tshark() {
    require_root!();
    if !std::path::Path::new("/usr/bin/tshark").exists() {
        panic!("tshark is missing: .ci/run installs it (apt-get install tshark)");
    }
    let pair = NodePair::new();
    let file = std::env::temp_dir().join(format!("dptrace-e2e-{}.pcapng", std::process::id()));
    let file_arg = file.to_string_lossy().into_owned();
    let filter = format!("icmp and host {}", pair.server_v4);
    let lines =
        trace_ping(&pair, &["--filter", &filter, "--pcap", &file_arg], &["-c", "2", &pair.server_v4.to_string()]);
    let traced = paths(&lines);
    let hops_with_bytes: usize = traced
        .iter()
        .map(|p| steps(p).iter().filter(|s| s["hook"] == "transmit" || s["hook"] == "receive").count())
        .sum();
    let out = Command::new("tshark")
        .args(["-r", &file_arg, "-T", "fields", "-E", "separator=|"])
        .args(["-e", "ip.src", "-e", "ip.dst", "-e", "icmp.type", "-e", "frame.interface_name", "-e", "frame.comment"])
        .output()
        .expect("run tshark");
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "tshark: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('|').collect()).collect();
    assert!(rows.len() >= hops_with_bytes && hops_with_bytes >= 8, "{hops_with_bytes} hops, tshark: {text}");
    let (server, client) = (pair.server_v4.to_string(), pair.client_v4.to_string());
    let requests = rows.iter().filter(|r| r[0] == client && r[1] == server && r[2] == "8").count();
    let replies = rows.iter().filter(|r| r[0] == server && r[1] == client && r[2] == "0").count();
    assert!(requests >= 4 && replies >= 4, "each echo on both devices: {text}");
    assert!(rows.iter().any(|r| r[3] == format!("c0@{}", pair.client)), "{text}");
    assert!(rows.iter().any(|r| r[3] == format!("s0@{}", pair.server)), "{text}");
    assert!(rows.iter().all(|r| r[4].contains("trace")), "every packet says which trace it is: {text}");
    let summary = of_type(&lines, "summary")[0];
    assert!(summary["paths"]["pcap"].as_str().unwrap().contains("packet(s)"), "{summary:#}");
}

/// Bad filters and misuse: a clear error, exit 2, nothing attached.
#[test]
fn bad_filters_are_refused() {
    for (args, expected) in [
        (vec!["trace", "--path", "--filter", "host"], "address"),
        (vec!["trace", "--path", "--filter", "port http"], "number"),
        (vec!["trace", "--path", "--filter", "host 10.0.0.1 or"], "filter"),
        (vec!["trace", "--filter", "icmp"], "--path"),
        (vec!["trace", "--path", "--aggregate", "--pcap", "/tmp/x.pcapng"], "cannot be used with"),
    ] {
        let out = dptrace(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(expected), "{args:?}: {}", stderr(&out));
    }
}

/// Without BTF the `sk_buff` layout is unknown: `--path` says so and exits 2, and nothing
/// stays attached.
#[test]
fn path_without_btf_is_refused() {
    require_root!();
    let out = dptrace_e2e::dptrace_env(&[("DPTRACE_BTF", "none")], &["trace", "--path", "--duration", "1s"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("need kernel BTF"), "{}", stderr(&out));
}

/// UDP frees what it delivered to a socket without a tracepoint, and the next datagram often
/// gets the same `sk_buff` memory at once: each datagram must still be its own path (they
/// were merged into long paths before the kernel side learnt to tell a new packet).
#[test]
fn udp_datagrams_to_a_local_socket_are_separate_paths() {
    require_root!();
    if !Command::new("python3").arg("-c").arg("import socket").status().is_ok_and(|s| s.success()) {
        dptrace_e2e::skip!("missing-tool:python3", "python3 is needed for the receiving socket");
    }
    let pair = NodePair::new();
    // One sender, back to back: the allocator hands the freed memory to the next datagram.
    let program = "import socket, threading, time\n\
                   r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                   r.bind(('127.0.0.1', 7777))\n\
                   def drain():\n    while True: r.recv(100)\n\
                   threading.Thread(target=drain, daemon=True).start()\n\
                   s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                   for i in range(100):\n    s.sendto(b'x', ('127.0.0.1', 7777)); time.sleep(0.001)\n\
                   time.sleep(0.3)\n";
    let out = dptrace(&[
        "trace",
        "--json",
        "--path",
        "--filter",
        "udp and port 7777",
        "--",
        "ip",
        "netns",
        "exec",
        &pair.client,
        "python3",
        "-c",
        program,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    let paths = paths(&lines);
    assert_eq!(paths.len(), 100, "one path per datagram: {paths:#?}");
    for path in paths {
        let hooks: Vec<&str> = steps(path).iter().map(|s| s["hook"].as_str().unwrap()).collect();
        assert_eq!(hooks.iter().filter(|h| **h == "transmit").count(), 1, "{path}");
        assert_eq!(hooks[0], "transmit", "{path}");
    }
}
