//! Test traffic for lab scenarios, sent from inside lab namespaces only.

use std::{
    collections::BTreeMap,
    io::{self, IoSliceMut},
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use etherparse::{IcmpEchoHeader, Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::netns::in_netns;

const PAYLOAD: &[u8] = b"dptrace lab";

/// Sends `count` UDP datagrams from namespace `netns` to `dst:port`.
pub fn udp(netns: &str, dst: IpAddr, port: u16, count: usize) -> anyhow::Result<()> {
    in_netns(netns, || {
        let bind: SocketAddr = if dst.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
        let socket = UdpSocket::bind(bind)?;
        for _ in 0..count {
            socket.send_to(PAYLOAD, (dst, port))?;
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(())
    })
}

/// Sends `count` ICMP (or ICMPv6) echo requests from namespace `netns` to `dst`, like ping,
/// without waiting for replies.
pub fn ping(netns: &str, dst: IpAddr, count: u16) -> anyhow::Result<()> {
    in_netns(netns, || {
        let (domain, protocol) =
            if dst.is_ipv4() { (Domain::IPV4, Protocol::ICMPV4) } else { (Domain::IPV6, Protocol::ICMPV6) };
        let socket = Socket::new(domain, Type::RAW, Some(protocol))?;
        let target = SockAddr::from(SocketAddr::new(dst, 0));
        for seq in 1..=count {
            let echo = IcmpEchoHeader { id: std::process::id() as u16, seq };
            let packet = if dst.is_ipv4() {
                Icmpv4Header::with_checksum(Icmpv4Type::EchoRequest(echo), PAYLOAD)
                    .to_bytes()
                    .iter()
                    .chain(PAYLOAD)
                    .copied()
                    .collect::<Vec<u8>>()
            } else {
                // Raw ICMPv6 sockets have the kernel fill in the checksum (RFC 3542).
                Icmpv6Header::new(Icmpv6Type::EchoRequest(echo))
                    .to_bytes()
                    .iter()
                    .chain(PAYLOAD)
                    .copied()
                    .collect::<Vec<u8>>()
            };
            socket
                .send_to(&packet, &target)
                .map_err(|e| io::Error::new(e.kind(), format!("send echo request to {dst}: {e}")))?;
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(())
    })
}

/// What a TCP client saw when it connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectOutcome {
    Connected,
    /// ECONNREFUSED: a TCP RST (or ICMP port unreachable) answered the SYN.
    Refused,
    /// ECONNRESET.
    Reset,
    /// No answer in time.
    TimedOut,
    /// Any other error, as the OS words it.
    Other(String),
}

impl std::fmt::Display for ConnectOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectOutcome::Connected => f.write_str("connected"),
            ConnectOutcome::Refused => f.write_str("connection refused (ECONNREFUSED)"),
            ConnectOutcome::Reset => f.write_str("connection reset by peer (ECONNRESET)"),
            ConnectOutcome::TimedOut => f.write_str("timed out (ETIMEDOUT)"),
            ConnectOutcome::Other(e) => f.write_str(e),
        }
    }
}

impl From<io::Error> for ConnectOutcome {
    fn from(e: io::Error) -> Self {
        match (e.kind(), e.raw_os_error()) {
            (io::ErrorKind::ConnectionRefused, _) => ConnectOutcome::Refused,
            (io::ErrorKind::ConnectionReset, _) => ConnectOutcome::Reset,
            (io::ErrorKind::TimedOut, _) | (_, Some(libc::ETIMEDOUT)) => ConnectOutcome::TimedOut,
            _ => ConnectOutcome::Other(e.to_string()),
        }
    }
}

/// Connects over TCP from namespace `netns` to `dst`, giving up after `timeout`; closes the
/// connection again if it was made.
pub fn tcp_connect(netns: &str, dst: SocketAddr, timeout: Duration) -> anyhow::Result<ConnectOutcome> {
    in_netns(netns, || {
        let socket = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
        Ok(match socket.connect_timeout(&SockAddr::from(dst), timeout) {
            Ok(()) => ConnectOutcome::Connected,
            Err(e) => ConnectOutcome::from(e),
        })
    })
}

/// A TCP listener on `addr` in namespace `netns` (it stays in that namespace). The kernel
/// completes handshakes for it without anyone calling accept().
pub fn tcp_listen(netns: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    in_netns(netns, || {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_reuse_address(true)?;
        socket.bind(&SockAddr::from(addr)).map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
        socket.listen(16)?;
        Ok(TcpListener::from(socket))
    })
}

/// How [`ping_wait`] pings, as `ping` options.
#[derive(Debug, Clone)]
pub struct PingOptions {
    /// `-c`
    pub count: u16,
    /// `-s`: ICMP payload bytes; the IPv4 packet is 28 bytes more.
    pub payload: usize,
    /// `-M do`: DF set, and never fragmented here.
    pub dont_fragment: bool,
    /// `-i`
    pub interval: Duration,
    /// `-W`: how long to wait for the last answers.
    pub wait: Duration,
}

impl PingOptions {
    /// The `ping` command line these options stand for.
    pub fn command(&self, dst: Ipv4Addr) -> String {
        let df = if self.dont_fragment { "-M do " } else { "" };
        format!("ping {df}-c {} -s {} {dst}", self.count, self.payload)
    }
}

/// What [`ping_wait`] saw, and what `ping` would have printed.
#[derive(Debug, Clone, Default)]
pub struct PingResult {
    /// One line per answer or error, as iputils `ping` words them, and its statistics line.
    pub lines: Vec<String>,
    pub transmitted: u16,
    pub received: u16,
    pub errors: u16,
    /// The MTU named by "fragmentation needed" answers (ICMP type 3 code 4).
    pub frag_needed_mtu: Option<u32>,
    /// The path MTU of local EMSGSIZE errors (the packet did not fit a path MTU learned before).
    pub local_mtu: Option<u32>,
}

/// Sends `count` ICMP echo requests from namespace `netns` to `dst`, `interval` apart, and
/// collects the replies and errors (ICMP errors and local ones, through IP_RECVERR) as `ping`
/// does. Uses an ICMP datagram ("ping") socket, so `net.ipv4.ping_group_range` in `netns` must
/// allow root's group.
pub fn ping_wait(netns: &str, dst: Ipv4Addr, options: &PingOptions) -> anyhow::Result<PingResult> {
    in_netns(netns, || Pinger::new(dst, options)?.run())
}

/// Room for the control messages of one datagram (IP_TTL, IP_RECVERR), with some to spare.
const CMSG_BYTES: usize = 256;

struct Pinger<'a> {
    socket: Socket,
    dst: Ipv4Addr,
    options: &'a PingOptions,
    sent: BTreeMap<u16, Instant>,
    result: PingResult,
}

impl<'a> Pinger<'a> {
    fn new(dst: Ipv4Addr, options: &'a PingOptions) -> io::Result<Self> {
        use nix::sys::socket::{setsockopt, sockopt};
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4)).map_err(|e| {
            io::Error::new(e.kind(), format!("ICMP echo socket (does net.ipv4.ping_group_range allow gid 0?): {e}"))
        })?;
        setsockopt(&socket, sockopt::Ipv4RecvErr, &true)?;
        setsockopt(&socket, sockopt::Ipv4RecvTtl, &true)?;
        if options.dont_fragment {
            let value: libc::c_int = libc::IP_PMTUDISC_DO;
            // SAFETY: `value` is a c_int that lives through the call, and its size is passed.
            let rc = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_MTU_DISCOVER,
                    (&value as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        socket.set_read_timeout(Some(Duration::from_millis(10)))?;
        Ok(Self { socket, dst, options, sent: BTreeMap::new(), result: PingResult::default() })
    }

    fn run(mut self) -> io::Result<PingResult> {
        let payload: Vec<u8> = (0..self.options.payload).map(|i| (i % 256) as u8).collect();
        let target = SockAddr::from(SocketAddrV4::new(self.dst, 0));
        for seq in 1..=self.options.count {
            // The kernel puts the socket's identifier and the checksum in.
            let echo = IcmpEchoHeader { id: 0, seq };
            let packet: Vec<u8> =
                Icmpv4Header::new(Icmpv4Type::EchoRequest(echo)).to_bytes().iter().chain(&payload).copied().collect();
            self.result.transmitted += 1;
            match self.socket.send_to(&packet, &target) {
                Ok(_) => {
                    self.sent.insert(seq, Instant::now());
                }
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                    // ip_local_error() queued the path MTU that refused it.
                    self.drain_errors()?;
                    self.result.errors += 1;
                    let mtu = self.result.local_mtu.map(|m| format!(", mtu={m}")).unwrap_or_default();
                    self.result.lines.push(format!("ping: local error: message too long{mtu} (icmp_seq={seq})"));
                }
                Err(e) => return Err(io::Error::new(e.kind(), format!("send echo request to {}: {e}", self.dst))),
            }
            let last = seq == self.options.count;
            let until = Instant::now() + if last { self.options.wait } else { self.options.interval };
            self.collect(until, last)?;
        }
        let r = &mut self.result;
        let loss = 100 * u32::from(r.transmitted - r.received.min(r.transmitted)) / u32::from(r.transmitted.max(1));
        let errors = if r.errors > 0 { format!(", +{} errors", r.errors) } else { String::new() };
        r.lines.push(format!(
            "{} packets transmitted, {} received{errors}, {loss}% packet loss",
            r.transmitted, r.received
        ));
        Ok(self.result)
    }

    /// Reads answers and errors until `until`; with `last`, stops early once every request
    /// sent has its answer.
    fn collect(&mut self, until: Instant, last: bool) -> io::Result<()> {
        while Instant::now() < until {
            self.drain_errors()?;
            if last && self.sent.is_empty() {
                break;
            }
            self.receive()?;
        }
        Ok(())
    }

    /// One echo reply, or nothing within the socket's read timeout.
    fn receive(&mut self) -> io::Result<()> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrIn};
        let mut buf = vec![0u8; 65536];
        let mut cmsg = vec![0u8; CMSG_BYTES];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = match recvmsg::<SockaddrIn>(self.socket.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty()) {
            Ok(msg) => msg,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => return Ok(()),
            // The error an ICMP error left on the socket; its details are in the error queue.
            Err(nix::errno::Errno::EMSGSIZE | nix::errno::Errno::EHOSTUNREACH | nix::errno::Errno::ENETUNREACH) => {
                return Ok(())
            }
            Err(e) => return Err(e.into()),
        };
        let ttl = msg.cmsgs().ok().into_iter().flatten().find_map(|c| match c {
            ControlMessageOwned::Ipv4Ttl(ttl) => Some(ttl),
            _ => None,
        });
        let from = msg.address.map(|a| a.ip().to_string()).unwrap_or_else(|| "?".into());
        let bytes = msg.bytes;
        let data = &buf[..bytes];
        // An echo reply: type 0, the sequence number at bytes 6..8.
        if bytes < 8 || data[0] != 0 {
            return Ok(());
        }
        let seq = u16::from_be_bytes([data[6], data[7]]);
        let Some(sent) = self.sent.remove(&seq) else {
            return Ok(());
        };
        self.result.received += 1;
        let ttl = ttl.map(|t| format!(" ttl={t}")).unwrap_or_default();
        let ms = sent.elapsed().as_secs_f64() * 1000.0;
        self.result.lines.push(format!("{bytes} bytes from {from}: icmp_seq={seq}{ttl} time={ms:.3} ms"));
        Ok(())
    }

    /// Reads the socket's error queue: ICMP errors about requests sent, local errors.
    fn drain_errors(&mut self) -> io::Result<()> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrIn};
        loop {
            let mut buf = vec![0u8; 2048];
            // IP_RECVERR's error and offender, after the IP_TTL the kernel adds for ICMP errors.
            let mut cmsg = vec![0u8; CMSG_BYTES];
            let mut iov = [IoSliceMut::new(&mut buf)];
            let flags = MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT;
            let msg = match recvmsg::<SockaddrIn>(self.socket.as_raw_fd(), &mut iov, Some(&mut cmsg), flags) {
                Ok(msg) => msg,
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            let bytes = msg.bytes;
            let errors: Vec<_> = msg
                .cmsgs()
                .ok()
                .into_iter()
                .flatten()
                .filter_map(|c| match c {
                    ControlMessageOwned::Ipv4RecvErr(err, from) => Some((err, from)),
                    _ => None,
                })
                .collect();
            for (err, from) in errors {
                match err.ee_origin {
                    libc::SO_EE_ORIGIN_LOCAL => self.result.local_mtu = Some(err.ee_info),
                    libc::SO_EE_ORIGIN_ICMP => {
                        // The request the error is about: its ICMP header, as quoted.
                        let data = &buf[..bytes];
                        let seq = (bytes >= 8).then(|| u16::from_be_bytes([data[6], data[7]]));
                        if let Some(seq) = seq {
                            self.sent.remove(&seq);
                        }
                        self.result.errors += 1;
                        let from = from
                            .map(|a| Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)).to_string())
                            .unwrap_or_else(|| "?".into());
                        let seq = seq.map_or_else(|| "?".to_string(), |s| s.to_string());
                        let what = match (err.ee_type, err.ee_code) {
                            (3, 4) => {
                                self.result.frag_needed_mtu = Some(err.ee_info);
                                format!("Frag needed and DF set (mtu = {})", err.ee_info)
                            }
                            (3, 0) => "Destination Net Unreachable".to_string(),
                            (3, 1) => "Destination Host Unreachable".to_string(),
                            (3, 3) => "Destination Port Unreachable".to_string(),
                            (11, _) => "Time to live exceeded".to_string(),
                            (t, c) => format!("ICMP type {t} code {c}"),
                        };
                        self.result.lines.push(format!("From {from} icmp_seq={seq} {what}"));
                    }
                    _ => {}
                }
            }
        }
    }
}
