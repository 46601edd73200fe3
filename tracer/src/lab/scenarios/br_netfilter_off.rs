//! `br-netfilter-off`: pod A calls a Service (a kube-proxy style DNAT in the node's
//! PREROUTING) whose backend, pod B, sits on the same bridge `cni0`, on a node where
//! br_netfilter is not loaded or bridge-nf-call-iptables is off (field report 3). A's SYN is
//! routed through the node and DNATed; B's SYN-ACK is bridged straight back to A without
//! passing netfilter, so it is never un-NATed: A sees a SYN-ACK from 10.244.0.3:80 instead of
//! the Service address, answers with a reset, and its connect times out.

use std::net::{IpAddr, SocketAddr};

use super::{connect_lines, Scenario, Unreproducible};
use crate::{
    analyze::Finding,
    lab::{
        degraded::{Blind, Degraded, Own},
        netns::{exec_in, set_sysctl_in, sysctl_here, sysctl_in, Lab},
        topology::BridgeNode,
        traffic,
    },
};

pub struct BrNetfilterOff;

const CALL_IPTABLES: &str = "net.bridge.bridge-nf-call-iptables";
const CALL_IP6TABLES: &str = "net.bridge.bridge-nf-call-ip6tables";
const SERVICE_PORT: u16 = 80;
const ATTEMPTS: usize = 2;
const TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);

/// The bridge node with a Service whose only endpoint is pod B.
#[derive(Debug, Clone)]
pub struct Service {
    pub node: BridgeNode,
    pub vip_v4: IpAddr,
    /// None where this kernel has no IPv6 NAT.
    pub vip_v6: Option<IpAddr>,
    /// What setup found out about br_netfilter and NAT here, shown with the trigger's lines.
    pub notes: Vec<String>,
}

impl Service {
    fn vips(&self) -> Vec<IpAddr> {
        std::iter::once(self.vip_v4).chain(self.vip_v6).collect()
    }
}

impl Scenario for BrNetfilterOff {
    type Topology = Service;

    fn name(&self) -> &'static str {
        "br-netfilter-off"
    }

    fn about(&self) -> &'static str {
        "br_netfilter off: a pod's Service call to a pod on the same bridge gets replies that were never un-NATed"
    }

    fn expected_rule(&self) -> &'static str {
        "bridge-bypasses-netfilter"
    }

    fn setup(&self, lab: &mut Lab) -> anyhow::Result<Service> {
        let node = BridgeNode::build(lab)?;
        let ns = node.node.clone();
        let mut notes = Vec::new();
        let vip_v4: IpAddr = "10.96.0.10".parse()?;
        let vip_v6: IpAddr = "fd00:96::10".parse()?;
        let port = SERVICE_PORT.to_string();
        // kube-proxy (iptables mode): the Service address is DNATed to its endpoint.
        let backend_v4 = SocketAddr::new(node.pod_b.v4, SERVICE_PORT).to_string();
        let dnat_v4 = ["-w", "-t", "nat", "-A", "PREROUTING", "-d", "10.96.0.10/32", "-p", "tcp", "--dport", &port];
        exec_in(&ns, "iptables", &[&dnat_v4[..], &["-j", "DNAT", "--to-destination", &backend_v4]].concat())?;
        let backend_v6 = SocketAddr::new(node.pod_b.v6, SERVICE_PORT).to_string();
        let dnat_v6 = ["-w", "-t", "nat", "-A", "PREROUTING", "-d", "fd00:96::10/128", "-p", "tcp", "--dport", &port];
        let vip_v6 =
            match exec_in(&ns, "ip6tables", &[&dnat_v6[..], &["-j", "DNAT", "--to-destination", &backend_v6]].concat())
            {
                Ok(()) => Some(vip_v6),
                Err(e) => {
                    notes.push(format!("note: no IPv6 NAT on this kernel, only the IPv4 Service is tried ({e})"));
                    None
                }
            };
        // The node tells pod A (ICMP redirect) that pod B is on its link, and the NAT core
        // drops that redirect by design (a NATed connection): dptrace must fold those drops
        // into br-netfilter-missing rather than call them netfilter drops, as on a real node
        // (netavark 1.4 showed them), so redirects stay on here.
        // Turn br_netfilter off for the node's namespace only (the sysctls are per namespace
        // since 5.3); the host's own setting stays as it is.
        match sysctl_in(&ns, CALL_IPTABLES)? {
            Some(_) => {
                set_sysctl_in(&ns, CALL_IPTABLES, "0")?;
                set_sysctl_in(&ns, CALL_IP6TABLES, "0")?;
                notes.push(format!("node: br_netfilter is loaded; set {CALL_IPTABLES}=0 and {CALL_IP6TABLES}=0"));
            }
            None if sysctl_here(CALL_IPTABLES).is_some() => {
                return Err(Unreproducible::new(
                    "kernel-br-netfilter-global-sysctls",
                    format!(
                        "br_netfilter is loaded and {CALL_IPTABLES} is global on this kernel (before 5.3): \
                         turning it off would change the host"
                    ),
                )
                .into());
            }
            None => notes.push(format!(
                "node: stat /proc/sys/{}: no such file or directory (br_netfilter is not loaded)",
                CALL_IPTABLES.replace('.', "/")
            )),
        }
        Ok(Service { node, vip_v4, vip_v6, notes })
    }

    fn trigger(&self, t: &Service) -> anyhow::Result<Vec<String>> {
        let b = &t.node.pod_b;
        // Pod B serves; kept open while pod A calls the Service.
        let _listeners = [
            traffic::tcp_listen(&b.netns, SocketAddr::new(b.v4, SERVICE_PORT))?,
            traffic::tcp_listen(&b.netns, SocketAddr::new(b.v6, SERVICE_PORT))?,
        ];
        let dsts: Vec<SocketAddr> = t.vips().into_iter().map(|vip| SocketAddr::new(vip, SERVICE_PORT)).collect();
        let mut lines = t.notes.clone();
        lines.extend(connect_lines("pod-a", &t.node.pod_a.netns, &dsts, ATTEMPTS, TIMEOUT)?);
        Ok(lines)
    }

    fn verify(&self, lab: &Lab, t: &Service, findings: &[Finding]) -> Vec<String> {
        let node = lab.inode(&t.node.node);
        let bridge = t.node.bridge.as_str();
        let on_bridge = |f: &Finding| f.place.netns == node && f.place.device.as_deref() == Some(bridge);
        let mut problems: Vec<String> = t
            .vips()
            .into_iter()
            .filter(|vip| {
                !findings.iter().any(|f| f.rule == self.expected_rule() && on_bridge(f) && f.destination == Some(*vip))
            })
            .map(|vip| {
                format!("no `{}` finding for Service {vip} on {bridge} in the node's netns", self.expected_rule())
            })
            .collect();
        if !findings.iter().any(|f| f.rule == "br-netfilter-missing" && on_bridge(f)) {
            problems.push(format!("no `br-netfilter-missing` finding on {bridge} in the node's netns"));
        }
        problems
    }

    /// Without BTF the failure itself cannot be diagnosed: the replies that bypassed
    /// netfilter are recognised by their headers. Says so (the scenario stays undiagnosed),
    /// and still checks the bridge's br_netfilter state, which is read per namespace.
    fn verify_degraded(
        &self,
        lab: &Lab,
        t: &Service,
        findings: &[Finding],
        blind: Blind,
        _own: &Own,
    ) -> Option<Degraded> {
        if !blind.packets {
            return None;
        }
        let node = lab.inode(&t.node.node);
        let bridge = t.node.bridge.as_str();
        let mut result = Degraded::default();
        result.problems.push(format!(
            "`{}` cannot be diagnosed on this kernel: it recognises the replies that bypassed netfilter by \
             their packet headers, which drops and resets carry only with BTF",
            self.expected_rule()
        ));
        let on_bridge = |f: &Finding| f.place.netns == node && f.place.device.as_deref() == Some(bridge);
        if !findings.iter().any(|f| f.rule == "br-netfilter-missing" && on_bridge(f)) {
            result.problems.push(format!("no `br-netfilter-missing` finding on {bridge} in the node's netns"));
        }
        result.not_checked("the replies that bypassed netfilter (no BTF: drops and resets carry no packet headers)");
        Some(result)
    }
}
