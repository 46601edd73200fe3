//! `/proc/kallsyms`: turns a kernel text address into `symbol+0xoffset`.

use std::{
    fmt,
    io::{BufRead, BufReader},
};

/// Text symbols sorted by address. About 120,000 on a distribution kernel: names live in
/// one arena rather than a `String` each, and the file is read line by line, which keeps
/// this table near 4 MiB instead of 11 (start-up memory peak, `cargo xtask bench`).
#[derive(Debug, Default, Clone)]
pub struct Kallsyms {
    /// (address, start of the name in `names`, its length).
    symbols: Vec<(u64, u32, u32)>,
    names: String,
}

/// A resolved address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol<'a> {
    pub name: &'a str,
    pub offset: u64,
}

impl fmt::Display for Symbol<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{:#x}", self.name, self.offset)
    }
}

impl Kallsyms {
    pub fn load() -> std::io::Result<Self> {
        Self::read(BufReader::new(std::fs::File::open("/proc/kallsyms")?))
    }

    /// Parses kallsyms text. Addresses all zero (kptr_restrict, not root) give an empty table.
    pub fn parse(text: &str) -> Self {
        Self::read(text.as_bytes()).unwrap_or_default()
    }

    fn read(mut input: impl BufRead) -> std::io::Result<Self> {
        let mut table = Self::default();
        let mut line = String::new();
        while {
            line.clear();
            input.read_line(&mut line)? > 0
        } {
            let mut parts = line.split_ascii_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next()) else { continue };
            let Ok(addr) = u64::from_str_radix(addr, 16) else { continue };
            if addr != 0 && matches!(kind, "t" | "T" | "w" | "W") {
                table.symbols.push((addr, table.names.len() as u32, name.len() as u32));
                table.names.push_str(name);
            }
        }
        table.symbols.sort_unstable_by_key(|(addr, _, _)| *addr);
        table.symbols.shrink_to_fit();
        table.names.shrink_to_fit();
        Ok(table)
    }

    fn name(&self, index: usize) -> &str {
        let (_, start, len) = self.symbols[index];
        &self.names[start as usize..(start + len) as usize]
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// The text range `[start, end)` of function `name`: from its address to the next symbol's.
    /// Static functions may exist under several addresses; the first is taken.
    pub fn range(&self, name: &str) -> Option<(u64, u64)> {
        let index = (0..self.symbols.len()).find(|&i| self.name(i) == name)?;
        let start = self.symbols[index].0;
        let end = self.symbols[index + 1..].iter().map(|(a, _, _)| *a).find(|a| *a > start)?;
        Some((start, end))
    }

    /// The symbol containing `addr` (the closest one at or below it).
    pub fn resolve(&self, addr: u64) -> Option<Symbol<'_>> {
        let index = self.symbols.partition_point(|(a, _, _)| *a <= addr).checked_sub(1)?;
        Some(Symbol { name: self.name(index), offset: addr - self.symbols[index].0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffff81000000 T _stext
ffffffff81a00000 T __udp4_lib_rcv
ffffffff81a00800 t udp_queue_rcv_skb
ffffffff81b00000 D some_data
ffffffffc0000000 t veth_xmit\t[veth]
";

    #[test]
    fn resolves_to_the_enclosing_symbol() {
        let k = Kallsyms::parse(SAMPLE);
        assert_eq!(k.resolve(0xffffffff81a00123).unwrap().to_string(), "__udp4_lib_rcv+0x123");
        assert_eq!(k.resolve(0xffffffff81a00800).unwrap().to_string(), "udp_queue_rcv_skb+0x0");
        assert_eq!(k.resolve(0xffffffffc0000010).unwrap().name, "veth_xmit");
        assert!(k.resolve(0x1000).is_none());
        assert_eq!(k.range("__udp4_lib_rcv"), Some((0xffffffff81a00000, 0xffffffff81a00800)));
        assert_eq!(k.range("missing"), None);
    }

    #[test]
    fn restricted_kallsyms_is_empty() {
        let k = Kallsyms::parse("0000000000000000 T _stext\n0000000000000000 T foo\n");
        assert!(k.is_empty());
    }
}
