//! `no-listener`: TCP or UDP packets that reached a host but no socket was bound to the
//! destination port, so the stack dropped them and answered with a TCP RST or an ICMP
//! port unreachable: the client sees "connection refused".
//!
//! Evidence: `skb:kfree_skb` drops with reason NO_SOCKET, grouped by netns and destination.

use super::{finding_from_groups, group_by, in_netns, inferred_note, netns_label};
use crate::{
    analyze::{correlate::Correlated, Finding, Rule, Severity},
    kernel::KernelSummary,
};

pub(crate) const REASON: &str = "NO_SOCKET";

pub struct NoListener;

impl Rule for NoListener {
    fn id(&self) -> &'static str {
        "no-listener"
    }

    fn evaluate(&self, state: &Correlated, _kernel: &KernelSummary) -> Vec<Finding> {
        let candidates = state.drop_groups().into_iter().filter(|g| {
            g.key.reason.as_deref() == Some(REASON)
                && matches!(g.key.l4.as_deref(), Some("tcp" | "udp"))
                && g.key.dport.is_some()
        });
        group_by(candidates, |g| (g.key.netns, g.key.l4.clone(), g.key.dst, g.key.dport))
            .into_iter()
            .map(|groups| {
                let g = groups[0];
                let l4 = g.key.l4.as_deref().unwrap_or("?");
                let dst = g.key.dst.map(|a| a.to_string()).unwrap_or_default();
                let port = g.key.dport.unwrap_or(0);
                let count: u64 = groups.iter().map(|g| g.count).sum();
                let answer = if l4 == "tcp" { "a TCP RST" } else { "an ICMP port unreachable" };
                let summary = format!(
                    "nothing listens on {l4} port {port} at {dst} in netns {}: {count} packet(s) dropped (NO_SOCKET); the kernel answers {answer}, clients see \"connection refused\"",
                    netns_label(g)
                );
                let ss_flag = if l4 == "tcp" { "-ltnp" } else { "-lunp" };
                let remediation = format!(
                    "Start the service that should listen on {l4}/{port}, or point clients at the port it really uses. Check with `{}ss {ss_flag} 'sport = :{port}'`. For a Kubernetes Service, check that its endpoints exist and its targetPort matches the container port (`kubectl get endpointslices`).",
                    in_netns(g)
                );
                finding_from_groups(self.id(), Severity::Warning, summary + inferred_note(&groups), &groups, remediation)
            })
            .collect()
    }
}
