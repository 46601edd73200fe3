//! Ring-buffer records through the decoder and on, as a session handles them
//! (`session.rs`: decode → path assembly → analyzer → sinks; the rules at the end).
//!
//! The input is a sequence of records, each a little-endian `u16` length and that many
//! bytes (a shorter tail is the last record): the kernel side is trusted to write whole
//! records, but a kernel whose layout differs from the one the programs were configured
//! for, a bug in a program, or a record file from elsewhere must never crash dptrace.
//!
//! Properties: nothing panics (decoding, path assembly, correlation, every rule, the text
//! and JSON forms of every event, path and finding); a record shorter than the common header
//! is an error, never an event; every decoded event serializes to a JSON object whose
//! `kind` the text form agrees with.

#![no_main]

use std::sync::{Arc, OnceLock};

use dptrace::{
    analyze::{paths::PathAssembler, Analyzer},
    decode::{DecodeError, Decoder, Event},
    kernel::{drop_reasons::DropReasons, kallsyms::Kallsyms, tracefs::TracepointFormat, KernelSummary},
    output::text,
    probes::netfilter::{AnswerFunction, RecordFormats},
};
use libfuzzer_sys::fuzz_target;
use tracer_ebpf::EventHeader;

/// What a session on this project's 6.18 kernel knows (real format files and symbols).
struct Kernel {
    reasons: DropReasons,
    kallsyms: Arc<Kallsyms>,
    formats: Arc<RecordFormats>,
    answers: Arc<Vec<AnswerFunction>>,
}

fn kernel() -> &'static Kernel {
    static KERNEL: OnceLock<Kernel> = OnceLock::new();
    KERNEL.get_or_init(|| {
        let parse = |text: &str| TracepointFormat::parse(text).expect("a real format parses");
        let kfree_skb = parse(include_str!("../corpus/tracefs_format/skb-kfree_skb.format"));
        // Indexed by tracer_ebpf::RecordSource.
        let formats: RecordFormats = [
            Some(parse(include_str!("../corpus/tracefs_format/tcp-tcp_send_reset.format"))),
            Some(parse(include_str!("../corpus/tracefs_format/tcp-tcp_receive_reset.format"))),
            Some(parse(include_str!("../corpus/tracefs_format/icmp-icmp_send.format"))),
            Some(parse(include_str!("../corpus/tracefs_format/sock-inet_sock_set_state.format"))),
        ];
        // What a kprobe kernel attaches (6.1): each answering function with its arguments.
        let answer = |name, answer, skb, sk, icmp_type, code| AnswerFunction { name, answer, skb, sk, icmp_type, code };
        let answers = vec![
            answer("tcp_v4_send_reset", "stack-rst", 1, Some(0), None, None),
            answer("nf_send_reset", "reject-rst", 2, Some(1), None, None),
            answer("nf_send_unreach", "reject-icmp", 0, None, None, Some(1)),
            answer("__icmp_send", "icmp", 0, None, Some(1), Some(2)),
            answer("icmp6_send", "icmp6", 0, None, Some(1), Some(2)),
        ];
        Kernel {
            reasons: DropReasons::resolve(None, Some(&kfree_skb)),
            kallsyms: Arc::new(Kallsyms::parse(include_str!("../fixtures/kallsyms.txt"))),
            formats: Arc::new(formats),
            answers: Arc::new(answers),
        }
    })
}

/// A fresh decoder per input, so that a crash reproduces from its input alone. It never
/// enters a namespace (no route or MTU lookups): that is the kernel answering, not input.
fn decoder() -> Decoder {
    let k = kernel();
    // This kernel's PROG_LOAD, BTF_LOAD, LINK_CREATE.
    Decoder::detached(k.reasons.clone(), k.kallsyms.clone(), k.formats.clone(), k.answers.clone(), [5, 18, 28])
}

/// Splits the input into records: `u16` little-endian length, then the record.
fn records(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([data[0], data[1]])).min(data.len() - 2);
        out.push(&data[2..2 + len]);
        data = &data[2 + len..];
    }
    out
}

fn check_event(event: &Event) {
    let json = serde_json::to_value(event).expect("every event serializes");
    let kind = json.get("kind").and_then(|k| k.as_str()).expect("an event's JSON has a kind");
    assert!(!kind.is_empty());
    let _ = text::event_line(event);
    if let Event::PacketPath(path) = event {
        let _ = text::path_text(path);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut decoder = decoder();
    let mut analyzer = Analyzer::new();
    let mut assembler = PathAssembler::new(None);
    for record in records(data) {
        let decoded = decoder.decode(record);
        if record.len() < std::mem::size_of::<EventHeader>() {
            assert_eq!(decoded.as_ref().err(), Some(&DecodeError::Short(record.len())));
        }
        match decoded {
            Ok(Event::PacketHop(hop)) => {
                check_event(&Event::PacketHop(hop.clone()));
                for path in assembler.push(hop) {
                    let event = Event::PacketPath(path);
                    check_event(&event);
                    analyzer.observe(&event);
                }
            }
            Ok(event) => {
                check_event(&event);
                analyzer.observe(&event);
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    for path in assembler.close_idle(u64::MAX) {
        let event = Event::PacketPath(path);
        check_event(&event);
        analyzer.observe(&event);
    }
    let kernel = KernelSummary {
        release: "6.18.0-fuzz".into(),
        btf: true,
        drop_reason_names: "tracefs-format".into(),
        kallsyms: true,
    };
    for finding in analyzer.findings(&kernel) {
        serde_json::to_string(&finding).expect("every finding serializes");
        assert!(!finding.summary.is_empty(), "{} without a summary", finding.rule);
        assert!(!finding.remediation.is_empty(), "{} without a remediation", finding.rule);
    }
});
