//! The container runtime's view of pods, read with `crictl` (the CRI's command-line client):
//! pod UID → namespace/name (`crictl pods -o json`) and a sandbox's network namespace
//! (`crictl inspectp -o json ID`). Optional by design: without crictl dptrace still shows
//! pod UIDs read from cgroups. crictl runs with a short timeout and never on the event path:
//! a background thread refreshes the name table, at most every [`RELIST_INTERVAL`].

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

/// How long one crictl call may take before it is killed.
pub const TIMEOUT: Duration = Duration::from_secs(3);
/// Unknown pod UIDs trigger a new listing at most this often.
pub const RELIST_INTERVAL: Duration = Duration::from_secs(10);

/// A pod sandbox as `crictl pods` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    pub id: String,
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// SANDBOX_READY (else NOTREADY: stopped, or an older attempt).
    pub ready: bool,
    pub attempt: u64,
    /// Nanoseconds since the epoch.
    pub created_at: u128,
}

/// Where a sandbox's network lives, from `crictl inspectp`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxNetwork {
    /// The network namespace in the sandbox's OCI spec (`/var/run/netns/cni-…`).
    pub netns_path: Option<PathBuf>,
    /// The sandbox (pause) process, where the runtime reports it (containerd).
    pub pid: Option<u32>,
    /// The pod uses the node's network namespace (`hostNetwork: true`).
    pub host_network: bool,
}

/// `crictl` in PATH, if there is one.
pub fn find_crictl() -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("crictl"))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Runs `crictl ARGS…` and returns its stdout; kills it after [`TIMEOUT`].
pub fn run(crictl: &Path, args: &[&str]) -> Result<String, String> {
    let child = std::process::Command::new(crictl)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", crictl.display()))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(TIMEOUT) {
        Ok(result) => result.map_err(|e| format!("crictl {}: {e}", args.join(" ")))?,
        Err(_) => {
            // Our own child: the waiting thread reaps it once it is killed.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            return Err(format!("crictl {} did not answer within {}s", args.join(" "), TIMEOUT.as_secs()));
        }
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let why = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message").trim();
        return Err(format!("crictl {} failed ({}): {why}", args.join(" "), output.status));
    }
    String::from_utf8(output.stdout).map_err(|_| format!("crictl {} printed invalid UTF-8", args.join(" ")))
}

/// `crictl pods -o json`, parsed.
pub fn list(crictl: &Path) -> Result<Vec<Sandbox>, String> {
    parse_pods(&run(crictl, &["pods", "-o", "json"])?)
}

/// `crictl inspectp -o json ID`, parsed.
pub fn inspect(crictl: &Path, id: &str) -> Result<SandboxNetwork, String> {
    parse_inspectp(&run(crictl, &["inspectp", "-o", "json", id])?)
}

/// Parses `crictl pods -o json`: `{"items": [...]}` (protojson, crictl 1.2x+) or a bare
/// array (older crictl, gogo-protobuf field names). Entries without a UID are skipped.
pub fn parse_pods(json: &str) -> Result<Vec<Sandbox>, String> {
    let value: Value = serde_json::from_str(json).map_err(|e| format!("crictl pods: not JSON ({e})"))?;
    let items = match &value {
        Value::Array(items) => items,
        Value::Object(o) => match o.get("items") {
            Some(Value::Array(items)) => items,
            Some(Value::Null) | None => return Ok(Vec::new()),
            Some(_) => return Err("crictl pods: `items` is not an array".into()),
        },
        _ => return Err("crictl pods: neither an object nor an array".into()),
    };
    Ok(items
        .iter()
        .filter_map(|item| {
            let meta = item.get("metadata")?;
            let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).unwrap_or_default().to_string();
            let uid = text(meta, "uid");
            if uid.is_empty() {
                return None;
            }
            Some(Sandbox {
                id: text(item, "id"),
                uid,
                namespace: text(meta, "namespace"),
                name: text(meta, "name"),
                // protojson writes the enum's name; older crictl its number (READY = 0).
                ready: match item.get("state") {
                    Some(Value::String(s)) => s == "SANDBOX_READY",
                    Some(Value::Number(n)) => n.as_u64() == Some(0),
                    _ => false,
                },
                attempt: number(meta.get("attempt")).unwrap_or(0) as u64,
                created_at: number(item.get("createdAt").or_else(|| item.get("created_at"))).unwrap_or(0),
            })
        })
        .collect())
}

/// A JSON number, or a number in a string (protojson writes 64-bit integers as strings).
fn number(value: Option<&Value>) -> Option<u128> {
    match value? {
        Value::Number(n) => n.as_u64().map(u128::from),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Parses `crictl inspectp -o json ID` (one sandbox: an object; crictl prints an array for
/// several). containerd and CRI-O both put the sandbox's OCI spec in `info.runtimeSpec`,
/// whose network namespace entry has the path; containerd adds the pause process in
/// `info.pid`. `status.linux.namespaces.options.network` is `NODE` for host-network pods.
pub fn parse_inspectp(json: &str) -> Result<SandboxNetwork, String> {
    let value: Value = serde_json::from_str(json).map_err(|e| format!("crictl inspectp: not JSON ({e})"))?;
    let value = match value {
        Value::Array(mut all) if !all.is_empty() => all.swap_remove(0),
        Value::Object(_) => value,
        _ => return Err("crictl inspectp: no sandbox in its output".into()),
    };
    let info = &value["info"];
    let netns_path = info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|ns| ns["type"] == "network")
        .and_then(|ns| ns["path"].as_str())
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    let pid = info["pid"].as_u64().filter(|p| *p > 0 && *p <= u32::MAX as u64).map(|p| p as u32);
    let mode = &value["status"]["linux"]["namespaces"]["options"]["network"];
    // protojson: the enum's name; older crictl: NamespaceMode NODE = 2.
    let host_network = mode == "NODE" || mode.as_u64() == Some(2);
    Ok(SandboxNetwork { netns_path, pid, host_network })
}

/// The sandbox to use among several with the same name: ready first, then the newest.
pub fn best<'a>(candidates: impl Iterator<Item = &'a Sandbox>) -> Option<&'a Sandbox> {
    candidates.max_by_key(|s| (s.ready, s.created_at, s.attempt))
}

/// Pod UID → (namespace, name), refreshed by a background thread.
#[derive(Debug, Clone, Default)]
pub struct Names {
    crictl: Option<PathBuf>,
    table: Arc<Mutex<Table>>,
}

#[derive(Debug, Default)]
struct Table {
    by_uid: HashMap<String, (String, String)>,
    listing: bool,
    /// When the last listing started.
    listed_at: Option<Instant>,
    /// Set once a listing finished (successfully or not).
    done: bool,
    error: Option<String>,
}

impl Names {
    /// Uses `crictl` from PATH, if any, and starts listing pods right away.
    pub fn start() -> Self {
        let names = Self { crictl: find_crictl(), table: Arc::default() };
        names.relist();
        names
    }

    pub fn crictl(&self) -> Option<&Path> {
        self.crictl.as_deref()
    }

    /// Waits (at most the crictl timeout) for the first listing, so that the first events
    /// already carry names.
    pub fn wait_first_listing(&self) {
        let deadline = Instant::now() + TIMEOUT + Duration::from_millis(200);
        while self.crictl.is_some() && Instant::now() < deadline {
            if self.table.lock().map(|t| t.done).unwrap_or(true) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The namespace and name of pod `uid`, if the runtime listed it. A miss starts a new
    /// listing in the background (rate-limited); this call never waits for crictl.
    pub fn name(&self, uid: &str) -> Option<(String, String)> {
        let known = self.table.lock().ok()?.by_uid.get(uid).cloned();
        if known.is_none() {
            self.relist();
        }
        known
    }

    /// Why the last listing failed, if it did.
    pub fn error(&self) -> Option<String> {
        self.table.lock().ok()?.error.clone()
    }

    fn relist(&self) {
        let Some(crictl) = self.crictl.clone() else { return };
        {
            let Ok(mut table) = self.table.lock() else { return };
            if table.listing || table.listed_at.is_some_and(|t| t.elapsed() < RELIST_INTERVAL) {
                return;
            }
            table.listing = true;
            table.listed_at = Some(Instant::now());
        }
        let table = self.table.clone();
        std::thread::spawn(move || {
            let result = list(&crictl);
            if let Ok(mut table) = table.lock() {
                match result {
                    Ok(sandboxes) => {
                        // Older sandboxes of a pod keep its UID and name: any one will do.
                        table.by_uid = sandboxes.into_iter().map(|s| (s.uid, (s.namespace, s.name))).collect();
                        table.error = None;
                    }
                    Err(e) => {
                        log::debug!("pod names unavailable: {e}");
                        table.error = Some(e);
                    }
                }
                table.listing = false;
                table.done = true;
            }
        });
    }
}
