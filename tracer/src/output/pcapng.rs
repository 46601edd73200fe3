//! pcapng export of traced packet paths (`dptrace trace --path --pcap FILE`): every hop of
//! every [`PacketPath`] becomes one Enhanced Packet Block, so Wireshark shows the same packet
//! once per device it crossed, in order, with exact nanosecond timestamps.
//!
//! - One Interface Description Block per distinct (netns, ifindex, link type), declared on
//!   first use: `LINKTYPE_ETHERNET` when the hop's bytes start at an Ethernet header, else
//!   `LINKTYPE_RAW` (IPv4 or IPv6 by the version nibble). `if_name` is `DEVICE@NETNS` so
//!   `eth0` of two network namespaces stay apart; `if_tsresol` is 9 (nanoseconds).
//! - Each packet's `epb_flags` carry the direction (inbound for receive hooks, outbound for
//!   transmit hooks; none for drop and consume hooks) and its comment says which trace and
//!   hop it is, the device and netns, the time since the previous hop and since the first,
//!   the tunnel, and for the last hop the drop reason and location or the driver's return
//!   code.
//! - A hop without captured bytes (the kernel could not read the packet there) has nothing to
//!   show and is not written; [`PcapngWriter::skipped_hops`] counts those. Hop numbers in
//!   comments still count every hop of the path, so a gap shows where one was skipped.
//!
//! The original length of each packet is its length on the wire at that point, reconstructed
//! because `skb->len` counts from wherever `skb->data` points at that hook: the largest of
//! `skb->len` (plus the 14-byte Ethernet header at receive hooks, which have pulled it), the
//! length the captured IP header announces (plus the link-layer header before it), and the
//! captured length.

use std::{
    borrow::Cow,
    collections::HashMap,
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use pcap_file::{
    pcapng::{
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
            section_header::{SectionHeaderBlock, SectionHeaderOption},
        },
        PcapNgWriter,
    },
    DataLink, Endianness,
};

use crate::decode::path::{HopKind, PacketHop, PacketPath, PathStep};

/// `if_tsresol` value: timestamps in units of 10^-9 s. pcap-file writes and reads the
/// timestamp field as nanoseconds whatever the resolution, so this must stay 9.
const TSRESOL_NANOS: u8 = 9;
/// The capture length the kernel side uses for path events.
const SNAPLEN: usize = tracer_ebpf::PATH_SNAP_BYTES;
/// Ethernet header without VLAN tags.
const ETH_HLEN: u32 = 14;
/// `epb_flags` direction bits (pcapng §4.3.1).
const EPB_INBOUND: u32 = 0b01;
const EPB_OUTBOUND: u32 = 0b10;

/// One interface of the file: a device of a network namespace with one link type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct InterfaceKey {
    netns: Option<u32>,
    ifindex: u32,
    link_layer: bool,
}

/// Writes traced packet paths to a pcapng file, one packet per hop.
pub struct PcapngWriter {
    file: PathBuf,
    writer: PcapNgWriter<BufWriter<File>>,
    interfaces: HashMap<InterfaceKey, u32>,
    packets: u64,
    skipped: u64,
}

impl PcapngWriter {
    /// Creates (truncates) the file and writes the section header (shb_userappl
    /// `dptrace <version>`, shb_os and shb_hardware of this machine).
    pub fn create(path: &Path) -> Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut options =
            vec![SectionHeaderOption::UserApplication(Cow::Owned(format!("dptrace {}", env!("CARGO_PKG_VERSION"))))];
        if let Some(os) = os_description() {
            options.push(SectionHeaderOption::OS(Cow::Owned(os)));
        }
        options.push(SectionHeaderOption::Hardware(Cow::Borrowed(std::env::consts::ARCH)));
        let section = SectionHeaderBlock { endianness: Endianness::native(), options, ..Default::default() };
        let writer = PcapNgWriter::with_section_header(BufWriter::new(file), section)
            .with_context(|| format!("writing the pcapng section header to {}", path.display()))?;
        Ok(Self { file: path.to_path_buf(), writer, interfaces: HashMap::new(), packets: 0, skipped: 0 })
    }

    /// Writes every hop of the path that has captured bytes; interfaces are declared on first
    /// use.
    pub fn write_path(&mut self, path: &PacketPath) -> Result<()> {
        let hops = path.steps.len();
        for (index, step) in path.steps.iter().enumerate() {
            let hop = &step.hop;
            // Function hops (kprobes) see the same bytes as the device hops around them.
            if hop.hook == HopKind::Function {
                continue;
            }
            if hop.bytes.is_empty() {
                self.skipped += 1;
                continue;
            }
            let interface_id = self.interface(hop)?;
            let data = &hop.bytes[..hop.bytes.len().min(SNAPLEN)];
            let mut options = vec![EnhancedPacketOption::Comment(Cow::Owned(hop_comment(path, index, hops, step)))];
            if let Some(flags) = direction_flags(hop.hook) {
                options.push(EnhancedPacketOption::Flags(flags));
            }
            let block = EnhancedPacketBlock {
                interface_id,
                timestamp: Duration::from_nanos(hop.wall_ns),
                original_len: original_len(hop),
                data: Cow::Borrowed(data),
                options,
            };
            self.writer
                .write_pcapng_block(block)
                .with_context(|| format!("writing a packet to {}", self.file.display()))?;
            self.packets += 1;
        }
        Ok(())
    }

    /// Hops not written because nothing of the packet was captured there.
    pub fn skipped_hops(&self) -> u64 {
        self.skipped
    }

    /// Flushes; returns (packets written, interfaces declared).
    pub fn finish(self) -> Result<(u64, u32)> {
        let interfaces = self.interfaces.len() as u32;
        let mut out = self.writer.into_inner();
        out.flush().with_context(|| format!("writing {}", self.file.display()))?;
        Ok((self.packets, interfaces))
    }

    /// The interface id for this hop's device, declaring it if new.
    fn interface(&mut self, hop: &PacketHop) -> Result<u32> {
        let key = InterfaceKey { netns: hop.netns, ifindex: hop.ifindex, link_layer: hop.link_layer };
        if let Some(&id) = self.interfaces.get(&key) {
            return Ok(id);
        }
        let id = self.interfaces.len() as u32;
        let (linktype, frames) =
            if hop.link_layer { (DataLink::ETHERNET, "Ethernet frames") } else { (DataLink::RAW, "IP packets") };
        let netns = match (hop.netns, &hop.netns_name) {
            (Some(inode), Some(name)) => format!("netns {inode} ({name})"),
            (Some(inode), None) => format!("netns {inode}"),
            (None, _) => "netns unknown".to_string(),
        };
        let description = format!("{netns}, ifindex {}: {frames} seen by dptrace path hooks", hop.ifindex);
        let block = InterfaceDescriptionBlock {
            linktype,
            snaplen: SNAPLEN as u32,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Owned(interface_name(hop))),
                InterfaceDescriptionOption::IfDescription(Cow::Owned(description)),
                InterfaceDescriptionOption::IfTsResol(TSRESOL_NANOS),
            ],
        };
        self.writer
            .write_pcapng_block(block)
            .with_context(|| format!("writing an interface description to {}", self.file.display()))?;
        self.interfaces.insert(key, id);
        Ok(id)
    }
}

/// `Linux 6.1.0-18-amd64`, from procfs.
fn os_description() -> Option<String> {
    let read = |name: &str| std::fs::read_to_string(format!("/proc/sys/kernel/{name}")).ok();
    let os = read("ostype")?;
    let release = read("osrelease").unwrap_or_default();
    Some(format!("{} {}", os.trim(), release.trim()).trim().to_string())
}

/// The device as the comments and `if_name` show it: its name, else `ifindex N`.
fn device_label(hop: &PacketHop) -> String {
    match &hop.device {
        Some(name) if !name.is_empty() => name.clone(),
        _ => format!("ifindex {}", hop.ifindex),
    }
}

/// `DEVICE@NETNS_NAME`, `DEVICE@netns:INODE`, or `DEVICE` when the netns is unknown.
fn interface_name(hop: &PacketHop) -> String {
    let device = device_label(hop);
    match (&hop.netns_name, hop.netns) {
        (Some(name), _) => format!("{device}@{name}"),
        (None, Some(inode)) => format!("{device}@netns:{inode}"),
        (None, None) => device,
    }
}

fn direction_flags(hook: HopKind) -> Option<u32> {
    match hook {
        HopKind::Receive => Some(EPB_INBOUND),
        HopKind::Transmit | HopKind::TransmitError => Some(EPB_OUTBOUND),
        HopKind::Drop | HopKind::Consume | HopKind::Function => None,
    }
}

/// The packet's length on the wire at this hop (see the module documentation).
fn original_len(hop: &PacketHop) -> u32 {
    let pulled_l2 = if hop.link_layer && hop.hook == HopKind::Receive { ETH_HLEN } else { 0 };
    let from_skb = hop.len.saturating_add(pulled_l2);
    let from_ip = ip_wire_len(&hop.bytes, hop.link_layer).unwrap_or(0);
    from_skb.max(from_ip).max(hop.bytes.len() as u32)
}

/// Link-layer header length plus the total length the captured IP header announces.
fn ip_wire_len(bytes: &[u8], link_layer: bool) -> Option<u32> {
    let mut l3 = 0usize;
    if link_layer {
        let mut ethertype = u16::from_be_bytes([*bytes.get(12)?, *bytes.get(13)?]);
        l3 = ETH_HLEN as usize;
        // 802.1Q / 802.1ad tags.
        while ethertype == 0x8100 || ethertype == 0x88a8 {
            ethertype = u16::from_be_bytes([*bytes.get(l3 + 2)?, *bytes.get(l3 + 3)?]);
            l3 += 4;
        }
        if ethertype != 0x0800 && ethertype != 0x86dd {
            return None;
        }
    }
    let ip = bytes.get(l3..)?;
    let total = match ip.first()? >> 4 {
        4 => u32::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?])),
        6 => match u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]) {
            // A jumbogram (BIG TCP): the length is in a hop-by-hop option; trust skb->len.
            0 => return None,
            payload => 40 + u32::from(payload),
        },
        _ => return None,
    };
    Some(l3 as u32 + total)
}

/// `12.3µs`, `850ns`, `1.25ms`, `2.004s`.
fn human_ns(ns: u64) -> String {
    match ns {
        0..=999 => format!("{ns}ns"),
        1_000..=999_999 => format!("{:.1}µs", ns as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.2}ms", ns as f64 / 1e6),
        _ => format!("{:.3}s", ns as f64 / 1e9),
    }
}

/// A driver's `ndo_start_xmit` / `dev_queue_xmit` return code, with its name.
fn xmit_rc_text(rc: i32) -> String {
    let name = match rc {
        1 => Some("NET_XMIT_DROP".to_string()),
        2 => Some("NET_XMIT_CN".to_string()),
        0x10 => Some("NETDEV_TX_BUSY".to_string()),
        rc if rc < 0 => match nix::errno::Errno::from_raw(-rc) {
            nix::errno::Errno::UnknownErrno => None,
            errno => Some(format!("{errno:?}")),
        },
        _ => None,
    };
    match name {
        Some(name) => format!("{rc} ({name})"),
        None => rc.to_string(),
    }
}

/// `trace 12 hop 3/9 tx eth0 netns dptlab-1-node-a +12.3µs (+40.1µs from start); vxlan vni 1`
fn hop_comment(path: &PacketPath, index: usize, hops: usize, step: &PathStep) -> String {
    let hop = &step.hop;
    let mut text =
        format!("trace {} hop {}/{hops} {} {}", path.trace_id, index + 1, hop.hook.word(), device_label(hop));
    match (&hop.netns_name, hop.netns) {
        (Some(name), _) => text.push_str(&format!(" netns {name}")),
        (None, Some(inode)) => text.push_str(&format!(" netns {inode}")),
        (None, None) => {}
    }
    if index == 0 {
        text.push_str(" first seen");
    } else {
        text.push_str(&format!(
            " +{} (+{} from start)",
            human_ns(step.since_previous_ns),
            human_ns(step.since_start_ns)
        ));
    }
    if let Some(tunnel) = &hop.tunnel {
        text.push_str(&format!("; {} vni {}", tunnel.kind, tunnel.vni));
        if let Some(inner) = &hop.inner {
            text.push_str(&format!(" inner {inner}"));
        }
    }
    match hop.hook {
        HopKind::Drop => {
            text.push_str(&format!("; drop reason {}", hop.drop_reason.as_deref().unwrap_or("unknown")));
            if let Some(location) = &hop.location {
                text.push_str(&format!(" at {location}"));
            }
        }
        HopKind::TransmitError => match hop.xmit_rc {
            Some(rc) => text.push_str(&format!("; transmit failed rc {}", xmit_rc_text(rc))),
            None => text.push_str("; transmit failed"),
        },
        _ => {}
    }
    if let Some(task) = &hop.task {
        text.push_str(&format!(" [pid {} {}]", task.pid, task.comm));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::{
        fs::File,
        net::{IpAddr, Ipv4Addr},
        sync::atomic::{AtomicU32, Ordering},
    };

    use etherparse::PacketBuilder;
    use pcap_file::pcapng::{Block, PcapNgReader};

    use super::*;
    use crate::decode::{
        path::{PathOutcome, PathStep, Tunnel},
        Flow,
    };

    const SRC: [u8; 4] = [10, 244, 1, 2];
    const DST: [u8; 4] = [10, 244, 2, 3];
    const T0: u64 = 1_700_000_000_123_456_789;

    fn temp_file(name: &str) -> PathBuf {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        std::env::temp_dir().join(format!(
            "dptrace-test-{name}-{}-{}.pcapng",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ))
    }

    fn icmp_flow() -> Flow {
        Flow {
            l4: "icmp".into(),
            src: IpAddr::V4(Ipv4Addr::from(SRC)),
            dst: IpAddr::V4(Ipv4Addr::from(DST)),
            sport: None,
            dport: None,
            icmp_type: Some(8),
            icmp_code: Some(0),
            tcp_flags: None,
        }
    }

    /// An ICMP echo request with 56 bytes of payload: 84 bytes of IPv4, 98 with Ethernet.
    fn echo(ethernet: bool) -> Vec<u8> {
        let payload = [0x5a_u8; 56];
        let mut out = Vec::new();
        if ethernet {
            PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                .ipv4(SRC, DST, 64)
                .icmpv4_echo_request(7, 1)
                .write(&mut out, &payload)
                .unwrap();
        } else {
            PacketBuilder::ipv4(SRC, DST, 63).icmpv4_echo_request(7, 1).write(&mut out, &payload).unwrap();
        }
        out
    }

    fn hop(
        hook: HopKind,
        wall_ns: u64,
        ifindex: u32,
        device: &str,
        len: u32,
        bytes: Vec<u8>,
        link_layer: bool,
    ) -> PacketHop {
        PacketHop {
            time: "2023-11-14T22:13:20.123456Z".into(),
            ts_ns: wall_ns - T0 + 1_000_000,
            wall_ns,
            cpu: 1,
            trace_id: 12,
            hook,
            netns: Some(4026532301),
            netns_name: Some("dptlab-1-node-a".into()),
            pod: None,
            ifindex,
            device: Some(device.into()),
            len,
            outer: Some(icmp_flow()),
            tunnel: None,
            inner: None,
            drop_reason: None,
            location: None,
            xmit_rc: None,
            function: None,
            task: None,
            bytes,
            link_layer,
        }
    }

    fn step(hop: PacketHop, since_previous_ns: u64, since_start_ns: u64) -> PathStep {
        PathStep { hop, since_previous_ns, since_start_ns }
    }

    /// Received on eth0 (Ethernet), sent into wg0 (raw IP, captured truncated to 40 bytes),
    /// dropped on wg0 after `skb->data` moved past the IP header.
    fn three_hop_path() -> PacketPath {
        let mut truncated = echo(false);
        truncated.truncate(40);
        let mut drop = hop(HopKind::Drop, T0 + 52_600, 5, "wg0", 64, truncated.clone(), false);
        drop.drop_reason = Some("PKT_TOO_BIG".into());
        drop.location = Some("ip_forward+0x1b".into());
        PacketPath {
            trace_id: 12,
            flow: Some(icmp_flow()),
            steps: vec![
                step(hop(HopKind::Receive, T0, 2, "eth0", 84, echo(true), true), 0, 0),
                step(hop(HopKind::Transmit, T0 + 12_345, 5, "wg0", 84, truncated, false), 12_345, 12_345),
                step(drop, 40_255, 52_600),
            ],
            outcome: PathOutcome::Dropped {
                reason: Some("PKT_TOO_BIG".into()),
                location: Some("ip_forward+0x1b".into()),
            },
            total_ns: 52_600,
        }
    }

    fn write(name: &str, paths: &[PacketPath]) -> (PathBuf, (u64, u32), u64) {
        let file = temp_file(name);
        let mut writer = PcapngWriter::create(&file).unwrap();
        for path in paths {
            writer.write_path(path).unwrap();
        }
        let skipped = writer.skipped_hops();
        (file.clone(), writer.finish().unwrap(), skipped)
    }

    struct Packet {
        interface_id: u32,
        timestamp_ns: u128,
        original_len: u32,
        captured: usize,
        comment: Option<String>,
        flags: Option<u32>,
    }

    fn read_back(file: &Path) -> (SectionHeaderBlock<'static>, Vec<InterfaceDescriptionBlock<'static>>, Vec<Packet>) {
        let mut reader = PcapNgReader::new(File::open(file).unwrap()).unwrap();
        let mut packets = Vec::new();
        let mut interface_blocks = 0;
        while let Some(block) = reader.next_block() {
            match block.unwrap() {
                Block::InterfaceDescription(_) => interface_blocks += 1,
                Block::EnhancedPacket(epb) => packets.push(Packet {
                    interface_id: epb.interface_id,
                    timestamp_ns: epb.timestamp.as_nanos(),
                    original_len: epb.original_len,
                    captured: epb.data.len(),
                    comment: epb.options.iter().find_map(|o| match o {
                        EnhancedPacketOption::Comment(c) => Some(c.to_string()),
                        _ => None,
                    }),
                    flags: epb.options.iter().find_map(|o| match o {
                        EnhancedPacketOption::Flags(f) => Some(*f),
                        _ => None,
                    }),
                }),
                other => panic!("unexpected block {other:?}"),
            }
        }
        assert_eq!(interface_blocks, reader.interfaces().len());
        (reader.section().clone(), reader.interfaces().to_vec(), packets)
    }

    fn if_option(idb: &InterfaceDescriptionBlock, want: fn(&InterfaceDescriptionOption) -> Option<String>) -> String {
        idb.options.iter().find_map(want).unwrap_or_default()
    }

    fn if_name(idb: &InterfaceDescriptionBlock) -> String {
        if_option(idb, |o| match o {
            InterfaceDescriptionOption::IfName(n) => Some(n.to_string()),
            _ => None,
        })
    }

    #[test]
    fn writes_one_packet_per_hop_with_interfaces_and_comments() {
        let (file, (packets, interfaces), skipped) = write("hops", &[three_hop_path()]);
        let (section, idbs, got) = read_back(&file);
        std::fs::remove_file(&file).unwrap();

        assert_eq!((packets, interfaces, skipped), (3, 2, 0));
        assert!(section
            .options
            .contains(&SectionHeaderOption::UserApplication(format!("dptrace {}", env!("CARGO_PKG_VERSION")).into())));

        assert_eq!(idbs.len(), 2);
        assert_eq!(idbs[0].linktype, DataLink::ETHERNET);
        assert_eq!(idbs[1].linktype, DataLink::RAW);
        assert_eq!(u32::from(idbs[1].linktype), 101);
        assert_eq!(idbs[0].snaplen, 256);
        assert_eq!(if_name(&idbs[0]), "eth0@dptlab-1-node-a");
        assert_eq!(if_name(&idbs[1]), "wg0@dptlab-1-node-a");
        assert_eq!(
            if_option(&idbs[1], |o| match o {
                InterfaceDescriptionOption::IfDescription(d) => Some(d.to_string()),
                _ => None,
            }),
            "netns 4026532301 (dptlab-1-node-a), ifindex 5: IP packets seen by dptrace path hooks"
        );
        for idb in &idbs {
            assert!(idb.options.contains(&InterfaceDescriptionOption::IfTsResol(9)));
        }

        assert_eq!(got.len(), 3);
        assert_eq!(got.iter().map(|p| p.interface_id).collect::<Vec<_>>(), [0, 1, 1]);
        assert_eq!(
            got.iter().map(|p| p.timestamp_ns).collect::<Vec<_>>(),
            [T0 as u128, T0 as u128 + 12_345, T0 as u128 + 52_600]
        );
        // rx: skb->len 84 + the pulled Ethernet header; tx: truncated capture, skb->len;
        // drop: skb->len 64 (data past the IP header), the IP header says 84.
        assert_eq!(got.iter().map(|p| p.original_len).collect::<Vec<_>>(), [98, 84, 84]);
        assert_eq!(got.iter().map(|p| p.captured).collect::<Vec<_>>(), [98, 40, 40]);
        assert_eq!(got.iter().map(|p| p.flags).collect::<Vec<_>>(), [Some(1), Some(2), None]);
        let comments: Vec<String> = got.iter().map(|p| p.comment.clone().unwrap()).collect();
        assert_eq!(
            comments,
            [
                "trace 12 hop 1/3 rx eth0 netns dptlab-1-node-a first seen",
                "trace 12 hop 2/3 tx wg0 netns dptlab-1-node-a +12.3µs (+12.3µs from start)",
                "trace 12 hop 3/3 drop wg0 netns dptlab-1-node-a +40.3µs (+52.6µs from start); \
                 drop reason PKT_TOO_BIG at ip_forward+0x1b",
            ]
        );
    }

    #[test]
    fn skips_empty_hops_and_names_unnamed_netns() {
        let mut path = three_hop_path();
        path.trace_id = 13;
        for step in &mut path.steps {
            step.hop.netns_name = None;
            step.hop.trace_id = 13;
        }
        path.steps[0].hop.device = None;
        path.steps[1].hop.hook = HopKind::TransmitError;
        path.steps[1].hop.xmit_rc = Some(-105);
        path.steps[1].hop.tunnel = Some(Tunnel { kind: "vxlan".into(), vni: 1 });
        path.steps[1].hop.inner = Some(icmp_flow());
        path.steps[2].hop.bytes.clear();
        // The same devices (netns inode, ifindex, link type) again in a second path: no new
        // interfaces; the names are those of the first sighting.
        let (file, (packets, interfaces), skipped) = write("skip", &[path, three_hop_path()]);
        let (_, idbs, got) = read_back(&file);
        std::fs::remove_file(&file).unwrap();

        assert_eq!((packets, interfaces, skipped), (5, 2, 1));
        let names: Vec<String> = idbs.iter().map(if_name).collect();
        assert_eq!(names, ["ifindex 2@netns:4026532301", "wg0@netns:4026532301"]);
        assert_eq!(got.iter().map(|p| p.interface_id).collect::<Vec<_>>(), [0, 1, 0, 1, 1]);
        assert_eq!(got[0].comment.as_deref(), Some("trace 13 hop 1/3 rx ifindex 2 netns 4026532301 first seen"));
        assert_eq!(
            got[1].comment.as_deref(),
            Some(
                "trace 13 hop 2/3 tx-error wg0 netns 4026532301 +12.3µs (+12.3µs from start); vxlan vni 1 inner \
                 icmp 10.244.1.2 > 10.244.2.3 type 8 code 0; transmit failed rc -105 (ENOBUFS)"
            )
        );
        assert_eq!(got[1].flags, Some(2));
    }

    #[test]
    fn original_length_and_durations() {
        let mut h = hop(HopKind::Transmit, T0, 2, "eth0", 98, echo(true), true);
        assert_eq!(original_len(&h), 98);
        h.hook = HopKind::Consume;
        h.len = 64; // data at the ICMP header
        assert_eq!(original_len(&h), 98);
        h.bytes.truncate(16); // the IP total length not captured
        assert_eq!(original_len(&h), 64);
        assert_eq!(human_ns(850), "850ns");
        assert_eq!(human_ns(12_345), "12.3µs");
        assert_eq!(human_ns(1_250_000), "1.25ms");
        assert_eq!(human_ns(2_004_000_000), "2.004s");
        assert_eq!(xmit_rc_text(16), "16 (NETDEV_TX_BUSY)");
    }

    #[test]
    fn tshark_reads_the_file() {
        let tshark = Path::new("/usr/bin/tshark");
        if !tshark.exists() {
            println!("note: /usr/bin/tshark is absent; skipping the tshark check");
            return;
        }
        let (file, _, _) = write("tshark", &[three_hop_path()]);
        let output = std::process::Command::new(tshark)
            .args(["-r"])
            .arg(&file)
            .args(["-T", "fields", "-e", "frame.comment", "-e", "ip.src", "-e", "ip.dst", "-e", "frame.interface_name"])
            .output()
            .unwrap();
        std::fs::remove_file(&file).unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "tshark failed: {}", String::from_utf8_lossy(&output.stderr));
        let lines: Vec<Vec<&str>> = stdout.lines().map(|l| l.split('\t').collect()).collect();
        assert_eq!(lines.len(), 3, "tshark output:\n{stdout}");
        for (line, (hop, device)) in lines.iter().zip([("1/3 rx", "eth0"), ("2/3 tx", "wg0"), ("3/3 drop", "wg0")]) {
            assert_eq!(line.len(), 4, "{line:?}");
            assert!(line[0].starts_with(&format!("trace 12 hop {hop} {device} ")), "{line:?}");
            assert_eq!(line[1], "10.244.1.2");
            assert_eq!(line[2], "10.244.2.3");
            assert_eq!(line[3], format!("{device}@dptlab-1-node-a"));
        }
        assert!(lines[2][0].ends_with("drop reason PKT_TOO_BIG at ip_forward+0x1b"), "{:?}", lines[2]);
    }
}
