//! Recorded sessions: the file format that `trace --record FILE` writes and `report FILE`
//! reads, and its reader. The writer is `output::record`.
//!
//! A record holds what the analysis needs and nothing it can recompute: the kernel facts and
//! hooks of the session, every event the analyzer observed (after the session's filters), and
//! the session's totals. Findings are not stored: `report` runs the same rules again, so a
//! record made by an older dptrace gets the newer rules.
//!
//! # Format, version 1
//!
//! The file is a series of gzip members (RFC 1952), so `zcat FILE | jq` shows it. Each member
//! is a *frame* of whole JSON lines; gzip's CRC-32 checks each frame on its own, and a frame
//! is read only once it is whole and its checksum is right, so damage never yields half an
//! event. The writer closes a frame at least every second while events arrive, so a session
//! that was killed leaves its closed frames readable.
//!
//! - The first member's gzip header carries the comment `dptrace-record 1`: the mark and the
//!   format version, in plain bytes near the start, checked before anything is inflated.
//! - The first frame holds one line, the header:
//!   `{"header": {"format": "dptrace-record", "version": 1, "dptrace": …, "started": …,
//!   "host": …, "command_line": […], "kernel": {…}, "hooks": […]}}`.
//! - Then one line per event, in the order the analyzer saw them: `{"event": {…}}` (the event
//!   as `trace --json` prints it), or for rule counters `{"rule-counter": {"event": {…},
//!   "verdict": …, "matches": …}}` (the parsed rule, which the JSON form of the event leaves
//!   out and the rules need).
//! - The last line of the last frame: `{"end": {"events": N, "duration_secs": …,
//!   "lost_events": …, "filtered_events": …, "decode_errors": …, "command_status": …,
//!   "paths": …, "finished": …}}`. Nothing may follow it.
//!
//! New optional fields do not change the version (readers ignore unknown fields and default
//! missing optional ones); anything an older reader would misread (a new event kind, a
//! changed meaning, a different layout) does.
//!
//! # Damage
//!
//! A file without its end line (the session was killed, the disk filled up, the copy was cut
//! short) is *truncated*; a frame whose checksum or JSON is wrong is *corrupt*. Either way
//! the reader says at which byte, and how many events came before it: `report` refuses such a
//! file unless asked for a partial report (`--partial`), because findings and totals from part
//! of a session could mislead without saying so.

use std::io::{self, BufRead, Read};

use serde::{Deserialize, Serialize};

use crate::{
    decode::netfilter::RuleCounter,
    decode::Event,
    kernel::KernelSummary,
    output::PathsSummary,
    probes::{
        rule_counters::{RuleMatch, Verdict},
        HookStatus,
    },
};

/// The format's name: the gzip comment of the first member starts with it.
pub const FORMAT: &str = "dptrace-record";
/// The newest format version this dptrace reads, and the one it writes.
pub const VERSION: u32 = 1;
/// A frame inflates to at most this much (the writer's frames are far smaller): a bound on
/// what a damaged or hostile file can make the reader allocate.
pub const MAX_FRAME_BYTES: u64 = 64 << 20;

/// The mark must be within this many bytes from the start (it is at byte 10 in the files
/// dptrace writes).
const MARK_WITHIN: u64 = 4096;

/// The gzip comment that marks a record of this version.
pub fn mark() -> String {
    format!("{FORMAT} {VERSION}")
}

/// The first line: what the session ran on and with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordHeader {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always the version of the gzip comment.
    pub version: u32,
    /// The dptrace version that recorded it.
    pub dptrace: String,
    /// Wall-clock time the session started, RFC 3339.
    pub started: String,
    /// The recording machine's host name.
    pub host: String,
    pub command_line: Vec<String>,
    /// The kernel facts the rules read.
    pub kernel: KernelSummary,
    /// The backend each hook family got.
    pub hooks: Vec<HookStatus>,
}

impl RecordHeader {
    /// The header of a session starting now on this machine, with this command line.
    pub fn new(kernel: KernelSummary, hooks: Vec<HookStatus>) -> Self {
        Self {
            format: FORMAT.into(),
            version: VERSION,
            dptrace: env!("CARGO_PKG_VERSION").into(),
            started: humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
            host: nix::sys::utsname::uname().map(|u| u.nodename().to_string_lossy().into_owned()).unwrap_or_default(),
            command_line: std::env::args().collect(),
            kernel,
            hooks,
        }
    }
}

/// The last line: the session's totals that the events alone do not tell.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordTrailer {
    /// Events in the file: a check that none is missing.
    pub events: u64,
    pub duration_secs: f64,
    pub lost_events: u64,
    pub filtered_events: u64,
    pub decode_errors: u64,
    #[serde(default)]
    pub command_status: Option<String>,
    #[serde(default)]
    pub paths: Option<PathsSummary>,
    /// Wall-clock time the session ended, RFC 3339.
    pub finished: String,
}

/// A rule counter with the parsed rule its JSON form leaves out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CounterLine {
    pub event: RuleCounter,
    pub verdict: Verdict,
    pub matches: RuleMatch,
}

/// One line of a record, as read.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Line {
    Header(Box<RecordHeader>),
    Event(Box<Event>),
    RuleCounter(Box<CounterLine>),
    End(Box<RecordTrailer>),
}

/// One line of a record, as written (borrowing what it writes; the same JSON as [`Line`]).
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LineRef<'a> {
    Header(&'a RecordHeader),
    Event(&'a Event),
    RuleCounter { event: &'a RuleCounter, verdict: &'a Verdict, matches: &'a RuleMatch },
    End(&'a RecordTrailer),
}

impl<'a> LineRef<'a> {
    /// The line for an event: rule counters keep their parsed rule.
    pub fn event(event: &'a Event) -> Self {
        match event {
            Event::RuleCounter(c) => LineRef::RuleCounter { event: c, verdict: &c.kind, matches: &c.matches },
            other => LineRef::Event(other),
        }
    }
}

/// Why a record cannot be read (whole). Offsets count bytes from the start of the file.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the file is empty")]
    Empty,
    #[error("not a dptrace record ({0})")]
    NotARecord(String),
    #[error("record format version {found} is newer than this dptrace supports ({supported})")]
    NewerVersion { found: u32, supported: u32 },
    #[error("truncated at byte {at} ({why}), after {events} events")]
    Truncated { at: u64, events: u64, why: &'static str },
    #[error("corrupt at byte {at} ({why}), after {events} events")]
    Corrupt { at: u64, events: u64, why: String },
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl RecordError {
    /// Events that were read whole before the damage (for a partial report).
    pub fn events_before(&self) -> Option<u64> {
        match self {
            RecordError::Truncated { events, .. } | RecordError::Corrupt { events, .. } => Some(*events),
            _ => None,
        }
    }
}

/// A whole record, read into memory.
#[derive(Debug)]
pub struct Recording {
    pub header: RecordHeader,
    pub events: Vec<Event>,
    pub trailer: RecordTrailer,
}

/// Reads a whole record held in memory, checking every frame; any damage is an error.
/// (`report` streams instead, with [`RecordReader`]; this is for tests and fuzzing.)
pub fn read_record(bytes: &[u8]) -> Result<Recording, RecordError> {
    let mut reader = RecordReader::open(bytes)?;
    let mut events = Vec::new();
    loop {
        match reader.next_entry()? {
            Next::Event(event) => events.push(*event),
            Next::End(trailer) => return Ok(Recording { header: reader.header, events, trailer: *trailer }),
        }
    }
}

/// Counts the bytes a buffered reader hands out, for offsets in error messages.
struct Counted<R> {
    inner: R,
    consumed: u64,
}

impl<R: BufRead> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed += n as u64;
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Counted<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        self.consumed += amount as u64;
        self.inner.consume(amount);
    }
}

/// What comes next in a record.
#[derive(Debug)]
pub enum Next {
    Event(Box<Event>),
    /// The end line, once it and the end of the file were checked (again on every later call).
    End(Box<RecordTrailer>),
}

/// Reads a record frame by frame, event by event, so a long session's record is never held
/// in memory whole.
pub struct RecordReader<R> {
    frames: Frames<io::Chain<io::Cursor<Vec<u8>>, R>>,
    header: RecordHeader,
    trailer: Option<RecordTrailer>,
}

impl<R: BufRead> RecordReader<R> {
    /// Checks the mark and version, and reads the header.
    pub fn open(mut input: R) -> Result<Self, RecordError> {
        // The mark is read ahead, then put back in front of the rest.
        let mut start = Vec::new();
        input.by_ref().take(MARK_WITHIN).read_to_end(&mut start)?;
        check_mark(&start)?;
        let input = Counted { inner: io::Cursor::new(start).chain(input), consumed: 0 };
        let mut frames = Frames { input, frame: Vec::new(), cursor: 0, frame_at: 0, events: 0 };
        if !frames.next_frame()? {
            return Err(RecordError::Truncated { at: 0, events: 0, why: "no header" });
        }
        let header = match frames.next_line()? {
            Some(Line::Header(header)) => *header,
            Some(_) => return Err(frames.corrupt("the first line is not the header".into())),
            None => return Err(frames.corrupt("the first frame is empty".into())),
        };
        if header.format != FORMAT || header.version != VERSION {
            let why = format!("the header says {} {}, its gzip mark says {}", header.format, header.version, mark());
            return Err(frames.corrupt(why));
        }
        Ok(Self { frames, header, trailer: None })
    }

    pub fn header(&self) -> &RecordHeader {
        &self.header
    }

    /// Events read so far.
    pub fn events_read(&self) -> u64 {
        self.frames.events
    }

    /// The next event, or the end.
    pub fn next_entry(&mut self) -> Result<Next, RecordError> {
        if let Some(trailer) = &self.trailer {
            return Ok(Next::End(Box::new(trailer.clone())));
        }
        let frames = &mut self.frames;
        loop {
            match frames.next_line()? {
                Some(Line::Event(event)) => {
                    frames.events += 1;
                    return Ok(Next::Event(event));
                }
                Some(Line::RuleCounter(line)) => {
                    let CounterLine { mut event, verdict, matches } = *line;
                    event.kind = verdict;
                    event.matches = matches;
                    frames.events += 1;
                    return Ok(Next::Event(Box::new(Event::RuleCounter(event))));
                }
                Some(Line::End(trailer)) => {
                    if frames.cursor < frames.frame.len() || !frames.input.fill_buf()?.is_empty() {
                        return Err(frames.corrupt("data after the end line".into()));
                    }
                    if trailer.events != frames.events {
                        let why =
                            format!("the end line counts {} events, the file holds {}", trailer.events, frames.events);
                        return Err(frames.corrupt(why));
                    }
                    self.trailer = Some((*trailer).clone());
                    return Ok(Next::End(trailer));
                }
                Some(Line::Header(_)) => return Err(frames.corrupt("a second header".into())),
                None => {
                    if !frames.next_frame()? {
                        return Err(RecordError::Truncated {
                            at: frames.input.consumed,
                            events: frames.events,
                            why: "no end line: the session did not finish writing it",
                        });
                    }
                }
            }
        }
    }
}

/// The gzip members of a record and the lines of the current one.
struct Frames<R> {
    input: Counted<R>,
    /// The current frame's text and where its next line starts.
    frame: Vec<u8>,
    cursor: usize,
    /// Where the current frame starts in the file.
    frame_at: u64,
    /// Events read so far.
    events: u64,
}

impl<R: BufRead> Frames<R> {
    /// The next line of the current frame, None at its end.
    fn next_line(&mut self) -> Result<Option<Line>, RecordError> {
        let rest = &self.frame[self.cursor..];
        if rest.is_empty() {
            return Ok(None);
        }
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return Err(self.corrupt("a line without its newline".into()));
        };
        let parsed = serde_json::from_slice(&rest[..end]);
        self.cursor += end + 1;
        parsed.map(Some).map_err(|e| self.corrupt(format!("unreadable line: {e}")))
    }

    /// Inflates the next gzip member; false at the end of the file.
    fn next_frame(&mut self) -> Result<bool, RecordError> {
        if self.input.fill_buf()?.is_empty() {
            return Ok(false);
        }
        self.frame_at = self.input.consumed;
        self.frame.clear();
        self.cursor = 0;
        let mut decoder = flate2::bufread::GzDecoder::new(&mut self.input).take(MAX_FRAME_BYTES + 1);
        let result = decoder.read_to_end(&mut self.frame);
        drop(decoder);
        match result {
            Ok(n) if n as u64 > MAX_FRAME_BYTES => {
                Err(self.corrupt(format!("a frame inflates to more than {} MiB", MAX_FRAME_BYTES >> 20)))
            }
            Ok(_) => Ok(true),
            // The data ran out inside the frame.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && self.input.fill_buf()?.is_empty() => {
                Err(RecordError::Truncated {
                    at: self.input.consumed,
                    events: self.events,
                    why: "it ends inside a frame",
                })
            }
            Err(e) => Err(self.corrupt(format!("bad gzip data: {e}"))),
        }
    }

    fn corrupt(&self, why: String) -> RecordError {
        RecordError::Corrupt { at: self.frame_at, events: self.events, why }
    }
}

/// Reads the first member's gzip header (RFC 1952 2.3) far enough to find its comment, and
/// checks it is this format's mark with a version this dptrace reads.
fn check_mark(start: &[u8]) -> Result<(), RecordError> {
    if start.is_empty() {
        return Err(RecordError::Empty);
    }
    if !start.starts_with(&[0x1f, 0x8b]) {
        return Err(RecordError::NotARecord("it is not gzip data".into()));
    }
    let not_marked = || RecordError::NotARecord(format!("a gzip file without the `{FORMAT}` mark"));
    let flags = *start.get(3).ok_or_else(not_marked)?;
    let mut at = 10;
    if flags & 0x04 != 0 {
        // FEXTRA: a little-endian length, then that many bytes.
        let len = start.get(at..at + 2).ok_or_else(not_marked)?;
        at += 2 + u16::from_le_bytes([len[0], len[1]]) as usize;
    }
    let zero_terminated = |at: &mut usize| -> Result<&[u8], RecordError> {
        let field = start.get(*at..).ok_or_else(not_marked)?;
        let end = field.iter().position(|&b| b == 0).ok_or_else(not_marked)?;
        *at += end + 1;
        Ok(&field[..end])
    };
    if flags & 0x08 != 0 {
        zero_terminated(&mut at)?; // FNAME
    }
    if flags & 0x10 == 0 {
        return Err(not_marked());
    }
    let comment = zero_terminated(&mut at)?;
    let comment = std::str::from_utf8(comment).map_err(|_| not_marked())?;
    let version = comment.strip_prefix(FORMAT).and_then(|v| v.strip_prefix(' ')).ok_or_else(not_marked)?;
    match version.parse::<u32>() {
        Ok(VERSION) => Ok(()),
        Ok(found) if found > VERSION => Err(RecordError::NewerVersion { found, supported: VERSION }),
        _ => Err(RecordError::Corrupt { at: 0, events: 0, why: format!("unknown format version `{version}`") }),
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Write, path::Path};

    use serde_json::{json, Value};

    use super::*;
    use crate::{analyze::Analyzer, output::record::RecordWriter};

    fn event(value: Value) -> Event {
        serde_json::from_value(value).expect("a valid event")
    }

    fn actor() -> Value {
        json!({"pid": 50, "tid": 51, "comm": "ip", "parent_pid": 1, "parent_comm": "bash", "netns": 4026531840u32, "netns_name": null})
    }

    fn udp_drop(reason: &str, dport: u16, ts: u64) -> Event {
        event(json!({
            "kind": "drop", "time": format!("2026-11-26T01:00:00.{ts:06}Z"), "ts_ns": ts, "cpu": 1,
            "netns": 4026532000u32, "netns_name": "srv", "ifindex": 2, "device": "s0", "protocol": "ipv4",
            "flow": {"l4": "udp", "src": "10.0.0.1", "dst": "10.0.0.2", "sport": 40000, "dport": dport},
            "reason": reason, "reason_code": 3, "location": "__udp4_lib_rcv+0x4bc", "function": "__udp4_lib_rcv",
            "skb": "0xffff888100000000", "task": {"pid": 42, "tid": 42, "comm": "bash"}, "packet_len": 30
        }))
    }

    /// A session's worth of events: drops with and without a rule behind them, a rejected
    /// link creation, an XDP attach failure, a traced packet's path.
    fn session_events() -> Vec<Event> {
        let mut events: Vec<Event> = (0..3).map(|i| udp_drop("NETFILTER_DROP", 7777, 10 + i)).collect();
        events.push(udp_drop("NO_SOCKET", 9999, 20));
        let request = json!({
            "kind": "link-request", "time": "2026-11-26T01:00:01Z", "ts_ns": 30, "op": "create", "seq": 7,
            "ifname": "wg0", "ifindex": null, "link_kind": "wireguard", "mac": null, "peer": null,
            "peer_netns": null, "admin": "up", "new_name": null, "to_netns": null, "via": "netlink", "actor": actor()
        });
        events.push(event(request));
        events.push(event(json!({
            "kind": "module", "time": "2026-11-26T01:00:01Z", "ts_ns": 31, "action": "requested",
            "module": "rtnl-link-wireguard", "actor": actor()
        })));
        events.push(event(json!({
            "kind": "netlink-ack", "time": "2026-11-26T01:00:01Z", "ts_ns": 32, "seq": 7, "errno": 95,
            "error": "EOPNOTSUPP", "actor": actor()
        })));
        events.push(event(json!({
            "kind": "bpf-command", "time": "2026-11-26T01:00:02Z", "ts_ns": 40, "command": "link-create",
            "result": -22, "error": "EINVAL", "attach_type": "xdp", "target_ifindex": 2, "xdp_mode": "native",
            "message": "Native and generic XDP can't be active at the same time", "actor": actor()
        })));
        let hop = |hook: &str, ts: u64| {
            json!({"time": "2026-11-26T01:00:03Z", "ts_ns": ts, "cpu": 0, "trace_id": 5, "hook": hook,
                   "netns": 4026532000u32, "netns_name": "srv", "ifindex": 2, "device": "s0", "len": 84,
                   "outer": {"l4": "udp", "src": "192.168.0.1", "dst": "192.168.0.2", "sport": 5000, "dport": 4789},
                   "tunnel": {"kind": "vxlan", "vni": 1},
                   "inner": {"l4": "icmp", "src": "10.244.1.2", "dst": "10.244.2.2", "icmp_type": 8, "icmp_code": 0},
                   "task": null})
        };
        let mut dropped = hop("drop", 60);
        dropped["drop_reason"] = "NO_SOCKET".into();
        dropped["location"] = "__udp4_lib_rcv+0x4bc".into();
        let mut first = hop("receive", 50);
        first["since_previous_ns"] = 0.into();
        first["since_start_ns"] = 0.into();
        dropped["since_previous_ns"] = 10.into();
        dropped["since_start_ns"] = 10.into();
        events.push(event(json!({
            "kind": "packet-path", "trace_id": 5, "flow": first["outer"].clone(), "steps": [first, dropped],
            "outcome": "dropped", "reason": "NO_SOCKET", "location": "__udp4_lib_rcv+0x4bc", "total_ns": 10
        })));
        // The rule behind the NETFILTER_DROPs: its parsed form is not in the JSON.
        let Event::RuleCounter(mut counter) = event(json!({
            "kind": "rule-counter", "time": "2026-11-26T01:00:04Z", "ts_ns": 70, "netns": 4026532000u32,
            "netns_name": "srv", "backend": "iptables-nft", "family": "ip", "table": "filter", "chain": "INPUT",
            "hooks": ["input"], "rule": "-A INPUT -p udp -m udp --dport 7777 -j DROP", "verdict": "drop",
            "packets": 3, "bytes": 90
        })) else {
            panic!("not a rule counter")
        };
        counter.kind = Verdict::Drop;
        counter.matches = RuleMatch { l4: Some("udp".into()), dport: Some(7777), ..Default::default() };
        events.push(Event::RuleCounter(counter));
        events
    }

    fn header() -> RecordHeader {
        let hooks = serde_json::from_value(json!([{
            "family": "drops", "backend_id": "tracepoint", "backend": "tracepoint skb:kfree_skb",
            "coverage": {"device_and_netns": true}, "unavailable": []
        }]))
        .unwrap();
        let kernel =
            KernelSummary { release: "6.18.0".into(), btf: true, drop_reason_names: "btf".into(), kallsyms: true };
        RecordHeader::new(kernel, hooks)
    }

    fn trailer() -> RecordTrailer {
        RecordTrailer {
            events: 0,
            duration_secs: 1.2345678901234567,
            lost_events: 4,
            filtered_events: 5,
            decode_errors: 6,
            command_status: Some("exited: exit status: 0".into()),
            paths: Some(PathsSummary { traced: 1, dropped: 1, ..Default::default() }),
            finished: "2026-11-26T01:00:05Z".into(),
        }
    }

    /// A scratch file, removed when dropped.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            Self(std::env::temp_dir().join(format!("dptrace-record-test-{}-{name}", std::process::id())))
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// The bytes `trace --record` writes for these events.
    fn recorded(name: &str, events: &[Event]) -> Vec<u8> {
        let file = Scratch::new(name);
        let mut writer = RecordWriter::create(&file.0).unwrap();
        writer.header(&header()).unwrap();
        for e in events {
            writer.event(e).unwrap();
        }
        let (count, bytes) = writer.finish(trailer()).unwrap();
        assert_eq!(count, events.len() as u64);
        let data = std::fs::read(&file.0).unwrap();
        assert_eq!(bytes, data.len() as u64);
        data
    }

    fn findings_json(events: &[Event]) -> Vec<Value> {
        let mut analyzer = Analyzer::new();
        events.iter().for_each(|e| analyzer.observe(e));
        analyzer.findings(&header().kernel).iter().map(|f| serde_json::to_value(f).unwrap()).collect()
    }

    #[test]
    fn round_trip_keeps_every_event_the_totals_and_so_the_findings() {
        let events = session_events();
        let data = recorded("round-trip", &events);
        let read = read_record(&data).unwrap();
        assert_eq!(read.events.len(), events.len());
        for (a, b) in events.iter().zip(&read.events) {
            assert_eq!(serde_json::to_value(a).unwrap(), serde_json::to_value(b).unwrap());
        }
        // The parsed rule came back although the event's JSON leaves it out.
        let Some(Event::RuleCounter(counter)) = read.events.last() else { panic!("no rule counter") };
        assert_eq!(counter.kind, Verdict::Drop);
        assert_eq!(counter.matches.dport, Some(7777));
        // Same findings, evidence and all; the rules found what they should.
        let (live, offline) = (findings_json(&events), findings_json(&read.events));
        assert_eq!(live, offline);
        let rules: Vec<&str> = offline.iter().map(|f| f["rule"].as_str().unwrap()).collect();
        for rule in ["netfilter-drop", "link-kind-unsupported", "xdp-attach-failed"] {
            assert!(rules.contains(&rule), "{rule} missing from {rules:?}");
        }
        let netfilter = offline.iter().find(|f| f["rule"] == "netfilter-drop").unwrap();
        assert_eq!(netfilter["netfilter"]["chain"], "INPUT", "{netfilter}");
        // The header and the totals, bit for bit.
        assert_eq!(read.header.kernel.drop_reason_names, "btf");
        assert_eq!(read.header.hooks[0].family, "drops");
        assert_eq!(read.header.version, VERSION);
        let expected = trailer();
        assert_eq!(read.trailer.duration_secs.to_bits(), expected.duration_secs.to_bits());
        assert_eq!(read.trailer.events, events.len() as u64);
        assert_eq!((read.trailer.lost_events, read.trailer.filtered_events, read.trailer.decode_errors), (4, 5, 6));
        assert_eq!(read.trailer.paths.unwrap().traced, 1);
        // The mark is plain bytes near the start, and `zcat` reads the whole file.
        assert_eq!(&data[..2], &[0x1f, 0x8b]);
        assert_eq!(&data[10..27], b"dptrace-record 1\0");
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(&data[..]).read_to_string(&mut text).unwrap();
        assert_eq!(text.lines().count(), events.len() + 2);
        assert!(text.starts_with("{\"header\":{\"format\":\"dptrace-record\",\"version\":1,"));
    }

    #[test]
    fn the_reader_streams_from_any_buffered_reader() {
        let events = session_events();
        let data = recorded("stream", &events);
        // A tiny buffer: frames and lines cross buffer boundaries.
        let mut reader = RecordReader::open(io::BufReader::with_capacity(7, &data[..])).unwrap();
        let mut n = 0;
        while let Next::Event(_) = reader.next_entry().unwrap() {
            n += 1;
        }
        assert_eq!(n, events.len());
        assert_eq!(reader.events_read(), events.len() as u64);
        assert!(matches!(reader.next_entry().unwrap(), Next::End(t) if t.events == events.len() as u64));
    }

    #[test]
    fn empty_foreign_and_unmarked_files_are_not_records() {
        assert!(matches!(read_record(b""), Err(RecordError::Empty)));
        assert!(matches!(read_record(b"hello\n"), Err(RecordError::NotARecord(why)) if why.contains("not gzip")));
        // A pcapng file.
        assert!(matches!(read_record(&[0x0a, 0x0d, 0x0d, 0x0a, 0, 0, 0, 0]), Err(RecordError::NotARecord(_))));
        // Gzip, but not ours.
        let mut plain = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        plain.write_all(b"{\"header\":{}}\n").unwrap();
        let plain = plain.finish().unwrap();
        assert!(matches!(read_record(&plain), Err(RecordError::NotARecord(why)) if why.contains("mark")));
        let mut other = flate2::GzBuilder::new().comment("something else").write(Vec::new(), Default::default());
        other.write_all(b"x\n").unwrap();
        assert!(matches!(read_record(&other.finish().unwrap()), Err(RecordError::NotARecord(_))));
        // Just the two magic bytes.
        assert!(matches!(read_record(&[0x1f, 0x8b]), Err(RecordError::NotARecord(_))));
    }

    /// The data with the version in its mark replaced (same length).
    fn with_mark(data: &[u8], version: &[u8; 1]) -> Vec<u8> {
        let mut data = data.to_vec();
        assert_eq!(&data[10..25], b"dptrace-record ");
        data[25] = version[0];
        data
    }

    #[test]
    fn a_newer_version_is_named_and_an_unknown_one_is_corrupt() {
        let data = recorded("versions", &session_events());
        let error = read_record(&with_mark(&data, b"2")).unwrap_err();
        assert!(matches!(error, RecordError::NewerVersion { found: 2, supported: 1 }), "{error}");
        assert_eq!(error.to_string(), "record format version 2 is newer than this dptrace supports (1)");
        assert!(matches!(read_record(&with_mark(&data, b"x")), Err(RecordError::Corrupt { at: 0, .. })));
        assert!(matches!(read_record(&with_mark(&data, b"0")), Err(RecordError::Corrupt { at: 0, .. })));
    }

    /// Where each gzip member starts, and the file's length.
    fn member_starts(data: &[u8]) -> Vec<usize> {
        let mut starts = vec![0];
        let mut rest = data;
        while !rest.is_empty() {
            let mut decoder = flate2::bufread::GzDecoder::new(rest);
            decoder.read_to_end(&mut Vec::new()).unwrap();
            rest = decoder.into_inner();
            starts.push(data.len() - rest.len());
        }
        starts
    }

    #[test]
    fn a_file_cut_anywhere_is_truncated_after_the_whole_frames_before_the_cut() {
        // Small frames: close one every 3 events.
        let events = session_events();
        let file = Scratch::new("cut");
        let mut writer = RecordWriter::create(&file.0).unwrap();
        writer.header(&header()).unwrap();
        let mut per_frame = vec![0u64];
        for (i, e) in events.iter().enumerate() {
            writer.event(e).unwrap();
            if i % 3 == 2 {
                writer.close_frame().unwrap();
                per_frame.push(i as u64 + 1);
            }
        }
        writer.finish(trailer()).unwrap();
        let data = std::fs::read(&file.0).unwrap();
        let starts = member_starts(&data);
        assert_eq!(starts.len(), per_frame.len() + 2, "header frame, event frames, last frame");
        assert!(read_record(&data).is_ok());
        for cut in 1..data.len() {
            let error = read_record(&data[..cut]).unwrap_err();
            // The frames wholly before the cut were read; the header frame holds no events.
            let whole = starts.iter().filter(|&&s| s > 0 && s <= cut).count();
            match error {
                RecordError::Truncated { at, events, .. } => {
                    assert_eq!(at, cut as u64, "cut at {cut}");
                    assert_eq!(events, if whole == 0 { 0 } else { per_frame[whole - 1] }, "cut at {cut}");
                }
                // Within the first bytes the mark itself is cut.
                RecordError::NotARecord(_) => assert!(cut < 27, "cut at {cut}"),
                other => panic!("cut at {cut}: {other}"),
            }
        }
    }

    #[test]
    fn a_flipped_bit_is_refused_unless_it_changed_nothing() {
        let data = recorded("flips", &session_events());
        let original = read_record(&data).unwrap();
        let same = |r: &Recording| {
            serde_json::to_value(&r.events).unwrap() == serde_json::to_value(&original.events).unwrap()
                && serde_json::to_value(&r.header).unwrap() == serde_json::to_value(&original.header).unwrap()
                && serde_json::to_value(&r.trailer).unwrap() == serde_json::to_value(&original.trailer).unwrap()
        };
        let mut harmless = 0;
        for at in 0..data.len() {
            for bit in 0..8 {
                let mut damaged = data.clone();
                damaged[at] ^= 1 << bit;
                match read_record(&damaged) {
                    Err(RecordError::Corrupt { .. } | RecordError::Truncated { .. } | RecordError::NotARecord(_)) => {}
                    Err(RecordError::NewerVersion { .. }) => assert_eq!(at, 25),
                    Err(e) => panic!("byte {at} bit {bit}: {e}"),
                    Ok(read) => {
                        // What no checksum covers is what nothing reads: a member's FTEXT flag
                        // (a hint), MTIME, XFL and OS bytes, the padding bits after its
                        // compressed data, and the odd redundant bit of a Huffman table.
                        assert!(same(&read), "byte {at} bit {bit}: damage read as a different record");
                        harmless += 1;
                    }
                }
            }
        }
        // They are few.
        assert!(harmless < data.len() * 8 / 50, "{harmless} of {} flips changed nothing", data.len() * 8);
    }

    #[test]
    fn corrupt_frames_name_where_they_start_and_what_came_before() {
        let events = session_events();
        let data = recorded("corrupt", &events);
        let starts = member_starts(&data);
        // Garbage in the middle of the events' frame (the second member).
        let mut damaged = data.clone();
        let middle = (starts[1] + starts[2]) / 2;
        damaged[middle..middle + 8].copy_from_slice(b"garbage!");
        match read_record(&damaged).unwrap_err() {
            RecordError::Corrupt { at, events, .. } => assert_eq!((at, events), (starts[1] as u64, 0)),
            other => panic!("{other}"),
        }
        // Data after the end line.
        let mut longer = data.clone();
        longer.extend_from_slice(&data[starts[1]..starts[2]]);
        assert!(matches!(read_record(&longer), Err(RecordError::Corrupt { why, .. }) if why.contains("after the end")));
        longer.truncate(data.len());
        longer.push(0);
        assert!(matches!(read_record(&longer), Err(RecordError::Corrupt { .. })));
    }

    /// A record made of these lines, one frame each.
    fn handmade(lines: &[String]) -> Vec<u8> {
        let mut data = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let builder = if i == 0 { flate2::GzBuilder::new().comment(mark()) } else { flate2::GzBuilder::new() };
            let mut encoder = builder.write(&mut data, flate2::Compression::default());
            encoder.write_all(line.as_bytes()).unwrap();
            encoder.finish().unwrap();
        }
        data
    }

    #[test]
    fn lines_out_of_place_are_corrupt() {
        let head = format!("{}\n", serde_json::to_string(&LineRef::Header(&header())).unwrap());
        let drop = udp_drop("NO_SOCKET", 1, 1);
        let event = format!("{}\n", serde_json::to_string(&LineRef::event(&drop)).unwrap());
        let end = |n: u64| {
            let mut t = trailer();
            t.events = n;
            format!("{}\n", serde_json::to_string(&LineRef::End(&t)).unwrap())
        };
        let corrupt = |lines: &[String], why: &str| match read_record(&handmade(lines)) {
            Err(RecordError::Corrupt { why: said, .. }) => assert!(said.contains(why), "{said}"),
            other => panic!("{other:?}"),
        };
        assert!(read_record(&handmade(&[head.clone(), event.clone(), end(1)])).is_ok());
        corrupt(&[event.clone(), end(1)], "not the header");
        corrupt(&[head.clone(), head.clone(), end(0)], "second header");
        corrupt(&[head.clone(), event.clone(), end(2)], "counts 2 events");
        corrupt(&[head.clone(), event.clone(), end(1), event.clone()], "after the end");
        corrupt(&[head.clone(), "{\"event\":{\"kind\":\"warp-drive\"}}\n".into(), end(1)], "unreadable line");
        corrupt(&[head.clone(), event.trim_end().into(), end(1)], "without its newline");
        corrupt(&[String::new()], "empty");
        let mut wrong = header();
        wrong.version = 7;
        corrupt(&[format!("{}\n", serde_json::to_string(&LineRef::Header(&wrong)).unwrap())], "header says");
        assert!(matches!(
            read_record(&handmade(&[head.clone(), event.clone()])),
            Err(RecordError::Truncated { events: 1, .. })
        ));
    }

    #[test]
    fn a_frame_that_inflates_beyond_the_bound_is_refused() {
        let header = format!("{}\n", serde_json::to_string(&LineRef::Header(&header())).unwrap());
        let mut data = handmade(&[header]);
        let mut encoder = flate2::write::GzEncoder::new(&mut data, flate2::Compression::best());
        let zeros = vec![b'\n'; 1 << 20];
        for _ in 0..=(MAX_FRAME_BYTES >> 20) {
            encoder.write_all(&zeros).unwrap();
        }
        encoder.finish().unwrap();
        assert!(data.len() < 1 << 20);
        assert!(
            matches!(read_record(&data), Err(RecordError::Corrupt { why, .. }) if why.contains("more than 64 MiB"))
        );
    }

    #[test]
    fn a_killed_session_leaves_its_closed_frames_readable() {
        let file = Scratch::new("killed");
        let mut writer = RecordWriter::create(&file.0).unwrap();
        writer.header(&header()).unwrap();
        let n = 3000;
        for i in 0..n {
            writer.event(&udp_drop("NO_SOCKET", 9999, i)).unwrap();
        }
        // No finish: the process died. What was closed is on disk.
        std::mem::forget(writer);
        let data = std::fs::read(&file.0).unwrap();
        match read_record(&data).unwrap_err() {
            RecordError::Truncated { at, events, why } => {
                assert_eq!(at, data.len() as u64);
                assert!(events > 0 && events < n, "{events}");
                assert!(why.contains("did not finish"), "{why}");
            }
            other => panic!("{other}"),
        }
        // Several frames of at most FRAME_BYTES of JSON each.
        assert!(member_starts(&data).len() > 3);
    }

    #[test]
    fn a_session_that_never_started_leaves_an_existing_file_alone() {
        let file = Scratch::new("kept");
        std::fs::write(&file.0, b"an older record").unwrap();
        RecordWriter::create(&file.0).unwrap().abandon();
        assert_eq!(std::fs::read(&file.0).unwrap(), b"an older record");
        let new = Scratch::new("new");
        RecordWriter::create(&new.0).unwrap().abandon();
        assert!(!new.0.exists());
        // A full disk surfaces as an error, not as a silently short record.
        let mut full = RecordWriter::create(Path::new("/dev/full")).unwrap();
        assert_eq!(full.header(&header()).unwrap_err().raw_os_error(), Some(libc::ENOSPC));
    }
}
