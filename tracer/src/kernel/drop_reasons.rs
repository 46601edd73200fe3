//! Names of `enum skb_drop_reason` values on the running kernel.
//!
//! The numbers shift between versions (NETFILTER_DROP is 12 on 6.18, other values on 6.1), so
//! they are read from BTF, else from the `__print_symbolic` table of the kfree_skb format.

use std::collections::BTreeMap;

use crate::kernel::{btf::KernelBtf, tracefs::TracepointFormat};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasonSource {
    Btf,
    TracefsFormat,
    /// The kernel's kfree_skb has no reason field (before 5.17).
    Unavailable,
}

#[derive(Debug, Clone)]
pub struct DropReasons {
    names: BTreeMap<u64, String>,
    pub source: ReasonSource,
}

impl DropReasons {
    /// `kfree_skb` is the tracepoint's format, None when the tracepoint is missing.
    pub fn resolve(btf: Option<&KernelBtf>, kfree_skb: Option<&TracepointFormat>) -> Self {
        if kfree_skb.is_some_and(|f| f.field("reason").is_none()) {
            return Self { names: BTreeMap::new(), source: ReasonSource::Unavailable };
        }
        if let Some(values) = btf.and_then(|b| b.enum_values("skb_drop_reason").ok()) {
            let names = values
                .into_iter()
                .map(|(name, value)| {
                    let short =
                        name.strip_prefix("SKB_DROP_REASON_").or_else(|| name.strip_prefix("SKB_")).unwrap_or(&name);
                    (value, short.to_string())
                })
                .collect();
            return Self { names, source: ReasonSource::Btf };
        }
        match kfree_skb.and_then(|f| f.symbolic_values("reason")) {
            Some(names) => Self { names, source: ReasonSource::TracefsFormat },
            None => Self { names: BTreeMap::new(), source: ReasonSource::Unavailable },
        }
    }

    pub fn name(&self, value: u32) -> Option<&str> {
        self.names.get(&(value as u64)).map(String::as_str)
    }

    /// The value carrying `name` (e.g. `CONSUMED`), if this kernel has it.
    pub fn value_of(&self, name: &str) -> Option<u32> {
        self.names.iter().find(|(_, n)| *n == name).map(|(v, _)| *v as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_format_file_without_btf() {
        let format = TracepointFormat::parse(include_str!("../../tests/fixtures/6.18-kfree_skb.format")).unwrap();
        let reasons = DropReasons::resolve(None, Some(&format));
        assert_eq!(reasons.source, ReasonSource::TracefsFormat);
        assert_eq!(reasons.name(3), Some("NO_SOCKET"));
        assert_eq!(reasons.value_of("NETFILTER_DROP"), Some(12));
        assert_eq!(reasons.value_of("CONSUMED"), None);
    }

    #[test]
    fn kernels_without_reason_field_say_so() {
        let text = "name: kfree_skb\nID: 1\nformat:\n\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;\n\tfield:unsigned short protocol;\toffset:24;\tsize:2;\tsigned:0;\n\nprint fmt: \"x\"\n";
        let reasons = DropReasons::resolve(None, Some(&TracepointFormat::parse(text).unwrap()));
        assert_eq!(reasons.source, ReasonSource::Unavailable);
        assert_eq!(reasons.name(3), None);
    }
}
