//! `bpf()` commands and XDP exception counters → events. `union bpf_attr` is read by its
//! UAPI layout (append-only, the same on every kernel); enum names come from BTF where it
//! exists, else from the UAPI values of the common ones.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tracer_ebpf::{BpfEvent, XdpExceptionCount, XdpExceptionKey};

use super::{c_string, links::Actor, Word};

/// A BPF object load or attach and what the kernel answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BpfCommand {
    pub time: String,
    pub ts_ns: u64,
    /// `prog-load`, `btf-load` or `link-create`.
    pub command: Word,
    /// The new fd, or the negative errno.
    pub result: i64,
    /// `EINVAL`, `EOPNOTSUPP`, … when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// PROG_LOAD: the program's type (`xdp`, `sched_cls`, …), name and size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prog_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prog_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<u32>,
    /// LINK_CREATE: the attach type (`xdp`, `tcx_ingress`, …), the target interface and, for
    /// XDP, the mode asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attach_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_ifindex: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xdp_mode: Option<Word>,
    /// The kernel's reason for a failed XDP link attach.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub actor: Actor,
}

impl BpfCommand {
    pub fn failed(&self) -> bool {
        self.result < 0
    }

    pub fn is_xdp(&self) -> bool {
        self.prog_type.as_deref() == Some("xdp") || self.attach_type.as_deref() == Some("xdp")
    }
}

/// XDP_ABORTED (or invalid actions) counted in the kernel for one device and program.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct XdpException {
    pub time: String,
    pub ts_ns: u64,
    pub last_time: String,
    pub netns: Option<u32>,
    pub netns_name: Option<String>,
    /// The pod whose network namespace this is: its UID, and namespace and name when the
    /// container runtime (crictl) knows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<crate::pods::Pod>,
    pub ifindex: u32,
    pub device: Option<String>,
    pub prog_id: u32,
    pub prog_name: Option<String>,
    /// `aborted`, or `invalid action N`.
    pub action: String,
    pub count: u64,
}

/// Names of `enum bpf_prog_type` and `enum bpf_attach_type` values, without their prefixes,
/// lowercase (`xdp`, `sched_cls`).
#[derive(Debug, Clone, Default)]
pub struct BpfNames {
    prog_types: HashMap<u32, String>,
    attach_types: HashMap<u32, String>,
}

impl BpfNames {
    pub fn resolve(btf: Option<&crate::kernel::btf::KernelBtf>) -> Self {
        let table = |name: &str, prefix: &str, uapi: &[(u32, &str)]| -> HashMap<u32, String> {
            let from_btf: HashMap<u32, String> = btf
                .and_then(|b| b.enum_values(name).ok())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(n, v)| Some((v as u32, n.strip_prefix(prefix)?.to_ascii_lowercase())))
                .collect();
            if from_btf.is_empty() {
                uapi.iter().map(|(v, n)| (*v, n.to_string())).collect()
            } else {
                from_btf
            }
        };
        Self {
            prog_types: table(
                "bpf_prog_type",
                "BPF_PROG_TYPE_",
                &[
                    (1, "socket_filter"),
                    (2, "kprobe"),
                    (3, "sched_cls"),
                    (4, "sched_act"),
                    (5, "tracepoint"),
                    (6, "xdp"),
                ],
            ),
            attach_types: table("bpf_attach_type", "BPF_", &[(37, "xdp")]),
        }
    }

    fn prog_type(&self, v: u32) -> String {
        self.prog_types.get(&v).cloned().unwrap_or_else(|| format!("type-{v}"))
    }

    fn attach_type(&self, v: u32) -> String {
        self.attach_types.get(&v).cloned().unwrap_or_else(|| format!("attach-{v}"))
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Decodes a `bpf()` command; `cmds` are this kernel's PROG_LOAD, BTF_LOAD, LINK_CREATE values.
pub fn decode_command(raw: &BpfEvent, cmds: [u32; 3], names: &BpfNames, time: String, actor: Actor) -> BpfCommand {
    let attr = &raw.attr[..(raw.attr_len as usize).min(raw.attr.len())];
    let text = c_string(&raw.message[..(raw.message_len as usize).min(raw.message.len())]);
    // A verifier log: its verdict is the last complete line before the statistics.
    let message = if raw.ret < 0 && raw.cmd == cmds[0] { verifier_verdict(&text) } else { text };
    let command = match raw.cmd {
        c if c == cmds[0] => "prog-load",
        c if c == cmds[1] => "btf-load",
        _ => "link-create",
    };
    let mut out = BpfCommand {
        time,
        ts_ns: raw.header.ts_ns,
        command: command.into(),
        result: raw.ret,
        error: (raw.ret < 0).then(|| format!("{:?}", nix::errno::Errno::from_raw(raw.ret.saturating_neg() as i32))),
        prog_type: None,
        prog_name: None,
        instructions: None,
        attach_type: None,
        target_ifindex: None,
        xdp_mode: None,
        message: (!message.is_empty()).then_some(message),
        actor,
    };
    match command {
        // UAPI: prog_type@0, insn_cnt@4, ... prog_name[16]@48.
        "prog-load" => {
            out.prog_type = u32_at(attr, 0).map(|t| names.prog_type(t));
            out.instructions = u32_at(attr, 4);
            out.prog_name = attr.get(48..64).map(c_string).filter(|n| !n.is_empty());
        }
        // UAPI: prog_fd@0, target_fd or target_ifindex@4, attach_type@8, flags@12.
        "link-create" => {
            out.attach_type = u32_at(attr, 8).map(|t| names.attach_type(t));
            if out.attach_type.as_deref() == Some("xdp") {
                out.target_ifindex = u32_at(attr, 4);
                out.xdp_mode = u32_at(attr, 12).map(|flags| super::links::xdp_mode(flags).into());
            }
        }
        _ => {}
    }
    out
}

/// The line of a (possibly truncated) verifier log that says why it refused the program:
/// the last complete line that is not an instruction dump, a register state or a statistic.
fn verifier_verdict(log: &str) -> String {
    let complete = match log.rfind('\n') {
        Some(end) => &log[..end],
        None => log,
    };
    let explains = |l: &&str| {
        !l.is_empty()
            && !l.starts_with("processed ")
            && !l.starts_with("verification time")
            && !l.starts_with("stack depth")
            && !l.starts_with(';')
            && !l.chars().next().is_some_and(|c| c.is_ascii_digit())
    };
    complete.lines().map(str::trim).rfind(explains).unwrap_or("").to_string()
}

/// One kernel counter → an event (`time` of first and last exception).
pub fn decode_exception(
    key: &XdpExceptionKey,
    value: &XdpExceptionCount,
    times: (String, String),
    netns_name: Option<String>,
) -> XdpException {
    let device = c_string(&value.ifname);
    let prog_name = c_string(&value.prog_name);
    XdpException {
        time: times.0,
        ts_ns: value.first_ns,
        last_time: times.1,
        netns: (key.netns != 0).then_some(key.netns),
        netns_name,
        pod: None,
        ifindex: key.ifindex,
        device: (!device.is_empty()).then_some(device),
        prog_id: key.prog_id,
        prog_name: (!prog_name.is_empty()).then_some(prog_name),
        // XDP_ABORTED is 0 (UAPI); anything the kernel calls an exception otherwise is an
        // action it does not know.
        action: match key.action {
            0 => "aborted".into(),
            a if a & tracer_ebpf::XDP_REDIRECT_FAILED != 0 => {
                let errno = (a & 0xffff) as i32;
                format!("redirect failed ({:?})", nix::errno::Errno::from_raw(errno))
            }
            a => format!("invalid action {a}"),
        },
        count: value.count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_ebpf::{Actor as RawActor, EventHeader, EventKind, BPF_ATTR_BYTES, BPF_MESSAGE_BYTES};

    fn event(cmd: u32, ret: i64, attr: &[(usize, &[u8])], message: &str) -> BpfEvent {
        let mut a = [0u8; BPF_ATTR_BYTES];
        for (at, bytes) in attr {
            a[*at..*at + bytes.len()].copy_from_slice(bytes);
        }
        let mut m = [0u8; BPF_MESSAGE_BYTES];
        m[..message.len()].copy_from_slice(message.as_bytes());
        BpfEvent {
            header: EventHeader {
                kind: EventKind::BpfCommand as u16,
                _pad: 0,
                cpu: 0,
                ts_ns: 7,
                pid: 9,
                tid: 9,
                comm: [0; 16],
            },
            actor: RawActor { netns: 0, parent_pid: 0, parent_comm: [0; 16], cgroup_id: 0 },
            ret,
            cmd,
            attr_len: 120,
            message_len: message.len() as u32,
            _pad: 0,
            attr: a,
            message: m,
        }
    }

    fn actor() -> Actor {
        Actor {
            pid: 9,
            tid: 9,
            comm: "calico-node".into(),
            parent_pid: None,
            parent_comm: None,
            netns: None,
            netns_name: None,
            pod: None,
            cgroup: None,
            pod_uid: None,
            container: None,
        }
    }

    #[test]
    fn a_failed_xdp_link_create_carries_device_mode_and_message() {
        // prog_fd@0 = 5, target_ifindex@4 = 3, attach_type@8 = BPF_XDP (37), flags@12 = DRV_MODE (4).
        let raw = event(
            28,
            -95,
            &[(0, &5u32.to_ne_bytes()), (4, &3u32.to_ne_bytes()), (8, &37u32.to_ne_bytes()), (12, &4u32.to_ne_bytes())],
            "Underlying driver does not support XDP in native mode",
        );
        let c = decode_command(&raw, [5, 18, 28], &BpfNames::resolve(None), "t".into(), actor());
        assert_eq!(c.command, "link-create");
        assert_eq!(
            (c.attach_type.as_deref(), c.target_ifindex, c.xdp_mode.as_deref()),
            (Some("xdp"), Some(3), Some("native"))
        );
        assert_eq!(c.error.as_deref(), Some("EOPNOTSUPP"));
        assert!(c.failed() && c.is_xdp());
        assert_eq!(c.message.as_deref(), Some("Underlying driver does not support XDP in native mode"));
    }

    #[test]
    fn the_verifier_verdict_is_the_last_line_that_explains() {
        let log = "func#0 @0\n0: R1=ctx() R10=fp0\n; let v = ... @ lab_fixtures.rs:30\n0: (61) r1 = *(u32 *)(r1 +400)\ninvalid bpf_context access off=400 size=4\nprocessed 1 insns (limit 1000000)\n";
        assert_eq!(verifier_verdict(log), "invalid bpf_context access off=400 size=4");
        // Truncated in the middle of a line: that line is left out.
        assert_eq!(verifier_verdict("func#0 @0\nR1 type=ctx expected=fp\n0: (85) cal"), "R1 type=ctx expected=fp");
    }

    #[test]
    fn a_prog_load_names_type_program_and_size() {
        let mut name = [0u8; 16];
        name[..7].copy_from_slice(b"xdp_fw1");
        let raw = event(5, -13, &[(0, &6u32.to_ne_bytes()), (4, &42u32.to_ne_bytes()), (48, &name)], "");
        let c = decode_command(&raw, [5, 18, 28], &BpfNames::resolve(None), "t".into(), actor());
        assert_eq!(
            (c.command.as_ref(), c.prog_type.as_deref(), c.prog_name.as_deref()),
            ("prog-load", Some("xdp"), Some("xdp_fw1"))
        );
        assert_eq!((c.instructions, c.error.as_deref(), c.message.as_deref()), (Some(42), Some("EACCES"), None));
    }
}

/// The XDP program attached to the device a packet was dropped on, read from the kernel when
/// the drop was decoded (`IFLA_XDP` of the device in its namespace, then the program's info
/// by id): an XDP_DROP names no program, so this is how `xdp-drop` names it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct XdpAttachment {
    /// `native`, `generic` or `offload`: the mode of the program that ran where the packet
    /// died (a device may hold a native and a generic program at once).
    pub mode: Word,
    pub prog_id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prog_name: Option<String>,
    /// The program's tag (hash of its instructions), as `bpftool prog` prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prog_tag: Option<String>,
    /// Runs counted by the kernel (only while `kernel.bpf_stats_enabled` is 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_count: Option<u64>,
    /// The programs it runs as freplace components (libxdp's `xdp_dispatcher` runs the
    /// loaders' programs so), as `name (id N)`, in link order: those decide, not the
    /// dispatcher.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<String>,
}

/// The XDP mode whose program frees a packet in `function` when it returns XDP_DROP (or
/// aborts): veth's native XDP frees the skb in `veth_xdp_rcv_skb`, generic XDP in
/// `do_xdp_generic` (`netif_receive_generic_xdp` where that is not inlined).
pub fn xdp_drop_mode(function: &str) -> Option<&'static str> {
    match function {
        "veth_xdp_rcv_skb" | "veth_xdp_rcv" | "veth_xdp_rcv_one" => Some("native"),
        "do_xdp_generic" | "netif_receive_generic_xdp" | "bpf_prog_run_generic_xdp" => Some("generic"),
        _ => None,
    }
}

/// Lookups of attached programs, per (netns inode, ifindex): when, and what was found.
/// Bounded; an entry is trusted for [`XDP_LOOKUP_TTL_NS`] (programs get replaced, and a
/// namespace inode may be reused).
/// (netns inode, ifindex) → (when looked up, what was found).
type XdpLookups = HashMap<(u32, u32), (u64, Option<XdpAttachment>)>;
static XDP_LOOKUPS: std::sync::Mutex<Option<XdpLookups>> = std::sync::Mutex::new(None);
const XDP_LOOKUP_TTL_NS: u64 = 1_000_000_000;
const XDP_LOOKUPS_MAX: usize = 256;

impl super::Decoder {
    /// Names the XDP program behind a drop in an XDP receive path (cached; at most one
    /// lookup per device and second, each bounded by a netlink timeout).
    pub(super) fn add_xdp(&mut self, drop: &mut super::DropRecord) {
        let Some(mode) = drop.function.as_deref().and_then(xdp_drop_mode) else { return };
        let (Some(netns), Some(ifindex)) = (drop.netns, drop.ifindex) else { return };
        if self.mtus.off {
            return;
        }
        let now = drop.ts_ns;
        {
            let lookups = XDP_LOOKUPS.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, found)) = lookups.as_ref().and_then(|l| l.get(&(netns, ifindex))) {
                if now.saturating_sub(*at) < XDP_LOOKUP_TTL_NS {
                    drop.xdp = found.clone();
                    return;
                }
            }
        }
        let found = self.netns_path(netns).and_then(|path| crate::probes::xdp::attached_program(&path, ifindex, mode));
        let mut lookups = XDP_LOOKUPS.lock().unwrap_or_else(|e| e.into_inner());
        let map = lookups.get_or_insert_with(HashMap::new);
        if map.len() >= XDP_LOOKUPS_MAX {
            map.clear();
        }
        map.insert((netns, ifindex), (now, found.clone()));
        drop.xdp = found;
    }
}
