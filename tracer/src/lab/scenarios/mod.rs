//! The lab's scenarios: each reproduces one known failure and names the finding that
//! explains it.

mod iptables_drop;
mod link_flap;
mod udp_closed_port;
mod veth_mac_rewrite;
mod wireguard_unsupported;

use crate::analyze::Finding;

pub(crate) use super::netns::Unreproducible;
use super::{netns::Lab, topology::NodePair};

pub trait Scenario: Sync {
    fn name(&self) -> &'static str;
    /// One line: what failure this reproduces.
    fn about(&self) -> &'static str;
    /// The rule whose finding explains it.
    fn expected_rule(&self) -> &'static str;
    /// Builds the topology and the faulty configuration.
    fn setup(&self, lab: &mut Lab) -> anyhow::Result<NodePair>;
    /// Sends the traffic or makes the requests that hit the fault (inside lab namespaces
    /// only). Returns lines to show, such as what the reproduced agent itself would report.
    fn trigger(&self, topology: &NodePair) -> anyhow::Result<Vec<String>>;
    /// Why the findings do not explain the failure, or an empty list when they do.
    fn verify(&self, lab: &Lab, topology: &NodePair, findings: &[Finding]) -> Vec<String>;
}

pub fn all() -> Vec<&'static dyn Scenario> {
    vec![
        &udp_closed_port::UdpClosedPort,
        &iptables_drop::IptablesDrop,
        &wireguard_unsupported::WireguardUnsupported,
        &veth_mac_rewrite::VethMacRewrite,
        &link_flap::LinkFlap,
    ]
}

/// Checks that a finding of `rule` exists in namespace `netns` whose destination is each of `dsts`.
pub(crate) fn expect_findings(
    findings: &[Finding],
    rule: &str,
    netns: Option<u32>,
    dsts: &[std::net::IpAddr],
) -> Vec<String> {
    dsts.iter()
        .filter(|dst| {
            !findings.iter().any(|f| f.rule == rule && f.place.netns == netns && f.destination == Some(**dst))
        })
        .map(|dst| {
            let netns = netns.map_or_else(|| "?".to_string(), |n| n.to_string());
            format!("no `{rule}` finding for destination {dst} in netns {netns}")
        })
        .collect()
}

/// Checks that a finding of `rule` exists on `device` in `netns` whose actor is `comm`.
pub(crate) fn expect_actor_finding(
    findings: &[Finding],
    rule: &str,
    netns: Option<u32>,
    device: &str,
    comm: &str,
) -> Vec<String> {
    let found = findings.iter().any(|f| {
        f.rule == rule
            && f.place.netns == netns
            && f.place.device.as_deref() == Some(device)
            && f.actor.as_ref().is_some_and(|a| a.comm == comm)
    });
    if found {
        vec![]
    } else {
        vec![format!("no `{rule}` finding on {device} naming {comm}")]
    }
}
