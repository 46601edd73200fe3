//! A minimal rtnetlink client: create/delete a link with extended-ack error messages, attach and
//! detach an XDP program, and dump links with their kind and XDP state; and the one generic
//! netlink request the XDP report needs, each device's XDP features from the `netdev` family.
//! Values are the stable uapi ones from `linux/netlink.h`, `linux/rtnetlink.h`,
//! `linux/if_link.h`, `linux/genetlink.h` and `linux/netdev.h`. Raw netlink sockets, so no
//! iproute2 or ynl is needed: just what the link-kind probe (`link_kinds.rs`), the XDP probe and
//! the XDP dump (`host_netns.rs`, `xdp.rs`) use.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use super::XdpAttachment;

const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
pub const RTM_SETLINK: u16 = 19;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
/// On an NLMSG_ERROR: the echoed request is only its header.
pub const NLM_F_CAPPED: u16 = 0x100;
/// On an NLMSG_ERROR: extended-ack attributes follow.
pub const NLM_F_ACK_TLVS: u16 = 0x200;
pub const NLMSGERR_ATTR_MSG: u16 = 1;
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;

pub const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
pub const IFLA_LINKINFO: u16 = 18;
pub const IFLA_XDP: u16 = 43;
pub const IFLA_XDP_FD: u16 = 1;
pub const IFLA_XDP_FLAGS: u16 = 3;
/// `XDP_FLAGS_UPDATE_IF_NOEXIST`: never replace a program already attached.
pub const XDP_FLAGS_UPDATE_IF_NOEXIST: u32 = 1;
#[cfg(test)]
pub const XDP_FLAGS_SKB_MODE: u32 = 2;
pub const XDP_FLAGS_DRV_MODE: u32 = 4;
pub const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
pub const IFLA_XDP_ATTACHED: u16 = 2;
pub const IFLA_XDP_PROG_ID: u16 = 4;
pub const IFLA_XDP_DRV_PROG_ID: u16 = 5;
pub const IFLA_XDP_SKB_PROG_ID: u16 = 6;
pub const IFLA_XDP_HW_PROG_ID: u16 = 7;
const VETH_INFO_PEER: u16 = 1;
const IFLA_VXLAN_ID: u16 = 1;
const IFLA_VXLAN_PORT: u16 = 15;
const IFLA_GENEVE_ID: u16 = 1;
const IFLA_GENEVE_REMOTE: u16 = 2;
const IFLA_IPTUN_REMOTE: u16 = 3;
const IFLA_GRE_REMOTE: u16 = 7;
const IFLA_VLAN_ID: u16 = 1;
const IFLA_VRF_TABLE: u16 = 1;
/// `IFF_LOOPBACK` in `ifinfomsg.ifi_flags`.
pub const IFF_LOOPBACK: u32 = 0x8;

/// Generic netlink: the controller, which resolves family names, and the `netdev` family.
const NETLINK_GENERIC: libc::c_int = 16;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
const GENLMSG_HDRLEN: usize = 4;
/// TEST-NET-1 (RFC 5737): a tunnel remote that is never a real host.
const TEST_REMOTE: [u8; 4] = [192, 0, 2, 1];

#[derive(Debug)]
pub enum Error {
    /// The kernel refused: errno and its extended-ack message.
    Kernel { errno: i32, message: Option<String> },
    /// The socket or the reply failed.
    Local(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Kernel { errno, message } => {
                write!(f, "{:?}", nix::errno::Errno::from_raw(*errno))?;
                if let Some(m) = message {
                    write!(f, ": {m}")?;
                }
                Ok(())
            }
            Error::Local(e) => f.write_str(e),
        }
    }
}

/// A link from a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    /// `ifi_flags` (`IFF_UP`, `IFF_LOOPBACK`, …).
    pub flags: u32,
    pub name: String,
    pub kind: Option<String>,
    pub xdp: Option<Vec<XdpAttachment>>,
}

/// A request under construction: netlink header, `ifinfomsg`, attributes.
pub struct Message {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Message {
    fn new(msg_type: u16, flags: u16) -> Self {
        let mut buf = vec![0u8; NLMSG_HDRLEN];
        buf[4..6].copy_from_slice(&msg_type.to_ne_bytes());
        buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        Self { buf, nests: Vec::new() }
    }

    /// An rtnetlink link request: header and `ifinfomsg`.
    pub fn link(msg_type: u16, flags: u16, index: i32) -> Self {
        let mut m = Self::new(msg_type, flags);
        m.raw(&ifinfomsg(index));
        m
    }

    /// A generic netlink request to family `family`: header and `genlmsghdr` (version 1).
    pub fn generic(family: u16, flags: u16, cmd: u8) -> Self {
        let mut m = Self::new(family, flags);
        m.raw(&[cmd, 1, 0, 0]);
        m
    }

    fn raw(&mut self, data: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(data);
        self.buf.resize(align(self.buf.len()), 0);
        self
    }

    pub fn attr(&mut self, attr_type: u16, data: &[u8]) -> &mut Self {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&attr_type.to_ne_bytes());
        self.raw(data)
    }

    pub fn attr_str(&mut self, attr_type: u16, s: &str) -> &mut Self {
        let mut data = s.as_bytes().to_vec();
        data.push(0);
        self.attr(attr_type, &data)
    }

    /// Opens a nested attribute. NLA_F_NESTED is left off, as older kernels and iproute2 do.
    pub fn begin(&mut self, attr_type: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.attr(attr_type, &[])
    }

    pub fn end(&mut self) -> &mut Self {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    pub fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

fn ifinfomsg(index: i32) -> [u8; IFINFOMSG_LEN] {
    let mut m = [0u8; IFINFOMSG_LEN];
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m
}

pub fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// The RTM_NEWLINK request for a test link of `kind`, with the least each kind needs.
pub fn new_link_request(kind: &str, name: &str, lower: Option<u32>) -> Message {
    let mut m = Message::link(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, 0);
    m.attr_str(IFLA_IFNAME, name);
    if let Some(index) = lower {
        m.attr(IFLA_LINK, &index.to_ne_bytes());
    }
    m.begin(IFLA_LINKINFO);
    m.attr(IFLA_INFO_KIND, kind.as_bytes());
    match kind {
        "vxlan" => {
            m.begin(IFLA_INFO_DATA)
                .attr(IFLA_VXLAN_ID, &42u32.to_ne_bytes())
                .attr(IFLA_VXLAN_PORT, &4789u16.to_be_bytes())
                .end();
        }
        "geneve" => {
            m.begin(IFLA_INFO_DATA)
                .attr(IFLA_GENEVE_ID, &42u32.to_ne_bytes())
                .attr(IFLA_GENEVE_REMOTE, &TEST_REMOTE)
                .end();
        }
        "ipip" => {
            m.begin(IFLA_INFO_DATA).attr(IFLA_IPTUN_REMOTE, &TEST_REMOTE).end();
        }
        // Without a remote, a GRE link would clash with the namespace's fallback gre0.
        "gre" => {
            m.begin(IFLA_INFO_DATA).attr(IFLA_GRE_REMOTE, &TEST_REMOTE).end();
        }
        "vlan" => {
            m.begin(IFLA_INFO_DATA).attr(IFLA_VLAN_ID, &42u16.to_ne_bytes()).end();
        }
        "vrf" => {
            m.begin(IFLA_INFO_DATA).attr(IFLA_VRF_TABLE, &4242u32.to_ne_bytes()).end();
        }
        "veth" => {
            // The peer ("x0" gets "x1") is an ifinfomsg followed by its attributes.
            let peer = format!("{}1", name.strip_suffix('0').unwrap_or(name));
            m.begin(IFLA_INFO_DATA).begin(VETH_INFO_PEER).raw(&ifinfomsg(0)).attr_str(IFLA_IFNAME, &peer).end().end();
        }
        _ => {}
    }
    m.end();
    m
}

/// Attributes in `data`, with the NLA_F_NESTED/NET_BYTEORDER flags masked off the type.
pub fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let attr_type = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            return None;
        }
        let payload = &data[4..len];
        data = &data[align(len).min(data.len())..];
        Some((attr_type, payload))
    })
}

/// Netlink messages in one datagram: (type, flags, seq, payload).
pub fn messages(mut buf: &[u8]) -> impl Iterator<Item = (u16, u16, u32, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(buf[0..4].try_into().ok()?) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return None;
        }
        let msg_type = u16::from_ne_bytes([buf[4], buf[5]]);
        let flags = u16::from_ne_bytes([buf[6], buf[7]]);
        let seq = u32::from_ne_bytes(buf[8..12].try_into().ok()?);
        let payload = &buf[NLMSG_HDRLEN..len];
        buf = &buf[align(len).min(buf.len())..];
        Some((msg_type, flags, seq, payload))
    })
}

/// An NLMSG_ERROR payload: `Ok` for an ack, else errno and the extended-ack message.
pub fn parse_ack(flags: u16, payload: &[u8]) -> Result<(), Error> {
    let errno = payload
        .get(0..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| Error::Local("truncated netlink error message".into()))?;
    if errno == 0 {
        return Ok(());
    }
    let mut message = None;
    if flags & NLM_F_ACK_TLVS != 0 {
        // After the errno comes the request's header, or (not capped) the whole request.
        let echoed = if flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            payload.get(4..8).map_or(NLMSG_HDRLEN, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize)
        };
        if let Some(tlvs) = payload.get(4 + align(echoed)..) {
            message = attrs(tlvs).find(|(t, _)| *t == NLMSGERR_ATTR_MSG).map(|(_, m)| c_string(m));
        }
    }
    Err(Error::Kernel { errno: -errno, message })
}

fn c_string(data: &[u8]) -> String {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).trim().to_string()
}

/// One RTM_NEWLINK message of a dump.
pub fn parse_link(payload: &[u8]) -> Option<Link> {
    let index = u32::from_ne_bytes(payload.get(4..8)?.try_into().ok()?);
    let flags = u32::from_ne_bytes(payload.get(8..12)?.try_into().ok()?);
    let mut link = Link { index, flags, name: String::new(), kind: None, xdp: None };
    for (attr_type, data) in attrs(payload.get(IFINFOMSG_LEN..)?) {
        match attr_type {
            IFLA_IFNAME => link.name = c_string(data),
            IFLA_LINKINFO => {
                link.kind = attrs(data).find(|(t, _)| *t == IFLA_INFO_KIND).map(|(_, k)| c_string(k));
            }
            IFLA_XDP => link.xdp = Some(parse_xdp(data)),
            _ => {}
        }
    }
    Some(link)
}

/// The nested IFLA_XDP attribute: XDP_ATTACHED_{NONE, DRV, SKB, HW, MULTI} = 0..4.
pub fn parse_xdp(data: &[u8]) -> Vec<XdpAttachment> {
    let (mut attached, mut prog, mut drv, mut skb, mut hw) = (0u8, None, None, None, None);
    for (attr_type, value) in attrs(data) {
        let id = value.get(0..4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
        match attr_type {
            IFLA_XDP_ATTACHED => attached = value.first().copied().unwrap_or(0),
            IFLA_XDP_PROG_ID => prog = id,
            IFLA_XDP_DRV_PROG_ID => drv = id,
            IFLA_XDP_SKB_PROG_ID => skb = id,
            IFLA_XDP_HW_PROG_ID => hw = id,
            _ => {}
        }
    }
    let one = |mode| vec![XdpAttachment { mode, prog_id: prog }];
    match attached {
        0 => Vec::new(),
        1 => one("native"),
        2 => one("generic"),
        3 => one("offload"),
        _ => [("native", drv), ("generic", skb), ("offload", hw)]
            .into_iter()
            .filter(|(_, id)| id.is_some())
            .map(|(mode, prog_id)| XdpAttachment { mode, prog_id })
            .collect(),
    }
}

pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    /// A NETLINK_ROUTE socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        Self::open_protocol(libc::NETLINK_ROUTE)
    }

    /// A NETLINK_GENERIC socket in the calling thread's network namespace.
    pub fn open_generic() -> io::Result<Self> {
        Self::open_protocol(NETLINK_GENERIC)
    }

    fn open_protocol(protocol: libc::c_int) -> io::Result<Self> {
        // SAFETY: socket(2) with constant arguments; the descriptor is owned right away.
        let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // Extended acks carry the kernel's message ("Unknown device type"); kernels before
        // 4.12 lack them, which only loses the message.
        for option in [NETLINK_EXT_ACK, NETLINK_CAP_ACK] {
            set_option(&fd, SOL_NETLINK, option, &1 as *const libc::c_int as *const libc::c_void, 4);
        }
        // Never hang `dptrace check`; a module autoload can take a moment, though.
        let timeout = libc::timeval { tv_sec: 10, tv_usec: 0 };
        set_option(
            &fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &timeout as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        Ok(Self { fd, seq: 0 })
    }

    fn send(&mut self, message: Message) -> Result<u32, Error> {
        self.seq += 1;
        let buf = message.finish(self.seq);
        // SAFETY: `buf` is valid for its length; an unconnected netlink socket sends to the kernel.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
        if sent < 0 {
            return Err(Error::Local(format!("send: {}", io::Error::last_os_error())));
        }
        Ok(self.seq)
    }

    fn recv(&self, buf: &mut [u8]) -> Result<usize, Error> {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(Error::Local(format!("recv: {}", io::Error::last_os_error())));
        }
        Ok(n as usize)
    }

    /// Sends a request and hands each reply message of it (type, payload) to `each`, until its
    /// acknowledgement (requests with NLM_F_ACK), the end of a dump, or an error.
    fn exchange(&mut self, message: Message, mut each: impl FnMut(u16, &[u8])) -> Result<(), Error> {
        let seq = self.send(message)?;
        let mut buf = vec![0u8; 65536];
        loop {
            let n = self.recv(&mut buf)?;
            if n == 0 {
                return Err(Error::Local("the kernel closed the exchange without an answer".into()));
            }
            for (msg_type, flags, msg_seq, payload) in messages(&buf[..n]) {
                if msg_seq != seq {
                    continue;
                }
                match msg_type {
                    NLMSG_ERROR => return parse_ack(flags, payload),
                    NLMSG_DONE => return Ok(()),
                    _ => each(msg_type, payload),
                }
            }
        }
    }

    /// Sends a request with NLM_F_ACK and waits for its acknowledgement.
    pub fn transact(&mut self, message: Message) -> Result<(), Error> {
        self.exchange(message, |_, _| {})
    }

    pub fn create_link(&mut self, kind: &str, name: &str, lower: Option<u32>) -> Result<(), Error> {
        self.transact(new_link_request(kind, name, lower))
    }

    pub fn delete_link(&mut self, name: &str) -> Result<(), Error> {
        let mut m = Message::link(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, 0);
        m.attr_str(IFLA_IFNAME, name);
        self.transact(m)
    }

    /// Every link of the socket's namespace.
    pub fn dump_links(&mut self) -> Result<Vec<Link>, Error> {
        let mut links = Vec::new();
        self.exchange(Message::link(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, 0), |msg_type, payload| {
            if msg_type == RTM_NEWLINK {
                links.extend(parse_link(payload));
            }
        })?;
        Ok(links)
    }

    /// Attaches the XDP program `fd` to link `index` with `flags` (XDP_FLAGS_*), or detaches the
    /// program of that mode when `fd` is -1.
    pub fn set_xdp(&mut self, index: u32, fd: i32, flags: u32) -> Result<(), Error> {
        let mut m = Message::link(RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, index as i32);
        m.begin(IFLA_XDP).attr(IFLA_XDP_FD, &fd.to_ne_bytes()).attr(IFLA_XDP_FLAGS, &flags.to_ne_bytes()).end();
        self.transact(m)
    }

    /// The id of generic netlink family `name` (a generic socket); ENOENT when the kernel has none.
    pub fn family_id(&mut self, name: &str) -> Result<u16, Error> {
        let mut m = Message::generic(GENL_ID_CTRL, NLM_F_REQUEST | NLM_F_ACK, CTRL_CMD_GETFAMILY);
        m.attr_str(CTRL_ATTR_FAMILY_NAME, name);
        let mut id = None;
        self.exchange(m, |msg_type, payload| {
            if msg_type == GENL_ID_CTRL {
                id = id.or_else(|| parse_family_id(payload));
            }
        })?;
        id.ok_or_else(|| Error::Local(format!("the controller's answer for {name} has no family id")))
    }

    /// (ifindex, XDP features) of every device of the socket's namespace (a generic socket),
    /// from the `netdev` family's `dev-get` dump. The features are `NETDEV_XDP_ACT_*` bits.
    pub fn netdev_xdp_features(&mut self, family: u16) -> Result<Vec<(u32, u64)>, Error> {
        let mut devices = Vec::new();
        self.exchange(
            Message::generic(family, NLM_F_REQUEST | NLM_F_DUMP, NETDEV_CMD_DEV_GET),
            |msg_type, payload| {
                if msg_type == family {
                    devices.extend(parse_netdev_dev(payload));
                }
            },
        )?;
        Ok(devices)
    }
}

/// CTRL_ATTR_FAMILY_ID of a controller answer (after its `genlmsghdr`).
fn parse_family_id(payload: &[u8]) -> Option<u16> {
    attrs(payload.get(GENLMSG_HDRLEN..)?)
        .find(|(t, _)| *t == CTRL_ATTR_FAMILY_ID)
        .and_then(|(_, v)| Some(u16::from_ne_bytes(v.get(0..2)?.try_into().ok()?)))
}

/// One `netdev` `dev-get` answer: (ifindex, XDP features); none without both attributes.
pub fn parse_netdev_dev(payload: &[u8]) -> Option<(u32, u64)> {
    let (mut index, mut features) = (None, None);
    for (attr_type, value) in attrs(payload.get(GENLMSG_HDRLEN..)?) {
        match attr_type {
            NETDEV_A_DEV_IFINDEX => index = value.get(0..4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
            NETDEV_A_DEV_XDP_FEATURES => {
                features = value.get(0..8).and_then(|b| b.try_into().ok()).map(u64::from_ne_bytes)
            }
            _ => {}
        }
    }
    Some((index?, features?))
}

fn set_option(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: *const libc::c_void, len: libc::socklen_t) {
    // SAFETY: `value` points to `len` readable bytes for the duration of the call. Failure
    // only loses an optional feature.
    unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, value, len) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An NLMSG_ERROR datagram as the kernel sends it with NETLINK_CAP_ACK and NETLINK_EXT_ACK.
    fn error_datagram(errno: i32, message: &str) -> Vec<u8> {
        let mut payload = (-errno).to_ne_bytes().to_vec();
        payload.extend_from_slice(&Message::link(RTM_NEWLINK, 0, 0).finish(7)[..16]);
        let mut text = message.as_bytes().to_vec();
        text.push(0);
        payload.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
        payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend_from_slice(&text);
        payload.resize(align(payload.len()), 0);
        let mut datagram = ((16 + payload.len()) as u32).to_ne_bytes().to_vec();
        datagram.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        datagram.extend_from_slice(&(NLM_F_CAPPED | NLM_F_ACK_TLVS).to_ne_bytes());
        datagram.extend_from_slice(&7u32.to_ne_bytes());
        datagram.extend_from_slice(&0u32.to_ne_bytes());
        datagram.extend_from_slice(&payload);
        datagram
    }

    #[test]
    fn parses_extended_acks() {
        let datagram = error_datagram(libc::EOPNOTSUPP, "Unknown device type");
        let (msg_type, flags, seq, payload) = messages(&datagram).next().unwrap();
        assert_eq!((msg_type, seq), (NLMSG_ERROR, 7));
        match parse_ack(flags, payload) {
            Err(Error::Kernel { errno, message }) => {
                assert_eq!(errno, libc::EOPNOTSUPP);
                assert_eq!(message.as_deref(), Some("Unknown device type"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(parse_ack(0, &0i32.to_ne_bytes()).is_ok());
        // Without ext-ack flags, only the errno.
        assert!(matches!(
            parse_ack(0, &(-libc::EEXIST).to_ne_bytes()),
            Err(Error::Kernel { errno: libc::EEXIST, message: None })
        ));
        assert!(matches!(parse_ack(0, &[1, 2]), Err(Error::Local(_))));
    }

    #[test]
    fn parses_generic_netlink_answers() {
        let mut dev = Message::generic(20, 0, NETDEV_CMD_DEV_GET);
        dev.attr(NETDEV_A_DEV_IFINDEX, &4u32.to_ne_bytes()).attr(NETDEV_A_DEV_XDP_FEATURES, &43u64.to_ne_bytes());
        let payload = dev.finish(1)[NLMSG_HDRLEN..].to_vec();
        assert_eq!(payload[..GENLMSG_HDRLEN], [NETDEV_CMD_DEV_GET, 1, 0, 0]);
        assert_eq!(parse_netdev_dev(&payload), Some((4, 43)));
        // A device without its XDP features (or a truncated answer) gives nothing.
        assert_eq!(parse_netdev_dev(&payload[..12]), None);
        assert_eq!(parse_netdev_dev(&payload[..2]), None);

        let mut ctrl = Message::generic(GENL_ID_CTRL, 0, 1);
        ctrl.attr_str(CTRL_ATTR_FAMILY_NAME, "netdev").attr(CTRL_ATTR_FAMILY_ID, &20u16.to_ne_bytes());
        assert_eq!(parse_family_id(&ctrl.finish(1)[NLMSG_HDRLEN..]), Some(20));
    }

    /// An RTM_NEWLINK payload as a dump returns it.
    fn link_payload(index: i32, name: &str, kind: Option<&str>, xdp: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut m = Message::link(RTM_NEWLINK, 0, index);
        m.attr_str(IFLA_IFNAME, name);
        if let Some(kind) = kind {
            m.begin(IFLA_LINKINFO).attr(IFLA_INFO_KIND, kind.as_bytes()).end();
        }
        m.begin(IFLA_XDP);
        for (attr_type, value) in xdp {
            m.attr(*attr_type, value);
        }
        m.end();
        m.finish(1)[16..].to_vec()
    }

    #[test]
    fn parses_links_and_xdp_state() {
        let payload = link_payload(
            4,
            "veth1",
            Some("veth"),
            &[(IFLA_XDP_ATTACHED, vec![1]), (IFLA_XDP_PROG_ID, 77u32.to_ne_bytes().to_vec())],
        );
        let link = parse_link(&payload).unwrap();
        assert_eq!(link.index, 4);
        assert_eq!(link.name, "veth1");
        assert_eq!(link.kind.as_deref(), Some("veth"));
        assert_eq!(link.xdp, Some(vec![XdpAttachment { mode: "native", prog_id: Some(77) }]));

        let none = parse_link(&link_payload(1, "lo", None, &[(IFLA_XDP_ATTACHED, vec![0])])).unwrap();
        assert_eq!((none.kind, none.xdp), (None, Some(vec![])));

        let multi = parse_link(&link_payload(
            2,
            "eth0",
            None,
            &[
                (IFLA_XDP_ATTACHED, vec![4]),
                (IFLA_XDP_DRV_PROG_ID, 5u32.to_ne_bytes().to_vec()),
                (IFLA_XDP_SKB_PROG_ID, 6u32.to_ne_bytes().to_vec()),
            ],
        ))
        .unwrap();
        assert_eq!(
            multi.xdp,
            Some(vec![
                XdpAttachment { mode: "native", prog_id: Some(5) },
                XdpAttachment { mode: "generic", prog_id: Some(6) }
            ])
        );
        // Truncated input yields nothing rather than panicking.
        assert!(parse_link(&payload[..3]).is_none());
        assert_eq!(attrs(&[8, 0, 1, 0, 1]).count(), 0);
    }
}
