//! Link control-plane records → events: rtnetlink requests parsed with netlink-packet-route,
//! the kernel's acks (errno) and extended-ack messages, each with its actor.

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    RouteNetlinkMessage,
};
use serde::{Deserialize, Serialize};
use tracer_ebpf::{EventKind, NetlinkEvent};

use super::{c_string, Decoder, Word};

/// Who made a request: the process, its parent and its network namespace.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Actor {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub parent_pid: Option<u32>,
    pub parent_comm: Option<String>,
    pub netns: Option<u32>,
    pub netns_name: Option<String>,
    /// The pod whose network namespace the task is in (`pod_uid` is the pod of its cgroup):
    /// its UID, and namespace and name when the container runtime (crictl) knows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<crate::pods::Pod>,
    /// The task's cgroup (v2) path, and the pod and container it names, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pid {}", self.comm, self.pid)?;
        if let (Some(ppid), Some(pcomm)) = (self.parent_pid, &self.parent_comm) {
            write!(f, ", parent {pcomm} {ppid}")?;
        }
        match (&self.netns_name, self.netns) {
            (Some(name), _) => write!(f, ", netns {name}")?,
            (None, Some(inode)) => write!(f, ", netns {inode}")?,
            _ => {}
        }
        if let Some(pod) = &self.pod {
            write!(f, " pod {pod}")?;
        }
        match (&self.pod_uid, &self.container, &self.cgroup) {
            // The namespace's pod is the task's own: only its container is left to say.
            (Some(uid), Some(c), _) if self.pod.as_ref().is_some_and(|p| &p.uid == uid) => {
                write!(f, ", container {c}")?
            }
            (Some(uid), None, _) if self.pod.as_ref().is_some_and(|p| &p.uid == uid) => {}
            (Some(pod), container, _) => {
                write!(f, ", pod {pod}{}", container.as_ref().map(|c| format!(" container {c}")).unwrap_or_default())?
            }
            (None, Some(c), _) => write!(f, ", container {c}")?,
            (None, None, Some(cg)) if cg != "/" => write!(f, ", cgroup {cg}")?,
            _ => {}
        }
        f.write_str(")")
    }
}

/// An rtnetlink link request (`ip link add/set/del`, a CNI plugin, udev, ...).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkRequest {
    pub time: String,
    pub ts_ns: u64,
    /// `create`, `change` or `delete`.
    pub op: Word,
    pub seq: u32,
    pub ifname: Option<String>,
    pub ifindex: Option<u32>,
    /// The link kind asked for (`IFLA_INFO_KIND`): wireguard, vxlan, veth, ... (not `kind`:
    /// that key names the event type in JSON).
    pub link_kind: Option<String>,
    /// The MAC address being set, if any.
    pub mac: Option<String>,
    /// For veth: the peer's name, and where the peer is created (`pid N` or `fd N`).
    pub peer: Option<String>,
    pub peer_netns: Option<String>,
    /// `up` or `down` when the request changes the administrative state.
    pub admin: Option<Word>,
    /// The new name, for a rename.
    pub new_name: Option<String>,
    /// Where the link is moved to (`IFLA_NET_NS_PID`/`_FD`), as `pid N` or `fd N`.
    pub to_netns: Option<String>,
    /// An XDP attach or detach (`IFLA_XDP`), if the request carries one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xdp: Option<XdpRequest>,
    /// `netlink` or `ioctl`.
    pub via: Word,
    /// The request did not fit the captured bytes and could not be parsed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    pub actor: Actor,
}

/// An XDP attach (or detach: `fd` -1) asked for over netlink.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct XdpRequest {
    pub fd: i32,
    /// `native` (XDP_FLAGS_DRV_MODE), `generic` (SKB_MODE), `offload` (HW_MODE) or `any`
    /// (no mode flag: the kernel picks native when the driver has it, else generic).
    pub mode: Word,
    pub flags: u32,
    /// XDP_FLAGS_UPDATE_IF_NOEXIST: fail if a program is already attached.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub if_noexist: bool,
}

/// The XDP mode an `XDP_FLAGS_*` value asks for (UAPI `if_link.h`).
pub fn xdp_mode(flags: u32) -> &'static str {
    match flags & 0xe {
        2 => "generic",
        4 => "native",
        8 => "offload",
        _ => "any",
    }
}

/// The kernel's answer to a request of the same thread.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetlinkAck {
    pub time: String,
    pub ts_ns: u64,
    pub seq: u32,
    /// 0 for success, else the positive errno.
    pub errno: i32,
    /// `EOPNOTSUPP`, `EEXIST`, ...
    pub error: Option<String>,
    pub actor: Actor,
}

/// The kernel's extended-ack text for the current request of a thread.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KernelMessage {
    pub time: String,
    pub ts_ns: u64,
    pub message: String,
    pub actor: Actor,
}

/// The state of a link after a change, from the rtnetlink monitor: whoever changed it and
/// however (netlink, ioctl, the kernel itself).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkState {
    pub time: String,
    pub ts_ns: u64,
    /// `new` (created or changed) or `deleted`.
    pub change: Word,
    pub netns: u32,
    pub netns_name: Option<String>,
    /// The pod whose network namespace this is: its UID, and namespace and name when the
    /// container runtime (crictl) knows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<crate::pods::Pod>,
    pub ifindex: u32,
    pub ifname: Option<String>,
    pub link_kind: Option<String>,
    pub mac: Option<String>,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// Carrier (IFF_LOWER_UP).
    pub carrier: bool,
    /// The attached XDP program (`native prog 42`, `generic prog 7`, `none`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xdp: Option<String>,
}

/// The kernel asked for a module (`requested`, e.g. `rtnl-link-wireguard` while creating a
/// wireguard link) or loaded one (`loaded`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModuleEvent {
    pub time: String,
    pub ts_ns: u64,
    pub action: Word,
    pub module: String,
    pub actor: Actor,
}

/// One link event, decoded.
// Transient: each is moved into an `Event` right away, so boxing would only add allocations.
#[allow(clippy::large_enum_variant)]
pub enum LinkEvent {
    Request(LinkRequest),
    Ack(NetlinkAck),
    Message(KernelMessage),
    Module(ModuleEvent),
}

impl Decoder {
    /// The actor of an event: the task in its header plus what the kernel side read.
    pub(super) fn actor(&mut self, h: &tracer_ebpf::EventHeader, a: &tracer_ebpf::Actor) -> Actor {
        let actor = Actor {
            pid: h.pid,
            tid: h.tid,
            comm: c_string(&h.comm),
            parent_pid: (a.parent_pid != 0).then_some(a.parent_pid),
            parent_comm: (a.parent_pid != 0).then(|| c_string(&a.parent_comm)),
            netns: (a.netns != 0).then_some(a.netns),
            netns_name: self.netns.name(a.netns).map(str::to_string),
            pod: None,
            cgroup: None,
            pod_uid: None,
            container: None,
        };
        self.with_cgroup(actor, a.cgroup_id)
    }

    /// The name of `ifindex` in the actor's namespace, if the namespace can still be entered
    /// (named, the host's, or ours); cached, as agents repeat their requests.
    fn ifname(&mut self, actor: &Actor, ifindex: u32) -> Option<String> {
        let netns = actor.netns?;
        if let Some(name) = self.ifnames.get(&(netns, ifindex)) {
            return Some(name.clone());
        }
        let path = self.netns_path(netns)?;
        let name = crate::kernel::netns::ifname_in(&path, ifindex)?;
        if self.ifnames.len() > 4096 {
            self.ifnames.clear();
        }
        self.ifnames.insert((netns, ifindex), name.clone());
        Some(name)
    }

    pub(super) fn decode_netlink(&mut self, raw: &NetlinkEvent) -> Option<LinkEvent> {
        let h = &raw.header;
        let time = self.time(h.ts_ns);
        let actor = self.actor(h, &raw.actor);
        let data = &raw.data[..(raw.len as usize).min(raw.data.len())];
        match h.kind {
            k if k == EventKind::NetlinkRequest as u16 => {
                let mut request = parse_request(data, time, h.ts_ns, actor)?;
                // iproute2 and most agents name the device by index only when changing it.
                if request.ifname.is_none() {
                    request.ifname = request.ifindex.and_then(|i| self.ifname(&request.actor, i));
                }
                Some(LinkEvent::Request(request))
            }
            k if k == EventKind::NetlinkAck as u16 => {
                let (seq, errno) = parse_ack(data)?;
                let error = (errno != 0).then(|| format!("{:?}", nix::errno::Errno::from_raw(errno)));
                Some(LinkEvent::Ack(NetlinkAck { time, ts_ns: h.ts_ns, seq, errno, error, actor }))
            }
            k if k == EventKind::IoctlRequest as u16 => {
                Some(LinkEvent::Request(parse_ioctl(raw.aux, data, time, h.ts_ns, actor)?))
            }
            k if k == EventKind::RtnlResult as u16 && data.len() >= 8 => {
                let seq = u32::from_ne_bytes(data[0..4].try_into().ok()?);
                let ret = i32::from_ne_bytes(data[4..8].try_into().ok()?);
                let errno = if ret < 0 { -ret } else { 0 };
                let error = (errno != 0).then(|| format!("{:?}", nix::errno::Errno::from_raw(errno)));
                Some(LinkEvent::Ack(NetlinkAck { time, ts_ns: h.ts_ns, seq, errno, error, actor }))
            }
            k if k == EventKind::ModuleRequest as u16 || k == EventKind::ModuleLoad as u16 => {
                let module = String::from_utf8_lossy(data).trim_end_matches('\0').to_string();
                let action = if k == EventKind::ModuleRequest as u16 { "requested" } else { "loaded" };
                Some(LinkEvent::Module(ModuleEvent { time, ts_ns: h.ts_ns, action: action.into(), module, actor }))
            }
            k if k == EventKind::NetlinkExtack as u16 => {
                let message = String::from_utf8_lossy(data).trim_end_matches('\0').to_string();
                Some(LinkEvent::Message(KernelMessage { time, ts_ns: h.ts_ns, message, actor }))
            }
            _ => None,
        }
    }
}

impl Decoder {
    /// Adds the cgroup path, pod and container of cgroup `id` to `actor`.
    fn with_cgroup(&mut self, mut actor: Actor, id: u64) -> Actor {
        if let Some(path) = self.cgroups.path(id) {
            let pod = crate::kernel::cgroups::pod_ref(path);
            actor.cgroup = Some(path.to_string());
            actor.pod_uid = pod.pod_uid;
            actor.container = pod.container;
        }
        actor
    }

    /// Decodes one notification of the rtnetlink monitor.
    pub fn decode_monitor(&mut self, record: &crate::probes::link_monitor::MonitorRecord) -> Option<LinkState> {
        let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&record.bytes).ok()?;
        let (change, link) = match message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => ("new", l),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => ("deleted", l),
            _ => return None,
        };
        let mut request = empty_request();
        fill_from_link(&mut request, &link);
        Some(LinkState {
            time: self.time(record.ts_ns),
            ts_ns: record.ts_ns,
            change: change.into(),
            netns: record.netns,
            netns_name: self.netns.name(record.netns).map(str::to_string),
            pod: None,
            ifindex: link.header.index,
            ifname: request.ifname,
            link_kind: request.link_kind,
            mac: request.mac,
            up: link.header.flags.contains(LinkFlags::Up),
            carrier: link.header.flags.contains(LinkFlags::LowerUp),
            xdp: attached_xdp(&link),
        })
    }
}

/// The XDP program attached to a link as the kernel reports it (`IFLA_XDP_ATTACHED` and
/// the program id): `native prog 42`, `generic prog 7`, `none`; None when not reported.
fn attached_xdp(link: &netlink_packet_route::link::LinkMessage) -> Option<String> {
    use netlink_packet_route::link::{LinkXdp, XdpAttached};
    let xdp = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Xdp(x) => Some(x),
        _ => None,
    })?;
    let mut mode = None;
    let mut prog = None;
    for attr in xdp {
        match attr {
            LinkXdp::Attached(XdpAttached::None) => mode = Some("none"),
            LinkXdp::Attached(XdpAttached::Driver) => mode = Some("native"),
            LinkXdp::Attached(XdpAttached::SocketBuffer) => mode = Some("generic"),
            LinkXdp::Attached(XdpAttached::Hardware) => mode = Some("offload"),
            LinkXdp::Attached(XdpAttached::Multiple) => mode = Some("multiple"),
            LinkXdp::ProgId(id) => prog = Some(*id),
            _ => {}
        }
    }
    Some(match (mode?, prog) {
        ("none", _) => "none".to_string(),
        (m, Some(id)) => format!("{m} prog {id}"),
        (m, None) => m.to_string(),
    })
}

fn empty_request() -> LinkRequest {
    LinkRequest {
        time: String::new(),
        ts_ns: 0,
        op: "change".into(),
        seq: 0,
        ifname: None,
        ifindex: None,
        link_kind: None,
        mac: None,
        peer: None,
        peer_netns: None,
        admin: None,
        new_name: None,
        to_netns: None,
        xdp: None,
        via: "netlink".into(),
        truncated: false,
        actor: Actor {
            pid: 0,
            tid: 0,
            comm: String::new(),
            parent_pid: None,
            parent_comm: None,
            netns: None,
            netns_name: None,
            pod: None,
            cgroup: None,
            pod_uid: None,
            container: None,
        },
    }
}

/// Parses a captured link request. A request longer than the capture is parsed as far as
/// its header; its attributes are then unknown (`truncated`).
pub fn parse_request(data: &[u8], time: String, ts_ns: u64, actor: Actor) -> Option<LinkRequest> {
    if data.len() < 16 {
        return None;
    }
    let seq = u32::from_ne_bytes(data[8..12].try_into().ok()?);
    let mut request = LinkRequest { time, ts_ns, seq, actor, ..empty_request() };
    let message = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(data) {
        Ok(m) => m,
        Err(_) => {
            request.truncated = true;
            request.op = match u16::from_ne_bytes(data[4..6].try_into().ok()?) {
                16 => "create",
                17 => "delete",
                _ => "change",
            }
            .into();
            return Some(request);
        }
    };
    let (op, link) = match message.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
            // RTM_NEWLINK creates only with NLM_F_CREATE; otherwise it modifies.
            let create = message.header.flags & 0x400 != 0;
            (if create { "create" } else { "change" }, l)
        }
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::SetLink(l)) => ("change", l),
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => ("delete", l),
        _ => return None,
    };
    request.op = op.into();
    fill_from_link(&mut request, &link);
    Some(request)
}

fn fill_from_link(request: &mut LinkRequest, link: &LinkMessage) {
    request.ifindex = (link.header.index != 0).then_some(link.header.index);
    if link.header.change_mask.contains(LinkFlags::Up) {
        request.admin = Some(if link.header.flags.contains(LinkFlags::Up) { "up" } else { "down" }.into());
    }
    for attr in &link.attributes {
        match attr {
            LinkAttribute::IfName(name) => request.ifname = Some(name.clone()),
            LinkAttribute::NetNsPid(pid) => request.to_netns = Some(format!("pid {pid}")),
            LinkAttribute::NetNsFd(fd) => request.to_netns = Some(format!("fd {fd}")),
            LinkAttribute::Address(mac) => request.mac = Some(format_mac(mac)),
            LinkAttribute::Xdp(xdp) => {
                use netlink_packet_route::link::LinkXdp;
                let mut x = XdpRequest { fd: -1, mode: "any".into(), flags: 0, if_noexist: false };
                for attr in xdp {
                    match attr {
                        LinkXdp::Fd(fd) => x.fd = *fd,
                        LinkXdp::Flags(flags) => {
                            x.flags = *flags;
                            x.mode = xdp_mode(*flags).into();
                            x.if_noexist = flags & 1 != 0;
                        }
                        _ => {}
                    }
                }
                request.xdp = Some(x);
            }
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => request.link_kind = Some(kind.to_string()),
                        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))) => {
                            for a in &peer.attributes {
                                match a {
                                    LinkAttribute::IfName(n) => request.peer = Some(n.clone()),
                                    LinkAttribute::NetNsPid(pid) => request.peer_netns = Some(format!("pid {pid}")),
                                    LinkAttribute::NetNsFd(fd) => request.peer_netns = Some(format!("fd {fd}")),
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

/// A link-changing ioctl's `struct ifreq`: the name, then the union (hwaddr sockaddr, flags
/// or new name).
pub fn parse_ioctl(cmd: u32, ifreq: &[u8], time: String, ts_ns: u64, actor: Actor) -> Option<LinkRequest> {
    const IFNAMSIZ: usize = 16;
    if ifreq.len() < IFNAMSIZ + 16 {
        return None;
    }
    let name = |bytes: &[u8]| super::c_string(bytes);
    let mut request = LinkRequest {
        time,
        ts_ns,
        ifname: Some(name(&ifreq[..IFNAMSIZ])),
        via: "ioctl".into(),
        actor,
        ..empty_request()
    };
    let union = &ifreq[IFNAMSIZ..];
    match cmd {
        // struct sockaddr: sa_family (2 bytes), then the address.
        0x8924 => request.mac = Some(format_mac(&union[2..8])),
        0x8914 => {
            let flags = i16::from_ne_bytes([union[0], union[1]]);
            request.admin = Some(if flags & nix::libc::IFF_UP as i16 != 0 { "up" } else { "down" }.into());
        }
        0x8923 => request.new_name = Some(name(&union[..16])),
        _ => return None,
    }
    Some(request)
}

/// `(seq of the answered request, errno)` from an NLMSG_ERROR message.
pub fn parse_ack(data: &[u8]) -> Option<(u32, i32)> {
    // nlmsghdr (16) | error code (i32) | the request's nlmsghdr (16): seq at 8..12 of it.
    if data.len() < 36 {
        return None;
    }
    let code = i32::from_ne_bytes(data[16..20].try_into().ok()?);
    let seq = u32::from_ne_bytes(data[28..32].try_into().ok()?);
    // A negative errno, or 0 for success; i32::MIN is no errno (and cannot be negated).
    Some((seq, code.checked_neg()?))
}

pub fn format_mac(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NetlinkHeader, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};
    use netlink_packet_route::link::InfoKind;

    fn actor() -> Actor {
        Actor { pid: 1, tid: 1, comm: "ip".into(), ..empty_request().actor }
    }

    fn bytes(msg: RouteNetlinkMessage, flags: u16, seq: u32) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        m.finalize();
        let mut buf = vec![0; m.buffer_len()];
        m.serialize(&mut buf);
        buf
    }

    #[test]
    fn parses_a_wireguard_create_like_ip_link_add() {
        let mut link = LinkMessage::default();
        link.attributes.push(LinkAttribute::IfName("flannel-wg".into()));
        link.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Wireguard)]));
        let data = bytes(RouteNetlinkMessage::NewLink(link), NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, 77);
        let r = parse_request(&data, "t".into(), 1, actor()).unwrap();
        assert_eq!(
            (r.op.as_ref(), r.seq, r.ifname.as_deref(), r.link_kind.as_deref()),
            ("create", 77, Some("flannel-wg"), Some("wireguard"))
        );
    }

    #[test]
    fn parses_a_mac_change_and_an_ack() {
        let mut link = LinkMessage::default();
        link.header.index = 5;
        link.attributes.push(LinkAttribute::Address(vec![0x02, 0, 0, 0, 0, 0x42]));
        let data = bytes(RouteNetlinkMessage::SetLink(link), NLM_F_REQUEST | NLM_F_ACK, 9);
        let r = parse_request(&data, "t".into(), 1, actor()).unwrap();
        assert_eq!((r.op.as_ref(), r.ifindex, r.mac.as_deref()), ("change", Some(5), Some("02:00:00:00:00:42")));
        let mut ack = vec![0u8; 36];
        ack[16..20].copy_from_slice(&(-95i32).to_ne_bytes());
        ack[28..32].copy_from_slice(&9u32.to_ne_bytes());
        assert_eq!(parse_ack(&ack), Some((9, 95)));
        assert_eq!(parse_ack(&ack[..20]), None);
        // Found by fuzzing (fuzz/ decode): an error code of i32::MIN overflowed its negation.
        let mut bogus = ack.clone();
        bogus[16..20].copy_from_slice(&i32::MIN.to_ne_bytes());
        assert_eq!(parse_ack(&bogus), None);
    }

    #[test]
    fn parses_link_ioctls() {
        let mut ifreq = [0u8; 40];
        ifreq[..5].copy_from_slice(b"veth0");
        ifreq[16..18].copy_from_slice(&1u16.to_ne_bytes());
        ifreq[18..24].copy_from_slice(&[2, 0, 0, 0, 0, 7]);
        let r = parse_ioctl(0x8924, &ifreq, "t".into(), 1, actor()).unwrap();
        assert_eq!(
            (r.ifname.as_deref(), r.mac.as_deref(), r.via.as_ref()),
            (Some("veth0"), Some("02:00:00:00:00:07"), "ioctl")
        );
        ifreq[16..18].copy_from_slice(&0i16.to_ne_bytes());
        assert_eq!(parse_ioctl(0x8914, &ifreq, "t".into(), 1, actor()).unwrap().admin.as_deref(), Some("down"));
        assert!(parse_ioctl(0x1234, &ifreq, "t".into(), 1, actor()).is_none());
        assert!(parse_ioctl(0x8924, &ifreq[..20], "t".into(), 1, actor()).is_none());
    }

    #[test]
    fn truncated_requests_keep_their_operation() {
        let mut link = LinkMessage::default();
        link.attributes.push(LinkAttribute::IfName("x".into()));
        let data = bytes(RouteNetlinkMessage::NewLink(link), NLM_F_REQUEST | NLM_F_CREATE, 3);
        let r = parse_request(&data[..20], "t".into(), 1, actor()).unwrap();
        assert!(r.truncated);
        assert_eq!(r.op, "create");
    }
}
