//! Joins the path family's hops into whole packet paths (by the kernel's trace id) and keeps
//! per-hop and end-to-end latency histograms (hdrhistogram) for the session summary.
//!
//! A path is complete when its packet is delivered, dropped or refused by a driver; a path
//! without a new hop for [`IDLE_NS`] is closed as unfinished (its `sk_buff` was freed without
//! a tracepoint, e.g. merged by GRO, or is still queued).

use std::collections::BTreeMap;

use foldhash::HashMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tracer_ebpf::{PathHopKey, PathHopStats, LATENCY_BUCKETS, PATH_HOP_END_TO_END};

use crate::{
    decode::path::{HopKind, PacketHop, PacketPath, PathOutcome, PathStep},
    packet_filter::PacketFilter,
};

/// A path unseen for this long is closed as unfinished.
pub const IDLE_NS: u64 = 1_000_000_000;
/// Paths in progress at most (older ones are closed first when full).
const MAX_OPEN: usize = 8192;
/// Hops per path at most (a routing loop would otherwise grow one forever).
const MAX_HOPS: usize = 64;
/// Distinct hop pairs and end-to-end routes with a histogram.
const MAX_HISTOGRAMS: usize = 512;

#[derive(Default)]
pub struct PathAssembler {
    open: HashMap<u64, Vec<PacketHop>>,
    /// Paths whose first hop did not match the whole filter (the kernel evaluates part of it).
    pub filtered: u64,
    pub latency: PathLatency,
    filter: Option<PacketFilter>,
}

impl PathAssembler {
    pub fn new(filter: Option<PacketFilter>) -> Self {
        Self { filter, ..Default::default() }
    }

    /// Adds a hop; returns the paths it completes (its own, and idle ones).
    pub fn push(&mut self, hop: PacketHop) -> Vec<PacketPath> {
        let now = hop.ts_ns;
        let id = hop.trace_id;
        let end = hop.hook.is_end();
        let hops = self.open.entry(id).or_default();
        if hops.len() < MAX_HOPS {
            hops.push(hop);
        }
        let mut done = Vec::new();
        if end {
            if let Some(hops) = self.open.remove(&id) {
                done.extend(self.close(hops));
            }
        }
        if self.open.len() > MAX_OPEN || done.is_empty() {
            done.extend(self.close_idle(now));
        }
        done
    }

    /// Closes paths idle since `now - IDLE_NS` (all when `now` is `u64::MAX`).
    pub fn close_idle(&mut self, now: u64) -> Vec<PacketPath> {
        let idle: Vec<u64> = self
            .open
            .iter()
            .filter(|(_, hops)| {
                let last = hops.last().map_or(0, |h| h.ts_ns);
                now == u64::MAX || now.saturating_sub(last) > IDLE_NS || self.open.len() > MAX_OPEN
            })
            .map(|(id, _)| *id)
            .collect();
        let mut done = Vec::new();
        for id in idle {
            if let Some(hops) = self.open.remove(&id) {
                done.extend(self.close(hops));
            }
        }
        done.sort_by_key(|p| p.steps.first().map_or(0, |s| s.hop.ts_ns));
        done
    }

    fn close(&mut self, mut hops: Vec<PacketHop>) -> Option<PacketPath> {
        // Ring-buffer order is per CPU; a packet can change CPU on its way.
        hops.sort_by_key(|h| h.ts_ns);
        let first = hops.first()?;
        if let Some(filter) = &self.filter {
            let fits = |f: &Option<crate::decode::Flow>| f.as_ref().is_some_and(|f| filter.matches(f));
            if !fits(&first.outer) && !fits(&first.inner) {
                self.filtered += 1;
                return None;
            }
        }
        let start = first.ts_ns;
        let flow = first.inner.clone().or_else(|| first.outer.clone());
        let last = hops.last()?;
        let outcome = match last.hook {
            HopKind::Consume => {
                let before = hops.iter().rev().skip(1).find(|h| h.hook != HopKind::Function);
                match before {
                    Some(tx)
                        if tx.hook == HopKind::Transmit && tx.ifindex == last.ifindex && tx.netns == last.netns =>
                    {
                        PathOutcome::Sent { device: tx.device.clone() }
                    }
                    _ => PathOutcome::Delivered,
                }
            }
            HopKind::Drop => PathOutcome::Dropped { reason: last.drop_reason.clone(), location: last.location.clone() },
            HopKind::TransmitError => PathOutcome::TransmitFailed { rc: last.xmit_rc.unwrap_or(0) },
            _ => PathOutcome::Unfinished,
        };
        let total_ns = last.ts_ns - start;
        let mut previous = start;
        let steps: Vec<PathStep> = hops
            .into_iter()
            .map(|hop| {
                let step = PathStep { since_previous_ns: hop.ts_ns - previous, since_start_ns: hop.ts_ns - start, hop };
                previous = step.hop.ts_ns;
                step
            })
            .collect();
        let path = PacketPath { trace_id: steps[0].hop.trace_id, flow, steps, outcome, total_ns };
        self.latency.record(&path);
        Some(path)
    }
}

/// Where a hop was, as the summary names it: `tx eth0@node-a`.
pub fn point_label(hop: &PacketHop) -> String {
    let device = hop.device_label();
    // In a pod's namespace, the pod: `rx eth0@kube-system/coredns-5d78c9869d-8xq2p`.
    let netns = match &hop.pod {
        Some(pod) => pod.to_string(),
        None => hop.netns_name.clone().or(hop.netns.map(|n| n.to_string())).unwrap_or_else(|| "?".into()),
    };
    format!("{} {device}@{netns}", hop.hook.word())
}

/// Latency between consecutive points of the traced paths, and end to end.
#[derive(Default)]
pub struct PathLatency {
    hops: BTreeMap<(String, String), Histogram<u64>>,
    end_to_end: BTreeMap<(String, String), Histogram<u64>>,
    /// Samples whose pair had no histogram left (beyond `MAX_HISTOGRAMS`).
    pub unrecorded: u64,
    /// Filled from the kernel's log2 buckets (aggregate mode): percentiles are bucket bounds.
    approximate: bool,
}

impl PathLatency {
    fn record(&mut self, path: &PacketPath) {
        // Device to device: function hops (kernels with kprobes only) would make the same
        // hop incomparable between kernels.
        let devices: Vec<&PathStep> = path.steps.iter().filter(|s| s.hop.hook != HopKind::Function).collect();
        for pair in devices.windows(2) {
            let key = (point_label(&pair[0].hop), point_label(&pair[1].hop));
            self.sample(false, key, pair[1].hop.ts_ns - pair[0].hop.ts_ns, 1);
        }
        if let (Some(first), Some(last)) = (path.steps.first(), path.steps.last()) {
            if path.steps.len() > 1 {
                let key = (point_label(&first.hop), point_label(&last.hop));
                self.sample(true, key, path.total_ns, 1);
            }
        }
    }

    fn sample(&mut self, end_to_end: bool, key: (String, String), ns: u64, count: u64) {
        let map = if end_to_end { &mut self.end_to_end } else { &mut self.hops };
        let full = map.len() >= MAX_HISTOGRAMS;
        let histogram = match map.get_mut(&key) {
            Some(h) => h,
            None if full => {
                self.unrecorded += count;
                return;
            }
            // Nanoseconds up to an hour, 3 significant digits.
            None => map.entry(key).or_insert_with(|| Histogram::new_with_bounds(1, 3_600_000_000_000, 3).unwrap()),
        };
        let _ = histogram.record_n(ns.clamp(1, 3_600_000_000_000), count);
    }

    /// Fills the histograms from the kernel's aggregate counters; `label` names a point.
    pub fn from_counters(
        counters: &[(PathHopKey, PathHopStats)],
        label: impl Fn(&tracer_ebpf::PathPoint) -> String,
    ) -> Self {
        let mut latency = PathLatency { approximate: true, ..Default::default() };
        for (key, stats) in counters {
            if key.from.hook == 0 {
                continue;
            }
            let end_to_end = key.from.hook == PATH_HOP_END_TO_END;
            let from = if end_to_end { "first hop".to_string() } else { label(&key.from) };
            for (bucket, &count) in stats.buckets.iter().enumerate().take(LATENCY_BUCKETS) {
                if count > 0 {
                    // The bucket's upper bound: percentiles read "at most".
                    let bound = (1u64 << (bucket + 1)) - 1;
                    latency.sample(end_to_end, (from.clone(), label(&key.to)), bound.min(stats.max_ns.max(1)), count);
                }
            }
        }
        latency
    }

    pub fn summary(&self) -> LatencySummary {
        let rows = |map: &BTreeMap<(String, String), Histogram<u64>>| {
            let mut rows: Vec<LatencyRow> = map
                .iter()
                .map(|((from, to), h)| LatencyRow {
                    from: from.clone(),
                    to: to.clone(),
                    packets: h.len(),
                    p50_ns: h.value_at_quantile(0.5),
                    p90_ns: h.value_at_quantile(0.9),
                    p99_ns: h.value_at_quantile(0.99),
                    max_ns: h.max(),
                    mean_ns: h.mean() as u64,
                })
                .collect();
            rows.sort_by(|a, b| b.packets.cmp(&a.packets).then(a.from.cmp(&b.from)));
            rows
        };
        LatencySummary {
            hops: rows(&self.hops),
            end_to_end: rows(&self.end_to_end),
            approximate: self.approximate,
            unrecorded: self.unrecorded,
        }
    }
}

/// Latency of one hop (or of whole journeys from `from` to `to`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyRow {
    pub from: String,
    pub to: String,
    pub packets: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    pub mean_ns: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LatencySummary {
    pub hops: Vec<LatencyRow>,
    pub end_to_end: Vec<LatencyRow>,
    /// From the kernel's log2 buckets (aggregate mode): each value is a power-of-two bound.
    pub approximate: bool,
    /// Samples not recorded because too many distinct hops were seen.
    pub unrecorded: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::path::HopKind;

    fn hop(id: u64, ts: u64, hook: HopKind, dev: &str) -> PacketHop {
        PacketHop {
            time: String::new(),
            ts_ns: ts,
            wall_ns: ts,
            cpu: 0,
            trace_id: id,
            hook,
            netns: Some(1),
            netns_name: Some("n".into()),
            pod: None,
            ifindex: 2,
            device: Some(dev.into()),
            len: 84,
            outer: crate::decode::parse_flow(&[
                0x45, 0, 0, 84, 0, 0, 0x40, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, 8, 0, 0, 0, 0, 1, 0, 1,
            ]),
            tunnel: None,
            inner: None,
            drop_reason: (hook == HopKind::Drop).then(|| "PKT_TOO_BIG".to_string()),
            location: None,
            xmit_rc: None,
            function: None,
            task: None,
            bytes: vec![],
            link_layer: false,
        }
    }

    #[test]
    fn joins_hops_and_measures() {
        let mut a = PathAssembler::new(Some(PacketFilter::parse("icmp and host 10.0.0.2").unwrap()));
        assert!(a.push(hop(7, 1_000, HopKind::Transmit, "eth0")).is_empty());
        assert!(a.push(hop(7, 3_000, HopKind::Receive, "veth0")).is_empty());
        let done = a.push(hop(7, 10_000, HopKind::Drop, "veth0"));
        assert_eq!(done.len(), 1);
        let p = &done[0];
        assert_eq!(p.steps.len(), 3);
        assert_eq!(p.total_ns, 9_000);
        assert_eq!(p.steps[1].since_previous_ns, 2_000);
        assert_eq!(p.outcome, PathOutcome::Dropped { reason: Some("PKT_TOO_BIG".into()), location: None });
        let s = a.latency.summary();
        assert_eq!(s.hops.len(), 2);
        assert_eq!(s.end_to_end[0].packets, 1);
        assert!((8_990..=9_010).contains(&s.end_to_end[0].max_ns));
    }

    #[test]
    fn consumed_after_its_own_transmit_is_sent() {
        let mut a = PathAssembler::new(None);
        a.push(hop(9, 1_000, HopKind::Transmit, "eth0"));
        let done = a.push(hop(9, 2_000, HopKind::Consume, "eth0"));
        assert_eq!(done[0].outcome, PathOutcome::Sent { device: Some("eth0".into()) });
        a.push(hop(10, 1_000, HopKind::Receive, "eth0"));
        let done = a.push(hop(10, 2_000, HopKind::Consume, "eth0"));
        assert_eq!(done[0].outcome, PathOutcome::Delivered);
    }

    #[test]
    fn whole_filter_is_rechecked_and_idle_paths_close() {
        let mut a = PathAssembler::new(Some(PacketFilter::parse("host 10.9.9.9").unwrap()));
        assert!(a.push(hop(1, 1_000, HopKind::Consume, "lo")).is_empty());
        assert_eq!(a.filtered, 1);
        let mut a = PathAssembler::new(None);
        a.push(hop(2, 1_000, HopKind::Transmit, "eth0"));
        let done = a.push(hop(3, 1_000 + IDLE_NS + 1, HopKind::Transmit, "eth0"));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].outcome, PathOutcome::Unfinished);
        assert_eq!(a.close_idle(u64::MAX).len(), 1);
    }
}
