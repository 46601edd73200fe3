//! `udp-closed-port`: a client sends UDP (IPv4 and IPv6) to a port nothing listens on.
//! The server's stack drops it with NO_SOCKET and answers ICMP port unreachable.

use super::{expect_findings, Scenario};
use crate::{
    analyze::Finding,
    lab::{
        degraded::{Blind, Degraded, DropCheck, ExpectAnswer, ExpectDrop, Own},
        netns::{traffic_thread_comm, Lab},
        topology::NodePair,
        traffic,
    },
};

pub struct UdpClosedPort;

const PORT: u16 = 9999;

/// Where the server's stack drops the datagrams.
const DROPS: [ExpectDrop; 2] = [
    ExpectDrop { protocol: "ipv4", reasons: &["NO_SOCKET"], functions: &["__udp4_lib_rcv"] },
    ExpectDrop { protocol: "ipv6", reasons: &["NO_SOCKET"], functions: &["__udp6_lib_rcv"] },
];

impl Scenario for UdpClosedPort {
    type Topology = NodePair;

    fn name(&self) -> &'static str {
        "udp-closed-port"
    }

    fn about(&self) -> &'static str {
        "UDP to a port nothing listens on (IPv4 and IPv6): NO_SOCKET drops, the client sees connection refused"
    }

    fn expected_rule(&self) -> &'static str {
        "no-listener"
    }

    fn setup(&self, lab: &mut Lab) -> anyhow::Result<NodePair> {
        NodePair::build(lab)
    }

    fn trigger(&self, t: &NodePair) -> anyhow::Result<Vec<String>> {
        traffic::udp(&t.client.netns, t.server.v4, PORT, 3)?;
        traffic::udp(&t.client.netns, t.server.v6, PORT, 3)?;
        Ok(vec![])
    }

    fn verify(&self, lab: &Lab, t: &NodePair, findings: &[Finding]) -> Vec<String> {
        expect_findings(findings, self.expected_rule(), lab.inode(&t.server.netns), &[t.server.v4, t.server.v6])
    }

    /// Without BTF: the client thread's own datagrams dropped with NO_SOCKET in the UDP
    /// receive functions (IPv4 and IPv6) and covered by the `no-listener` finding; the port
    /// and address where the kernel's ICMP port unreachable shows them.
    fn verify_degraded(
        &self,
        _lab: &Lab,
        t: &NodePair,
        findings: &[Finding],
        blind: Blind,
        own: &Own,
    ) -> Option<Degraded> {
        if !blind.packets {
            return None;
        }
        let thread = traffic_thread_comm(&t.client.netns);
        let answers =
            [ExpectAnswer { dst: t.server.v4, port: Some(PORT) }, ExpectAnswer { dst: t.server.v6, port: Some(PORT) }];
        let check =
            DropCheck { rule: self.expected_rule(), thread: &thread, drops: &DROPS, never: &[], answers: &answers };
        Some(check.verify(findings, own))
    }
}
