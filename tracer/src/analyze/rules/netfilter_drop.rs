//! `netfilter-drop`: packets silently dropped by a netfilter verdict (an iptables/nftables
//! DROP rule or a chain policy), per namespace and flow, with the table, chain and rule.
//!
//! Evidence: `skb:kfree_skb` drops with reason NETFILTER_DROP (freed in `nf_hook_slow`)
//! that nothing answered (no REJECT: see `reject-by-rule`); the rule or policy is the one
//! whose packet counters moved during the session and whose matches fit the flow.
//!
//! Not a fault: the ICMP redirects a router sends about connections it NATs. The NAT core
//! drops them by design (`nf_nat_icmp_reply_translation`: "Redirects on non-null nats must be
//! dropped"), before any rule sees them, so they are NETFILTER_DROP drops without a rule. A
//! node sends them when it routes traffic back out of the device it came in on: pods on one
//! bridge reaching each other through a Service or a published port with br_netfilter off
//! (field report 3). Where such a bridge explains them, `br-netfilter-missing` carries them;
//! elsewhere they are one `info` finding. A DROP rule or policy whose counter moved for them,
//! or a kernel-reported DROP verdict, keeps them here as an error.

use super::{
    counter_event, finding_from_groups, group_by, how_to_remove, in_netns, inferred_note, matching_counters,
    netns_label, refusal, verdict_of,
};
use crate::analyze::correlate::DropGroup;
use crate::{
    analyze::{correlate::Correlated, Finding, Rule, Severity},
    kernel::KernelSummary,
    probes::rule_counters::Verdict,
};

/// ICMP (v4) type 5: redirect.
const ICMP_REDIRECT: u8 = 5;

/// Whether `g` holds ICMP redirects this node sent about connections it NATs, dropped by the
/// NAT core rather than by a rule: ICMP redirects dropped by netfilter, no DROP rule or
/// policy (counter or kernel verdict) that fits them, and NAT rules (DNAT, SNAT, MASQUERADE)
/// that matched packets in the same namespace during the session.
pub(crate) fn nat_core_redirect(state: &Correlated, g: &DropGroup) -> bool {
    let redirect = g.key.reason.as_deref() == Some(REASON)
        && g.key.l4.as_deref() == Some("icmp")
        && g.first.flow.as_ref().is_some_and(|f| f.icmp_type == Some(ICMP_REDIRECT));
    redirect
        && g.key.netns.is_some()
        && matching_counters(state, g, |v| matches!(v, Verdict::Drop | Verdict::PolicyDrop)).is_empty()
        && super::kernel_verdict(state, g).is_none()
        && state.rule_counters.iter().any(|c| {
            Some(c.netns) == g.key.netns
                && c.packets > 0
                && matches!(c.kind, Verdict::Dnat { .. } | Verdict::Snat | Verdict::Masquerade)
        })
}

/// Whether a bridge in `netns` carried traffic past iptables (br-netfilter-missing's warning):
/// the hairpin it forces through the node is what made the node send the redirects.
pub(crate) fn bridge_bypasses_iptables(state: &Correlated, netns: Option<u32>) -> bool {
    state.bridges.iter().any(|b| Some(b.netns) == netns && b.packets > 0 && !b.calls_netfilter(false))
}

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
        let (redirects, candidates): (Vec<&DropGroup>, Vec<&DropGroup>) =
            candidates.partition(|g| nat_core_redirect(state, g));
        let mut findings = redirect_findings(
            self.id(),
            redirects.into_iter().filter(|g| !bridge_bypasses_iptables(state, g.key.netns)),
        );
        findings.extend(self.drop_findings(state, candidates));
        findings
    }
}

/// One `info` finding per namespace for the NAT core's redirect drops no bridge explains.
fn redirect_findings<'a>(rule: &'static str, groups: impl Iterator<Item = &'a DropGroup>) -> Vec<Finding> {
    group_by(groups, |g| g.key.netns)
        .into_iter()
        .map(|groups| {
            let count: u64 = groups.iter().map(|g| g.count).sum();
            let ns = netns_label(groups[0]);
            let summary = format!(
                "the NAT core dropped {count} ICMP redirect(s) this node sent in netns {ns} about connections it NATs (expected: the kernel never lets redirects for NATed connections out)"
            );
            let remediation = "Nothing to fix in netfilter: no rule dropped them. The node sent them because it routed packets back out of the device they came in on (clients and servers on one link reaching each other through a NATed address). If that hairpin is not intended, route or bridge the traffic directly; `sysctl net.ipv4.conf.all.send_redirects=0` stops the redirects.".to_string();
            finding_from_groups(rule, Severity::Info, summary, &groups, remediation)
        })
        .collect()
}

impl NetfilterDrop {
    fn drop_findings(&self, state: &Correlated, candidates: Vec<&DropGroup>) -> Vec<Finding> {
        group_by(candidates.into_iter(), |g| (g.key.netns, g.key.l4.clone(), g.key.src, g.key.dst, g.key.dport))
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
