//! Human-readable output: one line per event, a block per finding, a summary table.

use std::io::Write;

use super::{PathsSummary, Sink, Summary};
use crate::{
    analyze::Finding,
    decode::{
        path::{PacketHop, PacketPath, PathOutcome},
        DropRecord, Event,
    },
};

pub struct TextSink {
    live_events: bool,
}

impl TextSink {
    pub fn new(live_events: bool) -> Self {
        Self { live_events }
    }
}

fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// `16:20:01.123456 drop NO_SOCKET netns server(4026532301) dev s0 udp 10.0.0.1:4000 > … at fn+0x1 [pid 7 bash]`
pub fn drop_line(d: &DropRecord) -> String {
    let clock = d.time.get(11..26).unwrap_or(&d.time);
    let reason = match (&d.reason, d.reason_inferred) {
        (Some(r), true) => format!("{r}?"),
        (Some(r), false) => r.clone(),
        (None, _) => "-".into(),
    };
    let mut line = format!("{clock} drop {reason:<14}");
    match (&d.netns_name, d.netns) {
        (Some(name), Some(inode)) => line.push_str(&format!(" netns {name}({inode})")),
        (None, Some(inode)) => line.push_str(&format!(" netns {inode}")),
        _ => line.push_str(" netns ?"),
    }
    if let Some(pod) = &d.pod {
        line.push_str(&format!(" pod {pod}"));
    }
    line.push_str(&format!(" dev {}", d.device.as_deref().unwrap_or("-")));
    match &d.flow {
        Some(flow) => line.push_str(&format!(" {flow}")),
        None => line.push_str(&format!(" {}", d.protocol)),
    }
    line.push_str(&format!(" at {}", d.location));
    if let Some(task) = &d.task {
        line.push_str(&format!(" [pid {} {}]", task.pid, task.comm));
    }
    line
}

/// One line for any event.
pub fn event_line(event: &Event) -> String {
    let clock = |t: &str| t.get(11..26).unwrap_or(t).to_string();
    match event {
        Event::Drop(d) => drop_line(d),
        Event::LinkRequest(r) => {
            let name = r.ifname.clone().or_else(|| r.ifindex.map(|i| format!("#{i}"))).unwrap_or_else(|| "?".into());
            let mut line = format!("{} link {:<6} {name}", clock(&r.time), r.op);
            for (label, value) in [("kind", &r.link_kind), ("mac", &r.mac), ("peer", &r.peer)] {
                if let Some(v) = value {
                    line.push_str(&format!(" {label} {v}"));
                }
            }
            if let Some(admin) = &r.admin {
                line.push_str(&format!(" {admin}"));
            }
            if let Some(new_name) = &r.new_name {
                line.push_str(&format!(" rename to {new_name}"));
            }
            if let Some(peer_ns) = &r.peer_netns {
                line.push_str(&format!(" (peer in netns {peer_ns})"));
            }
            if let Some(to) = &r.to_netns {
                line.push_str(&format!(" move to netns ({to})"));
            }
            if r.via != "netlink" {
                line.push_str(&format!(" via {}", r.via));
            }
            line.push_str(&format!(" seq {} by {}", r.seq, r.actor));
            line
        }
        Event::NetlinkAck(a) => {
            let result = a.error.clone().unwrap_or_else(|| "ok".into());
            format!("{} link answer seq {} {result} to {}", clock(&a.time), a.seq, a.actor)
        }
        Event::KernelMessage(m) => format!("{} link kernel says \"{}\" to {}", clock(&m.time), m.message, m.actor),
        Event::Module(m) => format!("{} module {} {} (by {})", clock(&m.time), m.action, m.module, m.actor),
        Event::LinkState(l) => {
            let netns = l.netns_name.clone().unwrap_or_else(|| l.netns.to_string());
            let netns = in_pod(netns, &l.pod);
            let mut line = format!(
                "{} link state  {} #{} {} in netns {netns}",
                clock(&l.time),
                l.ifname.as_deref().unwrap_or("?"),
                l.ifindex,
                l.change
            );
            if let Some(kind) = &l.link_kind {
                line.push_str(&format!(" kind {kind}"));
            }
            if let Some(mac) = &l.mac {
                line.push_str(&format!(" mac {mac}"));
            }
            line.push_str(if l.up { " up" } else { " down" });
            line.push_str(if l.carrier { " carrier" } else { " no-carrier" });
            if let Some(xdp) = l.xdp.as_deref().filter(|x| *x != "none") {
                line.push_str(&format!(" xdp {xdp}"));
            }
            line
        }
        Event::TcpReset(r) => {
            let netns = r.netns_name.clone().or(r.netns.map(|n| n.to_string())).unwrap_or_else(|| "?".into());
            let netns = in_pod(netns, &r.pod);
            let flow = r.flow.as_ref().map_or_else(|| "?".to_string(), ToString::to_string);
            let mut line = format!("{} tcp RST {:<8} {flow} netns {netns}", clock(&r.time), r.direction);
            if let Some(reason) = &r.reason {
                line.push_str(&format!(" reason {reason}"));
            }
            if let Some(state) = &r.state {
                line.push_str(&format!(" state {state}"));
            }
            if r.direction == "sent" && !r.socket {
                line.push_str(" (no socket)");
            }
            line
        }
        Event::IcmpError(i) => {
            let netns = i.netns_name.clone().or(i.netns.map(|n| n.to_string())).unwrap_or_else(|| "?".into());
            let netns = in_pod(netns, &i.pod);
            let flow = i.flow.as_ref().map_or_else(|| "?".to_string(), ToString::to_string);
            format!("{} icmp {} sent about {flow} netns {netns}", clock(&i.time), i.meaning)
        }
        Event::TcpConnect(c) => {
            let netns = c.netns_name.clone().or(c.netns.map(|n| n.to_string())).unwrap_or_else(|| "?".into());
            let netns = in_pod(netns, &c.pod);
            let flow = c.flow.as_ref().map_or_else(|| "?".to_string(), ToString::to_string);
            let by = c.task.as_ref().map(|t| format!(" by {}[{}]", t.comm, t.pid)).unwrap_or_default();
            format!("{} tcp connect {flow} netns {netns}{by}", clock(&c.time))
        }
        Event::RuleCounter(c) => {
            let netns = c.netns_name.clone().unwrap_or_else(|| c.netns.to_string());
            let netns = in_pod(netns, &c.pod);
            format!("{} counter +{} packet(s) {} netns {netns}", clock(&c.time), c.packets, c.describe())
        }
        Event::NetfilterVerdict(v) => {
            let netns = v.netns_name.clone().or(v.netns.map(|n| n.to_string())).unwrap_or_else(|| "?".into());
            let netns = in_pod(netns, &v.pod);
            let flow = v.flow.as_ref().map_or_else(|| v.skb.clone(), ToString::to_string);
            let chain = v.chain.as_deref().map(|c| format!(" chain {c}")).unwrap_or_default();
            let hook = v.hook.as_deref().map(|h| format!(" hook {h}")).unwrap_or_default();
            format!(
                "{} verdict {} {} table {}{chain}{hook} ({}) {flow} netns {netns}",
                clock(&v.time),
                v.verdict,
                v.family,
                v.table,
                v.origin
            )
        }
        Event::BpfCommand(c) => {
            let mut line = format!("{} bpf {}", clock(&c.time), c.command);
            for (label, value) in [("type", &c.prog_type), ("name", &c.prog_name), ("attach", &c.attach_type)] {
                if let Some(v) = value {
                    line.push_str(&format!(" {label} {v}"));
                }
            }
            if let Some(ifindex) = c.target_ifindex {
                line.push_str(&format!(" ifindex {ifindex}"));
            }
            if let Some(mode) = &c.xdp_mode {
                line.push_str(&format!(" mode {mode}"));
            }
            match &c.error {
                Some(e) => line.push_str(&format!(" -> {e}")),
                None => line.push_str(&format!(" -> fd {}", c.result)),
            }
            if let Some(m) = &c.message {
                line.push_str(&format!(" \"{m}\""));
            }
            line.push_str(&format!(" by {}", c.actor));
            line
        }
        Event::XdpException(x) => {
            let netns = x.netns_name.clone().or(x.netns.map(|n| n.to_string())).unwrap_or_else(|| "?".into());
            let netns = in_pod(netns, &x.pod);
            format!(
                "{} xdp {} x{} on {} netns {netns} by prog {} ({})",
                clock(&x.time),
                x.action,
                x.count,
                x.device.clone().unwrap_or_else(|| format!("ifindex {}", x.ifindex)),
                x.prog_id,
                x.prog_name.as_deref().unwrap_or("?")
            )
        }
        Event::PacketHop(h) => {
            format!("{} hop trace {} {}", clock(&h.time), h.trace_id, hop_text(h))
        }
        Event::PacketPath(p) => path_text(p),
        Event::Bridge(b) => {
            let netns = b.netns_name.clone().unwrap_or_else(|| b.netns.to_string());
            let netns = in_pod(netns, &b.pod);
            let nf = |v: Option<bool>| v.map_or("absent", |on| if on { "1" } else { "0" });
            format!(
                "{} bridge {} netns {netns} carried {} packet(s), br_netfilter {} bridge-nf-call-iptables={} ip6tables={}",
                clock(&b.time),
                b.bridge,
                b.packets,
                if b.br_netfilter_loaded { "loaded" } else { "not loaded" },
                nf(b.call_iptables),
                nf(b.call_ip6tables)
            )
        }
    }
}

/// `tx   flannel.1@node-a  1450 B  udp 192.168.50.1:40000 > 192.168.50.2:8472 vxlan 1 [icmp 10.244.1.2 > 10.244.2.2 type 8 code 0]`
fn hop_text(h: &PacketHop) -> String {
    hop_text_padded(h, 28)
}

/// Where a hop was: `device@netns`, or `device@NAMESPACE/POD` in a pod's namespace.
fn hop_place(h: &PacketHop) -> String {
    match &h.pod {
        Some(pod) => format!("{}@{pod}", h.device_label()),
        None => {
            let netns = h.netns_name.clone().or(h.netns.map(|n| n.to_string())).unwrap_or_else(|| "?".into());
            format!("{}@{netns}", h.device_label())
        }
    }
}

/// `NETNS pod NAMESPACE/NAME` where the namespace is a pod's, else `NETNS`.
fn in_pod(netns: String, pod: &Option<crate::pods::Pod>) -> String {
    match pod {
        Some(pod) => format!("{netns} pod {pod}"),
        None => netns,
    }
}

/// A hop with its place padded to `width`, so a path's columns line up.
fn hop_text_padded(h: &PacketHop, width: usize) -> String {
    if let Some(function) = &h.function {
        return format!("{:<9} {function}()", h.hook.word());
    }
    let mut line = format!("{:<9} {:<width$} {:>5} B", h.hook.word(), hop_place(h), h.len);
    if let Some(outer) = &h.outer {
        line.push_str(&format!("  {outer}"));
    }
    if let Some(t) = &h.tunnel {
        line.push_str(&format!(" {} vni {}", t.kind, t.vni));
    }
    if let Some(inner) = &h.inner {
        line.push_str(&format!(" [{inner}]"));
    }
    if let Some(reason) = &h.drop_reason {
        line.push_str(&format!(" reason {reason}"));
    }
    if let Some(location) = &h.location {
        line.push_str(&format!(" at {location}"));
    }
    if let Some(rc) = h.xmit_rc {
        line.push_str(&format!(" rc {rc}"));
    }
    line
}

/// Microseconds with one decimal: `12.3µs`.
pub fn micros(ns: u64) -> String {
    format!("{:.1}µs", ns as f64 / 1000.0)
}

/// A path as a block: a title line, then one line per hop with its delay.
pub fn path_text(p: &PacketPath) -> String {
    let flow = p.flow.as_ref().map_or_else(|| "?".to_string(), ToString::to_string);
    let start = p.steps.first().map_or("", |s| s.hop.time.get(11..26).unwrap_or(&s.hop.time));
    let outcome = match &p.outcome {
        PathOutcome::Delivered => "delivered".to_string(),
        PathOutcome::Sent { device } => {
            format!("sent by {} (or split into new buffers)", device.as_deref().unwrap_or("?"))
        }
        PathOutcome::Dropped { reason, .. } => format!("dropped ({})", reason.as_deref().unwrap_or("no reason")),
        PathOutcome::TransmitFailed { rc } => format!("transmit failed (rc {rc})"),
        PathOutcome::Unfinished => "unfinished".to_string(),
    };
    let mut text = format!(
        "{start} path {:#x} {flow}: {} hops, {outcome} after {}",
        p.trace_id,
        p.steps.len(),
        micros(p.total_ns)
    );
    let width = p
        .steps
        .iter()
        .filter(|s| s.hop.function.is_none())
        .map(|s| hop_place(&s.hop).chars().count())
        .max()
        .unwrap_or(0);
    for step in &p.steps {
        let delay = format!("+{}", micros(step.since_previous_ns));
        text.push_str(&format!("\n  {delay:>10}  {}", hop_text_padded(&step.hop, width)));
    }
    text
}

impl Sink for TextSink {
    fn event(&mut self, event: &Event) {
        if self.live_events {
            print(&event_line(event));
        }
    }

    fn finding(&mut self, f: &Finding) {
        let mut text = format!("\n[{}] {}: {}\n", f.severity, f.rule, f.summary);
        text.push_str(&format!("  where:   {}\n", f.place));
        for flow in &f.flows {
            text.push_str(&format!("  flow:    {flow}\n"));
        }
        let unit = if f.actor.is_some() { "requests" } else { "packets" };
        text.push_str(&format!("  when:    {} .. {} ({} {unit})\n", f.first_time, f.last_time, f.count));
        if let Some(actor) = &f.actor {
            text.push_str(&format!("  who:     {actor}\n"));
        }
        for event in &f.evidence {
            text.push_str(&format!("  evidence: {}\n", event_line(event)));
        }
        text.push_str(&format!("  fix:     {}", f.remediation));
        print(&text);
    }

    fn summary(&mut self, s: &Summary) {
        let mut text = format!(
            "\n== summary: {:.1}s, {} events, {} drops, {} lost, {} findings (kernel {}) ==",
            s.duration_secs, s.events, s.drops, s.lost_events, s.findings, s.kernel.release
        );
        if !s.drops_by_reason.is_empty() {
            text.push_str(&format!("\n  {:>8}  {:<24} location", "count", "reason"));
            for row in &s.drops_by_reason {
                text.push_str(&format!("\n  {:>8}  {:<24} {}", row.count, row.reason, row.location));
            }
        }
        if s.lost_events > 0 {
            text.push_str(&format!(
                "\n  {} events were lost: the ring buffer was full (raise --buffer-size)",
                s.lost_events
            ));
        }
        if s.filtered_events > 0 {
            text.push_str(&format!(
                "\n  {} events outside the --netns/--pod/--iface filter were skipped",
                s.filtered_events
            ));
        }
        if s.decode_errors > 0 {
            text.push_str(&format!("\n  {} records could not be decoded", s.decode_errors));
        }
        if let Some(paths) = &s.paths {
            text.push_str(&paths_summary(paths));
        }
        if let Some(status) = &s.command_status {
            text.push_str(&format!("\n  command: {status}"));
        }
        if let Some(record) = &s.record {
            text.push_str(&format!("\n  record: {record}"));
        }
        print(&text);
    }

    fn note(&mut self, text: &str) {
        print(text);
    }

    fn record(&mut self, _kind: &str, _value: serde_json::Value, text: &str) {
        print(text);
    }
}

/// The path section of the summary: outcomes, then latency per hop and end to end.
fn paths_summary(p: &PathsSummary) -> String {
    let mut text = format!(
        "\n  paths: {} traced ({} delivered, {} dropped, {} unfinished){}",
        p.traced,
        p.delivered,
        p.dropped,
        p.unfinished,
        if p.filtered > 0 { format!(", {} outside the filter", p.filtered) } else { String::new() }
    );
    if let Some(filter) = &p.filter {
        text.push_str(&format!("\n  filter: {filter}"));
    }
    let bound = if p.latency.approximate { "<=" } else { "" };
    for (title, rows) in [("latency per hop", &p.latency.hops), ("end to end", &p.latency.end_to_end)] {
        if rows.is_empty() {
            continue;
        }
        text.push_str(&format!(
            "\n  {title}{}:\n  {:>8} {:>10} {:>10} {:>10} {:>10}  hop",
            if p.latency.approximate { " (log2 buckets: upper bounds)" } else { "" },
            "packets",
            "p50",
            "p90",
            "p99",
            "max"
        ));
        for r in rows.iter().take(40) {
            text.push_str(&format!(
                "\n  {:>8} {:>10} {:>10} {:>10} {:>10}  {} -> {}",
                r.packets,
                format!("{bound}{}", micros(r.p50_ns)),
                format!("{bound}{}", micros(r.p90_ns)),
                format!("{bound}{}", micros(r.p99_ns)),
                format!("{bound}{}", micros(r.max_ns)),
                r.from,
                r.to
            ));
        }
    }
    if let Some(pcap) = &p.pcap {
        text.push_str(&format!("\n  pcapng: {pcap}"));
    }
    text
}
