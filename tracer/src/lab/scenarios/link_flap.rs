//! `link-flap`: a container runtime (a copy of `ip` running as `crio-cni`) sets a pod's veth down
//! and up again and again, as a retried sandbox setup does: the links flap.

use std::{process::Command, time::Duration};

use super::{expect_actor_finding, Scenario};
use crate::{
    analyze::{rules::MIN_FLAP_DOWNS, Finding},
    lab::{
        netns::{actor_output, Lab},
        topology::NodePair,
    },
};

pub struct LinkFlap;

// Not plain "crio": `ip` runs argv[0] minus its first two letters as a subcommand when that
// matches one ("io" would select `ip ioam`).
const RUNTIME: &str = "crio-cni";

impl Scenario for LinkFlap {
    type Topology = NodePair;

    fn name(&self) -> &'static str {
        "link-flap"
    }

    fn about(&self) -> &'static str {
        "CRI-O (crio-cni) sets a pod veth down and up in a loop: the link flaps"
    }

    fn expected_rule(&self) -> &'static str {
        "link-flapping"
    }

    fn setup(&self, lab: &mut Lab) -> anyhow::Result<NodePair> {
        let mut t = NodePair::build(lab)?;
        t.actors.insert(RUNTIME, lab.actor_binary("ip", RUNTIME)?);
        Ok(t)
    }

    fn trigger(&self, t: &NodePair) -> anyhow::Result<Vec<String>> {
        let program = t.actors[RUNTIME].to_string_lossy().into_owned();
        for _ in 0..MIN_FLAP_DOWNS + 1 {
            for state in ["down", "up"] {
                let out = actor_output(Command::new("ip").args([
                    "netns",
                    "exec",
                    &t.client.netns,
                    &program,
                    "link",
                    "set",
                    &t.client.dev,
                    state,
                ]))?;
                anyhow::ensure!(out.status.success(), "{RUNTIME}: {}", String::from_utf8_lossy(&out.stderr).trim());
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(vec![])
    }

    fn verify(&self, lab: &Lab, t: &NodePair, findings: &[Finding]) -> Vec<String> {
        expect_actor_finding(findings, self.expected_rule(), lab.inode(&t.client.netns), &t.client.dev, RUNTIME)
    }
}
