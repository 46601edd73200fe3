//! XDP: an `RTM_GETLINK` dump (raw rtnetlink, no iproute2 needed) gives each link's kind and its
//! `IFLA_XDP` attachment (program ids and mode); the driver comes from sysfs. See [`native_xdp`]
//! for how native XDP support is judged. The dump runs in the host namespace (see
//! `host_netns.rs`); this file turns each link into its report entry.

use std::{fs, path::Path};

use serde::Serialize;

use super::{netlink as nl, Support};

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
    pub native_how: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct XdpAttachment {
    /// `native` (driver), `generic` (skb) or `offload` (hardware).
    pub mode: &'static str,
    /// The BPF program id (`bpftool prog show id N`); kernels before 4.13 do not report it.
    pub prog_id: Option<u32>,
}

pub(super) fn interface_xdp(link: nl::Link, version: (u32, u32)) -> InterfaceXdp {
    let driver = device_driver(&link.name, link.index);
    let (native, native_how) = native_xdp(&link.name, link.kind.as_deref(), &driver, version);
    InterfaceXdp {
        name: link.name,
        ifindex: link.index,
        kind: link.kind,
        driver,
        attached: link.xdp,
        native,
        native_how,
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

/// Link kinds (virtual devices) without a native XDP hook (`ndo_bpf`): XDP runs there only in
/// generic mode.
const GENERIC_ONLY_KINDS: &[&str] = &[
    "bridge",
    "dummy",
    "vxlan",
    "geneve",
    "wireguard",
    "ipip",
    "gre",
    "gretap",
    "ip6gre",
    "ip6gretap",
    "ip6tnl",
    "sit",
    "vti",
    "vti6",
    "macvlan",
    "macvtap",
    "ipvlan",
    "ipvtap",
    "vlan",
    "ifb",
    "vrf",
    "team",
    "nlmon",
    "bareudp",
];

/// Drivers known to implement native XDP upstream, with a conservative first kernel version.
/// The kernel does not say whether a driver implements `ndo_bpf` without trying an attach, so
/// this list is the only signal; an older kernel than listed may still have it through a backport.
const NATIVE_XDP_DRIVERS: &[(&str, (u32, u32))] = &[
    ("mlx4_core", (4, 8)),
    ("mlx5_core", (4, 9)),
    ("virtio_net", (4, 10)),
    ("nfp", (4, 10)),
    ("qede", (4, 10)),
    ("bnxt_en", (4, 11)),
    ("ixgbe", (4, 12)),
    ("i40e", (4, 13)),
    ("ixgbevf", (4, 17)),
    ("fsl_dpaa2_eth", (5, 0)),
    ("ice", (5, 5)),
    ("sfc", (5, 5)),
    ("mvneta", (5, 5)),
    ("ena", (5, 6)),
    ("hv_netvsc", (5, 6)),
    ("mvpp2", (5, 9)),
    ("vif", (5, 9)),
    ("igb", (5, 10)),
    ("stmmaceth", (5, 13)),
    ("igc", (5, 14)),
    ("atlantic", (5, 19)),
    ("fec", (6, 2)),
    ("gve", (6, 4)),
    ("vmxnet3", (6, 6)),
    ("ionic", (6, 9)),
];

/// Whether `name` supports native (driver-mode) XDP, and how that was judged.
///
/// Native XDP needs the driver's `ndo_bpf`, which the kernel does not expose: the only exact test
/// is attaching a program in driver mode, which dptrace will not do to a live interface. So:
/// veth (since 4.19) and tun (since 4.14) have it; the virtual kinds in [`GENERIC_ONLY_KINDS`]
/// and loopback do not; physical devices are judged by their driver against
/// [`NATIVE_XDP_DRIVERS`]; everything else is "unknown", with how to find out.
fn native_xdp(name: &str, kind: Option<&str>, driver: &str, version: (u32, u32)) -> (Support, String) {
    let since = |what: &str, first: (u32, u32)| {
        if version >= first {
            (Support::Yes, format!("{what} implements native XDP since Linux {}.{}", first.0, first.1))
        } else {
            (
                Support::No,
                format!("{what} implements native XDP only since Linux {}.{}; this kernel is older", first.0, first.1),
            )
        }
    };
    match kind {
        Some("veth") => return since("veth", (4, 19)),
        Some("tun") => return since("tun/tap", (4, 14)),
        Some("bond") => {
            return (
                Support::Unknown,
                "bonding has native XDP since Linux 5.15 only when every slave's driver has it".into(),
            )
        }
        Some(k) if GENERIC_ONLY_KINDS.contains(&k) => {
            return (Support::No, format!("{k} devices have no native XDP hook: generic (skb) mode only"))
        }
        _ => {}
    }
    if name == "lo" {
        return (Support::No, "loopback has no native XDP hook: generic (skb) mode only".into());
    }
    if let Some((_, first)) = NATIVE_XDP_DRIVERS.iter().find(|(d, _)| *d == driver) {
        let (support, how) = since(&format!("driver {driver}"), *first);
        // A driver older than its XDP support may still have it through a distribution backport.
        return if support == Support::No { (Support::Unknown, how + " (unless backported)") } else { (support, how) };
    }
    let what = match kind {
        Some(k) => format!("link kind {k}"),
        None if driver == "virtual" => "this virtual device".to_string(),
        None => format!("driver {driver}"),
    };
    (
        Support::Unknown,
        format!(
            "{what} is not in dptrace's lists; the kernel does not expose native XDP support without an attach: \
             `ip link set dev {name} xdpdrv obj PROG.o` on a test system tells"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_native_xdp() {
        let v6 = (6, 18);
        assert_eq!(native_xdp("veth0", Some("veth"), "virtual", v6).0, Support::Yes);
        assert_eq!(native_xdp("veth0", Some("veth"), "virtual", (4, 14)).0, Support::No);
        assert_eq!(native_xdp("cni0", Some("bridge"), "virtual", v6).0, Support::No);
        assert_eq!(native_xdp("lo", None, "virtual", v6).0, Support::No);
        assert_eq!(native_xdp("eth0", None, "virtio_net", v6).0, Support::Yes);
        assert_eq!(native_xdp("eth0", None, "vmxnet3", (5, 4)).0, Support::Unknown);
        let (s, how) = native_xdp("eth0", None, "e1000e", v6);
        assert_eq!(s, Support::Unknown);
        assert!(how.contains("xdpdrv"), "{how}");
    }
}
