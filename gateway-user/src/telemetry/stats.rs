//! The agent's own counters. Kernel-side truth lives in the `TOTALS` map; these
//! say what the agent did, and what it saw the verdict do per connection.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident),* $(,)?) => {
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
        }

        /// Each counter's name and what it counts (its doc comment), for
        /// the metrics' help text.
        pub const HELP: &[(&str, &str)] = &[
            $((stringify!($name), concat!($($doc),*)),)*
        ];

        impl Stats {
            /// Every counter, by its name.
            pub fn read(&self) -> std::collections::BTreeMap<&'static str, u64> {
                std::collections::BTreeMap::from([
                    $((stringify!($name), self.$name.load(Relaxed)),)*
                ])
            }
        }
    };
}

counters! {
    /// Client connections accepted.
    connections_accepted,
    /// Connections relayed to the end (both FINs forwarded).
    connections_completed,
    /// Connections ended by a reset, propagated to the other side.
    connections_reset,
    /// Connections aborted by the agent (bytes could not be delivered).
    connections_aborted,
    /// Connections closed because no backend could be reached.
    backend_connect_failed,
    /// Connections relayed in the kernel (sockhash + verdict).
    dataplane_ebpf,
    /// Connections relayed with splice(2).
    dataplane_splice,
    /// Connections relayed with a userspace copy loop (with `auto`: ended
    /// before they were worth moving into the kernel).
    dataplane_userspace,
    /// Connections `auto` moved from the copy path into the kernel.
    connections_promoted,
    /// Connections `auto` moved from the copy path to splice (bulk).
    connections_bulk_spliced,
    /// Connections that were meant for the kernel but could not be inserted
    /// (already half-closed, map full) and ran on splice instead.
    ebpf_fallback_splice,
    /// Connections in the kernel whose backend the kernel refused after the
    /// client was in (its FIN or reset came during the insertion): client to
    /// backend in the kernel, the backend's bytes copied by the agent.
    ebpf_backend_copied,
    /// Payload bytes the verdict redirected, summed over finished connections.
    bytes_kernel_redirected,
    /// Payload bytes moved by splice(2) (through a pipe, never in userspace).
    bytes_spliced,
    /// Payload bytes the agent read into its own memory and wrote out again.
    bytes_agent_copied,
    /// Bytes the kernel handed the verdict a second time (a retransmitted
    /// segment straddling what TCP already had, queued whole), discarded
    /// by the agent instead of forwarded.
    bytes_overlap_discarded,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
}
