//! Test traffic for lab scenarios, sent from inside lab namespaces only.

use std::{
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
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
