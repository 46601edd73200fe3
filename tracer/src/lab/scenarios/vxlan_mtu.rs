//! `vxlan-mtu`: the classic flannel MTU misconfiguration. The overlay of `vxlan-overlay`, but
//! the pods' interfaces and `cni0` stay at 1500 while `flannel.1` is 1450 (the underlay's
//! 1500 less VXLAN's 50). A full-size packet with DF set (`ping -M do -s 1472`, 1500 bytes)
//! leaves pod A, reaches node A over `cni0` and does not fit `flannel.1`: ip_forward drops it
//! (PKT_TOO_BIG) and answers "fragmentation needed, MTU 1450". Small packets pass, so the
//! overlay looks healthy; TCP stalls after its handshake where PMTU discovery is blocked.

use std::{net::IpAddr, time::Duration};

use super::{vxlan_overlay::about_pods, Scenario};
use crate::{
    analyze::{Finding, Severity},
    decode::path::{HopKind, PacketPath},
    lab::{
        degraded::{Blind, Degraded, DropCheck, ExpectAnswer, ExpectDrop, Own},
        netns::{traffic_thread_comm, Lab},
        overlay::{Overlay, TunnelKind, UNDERLAY_MTU, VXLAN_MTU},
        paths::{expect_path, EndSpec, HopSpec, PathSpec},
        traffic::{self, PingOptions},
    },
};

pub struct VxlanMtu;

const RULE: &str = "tunnel-mtu-exceeded";

/// The full-size pings, dropped where node A forwards them.
const DROPS: [ExpectDrop; 1] = [ExpectDrop { protocol: "ipv4", reasons: &["PKT_TOO_BIG"], functions: &["ip_forward"] }];

/// The control: small packets fit everywhere.
const SMALL: PingOptions = PingOptions {
    count: 3,
    payload: 16,
    dont_fragment: false,
    interval: Duration::from_millis(200),
    wait: Duration::from_secs(1),
};

/// 1472 bytes of payload + 8 ICMP + 20 IPv4 = 1500, the pod's MTU; DF set.
const FULL_SIZE: PingOptions = PingOptions {
    count: 3,
    payload: 1472,
    dont_fragment: true,
    interval: Duration::from_millis(200),
    wait: Duration::from_secs(1),
};

impl Scenario for VxlanMtu {
    type Topology = Overlay;

    fn name(&self) -> &'static str {
        "vxlan-mtu"
    }

    fn about(&self) -> &'static str {
        "flannel MTU misconfigured: pods at 1500 over a VXLAN device of 1450; full-size packets with DF are dropped"
    }

    fn expected_rule(&self) -> &'static str {
        RULE
    }

    fn setup(&self, lab: &mut Lab) -> anyhow::Result<Overlay> {
        Overlay::build(lab, "vxmtu", TunnelKind::Vxlan, UNDERLAY_MTU)
    }

    fn trigger(&self, t: &Overlay) -> anyhow::Result<Vec<String>> {
        let (pod, dst) = (&t.a.pod.ns.name, t.b.pod.v4);
        let small = traffic::ping_wait(pod, dst, &SMALL)?;
        let mut lines = vec![format!("pod-a: {} (control)", SMALL.command(dst))];
        lines.extend(small.lines.iter().map(|l| format!("  {l}")));
        if small.received != SMALL.count {
            anyhow::bail!("the overlay does not carry even small packets: {}", lines.join("; "));
        }
        let full = traffic::ping_wait(pod, dst, &FULL_SIZE)?;
        lines.push(format!("pod-a: {}", FULL_SIZE.command(dst)));
        lines.extend(full.lines.iter().map(|l| format!("  {l}")));
        if full.received > 0 || full.frag_needed_mtu != Some(VXLAN_MTU) {
            anyhow::bail!(
                "the MTU fault did not show (expected \"Frag needed and DF set (mtu = {VXLAN_MTU})\"): {}",
                lines.join("; ")
            );
        }
        Ok(lines)
    }

    fn verify(&self, lab: &Lab, t: &Overlay, findings: &[Finding]) -> Vec<String> {
        let node_a = lab.inode(&t.a.ns.name);
        let words = [t.a.tunnel.clone(), VXLAN_MTU.to_string(), UNDERLAY_MTU.to_string()];
        let of_rule: Vec<&Finding> = findings.iter().filter(|f| f.rule == RULE && f.place.netns == node_a).collect();
        let mut problems = Vec::new();
        if of_rule.is_empty() {
            problems.push(format!("no `{RULE}` finding in node-a's netns"));
        } else if !of_rule.iter().any(|f| words.iter().all(|w| f.summary.contains(w.as_str()))) {
            let said: Vec<&str> = of_rule.iter().map(|f| f.summary.as_str()).collect();
            problems.push(format!(
                "the `{RULE}` finding in node-a's netns does not name {}, {} and {} (it says: {})",
                words[0],
                words[1],
                words[2],
                said.join("; ")
            ));
        }
        problems.extend(other_errors(t, findings));
        problems
    }

    /// Without BTF: pod A's own full-size pings dropped with PKT_TOO_BIG in ip_forward and
    /// covered by the `tunnel-mtu-exceeded` finding; pod B's address where the "fragmentation
    /// needed" answer shows it. Which device the route leaves through, and its MTU, need BTF.
    fn verify_degraded(
        &self,
        _lab: &Lab,
        t: &Overlay,
        findings: &[Finding],
        blind: Blind,
        own: &Own,
    ) -> Option<Degraded> {
        if !blind.packets {
            return None;
        }
        let thread = traffic_thread_comm(&t.a.pod.ns.name);
        let answers = [ExpectAnswer { dst: IpAddr::V4(t.b.pod.v4), port: None }];
        let check = DropCheck { rule: RULE, thread: &thread, drops: &DROPS, never: &[], answers: &answers };
        let mut result = check.verify(findings, own);
        result.problems.extend(other_errors(t, findings));
        result.not_checked(format!(
            "the tunnel device and its MTUs in the finding ({}, {VXLAN_MTU} < {UNDERLAY_MTU}; no BTF: the device \
             the route leaves through cannot be read)",
            t.a.tunnel
        ));
        Some(result)
    }

    fn path_filter(&self, t: &Overlay) -> Option<String> {
        Some(format!("icmp and host {}", t.b.pod.v4))
    }

    fn verify_paths(&self, t: &Overlay, paths: &[PacketPath]) -> Vec<String> {
        let (a, b) = (&t.a, &t.b);
        use HopKind::{Receive as Rx, Transmit as Tx};
        let too_big = PathSpec {
            what: "full-size echo request pod-a → pod-b".into(),
            l4: "icmp",
            src: IpAddr::V4(a.pod.v4),
            dst: IpAddr::V4(b.pod.v4),
            hops: vec![
                HopSpec::new(Tx, &a.pod.ns, &a.pod.dev),
                HopSpec::new(Rx, &a.ns, &a.pod.port),
                HopSpec::new(Rx, &a.ns, &a.bridge),
            ],
            // ip_forward: too big for flannel.1 with DF set.
            end: EndSpec::Dropped { ns: a.ns.clone(), reasons: vec!["PKT_TOO_BIG"], location: Some("ip_forward") },
            never: vec![(a.tunnel.clone(), a.ns.clone())],
            min_len: Some(UNDERLAY_MTU),
        };
        expect_path(paths, &too_big, &t.namespaces())
    }
}

/// The small pings went through: no error finding about the pods' traffic but this one.
fn other_errors(t: &Overlay, findings: &[Finding]) -> Vec<String> {
    let pods = t.pod_ips();
    findings
        .iter()
        .filter(|f| f.rule != RULE && f.severity == Severity::Error && about_pods(f, &pods))
        .map(|f| format!("unexpected `{}` finding about the pods' traffic: {}", f.rule, f.summary))
        .collect()
}
