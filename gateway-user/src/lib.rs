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

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled, so a signal that comes
/// between the two is not lost (or fatal).
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    }
}
