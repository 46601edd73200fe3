//! Sinks: where events, findings and the end-of-session summary go. Human text and JSON
//! Lines (`{"type": "event" | "finding" | "summary", ...}`) both write to stdout; logs go
//! to stderr.

mod json;
mod text;

use serde::Serialize;

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
