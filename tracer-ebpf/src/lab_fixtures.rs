//! XDP programs used only by `dptrace lab` (tracer/src/lab/fixtures.rs embeds this object):
//! the lab attaches them to devices inside its own throwaway namespaces to reproduce XDP
//! failures (field report 4). They are never loaded by a tracing session, and never touch
//! a device outside the lab.
//!
//! - `lab_xdp_aborted` returns XDP_ABORTED: the kernel drops every packet and fires the
//!   `xdp:xdp_exception` tracepoint (`xdp-aborted`).
//! - `lab_xdp_pass` returns XDP_PASS: a harmless program for attach requests that fail for
//!   reasons of the device (`xdp-native-unsupported`).
//! - `lab_xdp_bad_ctx` reads `struct xdp_md` at a fixed offset far beyond its end, which the
//!   verifier rejects ("invalid bpf_context access"): BPF_PROG_LOAD fails every time, as a
//!   CNI's bundled loader did on an old kernel (`bpf-load-retry-loop`).
//!
//! Built for `bpfel-unknown-none` by `tracer/build.rs`, together with `tracer-ebpf`; on any
//! other target this binary is empty so that workspace-wide commands still work.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::xdp_action::{XDP_ABORTED, XDP_PASS},
        macros::xdp,
        programs::XdpContext,
    };

    /// Past the end of `struct xdp_md` (24 bytes on every kernel so far) by far, so that no
    /// future field can make the access valid.
    const OUT_OF_RANGE: usize = 400;

    #[xdp]
    pub fn lab_xdp_aborted(_ctx: XdpContext) -> u32 {
        XDP_ABORTED
    }

    #[xdp]
    pub fn lab_xdp_pass(_ctx: XdpContext) -> u32 {
        XDP_PASS
    }

    #[xdp]
    pub fn lab_xdp_bad_ctx(ctx: XdpContext) -> u32 {
        // A volatile read, so that the compiler keeps it although its value decides nothing.
        // SAFETY: never runs: the verifier refuses the program for this very access.
        let _ = unsafe { core::ptr::read_volatile((ctx.ctx as *const u8).add(OUT_OF_RANGE) as *const u32) };
        XDP_PASS
    }

    /// XDP programs need no GPL-only helpers; the license is the project's.
    #[no_mangle]
    #[link_section = "license"]
    pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
