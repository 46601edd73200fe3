//! `wireguard-overlay`: not a failure but a path demonstration, like `vxlan-overlay`, with the
//! nodes joined as flannel's wireguard backend joins them: a WireGuard device `flannel-wg`
//! (UDP port 51820) on each node, the other node its one peer (allowed IPs its pod subnet,
//! endpoint its underlay address), pods and `cni0` at MTU 1420 (the underlay's 1500 less 80).
//! Pod A pings pod B; `--path` follows each echo request from pod A's `eth0` through `cni0`
//! to `flannel-wg`, and on: WireGuard encrypts the packet in place, in the same `sk_buff`,
//! and sends it as a UDP datagram out of node A's `eth0`, where nothing of the ping can be
//! read any more; node B's `eth0` receives the datagram, WireGuard decrypts it in place and
//! hands it to the stack on `flannel-wg`, and it goes on through `cni0` to pod B. dptrace
//! follows the packet across the encryption by its `sk_buff`, not by its headers. The echo
//! replies take the way back.
//!
//! Seen on Debian's 6.1 (VM): one `sk_buff` from pod A's `eth0` to pod B's; the 44-byte ping
//! leaves node A as a 108-byte datagram (padded to 48, 16 bytes of WireGuard header, 16 of
//! tag, 28 of UDP and IPv4). The first request waits about 10 ms between `wg_xmit` and
//! `udp_tunnel_xmit_skb` (the handshake it started; later ones 0.2-1.3 ms in the encryption
//! worker), well inside the 200 ms a tracked `sk_buff` is followed. Not shown here: GSO
//! packets (TCP from a pod with TSO) are segmented by `wg_xmit` into new `sk_buff`s and the
//! original freed there, so their paths end at `flannel-wg`.
//!
//! Needs a kernel with WireGuard (5.6 or later, or the module) and the `wg` tool; skipped on
//! kernels without WireGuard (`wireguard-unsupported` is the scenario for those).

use std::{net::IpAddr, time::Duration};

use super::{vxlan_overlay::about_pods, Scenario, PATH_DEMO};
use crate::{
    analyze::{Finding, Severity},
    decode::path::{HopKind, PacketPath},
    lab::{
        netns::Lab,
        overlay::{Overlay, OverlayNode, TunnelKind, WIREGUARD_MTU, WIREGUARD_PORT},
        paths::{expect_path, EncryptedSpec, EndSpec, HopSpec, PathSpec},
        traffic::{self, PingOptions},
    },
};

pub struct WireguardOverlay;

const PINGS: PingOptions = PingOptions {
    count: 3,
    payload: 16,
    dont_fragment: false,
    interval: Duration::from_millis(200),
    // The first ping waits for the nodes' handshake.
    wait: Duration::from_secs(2),
};

impl Scenario for WireguardOverlay {
    type Topology = Overlay;

    fn name(&self) -> &'static str {
        "wireguard-overlay"
    }

    fn about(&self) -> &'static str {
        "a pod-to-pod ping across a flannel-style WireGuard overlay, traced hop by hop through the encryption (--path)"
    }

    fn expected_rule(&self) -> &'static str {
        PATH_DEMO
    }

    fn setup(&self, lab: &mut Lab) -> anyhow::Result<Overlay> {
        Overlay::build(lab, "wg", TunnelKind::Wireguard, WIREGUARD_MTU)
    }

    fn trigger(&self, t: &Overlay) -> anyhow::Result<Vec<String>> {
        let result = traffic::ping_wait(&t.a.pod.ns.name, t.b.pod.v4, &PINGS)?;
        let mut lines = vec![format!("pod-a: {}", PINGS.command(t.b.pod.v4))];
        lines.extend(result.lines.iter().map(|l| format!("  {l}")));
        if result.received != PINGS.count {
            anyhow::bail!("the WireGuard overlay did not carry pod-a's pings to pod-b: {}", lines.join("; "));
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

/// An ICMP packet from `from`'s pod to `to`'s pod across the WireGuard tunnel, each device on
/// the way. Hops in between (function hops on kernels with kprobes: ip_forward, wg_xmit,
/// iptunnel_xmit, wg_packet_receive, …) may come between these.
fn crossing(from: &OverlayNode, to: &OverlayNode, what: &str) -> PathSpec {
    let (src, dst) = (IpAddr::V4(from.pod.v4), IpAddr::V4(to.pod.v4));
    let encrypted =
        EncryptedSpec { src: IpAddr::V4(from.underlay), dst: IpAddr::V4(to.underlay), port: WIREGUARD_PORT };
    use HopKind::{Receive as Rx, Transmit as Tx};
    PathSpec {
        what: what.to_string(),
        l4: "icmp",
        src,
        dst,
        hops: vec![
            // The pod's eth0, its veth peer, and cni0 passing the frame up to IP (as in
            // vxlan-overlay).
            HopSpec::new(Tx, &from.pod.ns, &from.pod.dev),
            HopSpec::new(Rx, &from.ns, &from.pod.port),
            HopSpec::new(Rx, &from.ns, &from.bridge),
            // ip_forward → flannel-wg (the cluster network's route): wg_xmit finds the peer
            // whose allowed IPs hold the destination and queues the skb (the first one until
            // the handshake it starts is done).
            HopSpec::new(Tx, &from.ns, &from.tunnel),
            // The same skb, encrypted in place by WireGuard's worker (header and Poly1305 tag
            // added, the ping now ciphertext), then UDP and IPv4 headers pushed in front:
            // udp_tunnel_xmit_skb → ip_local_out → the underlay eth0.
            HopSpec::new(Tx, &from.ns, &from.uplink).encrypted(encrypted.clone()),
            // The peer's eth0 receives the datagram; udp_rcv hands it to WireGuard
            // (wg_packet_receive), which decrypts it in place, checks the inner source
            // against the sending peer's allowed IPs and gives it to the stack through the
            // peer's NAPI: netif_receive_skb on flannel-wg.
            HopSpec::new(Rx, &to.ns, &to.uplink).encrypted(encrypted),
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
