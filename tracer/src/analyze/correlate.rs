//! Bounded correlation state: drops grouped by where they died and which flow they were.

use std::net::IpAddr;

use foldhash::{HashMap, HashMapExt};

use crate::decode::{
    links::{Actor, KernelMessage, LinkRequest, LinkState, ModuleEvent, NetlinkAck},
    netfilter::{BridgeState, IcmpError, NfVerdict, RuleCounter, TcpConnect, TcpReset},
    xdp::{BpfCommand, XdpException},
    DropRecord, Event,
};

/// Resets, ICMP errors, connection attempts, rule counters and bridges kept per session
/// (each); further ones are only counted.
pub const MAX_PACKET_ANSWERS: usize = 4096;

/// Links whose states are kept, and states kept per link.
pub const MAX_LINKS: usize = 4096;
pub const MAX_STATES_PER_LINK: usize = 256;
/// How long before a state change the request that caused it may have been made.
const ATTRIBUTION_WINDOW_NS: u64 = 2_000_000_000;
/// How long after a link's first state its create request may be stamped. The kernel sends
/// the notification of a new link while it handles the request, and the request's event can
/// be stamped after that: a veth's peer, which `veth_newlink` registers first, was seen
/// 0.75 ms before the request that created it (CNI bridge plugin, 6.18).
const CREATE_STAMP_SLACK_NS: u64 = 100_000_000;

/// At most this many link requests are kept per session.
pub const MAX_LINK_REQUESTS: usize = 4096;

/// A link request joined with what the kernel answered (same thread, same sequence number).
#[derive(Debug, Clone)]
pub struct LinkOutcome {
    pub request: LinkRequest,
    /// The kernel's answer: `Some(0)` success, `Some(errno)` failure, `None` not seen.
    pub ack: Option<NetlinkAck>,
    /// The extended-ack text the kernel produced while handling the request.
    pub message: Option<KernelMessage>,
    /// Modules the kernel tried to autoload while handling it (`rtnl-link-<kind>`).
    pub module_requests: Vec<ModuleEvent>,
}

/// A link's life during the session, from the monitor joined with the requests.
#[derive(Debug, Clone)]
pub struct LinkHistory {
    pub netns: u32,
    pub netns_name: Option<String>,
    pub ifindex: u32,
    pub ifname: Option<String>,
    pub link_kind: Option<String>,
    pub first_ts_ns: u64,
    pub first_time: String,
    /// Created during the session (a create request matched its first appearance).
    pub created_here: bool,
    pub creator: Option<Actor>,
    pub mac_changes: Vec<MacChange>,
    /// Going down from fully up (administratively up with carrier): set down, carrier lost
    /// or deleted. One episode counts once: a deletion that first takes the link down (the
    /// kernel closes a device before it unregisters it) is one down, not three.
    pub downs: Vec<Transition>,
    /// Coming up: carrier and administratively up, from not being so (or created so).
    pub ups: Vec<Transition>,
    /// The states and requests behind the above (creation, changes), time-ordered, capped.
    pub evidence: Vec<Event>,
}

/// Evidence kept per link history.
const EVIDENCE_PER_LINK: usize = 8;

#[derive(Debug, Clone)]
pub struct MacChange {
    pub ts_ns: u64,
    pub time: String,
    pub old: String,
    pub new: String,
    /// The process whose request set the new address; None when no request was seen
    /// (an ioctl, the kernel itself, or a request outside the traced namespaces).
    pub by: Option<Actor>,
}

#[derive(Debug, Clone)]
pub struct Transition {
    pub ts_ns: u64,
    pub time: String,
    pub by: Option<Actor>,
}

impl LinkOutcome {
    pub fn errno(&self) -> Option<i32> {
        self.ack.as_ref().map(|a| a.errno)
    }
}

/// At most this many distinct drop groups are kept; further groups are only counted.
pub const MAX_GROUPS: usize = 4096;
/// Events kept as evidence per group.
pub const EVIDENCE_PER_GROUP: usize = 3;

/// What identifies a group of drops: same reason, same function, same place, same
/// destination. The source port is left out: retries of one client use new ports.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DropKey {
    pub reason: Option<String>,
    pub function: String,
    pub netns: Option<u32>,
    pub device: Option<String>,
    pub l4: Option<String>,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub dport: Option<u16>,
}

#[derive(Debug, Clone)]
pub struct DropGroup {
    pub key: DropKey,
    pub count: u64,
    pub first: DropRecord,
    pub last_time: String,
    pub last_ts_ns: u64,
    pub samples: Vec<DropRecord>,
}

#[derive(Debug, Default)]
pub struct Correlated {
    groups: HashMap<DropKey, DropGroup>,
    links: Vec<LinkOutcome>,
    /// Thread → index in `links` of its latest request: acks and messages of that thread
    /// belong to it (netlink requests are handled synchronously in the sender's context).
    pending_by_tid: HashMap<u32, usize>,
    /// Link requests beyond `MAX_LINK_REQUESTS`, only counted.
    pub unkept_link_requests: u64,
    /// Modules requested or loaded during the session (bounded by what the kernel has).
    pub loaded_modules: Vec<String>,
    /// Monitor states per link, keyed by (netns inode, ifindex), in arrival order.
    link_states: HashMap<(u32, u32), Vec<LinkState>>,
    pub unkept_link_states: u64,
    /// `link_histories()`, computed once when the rules first ask (after the last event).
    histories: std::cell::OnceCell<Vec<LinkHistory>>,
    /// Drops that arrived after `MAX_GROUPS` groups existed.
    pub ungrouped_drops: u64,
    pub resets: Vec<TcpReset>,
    pub icmp_errors: Vec<IcmpError>,
    pub connects: Vec<TcpConnect>,
    pub rule_counters: Vec<RuleCounter>,
    pub bridges: Vec<BridgeState>,
    pub nf_verdicts: Vec<NfVerdict>,
    pub bpf_commands: Vec<BpfCommand>,
    pub xdp_exceptions: Vec<XdpException>,
    /// Resets, ICMP errors, connects, counters and bridges beyond `MAX_PACKET_ANSWERS`.
    pub unkept_answers: u64,
    pub events: u64,
}

impl Correlated {
    pub fn observe(&mut self, event: &Event) {
        self.events += 1;
        self.histories.take();
        match event {
            Event::Drop(drop) => self.observe_drop(drop),
            Event::LinkRequest(request) => {
                // `dptrace check` run beside this session: its probes fail on purpose.
                if crate::kernel::features::is_probe_thread(&request.actor.comm) {
                    return;
                }
                if self.links.len() >= MAX_LINK_REQUESTS {
                    self.unkept_link_requests += 1;
                    return;
                }
                self.pending_by_tid.insert(request.actor.tid, self.links.len());
                self.links.push(LinkOutcome {
                    request: request.clone(),
                    ack: None,
                    message: None,
                    module_requests: vec![],
                });
            }
            Event::NetlinkAck(ack) => {
                // Peeking receives (MSG_PEEK) report the same ack twice: the first one wins.
                if let Some(outcome) = self.pending_outcome(ack.actor.tid) {
                    if outcome.request.seq == ack.seq && outcome.ack.is_none() {
                        outcome.ack = Some(ack.clone());
                    }
                }
            }
            Event::Module(module) => {
                if module.action == "requested" {
                    if let Some(outcome) = self.pending_outcome(module.actor.tid) {
                        if outcome.ack.is_none() && outcome.module_requests.len() < 4 {
                            outcome.module_requests.push(module.clone());
                        }
                    }
                }
                if self.loaded_modules.len() < 256 && !self.loaded_modules.contains(&module.module) {
                    self.loaded_modules.push(module.module.clone());
                }
            }
            Event::LinkState(state) => {
                let key = (state.netns, state.ifindex);
                if !self.link_states.contains_key(&key) && self.link_states.len() >= MAX_LINKS {
                    self.unkept_link_states += 1;
                    return;
                }
                let states = self.link_states.entry(key).or_default();
                if states.len() >= MAX_STATES_PER_LINK {
                    self.unkept_link_states += 1;
                    return;
                }
                states.push(state.clone());
            }
            Event::KernelMessage(message) => {
                if let Some(outcome) = self.pending_outcome(message.actor.tid) {
                    if outcome.ack.is_none() && outcome.message.is_none() {
                        outcome.message = Some(message.clone());
                    }
                }
            }
            Event::TcpReset(r) => keep(&mut self.resets, r, &mut self.unkept_answers),
            Event::IcmpError(i) => keep(&mut self.icmp_errors, i, &mut self.unkept_answers),
            Event::TcpConnect(c) => keep(&mut self.connects, c, &mut self.unkept_answers),
            Event::RuleCounter(c) => keep(&mut self.rule_counters, c, &mut self.unkept_answers),
            Event::Bridge(b) => keep(&mut self.bridges, b, &mut self.unkept_answers),
            Event::NetfilterVerdict(v) => keep(&mut self.nf_verdicts, v, &mut self.unkept_answers),
            Event::BpfCommand(c) => keep(&mut self.bpf_commands, c, &mut self.unkept_answers),
            Event::XdpException(x) => keep(&mut self.xdp_exceptions, x, &mut self.unkept_answers),
            // Hops are joined into paths before the analyzer sees them; no rule reads paths
            // yet (the drops they end in arrive as drops too).
            Event::PacketHop(_) | Event::PacketPath(_) => {}
        }
    }

    /// The connection attempt a packet to `(dst, dport)` in `netns` answers, if one was seen:
    /// the socket that sent a SYN from that address and port.
    pub fn connect_from(&self, netns: Option<u32>, addr: std::net::IpAddr, port: u16) -> Option<&TcpConnect> {
        self.connects
            .iter()
            .rev()
            .find(|c| c.netns == netns && c.flow.as_ref().is_some_and(|f| f.src == addr && f.sport == Some(port)))
    }

    fn pending_outcome(&mut self, tid: u32) -> Option<&mut LinkOutcome> {
        let index = *self.pending_by_tid.get(&tid)?;
        self.links.get_mut(index)
    }

    /// Link requests in the order they were made, with their outcomes.
    pub fn link_outcomes(&self) -> &[LinkOutcome] {
        &self.links
    }

    /// What happened to each link seen by the monitor, joined with the requests that
    /// caused it. Computed at the end: monitor states and traced requests arrive on
    /// different paths and are ordered here by their timestamps.
    pub fn link_histories(&self) -> &[LinkHistory] {
        self.histories.get_or_init(|| {
            let mut histories: Vec<LinkHistory> =
                self.link_states.values().filter_map(|states| self.history(states)).collect();
            histories.sort_by_key(|h| h.first_ts_ns);
            histories
        })
    }

    /// The history of the link `ifindex` in netns `netns`, if the monitor saw it change.
    pub fn link_history(&self, netns: u32, ifindex: u32) -> Option<&LinkHistory> {
        self.link_histories().iter().find(|h| h.netns == netns && h.ifindex == ifindex)
    }

    fn history(&self, states: &[LinkState]) -> Option<LinkHistory> {
        let mut states: Vec<&LinkState> = states.iter().collect();
        states.sort_by_key(|s| s.ts_ns);
        let first = *states.first()?;
        let name = states.iter().rev().find_map(|s| s.ifname.clone());
        let creation = self.find_request(first.ts_ns + CREATE_STAMP_SLACK_NS, |r| {
            r.op == "create" && (r.ifname == first.ifname || (r.peer.is_some() && r.peer == first.ifname))
        });
        let mut h = LinkHistory {
            netns: first.netns,
            netns_name: first.netns_name.clone(),
            ifindex: first.ifindex,
            ifname: name,
            link_kind: states
                .iter()
                .find_map(|s| s.link_kind.clone())
                .or_else(|| creation.and_then(|c| c.link_kind.clone())),
            first_ts_ns: first.ts_ns,
            first_time: first.time.clone(),
            created_here: creation.is_some(),
            creator: creation.map(|c| c.actor.clone()),
            mac_changes: vec![],
            downs: vec![],
            ups: vec![],
            evidence: vec![],
        };
        if first.up && first.carrier && creation.is_some() {
            h.ups.push(Transition {
                ts_ns: first.ts_ns,
                time: first.time.clone(),
                by: creation.map(|c| c.actor.clone()),
            });
        }
        let mut evidence: Vec<Event> = creation.iter().map(|r| Event::LinkRequest((*r).clone())).collect();
        evidence.push(Event::LinkState(first.clone()));
        for pair in states.windows(2) {
            let (before, after) = (pair[0], pair[1]);
            if let (Some(old), Some(new)) = (&before.mac, &after.mac) {
                if old != new {
                    let by = self.find_request(after.ts_ns, |r| {
                        r.mac.as_deref() == Some(new.as_str()) && (r.ifname == h.ifname || r.ifindex == Some(h.ifindex))
                    });
                    evidence.extend(by.map(|r| Event::LinkRequest(r.clone())));
                    evidence.push(Event::LinkState(after.clone()));
                    h.mac_changes.push(MacChange {
                        ts_ns: after.ts_ns,
                        time: after.time.clone(),
                        old: old.clone(),
                        new: new.clone(),
                        by: by.map(|r| r.actor.clone()),
                    });
                }
            }
            // A bridge has carrier while one of its ports forwards: it loses it whenever its
            // last pod leaves and gets it back with the next, which is churn, not a flap (a
            // flapping uplink port shows on the port itself).
            let is_bridge = h.link_kind.as_deref() == Some("bridge");
            let fully_up = |s: &LinkState| s.up && (s.carrier || is_bridge) && s.change != "deleted";
            if !fully_up(before) && fully_up(after) && before.change != "deleted" {
                h.ups.push(Transition { ts_ns: after.ts_ns, time: after.time.clone(), by: None });
            }
            if fully_up(before) && !fully_up(after) {
                let by = self.find_request(after.ts_ns, |r| {
                    (r.admin.as_deref() == Some("down") || r.op == "delete")
                        && (r.ifname == h.ifname || r.ifindex == Some(h.ifindex))
                });
                evidence.extend(by.map(|r| Event::LinkRequest(r.clone())));
                evidence.push(Event::LinkState(after.clone()));
                h.downs.push(Transition {
                    ts_ns: after.ts_ns,
                    time: after.time.clone(),
                    by: by.map(|r| r.actor.clone()),
                });
            }
        }
        evidence.sort_by_key(Event::ts_ns);
        evidence.truncate(EVIDENCE_PER_LINK);
        h.evidence = evidence;
        Some(h)
    }

    /// The latest successful (or unanswered) request matching `what`, made shortly before `ts_ns`.
    fn find_request(&self, ts_ns: u64, what: impl Fn(&LinkRequest) -> bool) -> Option<&LinkRequest> {
        self.links
            .iter()
            .rev()
            .filter(|o| o.request.ts_ns <= ts_ns && ts_ns - o.request.ts_ns <= ATTRIBUTION_WINDOW_NS)
            .filter(|o| matches!(o.errno(), None | Some(0)))
            .map(|o| &o.request)
            .find(|r| what(r))
    }

    fn observe_drop(&mut self, drop: &DropRecord) {
        let key = DropKey {
            reason: drop.reason.clone(),
            function: drop.function.clone().unwrap_or_else(|| drop.location.clone()),
            netns: drop.netns,
            device: drop.device.clone(),
            l4: drop.flow.as_ref().map(|f| f.l4.clone()),
            src: drop.flow.as_ref().map(|f| f.src),
            dst: drop.flow.as_ref().map(|f| f.dst),
            dport: drop.flow.as_ref().and_then(|f| f.dport),
        };
        if let Some(group) = self.groups.get_mut(&key) {
            group.count += 1;
            group.last_time.clone_from(&drop.time);
            group.last_ts_ns = drop.ts_ns;
            if group.samples.len() < EVIDENCE_PER_GROUP {
                group.samples.push(drop.clone());
            }
            return;
        }
        if self.groups.len() >= MAX_GROUPS {
            self.ungrouped_drops += 1;
            return;
        }
        let group = DropGroup {
            key: key.clone(),
            count: 1,
            first: drop.clone(),
            last_time: drop.time.clone(),
            last_ts_ns: drop.ts_ns,
            samples: vec![drop.clone()],
        };
        self.groups.insert(key, group);
    }

    /// Groups in a stable order (first seen first).
    pub fn drop_groups(&self) -> Vec<&DropGroup> {
        let mut groups: Vec<&DropGroup> = self.groups.values().collect();
        groups.sort_by_key(|g| g.first.ts_ns);
        groups
    }

    /// Drop counts by (reason, location function), largest first: the session summary.
    pub fn drops_by_reason_and_location(&self) -> Vec<(String, String, u64)> {
        let mut totals: HashMap<(String, String), u64> = HashMap::new();
        for g in self.groups.values() {
            let reason = g.key.reason.clone().unwrap_or_else(|| "(no reason field)".into());
            *totals.entry((reason, g.key.function.clone())).or_default() += g.count;
        }
        let mut rows: Vec<_> = totals.into_iter().map(|((r, l), c)| (r, l, c)).collect();
        rows.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)).then_with(|| a.1.cmp(&b.1)));
        rows
    }

    pub fn total_drops(&self) -> u64 {
        self.groups.values().map(|g| g.count).sum::<u64>() + self.ungrouped_drops
    }
}

fn keep<T: Clone>(list: &mut Vec<T>, item: &T, unkept: &mut u64) {
    if list.len() < MAX_PACKET_ANSWERS {
        list.push(item.clone());
    } else {
        *unkept += 1;
    }
}
