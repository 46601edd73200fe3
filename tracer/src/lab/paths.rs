//! What a lab scenario expects of the packet paths the path family traced (`--path`): the
//! hops a packet must have passed, in order, and how its journey must end. A check names the
//! first expected hop a path lacks and the route it took instead.

use std::net::IpAddr;

use crate::decode::{
    path::{HopKind, PacketHop, PacketPath, PathOutcome},
    Flow,
};

use super::netns::role_of;

/// A lab namespace as hops name it: by inode, or by name where the inode is unknown.
#[derive(Debug, Clone)]
pub struct NsRef {
    /// What the scenario calls it (`node-a`, `pod-b`).
    pub label: String,
    /// The namespace's name (`dptlab-<pid>-vxlan-node-a`).
    pub name: String,
    pub inode: Option<u32>,
}

impl NsRef {
    /// Whether `hop` happened in this namespace.
    pub fn holds(&self, hop: &PacketHop) -> bool {
        match (self.inode, hop.netns) {
            (Some(mine), Some(theirs)) => mine == theirs,
            _ => hop.netns_name.as_deref() == Some(self.name.as_str()),
        }
    }
}

/// A hop a path must have.
#[derive(Debug, Clone)]
pub struct HopSpec {
    pub hook: HopKind,
    pub ns: NsRef,
    pub device: String,
    /// The encapsulation the hop must show, with its inner packet.
    pub tunnel: Option<TunnelSpec>,
    /// The encrypted datagram the hop must show, with no inner packet in sight.
    pub encrypted: Option<EncryptedSpec>,
}

#[derive(Debug, Clone)]
pub struct TunnelSpec {
    pub kind: &'static str,
    pub vni: u32,
    /// The outer UDP destination port.
    pub port: u16,
    pub inner_l4: &'static str,
    pub inner_src: IpAddr,
    pub inner_dst: IpAddr,
}

/// A tunnel whose payload is encrypted (WireGuard): the hop's packet is a UDP datagram from
/// `src` to `dst`, destination port `port`, whose inner packet cannot be read. The path still
/// follows it because it is the same `sk_buff` that carried the plain packet.
#[derive(Debug, Clone)]
pub struct EncryptedSpec {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub port: u16,
}

impl EncryptedSpec {
    fn matches(&self, hop: &PacketHop) -> bool {
        hop.outer
            .as_ref()
            .is_some_and(|o| o.l4 == "udp" && o.src == self.src && o.dst == self.dst && o.dport == Some(self.port))
            && hop.inner.is_none()
    }
}

impl HopSpec {
    pub fn new(hook: HopKind, ns: &NsRef, device: &str) -> Self {
        Self { hook, ns: ns.clone(), device: device.to_string(), tunnel: None, encrypted: None }
    }

    pub fn tunnel(mut self, tunnel: TunnelSpec) -> Self {
        self.tunnel = Some(tunnel);
        self
    }

    pub fn encrypted(mut self, encrypted: EncryptedSpec) -> Self {
        self.encrypted = Some(encrypted);
        self
    }

    fn matches(&self, hop: &PacketHop) -> bool {
        hop.hook == self.hook
            && self.ns.holds(hop)
            && hop.device.as_deref() == Some(self.device.as_str())
            && self.tunnel.as_ref().is_none_or(|t| t.matches(hop))
            && self.encrypted.as_ref().is_none_or(|e| e.matches(hop))
    }
}

impl TunnelSpec {
    fn matches(&self, hop: &PacketHop) -> bool {
        hop.tunnel.as_ref().is_some_and(|t| t.kind == self.kind && t.vni == self.vni)
            && hop.outer.as_ref().is_some_and(|o| o.l4 == "udp" && o.dport == Some(self.port))
            && hop.inner.as_ref().is_some_and(|i| self.inner_matches(i))
    }

    fn inner_matches(&self, inner: &Flow) -> bool {
        inner.l4 == self.inner_l4 && inner.src == self.inner_src && inner.dst == self.inner_dst
    }
}

impl std::fmt::Display for HopSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on {} in {}", self.hook.word(), self.device, self.ns.label)?;
        if let Some(t) = &self.tunnel {
            write!(
                f,
                " ({} vni {}, udp port {}, inner {} {} > {})",
                t.kind, t.vni, t.port, t.inner_l4, t.inner_src, t.inner_dst
            )?;
        }
        if let Some(e) = &self.encrypted {
            write!(f, " (udp {} > {} port {}, encrypted: no inner packet)", e.src, e.dst, e.port)?;
        }
        Ok(())
    }
}

/// How a path must end.
#[derive(Debug, Clone)]
pub enum EndSpec {
    /// Delivered, its last hop that names a namespace in `ns` (a packet queued to a socket
    /// has lost its device when the socket's reader consumes it).
    Delivered { ns: NsRef },
    /// Dropped in `ns` with one of `reasons`, or with no reason where the kernel gives none
    /// (before drop reasons, or `NOT_SPECIFIED` where this drop had no reason yet).
    Dropped { ns: NsRef, reasons: Vec<&'static str>, location: Option<&'static str> },
}

impl EndSpec {
    fn matches(&self, path: &PacketPath) -> bool {
        let Some(last) = last_placed(path) else {
            return false;
        };
        match (self, &path.outcome) {
            (EndSpec::Delivered { ns }, PathOutcome::Delivered) => ns.holds(last),
            (EndSpec::Dropped { ns, reasons, location: where_ }, PathOutcome::Dropped { reason, location }) => {
                ns.holds(last)
                    && reason.as_deref().is_none_or(|r| r == "NOT_SPECIFIED" || reasons.contains(&r))
                    && where_.is_none_or(|w| location.as_deref().is_none_or(|l| l.starts_with(w)))
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for EndSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndSpec::Delivered { ns } => write!(f, "delivered in {}", ns.label),
            EndSpec::Dropped { ns, reasons, location } => {
                write!(f, "dropped in {} ({})", ns.label, reasons.join(" or "))?;
                if let Some(l) = location {
                    write!(f, " at {l}")?;
                }
                Ok(())
            }
        }
    }
}

/// A packet the scenario expects a path of: its flow, hops (in this order, others may come
/// between) and end, and devices it must not reach.
#[derive(Debug, Clone)]
pub struct PathSpec {
    /// What to call it (`echo request pod-a → pod-b`).
    pub what: String,
    pub l4: &'static str,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub hops: Vec<HopSpec>,
    pub end: EndSpec,
    /// Hops it must not have (device, namespace), whatever their kind.
    pub never: Vec<(String, NsRef)>,
    /// Only packets this big (`len` of some hop, from the IP header on at a receive).
    pub min_len: Option<u32>,
}

impl PathSpec {
    fn is_candidate(&self, path: &PacketPath) -> bool {
        path.flow.as_ref().is_some_and(|f| f.l4 == self.l4 && f.src == self.src && f.dst == self.dst)
            && self.min_len.is_none_or(|min| path.steps.iter().any(|s| s.hop.len >= min))
    }

    /// How far `path` meets this: (hops found in order, the first missing one, end met,
    /// forbidden hops seen).
    fn score(&self, path: &PacketPath) -> (usize, Option<&HopSpec>, bool, Vec<String>) {
        let mut next = 0;
        for step in &path.steps {
            if self.hops.get(next).is_some_and(|spec| spec.matches(&step.hop)) {
                next += 1;
            }
        }
        let forbidden = path
            .steps
            .iter()
            .filter(|s| {
                self.never.iter().any(|(dev, ns)| s.hop.device.as_deref() == Some(dev.as_str()) && ns.holds(&s.hop))
            })
            .map(|s| format!("{} on {}", s.hop.hook.word(), s.hop.device.as_deref().unwrap_or("?")))
            .collect();
        (next, self.hops.get(next), self.end.matches(path), forbidden)
    }
}

/// Problems with `paths` as evidence of `spec` (none when one path meets it). `names` label
/// the hops' namespaces in the text.
pub fn expect_path(paths: &[PacketPath], spec: &PathSpec, names: &[NsRef]) -> Vec<String> {
    let candidates: Vec<&PacketPath> = paths.iter().filter(|p| spec.is_candidate(p)).collect();
    if candidates.is_empty() {
        let size = spec.min_len.map(|m| format!(", {m} bytes or more")).unwrap_or_default();
        return vec![format!(
            "no traced path of the {} ({} {} > {}{size}; {} path(s) traced in all)",
            spec.what,
            spec.l4,
            spec.src,
            spec.dst,
            paths.len()
        )];
    }
    let scored: Vec<_> = candidates.iter().map(|p| (*p, spec.score(p))).collect();
    if scored.iter().any(|(_, (_, missing, end, forbidden))| missing.is_none() && *end && forbidden.is_empty()) {
        return vec![];
    }
    // The path that came closest: most hops found, then the right end.
    let (path, (_, missing, end, forbidden)) = scored
        .iter()
        .max_by_key(|(_, (found, _, end, forbidden))| (*found, *end, forbidden.is_empty()))
        .expect("candidates is not empty");
    let mut wrong = Vec::new();
    if let Some(hop) = missing {
        wrong.push(format!("has no {hop}"));
    }
    if !end {
        wrong.push(format!("is not {} but {}", spec.end, ending(path, names)));
    }
    if !forbidden.is_empty() {
        wrong.push(format!("should not have reached {}", forbidden.join(", ")));
    }
    vec![format!(
        "the {} path (trace {}, best of {}) {}; it went: {}",
        spec.what,
        path.trace_id,
        candidates.len(),
        wrong.join(" and "),
        route(path, names)
    )]
}

/// The last hop that names a namespace (a delivery in a reader's recvmsg has no device).
fn last_placed(path: &PacketPath) -> Option<&PacketHop> {
    path.steps.iter().rev().map(|s| &s.hop).find(|h| h.netns.is_some() || h.netns_name.is_some())
}

fn ending(path: &PacketPath, names: &[NsRef]) -> String {
    let place = last_placed(path).map_or_else(|| "?".to_string(), |h| ns_label(h, names));
    match &path.outcome {
        PathOutcome::Delivered => format!("delivered in {place}"),
        PathOutcome::Sent { device } => format!("sent by {} in {place}", device.as_deref().unwrap_or("?")),
        PathOutcome::Dropped { reason, location } => format!(
            "dropped in {place} ({}{})",
            reason.as_deref().unwrap_or("no reason"),
            location.as_deref().map(|l| format!(" at {l}")).unwrap_or_default()
        ),
        PathOutcome::TransmitFailed { rc } => format!("refused by the driver in {place} (rc {rc})"),
        PathOutcome::Unfinished => format!("unfinished after {place}"),
    }
}

/// The namespace of `hop` as the scenario calls it.
pub fn ns_label(hop: &PacketHop, names: &[NsRef]) -> String {
    if let Some(ns) = names.iter().find(|n| n.holds(hop)) {
        return ns.label.clone();
    }
    match (&hop.netns_name, hop.netns) {
        (Some(name), _) => role_of(name).to_string(),
        (None, Some(inode)) => inode.to_string(),
        (None, None) => "?".into(),
    }
}

/// `tx eth0@pod-a → rx veth-pod-a@node-a → … → delivered@pod-b`.
pub fn route(path: &PacketPath, names: &[NsRef]) -> String {
    path.steps
        .iter()
        .map(|s| {
            let hop = &s.hop;
            if let Some(function) = &hop.function {
                return format!("{function}()");
            }
            let ns = ns_label(hop, names);
            let mut text = match (&hop.device, ns.as_str()) {
                (Some(dev), _) => format!("{} {dev}@{ns}", hop.hook.word()),
                // A packet a socket's reader consumes has lost its device.
                (None, "?") => hop.hook.word().to_string(),
                (None, _) => format!("{}@{ns}", hop.hook.word()),
            };
            if let Some(t) = &hop.tunnel {
                text.push_str(&format!(" [{} {}]", t.kind, t.vni));
            }
            if let Some(reason) = &hop.drop_reason {
                text.push_str(&format!(" ({reason})"));
            }
            text
        })
        .collect::<Vec<_>>()
        .join(" → ")
}

/// One line about a traced path: flow, hops, end and time.
pub fn summary_line(path: &PacketPath, names: &[NsRef]) -> String {
    let flow = path.flow.as_ref().map_or_else(|| "?".to_string(), |f| f.to_string());
    format!(
        "path {flow}: {} hops, {} after {:.1} µs: {}",
        path.steps.len(),
        ending(path, names),
        path.total_ns as f64 / 1000.0,
        route(path, names)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::path::{PathStep, Tunnel};

    fn ns(label: &str, inode: u32) -> NsRef {
        NsRef { label: label.into(), name: format!("dptlab-1-{label}"), inode: Some(inode) }
    }

    fn flow(l4: &str, src: &str, dst: &str) -> Flow {
        Flow {
            l4: l4.into(),
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport: None,
            dport: None,
            icmp_type: None,
            icmp_code: None,
            tcp_flags: None,
        }
    }

    fn hop(hook: HopKind, netns: Option<u32>, device: Option<&str>) -> PacketHop {
        PacketHop {
            time: String::new(),
            ts_ns: 0,
            wall_ns: 0,
            cpu: 0,
            trace_id: 7,
            hook,
            netns,
            netns_name: None,
            pod: None,
            ifindex: 0,
            device: device.map(str::to_string),
            len: 84,
            outer: Some(flow("icmp", "10.244.1.2", "10.244.2.2")),
            tunnel: None,
            inner: None,
            drop_reason: None,
            location: None,
            xmit_rc: None,
            function: None,
            task: None,
            bytes: vec![],
            link_layer: false,
        }
    }

    fn path(hops: Vec<PacketHop>, outcome: PathOutcome) -> PacketPath {
        PacketPath {
            trace_id: 7,
            flow: Some(flow("icmp", "10.244.1.2", "10.244.2.2")),
            steps: hops.into_iter().map(|hop| PathStep { hop, since_previous_ns: 0, since_start_ns: 0 }).collect(),
            outcome,
            total_ns: 0,
        }
    }

    fn spec(a: &NsRef, b: &NsRef) -> PathSpec {
        PathSpec {
            what: "echo request".into(),
            l4: "icmp",
            src: "10.244.1.2".parse().unwrap(),
            dst: "10.244.2.2".parse().unwrap(),
            hops: vec![
                HopSpec::new(HopKind::Transmit, a, "eth0").tunnel(TunnelSpec {
                    kind: "vxlan",
                    vni: 1,
                    port: 8472,
                    inner_l4: "icmp",
                    inner_src: "10.244.1.2".parse().unwrap(),
                    inner_dst: "10.244.2.2".parse().unwrap(),
                }),
                HopSpec::new(HopKind::Receive, b, "flannel.1"),
            ],
            end: EndSpec::Delivered { ns: b.clone() },
            never: vec![],
            min_len: None,
        }
    }

    fn encapsulated(netns: u32) -> PacketHop {
        let mut h = hop(HopKind::Transmit, Some(netns), Some("eth0"));
        h.outer = Some(Flow { dport: Some(8472), ..flow("udp", "192.168.50.1", "192.168.50.2") });
        h.tunnel = Some(Tunnel { kind: "vxlan".into(), vni: 1 });
        h.inner = Some(flow("icmp", "10.244.1.2", "10.244.2.2"));
        h
    }

    #[test]
    fn a_path_with_every_hop_in_order_and_its_end_passes() {
        let (a, b) = (ns("node-a", 1), ns("node-b", 2));
        let p = path(
            vec![
                encapsulated(1),
                hop(HopKind::Receive, Some(2), Some("eth0")),
                hop(HopKind::Receive, Some(2), Some("flannel.1")),
                // Consumed by a socket's reader: no device, no namespace.
                hop(HopKind::Consume, Some(2), Some("flannel.1")),
                hop(HopKind::Consume, None, None),
            ],
            PathOutcome::Delivered,
        );
        assert_eq!(expect_path(&[p], &spec(&a, &b), &[a.clone(), b.clone()]), Vec::<String>::new());
    }

    #[test]
    fn names_the_first_missing_hop_and_the_wrong_end() {
        let (a, b) = (ns("node-a", 1), ns("node-b", 2));
        // The underlay hop lacks its tunnel header.
        let p = path(
            vec![
                hop(HopKind::Transmit, Some(1), Some("eth0")),
                hop(HopKind::Receive, Some(2), Some("flannel.1")),
                hop(HopKind::Drop, Some(2), Some("flannel.1")),
            ],
            PathOutcome::Dropped { reason: Some("NO_SOCKET".into()), location: None },
        );
        let problems = expect_path(&[p], &spec(&a, &b), &[a.clone(), b.clone()]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        let text = &problems[0];
        assert!(text.contains("has no tx on eth0 in node-a (vxlan vni 1"), "{text}");
        assert!(text.contains("is not delivered in node-b but dropped in node-b (NO_SOCKET)"), "{text}");
        assert!(text.contains("tx eth0@node-a → rx flannel.1@node-b → drop flannel.1@node-b"), "{text}");
    }

    #[test]
    fn an_encrypted_hop_is_udp_to_its_port_with_no_inner_packet() {
        let (a, b) = (ns("node-a", 1), ns("node-b", 2));
        let sealed = |dport: u16, inner: bool| {
            let mut h = hop(HopKind::Transmit, Some(1), Some("eth0"));
            h.outer =
                Some(Flow { sport: Some(51820), dport: Some(dport), ..flow("udp", "192.168.50.1", "192.168.50.2") });
            h.inner = inner.then(|| flow("icmp", "10.244.1.2", "10.244.2.2"));
            path(
                vec![
                    hop(HopKind::Transmit, Some(1), Some("flannel-wg")),
                    h,
                    hop(HopKind::Receive, Some(2), Some("flannel-wg")),
                    hop(HopKind::Consume, Some(2), None),
                ],
                PathOutcome::Delivered,
            )
        };
        let spec = PathSpec {
            hops: vec![
                HopSpec::new(HopKind::Transmit, &a, "flannel-wg"),
                HopSpec::new(HopKind::Transmit, &a, "eth0").encrypted(EncryptedSpec {
                    src: "192.168.50.1".parse().unwrap(),
                    dst: "192.168.50.2".parse().unwrap(),
                    port: 51820,
                }),
                HopSpec::new(HopKind::Receive, &b, "flannel-wg"),
            ],
            ..spec(&a, &b)
        };
        let names = [a.clone(), b.clone()];
        assert_eq!(expect_path(&[sealed(51820, false)], &spec, &names), Vec::<String>::new());
        let wrong_port = expect_path(&[sealed(8472, false)], &spec, &names);
        assert!(wrong_port[0].contains("has no tx on eth0 in node-a (udp 192.168.50.1 > 192.168.50.2 port 51820"));
        // A readable inner packet is not what an encrypted tunnel shows.
        assert_eq!(expect_path(&[sealed(51820, true)], &spec, &names).len(), 1);
    }

    #[test]
    fn drops_without_a_reason_count_and_forbidden_hops_do_not() {
        let (a, b) = (ns("node-a", 1), ns("node-b", 2));
        let dropped = |reason: Option<&str>, via_tunnel: bool| {
            let mut hops = vec![hop(HopKind::Receive, Some(1), Some("cni0"))];
            if via_tunnel {
                hops.push(hop(HopKind::Transmit, Some(1), Some("flannel.1")));
            }
            hops.push(hop(HopKind::Drop, Some(1), Some("cni0")));
            path(
                hops,
                PathOutcome::Dropped { reason: reason.map(str::to_string), location: Some("ip_forward+0x2c0".into()) },
            )
        };
        let spec = PathSpec {
            hops: vec![HopSpec::new(HopKind::Receive, &a, "cni0")],
            end: EndSpec::Dropped { ns: a.clone(), reasons: vec!["PKT_TOO_BIG"], location: Some("ip_forward") },
            never: vec![("flannel.1".into(), a.clone())],
            ..spec(&a, &b)
        };
        let names = [a.clone(), b.clone()];
        for reason in [Some("PKT_TOO_BIG"), Some("NOT_SPECIFIED"), None] {
            assert!(expect_path(&[dropped(reason, false)], &spec, &names).is_empty(), "{reason:?}");
        }
        assert_eq!(expect_path(&[dropped(Some("NO_ROUTE"), false)], &spec, &names).len(), 1);
        let through = expect_path(&[dropped(None, true)], &spec, &names);
        assert!(through[0].contains("should not have reached tx on flannel.1"), "{through:?}");
        let none = expect_path(&[], &spec, &names);
        assert!(none[0].starts_with("no traced path of the echo request"), "{none:?}");
    }
}
