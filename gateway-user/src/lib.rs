//! gateway: an eBPF-accelerated TCP gateway configured with Istio's API.
//!
//! `main.rs` only calls [`cli::main`]; everything the binary does lives here.
pub mod cli;

mod agent;
mod bpf;
mod dataplane;
mod forward;
mod istio;
mod proxy;
mod sys;
mod telemetry;
