//! `netfilter-drop`: packets dropped by a netfilter verdict (an iptables/nftables DROP rule
//! or a chain policy), per namespace and flow.
//!
//! Evidence: `skb:kfree_skb` drops with reason NETFILTER_DROP (freed in `nf_hook_slow`).
//! Which table, chain and rule matched needs hooks added by later work (rule counters,
//! `nft_do_chain`/`ipt_do_table` where kprobes exist); until then the remediation says how
//! to find the rule.

use super::{finding_from_groups, group_by, in_netns, inferred_note, netns_label};
use crate::{
    analyze::{correlate::Correlated, Finding, Rule, Severity},
    kernel::KernelSummary,
};

pub(crate) const REASON: &str = "NETFILTER_DROP";

pub struct NetfilterDrop;

impl Rule for NetfilterDrop {
    fn id(&self) -> &'static str {
        "netfilter-drop"
    }

    fn evaluate(&self, state: &Correlated, _kernel: &KernelSummary) -> Vec<Finding> {
        let candidates = state.drop_groups().into_iter().filter(|g| g.key.reason.as_deref() == Some(REASON));
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
                        f.to_string()
                    }
                    None => format!("{} traffic", g.first.protocol),
                };
                let dev = g.key.device.as_deref().map(|d| format!(" on {d}")).unwrap_or_default();
                let summary = format!("netfilter dropped {count} packet(s) of {what}{dev} in netns {}", netns_label(g));
                let ns = in_netns(g);
                let remediation = format!(
                    "A DROP rule or a chain policy in this namespace matched. Find it by its packet counters: `{ns}iptables-save -c` (iptables-nft and legacy) or `{ns}nft list ruleset`, look for DROP rules and policies matching {what}, then remove or narrow the rule, or add an ACCEPT before it. Left-over rules from an earlier CNI or kubeadm install are a common cause (`kubeadm reset` does not flush them)."
                );
                finding_from_groups(self.id(), Severity::Error, summary + inferred_note(&groups), &groups, remediation)
            })
            .collect()
    }
}
