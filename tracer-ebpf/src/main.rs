//! dptrace's kernel-side programs. Built for `bpfel-unknown-none` by `tracer/build.rs`;
//! on any other target this binary is empty so that workspace-wide commands still work.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod drops;
#[cfg(target_arch = "bpf")]
mod events;
#[cfg(target_arch = "bpf")]
mod links;
#[cfg(target_arch = "bpf")]
mod netfilter;
#[cfg(target_arch = "bpf")]
mod path;
#[cfg(target_arch = "bpf")]
mod xdp;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // eBPF programs cannot panic at run time; the verifier rejects unreachable loops.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
