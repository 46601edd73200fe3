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

impl HopSpec {
    pub fn new(hook: HopKind, ns: &NsRef, device: &str) -> Self {
        Self { hook, ns: ns.clone(), device: device.to_string(), tunnel: None }
    }

    pub fn tunnel(mut self, tunnel: TunnelSpec) -> Self {
        self.tunnel = Some(tunnel);
        self
    }

    fn matches(&self, hop: &PacketHop) -> bool {
        hop.hook == self.hook
            && self.ns.holds(hop)
            && hop.device.as_deref() == Some(self.device.as_str())
            && self.tunnel.as_ref().is_none_or(|t| t.matches(hop))
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
