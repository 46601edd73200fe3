//! `link-create-failed`: creating a link failed for another reason than a missing link
//! kind: the name or the VNI is taken (EEXIST), attributes are invalid (EINVAL, ERANGE), the
//! caller lacks CAP_NET_ADMIN (EPERM), ... with the kernel's own message.
//!
//! Evidence: an RTM_NEWLINK create request answered with an errno other than EOPNOTSUPP
//! (syscall tracepoints), and the kernel's extended-ack text (netlink_extack).
//!
//! Not a failure: "create, and if it exists use it" — the CNI bridge plugin asks to create
//! its bridge on every ADD, gets EEXIST, and goes on with the existing one. An EEXIST create
//! that the same process follows with a successful request on a link of that name is that.

use std::collections::BTreeMap;

use super::{attempts, finding_from_links, link_kind_unsupported};
use crate::{
    analyze::{
        correlate::{Correlated, LinkOutcome},
        Finding, Rule, Severity,
    },
    kernel::KernelSummary,
};

pub struct LinkCreateFailed;

/// Failures are grouped by (link kind, ifname, errno, actor comm).
type GroupKey = (Option<String>, Option<String>, i32, String);

impl Rule for LinkCreateFailed {
    fn id(&self) -> &'static str {
        "link-create-failed"
    }

    fn evaluate(&self, state: &Correlated, _kernel: &KernelSummary) -> Vec<Finding> {
        let mut groups: BTreeMap<GroupKey, Vec<&LinkOutcome>> = BTreeMap::new();
        for o in state.link_outcomes() {
            match (o.request.op.as_ref(), o.errno()) {
                ("create", Some(errno))
                    if errno != 0 && errno != link_kind_unsupported::ERRNO && !reused_existing(state, o) =>
                {
                    let key =
                        (o.request.link_kind.clone(), o.request.ifname.clone(), errno, o.request.actor.comm.clone());
                    groups.entry(key).or_default().push(o);
                }
                _ => {}
            }
        }
        groups
            .into_iter()
            .map(|((kind, ifname, errno, _), outcomes)| {
                let first = outcomes[0];
                let error =
                    first.ack.as_ref().and_then(|a| a.error.clone()).unwrap_or_else(|| format!("errno {errno}"));
                let said =
                    first.message.as_ref().map(|m| format!(", kernel says \"{}\"", m.message)).unwrap_or_default();
                let what = match (&kind, &ifname) {
                    (Some(k), Some(n)) => format!("{k} link {n}"),
                    (None, Some(n)) => format!("link {n}"),
                    (Some(k), None) => format!("a {k} link"),
                    (None, None) => "a link".into(),
                };
                let summary = format!(
                    "creating {what} failed with {error}{said}; requested by {}; {}",
                    first.request.actor,
                    attempts(&outcomes)
                );
                finding_from_links(self.id(), Severity::Error, summary, &outcomes, advice(errno, &what))
            })
            .collect()
    }
}

/// How soon after its EEXIST a process must use the existing link for the create to count as
/// "create or reuse".
const REUSE_WINDOW_NS: u64 = 2_000_000_000;

/// An EEXIST create followed, by the same process and within [`REUSE_WINDOW_NS`], by a
/// successful request on a link of the name it asked for.
fn reused_existing(state: &Correlated, failed: &LinkOutcome) -> bool {
    if failed.errno() != Some(nix::libc::EEXIST) || failed.request.ifname.is_none() {
        return false;
    }
    let r = &failed.request;
    state.link_outcomes().iter().any(|o| {
        o.request.actor.pid == r.actor.pid
            && o.request.ts_ns > r.ts_ns
            && o.request.ts_ns - r.ts_ns <= REUSE_WINDOW_NS
            && o.request.op != "create"
            && o.request.ifname == r.ifname
            // No answer is success too: netlink reports errors whether or not an ack was asked for.
            && matches!(o.errno(), None | Some(0))
    })
}

fn advice(errno: i32, what: &str) -> String {
    use nix::libc;
    match errno {
        libc::EEXIST => format!("Something already uses this name or identity (an interface with that name, or for VXLAN/Geneve a device with the same VNI and port): `ip -d link show` in that namespace; remove the stale device or pick another name/VNI for {what}."),
        libc::EPERM | libc::EACCES => "The requester lacks CAP_NET_ADMIN in that network namespace: run the agent privileged or grant NET_ADMIN.".into(),
        libc::EINVAL | libc::ERANGE => format!("The kernel rejected the attributes of {what}; its message above says which (MTU, VNI, port, address)."),
        libc::ENODEV => "A device the request refers to (parent/lower device, peer) does not exist in that namespace.".into(),
        _ => "Read the kernel's message above; `ip -d link show` shows the devices that exist in that namespace.".into(),
    }
}
