//! `xdp-native-unsupported`: a CNI agent (a copy of `ip` running as `calico-node`) asks for
//! native (driver) XDP on a device whose driver has none, a bridge, and retries: the kernel
//! refuses each time with EOPNOTSUPP, "Underlying driver does not support XDP in native mode"
//! (field report 4: XDP errors in the system log on a node whose NIC lacks native XDP). The
//! device lives in a lab namespace; nothing is ever attached to it.

use std::{path::PathBuf, time::Duration};

use super::{Scenario, Unreproducible};
use crate::{
    analyze::Finding,
    decode::Event,
    lab::{
        degraded::{Blind, Degraded, Own},
        fixtures,
        netns::{ifindex_in, ip, iproute2_ip, Lab},
        xdp::{self, Mode},
    },
};

pub struct XdpNativeUnsupported;

const AGENT: &str = "calico-node";
/// The node's uplink bridge (bridges have no `ndo_bpf`: generic XDP only).
const DEVICE: &str = "br-uplink";
const ATTEMPTS: usize = 3;
const INTERVAL: Duration = Duration::from_millis(300);

#[derive(Debug, Clone)]
pub struct Topology {
    pub netns: String,
    pub device: String,
    pub agent: PathBuf,
    pub object: PathBuf,
}

impl Scenario for XdpNativeUnsupported {
    type Topology = Topology;

    fn name(&self) -> &'static str {
        "xdp-native-unsupported"
    }

    fn about(&self) -> &'static str {
        "calico-node asks for native XDP on a bridge, whose driver has none, and retries: EOPNOTSUPP"
    }

    fn expected_rule(&self) -> &'static str {
        "xdp-attach-failed"
    }

    fn setup(&self, lab: &mut Lab) -> anyhow::Result<Topology> {
        let object = fixtures::write(lab)?;
        let netns = lab.add_netns("xdp-nodrv")?;
        if let Err(e) = ip(&["-n", &netns, "link", "add", DEVICE, "type", "bridge"]) {
            if e.to_string().contains("Unknown device type") || e.to_string().contains("not supported") {
                return Err(Unreproducible::new(
                    "kernel-lacks-bridge",
                    format!("this kernel has no bridge support: {e}"),
                )
                .into());
            }
            return Err(e);
        }
        // Left down: an attach request does not need it up, and a bridge without ports that is
        // up drops its own multicast reports (NO_TX_TARGET), noise in this scenario.
        xdp::check_loader(&netns, DEVICE, &object, fixtures::XDP_PASS)?;
        // Should bridges ever get native XDP, the failure cannot be shown: say so.
        let native = xdp::attach(&iproute2_ip(), &netns, DEVICE, Mode::Native, &object, fixtures::XDP_PASS)?;
        if native.ok {
            xdp::detach(&netns, DEVICE, Mode::Native)?;
            return Err(Unreproducible::new(
                "bridge-native-xdp",
                format!("bridges support native XDP on this kernel ({})", native.command),
            )
            .into());
        }
        let agent = lab.actor_binary("ip", AGENT)?;
        Ok(Topology { netns, device: DEVICE.into(), agent, object })
    }

    fn trigger(&self, t: &Topology) -> anyhow::Result<Vec<String>> {
        // Fails on purpose, every time; what matters is the trace.
        let attempts = xdp::retry(ATTEMPTS, INTERVAL, || {
            xdp::attach(&t.agent, &t.netns, &t.device, Mode::Native, &t.object, fixtures::XDP_PASS)
        })?;
        let mut lines = xdp::attempt_lines(AGENT, &attempts);
        if let Some(prog) = xdp::attached(&t.netns, &t.device)? {
            lines.push(format!("unexpected: {} now has XDP program {prog}", t.device));
        }
        Ok(lines)
    }

    fn verify(&self, lab: &Lab, t: &Topology, findings: &[Finding]) -> Vec<String> {
        let netns = lab.inode(&t.netns);
        let found = findings.iter().any(|f| {
            f.rule == self.expected_rule()
                && f.place.device.as_deref() == Some(t.device.as_str())
                && f.place.netns == netns
                && f.actor.as_ref().is_some_and(|a| a.comm == AGENT)
                && f.summary.contains("native")
        });
        if found {
            vec![]
        } else {
            vec![format!(
                "no `{}` finding for a native XDP attach on {} by {AGENT} whose summary says `native`",
                self.expected_rule(),
                t.device
            )]
        }
    }

    /// Without BTF requests carry no namespace of their actor, so the device (named by
    /// ifindex in the request) cannot be named: the finding must still be about native
    /// attaches to the bridge's ifindex, made by the lab's own `calico-node` (the processes it
    /// started, by pid) during the trigger.
    fn verify_degraded(
        &self,
        _lab: &Lab,
        t: &Topology,
        findings: &[Finding],
        blind: Blind,
        own: &Own,
    ) -> Option<Degraded> {
        if !blind.actors {
            return None;
        }
        let rule = self.expected_rule();
        let mut result = Degraded::default();
        let ifindex = match ifindex_in(&t.netns, &t.device) {
            Ok(i) => i,
            Err(e) => {
                result.problems.push(format!("cannot tie the requests to {}: {e:#}", t.device));
                return Some(result);
            }
        };
        let request = |e: &Event| {
            matches!(e, Event::LinkRequest(r) if r.ifindex == Some(ifindex)
                && r.xdp.as_ref().is_some_and(|x| x.mode == "native")
                && r.actor.comm == AGENT
                && own.is_actor(r.actor.pid)
                && own.in_window(r.ts_ns))
        };
        let found = findings.iter().any(|f| {
            f.rule == rule
                && f.actor.as_ref().is_some_and(|a| a.comm == AGENT && own.is_actor(a.pid))
                && f.place.device.as_deref().is_none_or(|d| d == t.device)
                && f.summary.contains("native")
                && f.evidence.iter().any(request)
        });
        if !found {
            result.problems.push(format!(
                "no `{rule}` finding whose summary says `native` for a native XDP attach to ifindex {ifindex} ({}) \
                 by the lab's own {AGENT} during the trigger",
                t.device
            ));
        }
        result.not_checked(format!(
            "the namespace and name of the device (no BTF: requests carry no namespace of their actor; \
             {} was matched by its ifindex {ifindex})",
            t.device
        ));
        Some(result)
    }
}
