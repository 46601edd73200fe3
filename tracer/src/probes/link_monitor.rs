//! The links family's userspace source: an rtnetlink monitor (RTNLGRP_LINK) in every
//! network namespace of interest. It sees the state of every link after each change (MAC,
//! up/down, carrier, creation, deletion) whoever made it and however (netlink, ioctl, the
//! kernel itself); the syscall tracepoints say who asked. Always available, no BTF needed.

use std::{
    collections::HashMap,
    fs::File,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use tokio::sync::mpsc;

use crate::kernel::netns::inode_of;

/// One rtnetlink notification, as received.
#[derive(Debug)]
pub struct MonitorRecord {
    /// CLOCK_MONOTONIC nanoseconds at receipt (the clock eBPF events use).
    pub ts_ns: u64,
    pub netns: u32,
    pub bytes: Vec<u8>,
}

/// Notifications in flight between the monitor threads and the session.
const QUEUE: usize = 8192;
/// How often threads look at the stop flag and new namespaces appear.
const TICK: Duration = Duration::from_millis(200);

/// Monitors link changes in namespaces; stops (and releases the namespaces) on drop.
pub struct LinkMonitor {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub receiver: mpsc::Receiver<MonitorRecord>,
}

impl LinkMonitor {
    /// Watches the given namespaces, or (None) this process's namespace and every named one
    /// (`/run/netns`), including those created later.
    pub fn start(only: Option<Vec<PathBuf>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, receiver) = mpsc::channel(QUEUE);
        let watcher = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("link-monitor".into())
                .spawn(move || supervise(only, stop, tx))
                .expect("spawn the link monitor")
        };
        Self { stop, threads: vec![watcher], receiver }
    }
}

impl Drop for LinkMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Starts a watcher per namespace, adding namespaces as they appear, until stopped.
fn supervise(only: Option<Vec<PathBuf>>, stop: Arc<AtomicBool>, tx: mpsc::Sender<MonitorRecord>) {
    let mut watched: HashMap<u32, JoinHandle<()>> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let candidates: Vec<PathBuf> = match &only {
            Some(paths) => paths.clone(),
            None => {
                let mut paths = vec![PathBuf::from("/proc/self/ns/net")];
                if let Ok(entries) = std::fs::read_dir("/run/netns") {
                    paths.extend(entries.flatten().map(|e| e.path()));
                }
                paths
            }
        };
        for path in candidates {
            let Some(inode) = inode_of(&path) else { continue };
            if watched.contains_key(&inode) {
                continue;
            }
            let (stop, tx) = (stop.clone(), tx.clone());
            let spawned = std::thread::Builder::new().name("link-watch".into()).spawn(move || {
                if let Err(e) = watch(&path, inode, &stop, &tx) {
                    log::debug!("link monitor for {}: {e}", path.display());
                }
            });
            if let Ok(handle) = spawned {
                watched.insert(inode, handle);
            }
        }
        std::thread::sleep(TICK);
    }
    for (_, handle) in watched {
        let _ = handle.join();
    }
}

/// Subscribes to link notifications inside the namespace at `path` and forwards them.
fn watch(path: &PathBuf, inode: u32, stop: &AtomicBool, tx: &mpsc::Sender<MonitorRecord>) -> std::io::Result<()> {
    // setns affects only this thread; the socket stays bound to the namespace it was made in.
    let file = File::open(path)?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind(&SocketAddr::new(0, nix::libc::RTMGRP_LINK as u32))?;
    let _ = socket.set_rx_buf_sz(1 << 20);
    let timeout = nix::sys::time::TimeVal::new(0, TICK.as_micros() as i64);
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)
        .map_err(std::io::Error::from)?;
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let len = match socket.recv(&mut &mut buf[..], 0) {
            Ok(len) => len,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let ts_ns = crate::kernel::monotonic_ns();
        // One datagram may hold several messages.
        let mut offset = 0;
        while offset + 16 <= len {
            let msg_len = u32::from_ne_bytes(buf[offset..offset + 4].try_into().unwrap_or_default()) as usize;
            if msg_len < 16 || offset + msg_len > len {
                break;
            }
            let record = MonitorRecord { ts_ns, netns: inode, bytes: buf[offset..offset + msg_len].to_vec() };
            if tx.blocking_send(record).is_err() {
                return Ok(());
            }
            offset += (msg_len + 3) & !3;
        }
    }
    Ok(())
}
