//! JSON Lines on stdout.

use std::io::Write;

use serde::Serialize;

use super::{Sink, Summary};
use crate::{analyze::Finding, decode::Event};

pub struct JsonSink {
    live_events: bool,
}

impl JsonSink {
    pub fn new(live_events: bool) -> Self {
        Self { live_events }
    }

    fn emit(&mut self, kind: &str, value: impl Serialize) {
        let mut value = serde_json::to_value(value).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.insert("type".into(), kind.into());
        }
        let mut out = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut out, &value);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }
}

impl Sink for JsonSink {
    fn event(&mut self, event: &Event) {
        if self.live_events {
            self.emit("event", event);
        }
    }

    fn finding(&mut self, finding: &Finding) {
        self.emit("finding", finding);
    }

    fn summary(&mut self, summary: &Summary) {
        self.emit("summary", summary);
    }

    fn note(&mut self, text: &str) {
        eprintln!("{text}");
    }

    fn record(&mut self, kind: &str, value: serde_json::Value, _text: &str) {
        self.emit(kind, value);
    }
}
