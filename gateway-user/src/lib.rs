//! gateway: an eBPF-accelerated TCP gateway configured with Istio's API.
//!
//! `main.rs` only calls [`cli::main`]; everything the binary does lives here,
//! in layers, each using only those below it:
//!
//! - [`cli`]: one module per verb; composes the layers below.
//! - `control`: the controller, its typed errors, the saved state and the
//!   config sources (files, the admin socket).
//! - `proxy`: the serving stack: workers and listeners, the routing table,
//!   dialling with fail-over, one connection's life, drain and report.
//! - `dataplane`: how a connection's bytes move (auto's policy, copy,
//!   splice, ebpf).
//! - `bpf`: the embedded programs and their maps.
//! - `telemetry`: counters, gauges and the snapshot exporters render.
//! - `istio`: pure: Istio's resources parsed, stored, validated and
//!   resolved into a routing snapshot.
//! - `sys`: the system calls the standard library does not wrap.
pub mod cli;

mod bpf;
mod control;
mod dataplane;
mod istio;
mod proxy;
mod sys;
mod telemetry;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;

#[cfg(test)]
mod layers;
