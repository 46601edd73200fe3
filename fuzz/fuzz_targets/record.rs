//! Record files (`trace --record FILE`, read by `dptrace report FILE`): a record may come
//! from another machine, another dptrace version, a full disk or a cut copy.
//!
//! Two kinds of input:
//! - starting with gzip's magic byte (0x1f): a record file as it is (the seeds are real
//!   records), for the gzip framing, the mark and the checksums;
//! - anything else: the inflated text, JSON lines, which this target puts into valid gzip
//!   members (the first one marked like a record; a NUL byte starts the next member), so that
//!   mutations reach the JSON and the record's rules rather than dying at a checksum.
//!
//! Properties: reading never panics; a record read whole holds as many events as its end line
//! counts; every event it holds writes back to the same JSON (what `report` reads is what
//! `trace --json` would have printed); the analysis `report` runs over the events (correlation,
//! every rule, the findings' JSON) never panics.

#![no_main]

use dptrace::{
    analyze::Analyzer,
    decode::Event,
    record::{mark, read_record},
};
use flate2::Crc;
use libfuzzer_sys::fuzz_target;

/// `text`'s NUL-separated parts as gzip members, the first one marked as a record.
fn framed(text: &[u8]) -> Vec<u8> {
    let mark = mark();
    let mut out = Vec::new();
    for (i, part) in text.split(|&b| b == 0).enumerate() {
        stored_member(&mut out, (i == 0).then_some(mark.as_str()), part);
    }
    out
}

/// A gzip member (RFC 1952) holding `data` in stored deflate blocks (RFC 1951 3.2.4), built
/// by hand: a compressor's set-up would cost more than the rest of the target.
fn stored_member(out: &mut Vec<u8>, comment: Option<&str>, data: &[u8]) {
    const FCOMMENT: u8 = 0x10;
    out.extend([0x1f, 0x8b, 8, if comment.is_some() { FCOMMENT } else { 0 }, 0, 0, 0, 0, 0, 0xff]);
    if let Some(comment) = comment {
        out.extend(comment.as_bytes());
        out.push(0);
    }
    let mut blocks = data.chunks(usize::from(u16::MAX)).peekable();
    if blocks.peek().is_none() {
        out.extend([1, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        let len = block.len() as u16;
        out.push(u8::from(blocks.peek().is_none()));
        out.extend(len.to_le_bytes());
        out.extend((!len).to_le_bytes());
        out.extend(block);
    }
    let mut crc = Crc::new();
    crc.update(data);
    out.extend(crc.sum().to_le_bytes());
    out.extend((data.len() as u32).to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    let file = if data.first() == Some(&0x1f) { data.to_vec() } else { framed(data) };
    let recording = match read_record(&file) {
        Ok(recording) => recording,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    assert_eq!(recording.events.len() as u64, recording.trailer.events, "the end line's count was not checked");
    let mut analyzer = Analyzer::new();
    for event in &recording.events {
        let json = serde_json::to_value(event).expect("an event read back serializes");
        let again: Event = serde_json::from_value(json.clone()).unwrap_or_else(|e| {
            panic!("an event read from a record does not read back from its own JSON: {e}\n{json}")
        });
        assert_eq!(serde_json::to_value(&again).unwrap(), json, "an event's JSON changed on the way back");
        analyzer.observe(event);
    }
    for finding in analyzer.findings(&recording.header.kernel) {
        serde_json::to_string(&finding).expect("every finding serializes");
    }
});
