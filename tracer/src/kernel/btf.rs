//! Kernel BTF: struct member offsets and enum values of the running kernel.
//!
//! Member lookup walks anonymous structs and unions, because the kernel wraps fields in them
//! freely (`sk_buff.dev` sits in an anonymous union inside an anonymous struct; the header
//! offsets moved into `struct_group(headers)` in 5.x), and the nesting differs by version.

use std::path::Path;

use btf_rs::{Btf, Type};

use crate::kernel::KernelError;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Where a member lives: byte offset from the start of the outer struct, and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberLocation {
    pub offset: u32,
    pub size: u32,
}

pub struct KernelBtf {
    btf: Btf,
}

impl std::fmt::Debug for KernelBtf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelBtf")
    }
}

impl KernelBtf {
    pub fn load(path: &Path) -> Result<Self, KernelError> {
        let btf = Btf::from_file(path).map_err(|e| KernelError::NoBtf(format!("{}: {e}", path.display())))?;
        Ok(Self { btf })
    }

    /// The BTF of a loaded module (split BTF on top of this one), for types that live in
    /// modules on distribution kernels (`nf_tables`, `x_tables`, `ip_tables`). None when the
    /// module is not loaded, built in (its types are then in vmlinux), or has no BTF.
    pub fn module(&self, module: &str) -> Option<KernelBtf> {
        let path = Path::new(VMLINUX).with_file_name(module);
        Btf::from_split_file(&path, &self.btf).ok().map(|btf| KernelBtf { btf })
    }

    /// Resolves a dotted member path such as `nd_net.net` inside `struct <strct>`.
    pub fn member(&self, strct: &str, path: &str) -> Result<MemberLocation, KernelError> {
        let missing = |why: String| KernelError::MissingMember { member: format!("struct {strct}.{path}"), why };
        let mut ty = self
            .btf
            .resolve_types_by_name(strct)
            .map_err(|e| missing(e.to_string()))?
            .into_iter()
            .find(|t| matches!(t, Type::Struct(_)))
            .ok_or_else(|| missing("no such struct in BTF".into()))?;
        let mut offset_bits = 0u32;
        for segment in path.split('.') {
            let container = self.skip_modifiers(ty).map_err(|e| missing(e.to_string()))?;
            let (bits, member_ty) = self
                .find_member(&container, segment)
                .map_err(|e| missing(e.to_string()))?
                .ok_or_else(|| missing(format!("no member `{segment}`")))?;
            offset_bits += bits;
            ty = member_ty;
        }
        if !offset_bits.is_multiple_of(8) {
            return Err(missing("member is a bitfield".into()));
        }
        let size = self.size_of(&ty).map_err(|e| missing(e.to_string()))?;
        Ok(MemberLocation { offset: offset_bits / 8, size })
    }

    /// All `(name, value)` pairs of `enum <name>` (or `enum64`).
    pub fn enum_values(&self, name: &str) -> Result<Vec<(String, u64)>, KernelError> {
        let missing = |why: String| KernelError::MissingMember { member: format!("enum {name}"), why };
        for ty in self.btf.resolve_types_by_name(name).map_err(|e| missing(e.to_string()))? {
            match ty {
                Type::Enum(e) => {
                    return e
                        .members
                        .iter()
                        .map(|m| Ok((self.btf.resolve_name(m).map_err(|e| missing(e.to_string()))?, m.val() as u64)))
                        .collect();
                }
                Type::Enum64(e) => {
                    return e
                        .members
                        .iter()
                        .map(|m| Ok((self.btf.resolve_name(m).map_err(|e| missing(e.to_string()))?, m.val())))
                        .collect();
                }
                _ => {}
            }
        }
        Err(missing("no such enum in BTF".into()))
    }

    /// Parameter names of kernel function `name` (BTF `FUNC` → `FUNC_PROTO`), or None when
    /// BTF has no such function (not built in, renamed, or fully inlined).
    pub fn function_params(&self, name: &str) -> Option<Vec<String>> {
        let func = self.btf.resolve_types_by_name(name).ok()?.into_iter().find_map(|t| match t {
            Type::Func(f) => Some(f),
            _ => None,
        })?;
        match self.btf.resolve_chained_type(&func).ok()? {
            Type::FuncProto(proto) => proto.parameters.iter().map(|p| self.btf.resolve_name(p).ok()).collect(),
            _ => None,
        }
    }

    /// The parameters of raw tracepoint `event` as C type names (`struct sock *`, `int`),
    /// without the leading `void *` every tracepoint passes its probes; None when BTF has no
    /// `btf_trace_<event>` (no such tracepoint in this kernel).
    pub fn raw_tracepoint_params(&self, event: &str) -> Option<Vec<String>> {
        let typedef = self.btf.resolve_types_by_name(&format!("btf_trace_{event}")).ok()?;
        let Some(Type::Typedef(typedef)) = typedef.into_iter().find(|t| matches!(t, Type::Typedef(_))) else {
            return None;
        };
        let Type::Ptr(ptr) = self.btf.resolve_chained_type(&typedef).ok()? else { return None };
        let Type::FuncProto(proto) = self.btf.resolve_chained_type(&ptr).ok()? else { return None };
        let params = proto.parameters.iter().skip(1);
        params.map(|p| self.c_type_name(self.btf.resolve_chained_type(p).ok()?)).collect()
    }

    /// Checks that raw tracepoint `event`'s parameters begin with `wanted` (C types, `const`
    /// aside): a raw program reads its arguments by position, and reading the wrong type
    /// would report garbage. `Err` says what this kernel has instead.
    pub fn raw_tracepoint_fits(&self, event: &str, wanted: &[&str]) -> Result<(), String> {
        let params = self.raw_tracepoint_params(event).ok_or_else(|| format!("no {event} tracepoint in BTF"))?;
        if prototype_starts_with(&params, wanted) {
            Ok(())
        } else {
            Err(format!("raw tracepoint {event} takes ({}), not ({}, …)", params.join(", "), wanted.join(", ")))
        }
    }

    /// A type as C spells it, for the types tracepoint prototypes use.
    fn c_type_name(&self, ty: Type) -> Option<String> {
        Some(match ty {
            Type::Void => "void".into(),
            Type::Ptr(p) => format!("{} *", self.c_type_name(self.btf.resolve_chained_type(&p).ok()?)?),
            Type::Const(c) => format!("const {}", self.c_type_name(self.btf.resolve_chained_type(&c).ok()?)?),
            Type::Volatile(v) => format!("volatile {}", self.c_type_name(self.btf.resolve_chained_type(&v).ok()?)?),
            Type::Struct(s) => format!("struct {}", self.btf.resolve_name(&s).ok()?),
            Type::Union(u) => format!("union {}", self.btf.resolve_name(&u).ok()?),
            Type::Enum(e) => format!("enum {}", self.btf.resolve_name(&e).ok()?),
            Type::Int(i) => self.btf.resolve_name(&i).ok()?,
            Type::Typedef(t) => self.btf.resolve_name(&t).ok()?,
            _ => return None,
        })
    }

    /// Searches `container` for `name`, descending into anonymous members.
    /// Returns the member's bit offset relative to `container` and its type.
    fn find_member(&self, container: &Type, name: &str) -> anyhow::Result<Option<(u32, Type)>> {
        let members = match container {
            Type::Struct(s) | Type::Union(s) => &s.members,
            _ => return Ok(None),
        };
        for member in members {
            let member_name = self.btf.resolve_name(member)?;
            let member_ty = self.btf.resolve_chained_type(member)?;
            if member_name == name {
                return Ok(Some((member.bit_offset(), member_ty)));
            }
            if member_name.is_empty() {
                let inner = self.skip_modifiers(member_ty)?;
                if let Some((bits, ty)) = self.find_member(&inner, name)? {
                    return Ok(Some((member.bit_offset() + bits, ty)));
                }
            }
        }
        Ok(None)
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn skip_modifiers(&self, mut ty: Type) -> anyhow::Result<Type> {
        loop {
            ty = match &ty {
                Type::Typedef(t) => self.btf.resolve_chained_type(t)?,
                Type::Const(t) => self.btf.resolve_chained_type(t)?,
                Type::Volatile(t) => self.btf.resolve_chained_type(t)?,
                Type::Restrict(t) => self.btf.resolve_chained_type(t)?,
                Type::TypeTag(t) => self.btf.resolve_chained_type(t)?,
                _ => return Ok(ty),
            };
        }
    }

    fn size_of(&self, ty: &Type) -> anyhow::Result<u32> {
        Ok(match self.skip_modifiers(ty.clone())? {
            Type::Int(i) => i.size() as u32,
            Type::Ptr(_) => std::mem::size_of::<usize>() as u32,
            Type::Struct(s) | Type::Union(s) => s.size() as u32,
            Type::Enum(e) => e.size() as u32,
            Type::Enum64(e) => e.size() as u32,
            Type::Array(a) => {
                let elem = self.btf.resolve_chained_type(&a)?;
                a.len() as u32 * self.size_of(&elem)?
            }
            other => anyhow::bail!("cannot size a BTF {}", other.name()),
        })
    }
}

/// Whether `params` begin with `wanted`, `const` qualifiers aside.
fn prototype_starts_with(params: &[String], wanted: &[&str]) -> bool {
    let bare = |t: &str| t.replace("const ", "");
    params.len() >= wanted.len() && params.iter().zip(wanted).all(|(p, w)| bare(p) == bare(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only runs where the kernel exposes BTF; the values are checked against each other
    /// rather than against numbers, which differ per kernel build.
    #[test]
    fn prototypes_match_by_leading_types_const_aside() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let kfree = p(&["struct sk_buff *", "void *", "enum skb_drop_reason", "struct sock *"]);
        assert!(prototype_starts_with(&kfree, &["struct sk_buff *", "void *", "enum skb_drop_reason"]));
        // Before 5.17: no reason argument.
        let old = p(&["struct sk_buff *", "void *"]);
        assert!(!prototype_starts_with(&old, &["struct sk_buff *", "void *", "enum skb_drop_reason"]));
        assert!(prototype_starts_with(&p(&["const struct sk_buff *", "int"]), &["struct sk_buff *"]));
        assert!(!prototype_starts_with(&p(&["struct net_device *"]), &["struct sk_buff *"]));
    }

    #[test]
    fn resolves_nested_members_on_this_kernel() {
        let Ok(btf) = KernelBtf::load(Path::new(VMLINUX)) else {
            eprintln!("skipped: no {VMLINUX} on this machine");
            return;
        };
        let dev = btf.member("sk_buff", "dev").unwrap();
        assert_eq!(dev.size, 8);
        assert_eq!(btf.member("sk_buff", "network_header").unwrap().size, 2);
        assert_eq!(btf.member("net_device", "name").unwrap().size, 16);
        let nd_net = btf.member("net_device", "nd_net").unwrap();
        let nd_net_net = btf.member("net_device", "nd_net.net").unwrap();
        assert_eq!(nd_net.offset, nd_net_net.offset, "possible_net_t holds just the pointer");
        assert_eq!(btf.member("net", "ns.inum").unwrap().size, 4);
        assert!(btf.member("sk_buff", "no_such_member").is_err());
        let params = btf.function_params("consume_skb").expect("consume_skb is a BTF function");
        assert_eq!(params, ["skb"]);
        assert!(btf.function_params("no_such_function_dptrace").is_none());
        let exception = btf.raw_tracepoint_params("xdp_exception").expect("xdp_exception is a tracepoint");
        assert_eq!(exception, ["const struct net_device *", "const struct bpf_prog *", "u32"]);
        assert!(btf.raw_tracepoint_params("no_such_tracepoint_dptrace").is_none());
        assert!(btf.raw_tracepoint_fits("xdp_exception", &["struct net_device *", "struct bpf_prog *"]).is_ok());
        let wrong = btf.raw_tracepoint_fits("xdp_exception", &["struct sk_buff *"]).unwrap_err();
        assert!(wrong.contains("const struct net_device *"), "{wrong}");
        let reasons = btf.enum_values("skb_drop_reason").unwrap();
        assert!(reasons.iter().any(|(n, _)| n == "SKB_DROP_REASON_NO_SOCKET"));
    }
}
