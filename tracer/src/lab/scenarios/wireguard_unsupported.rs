//! `wireguard-unsupported`: an agent (a copy of `ip` running as `flanneld`) tries to create
//! its WireGuard tunnel on a kernel without WireGuard, as Flannel's wireguard backend does on
//! CentOS 7 (field report 1). Reproduces natively where the kernel lacks WireGuard (this
//! project's 6.18 machines, or a VM without wireguard.ko); skipped where it has it.

use std::process::Command;

use super::{Scenario, Unreproducible};
use crate::{
    analyze::Finding,
    lab::{
        netns::{ip, Lab},
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
            return Err(Unreproducible("this kernel has WireGuard (use a kernel or VM without it)".into()).into());
        }
        t.actors.insert(AGENT, lab.actor_binary("ip", AGENT)?);
        Ok(t)
    }

    fn trigger(&self, t: &NodePair) -> anyhow::Result<Vec<String>> {
        // Fails on purpose (exit status 2, "Unknown device type"); what matters is the trace.
        let agent = t.actors[AGENT].to_string_lossy().into_owned();
        let out = Command::new("ip")
            .args(["netns", "exec", &t.client.netns, &agent, "link", "add", LINK, "type", "wireguard"])
            .output()?;
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
}
