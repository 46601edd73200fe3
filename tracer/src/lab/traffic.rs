//! Test traffic for lab scenarios, sent from inside lab namespaces only.

use std::{
    io,
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    time::Duration,
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
