//! `no-listener`: TCP or UDP packets that reached a host but no socket was bound to the
//! destination port, so the stack dropped them and answered with a TCP RST or an ICMP
//! port unreachable: the client sees "connection refused".
//!
//! Evidence: `skb:kfree_skb` drops with reason NO_SOCKET of connection attempts (TCP
//! without ACK, or UDP), grouped by netns and destination; the RST the stack sent without a
//! socket (`tcp:tcp_send_reset`, 6.10+) or its ICMP port unreachable (`icmp:icmp_send`,
//! 6.15+). Replies that found no socket (a SYN-ACK) are not this: see
//! `bridge-bypasses-netfilter`.

use super::{finding_from_groups, group_by, in_netns, inferred_note, netns_label};
use crate::{
    analyze::{
        correlate::{Correlated, DropGroup},
        Finding, Rule, Severity,
    },
    decode::Event,
    kernel::KernelSummary,
};

pub(crate) const REASON: &str = "NO_SOCKET";

pub struct NoListener;

impl Rule for NoListener {
    fn id(&self) -> &'static str {
        "no-listener"
    }

    fn evaluate(&self, state: &Correlated, _kernel: &KernelSummary) -> Vec<Finding> {
        // Without packet headers (no BTF) the protocol still shows in where the packet died.
        let l4 = |g: &DropGroup| -> Option<&'static str> {
            match g.key.l4.as_deref() {
                Some("tcp") => Some("tcp"),
                Some("udp") => Some("udp"),
                Some(_) => None,
                None if g.key.function.contains("udp") => Some("udp"),
                None if g.key.function.contains("tcp") => Some("tcp"),
                None => None,
            }
        };
        let candidates = state
            .drop_groups()
            .into_iter()
            .filter(|g| g.key.reason.as_deref() == Some(REASON) && l4(g).is_some() && !super::is_reply(g));
        group_by(candidates, |g| (g.key.netns, l4(g), g.key.dst, g.key.dport))
            .into_iter()
            .map(|groups| {
                let g = groups[0];
                let l4 = l4(g).unwrap_or("?");
                let count: u64 = groups.iter().map(|g| g.count).sum();
                let answer = if l4 == "tcp" { "a TCP RST" } else { "an ICMP port unreachable" };
                let ss_flag = if l4 == "tcp" { "-ltnp" } else { "-lunp" };
                let (summary, remediation) = match (g.key.dst, g.key.dport) {
                    (Some(dst), Some(port)) => (
                        format!(
                            "nothing listens on {l4} port {port} at {dst} in netns {}: {count} packet(s) dropped (NO_SOCKET); the kernel answers {answer}, clients see \"connection refused\"",
                            netns_label(g)
                        ),
                        format!(
                            "Start the service that should listen on {l4}/{port}, or point clients at the port it really uses. Check with `{}ss {ss_flag} 'sport = :{port}'`. For a Kubernetes Service, check that its endpoints exist and its targetPort matches the container port (`kubectl get endpointslices`).",
                            in_netns(g)
                        ),
                    ),
                    _ => (
                        format!(
                            "nothing listens on the {l4} port {count} packet(s) were sent to (NO_SOCKET at {}); the kernel answers {answer}, clients see \"connection refused\" (addresses and ports are not visible on this kernel: no BTF)",
                            g.key.function
                        ),
                        format!(
                            "Find the service clients expect with `ss {ss_flag}` in each namespace, or trace on a kernel with BTF to see the destination. For a Kubernetes Service, check its endpoints and targetPort."
                        ),
                    ),
                };
                let mut finding = finding_from_groups(
                    self.id(),
                    Severity::Warning,
                    summary + inferred_note(&groups),
                    &groups,
                    remediation,
                );
                // The stack's own answer, where the kernel shows it.
                let answered = |src: Option<std::net::IpAddr>, dst: Option<std::net::IpAddr>, port: Option<u16>| {
                    g.key.dst == src && g.key.src == dst && g.key.dport == port
                };
                let reset = state.resets.iter().find(|r| {
                    r.direction == "sent"
                        && !r.socket
                        && !r.by_reject
                        && r.netns == g.key.netns
                        && r.flow.as_ref().is_some_and(|f| answered(Some(f.src), Some(f.dst), f.sport))
                });
                let icmp = state.icmp_errors.iter().find(|i| {
                    !i.by_reject
                        && i.netns == g.key.netns
                        && i.flow.as_ref().is_some_and(|f| answered(Some(f.dst), Some(f.src), f.dport))
                });
                finding.evidence.extend(reset.cloned().map(Event::TcpReset));
                finding.evidence.extend(icmp.cloned().map(Event::IcmpError));
                finding
            })
            .collect()
    }
}
