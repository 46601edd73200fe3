//! `trace --record FILE`: writes the events the analyzer sees to a record file (format and
//! reader in `crate::record`), as a sink that forwards everything to the real one. Sitting at
//! the sink, it sees exactly what the analyzer observed: the session passes an event to the
//! sink right after the analyzer, after its filters, and only then.

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use flate2::{write::GzEncoder, Compression, GzBuilder};

use super::{Sink, Summary};
use crate::{
    analyze::Finding,
    decode::Event,
    record::{mark, LineRef, RecordHeader, RecordTrailer},
};

/// A frame is closed once it holds this many bytes of JSON…
const FRAME_BYTES: usize = 256 << 10;
/// …or has been open this long: about what a killed session can lose.
const FRAME_AGE: Duration = Duration::from_secs(1);

/// `--record FILE`: its writer, or a one-line reason why FILE cannot be written.
pub fn open(path: &Path) -> anyhow::Result<RecordWriter> {
    if path.is_dir() {
        anyhow::bail!(
            "--record {} is a directory: give the path of a file, e.g. {}",
            path.display(),
            path.join("session.dptrace").display()
        );
    }
    RecordWriter::create(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot write the record file {}: {e} (give --record a file in a writable directory)",
            path.display()
        )
    })
}

/// Writes one record file: the header as the first frame, events in frames, the end line.
pub struct RecordWriter {
    file: BufWriter<File>,
    path: PathBuf,
    /// JSON lines of the frame being filled.
    frame: Vec<u8>,
    frame_opened: Instant,
    marked: bool,
    /// The file did not exist before: the session's to remove if it never starts.
    created: bool,
    events: u64,
    bytes: u64,
}

impl RecordWriter {
    /// Opens the file for writing, creating it if needed, but leaves what it holds until
    /// [`Self::header`]. `trace` calls it before attaching anything, so that a path that
    /// cannot be written fails the command first, and a session that cannot start leaves an
    /// existing file as it was.
    pub fn create(path: &Path) -> io::Result<Self> {
        let existed = path.exists();
        let file = File::options().write(true).create(true).truncate(false).open(path)?;
        Ok(Self {
            file: BufWriter::new(file),
            path: path.to_path_buf(),
            frame: Vec::new(),
            frame_opened: Instant::now(),
            marked: false,
            created: !existed,
            events: 0,
            bytes: 0,
        })
    }

    /// Empties the file and writes the header as the first frame, at once: a session killed
    /// later still leaves a file that says what it was.
    pub fn header(&mut self, header: &RecordHeader) -> io::Result<()> {
        // Not for a pipe or a device (`--record /dev/stdout`): they cannot be emptied.
        if self.file.get_ref().metadata()?.is_file() {
            self.file.get_ref().set_len(0)?;
        }
        self.line(&LineRef::Header(header))?;
        self.close_frame()
    }

    pub fn event(&mut self, event: &Event) -> io::Result<()> {
        if self.frame.is_empty() {
            self.frame_opened = Instant::now();
        }
        self.line(&LineRef::event(event))?;
        self.events += 1;
        if self.frame.len() >= FRAME_BYTES || self.frame_opened.elapsed() >= FRAME_AGE {
            self.close_frame()?;
        }
        Ok(())
    }

    /// How long the frame being filled has been open; None when it is empty.
    pub fn frame_age(&self) -> Option<Duration> {
        (!self.frame.is_empty()).then(|| self.frame_opened.elapsed())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Events written so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Writes the end line (its `events` is set here) and closes the file; returns the
    /// events and bytes written.
    pub fn finish(mut self, mut trailer: RecordTrailer) -> io::Result<(u64, u64)> {
        trailer.events = self.events;
        self.line(&LineRef::End(&trailer))?;
        self.close_frame()?;
        // On disk when `trace` returns (a pipe or a device has nothing to sync).
        if self.file.get_ref().metadata()?.is_file() {
            self.file.get_ref().sync_all()?;
        }
        Ok((self.events, self.bytes))
    }

    /// The session never started: removes the file if it made it, else leaves it untouched.
    pub fn abandon(self) {
        if self.created {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn line(&mut self, line: &LineRef) -> io::Result<()> {
        serde_json::to_writer(&mut self.frame, line)?;
        self.frame.push(b'\n');
        Ok(())
    }

    /// Compresses the frame into one gzip member and hands it to the kernel.
    pub(crate) fn close_frame(&mut self) -> io::Result<()> {
        if self.frame.is_empty() {
            return Ok(());
        }
        let mut counted = CountingWriter { inner: &mut self.file, bytes: 0 };
        let mut encoder = if self.marked {
            GzEncoder::new(&mut counted, Compression::default())
        } else {
            GzBuilder::new().comment(mark()).write(&mut counted, Compression::default())
        };
        encoder.write_all(&self.frame)?;
        encoder.finish()?;
        self.bytes += counted.bytes;
        self.marked = true;
        self.frame.clear();
        self.file.flush()
    }
}

struct CountingWriter<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Why the record could not be completed, if it could not: `trace` fails when it is set.
pub type RecordFailure = Arc<Mutex<Option<String>>>;

/// The writer, shared with the thread that closes frames that grew old.
type SharedWriter = Arc<Mutex<Option<RecordWriter>>>;

/// Forwards everything to a sink and records every event; the summary's totals become the
/// record's end line, and the summary says what the file holds. A thread closes a frame
/// once it is [`FRAME_AGE`] old even when no more events come, so a session killed after a
/// burst and a quiet spell still leaves the burst on disk.
pub struct RecordTee {
    inner: Box<dyn Sink + Send>,
    writer: SharedWriter,
    path: PathBuf,
    failure: RecordFailure,
    /// Dropping it stops the thread.
    stop: Option<mpsc::Sender<()>>,
    flusher: Option<std::thread::JoinHandle<()>>,
}

impl RecordTee {
    /// Writes the header now; the returned slot tells whether the record was completed.
    pub fn new(
        inner: Box<dyn Sink + Send>,
        mut writer: RecordWriter,
        header: &RecordHeader,
    ) -> io::Result<(Self, RecordFailure)> {
        writer.header(header)?;
        let failure = RecordFailure::default();
        let path = writer.path.clone();
        let writer = Arc::new(Mutex::new(Some(writer)));
        let (stop, stopped) = mpsc::channel::<()>();
        let (shared, slot, file) = (writer.clone(), failure.clone(), path.clone());
        let flusher = std::thread::Builder::new().name("dptrace-record".into()).spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(FRAME_AGE / 4) {
                let Ok(mut writer) = shared.lock() else { return };
                let Some(w) = writer.as_mut().filter(|w| w.frame_age().is_some_and(|age| age >= FRAME_AGE)) else {
                    continue;
                };
                if let Err(e) = w.close_frame() {
                    let events = w.events();
                    *writer = None;
                    stopped_writing(&file, &slot, events, e);
                }
            }
        })?;
        let tee = Self { inner, writer, path, failure: failure.clone(), stop: Some(stop), flusher: Some(flusher) };
        Ok((tee, failure))
    }
}

/// Records why writing stopped (the session goes on); returns it for the summary.
fn stopped_writing(path: &Path, failure: &RecordFailure, events: u64, error: io::Error) -> String {
    let text = format!("writing stopped after {events} events: {error}");
    log::warn!("record {}: {text}", path.display());
    if let Ok(mut slot) = failure.lock() {
        *slot = Some(text.clone());
    }
    text
}

impl Sink for RecordTee {
    fn event(&mut self, event: &Event) {
        if let Ok(mut writer) = self.writer.lock() {
            if let Some(w) = writer.as_mut() {
                if let Err(e) = w.event(event) {
                    // Stop writing, keep tracing: the summary and the exit status report it.
                    let events = w.events();
                    *writer = None;
                    stopped_writing(&self.path, &self.failure, events, e);
                }
            }
        }
        self.inner.event(event);
    }

    fn finding(&mut self, finding: &Finding) {
        self.inner.finding(finding);
    }

    fn summary(&mut self, summary: &Summary) {
        self.stop.take();
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
        let mut summary = summary.clone();
        let trailer = RecordTrailer {
            events: 0,
            duration_secs: summary.duration_secs,
            lost_events: summary.lost_events,
            filtered_events: summary.filtered_events,
            decode_errors: summary.decode_errors,
            command_status: summary.command_status.clone(),
            paths: summary.paths.clone(),
            finished: humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
        };
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        let text = match writer {
            Some(writer) => {
                let events = writer.events();
                match writer.finish(trailer) {
                    Ok((events, bytes)) => format!("{events} events, {bytes} bytes"),
                    Err(e) => stopped_writing(&self.path, &self.failure, events, e),
                }
            }
            None => self.failure.lock().ok().and_then(|s| s.clone()).unwrap_or_default(),
        };
        summary.record = Some(format!("{}: {text}", self.path.display()));
        self.inner.summary(&summary);
    }

    fn note(&mut self, text: &str) {
        self.inner.note(text);
    }

    fn record(&mut self, kind: &str, value: serde_json::Value, text: &str) {
        self.inner.record(kind, value, text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{read_record, RecordError};

    /// Takes everything, shows nothing.
    struct Nowhere;

    impl Sink for Nowhere {
        fn event(&mut self, _: &Event) {}
        fn finding(&mut self, _: &Finding) {}
        fn summary(&mut self, _: &Summary) {}
        fn note(&mut self, _: &str) {}
        fn record(&mut self, _: &str, _: serde_json::Value, _: &str) {}
    }

    fn header() -> RecordHeader {
        let kernel = crate::kernel::KernelSummary {
            release: "test".into(),
            btf: false,
            drop_reason_names: "btf".into(),
            kallsyms: false,
        };
        RecordHeader::new(kernel, Vec::new())
    }

    fn connect(ts_ns: u64) -> Event {
        serde_json::from_value(serde_json::json!({
            "kind": "tcp-connect", "time": "2026-11-26T01:00:00Z", "ts_ns": ts_ns, "netns": 1,
            "netns_name": null, "flow": null, "task": null
        }))
        .unwrap()
    }

    #[test]
    fn a_quiet_spell_closes_the_open_frame_so_a_killed_session_keeps_its_events() {
        let path = std::env::temp_dir().join(format!("dptrace-record-tee-{}", std::process::id()));
        let writer = RecordWriter::create(&path).unwrap();
        let (mut tee, failure) = RecordTee::new(Box::new(Nowhere), writer, &header()).unwrap();
        for ts in 0..5 {
            tee.event(&connect(ts));
        }
        // No event closes the frame: the thread does, once it is a second old.
        std::thread::sleep(FRAME_AGE * 2);
        let data = std::fs::read(&path).unwrap();
        match read_record(&data) {
            Err(RecordError::Truncated { events: 5, .. }) => {}
            other => panic!("{other:?}"),
        }
        // And the summary completes the record.
        tee.event(&connect(5));
        let summary: Summary = Summary {
            duration_secs: 2.5,
            events: 6,
            drops: 0,
            drops_by_reason: Vec::new(),
            lost_events: 1,
            filtered_events: 2,
            decode_errors: 3,
            findings: 0,
            kernel: header().kernel,
            hooks: Vec::new(),
            command_status: None,
            paths: None,
            record: None,
        };
        tee.summary(&summary);
        let read = read_record(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!((read.events.len(), read.trailer.lost_events, read.trailer.duration_secs), (6, 1, 2.5));
        assert_eq!(*failure.lock().unwrap(), None);
        std::fs::remove_file(&path).unwrap();
    }
}
