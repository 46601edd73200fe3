//! `apiserver-rejected`: a native nftables rule on the API server's node answers TCP to
//! :6443 with a reset, so `kubectl` (and flannel) get "connection refused" although the API
//! server may be up (field report 2). Told apart from `apiserver-down` by who sent the RST.

use std::{net::SocketAddr, time::Duration};

use super::{
    connect_lines, expect_counted_verdict, expect_none, expect_verdicts, ExpectVerdict, Scenario, NETFILTER_FUNCTIONS,
};
use crate::{
    analyze::Finding,
    lab::{
        degraded::{Blind, Degraded, DropCheck, ExpectAnswer, ExpectDrop, Own},
        netns::{exec_in, traffic_thread_comm, Lab},
        topology::NodePair,
    },
};

pub struct ApiserverRejected;

pub(super) const APISERVER_PORT: u16 = 6443;
pub(super) const ATTEMPTS: usize = 2;
pub(super) const TIMEOUT: Duration = Duration::from_millis(1500);

const EXPECT: ExpectVerdict = ExpectVerdict {
    backend: "nftables",
    family: Some("inet"),
    table: "dptlab",
    chain: "input",
    hook: None,
    verdict: "reject",
    rule_contains: None,
};

/// The SYNs, dropped by the rule (which answers them with a reset).
pub(super) const RULE_DROPS: [ExpectDrop; 2] = [
    ExpectDrop { protocol: "ipv4", reasons: &["NETFILTER_DROP"], functions: NETFILTER_FUNCTIONS },
    ExpectDrop { protocol: "ipv6", reasons: &["NETFILTER_DROP"], functions: NETFILTER_FUNCTIONS },
];

/// The SYNs, dropped by the stack for want of a listener (which answers them with a reset).
pub(super) const NO_LISTENER_DROPS: [ExpectDrop; 2] = [
    ExpectDrop { protocol: "ipv4", reasons: &["NO_SOCKET"], functions: &["tcp_v4_rcv"] },
    ExpectDrop { protocol: "ipv6", reasons: &["NO_SOCKET"], functions: &["tcp_v6_rcv"] },
];

/// The API server's addresses and port, where the resets show them.
pub(super) fn apiserver(t: &NodePair) -> [ExpectAnswer; 2] {
    [
        ExpectAnswer { dst: t.server.v4, port: Some(APISERVER_PORT) },
        ExpectAnswer { dst: t.server.v6, port: Some(APISERVER_PORT) },
    ]
}

impl Scenario for ApiserverRejected {
    type Topology = NodePair;

    fn name(&self) -> &'static str {
        "apiserver-rejected"
    }

    fn about(&self) -> &'static str {
        "an nftables rule rejects TCP to the API server (:6443) with a reset: kubectl gets connection refused"
    }

    fn expected_rule(&self) -> &'static str {
        "reject-by-rule"
    }

    fn setup(&self, lab: &mut Lab) -> anyhow::Result<NodePair> {
        let t = NodePair::build_as(lab, "kubectl", "api-fw")?;
        let ns = &t.server.netns;
        exec_in(ns, "nft", &["add", "table", "inet", "dptlab"])?;
        exec_in(
            ns,
            "nft",
            &["add", "chain", "inet", "dptlab", "input", "{ type filter hook input priority 0; policy accept; }"],
        )?;
        let port = APISERVER_PORT.to_string();
        exec_in(
            ns,
            "nft",
            &[
                "add", "rule", "inet", "dptlab", "input", "tcp", "dport", &port, "counter", "reject", "with", "tcp",
                "reset",
            ],
        )?;
        Ok(t)
    }

    fn trigger(&self, t: &NodePair) -> anyhow::Result<Vec<String>> {
        let dsts = [SocketAddr::new(t.server.v4, APISERVER_PORT), SocketAddr::new(t.server.v6, APISERVER_PORT)];
        connect_lines("kubectl", &t.client.netns, &dsts, ATTEMPTS, TIMEOUT)
    }

    fn verify(&self, lab: &Lab, t: &NodePair, findings: &[Finding]) -> Vec<String> {
        let dsts = [t.server.v4, t.server.v6];
        let mut problems = expect_verdicts(findings, self.expected_rule(), lab.inode(&t.server.netns), &dsts, &EXPECT);
        // The RST came from the rule, not from a port without listener.
        problems.extend(expect_none(findings, &["no-listener"], &dsts));
        problems
    }

    /// Without BTF: kubectl's own SYNs dropped by netfilter (IPv4 and IPv6), none for want
    /// of a listener, covered by the `reject-by-rule` finding, which names the rule whose
    /// counters moved in the API server node's namespace; the port and addresses where the
    /// resets kubectl received show them.
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
        let answers = apiserver(t);
        let check = DropCheck {
            rule: self.expected_rule(),
            thread: &thread,
            drops: &RULE_DROPS,
            never: &NO_LISTENER_DROPS,
            answers: &answers,
        };
        let mut result = check.verify(findings, own);
        result.problems.extend(expect_counted_verdict(
            findings,
            self.expected_rule(),
            lab.inode(&t.server.netns),
            &EXPECT,
        ));
        Some(result)
    }
}
