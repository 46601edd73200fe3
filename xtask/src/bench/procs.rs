//! The processes a benchmark starts (tracers, iperf3): their output lines as they come, their
//! CPU time and memory from /proc while they run and from `wait4` when they end, and Ctrl-C.
//!
//! Everything that waits polls [`interrupted`], so Ctrl-C (which the terminal also delivers to
//! the children) ends the run through ordinary errors and the namespace guard's `Drop`.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM set a flag instead of killing xtask, so the namespaces get removed.
pub fn catch_interrupts() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub fn check_interrupted() -> anyhow::Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps in short slices, failing early on Ctrl-C.
pub fn sleep(d: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// One line a child wrote, and when it arrived.
#[derive(Debug, Clone)]
pub struct Line {
    pub at: Instant,
    pub stderr: bool,
    pub text: String,
}

/// How a child ended: its wait status and its resource usage (own threads and reaped children).
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub status: i32,
    pub cpu_secs: f64,
    pub max_rss_kib: u64,
}

impl Exit {
    pub fn success(&self) -> bool {
        libc::WIFEXITED(self.status) && libc::WEXITSTATUS(self.status) == 0
    }

    pub fn describe(&self) -> String {
        if libc::WIFEXITED(self.status) {
            format!("exit status {}", libc::WEXITSTATUS(self.status))
        } else if libc::WIFSIGNALED(self.status) {
            format!("killed by signal {}", libc::WTERMSIG(self.status))
        } else {
            format!("wait status {:#x}", self.status)
        }
    }
}

/// Lines kept per process at most (the rest is counted, not kept).
const MAX_LINES: usize = 50_000;

/// A running child whose stdout and stderr are read line by line. Killed and reaped on drop.
pub struct Proc {
    pub name: String,
    pub pid: i32,
    pub started: Instant,
    lines: mpsc::Receiver<Line>,
    log: Vec<Line>,
    readers: Vec<thread::JoinHandle<()>>,
    exit: Option<Exit>,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> anyhow::Result<Self> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("cannot start {name}: {cmd:?}"))?;
        let (tx, rx) = mpsc::channel();
        let mut readers = Vec::new();
        let stdout = child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>);
        let stderr = child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>);
        for (stream, is_stderr) in [(stdout, false), (stderr, true)] {
            let Some(stream) = stream else { continue };
            let tx = tx.clone();
            readers.push(thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(text) = line else { break };
                    if tx.send(Line { at: Instant::now(), stderr: is_stderr, text }).is_err() {
                        break;
                    }
                }
            }));
        }
        let pid = i32::try_from(child.id()).context("pid out of range")?;
        // `child` is dropped without waiting: `Proc` reaps it with wait4 (for the rusage).
        Ok(Self { name: name.to_string(), pid, started, lines: rx, log: Vec::new(), readers, exit: None })
    }

    fn take_lines(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            if self.log.len() < MAX_LINES {
                self.log.push(line);
            }
        }
    }

    /// Waits for a line containing `needle` (on either stream) and returns when it arrived.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        let mut seen = self.log.len();
        loop {
            check_interrupted()?;
            self.take_lines();
            if let Some(line) = self.log[seen..].iter().find(|l| l.text.contains(needle)) {
                return Ok(line.at);
            }
            seen = self.log.len();
            if self.poll_exit()?.is_some() {
                self.finish_reading();
                if let Some(line) = self.log.iter().find(|l| l.text.contains(needle)) {
                    return Ok(line.at);
                }
                let tail = self.tail(20);
                bail!(
                    "{} ended ({}) before saying `{needle}`:\n{tail}",
                    self.name,
                    self.exit.map(|e| e.describe()).unwrap_or_default(),
                );
            }
            if Instant::now() >= deadline {
                let tail = self.tail(20);
                bail!("{} did not say `{needle}` within {timeout:?}:\n{tail}", self.name);
            }
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(20)) {
                self.log.push(line);
            }
        }
    }

    /// The last `n` lines, for error messages.
    pub fn tail(&mut self, n: usize) -> String {
        self.take_lines();
        let start = self.log.len().saturating_sub(n);
        self.log[start..].iter().map(|l| format!("  {}", l.text)).collect::<Vec<_>>().join("\n")
    }

    /// Every line read so far.
    pub fn lines(&mut self) -> &[Line] {
        self.take_lines();
        &self.log
    }

    /// The whole of stdout (after [`Proc::wait`]).
    pub fn stdout(&mut self) -> String {
        self.lines().iter().filter(|l| !l.stderr).map(|l| l.text.as_str()).collect::<Vec<_>>().join("\n")
    }

    /// User plus system CPU time so far, all threads (from /proc/PID/stat; 10 ms resolution).
    pub fn cpu_secs(&self) -> anyhow::Result<f64> {
        if let Some(exit) = self.exit {
            return Ok(exit.cpu_secs);
        }
        proc_cpu_secs(self.pid)
    }

    /// A numeric field of /proc/PID/status: VmRSS and VmHWM in KiB, or a count such as
    /// voluntary_ctxt_switches (of the main thread).
    pub fn status_kib(&self, field: &str) -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = text.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
        line[field.len() + 1..].split_whitespace().next()?.parse().ok()
    }

    pub fn signal(&self, signal: libc::c_int) {
        if self.exit.is_none() {
            // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
            unsafe { libc::kill(self.pid, signal) };
        }
    }

    /// Reaps the child if it has ended.
    fn poll_exit(&mut self) -> anyhow::Result<Option<Exit>> {
        if self.exit.is_some() {
            return Ok(self.exit);
        }
        let mut status = 0;
        // SAFETY: rusage is plain old data, fully written by wait4 on success.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: status and usage are valid for writes; pid is our child.
        let r = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut usage) };
        if r < 0 {
            bail!("wait4 on {} ({}): {}", self.name, self.pid, std::io::Error::last_os_error());
        }
        if r == 0 {
            return Ok(None);
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        let exit = Exit {
            status,
            cpu_secs: secs(usage.ru_utime) + secs(usage.ru_stime),
            max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
        };
        self.exit = Some(exit);
        Ok(self.exit)
    }

    /// Whether the child has ended (reaping it if so).
    pub fn has_exited(&mut self) -> bool {
        self.poll_exit().map(|e| e.is_some()).unwrap_or(true)
    }

    fn finish_reading(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        self.take_lines();
    }

    /// Waits for the child to end; after `timeout` it is killed and this fails.
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<Exit> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(exit) = self.poll_exit()? {
                self.finish_reading();
                return Ok(exit);
            }
            if Instant::now() >= deadline {
                self.kill();
                let tail = self.tail(20);
                bail!("{} did not end within {timeout:?} and was killed:\n{tail}", self.name);
            }
            // No interruption check here: a child told to stop must be reaped either way.
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Asks the child to stop with SIGINT (a tracer then prints its summary) and waits.
    pub fn interrupt(&mut self, timeout: Duration) -> anyhow::Result<Exit> {
        self.signal(libc::SIGINT);
        self.wait(timeout)
    }

    pub fn kill(&mut self) {
        if self.exit.is_none() {
            self.signal(libc::SIGKILL);
            let mut status = 0;
            // SAFETY: status is valid for writes; pid is our child, not yet reaped.
            unsafe { libc::waitpid(self.pid, &mut status, 0) };
            self.exit = Some(Exit { status, cpu_secs: 0.0, max_rss_kib: 0 });
            self.finish_reading();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// utime + stime of a process (all its threads), from /proc/PID/stat.
pub fn proc_cpu_secs(pid: i32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("no process {pid}"))?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("unexpected /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks =
        |i: usize| -> anyhow::Result<f64> { Ok(fields.get(i).context("short /proc/PID/stat")?.parse::<u64>()? as f64) };
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the name.
    Ok((ticks(11)? + ticks(12)?) / clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Busy CPU time of the whole machine (all cores), in seconds, from /proc/stat.
#[derive(Debug, Clone, Copy)]
pub struct HostCpu {
    pub busy: f64,
}

impl HostCpu {
    pub fn now() -> Self {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let values: Vec<f64> = text
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse::<f64>().ok())
            .collect();
        let total: f64 = values.iter().take(8).sum();
        // idle and iowait are the 4th and 5th columns.
        let idle = values.get(3).copied().unwrap_or(0.0) + values.get(4).copied().unwrap_or(0.0);
        let hz = clock_ticks();
        Self { busy: (total - idle) / hz }
    }

    /// Busy cores on average between `self` and `later`.
    pub fn busy_cores_until(&self, later: &HostCpu, wall_secs: f64) -> f64 {
        if wall_secs <= 0.0 {
            return 0.0;
        }
        (later.busy - self.busy) / wall_secs
    }
}
