//! `link-kind-unsupported`: a process asked the kernel to create a link of a kind the kernel
//! does not have (WireGuard on 3.10, Geneve without its module, ...): "could not create
//! encrypted tunnel interface: operation not supported" (field report 1).
//!
//! Evidence: an RTM_NEWLINK create request with its kind (syscall tracepoints), answered
//! EOPNOTSUPP, usually with the kernel message "Unknown device type" (netlink_extack).

use std::collections::BTreeMap;

use super::{attempts, finding_from_links};
use crate::{
    analyze::{
        correlate::{Correlated, LinkOutcome},
        Finding, Rule, Severity,
    },
    kernel::{features, KernelSummary},
};

/// EOPNOTSUPP: what rtnl_newlink answers when no link type of that kind is registered.
pub(crate) const ERRNO: i32 = nix::libc::EOPNOTSUPP;

pub struct LinkKindUnsupported;

impl Rule for LinkKindUnsupported {
    fn id(&self) -> &'static str {
        "link-kind-unsupported"
    }

    fn evaluate(&self, state: &Correlated, kernel: &KernelSummary) -> Vec<Finding> {
        let mut by_kind_and_actor: BTreeMap<(String, String, Option<u32>), Vec<&LinkOutcome>> = BTreeMap::new();
        for o in state.link_outcomes() {
            if let (Some(kind), "create", Some(ERRNO)) = (&o.request.link_kind, o.request.op.as_ref(), o.errno()) {
                let key = (kind.clone(), o.request.actor.comm.clone(), o.request.actor.netns);
                by_kind_and_actor.entry(key).or_default().push(o);
            }
        }
        by_kind_and_actor
            .into_iter()
            .map(|((kind, _, _), outcomes)| {
                let first = outcomes[0];
                let r = &first.request;
                let said = first.message.as_ref().map(|m| format!(", kernel says \"{}\"", m.message)).unwrap_or_default();
                let autoload = match first.module_requests.first() {
                    Some(m) => format!("; the kernel tried to load module `{}` and found none", m.module),
                    None => String::new(),
                };
                let spec = features::link_kind_spec(&kind);
                let module = spec.map(|s| s.module).unwrap_or(kind.as_str());
                let module_state = features::module_state(module, features::Support::No);
                let summary = format!(
                    "the kernel ({}) has no `{kind}` link type: creating {} failed with EOPNOTSUPP (operation not supported){said}{autoload}; requested by {}; {}; module {module}: {module_state}",
                    kernel.release,
                    r.ifname.as_deref().unwrap_or("a link"),
                    r.actor,
                    attempts(&outcomes),
                );
                let remediation = match spec {
                    Some(s) if s.alternatives.is_empty() => {
                        format!("{}. Without it: {}.", capitalised(s.requirement), s.consequence)
                    }
                    Some(s) => format!(
                        "{}; {} (check with `modprobe {}` and `dptrace check`). Without it, {}.",
                        capitalised(s.requirement),
                        s.alternatives,
                        s.module,
                        s.consequence
                    ),
                    None => format!(
                        "Load the module that provides link kind `{kind}` (`modprobe rtnl-link-{kind}`) or use a kernel built with it; otherwise configure the agent to use a link type this kernel has (see `dptrace check`)."
                    ),
                };
                finding_from_links(self.id(), Severity::Error, summary, &outcomes, remediation)
            })
            .collect()
    }
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map(|c| c.to_uppercase().collect::<String>() + chars.as_str()).unwrap_or_default()
}
