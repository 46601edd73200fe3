//! `veth-mac-rewrite`: a CNI plugin (a copy of `ip` running as `bridge`) creates a veth pair
//! into a pod namespace and records the host side's MAC; a moment later another actor named
//! `systemd-udevd` rewrites that MAC (as MACAddressPolicy=persistent does), and the CNI's
//! check then fails like field report 5: "Interface vethXXXX Mac doesn't match".

use std::{process::Command, time::Duration};

use super::{expect_actor_finding, Scenario};
use crate::{
    analyze::Finding,
    lab::{
        netns::{actor_output, iproute2_ip, Lab},
        topology::NodePair,
    },
};

pub struct VethMacRewrite;

const CNI: &str = "bridge";
const UDEV: &str = "systemd-udevd";
const VETH: &str = "veth1a2b3c4d";
const REWRITTEN: &str = "02:42:ac:11:00:99";
const UDEV_CGROUP: &str = "system.slice/systemd-udevd.service";

impl Scenario for VethMacRewrite {
    type Topology = NodePair;

    fn name(&self) -> &'static str {
        "veth-mac-rewrite"
    }

    fn about(&self) -> &'static str {
        "a CNI creates a pod veth, systemd-udevd rewrites its MAC, the CNI's check fails: Mac doesn't match"
    }

    fn expected_rule(&self) -> &'static str {
        "veth-mac-changed"
    }

    fn setup(&self, lab: &mut Lab) -> anyhow::Result<NodePair> {
        let mut t = NodePair::build(lab)?;
        t.actors.insert(CNI, lab.actor_binary("ip", CNI)?);
        t.actors.insert(UDEV, lab.actor_binary("ip", UDEV)?);
        // Where cgroup v2 exists, udev runs in its own service cgroup, as on a real node.
        if let Some(procs) = lab.actor_cgroup(UDEV_CGROUP) {
            t.cgroups.insert(UDEV, procs);
        }
        Ok(t)
    }

    fn trigger(&self, t: &NodePair) -> anyhow::Result<Vec<String>> {
        // The "node" is the client namespace, the "pod" the server one.
        let run = |actor: &str, args: &[&str]| -> anyhow::Result<String> {
            let program = t.actors[actor].to_string_lossy().into_owned();
            let mut command = Command::new("ip");
            command.args(["netns", "exec", &t.client.netns, &program]).args(args);
            if let Some(procs) = t.cgroups.get(actor) {
                // Join the cgroup first, then become the actor: `sh -c 'echo $$ > procs; exec …'`.
                let script = format!("echo $$ > {} && exec \"$@\"", procs.display());
                let ip = iproute2_ip().to_string_lossy().into_owned();
                command = Command::new("sh");
                command.args(["-c", &script, "sh", &ip, "netns", "exec", &t.client.netns, &program]).args(args);
            }
            let out = actor_output(&mut command)?;
            anyhow::ensure!(out.status.success(), "{actor} {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        run(CNI, &["link", "add", VETH, "type", "veth", "peer", "name", "eth0", "netns", &t.server.netns])?;
        let recorded = mac_of(&run(CNI, &["link", "show", VETH])?).unwrap_or_default();
        std::thread::sleep(Duration::from_millis(300));
        run(UDEV, &["link", "set", VETH, "address", REWRITTEN])?;
        let now = mac_of(&run(CNI, &["link", "show", VETH])?).unwrap_or_default();
        let check = if now == recorded {
            format!("{CNI}: Interface {VETH} MAC {recorded} as recorded")
        } else {
            format!("{CNI}: Interface {VETH} Mac doesn't match: {recorded} not found (it is now {now})")
        };
        Ok(vec![check])
    }

    fn verify(&self, lab: &Lab, t: &NodePair, findings: &[Finding]) -> Vec<String> {
        let mut problems = expect_actor_finding(findings, self.expected_rule(), lab.inode(&t.client.netns), VETH, UDEV);
        if problems.is_empty() && !findings.iter().any(|f| f.rule == self.expected_rule() && f.summary.contains(CNI)) {
            problems.push(format!("the finding does not name the creator {CNI}"));
        }
        let in_cgroup =
            |f: &Finding| f.actor.as_ref().and_then(|a| a.cgroup.as_deref()).is_some_and(|c| c.ends_with(UDEV_CGROUP));
        if problems.is_empty() && t.cgroups.contains_key(UDEV) && !findings.iter().any(in_cgroup) {
            problems.push(format!("the changing actor's cgroup is not reported as …/{UDEV_CGROUP}"));
        }
        problems
    }
}

/// The MAC in `ip link show` output (`link/ether XX:..`).
fn mac_of(show: &str) -> Option<String> {
    let mut words = show.split_whitespace();
    words.find(|w| *w == "link/ether")?;
    words.next().map(str::to_string)
}
