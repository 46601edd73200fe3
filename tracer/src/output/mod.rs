//! Sinks: where events, findings and the end-of-session summary go. Human text and JSON
//! Lines (`{"type": "event" | "finding" | "summary", ...}`) both write to stdout; logs go
//! to stderr.

mod json;
pub mod pcapng;
pub mod record;
pub mod text;

use serde::{Deserialize, Serialize};

use crate::{analyze::Finding, decode::Event, kernel::KernelSummary, probes::HookStatus};

pub use self::{json::JsonSink, text::TextSink};

/// One row of the drop table: how many drops had this reason at this function.
#[derive(Debug, Clone, Serialize)]
pub struct DropRow {
    pub reason: String,
    pub location: String,
    pub count: u64,
}

/// End-of-session accounting.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub duration_secs: f64,
    pub events: u64,
    pub drops: u64,
    pub drops_by_reason: Vec<DropRow>,
    /// Events the kernel could not queue because the ring buffer was full.
    pub lost_events: u64,
    /// Events dropped by --netns/--iface filters.
    pub filtered_events: u64,
    pub decode_errors: u64,
    pub findings: usize,
    pub kernel: KernelSummary,
    pub hooks: Vec<HookStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_status: Option<String>,
    /// The path family's results (with `--path`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paths: Option<PathsSummary>,
    /// The record file written (`trace --record`) or read (`report`), and what it holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
}

/// What the path family traced, with its latency histograms.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PathsSummary {
    pub traced: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub unfinished: u64,
    /// Paths the kernel let through but the whole filter rejected.
    pub filtered: u64,
    /// Which part of the filter ran in the kernel.
    pub filter: Option<String>,
    pub latency: crate::analyze::paths::LatencySummary,
    /// Where the pcapng went, and what it holds.
    pub pcap: Option<String>,
}

pub trait Sink {
    fn event(&mut self, event: &Event);
    fn finding(&mut self, finding: &Finding);
    fn summary(&mut self, summary: &Summary);
    /// A free-form progress line (lab steps): stderr for JSON, stdout for text.
    fn note(&mut self, text: &str);
    /// Any other JSON object (lab results); text sinks print `text` instead.
    fn record(&mut self, kind: &str, value: serde_json::Value, text: &str);
}

pub fn sink(json: bool, live_events: bool) -> Box<dyn Sink + Send> {
    if json {
        Box::new(JsonSink::new(live_events))
    } else {
        Box::new(TextSink::new(live_events))
    }
}

/// Forwards everything to a sink and writes each traced packet path to a pcapng file; the
/// summary says what the file holds.
pub struct PcapTee {
    inner: Box<dyn Sink + Send>,
    writer: Option<pcapng::PcapngWriter>,
    path: std::path::PathBuf,
    error: Option<String>,
}

impl PcapTee {
    pub fn new(inner: Box<dyn Sink + Send>, writer: pcapng::PcapngWriter, path: std::path::PathBuf) -> Self {
        Self { inner, writer: Some(writer), path, error: None }
    }
}

impl Sink for PcapTee {
    fn event(&mut self, event: &Event) {
        if let (Event::PacketPath(p), Some(writer)) = (event, self.writer.as_mut()) {
            if let Err(e) = writer.write_path(p) {
                // Stop writing, keep tracing: the summary reports it.
                self.error = Some(format!("{e:#}"));
                self.writer = None;
            }
        }
        self.inner.event(event);
    }

    fn finding(&mut self, finding: &Finding) {
        self.inner.finding(finding);
    }

    fn summary(&mut self, summary: &Summary) {
        let mut summary = summary.clone();
        let file = self.path.display();
        let text = match (self.writer.take().map(pcapng::PcapngWriter::finish), &self.error) {
            (_, Some(e)) => format!("{file}: writing stopped: {e}"),
            (Some(Ok((packets, interfaces))), None) => {
                format!("{file}: {packets} packet(s) on {interfaces} interface(s)")
            }
            (Some(Err(e)), None) => format!("{file}: {e:#}"),
            (None, None) => format!("{file}: nothing written"),
        };
        if let Some(paths) = summary.paths.as_mut() {
            paths.pcap = Some(text);
        }
        self.inner.summary(&summary);
    }

    fn note(&mut self, text: &str) {
        self.inner.note(text);
    }

    fn record(&mut self, kind: &str, value: serde_json::Value, text: &str) {
        self.inner.record(kind, value, text);
    }
}
