//! Lab topologies built from namespaces and veth pairs.

use std::{
    net::IpAddr,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::bail;

use super::netns::{ip, Lab};

/// Two "nodes" (namespaces) joined by a veth pair, with IPv4 and IPv6 addresses.
#[derive(Debug, Clone)]
pub struct NodePair {
    pub client: Node,
    pub server: Node,
    /// Actor binaries a scenario prepared (see `Lab::actor_binary`), by role.
    pub actors: std::collections::BTreeMap<&'static str, std::path::PathBuf>,
    /// `cgroup.procs` files of cgroups prepared for actors (see `Lab::actor_cgroup`), by role.
    pub cgroups: std::collections::BTreeMap<&'static str, std::path::PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub netns: String,
    pub dev: String,
    pub v4: IpAddr,
    pub v6: IpAddr,
}

impl NodePair {
    pub fn build(lab: &mut Lab) -> anyhow::Result<Self> {
        let client = lab.add_netns("client")?;
        let server = lab.add_netns("server")?;
        ip(&["-n", &client, "link", "add", "c0", "type", "veth", "peer", "name", "s0", "netns", &server])?;
        let pair = Self {
            client: Node { netns: client, dev: "c0".into(), v4: "10.250.0.1".parse()?, v6: "fd00:250::1".parse()? },
            server: Node { netns: server, dev: "s0".into(), v4: "10.250.0.2".parse()?, v6: "fd00:250::2".parse()? },
            actors: Default::default(),
            cgroups: Default::default(),
        };
        for node in [&pair.client, &pair.server] {
            ip(&["-n", &node.netns, "addr", "add", &format!("{}/24", node.v4), "dev", &node.dev])?;
            // nodad: the address is usable at once instead of after duplicate detection.
            ip(&["-n", &node.netns, "addr", "add", &format!("{}/64", node.v6), "dev", &node.dev, "nodad"])?;
            ip(&["-n", &node.netns, "link", "set", &node.dev, "up"])?;
        }
        for node in [&pair.client, &pair.server] {
            wait_until_ready(node)?;
        }
        Ok(pair)
    }
}

/// Waits until the device is operationally up and its IPv6 address has its local route.
/// Carrier changes reach addrconf through linkwatch, which defers them by up to a second;
/// traffic sent before that dies with IP_INNOROUTES instead of showing the scenario's fault.
fn wait_until_ready(node: &Node) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let v6 = node.v6.to_string();
    loop {
        let link = output(&["-n", &node.netns, "-o", "link", "show", "dev", &node.dev])?;
        let local = output(&["-n", &node.netns, "-6", "route", "show", "table", "local"])?;
        if link.contains("state UP") && local.lines().any(|l| l.split_whitespace().nth(1) == Some(v6.as_str())) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} in {} did not come up within 5 s: {}", node.dev, node.netns, link.trim());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn output(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip").args(args).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
