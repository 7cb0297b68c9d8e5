//! The connections the agent relays right now, for what it reports about them
//! (`SIGUSR1`, exit): how many, and how many bytes they hold.
use std::{
    collections::HashMap,
    os::fd::{BorrowedFd, RawFd},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

#[derive(Default)]
pub struct Registry {
    live: Mutex<HashMap<u64, [RawFd; 2]>>,
    next: AtomicU64,
}

/// A registered connection; unregisters on drop. Drop it before closing the
/// sockets, so a report never reads a descriptor that was reused.
pub struct Entry {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

/// What the live connections hold.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Gauge {
    pub connections_active: u64,
    /// Bytes the gateway received on one socket that the peer of the other
    /// has not acknowledged yet: receive queues, psock queues, the agent's
    /// buffers and send queues together, whatever the dataplane.
    pub held_bytes: u64,
    /// The most any one connection holds.
    pub held_max_bytes: u64,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, [RawFd; 2]>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add(self: &Arc<Self>, a: RawFd, b: RawFd) -> Entry {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, [a, b]);
        Entry {
            registry: self.clone(),
            id,
        }
    }

    pub fn gauge(&self) -> Gauge {
        let live = self.lock();
        let mut g = Gauge {
            connections_active: live.len() as u64,
            ..Gauge::default()
        };
        for [a, b] in live.values() {
            // SAFETY: entries are removed before their sockets close, and the
            // lock is held for the whole read.
            let (a, b) = unsafe { (BorrowedFd::borrow_raw(*a), BorrowedFd::borrow_raw(*b)) };
            let (Ok(ia), Ok(ib)) = (crate::sys::tcp_info(&a), crate::sys::tcp_info(&b)) else {
                continue;
            };
            // Counters include a SYN or FIN each; a byte or two is noise here.
            let held = ia.bytes_received.saturating_sub(ib.bytes_acked)
                + ib.bytes_received.saturating_sub(ia.bytes_acked);
            g.held_bytes += held;
            g.held_max_bytes = g.held_max_bytes.max(held);
        }
        g
    }
}

/// The agent process itself: resident memory, descriptors, threads.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Process {
    pub rss_bytes: u64,
    pub open_fds: u64,
    pub threads: u64,
}

impl Process {
    pub fn read() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Process {
            rss_bytes: field("VmRSS:") * 1024,
            threads: field("Threads:"),
            open_fds: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64),
        }
    }
}
