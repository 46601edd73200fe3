//! `dptrace report FILE`: a recorded session analyzed offline. The events go through the same
//! analyzer and the same sinks as in `trace`, so the findings are those of the live session
//! (by the rules of this dptrace); no root, BPF or tracefs is needed, only the file.

use std::{
    fs::File,
    io::{self, BufReader},
    path::Path,
};

use anyhow::bail;

use crate::{
    analyze::{Analyzer, Finding},
    cli::ReportArgs,
    commands::Outcome,
    output::{self, DropRow, Summary},
    record::{Next, RecordError, RecordHeader, RecordReader, RecordTrailer},
};

pub fn report(args: &ReportArgs) -> anyhow::Result<Outcome> {
    let path = args.file.as_path();
    let mut sink = output::sink(args.json, !args.quiet);
    // First pass: every frame is checked before anything is printed, so a damaged file is
    // refused whole rather than after half its events. With --quiet nothing is printed per
    // event: that pass is the analysis.
    let mut analyzer = Analyzer::new();
    let mut reader = open(path)?;
    // The span of the events: the duration of a partial report.
    let (mut first_ns, mut last_ns) = (u64::MAX, 0);
    let end = loop {
        match reader.next_entry() {
            Ok(Next::Event(event)) => {
                first_ns = first_ns.min(event.ts_ns());
                last_ns = last_ns.max(event.ts_ns());
                analyzer.observe(&event);
                if args.quiet {
                    sink.event(&event);
                }
            }
            Ok(Next::End(trailer)) => break Ok(*trailer),
            Err(e @ (RecordError::Truncated { .. } | RecordError::Corrupt { .. })) => break Err(e),
            Err(e) => return Err(explain(path, e)),
        }
    };
    let events = reader.events_read();
    let header = reader.header().clone();
    let (trailer, damage) = match end {
        Ok(trailer) => (Some(trailer), None),
        Err(e) if args.partial => (None, Some(e)),
        Err(e) => bail!(
            "{}: {e}: the record is incomplete; `dptrace report --partial {}` reports the {events} events before that point",
            path.display(),
            path.display()
        ),
    };
    sink.note(&format!(
        "dptrace: report of {}: recorded {} on {} by dptrace {}: {}",
        path.display(),
        header.started,
        if header.host.is_empty() { "?" } else { &header.host },
        header.dptrace,
        shell_words(&header.command_line)
    ));
    if !args.quiet {
        // Second pass: the same events, now printed.
        analyzer = Analyzer::new();
        let mut reader = open(path)?;
        while reader.events_read() < events {
            match reader.next_entry().map_err(|e| explain(path, e))? {
                Next::Event(event) => {
                    analyzer.observe(&event);
                    sink.event(&event);
                }
                Next::End(_) => break,
            }
        }
    }
    let findings = analyzer.findings(&header.kernel);
    for finding in &findings {
        sink.finding(finding);
    }
    let record = match &damage {
        None => format!("{}: {events} events recorded {} on {}", path.display(), header.started, header.host),
        Some(e) => {
            let text = format!(
                "{}: {e}: partial report of the {events} events before it; the session's lost and filtered events are unknown, its duration is the span of these events",
                path.display()
            );
            eprintln!("dptrace: warning: {text}");
            text
        }
    };
    let span_secs = last_ns.saturating_sub(first_ns) as f64 / 1e9;
    sink.summary(&summary(&analyzer, &findings, header, trailer, span_secs, record));
    Ok(Outcome::Ok)
}

/// A command line as a shell would take it back.
fn shell_words(words: &[String]) -> String {
    let plain = |w: &str| !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
    let quoted: Vec<String> =
        words.iter().map(|w| if plain(w) { w.clone() } else { format!("'{}'", w.replace('\'', "'\\''")) }).collect();
    quoted.join(" ")
}

/// Opens the record at `path` and reads its header; errors are one line.
fn open(path: &Path) -> anyhow::Result<RecordReader<BufReader<File>>> {
    let file = File::open(path).map_err(|e| explain(path, RecordError::Io(e)))?;
    RecordReader::open(BufReader::with_capacity(1 << 16, file)).map_err(|e| explain(path, e))
}

/// One line for an error that leaves nothing to report: what is wrong and what to do.
fn explain(path: &Path, error: RecordError) -> anyhow::Error {
    let file = path.display();
    let give = "give a file written by `dptrace trace --record FILE`";
    match error {
        RecordError::Io(e) => match e.kind() {
            io::ErrorKind::NotFound => anyhow::anyhow!("{file} does not exist: {give}"),
            io::ErrorKind::PermissionDenied => {
                anyhow::anyhow!("cannot read {file}: permission denied (make it readable for this user, or run as its owner)")
            }
            io::ErrorKind::IsADirectory => anyhow::anyhow!("{file} is a directory: {give}"),
            _ => anyhow::anyhow!("cannot read {file}: {e}"),
        },
        RecordError::Empty => anyhow::anyhow!("{file} is empty: the session that should have written it never started; {give}"),
        RecordError::NotARecord(why) => anyhow::anyhow!("{file} is not a dptrace record ({why}): {give}"),
        RecordError::NewerVersion { found, supported } => anyhow::anyhow!(
            "{file}: record format version {found} is newer than this dptrace ({}) supports ({supported}): report it with a newer dptrace",
            env!("CARGO_PKG_VERSION")
        ),
        damage @ (RecordError::Truncated { .. } | RecordError::Corrupt { .. }) => {
            anyhow::anyhow!("{file}: {damage}: nothing can be reported from it (its header is unreadable)")
        }
    }
}

/// The summary `trace` printed, from the recomputed analysis and the recorded totals.
fn summary(
    analyzer: &Analyzer,
    findings: &[Finding],
    header: RecordHeader,
    trailer: Option<RecordTrailer>,
    span_secs: f64,
    record: String,
) -> Summary {
    let state = analyzer.state();
    let trailer = trailer.unwrap_or(RecordTrailer {
        events: state.events,
        duration_secs: span_secs,
        lost_events: 0,
        filtered_events: 0,
        decode_errors: 0,
        command_status: None,
        paths: None,
        finished: String::new(),
    });
    Summary {
        duration_secs: trailer.duration_secs,
        events: state.events,
        drops: state.total_drops(),
        drops_by_reason: state
            .drops_by_reason_and_location()
            .into_iter()
            .map(|(reason, location, count)| DropRow { reason, location, count })
            .collect(),
        lost_events: trailer.lost_events,
        filtered_events: trailer.filtered_events,
        decode_errors: trailer.decode_errors,
        findings: findings.len(),
        kernel: header.kernel,
        hooks: header.hooks,
        command_status: trailer.command_status,
        paths: trailer.paths,
        record: Some(record),
    }
}

#[cfg(test)]
mod tests {
    use super::shell_words;

    #[test]
    fn command_lines_are_quoted_as_a_shell_reads_them() {
        let words: Vec<String> =
            ["dptrace", "trace", "--", "bash", "-c", "echo it's > /dev/udp/10.0.0.2/9", ""].map(String::from).to_vec();
        assert_eq!(shell_words(&words), r#"dptrace trace -- bash -c 'echo it'\''s > /dev/udp/10.0.0.2/9' ''"#);
    }
}
