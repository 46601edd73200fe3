//! From events to findings: `correlate` keeps bounded per-flow state, each file in `rules/`
//! turns that state into findings with their evidence and a remediation.

pub mod correlate;
pub mod paths;
pub mod rules;

use std::net::IpAddr;

use serde::Serialize;

use crate::{decode::Event, kernel::KernelSummary};

use self::correlate::Correlated;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// Where a finding happened.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Place {
    pub netns: Option<u32>,
    pub netns_name: Option<String>,
    /// The pod whose network namespace this is (from the evidence): its UID, and namespace
    /// and name when the container runtime (crictl) knows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<crate::pods::Pod>,
    pub device: Option<String>,
    /// Kernel function (and offset) where the packets died.
    pub location: Option<String>,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        match (&self.netns_name, self.netns) {
            (Some(name), Some(inode)) => parts.push(format!("netns {name} ({inode})")),
            (None, Some(inode)) => parts.push(format!("netns {inode}")),
            _ => {}
        }
        if let Some(pod) = &self.pod {
            parts.push(format!("pod {pod}"));
        }
        if let Some(dev) = &self.device {
            parts.push(format!("dev {dev}"));
        }
        if let Some(loc) = &self.location {
            parts.push(format!("at {loc}"));
        }
        f.write_str(&parts.join(", "))
    }
}

/// A diagnosis: a stable rule id, what happened, the evidence and what to do.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub rule: &'static str,
    pub severity: Severity,
    pub summary: String,
    pub place: Place,
    /// The flows affected, as `l4 src > dst:port` strings.
    pub flows: Vec<String>,
    pub destination: Option<IpAddr>,
    pub count: u64,
    pub first_time: String,
    pub last_time: String,
    /// The process behind it, when the finding is about a request someone made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<crate::decode::links::Actor>,
    /// Which netfilter table, chain and rule gave the verdict, where it could be found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netfilter: Option<NetfilterVerdict>,
    /// A few of the events behind the finding (the first ones seen).
    pub evidence: Vec<Event>,
    pub remediation: String,
}

/// The netfilter rule (or chain policy) behind a verdict on some packets.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NetfilterVerdict {
    /// How it was found: `rule-counters` (counters that moved during the session) or the
    /// kernel function that returned the verdict (`nft_do_chain`, `ipt_do_table`).
    pub source: String,
    /// `iptables-nft`, `iptables-legacy` or `nftables`.
    pub backend: String,
    /// nftables family names: `ip`, `ip6`, `inet`, `bridge`, `arp`, `netdev`.
    pub family: String,
    pub table: String,
    pub chain: String,
    /// The netfilter hook (`prerouting`, `input`, `forward`, `output`, `postrouting`) of the
    /// base chain(s) that reach `chain`.
    pub hook: Option<String>,
    /// The rule as `iptables-save` or `nft list` prints it; None for a chain policy.
    pub rule: Option<String>,
    /// `drop`, `reject`, `policy-drop`, `dnat`, ...
    pub verdict: String,
    /// Packets the rule counted during the session.
    pub packets: u64,
}

/// A diagnosis rule: reads correlated state, emits findings.
pub trait Rule {
    /// The rule id from DESIGN.md; never changes meaning once shipped.
    fn id(&self) -> &'static str;
    fn evaluate(&self, state: &Correlated, kernel: &KernelSummary) -> Vec<Finding>;
}

/// Runs the correlation and the rules over a session's events.
pub struct Analyzer {
    state: Correlated,
    rules: Vec<Box<dyn Rule + Send>>,
}

impl Default for Analyzer {
    fn default() -> Self {
        Self::new()
    }
}

impl Analyzer {
    pub fn new() -> Self {
        Self { state: Correlated::default(), rules: rules::all() }
    }

    pub fn observe(&mut self, event: &Event) {
        self.state.observe(event);
    }

    pub fn state(&self) -> &Correlated {
        &self.state
    }

    /// All findings, most severe first.
    pub fn findings(&self, kernel: &KernelSummary) -> Vec<Finding> {
        let mut findings: Vec<Finding> = self.rules.iter().flat_map(|r| r.evaluate(&self.state, kernel)).collect();
        for f in findings.iter_mut().filter(|f| f.place.pod.is_none()) {
            f.place.pod = crate::pods::pod_at(f.place.netns, &f.evidence);
        }
        findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(b.count.cmp(&a.count)));
        findings
    }
}
