//! `node-icmp-blocked`: a filter rule on the control-plane node drops ICMP echo requests
//! (iptables and ip6tables, nf_tables backend as Debian's default `iptables` is), as
//! left-over or overlay-installed rules do to node-to-node pings (field report 2).

use super::{expect_counted_verdict, expect_verdicts, ExpectVerdict, Scenario, NETFILTER_FUNCTIONS};
use crate::{
    analyze::Finding,
    lab::{
        degraded::{Blind, Degraded, DropCheck, ExpectDrop, Own},
        netns::{exec_in, traffic_thread_comm, Lab},
        topology::NodePair,
        traffic,
    },
};

pub struct NodeIcmpBlocked;

const EXPECT: ExpectVerdict = ExpectVerdict {
    backend: "iptables-nft",
    family: None,
    table: "filter",
    chain: "INPUT",
    hook: Some("input"),
    verdict: "drop",
    rule_contains: Some("-j DROP"),
};

/// The echo requests, dropped by the rule.
const DROPS: [ExpectDrop; 2] = [
    ExpectDrop { protocol: "ipv4", reasons: &["NETFILTER_DROP"], functions: NETFILTER_FUNCTIONS },
    ExpectDrop { protocol: "ipv6", reasons: &["NETFILTER_DROP"], functions: NETFILTER_FUNCTIONS },
];

impl Scenario for NodeIcmpBlocked {
    type Topology = NodePair;

    fn name(&self) -> &'static str {
        "node-icmp-blocked"
    }

    fn about(&self) -> &'static str {
        "an iptables INPUT rule on the control-plane node drops ICMP echo from a worker (IPv4 and IPv6)"
    }

    fn expected_rule(&self) -> &'static str {
        "netfilter-drop"
    }

    fn setup(&self, lab: &mut Lab) -> anyhow::Result<NodePair> {
        let t = NodePair::build_as(lab, "worker", "cplane")?;
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
        let dsts = [t.server.v4, t.server.v6];
        expect_verdicts(findings, self.expected_rule(), lab.inode(&t.server.netns), &dsts, &EXPECT)
    }

    /// Without BTF: the worker thread's own echo requests dropped by netfilter (IPv4 and
    /// IPv6) and covered by the `netfilter-drop` finding, which names the rule whose counters
    /// moved in the control-plane node's namespace. Echo requests dropped get no answer: their
    /// addresses are not shown.
    fn verify_degraded(
        &self,
        lab: &Lab,
        t: &NodePair,
        findings: &[Finding],
        blind: Blind,
        own: &Own,
    ) -> Option<Degraded> {
        if !blind.packets {
            return None;
        }
        let thread = traffic_thread_comm(&t.client.netns);
        let check = DropCheck { rule: self.expected_rule(), thread: &thread, drops: &DROPS, never: &[], answers: &[] };
        let mut result = check.verify(findings, own);
        result.problems.extend(expect_counted_verdict(
            findings,
            self.expected_rule(),
            lab.inode(&t.server.netns),
            &EXPECT,
        ));
        result.not_checked("the destination addresses of the dropped echo requests (no BTF: drops carry no headers)");
        Some(result)
    }
}
