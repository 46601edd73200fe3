//! Probes that need a network namespace of their own: whether the br_netfilter sysctls exist in
//! a fresh namespace (`sysctl.rs`) and which link kinds take a native XDP program (`xdp.rs`).
//! Like the link-kind probe, the namespace is made with `unshare(CLONE_NEWNET)` on a dedicated
//! thread: it has no name in /run/netns, nothing else can see or enter it, and the kernel frees
//! it, with every device and XDP attachment in it, when the thread ends — even if dptrace is
//! killed mid-probe, so there is never a leftover. The caller waits a bounded time: a probe that
//! hangs (a netlink answer that never comes) is reported as unknown and `check` goes on; its
//! thread, still holding the namespace, ends with the process.

use std::{
    sync::mpsc::{self, RecvTimeoutError},
    time::Duration,
};

/// How long `check` waits for the probes in the fresh namespace (they take milliseconds).
pub(super) const TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `f` on a thread named `thread` in a new, unnamed network namespace and returns its
/// result, or why there is none (no namespace could be made, the thread panicked, or it did not
/// finish within `timeout`).
pub(super) fn in_fresh_netns<T: Send + 'static>(
    thread: &str,
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(thread.into())
        .spawn(move || {
            // Only this thread moves; the namespace dies with it.
            let result = match nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                Ok(()) => Ok(f()),
                Err(e) => Err(format!("could not create a throwaway network namespace ({e}): run as root")),
            };
            // The receiver is gone when the caller stopped waiting: nothing to do then.
            let _ = tx.send(result);
        })
        .map_err(|e| format!("cannot start the probe thread: {e}"))?;
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(RecvTimeoutError::Timeout) => Err(format!(
            "the probe in a throwaway network namespace did not finish within {timeout:?} (it is left to end \
             with dptrace, and its namespace with it)"
        )),
        Err(RecvTimeoutError::Disconnected) => Err("the probe thread in a throwaway network namespace panicked".into()),
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::MetadataExt};

    use super::*;

    fn netns_inode() -> u64 {
        fs::metadata("/proc/thread-self/ns/net").map(|m| m.ino()).unwrap()
    }

    #[test]
    fn runs_elsewhere_and_times_out() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping runs_elsewhere_and_times_out: needs root (creates a namespace)");
            return;
        }
        let ours = netns_inode();
        let theirs = in_fresh_netns("dptrace-test", TIMEOUT, netns_inode).unwrap();
        assert_ne!(ours, theirs);
        assert_eq!(netns_inode(), ours, "the calling thread must not move");

        let slow = in_fresh_netns("dptrace-test", Duration::from_millis(50), || {
            std::thread::sleep(Duration::from_millis(500));
        });
        assert!(slow.unwrap_err().contains("did not finish within"));
        let panicked = in_fresh_netns("dptrace-test", TIMEOUT, || panic!("probe panic (expected in this test)"));
        assert!(panicked.unwrap_err().contains("panicked"));
    }
}
