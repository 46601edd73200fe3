//! The field suite's VM part: real components that act on a whole machine (systemd-udevd,
//! firewalld) or need a kernel the host does not have (wg-quick without WireGuard), driven by
//! `vm-images/guests/field.sh` in the matrix's guests, with dptrace tracing them.
//!
//! field.sh prints, per scenario, a section `field:ID` with `dptrace trace --json`'s output, a
//! section `field:ID.tool` with what the real tool did (`rc:STEP N`, `out:STEP LINE` and facts
//! as `KEY VALUE` lines), and a `DPTRACE-FIELD-ROW {json}` line per component involved (its
//! Debian package and the version from the package's control file). The verdicts are made
//! here, from that JSON: a fault scenario needs its finding (rule, severity, the actor) and the
//! real tool must have failed as in the field report; a healthy twin needs the tool to succeed
//! and no warning or error finding at all.

use serde_json::Value;

/// A field scenario of the VM part.
pub(super) struct Scenario {
    pub id: &'static str,
    /// What run-in-vm.sh must put into the guest (`--field COMPONENT`).
    pub components: &'static [&'static str],
    judge: fn(&[Value], &Tool) -> Judgement,
}

/// Every scenario field.sh knows, in the order it runs them.
pub(super) const SCENARIOS: &[Scenario] = &[
    Scenario { id: "udev-veth-mac", components: &["udev", "cni"], judge: udev_veth_mac },
    Scenario { id: "udev-veth-mac-healthy", components: &["udev", "cni"], judge: udev_veth_mac_healthy },
    Scenario { id: "wg-quick-unsupported", components: &["wg-quick"], judge: wg_quick_unsupported },
    Scenario { id: "wg-quick-healthy", components: &["wg-quick"], judge: wg_quick_healthy },
    Scenario { id: "firewalld-blocked", components: &["firewalld"], judge: firewalld_blocked },
    Scenario { id: "firewalld-healthy", components: &["firewalld"], judge: firewalld_healthy },
    Scenario { id: "xdp-filter-dispatcher", components: &["xdp-tools"], judge: xdp_filter_dispatcher },
];

pub(super) fn scenario(id: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.id == id)
}

/// The run-in-vm.sh components the scenarios need, each once.
pub(super) fn components(ids: &[String]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for c in ids.iter().filter_map(|id| scenario(id)).flat_map(|s| s.components.iter()) {
        if !out.contains(c) {
            out.push(c);
        }
    }
    out
}

/// What the real tool did: field.sh's `field:ID.tool` section.
#[derive(Debug, Default)]
pub(super) struct Tool {
    lines: Vec<String>,
}

impl Tool {
    pub fn new(lines: &[String]) -> Self {
        Tool { lines: lines.to_vec() }
    }

    /// A step's exit status (`rc:STEP N`).
    fn rc(&self, step: &str) -> Option<i32> {
        self.value(&format!("rc:{step}")).and_then(|v| v.parse().ok())
    }

    /// A step's output lines (`out:STEP LINE`).
    fn out(&self, step: &str) -> Vec<&str> {
        let prefix = format!("out:{step} ");
        self.lines.iter().filter_map(|l| l.strip_prefix(&prefix)).collect()
    }

    fn value(&self, key: &str) -> Option<&str> {
        self.lines.iter().find_map(|l| l.split_once(' ').filter(|(k, _)| *k == key).map(|(_, v)| v.trim()))
    }

    /// A step that must have succeeded.
    fn ok(&self, step: &str, problems: &mut Vec<String>) {
        match self.rc(step) {
            Some(0) => {}
            Some(rc) => problems.push(format!("{step} failed (exit {rc}): {}", self.out(step).join(" / "))),
            None => problems.push(format!("{step} did not run")),
        }
    }
}

/// The verdict on one scenario: what dptrace and the tool said (for the table), or why it
/// failed.
#[derive(Debug)]
pub(super) struct Judgement {
    /// For the table: what dptrace said, and what the real tool said.
    pub result: String,
    pub problems: Vec<String>,
}

pub(super) fn judge(id: &str, output: &[Value], tool: &Tool) -> Judgement {
    match scenario(id) {
        Some(s) => (s.judge)(output, tool),
        None => Judgement { result: String::new(), problems: vec![format!("no field scenario `{id}` in xtask")] },
    }
}

fn findings(output: &[Value]) -> impl Iterator<Item = &Value> {
    output.iter().filter(|v| v["type"] == "finding")
}

fn alarms(output: &[Value]) -> Vec<&Value> {
    findings(output).filter(|f| f["severity"] == "warning" || f["severity"] == "error").collect()
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("?")
}

fn describe(f: &Value) -> String {
    format!("{} {}: {}", text(f, "severity"), text(f, "rule"), text(f, "summary"))
}

/// A healthy twin: the tool's steps succeeded (checked by the caller) and dptrace raised no
/// warning or error.
fn quiet(output: &[Value], tool_said: String, mut problems: Vec<String>) -> Judgement {
    if !output.iter().any(|v| v["type"] == "summary") {
        problems.push("dptrace printed no summary (the session did not end normally)".into());
    }
    for alarm in alarms(output) {
        problems.push(format!("a healthy run raised {}", describe(alarm)));
    }
    Judgement { result: format!("healthy: no warning or error; {tool_said}"), problems }
}

/// The finding of `rule` with `severity` whose actor `actor_ok` accepts, or why there is none.
fn expect_finding<'a>(
    output: &'a [Value],
    rule: &str,
    severity: &str,
    actor_ok: impl Fn(&Value) -> bool,
    problems: &mut Vec<String>,
) -> Option<&'a Value> {
    let of_rule: Vec<&Value> = findings(output).filter(|f| f["rule"] == rule).collect();
    let found = of_rule.iter().copied().find(|f| f["severity"] == severity && actor_ok(&f["actor"]));
    if found.is_none() {
        let seen: Vec<String> = findings(output).map(describe).collect();
        problems.push(if of_rule.is_empty() {
            format!(
                "no {rule} finding; dptrace said: {}",
                if seen.is_empty() { "nothing".into() } else { seen.join(" | ") }
            )
        } else {
            format!(
                "no {severity} {rule} finding with the expected actor; dptrace said: {}",
                of_rule
                    .iter()
                    .map(|f| format!("{} (actor {})", describe(f), f["actor"]))
                    .collect::<Vec<_>>()
                    .join(" | ")
            )
        });
    }
    found
}

/// `vethXXXXXXXX` for the random name the plugin gave the host veth, so that the table's
/// text is the same in every run.
fn stable_veth(text: &str, veth: Option<&str>) -> String {
    match veth.filter(|v| !v.is_empty()) {
        Some(v) => text.replace(v, "vethXXXXXXXX"),
        None => text.to_string(),
    }
}

/// A CNI plugin's error, as it prints it on stdout: `{"code":…,"msg":"…"}`.
fn cni_error(lines: &[&str]) -> Option<String> {
    let joined = lines.join("\n");
    serde_json::from_str::<Value>(&joined).ok().and_then(|v| v["msg"].as_str().map(String::from))
}

/// Field report 5: the real CNI bridge plugin creates the pod's veth pair (from the pod's
/// namespace), systemd-udevd applies 99-default.link's MACAddressPolicy=persistent to the host
/// end, the plugin's CHECK fails: "Interface vethXXXX Mac doesn't match".
fn udev_veth_mac(output: &[Value], tool: &Tool) -> Judgement {
    let mut problems = Vec::new();
    let veth = tool.value("veth");
    tool.ok("add", &mut problems);
    let (recorded, now) = (mac(tool, "mac:add"), mac(tool, "mac:check"));
    let check_said = cni_error(&tool.out("check")).unwrap_or_else(|| tool.out("check").join(" "));
    match tool.rc("check") {
        Some(0) => problems.push(format!(
            "the fault did not reproduce: CHECK passed (the MAC ADD recorded: {recorded:?}, before CHECK: {now:?})"
        )),
        Some(_) if !check_said.contains("Mac doesn't match") => {
            problems.push(format!("CHECK failed, but not with \"Mac doesn't match\": {check_said}"))
        }
        Some(_) => {}
        None => problems.push("CHECK did not run".into()),
    }
    // The changer: systemd-udevd's worker. Its comm is `systemd-udevd` in 252 as released, and
    // `(udev-worker)` (child of `systemd-udevd`) in Debian's 252.39, which has the rename.
    let by_udevd = |actor: &Value| {
        actor["comm"] == "systemd-udevd"
            || (actor["comm"] == "(udev-worker)" && actor["parent_comm"] == "systemd-udevd")
    };
    let finding = expect_finding(output, "veth-mac-changed", "error", by_udevd, &mut problems);
    let mut said = "no veth-mac-changed".to_string();
    if let Some(f) = finding {
        let summary = text(f, "summary");
        if !summary.contains("created by bridge") {
            problems.push(format!("veth-mac-changed does not name the creator `bridge` (the CNI plugin): {summary}"));
        }
        if let Some(v) = veth.filter(|v| !summary.contains(v)) {
            problems.push(format!("veth-mac-changed is not about the pod's host veth {v}: {summary}"));
        }
        let actor = &f["actor"];
        let changer = match actor["parent_comm"].as_str() {
            Some(parent) if actor["comm"] != parent => format!("{}, child of {parent}", text(actor, "comm")),
            _ => text(actor, "comm").to_string(),
        };
        said = format!("error veth-mac-changed (created by bridge, MAC changed by {changer})");
    }
    let mut result = stable_veth(&format!("{said}; the plugin's CHECK: \"{check_said}\""), veth);
    if let Some(recorded) = recorded.filter(|m| !m.is_empty()) {
        result = result.replace(&recorded, "MAC");
    }
    Judgement { result, problems }
}

fn mac(tool: &Tool, key: &str) -> Option<String> {
    tool.value(key).and_then(|v| v.split_whitespace().nth(1)).map(String::from)
}

/// The healthy twin: a 10-veth.link with MACAddressPolicy=none matches the veth first; udevd
/// leaves its MAC alone and CHECK passes.
fn udev_veth_mac_healthy(output: &[Value], tool: &Tool) -> Judgement {
    let mut problems = Vec::new();
    for step in ["add", "check", "del"] {
        tool.ok(step, &mut problems);
    }
    let (recorded, now) = (mac(tool, "mac:add"), mac(tool, "mac:check"));
    if recorded.is_none() || recorded != now {
        problems.push(format!(
            "the veth's MAC changed although 10-veth.link says MACAddressPolicy=none: {recorded:?} → {now:?}"
        ));
    }
    quiet(output, "ADD, CHECK and DEL passed".into(), problems)
}

/// Field report 1: `wg-quick up` on a kernel without WireGuard; its `ip link add … type
/// wireguard` fails with EOPNOTSUPP.
fn wg_quick_unsupported(output: &[Value], tool: &Tool) -> Judgement {
    let mut problems = Vec::new();
    let printed = tool.out("up");
    match tool.rc("up") {
        Some(0) => problems.push("wg-quick up succeeded: this kernel has WireGuard".into()),
        None => problems.push("wg-quick up did not run".into()),
        Some(_) => {}
    }
    let error = printed.iter().find(|l| l.starts_with("Error:")).map(|l| l.to_string());
    if error.is_none() {
        problems.push(format!("wg-quick up did not print the kernel's error: {}", printed.join(" / ")));
    }
    let asked_by_ip = |actor: &Value| actor["comm"] == "ip";
    let finding = expect_finding(output, "link-kind-unsupported", "error", asked_by_ip, &mut problems);
    let mut said = "no link-kind-unsupported".to_string();
    if let Some(f) = finding {
        let summary = text(f, "summary");
        if !summary.contains("wireguard") {
            problems.push(format!("link-kind-unsupported does not name the wireguard kind: {summary}"));
        }
        let parent = f["actor"]["parent_comm"].as_str().unwrap_or("?");
        if parent != "wg-quick" {
            problems.push(format!("the requester's parent is {parent}, not wg-quick"));
        }
        said = format!("error link-kind-unsupported (no `wireguard` link type; requested by ip, child of {parent})");
    }
    let first = printed.first().copied().unwrap_or("");
    let tool_said = format!("wg-quick printed \"{first}\" then \"{}\"", error.unwrap_or_default());
    Judgement { result: format!("{said}; {tool_said}"), problems }
}

/// `wg-quick up`, `wg show`, `wg-quick down` on a kernel with WireGuard.
fn wg_quick_healthy(output: &[Value], tool: &Tool) -> Judgement {
    let mut problems = Vec::new();
    for step in ["up", "show", "down"] {
        tool.ok(step, &mut problems);
    }
    quiet(output, "wg-quick up and down succeeded".into(), problems)
}

/// Field report 4 where libxdp uses its dispatcher: xdp-filter's program runs as a freplace
/// component of `xdp_dispatcher`, the program on the device. dptrace's `xdp-drop` must name
/// the filter program, not only the dispatcher, with the mode, the device and xdp-filter.
fn xdp_filter_dispatcher(output: &[Value], tool: &Tool) -> Judgement {
    let mut problems = Vec::new();
    for step in ["load", "port", "send"] {
        tool.ok(step, &mut problems);
    }
    let attached_by_filter = |actor: &Value| actor["comm"] == "xdp-filter";
    let finding = expect_finding(output, "xdp-drop", "warning", attached_by_filter, &mut problems);
    let mut said = "no xdp-drop".to_string();
    if let Some(f) = finding {
        let summary = text(f, "summary");
        for part in ["native mode", "xdpv0", "10.90.0.2 > 10.90.0.1:47251"] {
            if !summary.contains(part) {
                problems.push(format!("xdp-drop does not say {part}: {summary}"));
            }
        }
        // This row's kernel has what libxdp's dispatcher needs (BTF, freplace, a bpffs): the
        // device's program is the dispatcher, and the finding must name the filter it runs.
        if !summary.contains("xdp_dispatcher") || !summary.contains("running xdpfilt_") {
            problems.push(format!("xdp-drop does not name xdp_dispatcher running xdp-filter's program: {summary}"));
        }
        said = "warning xdp-drop naming xdp_dispatcher running xdp-filter's xdpfilt_* program, native mode, the device, xdp-filter, the flow".into();
    }
    for alarm in alarms(output) {
        if alarm["rule"] != "xdp-drop" {
            problems.push(format!("another alarm: {}", describe(alarm)));
        }
    }
    Judgement { result: said, problems }
}

/// Field report 2: the node's firewalld (default zone public, an ICMP block on echo-request)
/// refuses the client's connection to the API server port 6443 and its ping. dptrace must say
/// netfilter refused them, in firewalld's table (`inet firewalld`), for each of the two flows.
fn firewalld_blocked(output: &[Value], tool: &Tool) -> Judgement {
    let mut problems = Vec::new();
    tool.ok("icmp-block", &mut problems);
    let healthz = tool.out("healthz");
    let ping = tool.out("ping");
    match tool.rc("healthz") {
        Some(0) => problems.push("the client reached the API server port: firewalld did not block it".into()),
        None => problems.push("the client's connection to 6443 did not run".into()),
        Some(_) => {}
    }
    match tool.rc("ping") {
        Some(0) => problems.push("the ping got through: the ICMP block did not apply".into()),
        None => problems.push("the ping did not run".into()),
        Some(_) => {}
    }
    let in_firewalld = |f: &Value, flow: &str| {
        // firewalld rejects (icmpx admin-prohibited): a REJECT, not a silent drop.
        f["rule"] == "reject-by-rule"
            && f["severity"] == "error"
            && f["netfilter"]["family"] == "inet"
            && f["netfilter"]["table"] == "firewalld"
            && f["flows"]
                .as_array()
                .is_some_and(|flows| flows.iter().any(|x| x.as_str().is_some_and(|x| x.contains(flow))))
    };
    let mut said = Vec::new();
    for (what, flow) in [("tcp/6443", ":6443"), ("the ping", "type 8 code 0")] {
        match findings(output).find(|f| in_firewalld(f, flow)) {
            Some(f) => {
                let nf = &f["netfilter"];
                said.push(format!(
                    "error {} for {what} ({} {} chain {}, hook {}, {})",
                    text(f, "rule"),
                    text(nf, "family"),
                    text(nf, "table"),
                    text(nf, "chain"),
                    text(nf, "hook"),
                    text(nf, "verdict")
                ));
            }
            None => {
                let seen: Vec<String> = findings(output)
                    .filter(|f| f["severity"] != "info")
                    .map(|f| format!("{} (netfilter {})", describe(f), f["netfilter"]))
                    .collect();
                problems.push(format!(
                    "no reject-by-rule error naming table inet firewalld for {what}; dptrace said: {}",
                    if seen.is_empty() { "no warning or error".into() } else { seen.join(" | ") }
                ));
            }
        }
    }
    let client = healthz.iter().find(|l| l.contains("connect:")).copied().unwrap_or("?");
    let pinged = ping.iter().find(|l| l.starts_with("From ")).copied().unwrap_or("?");
    let result = format!("{}; the client: \"{client}\", ping: \"{pinged}\"", said.join("; "));
    Judgement { result, problems }
}

/// The healthy twin: `firewall-cmd --add-port=6443/tcp` and no ICMP block: the client gets
/// the API server's answer and its ping's reply.
fn firewalld_healthy(output: &[Value], tool: &Tool) -> Judgement {
    let mut problems = Vec::new();
    for step in ["open-port", "icmp-unblock", "healthz", "ping"] {
        tool.ok(step, &mut problems);
    }
    if tool.rc("healthz") == Some(0) && !tool.out("healthz").iter().any(|l| l.trim() == "ok") {
        problems.push(format!("the API server's /healthz did not answer ok: {}", tool.out("healthz").join(" / ")));
    }
    quiet(output, "firewall-cmd --add-port=6443/tcp; /healthz answered, the ping too".into(), problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(String::from).collect()
    }

    fn json(text: &str) -> Vec<Value> {
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    const SUMMARY: &str = r#"{"type":"summary","findings":1}"#;

    fn udev_tool(check_rc: i32, check_mac: &str) -> Tool {
        Tool::new(&lines(&format!(
            "rc:add 0\nout:add {{\nveth veth616de44c\nmac:add veth616de44c 0a:c2:4b:f2:a0:19\nmac:check veth616de44c {check_mac}\nrc:check {check_rc}\nout:check {{\nout:check     \"code\": 999,\nout:check     \"msg\": \"Interface veth616de44c Mac doesn't match: 0a:c2:4b:f2:a0:19 not found\"\nout:check }}\nrc:del 0"
        )))
    }

    fn mac_finding(comm: &str, parent: &str) -> String {
        format!(
            r#"{{"type":"finding","rule":"veth-mac-changed","severity":"error","summary":"veth veth616de44c's MAC changed 0a:c2:4b:f2:a0:19 → b6:23:9d:a9:4e:24 0.095 s after it was created: created by bridge (pid 258, parent bash 252, netns fld-pod1), changed by {comm} (pid 268)","actor":{{"comm":"{comm}","parent_comm":"{parent}","pid":268}}}}"#
        )
    }

    #[test]
    fn udev_fault_needs_the_finding_the_changer_and_the_failed_check() {
        let output = json(&format!("{}\n{SUMMARY}", mac_finding("(udev-worker)", "systemd-udevd")));
        let j = judge("udev-veth-mac", &output, &udev_tool(1, "b6:23:9d:a9:4e:24"));
        assert!(j.problems.is_empty(), "{:?}", j.problems);
        assert_eq!(
            j.result,
            "error veth-mac-changed (created by bridge, MAC changed by (udev-worker), child of systemd-udevd); \
             the plugin's CHECK: \"Interface vethXXXXXXXX Mac doesn't match: MAC not found\""
        );
        // 252 as released names the worker systemd-udevd.
        let output = json(&mac_finding("systemd-udevd", "systemd-udevd"));
        assert!(judge("udev-veth-mac", &output, &udev_tool(1, "b6:23:9d:a9:4e:24")).problems.is_empty());
        // Someone else changed it: not the field report.
        let output = json(&format!("{}\n{SUMMARY}", mac_finding("ip", "bash")));
        let j = judge("udev-veth-mac", &output, &udev_tool(1, "b6:23:9d:a9:4e:24"));
        assert!(j.problems[0].contains("with the expected actor"), "{:?}", j.problems);
        // dptrace silent.
        let j = judge("udev-veth-mac", &json(SUMMARY), &udev_tool(1, "b6:23:9d:a9:4e:24"));
        assert!(j.problems[0].starts_with("no veth-mac-changed finding"), "{:?}", j.problems);
        // udev won the race against the plugin: the fault did not happen.
        let output = json(&mac_finding("(udev-worker)", "systemd-udevd"));
        let j = judge("udev-veth-mac", &output, &udev_tool(0, "0a:c2:4b:f2:a0:19"));
        assert!(j.problems[0].contains("did not reproduce"), "{:?}", j.problems);
    }

    #[test]
    fn the_dispatcher_row_needs_the_filter_named_behind_the_dispatcher() {
        let tool = Tool::new(&["rc:load 0".into(), "rc:port 0".into(), "rc:send 0".into()]);
        let finding = |program: &str| {
            format!(
                r#"{{"type":"finding","rule":"xdp-drop","severity":"warning","summary":"XDP program {program} in native mode on xdpv0 (netns host), attached by xdp-filter dropped 5 packet(s): udp 10.90.0.2 > 10.90.0.1:47251","actor":{{"comm":"xdp-filter"}}}}"#
            )
        };
        let named = finding("xdp_dispatcher (id 627) running xdpfilt_alw_all (id 636)");
        assert!(judge("xdp-filter-dispatcher", &json(&named), &tool).problems.is_empty());
        // Without the dispatcher (libxdp fell back) the row did not test what it is for.
        let alone = finding("xdpfilt_alw_all (id 636)");
        assert_eq!(judge("xdp-filter-dispatcher", &json(&alone), &tool).problems.len(), 1);
    }

    #[test]
    fn healthy_twins_must_be_quiet() {
        let tool = udev_tool(0, "0a:c2:4b:f2:a0:19");
        let info = r#"{"type":"finding","rule":"packet-drop","severity":"info","summary":"s"}"#;
        let j = judge("udev-veth-mac-healthy", &json(&format!("{info}\n{SUMMARY}")), &tool);
        assert!(j.problems.is_empty(), "{:?}", j.problems);
        assert_eq!(j.result, "healthy: no warning or error; ADD, CHECK and DEL passed");
        let eexist = r#"{"type":"finding","rule":"link-create-failed","severity":"error","summary":"creating bridge link cni0 failed with EEXIST"}"#;
        let j = judge("udev-veth-mac-healthy", &json(&format!("{eexist}\n{SUMMARY}")), &tool);
        assert_eq!(
            j.problems,
            ["a healthy run raised error link-create-failed: creating bridge link cni0 failed with EEXIST"]
        );
        // The .link did not apply: the MAC changed.
        let j = judge("udev-veth-mac-healthy", &json(SUMMARY), &udev_tool(0, "b6:23:9d:a9:4e:24"));
        assert!(j.problems[0].contains("MACAddressPolicy=none"), "{:?}", j.problems);
    }

    #[test]
    fn wg_quick_without_wireguard() {
        let tool = Tool::new(&lines(
            "rc:up 1\nout:up [#] ip link add wg0 type wireguard\nout:up Error: Unknown device type.\nout:up Unable to access interface: Protocol not supported",
        ));
        let finding = r#"{"type":"finding","rule":"link-kind-unsupported","severity":"error","summary":"the kernel has no `wireguard` link type","actor":{"comm":"ip","parent_comm":"wg-quick"}}"#;
        let j = judge("wg-quick-unsupported", &json(finding), &tool);
        assert!(j.problems.is_empty(), "{:?}", j.problems);
        assert_eq!(
            j.result,
            "error link-kind-unsupported (no `wireguard` link type; requested by ip, child of wg-quick); \
             wg-quick printed \"[#] ip link add wg0 type wireguard\" then \"Error: Unknown device type.\""
        );
        let j = judge("wg-quick-unsupported", &json(SUMMARY), &tool);
        assert!(j.problems[0].starts_with("no link-kind-unsupported finding"), "{:?}", j.problems);
        let up = Tool::new(&lines("rc:up 0\nrc:show 0\nrc:down 0"));
        assert!(judge("wg-quick-healthy", &json(SUMMARY), &up).problems.is_empty());
        assert!(!judge("wg-quick-unsupported", &json(finding), &up).problems.is_empty());
        assert_eq!(components(&["wg-quick-healthy".into(), "udev-veth-mac".into()]), ["wg-quick", "udev", "cni"]);
    }

    fn reject(flow: &str, table: &str) -> String {
        format!(
            r#"{{"type":"finding","rule":"reject-by-rule","severity":"error","summary":"a REJECT rule refused","flows":["{flow}"],"netfilter":{{"source":"nft_do_chain","backend":"nftables","family":"inet","table":"{table}","chain":"filter_INPUT","hook":"input","rule":null,"verdict":"reject"}}}}"#
        )
    }

    #[test]
    fn firewalld_must_be_named_for_both_flows() {
        let tool = Tool::new(&lines(
            "rc:icmp-block 0\nout:icmp-block success\nrc:healthz 1\nout:healthz bash: connect: No route to host\nrc:ping 1\nout:ping From 10.89.0.1 icmp_seq=1 Packet filtered",
        ));
        let both = format!(
            "{}\n{}",
            reject("tcp 10.89.0.2 > 10.89.0.1:6443", "firewalld"),
            reject("icmp 10.89.0.2 > 10.89.0.1 type 8 code 0", "firewalld")
        );
        let j = judge("firewalld-blocked", &json(&both), &tool);
        assert!(j.problems.is_empty(), "{:?}", j.problems);
        assert_eq!(
            j.result,
            "error reject-by-rule for tcp/6443 (inet firewalld chain filter_INPUT, hook input, reject); \
             error reject-by-rule for the ping (inet firewalld chain filter_INPUT, hook input, reject); \
             the client: \"bash: connect: No route to host\", ping: \"From 10.89.0.1 icmp_seq=1 Packet filtered\""
        );
        // Another table, or the ping's finding missing: not enough.
        let other = format!(
            "{}\n{}",
            reject("tcp 10.89.0.2 > 10.89.0.1:6443", "filter"),
            reject("icmp 10.89.0.2 > 10.89.0.1 type 8 code 0", "firewalld")
        );
        assert_eq!(judge("firewalld-blocked", &json(&other), &tool).problems.len(), 1);
        let healthy = Tool::new(&lines(
            "rc:open-port 0\nrc:icmp-unblock 0\nrc:healthz 0\nout:healthz HTTP/1.0 200 OK\nout:healthz \nout:healthz ok\nrc:ping 0",
        ));
        assert!(judge("firewalld-healthy", &json(SUMMARY), &healthy).problems.is_empty());
        assert!(!judge("firewalld-blocked", &json(&both), &healthy).problems.is_empty());
    }
}
