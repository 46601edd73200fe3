//! `udp-closed-port`: a client sends UDP (IPv4 and IPv6) to a port nothing listens on.
//! The server's stack drops it with NO_SOCKET and answers ICMP port unreachable.

use super::{expect_findings, Scenario};
use crate::{
    analyze::Finding,
    lab::{netns::Lab, topology::NodePair, traffic},
};

pub struct UdpClosedPort;

const PORT: u16 = 9999;

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
}
