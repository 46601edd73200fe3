//! The lab's scenarios: each reproduces one known failure and names the finding that
//! explains it.

mod apiserver_down;
mod apiserver_rejected;
mod bpf_load_retry_loop;
mod br_netfilter_off;
mod link_flap;
mod node_icmp_blocked;
mod udp_closed_port;
mod veth_mac_rewrite;
mod vxlan_mtu;
mod vxlan_overlay;
mod wireguard_overlay;
mod wireguard_unsupported;
mod xdp_aborted;
mod xdp_native_unsupported;

use std::{
    any::Any,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use crate::{
    analyze::{Finding, NetfilterVerdict},
    decode::{path::PacketPath, Event},
};

pub(crate) use super::netns::Unreproducible;
use super::{
    degraded::{Blind, Degraded, Own},
    netns::Lab,
    traffic,
};

/// The `expected_rule` of a scenario that demonstrates the path family rather than a
/// failure: it is verified by its traced packet paths.
pub const PATH_DEMO: &str = "path";

pub trait Scenario: Sync {
    /// What `setup` builds and `trigger` and `verify` are given back: namespaces, addresses.
    type Topology: Send + Sync + 'static;
    fn name(&self) -> &'static str;
    /// One line: what failure this reproduces.
    fn about(&self) -> &'static str;
    /// The rule whose finding explains it.
    fn expected_rule(&self) -> &'static str;
    /// Builds the topology and the faulty configuration.
    fn setup(&self, lab: &mut Lab) -> anyhow::Result<Self::Topology>;
    /// Sends the traffic or makes the requests that hit the fault (inside lab namespaces
    /// only). Returns lines to show, such as what the reproduced agent itself would report.
    fn trigger(&self, topology: &Self::Topology) -> anyhow::Result<Vec<String>>;
    /// Why the findings do not explain the failure, or an empty list when they do.
    fn verify(&self, lab: &Lab, topology: &Self::Topology, findings: &[Finding]) -> Vec<String>;
    /// Where `verify` failed on a kernel that cannot show all it checks (`blind`): a check of
    /// everything that kernel does show, tied to the scenario's own activity (`own`), with
    /// what it could not check. None where the scenario has no such check for this kind of
    /// blindness: then `verify`'s problems stand.
    fn verify_degraded(
        &self,
        _lab: &Lab,
        _topology: &Self::Topology,
        _findings: &[Finding],
        _blind: Blind,
        _own: &Own,
    ) -> Option<Degraded> {
        None
    }
    /// The packets to trace hop by hop (a `--filter` expression): when Some, the lab turns
    /// the path family on for this scenario and checks the paths with `verify_paths`.
    fn path_filter(&self, _topology: &Self::Topology) -> Option<String> {
        None
    }
    /// Why the traced packet paths are not what the scenario must show, or an empty list
    /// (added to `verify`'s problems).
    fn verify_paths(&self, _topology: &Self::Topology, _paths: &[PacketPath]) -> Vec<String> {
        vec![]
    }
}

/// A topology whose type only its scenario knows.
pub type Built = Arc<dyn Any + Send + Sync>;

/// A scenario as the runner sees it: its topology type hidden, so scenarios with different
/// topologies fit in one list.
pub trait AnyScenario: Sync {
    fn name(&self) -> &'static str;
    fn about(&self) -> &'static str;
    fn expected_rule(&self) -> &'static str;
    fn setup(&self, lab: &mut Lab) -> anyhow::Result<Built>;
    fn trigger(&self, topology: &Built) -> anyhow::Result<Vec<String>>;
    fn verify(&self, lab: &Lab, topology: &Built, findings: &[Finding]) -> Vec<String>;
    fn verify_degraded(
        &self,
        lab: &Lab,
        topology: &Built,
        findings: &[Finding],
        blind: Blind,
        own: &Own,
    ) -> Option<Degraded>;
    fn path_filter(&self, topology: &Built) -> Option<String>;
    fn verify_paths(&self, topology: &Built, paths: &[PacketPath]) -> Vec<String>;
}

impl<S: Scenario> AnyScenario for S {
    fn name(&self) -> &'static str {
        Scenario::name(self)
    }

    fn about(&self) -> &'static str {
        Scenario::about(self)
    }

    fn expected_rule(&self) -> &'static str {
        Scenario::expected_rule(self)
    }

    fn setup(&self, lab: &mut Lab) -> anyhow::Result<Built> {
        Ok(Arc::new(Scenario::setup(self, lab)?))
    }

    fn trigger(&self, topology: &Built) -> anyhow::Result<Vec<String>> {
        Scenario::trigger(self, own_topology::<S>(topology))
    }

    fn verify(&self, lab: &Lab, topology: &Built, findings: &[Finding]) -> Vec<String> {
        Scenario::verify(self, lab, own_topology::<S>(topology), findings)
    }

    fn verify_degraded(
        &self,
        lab: &Lab,
        topology: &Built,
        findings: &[Finding],
        blind: Blind,
        own: &Own,
    ) -> Option<Degraded> {
        Scenario::verify_degraded(self, lab, own_topology::<S>(topology), findings, blind, own)
    }

    fn path_filter(&self, topology: &Built) -> Option<String> {
        Scenario::path_filter(self, own_topology::<S>(topology))
    }

    fn verify_paths(&self, topology: &Built, paths: &[PacketPath]) -> Vec<String> {
        Scenario::verify_paths(self, own_topology::<S>(topology), paths)
    }
}

fn own_topology<S: Scenario>(topology: &Built) -> &S::Topology {
    topology.downcast_ref().expect("a scenario is given back the topology its setup built")
}

pub fn all() -> Vec<&'static dyn AnyScenario> {
    vec![
        &udp_closed_port::UdpClosedPort,
        &node_icmp_blocked::NodeIcmpBlocked,
        &apiserver_rejected::ApiserverRejected,
        &apiserver_down::ApiserverDown,
        &br_netfilter_off::BrNetfilterOff,
        &wireguard_unsupported::WireguardUnsupported,
        &veth_mac_rewrite::VethMacRewrite,
        &link_flap::LinkFlap,
        &xdp_native_unsupported::XdpNativeUnsupported,
        &xdp_aborted::XdpAborted,
        &bpf_load_retry_loop::BpfLoadRetryLoop,
        &vxlan_overlay::VxlanOverlay,
        &vxlan_mtu::VxlanMtu,
        &wireguard_overlay::WireguardOverlay,
    ]
}

/// Checks that a finding of `rule` exists in namespace `netns` whose destination is each of `dsts`.
pub(crate) fn expect_findings(findings: &[Finding], rule: &str, netns: Option<u32>, dsts: &[IpAddr]) -> Vec<String> {
    dsts.iter()
        .filter(|dst| {
            !findings.iter().any(|f| f.rule == rule && f.place.netns == netns && f.destination == Some(**dst))
        })
        .map(|dst| format!("no `{rule}` finding for destination {dst} in netns {}", show_netns(netns)))
        .collect()
}

/// The netfilter verdict a finding must name (fields left `None` are not checked).
pub(crate) struct ExpectVerdict {
    pub backend: &'static str,
    pub family: Option<&'static str>,
    pub table: &'static str,
    pub chain: &'static str,
    pub hook: Option<&'static str>,
    pub verdict: &'static str,
    /// Text the rule (as `iptables-save` or `nft list` prints it) must contain.
    pub rule_contains: Option<&'static str>,
}

impl ExpectVerdict {
    fn matches(&self, v: &NetfilterVerdict) -> bool {
        v.backend == self.backend
            && self.family.is_none_or(|family| v.family == family)
            && v.table == self.table
            && v.chain == self.chain
            && self.hook.is_none_or(|hook| v.hook.as_deref() == Some(hook))
            && v.verdict == self.verdict
            && self.rule_contains.is_none_or(|text| v.rule.as_deref().is_some_and(|r| r.contains(text)))
    }
}

impl std::fmt::Display for ExpectVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} `{}` verdict in table ", self.backend, self.verdict)?;
        if let Some(family) = self.family {
            write!(f, "{family} ")?;
        }
        write!(f, "{}, chain {}", self.table, self.chain)?;
        if let Some(hook) = self.hook {
            write!(f, " (hook {hook})")?;
        }
        if let Some(text) = self.rule_contains {
            write!(f, ", rule with `{text}`")?;
        }
        Ok(())
    }
}

fn show_verdict(v: &NetfilterVerdict) -> String {
    format!(
        "{} `{}` verdict in table {} {}, chain {} (hook {}), {}",
        v.backend,
        v.verdict,
        v.family,
        v.table,
        v.chain,
        v.hook.as_deref().unwrap_or("?"),
        v.rule.as_deref().map_or_else(|| "no rule (policy)".to_string(), |r| format!("rule `{r}`"))
    )
}

/// Like `expect_findings`, and each finding must also name the netfilter verdict `expect`.
pub(crate) fn expect_verdicts(
    findings: &[Finding],
    rule: &str,
    netns: Option<u32>,
    dsts: &[IpAddr],
    expect: &ExpectVerdict,
) -> Vec<String> {
    let mut problems = expect_findings(findings, rule, netns, dsts);
    for dst in dsts {
        let found: Vec<_> = findings
            .iter()
            .filter(|f| f.rule == rule && f.place.netns == netns && f.destination == Some(*dst))
            .collect();
        if found.is_empty() || found.iter().any(|f| f.netfilter.as_ref().is_some_and(|v| expect.matches(v))) {
            continue;
        }
        let said: Vec<String> = found
            .iter()
            .map(|f| f.netfilter.as_ref().map_or_else(|| "no netfilter verdict".to_string(), show_verdict))
            .collect();
        problems
            .push(format!("the `{rule}` finding for {dst} does not name the {expect} (it says: {})", said.join("; ")));
    }
    problems
}

/// Where packets dropped by netfilter (NETFILTER_DROP) are freed: the hook function, or the
/// table's own function on kernels that free them there (6.18: `nft_do_chain`).
pub(crate) const NETFILTER_FUNCTIONS: &[&str] = &["nf_hook_slow", "nft_do_chain", "ipt_do_table", "ip6t_do_table"];

/// The degraded form of `expect_verdicts`, for kernels whose drops carry no namespace: a
/// finding of `rule` names the netfilter verdict `expect`, and its evidence holds the rule
/// counters that moved in namespace `netns` (read in userspace per namespace: they carry it on
/// every kernel).
pub(crate) fn expect_counted_verdict(
    findings: &[Finding],
    rule: &str,
    netns: Option<u32>,
    expect: &ExpectVerdict,
) -> Vec<String> {
    let counted = |f: &Finding| {
        f.evidence.iter().any(|e| {
            matches!(e, Event::RuleCounter(c) if Some(c.netns) == netns && c.table == expect.table && c.chain == expect.chain && c.packets > 0)
        })
    };
    let of_rule: Vec<&Finding> = findings.iter().filter(|f| f.rule == rule).collect();
    if of_rule.iter().any(|f| f.netfilter.as_ref().is_some_and(|v| expect.matches(v)) && counted(f)) {
        return vec![];
    }
    let said: Vec<String> = of_rule
        .iter()
        .map(|f| f.netfilter.as_ref().map_or_else(|| "no netfilter verdict".to_string(), show_verdict))
        .collect();
    vec![format!(
        "no `{rule}` finding names the {expect} with the rule's counters in netns {} (the `{rule}` findings say: {})",
        show_netns(netns),
        if said.is_empty() { "none".to_string() } else { said.join("; ") }
    )]
}

/// Checks that no finding of any of `rules` has one of `dsts` as its destination.
pub(crate) fn expect_none(findings: &[Finding], rules: &[&str], dsts: &[IpAddr]) -> Vec<String> {
    findings
        .iter()
        .filter(|f| rules.contains(&f.rule) && f.destination.is_some_and(|d| dsts.contains(&d)))
        .map(|f| {
            format!(
                "unexpected `{}` finding for destination {} in netns {}",
                f.rule,
                f.destination.map_or_else(String::new, |d| d.to_string()),
                show_netns(f.place.netns)
            )
        })
        .collect()
}

fn show_netns(netns: Option<u32>) -> String {
    netns.map_or_else(|| "?".to_string(), |n| n.to_string())
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

/// `who` (a client in namespace `netns`) connects over TCP to each of `dsts`, `attempts`
/// times, each given up after `timeout`. Returns one line per destination saying what the
/// client saw, as the client program would report it.
pub(crate) fn connect_lines(
    who: &str,
    netns: &str,
    dsts: &[SocketAddr],
    attempts: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    for dst in dsts {
        let mut outcomes = Vec::new();
        for _ in 0..attempts {
            outcomes.push(traffic::tcp_connect(netns, *dst, timeout)?);
        }
        let mut seen: Vec<(String, usize)> = Vec::new();
        for outcome in &outcomes {
            let text = match outcome {
                traffic::ConnectOutcome::TimedOut => {
                    format!("timed out after {:.1} s (ETIMEDOUT)", timeout.as_secs_f64())
                }
                _ => outcome.to_string(),
            };
            match seen.iter_mut().find(|(t, _)| *t == text) {
                Some((_, n)) => *n += 1,
                None => seen.push((text, 1)),
            }
        }
        let said: Vec<String> =
            seen.into_iter().map(|(text, n)| format!("{text} ({n} of {attempts} attempts)")).collect();
        lines.push(format!("{who}: connect {dst}: {}", said.join(", ")));
    }
    Ok(lines)
}
