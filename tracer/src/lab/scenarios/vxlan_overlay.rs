//! `vxlan-overlay`: not a failure but the path family's demonstration. Two flannel-style
//! nodes (namespaces) joined by an underlay link, each with a pod on bridge `cni0` and a
//! VXLAN device `flannel.1`, configured right (pods and `cni0` at MTU 1450). Pod A pings
//! pod B; `--path` follows each echo request device by device: pod A's `eth0`, its veth peer
//! and `cni0` on node A, `flannel.1`, node A's `eth0` (VXLAN, VNI 1, the ping inside), node
//! B's `eth0`, `flannel.1` (decapsulated), `cni0`, pod B's veth peer, pod B's `eth0`, and
//! delivery; and each echo reply the way back.

use std::{net::IpAddr, time::Duration};

use super::{Scenario, PATH_DEMO};
use crate::{
    analyze::{Finding, Severity},
    decode::path::{HopKind, PacketPath},
    lab::{
        netns::Lab,
        overlay::{Overlay, OverlayNode, TunnelKind, VNI, VXLAN_MTU, VXLAN_PORT},
        paths::{expect_path, EndSpec, HopSpec, PathSpec, TunnelSpec},
        traffic::{self, PingOptions},
    },
};

pub struct VxlanOverlay;

const PINGS: PingOptions = PingOptions {
    count: 3,
    payload: 16,
    dont_fragment: false,
    interval: Duration::from_millis(200),
    wait: Duration::from_secs(1),
};

impl Scenario for VxlanOverlay {
    type Topology = Overlay;

    fn name(&self) -> &'static str {
        "vxlan-overlay"
    }

    fn about(&self) -> &'static str {
        "a pod-to-pod ping across a flannel-style VXLAN overlay, traced hop by hop (--path)"
    }

    fn expected_rule(&self) -> &'static str {
        PATH_DEMO
    }

    fn setup(&self, lab: &mut Lab) -> anyhow::Result<Overlay> {
        Overlay::build(lab, "vxlan", TunnelKind::Vxlan, VXLAN_MTU)
    }

    fn trigger(&self, t: &Overlay) -> anyhow::Result<Vec<String>> {
        let result = traffic::ping_wait(&t.a.pod.ns.name, t.b.pod.v4, &PINGS)?;
        let mut lines = vec![format!("pod-a: {}", PINGS.command(t.b.pod.v4))];
        lines.extend(result.lines.iter().map(|l| format!("  {l}")));
        if result.received != PINGS.count {
            anyhow::bail!("the overlay did not carry pod-a's pings to pod-b: {}", lines.join("; "));
        }
        Ok(lines)
    }

    fn verify(&self, _lab: &Lab, t: &Overlay, findings: &[Finding]) -> Vec<String> {
        // Nothing is wrong here: any error about the pods' traffic is a false diagnosis.
        let pods = t.pod_ips();
        findings
            .iter()
            .filter(|f| f.severity == Severity::Error && about_pods(f, &pods))
            .map(|f| format!("unexpected `{}` finding about the pods' traffic: {}", f.rule, f.summary))
            .collect()
    }

    fn path_filter(&self, t: &Overlay) -> Option<String> {
        Some(format!("icmp and host {}", t.b.pod.v4))
    }

    fn verify_paths(&self, t: &Overlay, paths: &[PacketPath]) -> Vec<String> {
        let names = t.namespaces();
        let mut problems = expect_path(paths, &crossing(&t.a, &t.b, "echo request pod-a → pod-b"), &names);
        problems.extend(expect_path(paths, &crossing(&t.b, &t.a, "echo reply pod-b → pod-a"), &names));
        problems
    }
}

/// Whether a finding is about traffic between the pods.
pub(super) fn about_pods(f: &Finding, pods: &[IpAddr]) -> bool {
    f.destination.is_some_and(|d| pods.contains(&d))
        || f.flows.iter().any(|flow| pods.iter().any(|p| flow.contains(&format!(" {p}"))))
}

/// An ICMP packet from `from`'s pod to `to`'s pod across the overlay, each device on the way.
fn crossing(from: &OverlayNode, to: &OverlayNode, what: &str) -> PathSpec {
    let (src, dst) = (IpAddr::V4(from.pod.v4), IpAddr::V4(to.pod.v4));
    let vxlan =
        TunnelSpec { kind: "vxlan", vni: VNI, port: VXLAN_PORT, inner_l4: "icmp", inner_src: src, inner_dst: dst };
    use HopKind::{Receive as Rx, Transmit as Tx};
    PathSpec {
        what: what.to_string(),
        l4: "icmp",
        src,
        dst,
        hops: vec![
            // net_dev_queue on the pod's eth0, netif_receive_skb on its veth peer (veth_xmit
            // hands the skb to the peer's backlog), and again on cni0 when the bridge passes
            // the frame (addressed to cni0's MAC, the gateway) up to IP.
            HopSpec::new(Tx, &from.pod.ns, &from.pod.dev),
            HopSpec::new(Rx, &from.ns, &from.pod.port),
            HopSpec::new(Rx, &from.ns, &from.bridge),
            // ip_forward → flannel.1 (route onlink via the peer's flannel.1 address), then
            // vxlan_xmit → udp_tunnel_xmit_skb → ip_local_out → the underlay eth0.
            HopSpec::new(Tx, &from.ns, &from.tunnel),
            HopSpec::new(Tx, &from.ns, &from.uplink).tunnel(vxlan),
            // The peer's eth0 receives the UDP datagram; vxlan_rcv decapsulates it and
            // gro_cells hands it to netif_receive_skb on flannel.1.
            HopSpec::new(Rx, &to.ns, &to.uplink),
            HopSpec::new(Rx, &to.ns, &to.tunnel),
            // ip_forward → cni0 (br_dev_xmit) → the pod's port → the pod's eth0.
            HopSpec::new(Tx, &to.ns, &to.bridge),
            HopSpec::new(Tx, &to.ns, &to.pod.port),
            HopSpec::new(Rx, &to.pod.ns, &to.pod.dev),
        ],
        end: EndSpec::Delivered { ns: to.pod.ns.clone() },
        never: vec![],
        min_len: None,
    }
}
