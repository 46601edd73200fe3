//! `xdp-aborted`: an XDP program returned XDP_ABORTED (or an action the kernel does not
//! know), or its XDP_REDIRECT failed, on a device: each such packet is dropped, and a broken
//! program drops them all.
//!
//! Evidence: `xdp_exception` (raw tracepoint, or the classic `xdp:xdp_exception`) and
//! `xdp_redirect_err` (raw tracepoint), counted in the kernel per namespace, device, program
//! and action (or errno) for the whole session.

use crate::{
    analyze::{correlate::Correlated, Finding, Place, Rule, Severity},
    decode::Event,
    kernel::KernelSummary,
};

pub struct XdpAborted;

impl Rule for XdpAborted {
    fn id(&self) -> &'static str {
        "xdp-aborted"
    }

    fn evaluate(&self, state: &Correlated, kernel: &KernelSummary) -> Vec<Finding> {
        state
            .xdp_exceptions
            .iter()
            .map(|x| {
                let device = x.device.clone().unwrap_or_else(|| format!("ifindex {}", x.ifindex));
                let ns = x.netns_name.clone().or(x.netns.map(|n| n.to_string()));
                let where_ = ns.as_ref().map(|n| format!(" in netns {n}")).unwrap_or_default();
                let prog = match &x.prog_name {
                    Some(name) => format!("{name} (id {})", x.prog_id),
                    None => format!("id {}", x.prog_id),
                };
                let in_ns = super::in_named_netns(x.netns_name.as_deref());
                Finding {
                    rule: self.id(),
                    severity: Severity::Error,
                    summary: format!(
                        "XDP program {prog} on {device}{where_} {} {} packet(s): XDP drops each of them before the network stack sees it",
                        match x.action.as_str() {
                            "aborted" => "aborted (XDP_ABORTED)".to_string(),
                            a if a.starts_with("redirect") => format!("had XDP_REDIRECT fail: {a}, for"),
                            a => format!("returned an {a} for"),
                        },
                        x.count
                    ),
                    place: Place {
                        netns: x.netns,
                        netns_name: x.netns_name.clone(),
                        pod: None,
                        device: x.device.clone(),
                        location: None,
                    },
                    flows: vec![],
                    destination: None,
                    count: x.count,
                    first_time: x.time.clone(),
                    last_time: x.last_time.clone(),
                    actor: None,
                    netfilter: None,
                    evidence: vec![Event::XdpException(x.clone())],
                    remediation: format!(
                        "The program hit one of its error paths (XDP_ABORTED is what programs return on internal errors, such as a failed map lookup or bounds check), or returned an action kernel {} does not support. Find who attached it (`bpftool prog show id {}`, `{in_ns}ip -d link show {device}`) and check that its loader supports this kernel (field report 4: Calico 3.27.3's XDP on 5.4). To restore traffic now, detach it (`{in_ns}ip link set dev {device} xdp off`) or disable the feature in its CNI (Calico: FelixConfiguration `xdpEnabled: false`).",
                        kernel.release, x.prog_id
                    ),
                }
            })
            .collect()
    }
}
