//! XDP: an `RTM_GETLINK` dump (raw rtnetlink, no iproute2 needed) gives each link's kind and its
//! `IFLA_XDP` attachment (program ids and mode); the driver comes from sysfs. The dump runs in the
//! host namespace (see `host_netns.rs`); this file turns each link into its report entry.
//!
//! Whether a device supports native (driver-mode) XDP is never inferred from a kernel or driver
//! version. It is, per device, the first of:
//! 1. `attached`: a program is attached to it in native mode right now (`IFLA_XDP`);
//! 2. `probed`: for a kind of device that can be made anew (loopback, veth, bridge, vxlan, ifb,
//!    …), a test device of that kind in a throwaway network namespace (`fresh_netns.rs`) is given
//!    a 2-instruction XDP_PASS program in native mode (rtnetlink `IFLA_XDP` with
//!    `XDP_FLAGS_DRV_MODE`), and the kernel's answer is the verdict: success, or EOPNOTSUPP with
//!    its extended-ack message ("Underlying driver does not support XDP in native mode"). The
//!    program is detached and the device deleted right away, and the namespace goes with its
//!    thread anyway. rtnetlink rather than a bpf_link, because only rtnetlink answers with the
//!    kernel's message; the namespace, which nothing outlives, stands in for the link's
//!    detach-on-exit. Bonds are the exception: an empty test bond shows whether the bonding driver
//!    has the hook, but a real bond has it only in some modes and when every slave's driver has
//!    it, so their verdict comes from 3;
//! 3. `xdp-features`: the device's XDP features as the kernel reports them (the `netdev` generic
//!    netlink family's `dev-get`, read, not attached): `basic` means its driver implements native
//!    XDP;
//! 4. `none`: unknown, with how to find out. dptrace never attaches to a device of the node it
//!    runs on (observe, never interfere), and a physical NIC's driver cannot be reproduced in a
//!    throwaway namespace.
//!
//! Generic (skb) XDP works on every device, so none of this decides whether an XDP program can
//! run at all: only whether it can run in the driver, before an skb is allocated.

use std::{
    collections::HashMap,
    fs, io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

use serde::Serialize;

use super::{link_kinds::if_index, netlink as nl, Support};

/// One interface of the host namespace and its XDP state.
#[derive(Debug, Clone, Serialize)]
pub struct InterfaceXdp {
    pub name: String,
    pub ifindex: u32,
    /// rtnetlink link kind (`veth`, `bridge`, `vxlan`, …); none for physical devices and `lo`.
    pub kind: Option<String>,
    /// The bound driver (from `/sys/class/net/<name>/device/driver`), `virtual`, or `unknown (why)`.
    pub driver: String,
    /// Attached XDP programs; `None` when the kernel reports no XDP state (before 4.8).
    pub attached: Option<Vec<XdpAttachment>>,
    /// Whether the device supports native (driver) XDP; generic XDP works on every device.
    pub native: Support,
    /// How `native` was found out, in words (the probe's answer and the kernel's message).
    pub native_how: String,
    /// Where `native` comes from: `attached` (a native program is attached now), `probed` (a test
    /// device of the same kind in a throwaway namespace took or refused a native program: see
    /// [`FeatureReport::xdp_native_probes`](super::FeatureReport::xdp_native_probes)),
    /// `xdp-features` (the kernel's report for this device) or `none` (unknown).
    pub native_source: &'static str,
    /// The device's XDP features as the kernel reports them (`basic`, `redirect`, `rx-sg`, …;
    /// empty: none); `None` when they could not be read (see
    /// [`FeatureReport::xdp_features_unknown`](super::FeatureReport::xdp_features_unknown)).
    pub xdp_features: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct XdpAttachment {
    /// `native` (driver), `generic` (skb) or `offload` (hardware).
    pub mode: &'static str,
    /// The BPF program id (`bpftool prog show id N`); kernels before 4.13 do not report it.
    pub prog_id: Option<u32>,
}

/// Whether a test device of one kind, in a throwaway network namespace, took a native XDP program.
#[derive(Debug, Clone, Serialize)]
pub struct XdpKindProbe {
    /// The rtnetlink link kind, or `loopback`.
    pub kind: String,
    /// `yes`: the kernel attached the program; `no`: it refused with EOPNOTSUPP; `unknown`: the
    /// probe could not tell (see `how`).
    pub native: Support,
    /// What was done and what the kernel answered, in words.
    pub how: String,
    /// The errno name of the refusal (or of the failed test-device creation).
    pub errno: Option<String>,
    /// The kernel's extended-ack message, when it sent one.
    pub kernel_message: Option<String>,
}

/// The probe name of the loopback device (which has no rtnetlink kind).
pub(super) const LOOPBACK: &str = "loopback";

/// Kinds probed on every host, present or not: loopback, and what pods and CNI bridges use.
const ALWAYS_PROBED: &[&str] = &[LOOPBACK, "veth", "bridge"];

/// Kinds whose native XDP depends on how the device is set up (bonding mode, slaves' drivers),
/// so a test device of the kind says nothing about a given device.
const SETUP_DEPENDENT_KINDS: &[&str] = &["bond"];

/// The test device and, for kinds that need one, its parent (a veth pair, `…0` and `…1`).
const PROBE_DEVICE: &str = "dptxdp0";
const PARENT_DEVICE: &str = "dptxdpparent0";

/// The per-device XDP features (`NETDEV_XDP_ACT_*` bits by ifindex), or why they are unknown.
pub(super) type XdpFeatures = Result<HashMap<u32, u64>, String>;

/// `NETDEV_XDP_ACT_*` bit names, as the kernel's netdev netlink spec spells them.
const XDP_FEATURE_NAMES: [&str; 7] =
    ["basic", "redirect", "ndo-xmit", "xsk-zerocopy", "hw-offload", "rx-sg", "ndo-xmit-sg"];
/// `NETDEV_XDP_ACT_BASIC`: the driver runs XDP programs (XDP_PASS, DROP, TX, ABORTED).
const XDP_ACT_BASIC: u64 = 1;

fn feature_names(bits: u64) -> Vec<String> {
    (0..64)
        .filter(|bit| bits & (1 << bit) != 0)
        .map(|bit| XDP_FEATURE_NAMES.get(bit).map_or_else(|| format!("bit {bit}"), |n| n.to_string()))
        .collect()
}

/// Reads every device's XDP features in the calling thread's network namespace, from the
/// `netdev` generic netlink family (a read: nothing is attached or changed).
pub(super) fn read_xdp_features() -> XdpFeatures {
    let mut sock = nl::Socket::open_generic().map_err(|e| format!("cannot open a generic netlink socket: {e}"))?;
    let family = match sock.family_id("netdev") {
        Ok(id) => id,
        Err(nl::Error::Kernel { errno: libc::ENOENT, .. }) => {
            return Err("the kernel has no `netdev` generic netlink family, where kernels report each device's XDP \
                        features (it came with Linux 6.3)"
                .into())
        }
        Err(e) => return Err(format!("looking up the `netdev` generic netlink family failed: {e}")),
    };
    let devices = sock.netdev_xdp_features(family).map_err(|e| format!("the netdev dev-get dump failed: {e}"))?;
    Ok(devices.into_iter().collect())
}

/// The kind a link is probed as: its rtnetlink kind, `loopback`, or none (a physical device).
fn probe_kind(link: &nl::Link) -> Option<&str> {
    if link.flags & nl::IFF_LOOPBACK != 0 {
        return Some(LOOPBACK);
    }
    link.kind.as_deref()
}

/// The kinds to probe: [`ALWAYS_PROBED`], then those of `links`, each once.
pub(super) fn kinds_to_probe(links: &[nl::Link]) -> Vec<String> {
    let mut kinds: Vec<String> = ALWAYS_PROBED.iter().map(|k| k.to_string()).collect();
    for kind in links.iter().filter_map(probe_kind) {
        if !kinds.iter().any(|k| k == kind) {
            kinds.push(kind.to_string());
        }
    }
    kinds
}

/// Kinds that need a lower (parent) Ethernet device.
fn needs_parent(kind: &str) -> bool {
    matches!(kind, "macvlan" | "macvtap" | "ipvlan" | "ipvtap" | "vlan")
}

impl XdpKindProbe {
    fn unknown(kind: &str, how: String) -> Self {
        Self { kind: kind.to_string(), native: Support::Unknown, how, errno: None, kernel_message: None }
    }
}

/// For each kind, attaches a test XDP program in native mode to a test device of that kind and
/// removes both. Must run in a throwaway network namespace (see `fresh_netns.rs`): it creates
/// devices named `dptxdp*` and uses that namespace's loopback.
pub(super) fn probe_native_kinds(kinds: &[String]) -> Vec<XdpKindProbe> {
    let all_unknown = |why: String| kinds.iter().map(|k| XdpKindProbe::unknown(k, why.clone())).collect();
    let prog = match load_xdp_pass() {
        Ok(prog) => prog,
        Err(e) => return all_unknown(format!("could not load the 2-instruction test XDP program ({e})")),
    };
    let mut sock = match nl::Socket::open() {
        Ok(sock) => sock,
        Err(e) => return all_unknown(format!("cannot open an rtnetlink socket: {e}")),
    };
    let mut parent = None;
    kinds.iter().map(|kind| probe_native_kind(&mut sock, &prog, kind, &mut parent)).collect()
}

fn probe_native_kind(
    sock: &mut nl::Socket,
    prog: &OwnedFd,
    kind: &str,
    parent: &mut Option<Result<u32, String>>,
) -> XdpKindProbe {
    let (index, created) = if kind == LOOPBACK {
        match if_index("lo") {
            Some(index) => (index, false),
            None => return XdpKindProbe::unknown(kind, "the throwaway network namespace has no lo".into()),
        }
    } else {
        let lower = if needs_parent(kind) {
            let made = parent.get_or_insert_with(|| {
                sock.create_link("veth", PARENT_DEVICE, None)
                    .map_err(|e| e.to_string())
                    .and_then(|()| if_index(PARENT_DEVICE).ok_or_else(|| "it has no ifindex".to_string()))
            });
            match made {
                Ok(index) => Some(*index),
                Err(e) => {
                    return XdpKindProbe::unknown(
                        kind,
                        format!("a test {kind} device needs a parent, and the test veth to be it failed: {e}"),
                    )
                }
            }
        } else {
            None
        };
        if let Err(e) = sock.create_link(kind, PROBE_DEVICE, lower) {
            let (errno, kernel_message) = error_parts(&e);
            return XdpKindProbe {
                kind: kind.to_string(),
                native: Support::Unknown,
                how: format!(
                    "could not create a test {kind} device in a throwaway network namespace ({e}), so there was \
                     nothing to attach a test program to"
                ),
                errno,
                kernel_message,
            };
        }
        match if_index(PROBE_DEVICE) {
            Some(index) => (index, true),
            None => {
                let _ = sock.delete_link(PROBE_DEVICE);
                return XdpKindProbe::unknown(kind, format!("the test {kind} device has no ifindex"));
            }
        }
    };
    let attached = sock.set_xdp(index, prog.as_raw_fd(), nl::XDP_FLAGS_DRV_MODE | nl::XDP_FLAGS_UPDATE_IF_NOEXIST);
    let mut probe = classify_attach(kind, &attached);
    if attached.is_ok() {
        if let Err(e) = sock.set_xdp(index, -1, nl::XDP_FLAGS_DRV_MODE) {
            probe.how.push_str(&format!(" (detaching it failed: {e}; it went away with the namespace)"));
        }
    }
    if created {
        if let Err(e) = sock.delete_link(PROBE_DEVICE) {
            probe.how.push_str(&format!(" (deleting the test device failed: {e}; it went away with the namespace)"));
        }
    }
    probe
}

fn error_parts(e: &nl::Error) -> (Option<String>, Option<String>) {
    match e {
        nl::Error::Kernel { errno, message } => {
            (Some(format!("{:?}", nix::errno::Errno::from_raw(*errno))), message.clone())
        }
        nl::Error::Local(_) => (None, None),
    }
}

/// What the kernel's answer to a native attach on a test device of `kind` means.
fn classify_attach(kind: &str, result: &Result<(), nl::Error>) -> XdpKindProbe {
    let device = if kind == LOOPBACK { "loopback device".to_string() } else { format!("{kind} device") };
    let tried = format!(
        "attaching a test XDP program in native (driver) mode (XDP_FLAGS_DRV_MODE) to a throwaway {device} in a \
         throwaway network namespace"
    );
    let (errno, kernel_message) = match result {
        Ok(()) => {
            return XdpKindProbe {
                kind: kind.to_string(),
                native: Support::Yes,
                how: format!("probed: {tried} succeeded; it was detached and the device deleted"),
                errno: None,
                kernel_message: None,
            }
        }
        Err(e @ nl::Error::Kernel { .. }) => error_parts(e),
        Err(e @ nl::Error::Local(_)) => {
            return XdpKindProbe::unknown(kind, format!("probed: {tried} got no answer ({e}): the probe cannot tell"))
        }
    };
    let name = errno.clone().unwrap_or_default();
    let said = kernel_message.as_ref().map_or(name.clone(), |m| format!("{name}: {m}"));
    let (native, how) = if name == "EOPNOTSUPP" {
        (
            Support::No,
            format!(
                "probed: {tried} failed with {said}: the {kind} driver has no native XDP hook; generic (skb) mode \
                 works on any device"
            ),
        )
    } else {
        (Support::Unknown, format!("probed: {tried} failed with {said}, which is no verdict on native XDP"))
    };
    XdpKindProbe { kind: kind.to_string(), native, how, errno, kernel_message }
}

pub(super) fn interface_xdp(link: nl::Link, probes: &[XdpKindProbe], features: &XdpFeatures) -> InterfaceXdp {
    let driver = device_driver(&link.name, link.index);
    let device_features = match features {
        Ok(map) => map.get(&link.index).copied().ok_or("the kernel's netdev dump did not list it"),
        Err(why) => Err(why.as_str()),
    };
    let (native, native_source, native_how) = native_xdp(&link, &driver, probes, device_features);
    InterfaceXdp {
        xdp_features: device_features.ok().map(feature_names),
        name: link.name,
        ifindex: link.index,
        kind: link.kind,
        driver,
        attached: link.xdp,
        native,
        native_how,
        native_source,
    }
}

/// The driver bound to a device, as `ethtool -i` would say, or `virtual`. sysfs shows the
/// namespace that mounted it, so the ifindex must match for the answer to be about this device.
fn device_driver(name: &str, ifindex: u32) -> String {
    let dir = Path::new("/sys/class/net").join(name);
    match fs::read_to_string(dir.join("ifindex")) {
        Ok(index) if index.trim().parse::<u32>().ok() == Some(ifindex) => {}
        Ok(_) => return "unknown (sysfs shows another namespace's device of that name)".into(),
        Err(_) => return "unknown (not in /sys/class/net: sysfs belongs to another network namespace)".into(),
    }
    if !dir.join("device").exists() {
        return "virtual".into();
    }
    match fs::read_link(dir.join("device/driver")) {
        Ok(target) => target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "unknown".into()),
        Err(_) => "unknown (device without a bound driver)".into(),
    }
}

/// Whether `link` supports native XDP, where that comes from, and how it was found out: see the
/// module comment for the order of the sources.
fn native_xdp(
    link: &nl::Link,
    driver: &str,
    probes: &[XdpKindProbe],
    features: Result<u64, &str>,
) -> (Support, &'static str, String) {
    let name = &link.name;
    if link.xdp.iter().flatten().any(|a| a.mode == "native") {
        return (
            Support::Yes,
            "attached",
            format!("a program is attached to {name} in native mode now (the kernel's IFLA_XDP report)"),
        );
    }
    let kind = probe_kind(link);
    let mut context = String::new();
    if let Some(probe) = kind.and_then(|k| probes.iter().find(|p| p.kind == k)) {
        let k = &probe.kind;
        match probe.native {
            Support::No => return (Support::No, "probed", format!("{name} is {}; {}", of_kind(k), probe.how)),
            Support::Yes if !SETUP_DEPENDENT_KINDS.contains(&k.as_str()) => {
                return (
                    Support::Yes,
                    "probed",
                    format!(
                        "{name} is {}; {}. {name}'s own settings (MTU, queue counts) can still make an attach fail: \
                         `dptrace trace --hooks xdp` shows such failures",
                        of_kind(k),
                        probe.how
                    ),
                )
            }
            Support::Yes => {
                context = format!(
                    "the {k} driver has a native XDP hook ({}), but a {k} device has native XDP only in some modes \
                     and when every lower device's driver has it; ",
                    probe.how
                )
            }
            Support::Unknown => context = format!("{}; ", probe.how),
        }
    }
    let whose =
        if driver == "virtual" || driver.starts_with("unknown") { String::new() } else { format!(" ({driver})") };
    match features {
        Ok(bits) if bits & XDP_ACT_BASIC != 0 => (
            Support::Yes,
            "xdp-features",
            format!(
                "{context}the kernel reports XDP features {} for {name} (netdev netlink family, read without \
                 attaching): its driver{whose} implements native XDP; its current settings (MTU, queues, LRO) can \
                 still make an attach fail",
                feature_names(bits).join(",")
            ),
        ),
        Ok(bits) => (
            Support::No,
            "xdp-features",
            format!(
                "{context}the kernel reports {} for {name} (netdev netlink family, read without attaching): its \
                 driver{whose} does not implement native XDP; generic (skb) mode works on any device",
                if bits == 0 {
                    "no XDP features".to_string()
                } else {
                    format!("XDP features {} but not basic", feature_names(bits).join(","))
                }
            ),
        ),
        Err(why) => {
            let what = if context.is_empty() {
                match kind {
                    Some(k) => format!("{k} devices were not probed; "),
                    None => format!(
                        "dptrace does not attach programs to this node's devices (observe, never interfere), and a \
                         physical device's driver{whose} cannot be reproduced in a throwaway namespace; "
                    ),
                }
            } else {
                context
            };
            (
                Support::Unknown,
                "none",
                format!(
                    "{what}per-device XDP features are unknown: {why}. To find out: `ethtool -i {name}` names the \
                     driver, whose documentation says whether it has native XDP; or, in a maintenance window, `ip \
                     link set dev {name} xdpdrv obj PROG.o sec xdp` (refused with EOPNOTSUPP without it), then \
                     `ip link set dev {name} xdpdrv off`"
                ),
            )
        }
    }
}

/// "the loopback device", "of kind veth".
fn of_kind(kind: &str) -> String {
    if kind == LOOPBACK {
        "the loopback device".into()
    } else {
        format!("of kind {kind}")
    }
}

/// Loads `r0 = XDP_PASS; exit`, named `dptrace_probe`, as an XDP program (the raw `bpf()`
/// syscall: no ELF, BTF or relocation involved, so it loads wherever XDP programs do).
pub(super) fn load_xdp_pass() -> Result<OwnedFd, String> {
    // BPF_MOV64_IMM(BPF_REG_0, 2) and BPF_EXIT_INSN().
    let insns: [u8; 16] = [0xb7, 0, 0, 0, 2, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
    let license = b"GPL\0";
    // union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, …, prog_name at 48.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&6u32.to_ne_bytes()); // BPF_PROG_TYPE_XDP
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    let load = |attr: &[u8; 128]| {
        // SAFETY: BPF_PROG_LOAD (5) reads `attr` and the buffers it points to, all alive here.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, 5, attr.as_ptr(), attr.len()) };
        if fd < 0 {
            return Err(format!("BPF_PROG_LOAD: {}", io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    };
    let unnamed = attr;
    attr[48..61].copy_from_slice(b"dptrace_probe");
    // Kernels without program names (before 4.15) refuse the field: load it unnamed there.
    load(&attr).or_else(|_| load(&unnamed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, kind: Option<&str>, flags: u32, xdp: Option<Vec<XdpAttachment>>) -> nl::Link {
        nl::Link { index: 7, flags, name: name.into(), kind: kind.map(Into::into), xdp }
    }

    fn probe(kind: &str, native: Support) -> XdpKindProbe {
        XdpKindProbe {
            kind: kind.into(),
            native,
            how: format!("probed: {kind} answer"),
            errno: None,
            kernel_message: None,
        }
    }

    #[test]
    fn classifies_native_attach_answers() {
        let p = classify_attach("veth", &Ok(()));
        assert_eq!(p.native, Support::Yes);
        assert!(p.how.starts_with("probed: attaching a test XDP program in native"), "{}", p.how);
        let refused = Err(nl::Error::Kernel {
            errno: libc::EOPNOTSUPP,
            message: Some("Underlying driver does not support XDP in native mode".into()),
        });
        let p = classify_attach("bridge", &refused);
        assert_eq!((p.native, p.errno.as_deref()), (Support::No, Some("EOPNOTSUPP")));
        assert!(p.how.contains("EOPNOTSUPP: Underlying driver does not support XDP in native mode"), "{}", p.how);
        let p = classify_attach(LOOPBACK, &Err(nl::Error::Kernel { errno: libc::EPERM, message: None }));
        assert_eq!(p.native, Support::Unknown);
        assert!(p.how.contains("throwaway loopback device"), "{}", p.how);
        assert_eq!(classify_attach("veth", &Err(nl::Error::Local("recv: timed out".into()))).native, Support::Unknown);
    }

    #[test]
    fn judges_native_xdp_from_evidence_only() {
        let probes = [probe(LOOPBACK, Support::No), probe("veth", Support::Yes), probe("bond", Support::Yes)];
        let none: Result<u64, &str> = Err("no netdev family");
        // An attached native program is the kernel's own word.
        let attached = vec![XdpAttachment { mode: "native", prog_id: Some(3) }];
        let (s, src, _) = native_xdp(&link("eth0", None, 0, Some(attached)), "ixgbe", &probes, none);
        assert_eq!((s, src), (Support::Yes, "attached"));
        // Probed kinds.
        let (s, src, how) = native_xdp(&link("lo", None, nl::IFF_LOOPBACK, Some(vec![])), "virtual", &probes, none);
        assert_eq!((s, src), (Support::No, "probed"));
        assert!(how.starts_with("lo is the loopback device; probed:"), "{how}");
        let (s, src, _) = native_xdp(&link("veth1", Some("veth"), 0, None), "virtual", &probes, Ok(0));
        assert_eq!((s, src), (Support::Yes, "probed"));
        // A bond's verdict is its own features, not the empty test bond's.
        let (s, src, how) = native_xdp(&link("bond0", Some("bond"), 0, None), "virtual", &probes, Ok(0));
        assert_eq!((s, src), (Support::No, "xdp-features"));
        assert!(how.contains("bond driver has a native XDP hook"), "{how}");
        let (s, src, _) = native_xdp(&link("bond0", Some("bond"), 0, None), "virtual", &probes, none);
        assert_eq!((s, src), (Support::Unknown, "none"));
        // Physical devices: the kernel's per-device report, or unknown with how to find out.
        let (s, src, how) = native_xdp(&link("eth0", None, 0, None), "virtio_net", &probes, Ok(43));
        assert_eq!((s, src), (Support::Yes, "xdp-features"));
        assert!(how.contains("basic,redirect,xsk-zerocopy,rx-sg"), "{how}");
        let (s, _, _) = native_xdp(&link("eth0", None, 0, None), "e1000", &probes, Ok(0));
        assert_eq!(s, Support::No);
        let (s, src, how) = native_xdp(&link("eth0", None, 0, None), "ixgbe", &probes, none);
        assert_eq!((s, src), (Support::Unknown, "none"));
        assert!(how.contains("no netdev family") && how.contains("xdpdrv") && how.contains("ethtool -i eth0"), "{how}");
        // A kind that was not probed is not guessed either.
        let (s, src, _) = native_xdp(&link("wg0", Some("wireguard"), 0, None), "virtual", &probes, none);
        assert_eq!((s, src), (Support::Unknown, "none"));
    }

    #[test]
    fn names_features_and_kinds() {
        assert_eq!(feature_names(0), Vec::<String>::new());
        assert_eq!(feature_names(35), ["basic", "redirect", "rx-sg"]);
        assert_eq!(feature_names(1 << 9), ["bit 9"]);
        let links =
            [link("lo", None, nl::IFF_LOOPBACK, None), link("ifb0", Some("ifb"), 0, None), link("eth0", None, 0, None)];
        assert_eq!(kinds_to_probe(&links), [LOOPBACK, "veth", "bridge", "ifb"]);
    }

    /// The real probe in a throwaway namespace (root only): veth takes a native program,
    /// bridge and loopback refuse it with the kernel's message, and nothing stays behind.
    #[test]
    fn probes_native_xdp_in_a_throwaway_namespace() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping probes_native_xdp_in_a_throwaway_namespace: needs root (creates a namespace)");
            return;
        }
        let kinds: Vec<String> = [LOOPBACK, "veth", "bridge", "nosuchkind"].iter().map(|k| k.to_string()).collect();
        let probes =
            super::super::fresh_netns::in_fresh_netns("dptrace-test", super::super::fresh_netns::TIMEOUT, move || {
                let probes = probe_native_kinds(&kinds);
                let left: Vec<String> =
                    nl::Socket::open().unwrap().dump_links().unwrap().into_iter().map(|l| l.name).collect();
                (probes, left)
            });
        let (probes, left) = probes.unwrap();
        println!("{probes:#?}");
        assert_eq!(left, ["lo"], "the probe left devices behind");
        let by_kind = |k: &str| probes.iter().find(|p| p.kind == k).unwrap();
        assert_eq!(by_kind("veth").native, Support::Yes, "{:?}", by_kind("veth"));
        for refused in [LOOPBACK, "bridge"] {
            let p = by_kind(refused);
            assert_eq!((p.native, p.errno.as_deref()), (Support::No, Some("EOPNOTSUPP")), "{p:?}");
        }
        assert_eq!(by_kind("nosuchkind").native, Support::Unknown);
    }
}
