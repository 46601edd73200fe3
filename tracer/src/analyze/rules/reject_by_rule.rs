//! `reject-by-rule`: a firewall REJECT answered connection attempts with a TCP RST or an
//! ICMP error, so clients see "connection refused" (or "no route to host") although the
//! service may be running. Told apart from `no-listener` (the stack answered: NO_SOCKET) and
//! `netfilter-drop` (nothing answered: clients time out).
//!
//! Evidence: NETFILTER_DROP drops (`skb:kfree_skb`) of the attempts, plus at least one of:
//! a REJECT rule whose counters moved and whose matches fit the flow; the ICMP error the
//! kernel sent about them (`icmp:icmp_send`, 6.15+); the RST the client's socket received
//! (`tcp:tcp_receive_reset`).

use super::{
    counter_event, finding_from_groups, group_by, how_to_remove, in_netns, inferred_note, netns_label, refusal,
    verdict_of,
};
use crate::{
    analyze::{correlate::Correlated, Finding, Rule, Severity},
    decode::Event,
    kernel::KernelSummary,
    probes::rule_counters::Verdict,
};

pub struct RejectByRule;

impl Rule for RejectByRule {
    fn id(&self) -> &'static str {
        "reject-by-rule"
    }

    fn evaluate(&self, state: &Correlated, _kernel: &KernelSummary) -> Vec<Finding> {
        let candidates = state
            .drop_groups()
            .into_iter()
            .filter(|g| g.key.reason.as_deref() == Some(super::netfilter_drop::REASON) && refusal(state, g).is_some());
        group_by(candidates, |g| (g.key.netns, g.key.l4.clone(), g.key.src, g.key.dst, g.key.dport))
            .into_iter()
            .map(|groups| {
                let g = groups[0];
                let answer = refusal(state, g).expect("filtered above");
                let count: u64 = groups.iter().map(|g| g.count).sum();
                let what = match &g.first.flow {
                    Some(flow) => {
                        let mut f = flow.clone();
                        f.sport = None;
                        f.tcp_flags = None;
                        f.to_string()
                    }
                    None => format!("{} traffic", g.first.protocol),
                };
                let with = answer.rule.and_then(|r| match &r.kind {
                    Verdict::Reject { with } => with.clone(),
                    _ => None,
                });
                let reply = match (&with, answer.icmp, answer.client_reset) {
                    (Some(w), _, _) if w.contains("reset") => "a TCP RST".to_string(),
                    (_, Some(icmp), _) => format!("ICMP {}", icmp.meaning),
                    (Some(w), _, _) => format!("ICMP {w}"),
                    (None, None, Some(_)) => "a TCP RST".to_string(),
                    (None, None, None) if g.key.l4.as_deref() == Some("tcp") => {
                        "ICMP port-unreachable (REJECT's default)".to_string()
                    }
                    (None, None, None) => "an ICMP error".to_string(),
                };
                let client_sees = if reply.contains("prohibited") || reply.contains("host-unreachable") {
                    "\"no route to host\" (EHOSTUNREACH)"
                } else {
                    "\"connection refused\" (ECONNREFUSED)"
                };
                let dev = g.key.device.as_deref().map(|d| format!(" on {d}")).unwrap_or_default();
                let by = answer.rule.map(|r| format!(" {}", r.describe())).unwrap_or_default();
                let summary = format!(
                    "a REJECT rule{by} refused {count} packet(s) of {what}{dev} in netns {} and answered {reply}: clients see {client_sees} although the packets reached the node",
                    netns_label(g)
                );
                let ns = in_netns(g);
                let remediation = match answer.rule {
                    Some(rule) => format!(
                        "This is a firewall rule, not a missing service. If the traffic should pass, {}; if a Kubernetes Service is meant, a kube-proxy REJECT (\"has no endpoints\") means the Service has no ready endpoints (`kubectl get endpointslices`).",
                        how_to_remove(rule, &ns)
                    ),
                    None => format!(
                        "This is a firewall rule, not a missing service: find the REJECT with `{ns}iptables-save -c | grep REJECT` or `{ns}nft -a list ruleset | grep reject` and remove or narrow it. A kube-proxy REJECT (\"has no endpoints\") means the Service has no ready endpoints (`kubectl get endpointslices`)."
                    ),
                };
                let mut finding =
                    finding_from_groups(self.id(), Severity::Error, summary + inferred_note(&groups), &groups, remediation);
                let kernel = super::kernel_verdict(state, g);
                if let Some(rule) = answer.rule {
                    finding.netfilter = Some(verdict_of(rule));
                    finding.evidence.push(counter_event(rule));
                } else if let Some(v) = kernel {
                    finding.netfilter = Some(super::verdict_from_kernel(v, count));
                    finding.summary.push_str(&format!(" (verdict of {})", super::describe_kernel_verdict(v)));
                }
                finding.evidence.extend(kernel.cloned().map(Event::NetfilterVerdict));
                finding.evidence.extend(answer.icmp.cloned().map(Event::IcmpError));
                finding.evidence.extend(answer.client_reset.cloned().map(Event::TcpReset));
                finding
            })
            .collect()
    }
}
