//! Is what a forced backend run reported matrix.sh's own test traffic?
//!
//! matrix.sh builds a client and a server namespace joined by a veth, and says what it built
//! in its `topology` section (the server namespace's inode, the devices, addresses and ports,
//! the name of the program that sends the test datagrams) and which process sent them in each
//! run. Evidence only counts when it is tied to that: a drop in another namespace, on another
//! device, to another port or from another process is someone else's traffic, however much it
//! looks like the test's.

use std::collections::BTreeMap;

use serde_json::Value;

/// What matrix.sh built for its forced runs: the `topology` section's `KEY VALUE` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Topology {
    /// The server namespace's inode (`stat -L -c %i /run/netns/NAME`): where the test drops
    /// and netfilter verdicts happen.
    pub server_netns: u64,
    /// The server's end of the veth.
    pub server_dev: String,
    pub client_netns: u64,
    pub client_dev: String,
    pub server_v4: String,
    pub server_v6: String,
    /// The UDP port nothing listens on: the drops runs send one datagram to it per address.
    pub port: u64,
    /// The command name (comm) of the program that sends those datagrams.
    pub sender_comm: String,
    /// The nftables rules of the netfilter runs: a DROP of this UDP port, a REJECT (tcp
    /// reset) of this TCP port.
    pub nft_drop_port: u64,
    pub nft_reject_port: u64,
    /// The iptables-legacy DROP of this UDP port, where matrix.sh could set it up.
    pub legacy_drop_port: Option<u64>,
    /// The link the links runs try to create with a kind no kernel has.
    pub bogus_link: String,
}

impl Topology {
    pub fn parse(lines: &[String]) -> Result<Self, String> {
        let facts: BTreeMap<&str, &str> =
            lines.iter().filter_map(|l| l.trim().split_once(' ')).map(|(k, v)| (k, v.trim())).collect();
        let text = |key: &str| -> Result<String, String> {
            facts
                .get(key)
                .filter(|v| !v.is_empty())
                .map(|v| v.to_string())
                .ok_or_else(|| format!("matrix.sh's topology has no `{key}`"))
        };
        let number = |key: &str| -> Result<u64, String> {
            text(key)?.parse().map_err(|_| format!("matrix.sh's topology: `{key}` is not a number"))
        };
        Ok(Topology {
            server_netns: number("server_netns")?,
            server_dev: text("server_dev")?,
            client_netns: number("client_netns")?,
            client_dev: text("client_dev")?,
            server_v4: text("server_v4")?,
            server_v6: text("server_v6")?,
            port: number("port")?,
            sender_comm: text("sender_comm")?,
            nft_drop_port: number("nft_drop_port")?,
            nft_reject_port: number("nft_reject_port")?,
            legacy_drop_port: facts.contains_key("legacy_drop_port").then(|| number("legacy_drop_port")).transpose()?,
            bogus_link: text("bogus_link")?,
        })
    }

    /// `netns N on DEV`, as the evidence must show it.
    fn server_place(&self) -> String {
        format!("netns {} on {}", self.server_netns, self.server_dev)
    }
}

/// The drops hook's `coverage` in the trace's summary: what this backend can see here.
fn drops_coverage(output: &[Value]) -> Option<&Value> {
    output
        .iter()
        .filter(|v| v["type"] == "summary")
        .flat_map(|s| s["hooks"].as_array().into_iter().flatten())
        .find(|h| h["family"] == "drops" || (h["family"].is_null() && h["coverage"]["headers"].is_boolean()))
        .map(|h| &h["coverage"])
}

/// Did the trace report the drops of matrix.sh's two test datagrams (UDP to a closed port of
/// the server, once over IPv4 and once over IPv6)?
///
/// Where the backend sees packet headers, each must be exactly one drop of its flow, in the
/// server's namespace, on the server's veth, with reason NO_SOCKET (or none, when the backend
/// cannot read reasons: `coverage.reason` false). Where it cannot (no BTF: `coverage.headers`
/// and `coverage.device_and_netns` false), drops carry no flow, namespace or device; then it
/// must be exactly one NO_SOCKET drop per IP version, freed in that version's UDP receive
/// function, in the context of the process matrix.sh sent them with (its pid and comm).
pub(super) fn test_drops_seen(output: &[Value], topo: &Topology, sender_pid: Option<u64>) -> Result<String, String> {
    let drops: Vec<&Value> = output.iter().filter(|v| v["type"] == "event" && v["kind"] == "drop").collect();
    let coverage = drops_coverage(output).ok_or_else(|| {
        format!(
            "no summary saying what the drops backend covers (the trace did not finish?); {} drop events",
            drops.len()
        )
    })?;
    let reasonless = coverage["reason"] == false;
    if coverage["headers"] == false && coverage["device_and_netns"] == false {
        return flowless_test_drops(&drops, topo, sender_pid, reasonless);
    }
    let mut seen = Vec::new();
    let mut missing = Vec::new();
    for dst in [&topo.server_v4, &topo.server_v6] {
        let to_dst: Vec<&&Value> =
            drops.iter().filter(|e| e["flow"]["dst"] == dst.as_str() && e["flow"]["dport"] == topo.port).collect();
        let ours: Vec<&&Value> = to_dst
            .iter()
            .copied()
            .filter(|e| e["netns"] == topo.server_netns && e["device"] == topo.server_dev.as_str())
            .collect();
        match ours[..] {
            [e] if e["reason"] == "NO_SOCKET" => seen.push(format!("{dst} NO_SOCKET in {}", topo.server_place())),
            [e] if e["reason"].is_null() && reasonless => seen.push(format!(
                "{dst} at {} in {} (no reason field)",
                e["function"].as_str().unwrap_or("?"),
                topo.server_place()
            )),
            [e] => missing.push(format!("{dst} dropped with reason {}", e["reason"])),
            [] => match to_dst.first() {
                Some(e) => missing.push(format!(
                    "a drop to {dst}:{} in netns {} on {}, not in the test's {}",
                    topo.port,
                    e["netns"],
                    e["device"],
                    topo.server_place()
                )),
                None => missing.push(format!("no drop to {dst}:{}", topo.port)),
            },
            _ => missing.push(format!(
                "{} drops to {dst}:{} in {} for one datagram",
                ours.len(),
                topo.port,
                topo.server_place()
            )),
        }
    }
    if missing.is_empty() {
        Ok(seen.join(", "))
    } else {
        Err(format!("{} ({} drop events)", missing.join("; "), drops.len()))
    }
}

/// The IP version of a UDP receive function, where a datagram to a closed port is freed with
/// NO_SOCKET (`__udp4_lib_rcv`, or its caller where the compiler inlined it).
fn udp_receive_version(function: &str) -> Option<&'static str> {
    match function {
        "__udp4_lib_rcv" | "udp_rcv" => Some("ipv4"),
        "__udp6_lib_rcv" | "udpv6_rcv" => Some("ipv6"),
        _ => None,
    }
}

/// The function part of a drop's location (`__udp4_lib_rcv+0x2f1/0x9a0`).
fn drop_function(event: &Value) -> Option<&str> {
    event["function"].as_str().or_else(|| event["location"].as_str().map(|l| l.split('+').next().unwrap_or(l)))
}

/// The drops of a backend that sees no headers, namespace or device: what such a kernel can
/// still show must be the test's own.
fn flowless_test_drops(
    drops: &[&Value],
    topo: &Topology,
    sender_pid: Option<u64>,
    reasonless: bool,
) -> Result<String, String> {
    let pid = sender_pid.ok_or("the backend sees no headers, and matrix.sh recorded no sender pid to tie drops to")?;
    let mut ours: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut others = 0;
    for e in drops {
        let Some(version) = drop_function(e).and_then(udp_receive_version) else { continue };
        let reason_ok = e["reason"] == "NO_SOCKET" || (e["reason"].is_null() && reasonless);
        if !reason_ok {
            continue;
        }
        if e["task"]["pid"] != pid || e["task"]["comm"] != topo.sender_comm.as_str() {
            others += 1;
            continue;
        }
        // The protocol, where the backend reads it, must agree with the location.
        match e["protocol"].as_str() {
            Some(p @ ("ipv4" | "ipv6")) if p != version => {
                problems.push(format!("a drop with protocol {p} freed in {}", drop_function(e).unwrap_or("?")));
                continue;
            }
            _ => {}
        }
        let inferred = if e["reason_inferred"] == true { " (reason inferred)" } else { "" };
        ours.entry(version).or_default().push(format!(
            "{version} NO_SOCKET{inferred} at {} by {} {pid}",
            drop_function(e).unwrap_or("?"),
            topo.sender_comm
        ));
    }
    for version in ["ipv4", "ipv6"] {
        match ours.get(version).map(Vec::len).unwrap_or(0) {
            1 => {}
            0 => problems.push(format!(
                "no {version} NO_SOCKET drop in a UDP receive function by {} (pid {pid})",
                topo.sender_comm
            )),
            n => problems
                .push(format!("{n} {version} NO_SOCKET drops by {} (pid {pid}) for one datagram", topo.sender_comm)),
        }
    }
    if problems.is_empty() {
        let seen: Vec<String> = ours.into_values().flatten().collect();
        Ok(format!("{} (no headers, netns or device on this kernel)", seen.join(", ")))
    } else {
        Err(format!(
            "{} ({} drop events; {others} UDP NO_SOCKET drops of other processes)",
            problems.join("; "),
            drops.len()
        ))
    }
}

/// Did the trace explain matrix.sh's failed creation of its `bogus` link? A
/// `link-kind-unsupported` finding whose evidence holds that request (the link's name and
/// kind) and its EOPNOTSUPP, and the kernel's message where the kernel has extended acks.
pub(super) fn link_failure_explained(output: &[Value], topo: &Topology) -> Result<String, String> {
    let findings: Vec<&Value> =
        output.iter().filter(|v| v["type"] == "finding" && v["rule"] == "link-kind-unsupported").collect();
    if findings.is_empty() {
        return Err("no link-kind-unsupported finding for the bogus link".into());
    }
    let ours = findings.iter().find(|f| {
        f["evidence"].as_array().into_iter().flatten().any(|e| {
            e["kind"] == "link-request" && e["link_kind"] == "bogus" && e["ifname"] == topo.bogus_link.as_str()
        })
    });
    let Some(finding) = ours else {
        return Err(format!(
            "link-kind-unsupported, but none for the request to create {}: {}",
            topo.bogus_link, findings[0]
        ));
    };
    let evidence = finding["evidence"].as_array().map(Vec::as_slice).unwrap_or_default();
    if !evidence.iter().any(|e| e["kind"] == "netlink-ack" && e["error"] == "EOPNOTSUPP") {
        return Err(format!("link-kind-unsupported for {} without its EOPNOTSUPP: {finding}", topo.bogus_link));
    }
    let message = evidence.iter().find(|e| e["kind"] == "kernel-message").and_then(|e| e["message"].as_str());
    Ok(format!(
        "request for {}, EOPNOTSUPP{}",
        topo.bogus_link,
        message.map(|m| format!(", kernel: {m}")).unwrap_or_default()
    ))
}

/// Did the trace tell matrix.sh's netfilter faults apart? Native nftables rules without
/// counters in the server namespace: a DROP of the UDP port must be a `netfilter-drop` and a
/// REJECT (tcp reset) of the TCP port a `reject-by-rule`, plus a `netfilter-drop` of the
/// iptables-legacy DROP where matrix.sh set one up. Each finding must be the test's: in the
/// server's namespace, on its veth, for the server's address and the rule's port. With
/// `verdicts`, the kernel's verdict must also name the nftables table and chain (no counter
/// can).
pub(super) fn netfilter_told_apart(output: &[Value], backend: &str, topo: &Topology) -> Result<String, String> {
    let findings: Vec<&Value> = output.iter().filter(|v| v["type"] == "finding").collect();
    let mut missing = Vec::new();
    let mut seen = Vec::new();
    let mut wanted =
        vec![("netfilter-drop", "udp", topo.nft_drop_port), ("reject-by-rule", "tcp", topo.nft_reject_port)];
    if let Some(port) = topo.legacy_drop_port {
        wanted.push(("netfilter-drop", "udp", port));
    }
    for (rule, l4, port) in wanted {
        let target = format!("{}:{port}", topo.server_v4);
        let for_target: Vec<&Value> = findings
            .iter()
            .copied()
            .filter(|f| {
                f["rule"] == rule && f["flows"].as_array().into_iter().flatten().any(|fl| flow_to(fl, l4, &target))
            })
            .collect();
        let ours = for_target.iter().copied().find(|f| {
            let place = &f["place"];
            place["netns"] == topo.server_netns
                && place["device"] == topo.server_dev.as_str()
                && f["destination"] == topo.server_v4.as_str()
        });
        let Some(f) = ours else {
            match for_target.first() {
                Some(f) => missing.push(format!(
                    "{rule} for {l4} {target} in netns {} on {} (destination {}), not in the test's {}",
                    f["place"]["netns"],
                    f["place"]["device"],
                    f["destination"],
                    topo.server_place()
                )),
                None => missing.push(format!("no {rule} for {l4} {target}")),
            }
            continue;
        };
        let nf = &f["netfilter"];
        let source = nf["source"].as_str().unwrap_or("?");
        if Some(port) == topo.legacy_drop_port {
            // The iptables-legacy DROP: its counter attributes it with any backend (with
            // kprobes, ipt_do_table may name it first).
            if nf["table"] == "filter" {
                seen.push(format!("{rule} {l4}/{port} in filter {source}"));
            } else {
                missing.push(format!("{rule} {l4}/{port} without its table (netfilter: {nf})"));
            }
        } else if backend == "verdicts" {
            if nf["table"] == "mxguard" && nf["chain"] == "input" {
                seen.push(format!("{rule} {l4}/{port} in mxguard {source}"));
            } else {
                missing.push(format!("{rule} {l4}/{port} without the kernel's verdict (netfilter: {nf})"));
            }
        } else {
            seen.push(format!("{rule} {l4}/{port}"));
        }
    }
    if missing.is_empty() {
        Ok(format!("{} in {}", seen.join(", "), topo.server_place()))
    } else {
        Err(missing.join("; "))
    }
}

/// Is a finding's flow (`udp 10.77.0.1 > 10.77.0.2:9998`) of protocol `l4` to `target`?
fn flow_to(flow: &Value, l4: &str, target: &str) -> bool {
    let Some(text) = flow.as_str() else { return false };
    let mut words = text.split_whitespace();
    words.next() == Some(l4) && text.split(" > ").nth(1).and_then(|dst| dst.split_whitespace().next()) == Some(target)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn topology() -> Topology {
        Topology::parse(&topology_lines()).unwrap()
    }

    fn topology_lines() -> Vec<String> {
        [
            "server_netns 4026532500",
            "server_dev s0",
            "client_netns 4026532400",
            "client_dev c0",
            "server_v4 10.77.0.2",
            "server_v6 fd00:77::2",
            "port 9999",
            "sender_comm dpt-udp-send",
            "nft_drop_port 9998",
            "nft_reject_port 6443",
            "legacy_drop_port 9997",
            "bogus_link dpt-bogus",
        ]
        .map(String::from)
        .to_vec()
    }

    fn summary(reason: bool, headers: bool) -> Value {
        json!({"type": "summary", "hooks": [{"family": "drops", "coverage": {"reason": reason, "headers": headers, "device_and_netns": headers}}]})
    }

    fn flowful(dst: &str, dport: u64, netns: u64, device: &str) -> Value {
        json!({"type": "event", "kind": "drop", "reason": "NO_SOCKET", "netns": netns, "device": device,
               "protocol": if dst.contains(':') { "ipv6" } else { "ipv4" },
               "function": if dst.contains(':') { "__udp6_lib_rcv" } else { "__udp4_lib_rcv" },
               "flow": {"l4": "udp", "dst": dst, "dport": dport}})
    }

    fn flowless(function: &str, protocol: &str, pid: u64, comm: &str) -> Value {
        json!({"type": "event", "kind": "drop", "reason": "NO_SOCKET", "netns": null, "device": null, "flow": null,
               "protocol": protocol, "function": function, "location": format!("{function}+0x2f1/0x9a0"),
               "task": {"pid": pid, "tid": pid, "comm": comm}})
    }

    #[test]
    fn the_topology_section_is_required_in_full() {
        let topo = topology();
        assert_eq!((topo.server_netns, topo.legacy_drop_port), (4026532500, Some(9997)));
        let mut lines = topology_lines();
        lines.retain(|l| !l.starts_with("legacy_drop_port"));
        assert_eq!(Topology::parse(&lines).unwrap().legacy_drop_port, None);
        lines.retain(|l| !l.starts_with("server_netns"));
        assert!(Topology::parse(&lines).unwrap_err().contains("server_netns"));
    }

    #[test]
    fn flowful_drops_must_be_in_the_test_namespace_on_its_device() {
        let topo = topology();
        let ours = [flowful("10.77.0.2", 9999, 4026532500, "s0"), flowful("fd00:77::2", 9999, 4026532500, "s0")];
        let ok = test_drops_seen(&[ours[0].clone(), ours[1].clone(), summary(true, true)], &topo, None);
        assert!(ok.is_ok(), "{ok:?}");
        // The same flows in another namespace, on another device, or to another port are not ours.
        for foreign in [
            flowful("10.77.0.2", 9999, 4026531840, "s0"),
            flowful("10.77.0.2", 9999, 4026532500, "eth0"),
            flowful("10.77.0.2", 9998, 4026532500, "s0"),
        ] {
            let err = test_drops_seen(&[foreign, ours[1].clone(), summary(true, true)], &topo, None).unwrap_err();
            assert!(err.contains("10.77.0.2"), "{err}");
        }
        // One datagram, one drop.
        let twice = [ours[0].clone(), ours[0].clone(), ours[1].clone(), summary(true, true)];
        assert!(test_drops_seen(&twice, &topo, None).unwrap_err().contains("2 drops"));
        // Without a summary nothing says what the backend can see.
        assert!(test_drops_seen(&ours, &topo, None).is_err());
    }

    #[test]
    fn drops_without_reason_count_only_when_the_backend_cannot_read_reasons() {
        let topo = topology();
        let mut v4 = flowful("10.77.0.2", 9999, 4026532500, "s0");
        let mut v6 = flowful("fd00:77::2", 9999, 4026532500, "s0");
        v4["reason"] = Value::Null;
        v6["reason"] = Value::Null;
        assert!(test_drops_seen(&[v4.clone(), v6.clone(), summary(false, true)], &topo, None).is_ok());
        assert!(test_drops_seen(&[v4, v6, summary(true, true)], &topo, None).is_err());
    }

    #[test]
    fn flowless_drops_must_come_from_the_sender_in_udp_receive_functions() {
        let topo = topology();
        let blind = summary(true, false);
        let v4 = flowless("__udp4_lib_rcv", "ipv4", 321, "dpt-udp-send");
        let v6 = flowless("__udp6_lib_rcv", "ipv6", 321, "dpt-udp-send");
        let ok = test_drops_seen(&[v4.clone(), v6.clone(), blind.clone()], &topo, Some(321));
        assert!(ok.as_ref().is_ok_and(|s| s.contains("no headers")), "{ok:?}");
        // The kprobe backend without BTF cannot read the protocol: the location tells it.
        let (mut k4, mut k6) = (v4.clone(), v6.clone());
        k4["protocol"] = json!("0x0000");
        k6["protocol"] = json!("0x0000");
        assert!(test_drops_seen(&[k4, k6, blind.clone()], &topo, Some(321)).is_ok());
        // Another process's drops, however alike, are not the test's.
        let other_pid = flowless("__udp4_lib_rcv", "ipv4", 999, "dpt-udp-send");
        let other_comm = flowless("__udp4_lib_rcv", "ipv4", 321, "bash");
        for foreign in [other_pid, other_comm] {
            let err = test_drops_seen(&[foreign, v6.clone(), blind.clone()], &topo, Some(321)).unwrap_err();
            assert!(err.contains("no ipv4 NO_SOCKET drop") && err.contains("1 UDP NO_SOCKET drops of other"), "{err}");
        }
        // Two IPv4 drops are not one of each; a drop elsewhere than UDP's receive path is not ours.
        assert!(test_drops_seen(&[v4.clone(), v4.clone(), blind.clone()], &topo, Some(321)).is_err());
        let tcp = flowless("tcp_v6_rcv", "ipv6", 321, "dpt-udp-send");
        assert!(test_drops_seen(&[v4.clone(), tcp, blind.clone()], &topo, Some(321)).is_err());
        // The protocol, where shown, must agree with the location.
        let mixed = flowless("__udp6_lib_rcv", "ipv4", 321, "dpt-udp-send");
        assert!(test_drops_seen(&[v4.clone(), mixed, blind.clone()], &topo, Some(321))
            .unwrap_err()
            .contains("protocol ipv4"));
        // Without the sender's pid nothing ties them to the test.
        assert!(test_drops_seen(&[v4.clone(), v6.clone(), blind], &topo, None).is_err());
        // Flowless drops do not count where the backend sees headers (a BTF kernel).
        assert!(test_drops_seen(&[v4, v6, summary(true, true)], &topo, Some(321)).is_err());
    }

    fn finding(rule: &str, flow: &str, netns: u64, device: &str, destination: &str, table: &str) -> Value {
        json!({"type": "finding", "rule": rule, "flows": [flow], "destination": destination,
               "place": {"netns": netns, "device": device},
               "netfilter": {"source": "nft_do_chain", "table": table, "chain": if table == "filter" { "INPUT" } else { "input" }}})
    }

    fn netfilter_findings() -> Vec<Value> {
        vec![
            finding("netfilter-drop", "udp 10.77.0.1 > 10.77.0.2:9998", 4026532500, "s0", "10.77.0.2", "mxguard"),
            finding("reject-by-rule", "tcp 10.77.0.1 > 10.77.0.2:6443", 4026532500, "s0", "10.77.0.2", "mxguard"),
            finding("netfilter-drop", "udp 10.77.0.1 > 10.77.0.2:9997", 4026532500, "s0", "10.77.0.2", "filter"),
        ]
    }

    #[test]
    fn netfilter_findings_must_be_the_tests_own() {
        let topo = topology();
        let ok = netfilter_told_apart(&netfilter_findings(), "verdicts", &topo);
        assert!(ok.as_ref().is_ok_and(|s| s.contains("mxguard") && s.contains("netns 4026532500")), "{ok:?}");
        // A finding of another namespace, device, destination or port is not the test's.
        let foreign = [
            finding("netfilter-drop", "udp 10.77.0.1 > 10.77.0.2:9998", 4026531840, "s0", "10.77.0.2", "mxguard"),
            finding("netfilter-drop", "udp 10.77.0.1 > 10.77.0.2:9998", 4026532500, "eth0", "10.77.0.2", "mxguard"),
            finding("netfilter-drop", "udp 10.77.0.1 > 10.77.0.9:9998", 4026532500, "s0", "10.77.0.9", "mxguard"),
            finding("netfilter-drop", "udp 10.77.0.1 > 10.77.0.2:19998", 4026532500, "s0", "10.77.0.2", "mxguard"),
            finding("netfilter-drop", "tcp 10.77.0.1 > 10.77.0.2:9998", 4026532500, "s0", "10.77.0.2", "mxguard"),
        ];
        for f in foreign {
            let mut output = netfilter_findings();
            output[0] = f;
            let err = netfilter_told_apart(&output, "tracepoints", &topo).unwrap_err();
            assert!(err.contains("9998"), "{err}");
        }
        // With `verdicts`, the kernel's verdict must name the table.
        let mut output = netfilter_findings();
        output[1]["netfilter"]["table"] = json!("filter");
        assert!(netfilter_told_apart(&output, "verdicts", &topo).unwrap_err().contains("6443"));
        assert!(netfilter_told_apart(&output, "tracepoints", &topo).is_ok());
        // The legacy DROP is required where matrix.sh set it up, and only there.
        let mut output = netfilter_findings();
        output.pop();
        assert!(netfilter_told_apart(&output, "tracepoints", &topo).unwrap_err().contains("9997"));
        let no_legacy = Topology { legacy_drop_port: None, ..topo };
        assert!(netfilter_told_apart(&output, "tracepoints", &no_legacy).is_ok());
    }

    #[test]
    fn a_link_failure_counts_only_for_the_tests_bogus_link() {
        let topo = topology();
        let finding = |ifname: &str| {
            json!({"type": "finding", "rule": "link-kind-unsupported", "evidence": [
                {"kind": "link-request", "link_kind": "bogus", "ifname": ifname},
                {"kind": "netlink-ack", "error": "EOPNOTSUPP"},
                {"kind": "kernel-message", "message": "Unknown device type"}]})
        };
        assert!(link_failure_explained(&[finding("dpt-bogus")], &topo).unwrap().contains("Unknown device type"));
        assert!(link_failure_explained(&[finding("other0")], &topo).is_err());
        let mut no_ack = finding("dpt-bogus");
        no_ack["evidence"][1]["error"] = json!("EEXIST");
        assert!(link_failure_explained(&[no_ack], &topo).is_err());
    }
}
