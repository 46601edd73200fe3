//! `tunnel-mtu-exceeded`: packets bigger than the MTU of the device their route leaves
//! through — usually a tunnel (VXLAN, Geneve, WireGuard, IPIP/GRE) whose MTU is its
//! underlay's minus the encapsulation, while the pods still send full-size packets — so the
//! node dropped them instead of forwarding them.
//!
//! Evidence: `skb:kfree_skb` drops with reason PKT_TOO_BIG (`ip_forward`/`ip6_forward`, 6.x),
//! with the route's egress device, its kind, MTU and underlay read at decode time
//! (`kernel::routes`); drops without a reason (NOT_SPECIFIED, or none before 5.17) at a
//! tunnel device of packets longer than its MTU (a bridge port freeing them silently in
//! `is_skb_forwardable`), or in the forwarding path of a flow the node answered with
//! "fragmentation needed"; and the ICMP "fragmentation needed" / ICMPv6 "packet too big"
//! errors the node sent about the flows (`icmp:icmp_send` or kprobes), which alone also make
//! a finding when the drops themselves were not traced.

use std::net::IpAddr;

use super::{finding_from_groups, flow_without_sport, group_by, in_named_netns, inferred_note};
use crate::{
    analyze::{correlate::Correlated, correlate::DropGroup, Finding, Place, Rule, Severity},
    decode::{netfilter::IcmpError, DropRecord, Event},
    kernel::{routes::Egress, KernelSummary},
};

pub(crate) const REASON: &str = "PKT_TOO_BIG";

/// ICMP errors kept as evidence per finding.
const ICMP_EVIDENCE: usize = 2;

pub struct TunnelMtuExceeded;

/// How the packets of a drop group died.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Death {
    /// Refused by the forwarding path (PKT_TOO_BIG, or a reasonless drop the node answered
    /// with "fragmentation needed").
    Refused,
    /// Freed at the tunnel device without an ICMP error.
    Silent,
}

impl Rule for TunnelMtuExceeded {
    fn id(&self) -> &'static str {
        "tunnel-mtu-exceeded"
    }

    fn evaluate(&self, state: &Correlated, _kernel: &KernelSummary) -> Vec<Finding> {
        let groups: Vec<(&DropGroup, Death)> =
            state.drop_groups().into_iter().filter_map(|g| death(state, g).map(|d| (g, d))).collect();
        let death_of = |g: &DropGroup| groups.iter().find(|(h, _)| std::ptr::eq(*h, g)).map(|(_, d)| *d);
        let mut findings: Vec<Finding> = group_by(groups.iter().map(|(g, _)| *g), |g| {
            let place = egress_of(g).map(|e| e.device.clone()).or_else(|| g.key.device.clone());
            (g.key.netns, death_of(g), place)
        })
        .into_iter()
        .map(|gs| self.finding_for_drops(state, &gs, death_of(gs[0]).unwrap_or(Death::Refused)))
        .collect();

        // ICMP errors about flows whose drops were not traced (drop probes off or lost).
        let unexplained: Vec<&IcmpError> =
            state.icmp_errors.iter().filter(|i| is_too_big(i) && !groups.iter().any(|(g, _)| answers(i, g))).collect();
        let mut by_place: Vec<Vec<&IcmpError>> = Vec::new();
        for icmp in unexplained {
            let key = |i: &IcmpError| (i.netns, i.egress.as_ref().map(|e| e.device.clone()));
            match by_place.iter_mut().find(|list| key(list[0]) == key(icmp)) {
                Some(list) => list.push(icmp),
                None => by_place.push(vec![icmp]),
            }
        }
        findings.extend(by_place.iter().map(|icmps| self.finding_for_icmps(icmps)));
        findings
    }
}

impl TunnelMtuExceeded {
    fn finding_for_drops(&self, state: &Correlated, groups: &[&DropGroup], death: Death) -> Finding {
        let g = groups[0];
        let records: Vec<&DropRecord> =
            groups.iter().flat_map(|g| std::iter::once(&g.first).chain(&g.samples)).collect();
        let egress = groups.iter().find_map(|g| egress_of(g));
        let icmps: Vec<&IcmpError> =
            state.icmp_errors.iter().filter(|i| is_too_big(i) && groups.iter().any(|g| answers(i, g))).collect();
        let count: u64 = groups.iter().map(|g| g.count).sum();
        let pairs = pairs(groups.iter().filter_map(|g| g.key.src.zip(g.key.dst)));
        let story = Story {
            netns: netns_label(g.first.netns_name.as_deref(), g.first.netns),
            v6: g.first.protocol == "ipv6" || g.key.dst.is_some_and(|d| d.is_ipv6()),
            lengths: records.iter().filter_map(|r| r.packet_len).collect(),
            pairs,
            egress,
            dropped: Some(count),
            silent_at: (death == Death::Silent).then(|| g.first.device.clone().unwrap_or_else(|| "the tunnel".into())),
            icmps: icmps.len(),
            icmp_mtu: icmps.iter().find_map(|i| i.egress.as_ref()).or(egress).map(Egress::effective_mtu),
        };
        let summary = story.summary() + inferred_note(groups);
        let remediation = story.remediation(&in_named_netns(g.first.netns_name.as_deref()), g.key.dst);
        let mut finding = finding_from_groups(self.id(), Severity::Error, summary, groups, remediation);
        finding.evidence.extend(icmps.iter().take(ICMP_EVIDENCE).map(|i| Event::IcmpError((*i).clone())));
        finding
    }

    fn finding_for_icmps(&self, icmps: &[&IcmpError]) -> Finding {
        let first = icmps[0];
        let egress = icmps.iter().find_map(|i| i.egress.as_ref());
        let story = Story {
            netns: netns_label(first.netns_name.as_deref(), first.netns),
            v6: first.icmp_type == 2 || first.flow.as_ref().is_some_and(|f| f.dst.is_ipv6()),
            lengths: icmps.iter().filter_map(|i| i.packet_len).collect(),
            pairs: pairs(icmps.iter().filter_map(|i| i.flow.as_ref().map(|f| (f.src, f.dst)))),
            egress,
            dropped: None,
            silent_at: None,
            icmps: icmps.len(),
            icmp_mtu: egress.map(Egress::effective_mtu),
        };
        let destination = first.flow.as_ref().map(|f| f.dst);
        let mut flows: Vec<String> = icmps.iter().filter_map(|i| i.flow.as_ref().map(flow_without_sport)).collect();
        flows.sort();
        flows.dedup();
        Finding {
            rule: self.id(),
            severity: Severity::Error,
            summary: story.summary(),
            place: Place {
                netns: first.netns,
                netns_name: first.netns_name.clone(),
                pod: None,
                device: None,
                location: Some(first.origin.clone()),
            },
            flows,
            destination,
            count: icmps.len() as u64,
            first_time: first.time.clone(),
            last_time: icmps.iter().map(|i| i.time.clone()).max().unwrap_or_default(),
            actor: None,
            netfilter: None,
            evidence: icmps.iter().take(ICMP_EVIDENCE * 2).map(|i| Event::IcmpError((*i).clone())).collect(),
            remediation: story.remediation(&in_named_netns(first.netns_name.as_deref()), destination),
        }
    }
}

/// Whether the rule claims a drop group, and how its packets died.
fn death(state: &Correlated, g: &DropGroup) -> Option<Death> {
    match g.key.reason.as_deref() {
        Some(REASON) => Some(Death::Refused),
        None | Some("NOT_SPECIFIED") => {
            let records = || std::iter::once(&g.first).chain(&g.samples);
            // Longer than the tunnel it was going into: freed at the tunnel itself, or in
            // the forwarding path on its way there.
            let too_big = records().find(|r| {
                let (Some(len), Some(e)) = (r.packet_len, &r.egress) else { return false };
                is_tunnel(e.kind.as_deref()) && len > e.effective_mtu()
            });
            let at_tunnel = too_big.is_some_and(|r| r.egress.as_ref().is_some_and(|e| r.ifindex == Some(e.ifindex)));
            let forwarding = forwarding_path(&g.key.function);
            if at_tunnel {
                Some(Death::Silent)
            } else if forwarding
                && (too_big.is_some() || state.icmp_errors.iter().any(|i| is_too_big(i) && answers(i, g)))
            {
                Some(Death::Refused)
            } else {
                None
            }
        }
        Some(_) => None,
    }
}

/// Functions that free packets too big to forward (before PKT_TOO_BIG existed).
fn forwarding_path(function: &str) -> bool {
    matches!(function, "ip_forward" | "ip6_forward" | "ip_fragment" | "ip_do_fragment" | "ip6_fragment")
}

/// The egress the decoder found for the group's packets.
fn egress_of(g: &DropGroup) -> Option<&Egress> {
    std::iter::once(&g.first).chain(&g.samples).find_map(|r| r.egress.as_ref())
}

/// ICMP "fragmentation needed" (type 3 code 4) or ICMPv6 "packet too big" (type 2), sent by
/// the stack (not a REJECT rule).
fn is_too_big(i: &IcmpError) -> bool {
    let v6 = i.flow.as_ref().map(|f| f.dst.is_ipv6()).unwrap_or(i.meaning == "packet-too-big");
    !i.by_reject && if v6 { i.icmp_type == 2 } else { i.icmp_type == 3 && i.icmp_code == 4 }
}

/// The error is about the group's packets: same namespace, same addresses.
fn answers(i: &IcmpError, g: &DropGroup) -> bool {
    i.netns == g.key.netns && i.flow.as_ref().is_some_and(|f| Some(f.src) == g.key.src && Some(f.dst) == g.key.dst)
}

/// Distinct (source, destination) pairs in first-seen order.
fn pairs(all: impl Iterator<Item = (IpAddr, IpAddr)>) -> Vec<(IpAddr, IpAddr)> {
    let mut out: Vec<(IpAddr, IpAddr)> = Vec::new();
    for pair in all {
        if !out.contains(&pair) {
            out.push(pair);
        }
    }
    out
}

fn netns_label(name: Option<&str>, inode: Option<u32>) -> String {
    match (name, inode) {
        (Some("host"), _) => "this node".into(),
        (Some(name), _) => name.into(),
        (None, Some(inode)) => format!("netns {inode}"),
        _ => "the node".into(),
    }
}

/// Link kinds that encapsulate: their MTU is the underlay's minus their overhead.
fn is_tunnel(kind: Option<&str>) -> bool {
    kind.is_some_and(crate::kernel::routes::is_tunnel_kind)
}

/// A tunnel kind's name and its overhead over an IPv4 and an IPv6 underlay.
fn encapsulation(kind: &str) -> Option<(&'static str, u32, u32)> {
    Some(match kind {
        "vxlan" => ("VXLAN", 50, 70),
        "geneve" => ("Geneve", 50, 70),
        "wireguard" => ("WireGuard", 60, 80),
        "ipip" => ("IPIP", 20, 20),
        "sit" => ("SIT", 20, 20),
        "gre" => ("GRE", 24, 24),
        "gretap" => ("GRETAP", 38, 38),
        _ => return None,
    })
}

/// What the evidence says, in words.
struct Story<'a> {
    netns: String,
    v6: bool,
    /// IP lengths of the packets seen.
    lengths: Vec<u32>,
    pairs: Vec<(IpAddr, IpAddr)>,
    egress: Option<&'a Egress>,
    /// Drops seen; None when only ICMP errors were.
    dropped: Option<u64>,
    /// The device where the packets were freed without an ICMP error.
    silent_at: Option<String>,
    icmps: usize,
    icmp_mtu: Option<u32>,
}

impl Story<'_> {
    fn largest(&self) -> Option<u32> {
        self.lengths.iter().copied().max()
    }

    fn summary(&self) -> String {
        let packets = match (self.largest(), self.lengths.iter().min()) {
            (Some(max), Some(&min)) if min == max => format!("packets of {max} bytes"),
            (Some(max), _) => format!("packets of up to {max} bytes"),
            _ => "packets".into(),
        };
        let flows = match self.pairs.as_slice() {
            [] => String::new(),
            [(src, dst)] => format!(" from {src} to {dst}"),
            [(src, dst), rest @ ..] => format!(" from {src} to {dst} (and {} other flow(s))", rest.len()),
        };
        let tunnel = self.egress.is_some_and(|e| is_tunnel(e.kind.as_deref()));
        // Silent drops are at the device itself (a bridge port), not after a route lookup.
        let leave = if self.silent_at.is_some() { "they leave through" } else { "the route leaves through" };
        let route = match self.egress {
            Some(e) if tunnel => format!("do not fit the tunnel: {leave} {}", describe(e)),
            Some(e) => format!("do not fit the path: {leave} {}", describe(e)),
            None => "are bigger than the MTU of the device their route leaves through (which device and its MTU could not be read: no BTF on this kernel, or the namespace is gone)".into(),
        };
        let icmp_name = if self.v6 { "packet too big" } else { "fragmentation needed" };
        let icmp = match self.icmp_mtu {
            Some(mtu) => format!("\"{icmp_name} (mtu {mtu})\""),
            None => format!("\"{icmp_name}\""),
        };
        let sent = match self.icmps {
            0 => String::new(),
            1 => format!(" and sent {icmp} back"),
            n => format!(" and sent {icmp} back {n} times"),
        };
        let why = match (&self.silent_at, self.dropped) {
            (Some(dev), Some(n)) => format!(
                ", so {} dropped {n} at {dev} without a word: no ICMP error leaves from there, so senders cannot learn the MTU",
                self.netns
            ),
            (None, Some(n)) if self.v6 => format!(" and IPv6 routers never fragment, so {} dropped {n}{sent}", self.netns),
            (None, Some(n)) => format!(" and they carry DF (don't fragment), so {} dropped {n}{sent}", self.netns),
            (_, None) => format!(
                ", so {}{} (the drops themselves were not traced)",
                self.netns,
                if sent.is_empty() { " dropped them".into() } else { format!(" dropped them{sent}") }
            ),
        };
        let sender = self.largest().map(|n| format!("; the sender's MTU is at least {n}")).unwrap_or_default();
        format!("{packets}{flows} {route}{why}{sender}")
    }

    fn remediation(&self, in_ns: &str, dst: Option<IpAddr>) -> String {
        let check = format!(
            "Check with `{in_ns}ip route get {}` and `{in_ns}ip -d link show {}`.",
            dst.map(|d| d.to_string()).unwrap_or_else(|| "DST".into()),
            self.egress.map(|e| e.device.as_str()).unwrap_or("DEV")
        );
        let cni = "Where the pods' MTU comes from: flannel — FLANNEL_MTU in /run/flannel/subnet.env (the underlay's MTU minus the backend's overhead) unless the CNI config's `delegate` sets an `mtu` (remove it), and the underlay is the device of flanneld's `--iface`; Calico — `veth_mtu` in the calico-config ConfigMap, or `spec.calicoNetwork.mtu` in the operator's Installation; Cilium — `--mtu` (Helm value `MTU`). A pod's interface gets its MTU when it is created: recreate the pods afterwards.";
        let largest = self.largest();
        let fix = match self.egress {
            Some(e) if is_tunnel(e.kind.as_deref()) => {
                let mtu = e.effective_mtu();
                let (links, tunnel_mtu) = match (&e.underlay, e.kind.as_deref().and_then(encapsulation)) {
                    (Some((dev, _)), Some((name, overhead, _))) => {
                        (format!("{dev} and every link between the nodes"), format!("{dev}'s minus {overhead} bytes of {name}"))
                    }
                    (Some((dev, _)), None) => (format!("{dev} and every link between the nodes"), e.device.clone()),
                    (None, _) => ("the nodes' NICs and every link between them".into(), e.device.clone()),
                };
                let pods = largest.map(|n| format!(", {n} here")).unwrap_or_default();
                format!(
                    "Make the pods' packets fit the tunnel: set the pod/CNI MTU to {mtu} (the MTU of {}) or less, so that TCP announces an MSS that fits and senders build no bigger packets; or raise the underlay's MTU (jumbo frames on {links}) until the tunnel's MTU ({tunnel_mtu}) is at least the pods'{pods}.",
                    e.device
                )
            }
            Some(e) => format!(
                "Make the MTUs agree along the path: {} has MTU {} while the senders send {} bytes; lower the senders' (pod/CNI) MTU to {} or less, or raise {}'s.",
                e.device,
                e.effective_mtu(),
                largest.map(|n| n.to_string()).unwrap_or_else(|| "bigger".into()),
                e.effective_mtu(),
                e.device
            ),
            None => "Find the device the route takes and its MTU (commands below). If it is a tunnel (VXLAN takes 50 bytes of the underlay's MTU, 70 over IPv6; Geneve 50 plus options; WireGuard 60, 80 over IPv6; IPIP 20), set the pod/CNI MTU to the tunnel's MTU or less, or raise the underlay's MTU (jumbo frames) until the tunnel's MTU is at least the pods'.".into(),
        };
        let pmtu = match &self.silent_at {
            Some(dev) => format!(
                " Until then path-MTU discovery cannot help: the packets die at {dev} with no ICMP error, so TCP connections open and then stall on their first full-size segment (a black hole)."
            ),
            None => " Until then TCP recovers only through path-MTU discovery, and only if the ICMP error reaches the sender: a firewall or NetworkPolicy that drops ICMP on the way back turns this into a black hole (connections open, then stall on their first full-size segment); UDP senders keep losing their big datagrams.".into(),
        };
        format!("{fix} {cni}{pmtu} {check}")
    }
}

/// `flannel.1 (vxlan, MTU 1450 = eth0 1500 - 50 bytes of VXLAN encapsulation)`.
fn describe(e: &Egress) -> String {
    let kind = e.kind.as_deref();
    let encap = kind.and_then(encapsulation);
    let mut out = format!("{} (", e.device);
    if let Some(kind) = kind {
        out += &format!("{kind}, ");
    }
    out += &format!("MTU {}", e.mtu);
    match (&e.underlay, encap) {
        (Some((dev, umtu)), Some((name, v4, v6))) if umtu.checked_sub(e.mtu).is_some_and(|d| d == v4 || d == v6) => {
            let overhead = umtu - e.mtu;
            let note = if overhead == v6 && v6 != v4 { ", sized for an IPv6 underlay" } else { "" };
            out += &format!(" = {dev} {umtu} - {overhead} bytes of {name} encapsulation{note}");
        }
        (Some((dev, umtu)), Some((name, v4, _))) => {
            out += &format!(", over {dev} {umtu}; {name} encapsulation takes {v4} bytes");
        }
        (Some((dev, umtu)), None) if is_tunnel(kind) => out += &format!(", over {dev} {umtu}"),
        (None, Some((name, v4, _))) => out += &format!("; {name} encapsulation takes {v4} bytes of the underlay's MTU"),
        _ => {}
    }
    out.push(')');
    if let Some(route_mtu) = e.route_mtu.filter(|&m| m != e.mtu) {
        out += &format!(" and the route sets MTU {route_mtu}");
    }
    out
}
