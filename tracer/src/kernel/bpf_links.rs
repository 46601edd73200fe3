//! BPF links the kernel holds, read by id: which programs replace functions of another
//! program (freplace). libxdp's dispatcher (`xdp_dispatcher`, used by xdp-tools and other
//! libxdp loaders wherever the kernel has BTF and trampolines) is the program attached to a
//! device; the programs that decide (xdp-filter's `xdpfilt_*`, …) run as freplace (EXT)
//! programs linked to its stubs. An XDP_DROP names no program, so to say which program
//! dropped, the dispatcher's components are found here.
//!
//! aya lists links but does not expose a tracing link's target, so this reads
//! `bpf_link_info` itself (the uapi layout, from aya-obj's bindings). Kernels that predate
//! `target_obj_id` leave it 0: then nothing is found and the dispatcher stays the answer.

use std::os::fd::{FromRawFd, OwnedFd};

use aya_obj::generated::{bpf_cmd, bpf_link_info, bpf_link_type};

/// At most this many links are looked at (a node with Cilium has a few hundred).
const MAX_LINKS: usize = 4096;

/// `bpf_attr` for `BPF_*_GET_NEXT_ID` and `BPF_*_GET_FD_BY_ID`.
#[repr(C)]
#[derive(Default)]
struct IdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// `bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

fn bpf<T>(cmd: bpf_cmd, attr: &mut T) -> i64 {
    // SAFETY: `attr` is a live, properly sized `bpf_attr` prefix for `cmd`; the kernel reads
    // and writes at most `size_of::<T>()` bytes of it.
    unsafe { libc::syscall(libc::SYS_bpf, cmd as i64, attr as *mut T, std::mem::size_of::<T>()) }
}

/// The ids of the programs linked as freplace (EXT) programs to program `target`, in the
/// order of their link ids (libxdp attaches in its run order).
pub fn freplace_programs_of(target: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut attr = IdAttr::default();
    for _ in 0..MAX_LINKS {
        if bpf(bpf_cmd::BPF_LINK_GET_NEXT_ID, &mut attr) != 0 {
            break; // ENOENT: no more links (or no permission: nothing to say then)
        }
        let id = attr.next_id;
        attr = IdAttr { id, ..Default::default() };
        let mut open = IdAttr { id, ..Default::default() };
        let fd = bpf(bpf_cmd::BPF_LINK_GET_FD_BY_ID, &mut open);
        if fd < 0 {
            continue; // gone meanwhile
        }
        // SAFETY: the kernel just returned this fd to us; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: plain data; all-zero is a valid bpf_link_info.
        let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
        let mut get = InfoAttr {
            bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
            info_len: std::mem::size_of::<bpf_link_info>() as u32,
            info: &mut info as *mut bpf_link_info as u64,
        };
        if bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut get) != 0 {
            continue;
        }
        if info.type_ != bpf_link_type::BPF_LINK_TYPE_TRACING as u32 {
            continue;
        }
        // SAFETY: a tracing link's info fills the `tracing` member of the union.
        let target_obj_id = unsafe { info.__bindgen_anon_1.tracing.target_obj_id };
        if target_obj_id == target && info.prog_id != 0 {
            found.push(info.prog_id);
        }
    }
    found
}
