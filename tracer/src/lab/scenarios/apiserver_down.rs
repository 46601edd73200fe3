//! `apiserver-down`: nothing listens on :6443 on the API server's node, so the kernel itself
//! answers the SYN with a reset and `kubectl` gets "connection refused", the same words as
//! with a REJECT rule (`apiserver-rejected`); no rule is involved here.

use std::net::SocketAddr;

use super::{
    apiserver_rejected::{apiserver, APISERVER_PORT, ATTEMPTS, NO_LISTENER_DROPS, RULE_DROPS, TIMEOUT},
    connect_lines, expect_findings, expect_none, Scenario,
};
use crate::{
    analyze::Finding,
    lab::{
        degraded::{Blind, Degraded, DropCheck, Own},
        netns::{traffic_thread_comm, Lab},
        topology::NodePair,
    },
};

pub struct ApiserverDown;

impl Scenario for ApiserverDown {
    type Topology = NodePair;

    fn name(&self) -> &'static str {
        "apiserver-down"
    }

    fn about(&self) -> &'static str {
        "nothing listens on the API server's port (:6443): the kernel resets, kubectl gets connection refused"
    }

    fn expected_rule(&self) -> &'static str {
        "no-listener"
    }

    fn setup(&self, lab: &mut Lab) -> anyhow::Result<NodePair> {
        NodePair::build_as(lab, "kubectl", "api-down")
    }

    fn trigger(&self, t: &NodePair) -> anyhow::Result<Vec<String>> {
        let dsts = [SocketAddr::new(t.server.v4, APISERVER_PORT), SocketAddr::new(t.server.v6, APISERVER_PORT)];
        connect_lines("kubectl", &t.client.netns, &dsts, ATTEMPTS, TIMEOUT)
    }

    fn verify(&self, lab: &Lab, t: &NodePair, findings: &[Finding]) -> Vec<String> {
        let dsts = [t.server.v4, t.server.v6];
        let mut problems = expect_findings(findings, self.expected_rule(), lab.inode(&t.server.netns), &dsts);
        // No rule is involved: a finding blaming one would send the operator the wrong way.
        problems.extend(expect_none(findings, &["reject-by-rule", "netfilter-drop"], &dsts));
        problems
    }

    /// Without BTF: kubectl's own SYNs dropped by the stack with NO_SOCKET in the TCP receive
    /// functions (IPv4 and IPv6), none by netfilter, covered by the `no-listener` finding; the
    /// port and addresses where the resets show them.
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
        let answers = apiserver(t);
        let check = DropCheck {
            rule: self.expected_rule(),
            thread: &thread,
            drops: &NO_LISTENER_DROPS,
            never: &RULE_DROPS,
            answers: &answers,
        };
        Some(check.verify(findings, own))
    }
}
