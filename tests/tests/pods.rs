//! Kubernetes context end to end: a pod faked the way a node has one (a network namespace
//! with a process in a kubelet-style cgroup, and a `crictl` that answers with recorded JSON
//! naming the pod and its sandbox namespace), real drops in it, and dptrace naming the pod in
//! events, findings, `--pod` and `check`. Everything is removed again, also when a test fails.

use std::{
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::{Child, Command, Output},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use dptrace_e2e::{dptrace_env, json_lines, of_type, require_root, stderr, NodePair};
use serde_json::Value;

/// The fixtures the unit tests parse: what crictl prints on a containerd node.
const PODS_JSON: &str = include_str!("../../tracer/tests/fixtures/crictl-pods.json");
const INSPECTP_JSON: &str = include_str!("../../tracer/tests/fixtures/crictl-inspectp-containerd.json");
/// The pod the fixtures describe, replaced by the fake pod's names.
const FIXTURE_UID: &str = "0f3a1b2c-4d5e-6f70-8192-a3b4c5d6e7f8";
const FIXTURE_SANDBOX: &str = "c3f5a7e9b1d2c4e6f8a0b2d4e6f8a1c3e5b7d9f0a2c4e6b8d0f2a4c6e8b0d2f4";
const FIXTURE_NETNS: &str = "/var/run/netns/cni-7c1e9a52-1f3b-4c2d-8e5f-6a7b8c9d0e1f";

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A directory with a `crictl` script that prints `pods.json` for `crictl pods` and
/// `inspectp.json` for `crictl inspectp`; removed on drop.
struct FakeCrictl {
    dir: PathBuf,
}

impl FakeCrictl {
    fn new(tag: &str, pods: &str, inspectp: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("dpte2e-crictl-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pods.json"), pods).unwrap();
        std::fs::write(dir.join("inspectp.json"), inspectp).unwrap();
        let script = format!(
            "#!/bin/sh\n# dptrace e2e: a crictl that answers from recorded JSON.\ncase \" $* \" in\n  *\" pods \"*) exec cat '{0}/pods.json' ;;\n  *\" inspectp \"*) exec cat '{0}/inspectp.json' ;;\nesac\necho \"fake crictl: no recording for: $*\" >&2\nexit 1\n",
            dir.display()
        );
        let crictl = dir.join("crictl");
        std::fs::write(&crictl, script).unwrap();
        std::fs::set_permissions(&crictl, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir }
    }

    /// PATH with this crictl first.
    fn path_env(&self) -> String {
        format!("{}:{}", self.dir.display(), std::env::var("PATH").unwrap_or_default())
    }
}

impl Drop for FakeCrictl {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where cgroup v2 is mounted, if it is.
fn cgroup2_root() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mount = left.split_whitespace().nth(4)?;
        right.starts_with("cgroup2 ").then(|| PathBuf::from(mount))
    })
}

/// A pod as a node has it: `pair.server` is its network namespace, a process runs there in
/// `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<UID>.slice/cri-containerd-<ID>.scope`
/// (under a parent cgroup of this test, not the node's own kubepods), and crictl names it.
struct FakePod {
    namespace: String,
    name: String,
    uid: String,
    process: Child,
    /// The cgroups made, innermost first.
    cgroups: Vec<PathBuf>,
    crictl: FakeCrictl,
    pair: NodePair,
}

impl FakePod {
    /// None (the test is skipped) without a cgroup v2 mount.
    fn new() -> Option<Self> {
        let root = cgroup2_root()?;
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let uid = format!("{pid:08x}-4d5e-4f70-8192-{n:012x}");
        let container = format!("{:064x}", (pid as u128) << 64 | n as u128);
        let top = root.join(format!("dpte2e-{pid}-{n}.slice"));
        let pod_slice = top
            .join("kubepods.slice/kubepods-besteffort.slice")
            .join(format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_")));
        let leaf = pod_slice.join(format!("cri-containerd-{container}.scope"));
        let mut cgroups = Vec::new();
        let mut dir = leaf.clone();
        while dir != root {
            cgroups.push(dir.clone());
            dir = dir.parent().unwrap().to_path_buf();
        }
        let pair = NodePair::new();
        std::fs::create_dir_all(&leaf).unwrap();
        // Into the cgroup first: `ip netns exec` remounts /sys for the namespace.
        let process = Command::new("sh")
            .args([
                "-c",
                &format!("echo $$ > {}/cgroup.procs && exec ip netns exec {} sleep 600", leaf.display(), pair.server),
            ])
            .spawn()
            .unwrap();
        let namespace = "shop".to_string();
        let name = format!("web-{pid}-{n}");
        let sandbox = format!("{:064x}", (n as u128) << 96 | pid as u128);
        let rename = |json: &str| {
            json.replace(FIXTURE_UID, &uid)
                .replace(FIXTURE_SANDBOX, &sandbox)
                .replace(&FIXTURE_UID.replace('-', "_"), &uid.replace('-', "_"))
                .replace("web-0", &name)
                .replace(FIXTURE_NETNS, &format!("/var/run/netns/{}", pair.server))
                .replace("\"pid\": 2817", &format!("\"pid\": {}", process.id()))
        };
        let crictl = FakeCrictl::new(&n.to_string(), &rename(PODS_JSON), &rename(INSPECTP_JSON));
        let pod = Self { namespace, name, uid, process, cgroups, crictl, pair };
        pod.wait_in_place();
        Some(pod)
    }

    /// Until the process runs in the namespace (`ip netns exec` has exec'd `sleep`).
    fn wait_in_place(&self) {
        let want = NodePair::inode(&self.pair.server);
        let link = format!("/proc/{}/ns/net", self.process.id());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if std::fs::metadata(&link).is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == want) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the pod's process did not enter {}", self.pair.server);
    }

    fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Runs dptrace with the fake crictl first in PATH.
    fn dptrace(&self, args: &[&str]) -> Output {
        dptrace_env(&[("PATH", &self.crictl.path_env())], args)
    }

    /// `-- sh -c …`: UDP to a closed port of the pod (a drop in its namespace), and from the
    /// pod to a closed port of the client (a drop in the client's namespace, not a pod's).
    fn traffic(&self) -> Vec<String> {
        let p = &self.pair;
        let script = format!(
            "ip netns exec {} bash -c 'echo a > /dev/udp/{}/9999'; ip netns exec {} bash -c 'echo b > /dev/udp/{}/9998'",
            p.client, p.server_v4, p.server, p.client_v4
        );
        vec!["--".into(), "sh".into(), "-c".into(), script]
    }
}

impl Drop for FakePod {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        // A cgroup can be removed once its last process is gone (reaped just above; the
        // kernel may take a moment to see it).
        for dir in &self.cgroups {
            let deadline = Instant::now() + Duration::from_secs(2);
            while std::fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn trace_json(pod: &FakePod, filter: &[&str], path_env: Option<&str>) -> (Vec<Value>, Output) {
    let traffic = pod.traffic();
    let mut args = vec!["trace", "--json"];
    args.extend_from_slice(filter);
    args.extend(traffic.iter().map(String::as_str));
    let out = match path_env {
        Some(path) => dptrace_env(&[("PATH", path)], &args),
        None => pod.dptrace(&args),
    };
    assert!(out.status.success(), "dptrace failed: {}", stderr(&out));
    (json_lines(&out), out)
}

fn drop_to<'a>(lines: &'a [Value], dst: &str, port: u16) -> Option<&'a Value> {
    of_type(lines, "event")
        .into_iter()
        .find(|e| e["kind"] == "drop" && e["flow"]["dst"] == dst && e["flow"]["dport"] == port)
}

fn no_listener<'a>(lines: &'a [Value], dst: &str) -> Option<&'a Value> {
    of_type(lines, "finding").into_iter().find(|f| f["rule"] == "no-listener" && f["destination"] == dst)
}

#[test]
fn events_and_findings_in_a_pods_namespace_name_the_pod() {
    require_root!();
    let Some(pod) = FakePod::new() else {
        dptrace_e2e::skip!("no-cgroup2", "no cgroup v2 mount");
    };
    let (lines, _) = trace_json(&pod, &[], None);
    let (server, client) = (pod.pair.server_v4.to_string(), pod.pair.client_v4.to_string());

    let d = drop_to(&lines, &server, 9999).unwrap_or_else(|| panic!("no drop to the pod: {lines:#?}"));
    assert_eq!(d["netns_name"], pod.pair.server.as_str(), "existing fields stay: {d}");
    assert_eq!(d["netns"], NodePair::inode(&pod.pair.server));
    assert_eq!(d["pod"]["uid"], pod.uid.as_str(), "{d}");
    assert_eq!(d["pod"]["namespace"], "shop", "{d}");
    assert_eq!(d["pod"]["name"], pod.name.as_str(), "{d}");
    // The client's namespace is nobody's pod: no pod field at all.
    let other = drop_to(&lines, &client, 9998).unwrap_or_else(|| panic!("no drop to the client: {lines:#?}"));
    assert!(other.get("pod").is_none(), "{other}");

    let f = no_listener(&lines, &server).unwrap_or_else(|| panic!("no no-listener finding: {lines:#?}"));
    assert_eq!(f["place"]["pod"]["name"], pod.name.as_str(), "{f}");
    assert_eq!(f["place"]["netns_name"], pod.pair.server.as_str());
    let summary = f["summary"].as_str().unwrap();
    assert!(summary.contains(&format!("(pod {})", pod.full_name())), "{summary}");
    assert!(f["evidence"].as_array().unwrap().iter().all(|e| e["pod"]["uid"] == pod.uid.as_str()), "{f}");
    let f = no_listener(&lines, &client).unwrap_or_else(|| panic!("no no-listener finding for the client: {lines:#?}"));
    assert!(f["place"].get("pod").is_none(), "{f}");
    assert!(!f["summary"].as_str().unwrap().contains("(pod "), "{f}");
}

#[test]
fn pod_filter_keeps_only_the_pods_namespace_by_name_or_uid() {
    require_root!();
    let Some(pod) = FakePod::new() else {
        dptrace_e2e::skip!("no-cgroup2", "no cgroup v2 mount");
    };
    let (server, client) = (pod.pair.server_v4.to_string(), pod.pair.client_v4.to_string());
    let full_name = pod.full_name();

    let (lines, out) = trace_json(&pod, &["--pod", &full_name], None);
    assert!(drop_to(&lines, &server, 9999).is_some_and(|d| d["pod"]["name"] == pod.name.as_str()), "{lines:#?}");
    assert!(drop_to(&lines, &client, 9998).is_none(), "a drop outside the pod was kept: {lines:#?}");
    let inode = NodePair::inode(&pod.pair.server);
    assert!(
        of_type(&lines, "event").iter().all(|e| e.get("netns").is_none_or(|n| n.is_null() || *n == inode)),
        "events of other namespaces: {lines:#?}"
    );
    assert!(of_type(&lines, "summary")[0]["filtered_events"].as_u64().unwrap() >= 1);
    assert!(stderr(&out).contains(&format!("pod {full_name}: network namespace {inode}")), "{}", stderr(&out));

    // By UID, without crictl: found from the cgroups, shown by UID.
    let no_crictl = std::env::temp_dir().join(format!("dpte2e-nocrictl-{}", std::process::id()));
    std::fs::create_dir_all(&no_crictl).unwrap();
    let path = std::env::var("PATH").unwrap_or_default();
    let path_without = std::env::split_paths(&path)
        .filter(|d| !d.join("crictl").exists())
        .chain([no_crictl.clone()])
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let uid_spec = format!("uid:{}", pod.uid);
    let (lines, _) = trace_json(&pod, &["--pod", &uid_spec], Some(&path_without));
    let _ = std::fs::remove_dir(&no_crictl);
    let d = drop_to(&lines, &server, 9999).unwrap_or_else(|| panic!("no drop in the pod: {lines:#?}"));
    assert_eq!(d["pod"]["uid"], pod.uid.as_str(), "{d}");
    assert!(d["pod"].get("name").is_none(), "no crictl, no name: {d}");
    assert!(drop_to(&lines, &client, 9998).is_none(), "{lines:#?}");

    // Text: the drop line and the finding's place say the pod.
    let traffic = pod.traffic();
    let mut args = vec!["trace", "--pod", &full_name];
    args.extend(traffic.iter().map(String::as_str));
    let out = pod.dptrace(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.contains(" drop NO_SOCKET") && l.contains(&format!(" pod {full_name} "))), "{text}");
    assert!(text.lines().any(|l| l.contains("where:") && l.contains(&format!("pod {full_name}"))), "{text}");
}

#[test]
fn unknown_and_malformed_pods_are_refused_before_tracing() {
    require_root!();
    let Some(pod) = FakePod::new() else {
        dptrace_e2e::skip!("no-cgroup2", "no cgroup v2 mount");
    };
    let out = pod.dptrace(&["trace", "--pod", "kube-system/foo", "--duration", "1s"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // The fixture lists coredns, flannel and this pod (twice: an older sandbox).
    assert_eq!(
        stderr(&out),
        "dptrace: error: no pod kube-system/foo on this node (crictl pods found 3 pods; names are NAMESPACE/NAME)\n"
    );
    assert!(out.stdout.is_empty());
    // The right name in the wrong namespace: the error says where it is.
    let out = pod.dptrace(&["trace", "--pod", &format!("default/{}", pod.name), "--duration", "1s"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains(&format!("did you mean {}?", pod.full_name())), "{}", stderr(&out));

    for bad in ["foo", "uid:1234"] {
        let out = pod.dptrace(&["trace", "--pod", bad, "--duration", "1s"]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        assert!(stderr(&out).contains("NAMESPACE/NAME") || stderr(&out).contains("UID"), "{}", stderr(&out));
    }
    let out = pod.dptrace(&["trace", "--pod", "a/b", "--netns", "x", "--duration", "1s"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot be used with"), "{}", stderr(&out));

    // A name needs crictl: without it, the error says how else to name the pod.
    let empty = std::env::temp_dir().join(format!("dpte2e-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let out = dptrace_env(&[("PATH", empty.to_str().unwrap())], &["trace", "--pod", "kube-system/foo"]);
    let _ = std::fs::remove_dir(&empty);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("crictl is not in PATH") && stderr(&out).contains("uid:"), "{}", stderr(&out));

    // `check` says what it found.
    let out = pod.dptrace(&["check", "--json"]);
    let report = json_lines(&out).into_iter().find(|v| v["type"] == "check").expect("a check object");
    let k = &report["kubernetes"];
    assert_eq!(k["crictl"], pod.crictl.dir.join("crictl").display().to_string(), "{k}");
    assert_eq!(k["crictl_pods"], 3, "{k}");
    assert!(k["cgroup_drivers"].as_array().unwrap().iter().any(|d| d == "systemd"), "{k}");
    assert!(k["pod_netns"].as_u64().unwrap() >= 1, "{k}");
    let out = pod.dptrace(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.trim_start().starts_with("kubernetes:") && l.contains("(3 pods)")), "{text}");
}
