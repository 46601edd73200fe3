//! `iptables-drop`: a filter rule on the server drops ICMP echo requests (IPv4 and IPv6),
//! as left-over or overlay-installed rules do to node-to-node pings (field report 2).

use super::{expect_findings, Scenario};
use crate::{
    analyze::Finding,
    lab::{
        netns::{exec_in, Lab},
        topology::NodePair,
        traffic,
    },
};

pub struct IptablesDrop;

impl Scenario for IptablesDrop {
    fn name(&self) -> &'static str {
        "iptables-drop"
    }

    fn about(&self) -> &'static str {
        "an iptables INPUT rule drops ICMP echo between two nodes (IPv4 and IPv6): NETFILTER_DROP"
    }

    fn expected_rule(&self) -> &'static str {
        "netfilter-drop"
    }

    fn setup(&self, lab: &mut Lab) -> anyhow::Result<NodePair> {
        let t = NodePair::build(lab)?;
        let ns = &t.server.netns;
        exec_in(ns, "iptables", &["-w", "-A", "INPUT", "-p", "icmp", "--icmp-type", "echo-request", "-j", "DROP"])?;
        // Only echo requests: dropping all ICMPv6 would also break neighbour discovery.
        exec_in(
            ns,
            "ip6tables",
            &["-w", "-A", "INPUT", "-p", "ipv6-icmp", "--icmpv6-type", "echo-request", "-j", "DROP"],
        )?;
        Ok(t)
    }

    fn trigger(&self, t: &NodePair) -> anyhow::Result<Vec<String>> {
        traffic::ping(&t.client.netns, t.server.v4, 3)?;
        traffic::ping(&t.client.netns, t.server.v6, 3)?;
        Ok(vec![])
    }

    fn verify(&self, lab: &Lab, t: &NodePair, findings: &[Finding]) -> Vec<String> {
        expect_findings(findings, self.expected_rule(), lab.inode(&t.server.netns), &[t.server.v4, t.server.v6])
    }
}
