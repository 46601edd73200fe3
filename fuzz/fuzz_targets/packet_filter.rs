//! `--filter EXPR` (`packet_filter`): the tokenizer, the parser and the conversion to the
//! kernel's fixed-size form.
//!
//! The input is the expression, optionally followed by a NUL byte and bytes that describe
//! extra packets (40 bytes each). Properties:
//! - parsing never panics, and an error names a column inside the text (or none at the end);
//! - the explicit grouping (`grouped()`) parses back (unless its parentheses nest deeper
//!   than the parser allows) to an expression with the same grouping and the same verdict
//!   on every packet;
//! - the kernel part is an over-approximation: every packet the expression matches, the
//!   kernel's evaluation (the reference implementation of the eBPF side) matches too, and
//!   when the kernel part is said to be exact the two agree on every packet;
//! - the kernel part never uses more clauses than the kernel has.
//!
//! Packets are built from the addresses and numbers in the expression (so that they hit its
//! hosts, networks and ports) and from the bytes after the NUL.

#![no_main]

use std::net::IpAddr;

use dptrace::{
    decode::Flow,
    packet_filter::{kernel_matches, PacketFilter},
};
use libfuzzer_sys::fuzz_target;
use tracer_ebpf::FILTER_CLAUSES;

const L4: [&str; 7] = ["tcp", "udp", "icmp", "icmpv6", "sctp", "proto-47", "proto-0"];

fn flow(l4: &str, src: IpAddr, dst: IpAddr, ports: Option<(u16, u16)>) -> Flow {
    let ports = ports.filter(|_| matches!(l4, "tcp" | "udp" | "sctp"));
    Flow {
        l4: l4.to_string(),
        src,
        dst,
        sport: ports.map(|p| p.0),
        dport: ports.map(|p| p.1),
        icmp_type: None,
        icmp_code: None,
        tcp_flags: None,
    }
}

/// Packets to try: every protocol between the expression's addresses (and neighbours of
/// them) with its ports, plus the packets described after the NUL.
fn flows(text: &str, extra: &[u8]) -> Vec<Flow> {
    let mut v4: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap()];
    let mut v6: Vec<IpAddr> = vec!["fd00::1".parse().unwrap()];
    let mut ports: Vec<u16> = vec![80];
    for word in text.split(|c: char| c.is_whitespace() || "()!&|".contains(c)) {
        let (addr, range) = match word.split_once(['/', '-']) {
            Some((a, b)) => (a, Some(b)),
            None => (word, None),
        };
        if let Ok(a) = addr.parse::<IpAddr>() {
            // The address, and one that differs in its last bit (outside a /N where N = all bits).
            let flipped = match a {
                IpAddr::V4(a) => IpAddr::V4((u32::from(a) ^ 1).into()),
                IpAddr::V6(a) => IpAddr::V6((u128::from(a) ^ 1).into()),
            };
            let list = if a.is_ipv4() { &mut v4 } else { &mut v6 };
            list.extend([a, flipped]);
        } else if let Ok(p) = addr.parse::<u16>() {
            ports.extend([p, p.wrapping_add(1), p.wrapping_sub(1)]);
        }
        if let Some(p) = range.and_then(|r| r.parse::<u16>().ok()) {
            ports.extend([p, p.wrapping_add(1)]);
        }
    }
    for list in [&mut v4, &mut v6] {
        list.sort();
        list.dedup();
        list.truncate(6);
    }
    ports.sort_unstable();
    ports.dedup();
    ports.truncate(6);
    let mut out = Vec::new();
    for addrs in [&v4, &v6] {
        for (i, src) in addrs.iter().enumerate() {
            let dst = addrs[(i + 1) % addrs.len()];
            for (j, l4) in L4.iter().enumerate() {
                let sport = ports[j % ports.len()];
                let dport = ports[(i + j + 1) % ports.len()];
                out.push(flow(l4, *src, dst, Some((sport, dport))));
                out.push(flow(l4, dst, *src, Some((dport, sport))));
            }
        }
    }
    for b in extra.chunks_exact(40).take(16) {
        let l4 = L4[usize::from(b[0]) % L4.len()];
        let v6 = b[1] & 1 == 1;
        let addr = |x: &[u8]| -> IpAddr {
            if v6 {
                IpAddr::from(<[u8; 16]>::try_from(x).unwrap())
            } else {
                IpAddr::from(<[u8; 4]>::try_from(&x[..4]).unwrap())
            }
        };
        let ports = (b[1] & 2 == 2).then(|| (u16::from_le_bytes([b[2], b[3]]), u16::from_le_bytes([b[4], b[5]])));
        out.push(flow(l4, addr(&b[6..22]), addr(&b[22..38]), ports));
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let (text, extra) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else { return };
    let filter = match PacketFilter::parse(text) {
        Ok(f) => f,
        Err(e) => {
            if let Some(column) = e.column {
                assert!(column >= 1 && column <= text.chars().count(), "column {column} outside {text:?}: {e}");
            }
            return;
        }
    };
    let grouped = filter.grouped();
    // The explicit form can exceed the parser's limits where the text did not: its
    // parentheses nest deeper (a chain of 66 alternating `and`/`or` has 65 levels) and it
    // spells out compound primitives (`tcp port 80` is `tcp and port 80`: two). Those are
    // the only reasons the grouping may fail to parse back.
    let again = match PacketFilter::parse(&grouped) {
        Ok(again) => Some(again),
        Err(e) if e.message.contains("nested deeper than") || e.message.contains("primitives") => None,
        Err(e) => panic!("{text:?} grouped as {grouped:?}: {e}"),
    };
    if let Some(again) = &again {
        assert_eq!(again.grouped(), grouped, "the grouping of {text:?} is not stable");
    }
    let kernel = filter.kernel_part();
    assert!(kernel.clauses as usize <= FILTER_CLAUSES);
    for flow in flows(text, extra) {
        let exact = filter.matches(&flow);
        if let Some(again) = &again {
            assert_eq!(again.matches(&flow), exact, "{text:?} and its grouping {grouped:?} disagree on {flow}");
        }
        let in_kernel = kernel_matches(&kernel, &flow);
        assert!(!exact || in_kernel, "{text:?}: the kernel part ({}) misses {flow}", kernel.description);
        if kernel.exact {
            assert_eq!(in_kernel, exact, "{text:?}: the kernel part ({}) is not exact for {flow}", kernel.description);
        }
    }
});
