//! dptrace: eBPF tracing of the Linux network datapath, with diagnoses.
//!
//! Data flows one way: `probes` (kernel programs, ring buffer) → `decode` → `analyze`
//! (correlate, then rules) → `output` (sinks). `kernel` holds what the running kernel
//! offers; `session` wires one tracing session; `lab` reproduces known failures.

pub mod analyze;
pub mod check;
pub mod cli;
pub mod commands;
pub mod decode;
pub mod generate;
pub mod kernel;
pub mod lab;
pub mod output;
pub mod packet_filter;
pub mod pods;
pub mod probes;
pub mod record;
pub mod report;
pub mod session;
pub mod usage;
