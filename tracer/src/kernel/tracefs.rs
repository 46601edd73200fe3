//! tracefs: finding (or mounting) it, and parsing tracepoint `format` files.
//!
//! Tracepoint record layouts change between kernels (`skb:kfree_skb` gained `reason` in 5.17
//! and `rx_sk` in 6.11, moving `protocol`), so every offset the programs use comes from here.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use crate::kernel::KernelError;

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// A usable tracefs mount.
///
/// When dptrace has to mount it, the mount stays: unmounting on exit would pull tracefs from
/// under a second dptrace (or perf, bpftrace) that is attaching at that moment, and a tracefs
/// mount at its standard place is what systemd sets up by default anyway.
#[derive(Debug)]
pub struct Tracefs {
    root: PathBuf,
    /// Whether this process mounted it (reported by `dptrace check`).
    pub mounted_by_us: bool,
}

impl Tracefs {
    /// Finds a mounted tracefs, or mounts one at `/sys/kernel/tracing`.
    pub fn open_or_mount() -> Result<Self, KernelError> {
        if let Ok(root) = std::env::var("DPTRACE_TRACEFS") {
            let root = PathBuf::from(root);
            return if root.join("events").is_dir() {
                Ok(Self { root, mounted_by_us: false })
            } else {
                Err(KernelError::NoTracefs(format!("DPTRACE_TRACEFS={} has no events/ directory", root.display())))
            };
        }
        for candidate in CANDIDATES {
            if Path::new(candidate).join("events").is_dir() {
                return Ok(Self { root: candidate.into(), mounted_by_us: false });
            }
        }
        let root = PathBuf::from(CANDIDATES[0]);
        nix::mount::mount(Some("nodev"), &root, Some("tracefs"), nix::mount::MsFlags::empty(), None::<&str>).map_err(
            |e| {
                KernelError::NoTracefs(format!(
                    "tracefs is not mounted and mounting it at {} failed: {e}",
                    root.display()
                ))
            },
        )?;
        if !root.join("events").is_dir() {
            let _ = nix::mount::umount2(&root, nix::mount::MntFlags::MNT_DETACH);
            return Err(KernelError::NoTracefs(format!("mounted tracefs at {} but it has no events/", root.display())));
        }
        log::info!("mounted tracefs at {} (it was not mounted)", root.display());
        Ok(Self { root, mounted_by_us: true })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn has_event(&self, system: &str, event: &str) -> bool {
        self.root.join("events").join(system).join(event).join("format").is_file()
    }

    /// Reads and parses `events/<system>/<event>/format`.
    pub fn format(&self, system: &str, event: &str) -> Result<TracepointFormat, KernelError> {
        let path = self.root.join("events").join(system).join(event).join("format");
        let text = fs::read_to_string(&path).map_err(|e| KernelError::MissingTracepoint {
            tracepoint: format!("{system}:{event}"),
            why: format!("{}: {e}", path.display()),
        })?;
        TracepointFormat::parse(&text).map_err(|why| KernelError::MissingTracepoint {
            tracepoint: format!("{system}:{event}"),
            why: format!("{}: {why}", path.display()),
        })
    }
}

/// One `field:` line of a format file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatField {
    /// The C declaration without the name, e.g. `void *` or `enum skb_drop_reason`.
    pub c_type: String,
    pub name: String,
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
}

/// A parsed tracepoint `format` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracepointFormat {
    pub name: String,
    pub id: u32,
    /// Fields in file order, common fields (`common_*`) included.
    pub fields: Vec<FormatField>,
    pub print_fmt: String,
}

impl TracepointFormat {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut name = None;
        let mut id = None;
        let mut fields = Vec::new();
        let mut print_fmt = String::new();
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("name:") {
                name = Some(rest.trim().to_string());
            } else if let Some(rest) = line.strip_prefix("ID:") {
                id = Some(rest.trim().parse::<u32>().map_err(|e| format!("bad ID {rest:?}: {e}"))?);
            } else if line.starts_with("field:") {
                fields.push(parse_field(line)?);
            } else if let Some(rest) = line.strip_prefix("print fmt:") {
                print_fmt = rest.trim().to_string();
            }
        }
        Ok(Self { name: name.ok_or("no `name:` line")?, id: id.ok_or("no `ID:` line")?, fields, print_fmt })
    }

    pub fn field(&self, name: &str) -> Option<&FormatField> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// The value → name table of `__print_symbolic(REC-><field>, { v, "NAME" }, …)` in the
    /// print format, if there is one for `field`.
    pub fn symbolic_values(&self, field: &str) -> Option<BTreeMap<u64, String>> {
        let marker = format!("__print_symbolic(REC->{field},");
        let start = self.print_fmt.find(&marker)? + marker.len();
        let mut table = BTreeMap::new();
        let mut rest = &self.print_fmt[start..];
        // Entries look like `{ 2, "NOT_SPECIFIED" }`; the list ends at the closing `)`.
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            let Some(body) = rest.strip_prefix('{') else {
                break;
            };
            let end = body.find('}')?;
            let (value, label) = body[..end].split_once(',')?;
            let value = value.trim();
            let value = match value.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok()?,
                None => value.parse().ok()?,
            };
            table.insert(value, label.trim().trim_matches('"').to_string());
            rest = &body[end + 1..];
        }
        (!table.is_empty()).then_some(table)
    }
}

fn parse_field(line: &str) -> Result<FormatField, String> {
    // `field:unsigned short protocol;	offset:32;	size:2;	signed:0;`
    let mut decl = None;
    let mut offset = None;
    let mut size = None;
    let mut signed = false;
    for part in line.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some(d) = part.strip_prefix("field:") {
            decl = Some(d.trim());
        } else if let Some(v) = part.strip_prefix("offset:") {
            offset = v.trim().parse().ok();
        } else if let Some(v) = part.strip_prefix("size:") {
            size = v.trim().parse().ok();
        } else if let Some(v) = part.strip_prefix("signed:") {
            signed = v.trim() == "1";
        }
    }
    let decl = decl.ok_or_else(|| format!("no declaration in {line:?}"))?;
    // The name is the last word; arrays put their size after it (`char name[16]`), while
    // dynamic strings put `[]` in the type (`__data_loc char[] msg`).
    let decl = decl.trim();
    let split = decl.rfind([' ', '*']).ok_or_else(|| format!("cannot split type and name in {decl:?}"))?;
    let name = decl[split + 1..].split('[').next().unwrap_or_default().trim().to_string();
    let c_type = decl[..=split].trim().to_string();
    if name.is_empty() {
        return Err(format!("empty field name in {decl:?}"));
    }
    Ok(FormatField {
        c_type,
        name,
        offset: offset.ok_or_else(|| format!("no offset in {line:?}"))?,
        size: size.ok_or_else(|| format!("no size in {line:?}"))?,
        signed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KFREE_SKB_6_18: &str = include_str!("../../tests/fixtures/6.18-kfree_skb.format");

    #[test]
    fn parses_6_18_kfree_skb() {
        let f = TracepointFormat::parse(KFREE_SKB_6_18).unwrap();
        assert_eq!(f.name, "kfree_skb");
        let offsets: Vec<_> = f.fields.iter().map(|f| (f.name.as_str(), f.offset, f.size)).collect();
        assert_eq!(
            offsets,
            [
                ("common_type", 0, 2),
                ("common_flags", 2, 1),
                ("common_preempt_count", 3, 1),
                ("common_pid", 4, 4),
                ("skbaddr", 8, 8),
                ("location", 16, 8),
                ("rx_sk", 24, 8),
                ("protocol", 32, 2),
                ("reason", 36, 4),
            ]
        );
        assert_eq!(f.field("reason").unwrap().c_type, "enum skb_drop_reason");
        assert_eq!(f.field("skbaddr").unwrap().c_type, "void *");
        let reasons = f.symbolic_values("reason").unwrap();
        assert_eq!(reasons[&3], "NO_SOCKET");
        assert_eq!(reasons[&12], "NETFILTER_DROP");
        assert!(f.symbolic_values("protocol").is_none());
    }

    #[test]
    fn parses_array_fields_and_rejects_garbage() {
        let text =
            "name: x\nID: 7\nformat:\n\tfield:char name[16];\toffset:8;\tsize:16;\tsigned:0;\n\nprint fmt: \"\"\n";
        let f = TracepointFormat::parse(text).unwrap();
        assert_eq!(f.fields[0].name, "name");
        assert_eq!(f.fields[0].size, 16);
        let text =
            "name: netlink_extack\nID: 9\nformat:\n\tfield:__data_loc char[] msg;\toffset:8;\tsize:4;\tsigned:0;\n";
        let f = TracepointFormat::parse(text).unwrap();
        assert_eq!((f.fields[0].name.as_str(), f.fields[0].c_type.as_str()), ("msg", "__data_loc char[]"));
        assert!(TracepointFormat::parse("garbage").is_err());
        assert!(TracepointFormat::parse("name: x\nID: 1\n\tfield:int;\toffset:1;\n").is_err());
    }
}
