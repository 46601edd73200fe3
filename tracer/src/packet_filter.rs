//! `--filter EXPR` of `dptrace trace --path`: a pcap-filter (tcpdump) style expression over
//! packet headers.
//!
//! What runs where:
//! - Userspace parses the text ([`PacketFilter::parse`]: a small tokenizer and a
//!   recursive-descent parser) and evaluates the whole expression exactly against each decoded
//!   header set ([`PacketFilter::matches`]) before a packet is reported.
//! - The kernel (`tracer-ebpf/src/path.rs`) evaluates [`KernelFilter`], copied into
//!   `PathConfig::filter`: a fixed-size conjunctive normal form of at most
//!   [`FILTER_CLAUSES`] clauses of [`FILTER_TERMS`] terms each. It is an over-approximation of
//!   the expression (every packet the expression accepts, it accepts too), exact when
//!   [`KernelFilter::exact`] says so. [`kernel_matches`] is the reference implementation of the
//!   kernel's evaluation; the eBPF side must behave the same.
//!
//! Grammar (keywords are case-insensitive, as in tcpdump):
//!
//! ```text
//! expr      := unary (("and" | "&&" | "or" | "||") unary)*
//! unary     := ("not" | "!") unary | "(" expr ")" | primitive
//! primitive := [dir] "host" ADDR | dir ADDR | [dir] "net" ADDR/LEN | [dir] "net" IPV4 "mask" IPV4
//!            | [dir] "port" N | [dir] "portrange" N-M
//!            | ("tcp" | "udp" | "sctp") [[dir] ("port" N | "portrange" N-M)]
//!            | ("ip" | "ip6") [[dir] ("host" ADDR | "net" …) | dir ADDR | "proto" P]
//!            | "icmp" | "icmp6" | "proto" P
//! dir       := "src" | "dst" | "src or dst" | "src and dst"
//! ```
//!
//! Precedence, as in tcpdump (pcap-filter(7)): `not` binds tightest; `and` and `or` have the
//! same precedence and group left to right, so `host A or host B and tcp` is
//! `(host A or host B) and tcp`. [`PacketFilter::grouped`] shows the grouping explicitly.
//!
//! Meanings: `port` matches packets with both ports (TCP, UDP; SCTP as far as the decoder
//! reads its ports), so `not port 80` matches ICMP. `icmp` is IPv4 protocol 1 and `icmp6` IPv6
//! protocol 58; `ip`/`ip6` are the IP version; `proto N` is protocol N of either version and
//! `ip proto N`/`ip6 proto N` of one. `tcp port 80` is `tcp and port 80`; `ip host A` is
//! `host A` (an address already implies its version).
//!
//! Not supported, with an error that says what to write instead: tcpdump's implicit
//! repetition (`host A or B`: write `host A or host B`), service and host names, `net A`
//! without a prefix length, and link-layer or byte-offset primitives.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr},
};

use tracer_ebpf::{filter_kind, filter_side, FilterTerm, FILTER_CLAUSES, FILTER_TERMS};

use crate::decode::Flow;

/// Most clauses kept while converting to CNF; beyond it the least selective are dropped
/// (which only widens the kernel part).
const CNF_CAP: usize = 64;
/// Widest clause kept while converting. The kernel takes [`FILTER_TERMS`]; wider clauses are
/// kept only because a narrower one may subsume them later (which keeps the result exact).
const WIDTH_CAP: usize = 16;
/// Limits that keep recursion bounded on hostile or accidental input.
const MAX_PRIMITIVES: usize = 256;
const MAX_DEPTH: usize = 64;

/// A `--filter` expression that could not be parsed; the message names the token, its column
/// and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--filter: {message}")]
pub struct FilterError {
    pub message: String,
    /// 1-based column (in characters) of the offending token; `None` at the end of the text.
    pub column: Option<usize>,
}

/// A parsed `--filter` expression and its original text.
#[derive(Debug, Clone)]
pub struct PacketFilter {
    text: String,
    expr: Expr,
}

/// The part of a filter the kernel evaluates (see [`kernel_matches`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelFilter {
    pub terms: [[FilterTerm; FILTER_TERMS]; FILTER_CLAUSES],
    pub clauses: u32,
    /// The kernel part is the whole expression (nothing was left to userspace).
    pub exact: bool,
    /// Human description, e.g. "kernel: host 10.0.0.1 and (icmp or port 53); userspace: the
    /// whole expression again".
    pub description: String,
}

/// The parsed expression. Every primitive is a kernel term (with `negate` 0) or a conjunction
/// of them, so userspace and kernel evaluate primitives with the same function.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    Term(FilterTerm),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

impl PacketFilter {
    pub fn parse(text: &str) -> Result<Self, FilterError> {
        let tokens = tokenize(text)?;
        let mut parser = Parser { text, tokens, pos: 0, depth: 0, primitives: 0, last: None };
        let expr = parser.parse_all()?;
        Ok(Self { text: text.to_string(), expr })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The expression with its grouping made explicit, e.g. `(host 10.0.0.1 or host 10.0.0.2)
    /// and tcp` for `host 10.0.0.1 or host 10.0.0.2 and tcp`.
    pub fn grouped(&self) -> String {
        self.expr.to_string()
    }

    /// Exact evaluation against one header set.
    pub fn matches(&self, flow: &Flow) -> bool {
        self.expr.eval(flow)
    }

    /// The part the kernel evaluates.
    pub fn kernel_part(&self) -> KernelFilter {
        let mut cnf = to_cnf(&self.expr, false);
        cnf.clauses.sort_by(rank);
        let mut exact = cnf.exact;
        let mut kept: Vec<Clause> = Vec::new();
        for clause in cnf.clauses {
            if clause.len() <= FILTER_TERMS && kept.len() < FILTER_CLAUSES {
                kept.push(clause);
            } else {
                exact = false;
            }
        }
        let mut terms = [[FilterTerm::default(); FILTER_TERMS]; FILTER_CLAUSES];
        for (row, clause) in terms.iter_mut().zip(&kept) {
            row[..clause.len()].copy_from_slice(clause);
        }
        let kernel = kept
            .iter()
            .map(|c| {
                let text = c.iter().map(term_text).collect::<Vec<_>>().join(" or ");
                if c.len() > 1 && kept.len() > 1 {
                    format!("({text})")
                } else {
                    text
                }
            })
            .collect::<Vec<_>>()
            .join(" and ");
        let description = match (kept.is_empty(), exact) {
            (false, true) => format!("kernel: {kernel} (the whole expression)"),
            (true, true) => "kernel: every packet (the expression matches every packet)".to_string(),
            (false, false) => format!("kernel: {kernel}; userspace: the whole expression again"),
            (true, false) => "kernel: every packet; userspace: the whole expression".to_string(),
        };
        KernelFilter { terms, clauses: kept.len() as u32, exact, description }
    }
}

impl fmt::Display for PacketFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Reference implementation of the kernel's evaluation (the eBPF side in
/// tracer-ebpf/src/path.rs must behave the same); used by tests.
///
/// A packet matches when, for each of the first `clauses` rows, at least one used term
/// (`kind != NONE`) matches; `clauses == 0` matches everything. A term of unknown kind never
/// matches.
pub fn kernel_matches(k: &KernelFilter, flow: &Flow) -> bool {
    let clauses = (k.clauses as usize).min(FILTER_CLAUSES);
    k.terms[..clauses].iter().all(|row| row.iter().any(|t| t.kind != filter_kind::NONE && term_matches(t, flow)))
}

// ---------------------------------------------------------------------------------------------
// Evaluation (shared by userspace and the kernel reference)

/// One term, `negate` applied.
fn term_matches(t: &FilterTerm, flow: &Flow) -> bool {
    if !matches!(t.kind, filter_kind::PROTO | filter_kind::FAMILY | filter_kind::ADDR | filter_kind::PORT) {
        return false;
    }
    primitive_matches(t, flow) != (t.negate != 0)
}

fn primitive_matches(t: &FilterTerm, flow: &Flow) -> bool {
    let family = family_of(&flow.src);
    match t.kind {
        filter_kind::PROTO => flow_proto(flow) == Some(t.proto) && (t.family == 0 || t.family == family),
        filter_kind::FAMILY => family == t.family,
        filter_kind::ADDR => {
            let hit = |a: &IpAddr| {
                let bytes = octets(a);
                let bits = (t.prefix as usize).min(bytes.len() * 8);
                prefix_eq(&bytes, &t.addr, bits)
            };
            family == t.family
                && match t.side {
                    filter_side::SRC => hit(&flow.src),
                    filter_side::DST => hit(&flow.dst),
                    _ => hit(&flow.src) || hit(&flow.dst),
                }
        }
        filter_kind::PORT => match (flow.sport, flow.dport) {
            (Some(sport), Some(dport)) => {
                let hit = |p: u16| (t.port_lo..=t.port_hi).contains(&p);
                match t.side {
                    filter_side::SRC => hit(sport),
                    filter_side::DST => hit(dport),
                    _ => hit(sport) || hit(dport),
                }
            }
            _ => false,
        },
        _ => false,
    }
}

/// IP protocol number of a decoded flow (`tcp`, `udp`, `icmp`, `icmpv6`, `sctp`, `proto-N`).
fn flow_proto(flow: &Flow) -> Option<u8> {
    match flow.l4.strip_prefix("proto-") {
        Some(n) => n.parse().ok(),
        None => PROTOCOLS.iter().find(|(name, _)| *name == flow.l4).map(|&(_, n)| n),
    }
}

fn family_of(addr: &IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 4,
        IpAddr::V6(_) => 6,
    }
}

fn octets(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The first `bits` bits of `a` and `b` are equal (`bits <= 8 * a.len()`).
fn prefix_eq(a: &[u8], b: &[u8], bits: usize) -> bool {
    let (full, rest) = (bits / 8, bits % 8);
    if a[..full] != b[..full] {
        return false;
    }
    let mask = if rest == 0 { 0 } else { 0xffu8 << (8 - rest) };
    rest == 0 || a[full] & mask == b[full] & mask
}

impl Expr {
    fn eval(&self, flow: &Flow) -> bool {
        match self {
            Expr::Term(t) => term_matches(t, flow),
            Expr::Not(e) => !e.eval(flow),
            Expr::And(a, b) => a.eval(flow) && b.eval(flow),
            Expr::Or(a, b) => a.eval(flow) || b.eval(flow),
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let binary = |e: &Expr| matches!(e, Expr::And(..) | Expr::Or(..));
        match self {
            Expr::Term(t) => f.write_str(&term_text(t)),
            Expr::Not(e) if binary(e) => write!(f, "not ({e})"),
            Expr::Not(e) => write!(f, "not {e}"),
            Expr::And(a, b) | Expr::Or(a, b) => {
                let op = if matches!(self, Expr::And(..)) { "and" } else { "or" };
                // Same operator: associative, no parentheses needed. Mixed: made explicit.
                let mixed = |e: &Expr| binary(e) && std::mem::discriminant(self) != std::mem::discriminant(e);
                for (i, e) in [a, b].into_iter().enumerate() {
                    if i == 1 {
                        write!(f, " {op} ")?;
                    }
                    if mixed(e) {
                        write!(f, "({e})")?;
                    } else {
                        write!(f, "{e}")?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// Protocol names accepted after `proto` (and as `l4` values of decoded flows).
const PROTOCOLS: &[(&str, u8)] = &[
    ("icmp", 1),
    ("igmp", 2),
    ("tcp", 6),
    ("udp", 17),
    ("gre", 47),
    ("esp", 50),
    ("ah", 51),
    ("icmp6", 58),
    ("icmpv6", 58),
    ("ospf", 89),
    ("vrrp", 112),
    ("sctp", 132),
];

/// Service names operators type, for the "use port numbers" hint.
const SERVICES: &[(&str, u16)] = &[
    ("ftp", 21),
    ("ssh", 22),
    ("telnet", 23),
    ("smtp", 25),
    ("domain", 53),
    ("dns", 53),
    ("http", 80),
    ("ntp", 123),
    ("bgp", 179),
    ("https", 443),
    ("vxlan", 4789),
    ("geneve", 6081),
];

/// tcpdump primitives this filter does not have.
const UNSUPPORTED: &[&str] = &[
    "ether",
    "arp",
    "rarp",
    "vlan",
    "mpls",
    "pppoed",
    "pppoes",
    "less",
    "greater",
    "len",
    "gateway",
    "broadcast",
    "multicast",
    "inbound",
    "outbound",
    "ifname",
    "on",
    "atalk",
    "decnet",
    "iso",
    "stp",
    "ipx",
    "netbeui",
    "wlan",
    "type",
    "subtype",
    "dir",
    "geneve",
    "vxlan",
];

fn term_text(t: &FilterTerm) -> String {
    let side = match t.side {
        filter_side::SRC => "src ",
        filter_side::DST => "dst ",
        _ => "",
    };
    let text = match t.kind {
        filter_kind::PROTO => match (t.proto, t.family) {
            (1, 4) => "icmp".to_string(),
            (58, 6) => "icmp6".to_string(),
            (6, 0) => "tcp".to_string(),
            (17, 0) => "udp".to_string(),
            (132, 0) => "sctp".to_string(),
            (n, 4) => format!("ip proto {n}"),
            (n, 6) => format!("ip6 proto {n}"),
            (n, _) => format!("proto {n}"),
        },
        filter_kind::FAMILY => if t.family == 6 { "ip6" } else { "ip" }.to_string(),
        filter_kind::ADDR => {
            let addr = term_addr(t);
            if t.prefix as usize == octets(&addr).len() * 8 {
                format!("{side}host {addr}")
            } else {
                format!("{side}net {addr}/{}", t.prefix)
            }
        }
        filter_kind::PORT if t.port_lo == t.port_hi => format!("{side}port {}", t.port_lo),
        filter_kind::PORT => format!("{side}portrange {}-{}", t.port_lo, t.port_hi),
        k => format!("<kind {k}>"),
    };
    if t.negate != 0 {
        format!("not {text}")
    } else {
        text
    }
}

fn term_addr(t: &FilterTerm) -> IpAddr {
    if t.family == 6 {
        IpAddr::from(t.addr)
    } else {
        IpAddr::from([t.addr[0], t.addr[1], t.addr[2], t.addr[3]])
    }
}

fn proto_term(proto: u8, family: u8) -> FilterTerm {
    FilterTerm { kind: filter_kind::PROTO, proto, family, ..Default::default() }
}

fn family_term(family: u8) -> FilterTerm {
    FilterTerm { kind: filter_kind::FAMILY, family, ..Default::default() }
}

fn addr_term(side: u8, addr: IpAddr, prefix: u8) -> FilterTerm {
    let mut t = FilterTerm { kind: filter_kind::ADDR, side, family: family_of(&addr), prefix, ..Default::default() };
    let bytes = octets(&addr);
    t.addr[..bytes.len()].copy_from_slice(&bytes);
    t
}

fn port_term(side: u8, lo: u16, hi: u16) -> FilterTerm {
    FilterTerm { kind: filter_kind::PORT, side, port_lo: lo, port_hi: hi, ..Default::default() }
}

fn and(a: Expr, b: Expr) -> Expr {
    Expr::And(Box::new(a), Box::new(b))
}

// ---------------------------------------------------------------------------------------------
// Conversion to the kernel's conjunctive normal form

type Clause = Vec<FilterTerm>;

/// A CNF: all clauses must hold; a clause holds when one of its terms does. No clauses: true.
struct Cnf {
    clauses: Vec<Clause>,
    /// Nothing was dropped on the way (dropping a clause only ever widens the match).
    exact: bool,
}

/// CNF of `e` (negated when `negate`), with negations pushed down into the terms.
fn to_cnf(e: &Expr, negate: bool) -> Cnf {
    match e {
        Expr::Term(t) => {
            let mut t = *t;
            t.negate = u8::from((t.negate != 0) != negate);
            Cnf { clauses: vec![vec![t]], exact: true }
        }
        Expr::Not(x) => to_cnf(x, !negate),
        Expr::And(a, b) if !negate => conjoin(to_cnf(a, false), to_cnf(b, false)),
        Expr::Or(a, b) if negate => conjoin(to_cnf(a, true), to_cnf(b, true)),
        Expr::And(a, b) | Expr::Or(a, b) => disjoin(to_cnf(a, negate), to_cnf(b, negate)),
    }
}

fn conjoin(mut a: Cnf, b: Cnf) -> Cnf {
    a.clauses.extend(b.clauses);
    a.exact &= b.exact;
    simplify(a)
}

/// `a or b` by distribution: every clause of `a` joined with every clause of `b`.
fn disjoin(a: Cnf, b: Cnf) -> Cnf {
    let mut exact = a.exact && b.exact;
    let mut clauses = Vec::new();
    for ca in &a.clauses {
        for cb in &b.clauses {
            let mut merged = ca.clone();
            for t in cb {
                if !merged.contains(t) {
                    merged.push(*t);
                }
            }
            // `x or not x`: always true, the clause constrains nothing.
            let tautology = merged.iter().any(|t| merged.contains(&FilterTerm { negate: t.negate ^ 1, ..*t }));
            if tautology {
                continue;
            }
            if merged.len() > WIDTH_CAP {
                exact = false;
                continue;
            }
            clauses.push(merged);
        }
    }
    simplify(Cnf { clauses, exact })
}

/// Drops duplicate and subsumed clauses (exact), then the least selective beyond [`CNF_CAP`].
fn simplify(mut cnf: Cnf) -> Cnf {
    cnf.clauses.sort_by_key(Vec::len);
    let mut kept: Vec<Clause> = Vec::with_capacity(cnf.clauses.len());
    for clause in cnf.clauses {
        // A clause that contains a kept one is implied by it.
        if !kept.iter().any(|k| k.iter().all(|t| clause.contains(t))) {
            kept.push(clause);
        }
    }
    if kept.len() > CNF_CAP {
        kept.sort_by(rank);
        kept.truncate(CNF_CAP);
        cnf.exact = false;
    }
    cnf.clauses = kept;
    cnf
}

/// Clauses the kernel can take first, then the most selective, then the shortest.
fn rank(a: &Clause, b: &Clause) -> std::cmp::Ordering {
    let key = |c: &Clause| (c.len() > FILTER_TERMS, c.len());
    key(a).0.cmp(&key(b).0).then(clause_weight(a).total_cmp(&clause_weight(b))).then(key(a).1.cmp(&key(b).1))
}

/// Rough share of packets a clause lets through (lower is more selective).
fn clause_weight(c: &Clause) -> f64 {
    c.iter().map(term_weight).sum::<f64>().min(1.0)
}

fn term_weight(t: &FilterTerm) -> f64 {
    let either = if t.side == filter_side::EITHER { 2.0 } else { 1.0 };
    let p: f64 = match t.kind {
        filter_kind::PROTO if t.family != 0 => 0.15,
        filter_kind::PROTO => 0.25,
        filter_kind::FAMILY => 0.5,
        filter_kind::ADDR => {
            let bits = if t.family == 4 { f64::from(t.prefix) } else { f64::from(t.prefix) / 4.0 };
            either * 0.5f64.powf(bits / 2.5)
        }
        filter_kind::PORT => either * (0.01 + f64::from(t.port_hi.saturating_sub(t.port_lo)) / 65536.0),
        _ => 1.0,
    };
    let p = p.min(1.0);
    if t.negate != 0 {
        1.0 - p
    } else {
        p
    }
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    LParen,
    RParen,
    Bang,
    AndAnd,
    OrOr,
    Word,
}

#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    tok: Tok,
    text: &'a str,
    /// Byte offset in the expression.
    offset: usize,
}

impl Token<'_> {
    fn is_word(&self, keyword: &str) -> bool {
        self.tok == Tok::Word && self.text.eq_ignore_ascii_case(keyword)
    }
}

fn column(text: &str, offset: usize) -> usize {
    text[..offset].chars().count() + 1
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '/' | '-' | '_' | '\\')
}

fn tokenize(text: &str) -> Result<Vec<Token<'_>>, FilterError> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let tok = match c {
            c if c.is_whitespace() => continue,
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            '!' => Tok::Bang,
            '&' | '|' => {
                if chars.next_if(|&(_, n)| n == c).is_none() {
                    let (double, word) = if c == '&' { ("&&", "and") } else { ("||", "or") };
                    return Err(FilterError {
                        message: format!(
                            "single \"{c}\" at column {}: write \"{double}\" or \"{word}\"",
                            column(text, i)
                        ),
                        column: Some(column(text, i)),
                    });
                }
                let tok = if c == '&' { Tok::AndAnd } else { Tok::OrOr };
                tokens.push(Token { tok, text: &text[i..i + 2], offset: i });
                continue;
            }
            c if is_word_char(c) => {
                let mut end = i + c.len_utf8();
                while let Some((j, d)) = chars.next_if(|&(_, d)| is_word_char(d)) {
                    end = j + d.len_utf8();
                }
                tokens.push(Token { tok: Tok::Word, text: &text[i..end], offset: i });
                continue;
            }
            c => {
                let hint = match c {
                    '[' | ']' => ": byte-offset expressions such as tcp[13] are not supported",
                    '%' => ": zone indices are not supported; write the address without %…",
                    '=' | '<' | '>' => ": comparisons are not supported",
                    _ => "",
                };
                return Err(FilterError {
                    message: format!("unexpected character \"{c}\" at column {}{hint}", column(text, i)),
                    column: Some(column(text, i)),
                });
            }
        };
        tokens.push(Token { tok, text: &text[i..i + 1], offset: i });
    }
    Ok(tokens)
}

// ---------------------------------------------------------------------------------------------
// Parser

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Src,
    Dst,
    /// `src or dst`.
    Either,
    /// `src and dst`.
    Both,
}

impl Dir {
    fn words(self) -> &'static str {
        match self {
            Dir::Src => "src",
            Dir::Dst => "dst",
            Dir::Either => "src or dst",
            Dir::Both => "src and dst",
        }
    }
}

/// One term per side the direction names, ANDed (`src and dst`).
fn directed(dir: Option<Dir>, make: impl Fn(u8) -> FilterTerm) -> Expr {
    match dir {
        None | Some(Dir::Either) => Expr::Term(make(filter_side::EITHER)),
        Some(Dir::Src) => Expr::Term(make(filter_side::SRC)),
        Some(Dir::Dst) => Expr::Term(make(filter_side::DST)),
        Some(Dir::Both) => and(Expr::Term(make(filter_side::SRC)), Expr::Term(make(filter_side::DST))),
    }
}

/// What may follow a protocol qualifier: `ip`/`ip6` take addresses of their version,
/// `tcp`/`udp`/`sctp` take ports; no qualifier takes both.
#[derive(Clone, Copy)]
struct Scope<'s> {
    name: &'s str,
    family: Option<u8>,
    addresses: bool,
    ports: bool,
}

const ANY: Scope<'static> = Scope { name: "", family: None, addresses: true, ports: true };

/// The last primitive parsed, for the hint when an operator writes tcpdump's `host A or B`.
struct LastPrimitive {
    text: String,
    /// Its qualifiers (`host`, `src port`, `tcp dst port`), if it took a value.
    qualifier: Option<String>,
}

struct Parser<'a> {
    text: &'a str,
    tokens: Vec<Token<'a>>,
    pos: usize,
    depth: usize,
    primitives: usize,
    last: Option<LastPrimitive>,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<Token<'a>> {
        self.tokens.get(self.pos).copied()
    }

    /// The word `n` tokens ahead, lowercased.
    fn word_lower(&self, n: usize) -> Option<String> {
        self.tokens.get(self.pos + n).filter(|t| t.tok == Tok::Word).map(|t| t.text.to_ascii_lowercase())
    }

    fn here(&self) -> String {
        match self.peek() {
            Some(t) => format!("at \"{}\" (column {})", t.text, column(self.text, t.offset)),
            None => "at the end of the expression".to_string(),
        }
    }

    /// `(column N)` of the token at the cursor, for messages that quote the token already.
    fn at_column(&self) -> String {
        match self.peek() {
            Some(t) => format!("(column {})", column(self.text, t.offset)),
            None => "at the end of the expression".to_string(),
        }
    }

    fn fail(&self, message: String) -> FilterError {
        FilterError { message, column: self.peek().map(|t| column(self.text, t.offset)) }
    }

    /// `expected WHAT after "PREV" at "TOKEN" (column N)`.
    fn expected(&self, what: &str) -> FilterError {
        let after = match self.pos.checked_sub(1).and_then(|i| self.tokens.get(i)) {
            Some(t) => format!(" after \"{}\"", t.text),
            None => String::new(),
        };
        self.fail(format!("expected {what}{after} {}", self.here()))
    }

    fn expected_hint(&self, what: &str, hint: &str) -> FilterError {
        let mut e = self.expected(what);
        e.message = format!("{}; {hint}", e.message);
        e
    }

    fn parse_all(&mut self) -> Result<Expr, FilterError> {
        if self.tokens.is_empty() {
            return Err(self.fail(
                "empty expression: write one such as \"host 10.0.0.1 and tcp port 80\", or leave out --filter"
                    .to_string(),
            ));
        }
        let expr = self.parse_expr()?;
        match self.peek() {
            None => Ok(expr),
            Some(t) if t.tok == Tok::RParen => {
                Err(self.fail(format!("unmatched \")\" at column {}", column(self.text, t.offset))))
            }
            Some(_) => Err(self.juxtaposed()),
        }
    }

    /// `and` and `or` have the same precedence and group left to right (as in tcpdump).
    fn parse_expr(&mut self) -> Result<Expr, FilterError> {
        let mut left = self.parse_unary()?;
        loop {
            let and = match self.peek() {
                Some(t) if t.tok == Tok::AndAnd || t.is_word("and") => true,
                Some(t) if t.tok == Tok::OrOr || t.is_word("or") => false,
                None => return Ok(left),
                Some(t) if t.tok == Tok::RParen => return Ok(left),
                Some(_) => return Err(self.juxtaposed()),
            };
            self.pos += 1;
            let right = self.parse_unary()?;
            left = if and {
                Expr::And(Box::new(left), Box::new(right))
            } else {
                Expr::Or(Box::new(left), Box::new(right))
            };
        }
    }

    fn parse_unary(&mut self) -> Result<Expr, FilterError> {
        let Some(t) = self.peek() else {
            return Err(self.expected("a primitive (host, net, port, portrange, proto, tcp, udp, icmp, ip, …)"));
        };
        if t.tok == Tok::Bang || t.is_word("not") || t.tok == Tok::LParen {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(self.fail(format!("expression nested deeper than {MAX_DEPTH} levels")));
            }
            self.pos += 1;
            let result = if t.tok == Tok::LParen {
                let inner = self.parse_expr()?;
                match self.peek() {
                    Some(close) if close.tok == Tok::RParen => {
                        self.pos += 1;
                        Ok(inner)
                    }
                    _ => Err(self.expected_hint(
                        "\")\"",
                        &format!("the \"(\" at column {} is not closed", column(self.text, t.offset)),
                    )),
                }
            } else {
                self.parse_unary().map(|e| Expr::Not(Box::new(e)))
            };
            self.depth -= 1;
            return result;
        }
        if t.tok != Tok::Word || t.is_word("and") || t.is_word("or") {
            return Err(self.expected("a primitive"));
        }
        let start = self.pos;
        let (expr, qualifier) = self.primitive()?;
        self.primitives += 1;
        if self.primitives > MAX_PRIMITIVES {
            return Err(self.fail(format!("more than {MAX_PRIMITIVES} primitives")));
        }
        let (first, last) = (self.tokens[start], self.tokens[self.pos - 1]);
        let text = self.text[first.offset..last.offset + last.text.len()].to_string();
        self.last = Some(LastPrimitive { text, qualifier });
        Ok(expr)
    }

    /// A primitive, and its qualifier words for hints.
    fn primitive(&mut self) -> Result<(Expr, Option<String>), FilterError> {
        let word = self.word_lower(0).unwrap_or_default();
        let word = word.as_str();
        match word {
            "tcp" | "udp" | "sctp" => {
                self.pos += 1;
                let proto = Expr::Term(proto_term(protocol_number(word).unwrap_or(0), 0));
                match self.word_lower(0).as_deref() {
                    Some("port" | "portrange" | "src" | "dst") => {
                        let scope = Scope { name: word, family: None, addresses: false, ports: true };
                        let (ports, qualifier) = self.qualified(scope)?;
                        Ok((and(proto, ports), Some(qualifier)))
                    }
                    _ => Ok((proto, None)),
                }
            }
            "icmp" => {
                self.pos += 1;
                Ok((Expr::Term(proto_term(1, 4)), None))
            }
            "icmp6" | "icmpv6" => {
                self.pos += 1;
                Ok((Expr::Term(proto_term(58, 6)), None))
            }
            "ip" | "ip6" => {
                self.pos += 1;
                let family = if word == "ip" { 4 } else { 6 };
                match self.word_lower(0).as_deref() {
                    Some("proto") => {
                        self.pos += 1;
                        Ok((Expr::Term(proto_term(self.protocol()?, family)), None))
                    }
                    Some("host" | "net" | "src" | "dst" | "port" | "portrange") => {
                        let scope = Scope { name: word, family: Some(family), addresses: true, ports: false };
                        let (expr, qualifier) = self.qualified(scope)?;
                        Ok((expr, Some(qualifier)))
                    }
                    _ => Ok((Expr::Term(family_term(family)), None)),
                }
            }
            "proto" => {
                self.pos += 1;
                Ok((Expr::Term(proto_term(self.protocol()?, 0)), None))
            }
            "src" | "dst" | "host" | "net" | "port" | "portrange" => {
                let (expr, qualifier) = self.qualified(ANY)?;
                Ok((expr, Some(qualifier)))
            }
            _ => Err(self.not_a_primitive()),
        }
    }

    /// `src`, `dst`, `src or dst`, `src and dst`, or nothing.
    fn direction(&mut self) -> Option<Dir> {
        let first = match self.word_lower(0).as_deref() {
            Some("src") => Dir::Src,
            Some("dst") => Dir::Dst,
            _ => return None,
        };
        self.pos += 1;
        let other = if first == Dir::Src { "dst" } else { "src" };
        let combined = match (self.word_lower(0).as_deref(), self.word_lower(1)) {
            (Some("or"), Some(o)) if o == other => Dir::Either,
            (Some("and"), Some(o)) if o == other => Dir::Both,
            _ => return Some(first),
        };
        self.pos += 2;
        Some(combined)
    }

    /// `[dir] host A`, `dir A`, `[dir] net …`, `[dir] port N`, `[dir] portrange N-M`, within
    /// what `scope` allows; returns the expression and its qualifier words.
    fn qualified(&mut self, scope: Scope<'_>) -> Result<(Expr, String), FilterError> {
        let dir = self.direction();
        let keyword = match self.word_lower(0) {
            Some(k) if matches!(k.as_str(), "host" | "net" | "port" | "portrange") => Some(k),
            _ => None,
        };
        let mut qualifier: Vec<&str> = Vec::new();
        qualifier.extend((!scope.name.is_empty()).then_some(scope.name));
        qualifier.extend(dir.map(Dir::words));
        let qualifier = |kw: Option<&str>| {
            let mut q = qualifier.clone();
            q.extend(kw);
            q.join(" ")
        };
        if keyword.is_none() && dir.is_none() {
            return Err(self.expected("\"host\", \"net\", \"port\" or \"portrange\""));
        }
        let address_kw = matches!(keyword.as_deref(), None | Some("host" | "net"));
        if address_kw && !scope.addresses {
            let mut example: Vec<&str> = dir.map(Dir::words).into_iter().collect();
            example.push(keyword.as_deref().unwrap_or("host"));
            return Err(self.expected_hint(
                "\"port\" or \"portrange\"",
                &format!(
                    "\"{}\" qualifies ports only; to combine it with an address write \"{} and {} …\"",
                    scope.name,
                    scope.name,
                    example.join(" ")
                ),
            ));
        }
        if keyword.is_none() && self.value().is_none() {
            return Err(self.expected("\"host\", \"net\", \"port\", \"portrange\" or an address"));
        }
        if !address_kw && !scope.ports {
            let kw = keyword.as_deref().unwrap_or("port");
            return Err(self.fail(format!(
                "\"{kw}\" cannot follow \"{}\" {}: write \"{} and {kw} …\" (or \"tcp {kw} …\")",
                scope.name,
                self.at_column(),
                scope.name
            )));
        }
        if keyword.is_some() {
            self.pos += 1;
        }
        let expr = match keyword.as_deref() {
            Some("net") => {
                let (addr, prefix) = self.network(scope)?;
                directed(dir, |side| addr_term(side, addr, prefix))
            }
            Some("port") => {
                let port = self.port()?;
                directed(dir, |side| port_term(side, port, port))
            }
            Some("portrange") => {
                let (lo, hi) = self.port_range()?;
                directed(dir, |side| port_term(side, lo, hi))
            }
            _ => {
                let addr = self.address(scope)?;
                let prefix = (octets(&addr).len() * 8) as u8;
                directed(dir, |side| addr_term(side, addr, prefix))
            }
        };
        Ok((expr, qualifier(keyword.as_deref())))
    }

    /// The word at the cursor, if it is one (not an operator or parenthesis).
    fn value(&self) -> Option<&'a str> {
        self.peek()
            .filter(|t| t.tok == Tok::Word && !t.is_word("and") && !t.is_word("or") && !t.is_word("not"))
            .map(|t| t.text)
    }

    fn address(&mut self, scope: Scope<'_>) -> Result<IpAddr, FilterError> {
        let Some(word) = self.value() else { return Err(self.expected("an address")) };
        if let Some((a, _)) = word.split_once('/') {
            if a.parse::<IpAddr>().is_ok() {
                return Err(self.expected_hint("an address", &format!("for a prefix write \"net {word}\"")));
            }
        }
        let Ok(addr) = word.parse::<IpAddr>() else {
            return Err(self.expected_hint("an address", "host names are not resolved: write an IPv4 or IPv6 address"));
        };
        self.check_family(scope, &addr)?;
        self.pos += 1;
        Ok(addr)
    }

    fn check_family(&self, scope: Scope<'_>, addr: &IpAddr) -> Result<(), FilterError> {
        match scope.family {
            Some(f) if f != family_of(addr) => {
                let (want, other) = if f == 4 { ("an IPv4", "ip6") } else { ("an IPv6", "ip") };
                Err(self.expected_hint(
                    &format!("{want} address"),
                    &format!("\"{}\" never matches {addr}: write \"{other}\" or leave it out", scope.name),
                ))
            }
            _ => Ok(()),
        }
    }

    /// `A/LEN` or `A mask M`; host bits must be clear.
    fn network(&mut self, scope: Scope<'_>) -> Result<(IpAddr, u8), FilterError> {
        const WHAT: &str = "a network such as 10.0.0.0/8 or fd00::/64";
        let Some(word) = self.value() else { return Err(self.expected(WHAT)) };
        let (addr_text, len_text) = match word.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (word, None),
        };
        let Ok(addr) = addr_text.parse::<IpAddr>() else { return Err(self.expected(WHAT)) };
        self.check_family(scope, &addr)?;
        let max = (octets(&addr).len() * 8) as u8;
        let start = self.pos;
        let (prefix, consumed) = match len_text {
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max => (n, 1),
                _ => {
                    return Err(self
                        .expected_hint(WHAT, &format!("the prefix length \"/{l}\" must be a number from 0 to {max}")))
                }
            },
            None if self.tokens.get(self.pos + 1).is_some_and(|t| t.is_word("mask")) => {
                let IpAddr::V4(_) = addr else {
                    self.pos += 1;
                    return Err(self.fail(format!(
                        "\"mask\" {} applies to IPv4 only: write \"net {addr}/LEN\"",
                        self.at_column()
                    )));
                };
                self.pos += 2;
                let Some(mask) = self.value().and_then(|m| m.parse::<Ipv4Addr>().ok()) else {
                    return Err(self.expected("an IPv4 netmask such as 255.255.0.0"));
                };
                let bits = u32::from(mask);
                if bits.leading_ones() + bits.trailing_zeros() != 32 {
                    return Err(
                        self.expected_hint("an IPv4 netmask such as 255.255.0.0", &format!("{mask} is not contiguous"))
                    );
                }
                self.pos = start; // errors below point at the address
                (bits.leading_ones() as u8, 3)
            }
            None => {
                let guess = guess_prefix(&addr);
                let mask = match addr {
                    IpAddr::V4(_) => format!(" or \"net {addr} mask {}\"", Ipv4Addr::from(mask_bits(guess))),
                    IpAddr::V6(_) => String::new(),
                };
                return Err(self.fail(format!(
                    "\"net {word}\" {} needs a prefix length: write \"net {addr}/{guess}\"{mask}",
                    self.at_column()
                )));
            }
        };
        let network = masked(&addr, prefix);
        if network != addr {
            return Err(self.fail(format!(
                "\"{addr}/{prefix}\" {} has bits set beyond the /{prefix} prefix: write \"net {network}/{prefix}\" for \
                 the network, or \"host {addr}\"",
                self.at_column()
            )));
        }
        self.pos = start + consumed;
        Ok((addr, prefix))
    }

    fn port(&mut self) -> Result<u16, FilterError> {
        const WHAT: &str = "a port number (0-65535)";
        let Some(word) = self.value() else { return Err(self.expected(WHAT)) };
        if let Ok(port) = word.parse::<u16>() {
            self.pos += 1;
            return Ok(port);
        }
        let hint = if word.contains('-') {
            format!("for a range write \"portrange {word}\"")
        } else if word.chars().all(|c| c.is_ascii_digit()) {
            format!("{word} is larger than 65535")
        } else {
            service_hint(word)
        };
        Err(self.expected_hint(WHAT, &hint))
    }

    fn port_range(&mut self) -> Result<(u16, u16), FilterError> {
        const WHAT: &str = "a port range such as 8000-8080";
        let Some(word) = self.value() else { return Err(self.expected(WHAT)) };
        let Some((lo, hi)) = word.split_once('-') else {
            let hint = match word.parse::<u16>() {
                Ok(p) => format!("for one port write \"port {p}\""),
                Err(_) => service_hint(word),
            };
            return Err(self.expected_hint(WHAT, &hint));
        };
        let (Ok(lo), Ok(hi)) = (lo.parse::<u16>(), hi.parse::<u16>()) else {
            let name = if lo.parse::<u16>().is_err() { lo } else { hi };
            return Err(self.expected_hint(WHAT, &service_hint(name)));
        };
        if lo > hi {
            return Err(self.expected_hint(WHAT, &format!("the range starts after it ends: write \"{hi}-{lo}\"")));
        }
        self.pos += 1;
        Ok((lo, hi))
    }

    /// A protocol number or name after `proto` (`\tcp` as in tcpdump too).
    fn protocol(&mut self) -> Result<u8, FilterError> {
        const WHAT: &str = "a protocol number (0-255) or name (tcp, udp, icmp, icmp6, sctp, gre, …)";
        let Some(word) = self.value() else { return Err(self.expected(WHAT)) };
        let name = word.trim_start_matches('\\').to_ascii_lowercase();
        match name.parse::<u8>().ok().or_else(|| protocol_number(&name)) {
            Some(n) => {
                self.pos += 1;
                Ok(n)
            }
            None => Err(self.expected(WHAT)),
        }
    }

    /// After a complete primitive, something other than an operator or `)`.
    fn juxtaposed(&self) -> FilterError {
        let e = self.expected("\"and\", \"or\" or \")\"");
        let Some(word) = self.value() else { return e };
        let message = match (&self.last, value_qualifier(word)) {
            (Some(LastPrimitive { text, qualifier: Some(q) }), Some(_)) => format!(
                "{}; qualifiers do not carry over to the next value as in tcpdump: to match either write \
                 \"{text} or {q} {word}\"",
                e.message
            ),
            _ => format!("{}; join primitives with \"and\" or \"or\"", e.message),
        };
        FilterError { message, ..e }
    }

    /// A word that starts no primitive.
    fn not_a_primitive(&self) -> FilterError {
        let word = self.value().unwrap_or_default();
        let lower = word.to_ascii_lowercase();
        let operator = self
            .pos
            .checked_sub(1)
            .and_then(|i| self.tokens.get(i))
            .filter(|t| matches!(t.tok, Tok::AndAnd | Tok::OrOr) || t.is_word("and") || t.is_word("or"));
        if let Some(guess) = value_qualifier(word) {
            let hint = match (&self.last, operator) {
                (Some(LastPrimitive { text, qualifier: Some(q) }), Some(op)) => format!(
                    "qualifiers do not carry over to the next value as in tcpdump: write \"{text} {} {q} {word}\"",
                    op.text
                ),
                _ => format!("a value needs a qualifier: write \"{guess} {word}\""),
            };
            return self.expected_hint("a primitive", &hint);
        }
        if UNSUPPORTED.contains(&lower.as_str()) {
            return self.fail(format!(
                "\"{word}\" {} is not supported by dptrace's filter; it has host, net, port, portrange, proto, src, \
                 dst, tcp, udp, icmp, icmp6, sctp, ip, ip6, and, or, not and parentheses",
                self.at_column()
            ));
        }
        if protocol_number(&lower).is_some() {
            return self.expected_hint("a primitive", &format!("for this protocol write \"proto {lower}\""));
        }
        self.expected_hint(
            "a primitive",
            "primitives are host, net, port, portrange, proto, src, dst, tcp, udp, icmp, icmp6, sctp, ip and ip6",
        )
    }
}

fn protocol_number(name: &str) -> Option<u8> {
    PROTOCOLS.iter().find(|(n, _)| *n == name).map(|&(_, p)| p)
}

fn service_hint(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    match SERVICES.iter().find(|(s, _)| *s == lower) {
        Some((s, p)) => format!("use port numbers: service names are not supported (\"{s}\" is {p})"),
        None => format!("use port numbers: service names such as \"{name}\" are not supported"),
    }
}

/// The qualifier a bare value would need (`host`, `net`, `port`, `portrange`), if it is one.
fn value_qualifier(word: &str) -> Option<&'static str> {
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    if word.parse::<IpAddr>().is_ok() {
        Some("host")
    } else if word.split_once('/').is_some_and(|(a, l)| a.parse::<IpAddr>().is_ok() && digits(l)) {
        Some("net")
    } else if digits(word) {
        Some("port")
    } else if word.split_once('-').is_some_and(|(a, b)| digits(a) && digits(b)) {
        Some("portrange")
    } else {
        None
    }
}

fn mask_bits(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

/// `addr` with the bits after `prefix` cleared.
fn masked(addr: &IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => IpAddr::from(Ipv4Addr::from(u32::from(*a) & mask_bits(prefix))),
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::from(std::net::Ipv6Addr::from(u128::from(*a) & mask))
        }
    }
}

/// A prefix length for a network written without one: its trailing zero octets (IPv4), /64.
fn guess_prefix(addr: &IpAddr) -> u8 {
    match addr {
        IpAddr::V4(a) => {
            let zeros = a.octets().iter().rev().take_while(|&&b| b == 0).count().min(3);
            32 - 8 * zeros as u8
        }
        IpAddr::V6(_) => 64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(l4: &str, src: &str, dst: &str, ports: Option<(u16, u16)>) -> Flow {
        Flow {
            l4: l4.to_string(),
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport: ports.map(|p| p.0),
            dport: ports.map(|p| p.1),
            icmp_type: None,
            icmp_code: None,
            tcp_flags: None,
        }
    }

    fn flows() -> Vec<Flow> {
        vec![
            flow("tcp", "10.0.0.1", "10.0.0.2", Some((40000, 80))),
            flow("tcp", "10.0.0.2", "10.0.0.1", Some((80, 40000))),
            flow("tcp", "10.0.0.3", "10.0.0.1", Some((443, 8080))),
            flow("udp", "10.0.0.1", "10.96.0.10", Some((5353, 53))),
            flow("udp", "10.244.1.7", "10.0.0.1", Some((53, 33000))),
            flow("icmp", "10.0.0.1", "10.0.0.2", None),
            flow("icmp", "192.168.1.5", "8.8.8.8", None),
            flow("icmp", "fd00::1", "fd00::2", None),
            flow("icmpv6", "fd00::1", "fd00::2", None),
            flow("icmpv6", "fe80::1", "ff02::1", None),
            flow("tcp", "fd00::1", "2001:db8::5", Some((443, 55000))),
            flow("udp", "fe80::1", "ff02::1:2", Some((546, 547))),
            flow("udp", "2001:db8::1", "fd00::2", Some((53, 53))),
            flow("proto-132", "10.0.0.1", "10.0.0.2", None),
            flow("sctp", "10.0.0.1", "10.0.0.2", Some((36412, 36412))),
            flow("proto-47", "172.16.0.1", "172.16.0.2", None),
            flow("proto-47", "fd00::9", "fd00::a", None),
            flow("tcp", "0.0.0.0", "255.255.255.255", Some((0, 65535))),
            flow("udp", "255.1.2.3", "254.0.0.1", Some((8000, 8080))),
            flow("tcp", "::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some((1, 2))),
        ]
    }

    fn parse(text: &str) -> PacketFilter {
        PacketFilter::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn err(text: &str) -> String {
        match PacketFilter::parse(text) {
            Ok(f) => panic!("{text} parsed as {}", f.grouped()),
            Err(e) => e.to_string(),
        }
    }

    /// For all flows: the expression matching implies the kernel part matching; when the
    /// kernel part is exact, they agree.
    fn check_over_approximation(text: &str) -> KernelFilter {
        let filter = parse(text);
        let kernel = filter.kernel_part();
        assert!(kernel.clauses as usize <= FILTER_CLAUSES);
        for (i, row) in kernel.terms.iter().enumerate() {
            let used = row.iter().filter(|t| t.kind != filter_kind::NONE).count();
            // Used terms come first; used rows are exactly the first `clauses`.
            assert!(row[..used].iter().all(|t| t.kind != filter_kind::NONE), "{text}");
            assert_eq!(used > 0, i < kernel.clauses as usize, "{text}: row {i}");
        }
        for f in flows() {
            let (full, k) = (filter.matches(&f), kernel_matches(&kernel, &f));
            assert!(!full || k, "{text}: kernel part {:?} rejects {f} that the expression accepts", kernel.description);
            if kernel.exact {
                assert_eq!(full, k, "{text}: exact kernel part {:?} disagrees on {f}", kernel.description);
            }
        }
        kernel
    }

    const BATTERY: &[&str] = &[
        "host 10.0.0.1",
        "src host 10.0.0.1",
        "dst host 10.0.0.1",
        "src 10.0.0.1",
        "dst fd00::2",
        "src or dst host 10.0.0.2",
        "src and dst host 10.0.0.1",
        "src and dst port 53",
        "net 10.0.0.0/8",
        "src net 10.0.0.0/24",
        "dst net fd00::/64",
        "net 10.0.0.0 mask 255.255.255.0",
        "net 0.0.0.0/0",
        "net ::/0",
        "net 254.0.0.0/7",
        "net fc00::/7",
        "host ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "net 10.0.0.1/32",
        "net fd00::1/128",
        "port 53",
        "src port 80",
        "dst port 443",
        "portrange 8000-8080",
        "src portrange 1-1024",
        "dst portrange 0-65535",
        "tcp",
        "udp",
        "icmp",
        "icmp6",
        "sctp",
        "ip",
        "ip6",
        "proto 47",
        "ip proto 47",
        "ip6 proto 47",
        "proto tcp",
        "ip proto \\udp",
        "tcp port 80",
        "udp dst port 53",
        "tcp src portrange 1-1024",
        "ip host 10.0.0.1",
        "ip6 net fd00::/64",
        "ip src 10.0.0.1",
        "not port 80",
        "not tcp",
        "not host 10.0.0.1 and tcp",
        "! (host 10.0.0.1 or port 53)",
        "not (tcp and port 80)",
        "not not icmp",
        "host 10.0.0.1 and icmp",
        "host 10.0.0.1 and (icmp or port 53)",
        "host 10.0.0.1 or host 10.0.0.2 and tcp",
        "tcp and port 80 or udp",
        "(host 10.0.0.1 and port 80) or (host 10.0.0.2 and port 53)",
        "(host 10.0.0.1 and port 80) or (host 10.0.0.2 and port 53) or (host 10.0.0.3 and port 443)",
        "host 10.0.0.1 or host 10.0.0.2 or host 10.0.0.3 or host 10.0.0.4 or host 10.0.0.5",
        "host 10.0.0.1 or host 10.0.0.2 or host 10.0.0.3 or host 10.0.0.4 or host 10.0.0.5 or tcp",
        "tcp or not tcp",
        "ip and ip6",
        "host 10.0.0.1 and (host 10.0.0.1 or host 10.0.0.2)",
        "(tcp or udp) and (port 53 or port 80) and not host 10.0.0.3 and net 10.0.0.0/8 and ip and not icmp",
        "not ((tcp or udp) and (port 53 or port 80)) or (icmp6 and host fd00::1)",
        "(host 10.0.0.1 or host fd00::1)",
        "not (src net 10.0.0.0/24 and dst net 10.0.0.0/24) && (tcp || icmp)",
        "sctp or proto 132",
        "HOST 10.0.0.1 AND TCP PORT 80",
    ];

    #[test]
    fn battery_over_approximates() {
        for text in BATTERY {
            check_over_approximation(text);
        }
    }

    /// Random expressions: a small linear congruential generator over a pool of primitives.
    #[test]
    fn random_expressions_over_approximate() {
        const POOL: &[&str] = &[
            "host 10.0.0.1",
            "src host 10.0.0.2",
            "dst net 10.0.0.0/8",
            "net fd00::/64",
            "host fe80::1",
            "port 53",
            "src port 80",
            "dst portrange 8000-8080",
            "tcp",
            "udp",
            "icmp",
            "icmp6",
            "ip",
            "ip6",
            "proto 132",
            "tcp dst port 80",
            "src and dst port 53",
            "net 254.0.0.0/7",
        ];
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |n: usize| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) as usize) % n
        };
        fn build(next: &mut dyn FnMut(usize) -> usize, depth: usize) -> String {
            match if depth == 0 { 0 } else { next(5) } {
                0 | 1 => POOL[next(POOL.len())].to_string(),
                2 => format!("not {}", build(next, depth - 1)),
                3 => format!("({} and {})", build(next, depth - 1), build(next, depth - 1)),
                _ => format!("({} or {})", build(next, depth - 1), build(next, depth - 1)),
            }
        }
        let (mut exact, mut total) = (0, 0);
        for _ in 0..3000 {
            let text = build(&mut next, 5);
            total += 1;
            exact += usize::from(check_over_approximation(&text).exact);
        }
        assert!(exact > 0 && exact < total, "{exact} of {total} exact");
    }

    #[test]
    fn exact_conjunction() {
        let k = check_over_approximation("host 10.0.0.1 and icmp");
        assert!(k.exact);
        assert_eq!(k.clauses, 2);
        assert_eq!(k.description, "kernel: host 10.0.0.1 and icmp (the whole expression)");
        let k = check_over_approximation("tcp port 80");
        assert!(k.exact);
        assert_eq!(k.clauses, 2);
        let k = check_over_approximation("host 10.0.0.1 and (icmp or port 53)");
        assert!(k.exact);
        assert_eq!(k.description, "kernel: host 10.0.0.1 and (icmp or port 53) (the whole expression)");
    }

    #[test]
    fn distribution_is_exact_when_it_fits() {
        // (a∨b)(a∨q)(p∨b)(p∨q): four clauses of two terms.
        let k = check_over_approximation("(host 10.0.0.1 and port 80) or (host 10.0.0.2 and port 53)");
        assert!(k.exact, "{}", k.description);
        assert_eq!(k.clauses, 4);
        // Eight clauses of three terms: four kept, the most selective (hosts) first.
        let k = check_over_approximation(
            "(host 10.0.0.1 and port 80) or (host 10.0.0.2 and port 53) or (host 10.0.0.3 and port 443)",
        );
        assert!(!k.exact);
        assert_eq!(k.clauses, 4);
        assert!(k.description.starts_with("kernel: (host 10.0.0.1 or host 10.0.0.2 or host 10.0.0.3) and"));
        assert!(k.description.ends_with("; userspace: the whole expression again"));
    }

    #[test]
    fn wide_clauses_are_left_to_userspace() {
        let five = "host 10.0.0.1 or host 10.0.0.2 or host 10.0.0.3 or host 10.0.0.4 or host 10.0.0.5";
        let k = check_over_approximation(five);
        assert!(!k.exact);
        assert_eq!(k.clauses, 0);
        assert_eq!(k.description, "kernel: every packet; userspace: the whole expression");
        let k = check_over_approximation(&format!("({five}) and udp"));
        assert!(!k.exact);
        assert_eq!(k.clauses, 1);
        assert_eq!(k.description, "kernel: udp; userspace: the whole expression again");
        // Four fit.
        let k = check_over_approximation("host 10.0.0.1 or host 10.0.0.2 or host 10.0.0.3 or host 10.0.0.4");
        assert!(k.exact);
        assert_eq!(k.clauses, 1);
    }

    #[test]
    fn more_than_four_clauses() {
        let k = check_over_approximation(
            "tcp and port 80 and host 10.0.0.1 and src net 10.0.0.0/8 and dst net 10.0.0.0/16",
        );
        assert!(!k.exact);
        assert_eq!(k.clauses, 4);
        // The least selective (tcp) was dropped.
        assert!(!k.description.contains("tcp"), "{}", k.description);
    }

    #[test]
    fn simplifications_stay_exact() {
        let k = check_over_approximation("tcp or not tcp");
        assert!(k.exact);
        assert_eq!(k.clauses, 0);
        let k = check_over_approximation("host 10.0.0.1 and (host 10.0.0.1 or host 10.0.0.2)");
        assert!(k.exact);
        assert_eq!(k.clauses, 1);
        let k = check_over_approximation("ip and ip6");
        assert!(k.exact);
        assert!(flows().iter().all(|f| !kernel_matches(&k, f)));
    }

    #[test]
    fn blow_up_falls_back_safely() {
        // 2^12 clauses in full CNF; the cap keeps it bounded and the result safe.
        let pairs: Vec<String> = (1..=12).map(|i| format!("(host 10.0.{i}.1 and port {i})")).collect();
        let text = format!("({}) and tcp", pairs.join(" or "));
        let k = check_over_approximation(&text);
        assert!(!k.exact);
        assert!(k.clauses >= 1);
        assert!(k.description.contains("tcp"), "{}", k.description);
    }

    #[test]
    fn negation_is_pushed_into_terms() {
        let k = check_over_approximation("not (host 10.0.0.1 or port 53)");
        assert!(k.exact);
        assert_eq!(k.clauses, 2);
        assert!(k.terms[..2].iter().all(|row| row[0].negate == 1 && row[1].kind == filter_kind::NONE));
        let k = check_over_approximation("not (tcp and port 80)");
        assert!(k.exact);
        assert_eq!(k.clauses, 1);
        assert_eq!(k.terms[0].iter().filter(|t| t.negate == 1).count(), 2);
        // `not port 80` matches packets without ports, as in tcpdump.
        let f = parse("not port 80");
        assert!(f.matches(&flow("icmp", "10.0.0.1", "10.0.0.2", None)));
        assert!(!f.matches(&flow("tcp", "10.0.0.1", "10.0.0.2", Some((80, 1)))));
        assert!(kernel_matches(&f.kernel_part(), &flow("icmp", "10.0.0.1", "10.0.0.2", None)));
    }

    #[test]
    fn term_layout() {
        let k = parse("src net 10.1.0.0/16").kernel_part();
        let t = k.terms[0][0];
        assert_eq!((t.kind, t.side, t.family, t.prefix, t.negate), (filter_kind::ADDR, filter_side::SRC, 4, 16, 0));
        assert_eq!(t.addr, [10, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let t = parse("dst host fd00::1").kernel_part().terms[0][0];
        assert_eq!((t.side, t.family, t.prefix), (filter_side::DST, 6, 128));
        assert_eq!(t.addr[0..2], [0xfd, 0x00]);
        assert_eq!(t.addr[15], 1);
        let t = parse("dst portrange 1000-2000").kernel_part().terms[0][0];
        assert_eq!((t.kind, t.side, t.port_lo, t.port_hi), (filter_kind::PORT, filter_side::DST, 1000, 2000));
        let t = parse("ip6 proto 17").kernel_part().terms[0][0];
        assert_eq!((t.kind, t.proto, t.family), (filter_kind::PROTO, 17, 6));
        let t = parse("icmp").kernel_part().terms[0][0];
        assert_eq!((t.proto, t.family), (1, 4));
        let t = parse("net 10.0.0.0 mask 255.255.240.0").kernel_part().terms[0][0];
        assert_eq!(t.prefix, 20);
        let t = parse("ip6").kernel_part().terms[0][0];
        assert_eq!((t.kind, t.family), (filter_kind::FAMILY, 6));
        assert!(parse("tcp").kernel_part().terms[0][1..].iter().all(|t| *t == FilterTerm::default()));
    }

    #[test]
    fn protocols_and_families() {
        let icmp4 = flow("icmp", "10.0.0.1", "10.0.0.2", None);
        let icmp_over_v6 = flow("icmp", "fd00::1", "fd00::2", None);
        let icmp6 = flow("icmpv6", "fd00::1", "fd00::2", None);
        assert!(parse("icmp").matches(&icmp4));
        assert!(!parse("icmp").matches(&icmp_over_v6));
        assert!(!parse("icmp").matches(&icmp6));
        assert!(parse("icmp6").matches(&icmp6));
        assert!(parse("proto 58").matches(&icmp6));
        assert!(!parse("ip proto 58").matches(&icmp6));
        assert!(parse("ip").matches(&icmp4) && !parse("ip").matches(&icmp6));
        assert!(parse("ip6").matches(&icmp6) && !parse("ip6").matches(&icmp4));
        let sctp_a = flow("proto-132", "10.0.0.1", "10.0.0.2", None);
        let sctp_b = flow("sctp", "10.0.0.1", "10.0.0.2", Some((1, 2)));
        assert!(parse("sctp").matches(&sctp_a) && parse("sctp").matches(&sctp_b));
        assert!(parse("proto 47").matches(&flow("proto-47", "10.0.0.1", "10.0.0.2", None)));
        assert!(parse("proto \\tcp").matches(&flow("tcp", "10.0.0.1", "10.0.0.2", None)));
        assert!(!parse("udp").matches(&flow("tcp", "10.0.0.1", "10.0.0.2", Some((53, 53)))));
    }

    #[test]
    fn addresses_and_prefixes() {
        let any4 = parse("net 0.0.0.0/0");
        assert!(any4.matches(&flow("tcp", "1.2.3.4", "5.6.7.8", Some((1, 2)))));
        assert!(!any4.matches(&flow("tcp", "::1", "::2", Some((1, 2)))));
        let slash7 = parse("net 254.0.0.0/7");
        assert!(slash7.matches(&flow("icmp", "255.1.2.3", "1.1.1.1", None)));
        assert!(slash7.matches(&flow("icmp", "1.1.1.1", "254.0.0.1", None)));
        assert!(!slash7.matches(&flow("icmp", "253.255.255.255", "1.1.1.1", None)));
        let fc7 = parse("net fc00::/7");
        assert!(fc7.matches(&flow("icmpv6", "fd00::1", "fe80::1", None)));
        assert!(!fc7.matches(&flow("icmpv6", "fe80::1", "2001:db8::1", None)));
        let host32 = parse("net 10.0.0.1/32");
        assert!(host32.matches(&flow("icmp", "10.0.0.1", "10.0.0.9", None)));
        assert!(!host32.matches(&flow("icmp", "10.0.0.2", "10.0.0.9", None)));
        let host128 = parse("host fd00::1");
        assert!(host128.matches(&flow("icmpv6", "fd00::2", "fd00::1", None)));
        assert!(!host128.matches(&flow("icmpv6", "fd00::2", "fd00::3", None)));
        // An IPv4 address never matches an IPv6 flow, and the reverse.
        assert!(!parse("net 0.0.0.0/0").matches(&flow("icmpv6", "::", "::", None)));
        assert!(!parse("net ::/0").matches(&flow("icmp", "0.0.0.0", "0.0.0.0", None)));
        let src = parse("src host 10.0.0.1");
        assert!(src.matches(&flow("icmp", "10.0.0.1", "10.0.0.2", None)));
        assert!(!src.matches(&flow("icmp", "10.0.0.2", "10.0.0.1", None)));
        let both = parse("src and dst net 10.0.0.0/24");
        assert!(both.matches(&flow("icmp", "10.0.0.1", "10.0.0.2", None)));
        assert!(!both.matches(&flow("icmp", "10.0.0.1", "10.0.1.2", None)));
        let either = parse("src or dst 10.0.0.2");
        assert!(either.matches(&flow("icmp", "10.0.0.1", "10.0.0.2", None)));
        for text in ["net 0.0.0.0/0", "net 254.0.0.0/7", "net fc00::/7", "net 10.0.0.1/32", "host fd00::1"] {
            check_over_approximation(text);
        }
    }

    #[test]
    fn ports_and_ranges() {
        let tcp80 = flow("tcp", "10.0.0.1", "10.0.0.2", Some((40000, 80)));
        assert!(parse("port 80").matches(&tcp80));
        assert!(parse("dst port 80").matches(&tcp80));
        assert!(!parse("src port 80").matches(&tcp80));
        assert!(parse("portrange 79-81").matches(&tcp80));
        assert!(parse("portrange 80-80").matches(&tcp80));
        assert!(!parse("portrange 81-39999").matches(&tcp80));
        assert!(parse("src portrange 40000-65535").matches(&tcp80));
        assert!(parse("tcp dst port 80").matches(&tcp80));
        assert!(!parse("udp dst port 80").matches(&tcp80));
        assert!(!parse("src and dst port 80").matches(&tcp80));
        assert!(parse("src and dst port 53").matches(&flow("udp", "::1", "::2", Some((53, 53)))));
        assert!(!parse("portrange 0-65535").matches(&flow("icmp", "10.0.0.1", "10.0.0.2", None)));
    }

    #[test]
    fn and_or_have_equal_precedence_left_to_right() {
        let f = parse("host 10.0.0.1 or host 10.0.0.2 and tcp");
        assert_eq!(f.grouped(), "(host 10.0.0.1 or host 10.0.0.2) and tcp");
        // With `and` binding tighter this ICMP packet from 10.0.0.1 would match.
        assert!(!f.matches(&flow("icmp", "10.0.0.1", "10.0.0.9", None)));
        assert!(f.matches(&flow("tcp", "10.0.0.2", "10.0.0.9", Some((1, 2)))));
        let f = parse("tcp and port 80 or udp");
        assert_eq!(f.grouped(), "(tcp and port 80) or udp");
        assert!(f.matches(&flow("udp", "10.0.0.1", "10.0.0.2", Some((1, 2)))));
        // `not` binds tightest.
        let f = parse("not host 10.0.0.1 and tcp");
        assert_eq!(f.grouped(), "not host 10.0.0.1 and tcp");
        assert!(!f.matches(&flow("udp", "10.0.0.2", "10.0.0.3", Some((1, 2)))));
        // Parentheses win.
        let f = parse("host 10.0.0.1 or (host 10.0.0.2 and tcp)");
        assert_eq!(f.grouped(), "host 10.0.0.1 or (host 10.0.0.2 and tcp)");
        assert!(f.matches(&flow("icmp", "10.0.0.1", "10.0.0.9", None)));
        assert_eq!(parse("udp dst port 53 || ! icmp && ip").grouped(), "((udp and dst port 53) or not icmp) and ip");
    }

    #[test]
    fn keywords_are_case_insensitive() {
        let f = parse("HOST 10.0.0.1 And Tcp PORT 80 OR Src Or Dst NET FD00::/64 and not ICMP6");
        assert_eq!(f.grouped(), "((host 10.0.0.1 and tcp and port 80) or net fd00::/64) and not icmp6");
        assert_eq!(f.text(), "HOST 10.0.0.1 And Tcp PORT 80 OR Src Or Dst NET FD00::/64 and not ICMP6");
    }

    #[test]
    fn error_messages() {
        let cases: &[(&str, &str)] = &[
            ("host foo", "--filter: expected an address after \"host\" at \"foo\" (column 6); host names are not resolved"),
            ("host", "expected an address after \"host\" at the end of the expression"),
            ("host 10.0.0.1 or 10.0.0.2", "write \"host 10.0.0.1 or host 10.0.0.2\""),
            ("port 80 or 443", "write \"port 80 or port 443\""),
            ("src port 80 || 443", "write \"src port 80 || src port 443\""),
            ("host 10.0.0.1 10.0.0.2", "to match either write \"host 10.0.0.1 or host 10.0.0.2\""),
            ("10.0.0.1", "write \"host 10.0.0.1\""),
            ("port http", "use port numbers: service names are not supported (\"http\" is 80)"),
            ("portrange 1-https", "use port numbers"),
            ("port 80-90", "write \"portrange 80-90\""),
            ("port 70000", "larger than 65535"),
            ("portrange 90-80", "starts after it ends"),
            ("net 10.0.0.0", "--filter: \"net 10.0.0.0\" (column 5) needs a prefix length: write \"net 10.0.0.0/8\" or \"net 10.0.0.0 mask 255.0.0.0\""),
            ("net 192.168.1.0", "net 192.168.1.0/24"),
            ("net fd00::", "net fd00::/64"),
            ("net 10.0.0.1/8", "write \"net 10.0.0.0/8\" for the network, or \"host 10.0.0.1\""),
            ("net 10.0.0.0/33", "from 0 to 32"),
            ("net 10.0.0.0 mask 255.0.255.0", "not contiguous"),
            ("net 10.0.0.1 mask 255.0.0.0", "\"10.0.0.1/8\" (column 5) has bits set"),
            ("net 10.0.0.0 mask", "expected an IPv4 netmask such as 255.255.0.0 after \"mask\" at the end"),
            ("net fd00:: mask 255.0.0.0", "IPv4 only"),
            ("host 10.0.0.0/8", "write \"net 10.0.0.0/8\""),
            ("ip host fd00::1", "expected an IPv4 address after \"host\" at \"fd00::1\""),
            ("ip6 net 10.0.0.0/8", "expected an IPv6 address"),
            ("tcp src 10.0.0.1", "\"tcp\" qualifies ports only; to combine it with an address write \"tcp and src host …\""),
            ("tcp host 10.0.0.1", "expected \"and\", \"or\" or \")\" after \"tcp\" at \"host\""),
            ("ip port 80", "\"port\" cannot follow \"ip\" (column 4): write \"ip and port …\""),
            ("host 10.0.0.1 and", "expected a primitive (host, net, port, portrange, proto, tcp, udp, icmp, ip, …) after \"and\" at the end"),
            ("(host 10.0.0.1", "expected \")\" after \"10.0.0.1\" at the end of the expression; the \"(\" at column 1 is not closed"),
            ("host 10.0.0.1)", "unmatched \")\" at column 14"),
            ("and tcp", "expected a primitive at \"and\" (column 1)"),
            ("()", "expected a primitive after \"(\" at \")\""),
            ("ether host aa:bb:cc:dd:ee:ff", "--filter: \"ether\" (column 1) is not supported"),
            ("tcp & port 80", "single \"&\" at column 5: write \"&&\" or \"and\""),
            ("tcp | udp", "write \"||\" or \"or\""),
            ("tcp[13] = 2", "byte-offset expressions"),
            ("host fe80::1%eth0", "zone indices"),
            ("", "empty expression"),
            ("   ", "empty expression"),
            ("gre", "write \"proto gre\""),
            ("proto foo", "expected a protocol number (0-255) or name"),
            ("proto 300", "expected a protocol number"),
            ("bogus", "expected a primitive at \"bogus\" (column 1); primitives are host, net"),
            ("src", "expected \"host\", \"net\", \"port\", \"portrange\" or an address after \"src\" at the end"),
            ("not", "after \"not\" at the end of the expression"),
        ];
        for (text, want) in cases {
            let got = err(text);
            assert!(got.starts_with("--filter: "), "{text}: {got}");
            assert!(got.contains(want), "{text}:\n  got  {got}\n  want …{want}…");
        }
        let e = PacketFilter::parse("host 10.0.0.1 and  héllo").unwrap_err();
        assert_eq!(e.column, Some(21));
        assert!(e.message.contains("unexpected character \"é\""), "{e}");
    }

    #[test]
    fn limits() {
        let deep = format!("{}tcp{}", "(".repeat(100), ")".repeat(100));
        assert!(err(&deep).contains("nested deeper than"));
        let long = vec!["tcp"; 300].join(" or ");
        assert!(err(&long).contains("more than 256 primitives"));
    }
}
