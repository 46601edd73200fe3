//! Bounded correlation state: drops grouped by where they died and which flow they were.

use std::{collections::HashMap, net::IpAddr};

use crate::decode::{
    links::{KernelMessage, LinkRequest, NetlinkAck},
    DropRecord, Event,
};

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
    /// Drops that arrived after `MAX_GROUPS` groups existed.
    pub ungrouped_drops: u64,
    pub events: u64,
}

impl Correlated {
    pub fn observe(&mut self, event: &Event) {
        self.events += 1;
        match event {
            Event::Drop(drop) => self.observe_drop(drop),
            Event::LinkRequest(request) => {
                if self.links.len() >= MAX_LINK_REQUESTS {
                    self.unkept_link_requests += 1;
                    return;
                }
                self.pending_by_tid.insert(request.actor.tid, self.links.len());
                self.links.push(LinkOutcome { request: request.clone(), ack: None, message: None });
            }
            Event::NetlinkAck(ack) => {
                // Peeking receives (MSG_PEEK) report the same ack twice: the first one wins.
                if let Some(outcome) = self.pending_outcome(ack.actor.tid) {
                    if outcome.request.seq == ack.seq && outcome.ack.is_none() {
                        outcome.ack = Some(ack.clone());
                    }
                }
            }
            Event::KernelMessage(message) => {
                if let Some(outcome) = self.pending_outcome(message.actor.tid) {
                    if outcome.ack.is_none() && outcome.message.is_none() {
                        outcome.message = Some(message.clone());
                    }
                }
            }
        }
    }

    fn pending_outcome(&mut self, tid: u32) -> Option<&mut LinkOutcome> {
        let index = *self.pending_by_tid.get(&tid)?;
        self.links.get_mut(index)
    }

    /// Link requests in the order they were made, with their outcomes.
    pub fn link_outcomes(&self) -> &[LinkOutcome] {
        &self.links
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
