//! The lab's XDP test fixtures (`tracer-ebpf/src/lab_fixtures.rs`), built with the project's
//! own eBPF toolchain by `build.rs` and embedded here. The lab writes them to its scratch
//! directory for tools that take a file (`ip link set dev DEV xdp… obj FILE program NAME`)
//! and attaches them only to devices inside its own namespaces.

use std::path::PathBuf;

use super::netns::{Lab, Unreproducible};

/// Empty when dptrace was built from a prebuilt tracer object (`DPTRACE_EBPF_OBJECT`)
/// without `DPTRACE_LAB_FIXTURES`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lab-fixtures"));

/// Returns XDP_ABORTED for every packet.
pub const XDP_ABORTED: &str = "lab_xdp_aborted";
/// Returns XDP_PASS for every packet.
pub const XDP_PASS: &str = "lab_xdp_pass";
/// Reads `struct xdp_md` out of bounds: the verifier refuses to load it.
pub const XDP_BAD_CTX: &str = "lab_xdp_bad_ctx";

/// The file name of the object in the lab's scratch directory.
const FILE: &str = "lab-fixtures.o";

/// Whether this build of dptrace carries the fixtures.
pub fn available() -> bool {
    !OBJECT.is_empty()
}

/// Writes the fixture object into the lab's scratch directory; returns its path. Fails with
/// `Unreproducible` when this build has no fixtures.
pub fn write(lab: &mut Lab) -> anyhow::Result<PathBuf> {
    if !available() {
        return Err(Unreproducible::new("no-xdp-fixtures", "dptrace was built without the lab's XDP fixtures").into());
    }
    lab.scratch_file(FILE, OBJECT)
}
