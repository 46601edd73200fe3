//! `wireguard-unsupported`: an agent (a copy of `ip` running as `flanneld`) tries to create
//! its WireGuard tunnel on a kernel without WireGuard, as Flannel's wireguard backend does on
//! CentOS 7 (field report 1). Reproduces natively where the kernel lacks WireGuard (this
//! project's 6.18 machines, or a VM without wireguard.ko); skipped where it has it.

use std::process::Command;

use super::{Scenario, Unreproducible};
use crate::{
    analyze::Finding,
    decode::Event,
    lab::{
        degraded::{Blind, Degraded, Own},
        netns::{actor_output, ip, Lab},
        topology::NodePair,
    },
};

pub struct WireguardUnsupported;

const AGENT: &str = "flanneld";
const LINK: &str = "flannel-wg";

impl Scenario for WireguardUnsupported {
    type Topology = NodePair;

    fn name(&self) -> &'static str {
        "wireguard-unsupported"
    }

    fn about(&self) -> &'static str {
        "flanneld's wireguard backend creates its tunnel on a kernel without WireGuard: EOPNOTSUPP"
    }

    fn expected_rule(&self) -> &'static str {
        "link-kind-unsupported"
    }

    fn setup(&self, lab: &mut Lab) -> anyhow::Result<NodePair> {
        let mut t = NodePair::build(lab)?;
        // Where the kernel has WireGuard, the failure cannot be shown: say so instead.
        if ip(&["-n", &t.client.netns, "link", "add", "dptprobe", "type", "wireguard"]).is_ok() {
            let _ = ip(&["-n", &t.client.netns, "link", "del", "dptprobe"]);
            return Err(Unreproducible::new(
                "kernel-has-wireguard",
                "this kernel has WireGuard (use a kernel or VM without it)",
            )
            .into());
        }
        t.actors.insert(AGENT, lab.actor_binary("ip", AGENT)?);
        Ok(t)
    }

    fn trigger(&self, t: &NodePair) -> anyhow::Result<Vec<String>> {
        // Fails on purpose (exit status 2, "Unknown device type"); what matters is the trace.
        let agent = t.actors[AGENT].to_string_lossy().into_owned();
        let out = actor_output(Command::new("ip").args([
            "netns",
            "exec",
            &t.client.netns,
            &agent,
            "link",
            "add",
            LINK,
            "type",
            "wireguard",
        ]))?;
        let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Ok(vec![format!("{AGENT}: could not create encrypted tunnel interface: {said}")])
    }

    fn verify(&self, lab: &Lab, t: &NodePair, findings: &[Finding]) -> Vec<String> {
        let netns = lab.inode(&t.client.netns);
        let found = findings.iter().any(|f| {
            f.rule == self.expected_rule()
                && f.place.device.as_deref() == Some(LINK)
                && f.place.netns == netns
                && f.actor.as_ref().is_some_and(|a| a.comm == AGENT)
                && f.summary.contains("wireguard")
        });
        if found {
            vec![]
        } else {
            vec![format!("no `{}` finding for {LINK} created by {AGENT}", self.expected_rule())]
        }
    }

    /// Without BTF requests carry no namespace of their actor: the finding must still name
    /// the link and the kind, and its actor and request must be the lab's own `flanneld` (the
    /// process it started, by pid) during the trigger.
    fn verify_degraded(
        &self,
        _lab: &Lab,
        _t: &NodePair,
        findings: &[Finding],
        blind: Blind,
        own: &Own,
    ) -> Option<Degraded> {
        if !blind.actors {
            return None;
        }
        let rule = self.expected_rule();
        let ours = |pid: u32| own.is_actor(pid);
        let request = |e: &Event| {
            matches!(e, Event::LinkRequest(r) if r.ifname.as_deref() == Some(LINK)
                && r.link_kind.as_deref() == Some("wireguard")
                && r.actor.comm == AGENT
                && ours(r.actor.pid)
                && own.in_window(r.ts_ns))
        };
        let found = findings.iter().any(|f| {
            f.rule == rule
                && f.place.device.as_deref() == Some(LINK)
                && f.actor.as_ref().is_some_and(|a| a.comm == AGENT && ours(a.pid))
                && f.summary.contains("wireguard")
                && f.evidence.iter().any(request)
        });
        let mut result = Degraded::default();
        if !found {
            let by: Vec<String> = findings
                .iter()
                .filter(|f| f.rule == rule)
                .map(|f| {
                    f.actor.as_ref().map_or_else(|| "no actor".to_string(), |a| format!("{} (pid {})", a.comm, a.pid))
                })
                .collect();
            result.problems.push(format!(
                "no `{rule}` finding for {LINK} whose request (kind wireguard) the lab's own {AGENT} (pids {:?}) made \
                 during the trigger{}",
                own.actor_pids,
                if by.is_empty() { String::new() } else { format!("; `{rule}` findings name {}", by.join(", ")) }
            ));
        }
        result.not_checked(
            "the namespace the link was requested in (no BTF: requests carry no namespace of their actor)",
        );
        Some(result)
    }
}
