//! Lab topologies built from namespaces, veth pairs and bridges.

use std::{
    net::IpAddr,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::bail;

use super::netns::{ip, set_sysctl_in, Lab, Unreproducible};

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
    /// A pair whose namespaces have the roles `client` and `server`.
    pub fn build(lab: &mut Lab) -> anyhow::Result<Self> {
        Self::build_as(lab, "client", "server")
    }

    /// A pair whose namespaces have the given roles (`dptlab-<pid>-<role>`). Scenarios that
    /// run together in one `lab run --all` use roles of their own, so that their findings can
    /// be told apart by namespace name.
    pub fn build_as(lab: &mut Lab, client_role: &str, server_role: &str) -> anyhow::Result<Self> {
        let client = lab.add_netns(client_role)?;
        let server = lab.add_netns(server_role)?;
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
            wait_until_ready(&node.netns, &node.dev, Some(node.v6))?;
        }
        Ok(pair)
    }
}

/// A Kubernetes node with a bridge CNI: namespace `node` holds bridge `cni0` (the pods'
/// gateway, forwarding on), and each pod namespace has an `eth0` whose veth peer is a port
/// of `cni0`.
#[derive(Debug, Clone)]
pub struct BridgeNode {
    pub node: String,
    pub bridge: String,
    pub gateway_v4: IpAddr,
    pub gateway_v6: IpAddr,
    pub pod_a: Pod,
    pub pod_b: Pod,
}

#[derive(Debug, Clone)]
pub struct Pod {
    pub netns: String,
    /// The pod's interface, inside its namespace.
    pub dev: String,
    /// Its veth peer in the node namespace, a port of the bridge.
    pub port: String,
    pub v4: IpAddr,
    pub v6: IpAddr,
}

impl BridgeNode {
    /// Namespaces `node`, `pod-a` (10.244.0.2, fd00:244::2) and `pod-b` (10.244.0.3,
    /// fd00:244::3) on bridge `cni0` (10.244.0.1/24, fd00:244::1/64), default routes via the
    /// bridge, IPv4 and IPv6 forwarding on in the node.
    pub fn build(lab: &mut Lab) -> anyhow::Result<Self> {
        let node = lab.add_netns("node")?;
        let bridge = "cni0".to_string();
        if let Err(e) = ip(&["-n", &node, "link", "add", &bridge, "type", "bridge"]) {
            if e.to_string().contains("Unknown device type") || e.to_string().contains("not supported") {
                return Err(Unreproducible::new(
                    "kernel-lacks-bridge",
                    format!("this kernel has no bridge support: {e}"),
                )
                .into());
            }
            return Err(e);
        }
        let pod = |netns: String, port: &str, v4: &str, v6: &str| -> anyhow::Result<Pod> {
            Ok(Pod { netns, dev: "eth0".into(), port: port.into(), v4: v4.parse()?, v6: v6.parse()? })
        };
        let t = Self {
            node: node.clone(),
            bridge: bridge.clone(),
            gateway_v4: "10.244.0.1".parse()?,
            gateway_v6: "fd00:244::1".parse()?,
            pod_a: pod(lab.add_netns("pod-a")?, "veth-a", "10.244.0.2", "fd00:244::2")?,
            pod_b: pod(lab.add_netns("pod-b")?, "veth-b", "10.244.0.3", "fd00:244::3")?,
        };
        ip(&["-n", &node, "addr", "add", &format!("{}/24", t.gateway_v4), "dev", &bridge])?;
        ip(&["-n", &node, "addr", "add", &format!("{}/64", t.gateway_v6), "dev", &bridge, "nodad"])?;
        ip(&["-n", &node, "link", "set", &bridge, "up"])?;
        set_sysctl_in(&node, "net.ipv4.ip_forward", "1")?;
        set_sysctl_in(&node, "net.ipv6.conf.all.forwarding", "1")?;
        for pod in [&t.pod_a, &t.pod_b] {
            ip(&[
                "-n", &node, "link", "add", &pod.port, "type", "veth", "peer", "name", &pod.dev, "netns", &pod.netns,
            ])?;
            ip(&["-n", &node, "link", "set", &pod.port, "master", &bridge])?;
            ip(&["-n", &node, "link", "set", &pod.port, "up"])?;
            ip(&["-n", &pod.netns, "addr", "add", &format!("{}/24", pod.v4), "dev", &pod.dev])?;
            ip(&["-n", &pod.netns, "addr", "add", &format!("{}/64", pod.v6), "dev", &pod.dev, "nodad"])?;
            ip(&["-n", &pod.netns, "link", "set", &pod.dev, "up"])?;
            ip(&["-n", &pod.netns, "route", "add", "default", "via", &t.gateway_v4.to_string()])?;
            ip(&["-n", &pod.netns, "-6", "route", "add", "default", "via", &t.gateway_v6.to_string()])?;
        }
        for pod in [&t.pod_a, &t.pod_b] {
            wait_until_ready(&node, &pod.port, None)?;
            wait_until_ready(&pod.netns, &pod.dev, Some(pod.v6))?;
        }
        wait_until_ready(&node, &bridge, Some(t.gateway_v6))?;
        Ok(t)
    }
}

/// Waits until the device is operationally up and, given its IPv6 address, that address
/// has its local route. Carrier changes reach addrconf through linkwatch, which defers them
/// by up to a second; traffic sent before that dies with IP_INNOROUTES instead of showing
/// the scenario's fault.
pub(super) fn wait_until_ready(netns: &str, dev: &str, v6: Option<IpAddr>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let v6 = v6.map(|a| a.to_string());
    loop {
        let link = output(&["-n", netns, "-o", "link", "show", "dev", dev])?;
        let local = output(&["-n", netns, "-6", "route", "show", "table", "local"])?;
        let routed = v6.as_deref().is_none_or(|v6| local.lines().any(|l| l.split_whitespace().nth(1) == Some(v6)));
        if link.contains("state UP") && routed {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{dev} in {netns} did not come up within 5 s: {}", link.trim());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn output(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip").args(args).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
