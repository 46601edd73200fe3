//! `link-flapping`: a link went down (administratively, by losing carrier, or by being
//! deleted) again and again during the session: pods stuck in ContainerCreating while a
//! runtime retries, a flaky uplink, a CNI recreating its devices in a loop.
//!
//! Evidence: the rtnetlink monitor's link states, joined with the requests (who set it down).

use super::finding_from_history;
use crate::{
    analyze::{correlate::Correlated, Finding, Rule, Severity},
    kernel::KernelSummary,
};

pub struct LinkFlapping;

/// Downs within one session that make a flap.
pub const MIN_DOWNS: usize = 3;

impl Rule for LinkFlapping {
    fn id(&self) -> &'static str {
        "link-flapping"
    }

    fn evaluate(&self, state: &Correlated, _kernel: &KernelSummary) -> Vec<Finding> {
        state
            .link_histories()
            .iter()
            .filter(|h| h.downs.len() >= MIN_DOWNS)
            .map(|h| {
                let n = h.downs.len();
                let span = h.downs[n - 1].ts_ns.saturating_sub(h.downs[0].ts_ns) as f64 / 1e9;
                let period = span / (n - 1) as f64;
                let mut actors: Vec<String> = h.downs.iter().filter_map(|d| d.by.as_ref().map(|a| a.comm.clone())).collect();
                actors.sort();
                actors.dedup();
                let who = if actors.is_empty() {
                    "no process asked for it (carrier loss, or a peer/device going away)".to_string()
                } else {
                    format!("set down by {}", actors.join(", "))
                };
                let summary = format!(
                    "{} went down {n} times in {span:.1} s (every {period:.2} s); {who}",
                    h.ifname.as_deref().unwrap_or("a link")
                );
                let remediation = "Find the loop: a container runtime or CNI retrying a failed pod sandbox (check its log for the first error, e.g. a MAC or address mismatch), an agent that recreates its device on every restart, or, for carrier loss, the peer side or the physical link (`ip -s link`, `ethtool`).".to_string();
                let by = h.downs.iter().find_map(|d| d.by.clone());
                finding_from_history(self.id(), Severity::Warning, summary, h, by, remediation)
            })
            .collect()
    }
}
