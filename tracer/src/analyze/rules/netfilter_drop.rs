//! `netfilter-drop`: packets silently dropped by a netfilter verdict (an iptables/nftables
//! DROP rule or a chain policy), per namespace and flow, with the table, chain and rule.
//!
//! Evidence: `skb:kfree_skb` drops with reason NETFILTER_DROP (freed in `nf_hook_slow`)
//! that nothing answered (no REJECT: see `reject-by-rule`); the rule or policy is the one
//! whose packet counters moved during the session and whose matches fit the flow.

use super::{
    counter_event, finding_from_groups, group_by, how_to_remove, in_netns, inferred_note, matching_counters,
    netns_label, refusal, verdict_of,
};
use crate::{
    analyze::{correlate::Correlated, Finding, Rule, Severity},
    kernel::KernelSummary,
    probes::rule_counters::Verdict,
};

pub(crate) const REASON: &str = "NETFILTER_DROP";

pub struct NetfilterDrop;

impl Rule for NetfilterDrop {
    fn id(&self) -> &'static str {
        "netfilter-drop"
    }

    fn evaluate(&self, state: &Correlated, _kernel: &KernelSummary) -> Vec<Finding> {
        let candidates = state
            .drop_groups()
            .into_iter()
            .filter(|g| g.key.reason.as_deref() == Some(REASON) && refusal(state, g).is_none());
        group_by(candidates, |g| (g.key.netns, g.key.l4.clone(), g.key.src, g.key.dst, g.key.dport))
            .into_iter()
            .map(|groups| {
                let g = groups[0];
                let count: u64 = groups.iter().map(|g| g.count).sum();
                let what = match &g.first.flow {
                    Some(flow) => {
                        let mut f = flow.clone();
                        f.sport = None;
                        f.tcp_flags = None;
                        f.icmp_code = None;
                        f.to_string()
                    }
                    None => format!("{} traffic", g.first.protocol),
                };
                let dev = g.key.device.as_deref().map(|d| format!(" on {d}")).unwrap_or_default();
                let ns = in_netns(g);
                let counter = matching_counters(state, g, |v| matches!(v, Verdict::Drop | Verdict::PolicyDrop))
                    .into_iter()
                    .next();
                let kernel = super::kernel_verdict(state, g);
                let (by, remediation) = match counter {
                    Some(c) => (
                        format!(" by {}", c.describe()),
                        format!(
                            "The packets reached this namespace and {} dropped them (its counter moved by {} packet(s) during the session). If the traffic should pass, {}, or add an ACCEPT before it. Left-over rules from an earlier CNI or kubeadm install are a common cause (`kubeadm reset` does not flush them).",
                            c.describe(),
                            c.packets,
                            how_to_remove(c, &ns)
                        ),
                    ),
                    None if kernel.is_some() => {
                        let v = kernel.expect("checked");
                        let list = match v.chain.as_deref() {
                            Some(chain) => format!("`{ns}nft -a list chain {} {} {chain}`", v.family, v.table),
                            None => format!("`{ns}iptables-legacy-save -c -t {}`", v.table),
                        };
                        (
                            format!(" in {}", super::describe_kernel_verdict(v)),
                            format!(
                                "The kernel reported the DROP verdict of {} (no rule counter that fits the flow moved, so the rule itself is not known: nftables rules count only with a `counter` statement, and nftables policies never do). List it with {list}, find the rule or policy matching {what}, then remove or narrow it, or add an accept before it. Left-over rules from an earlier CNI or kubeadm install are a common cause (`kubeadm reset` does not flush them).",
                                super::describe_kernel_verdict(v)
                            ),
                        )
                    }
                    None => (
                        String::new(),
                        format!(
                            "A DROP rule or a chain policy in this namespace matched; no rule counter that fits the flow moved (nftables rules count only with a `counter` statement, and nftables policies never do). Find it with `{ns}iptables-save -c` (iptables-nft and legacy) or `{ns}nft -a list ruleset`, look for DROP rules and policies matching {what}, then remove or narrow the rule, or add an ACCEPT before it. On kernels with kprobes, `dptrace trace --backend netfilter=verdicts` has the kernel name the table and chain. Left-over rules from an earlier CNI or kubeadm install are a common cause (`kubeadm reset` does not flush them)."
                        ),
                    ),
                };
                let summary =
                    format!("netfilter dropped {count} packet(s) of {what}{dev} in netns {}{by}", netns_label(g));
                let mut finding =
                    finding_from_groups(self.id(), Severity::Error, summary + inferred_note(&groups), &groups, remediation);
                if let Some(c) = counter {
                    finding.netfilter = Some(verdict_of(c));
                    finding.evidence.push(counter_event(c));
                } else if let Some(v) = kernel {
                    finding.netfilter = Some(super::verdict_from_kernel(v, count));
                }
                finding.evidence.extend(kernel.cloned().map(crate::decode::Event::NetfilterVerdict));
                finding
            })
            .collect()
    }
}
