//! The connections the agent holds right now: who they are (client, route,
//! cluster, backend), what they have moved each way and on which path, for
//! `gateway inspect connections`, the access log and the metrics; and what
//! they hold, for the report's gauge.
//!
//! A connection's [`Live`] record is made at accept and shared by the
//! connection's task and the registry. The dataplane writes its [`Meter`]
//! with relaxed atomic adds where it already counts bytes: a reader sees
//! each figure as of some moment during the read, never a torn one.
use std::{
    collections::HashMap,
    net::SocketAddr,
    os::fd::{BorrowedFd, RawFd},
    sync::{
        atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicU8, Ordering::Relaxed},
        Arc, Mutex, OnceLock,
    },
    time::{Instant, SystemTime},
};

use serde::{Deserialize, Serialize};

use crate::istio::Cluster;

/// Client to backend, and backend to client: the index of a direction in
/// every per-direction array here.
pub const FROM_CLIENT: usize = 0;
pub const TO_CLIENT: usize = 1;

#[derive(Default)]
pub struct Registry {
    live: Mutex<HashMap<u64, Arc<Live>>>,
    next: AtomicU64,
    /// The agent has stopped accepting and waits for these to finish.
    draining: AtomicBool,
}

/// Where a connection's bytes move now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    /// Dialling its backend; no byte moved yet.
    Connecting,
    /// The agent's copy loop (userspace, or auto before it moves).
    Copy,
    /// Both sockets in the sockhash: the verdict redirects, the agent
    /// takes over what a slow reader leaves.
    Kernel,
    /// splice(2) through a pipe.
    Splice,
}

impl Path {
    fn from_u8(v: u8) -> Path {
        match v {
            1 => Path::Copy,
            2 => Path::Kernel,
            3 => Path::Splice,
            _ => Path::Connecting,
        }
    }

    /// The dataplane's name for it, as `--dataplane` spells them.
    pub fn dataplane(self) -> &'static str {
        match self {
            Path::Connecting => "-",
            Path::Copy => "userspace",
            Path::Kernel => "ebpf",
            Path::Splice => "splice",
        }
    }
}

/// What a connection has moved, written by whichever dataplane carries it.
#[derive(Debug, Default)]
pub struct Meter {
    /// Bytes the agent wrote to the far socket (copied through its memory,
    /// or spliced), per direction.
    moved: [AtomicU64; 2],
    /// Bytes the verdict redirected in the kernel, per direction, once the
    /// connection has left the sockhash; while it is in, `cookies` name the
    /// sockets whose flow records count them.
    kernel: [AtomicU64; 2],
    /// Socket cookies of [client, backend] while in the sockhash, else 0.
    cookies: [AtomicU64; 2],
    path: AtomicU8,
    /// Bit `d` set: direction `d` has forwarded its FIN.
    closed: AtomicU8,
}

impl Meter {
    pub fn moved(&self, dir: usize, n: u64) {
        self.moved[dir].fetch_add(n, Relaxed);
    }

    pub fn set_path(&self, path: Path) {
        self.path.store(path as u8, Relaxed);
    }

    pub fn path(&self) -> Path {
        Path::from_u8(self.path.load(Relaxed))
    }

    /// Direction `dir` has passed its FIN on.
    pub fn closed(&self, dir: usize) {
        self.closed.fetch_or(1 << dir, Relaxed);
    }

    /// The connection's sockets are in the sockhash under these cookies.
    pub fn in_kernel(&self, cookies: [u64; 2]) {
        self.cookies[0].store(cookies[0], Relaxed);
        self.cookies[1].store(cookies[1], Relaxed);
        self.set_path(Path::Kernel);
    }

    /// The connection has left the sockhash, after the verdict redirected
    /// `redirected` bytes each way. The totals are stored before the
    /// cookies go, so a reader finds one or the other.
    pub fn left_kernel(&self, redirected: [u64; 2]) {
        for (d, n) in redirected.into_iter().enumerate() {
            self.kernel[d].fetch_add(n, Relaxed);
        }
        self.cookies[0].store(0, Relaxed);
        self.cookies[1].store(0, Relaxed);
    }

    /// The figures now; `flow(cookie)` reads what the verdict redirected
    /// from that socket so far, for a connection still in the kernel.
    pub fn read(&self, flow: impl Fn(u64) -> Option<u64>) -> Moved {
        let mut kernel = [0; 2];
        for (d, k) in kernel.iter_mut().enumerate() {
            let cookie = self.cookies[d].load(Relaxed);
            *k = match (cookie != 0).then(|| flow(cookie)).flatten() {
                Some(n) => n,
                None => self.kernel[d].load(Relaxed),
            };
        }
        let agent = [self.moved[0].load(Relaxed), self.moved[1].load(Relaxed)];
        Moved { kernel, agent }
    }

    fn closed_dirs(&self) -> [bool; 2] {
        let bits = self.closed.load(Relaxed);
        [bits & 1 != 0, bits & 2 != 0]
    }
}

/// Bytes a connection moved each way ([`FROM_CLIENT`], [`TO_CLIENT`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct Moved {
    pub kernel: [u64; 2],
    pub agent: [u64; 2],
}

impl Moved {
    pub fn total(&self, dir: usize) -> u64 {
        self.kernel[dir] + self.agent[dir]
    }
}

/// Where a connection went, once a backend answered.
#[derive(Debug)]
pub struct Upstream {
    pub cluster: Arc<Cluster>,
    /// Its index in the cluster's endpoints.
    pub endpoint: usize,
    pub backend: SocketAddr,
    /// Istio's counters of that endpoint, which the bytes go to.
    pub istio: super::metrics::Counters,
}

/// One connection, from accept to close.
#[derive(Debug)]
pub struct Live {
    pub id: u64,
    pub client: SocketAddr,
    /// The gateway's own address of the connection.
    pub local: SocketAddr,
    /// The VirtualService (or forward's name) whose route it took.
    pub route: Arc<str>,
    pub started: SystemTime,
    pub since: Instant,
    upstream: OnceLock<Upstream>,
    pub meter: Meter,
    /// [client, backend] while the dataplane holds them open, else -1.
    fds: [AtomicI32; 2],
    /// A dataplane took it: from then until its record goes (after its
    /// sockets are closed) it counts as active.
    relayed: AtomicBool,
    /// Bytes each way already added to Istio's byte counters.
    reported: [AtomicU64; 2],
}

impl Live {
    pub fn set_upstream(&self, up: Upstream) {
        let _ = self.upstream.set(up);
    }

    pub fn upstream(&self) -> Option<&Upstream> {
        self.upstream.get()
    }

    /// Adds what the connection moved since the last call to Istio's byte
    /// counters: called at each scrape and at close, possibly at once; each
    /// byte is counted once (the larger total wins).
    pub fn account(&self, moved: &Moved) {
        let Some(up) = self.upstream() else {
            return;
        };
        for (dir, counter) in [
            (FROM_CLIENT, &up.istio.received),
            (TO_CLIENT, &up.istio.sent),
        ] {
            let now = moved.total(dir);
            let before = self.reported[dir].fetch_max(now, Relaxed);
            if now > before {
                counter.inc_by(now - before);
            }
        }
    }
}

/// Keeps a connection in the registry; removes it when dropped.
pub struct Registration {
    registry: Arc<Registry>,
    pub live: Arc<Live>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.live.id);
    }
}

/// The dataplane's hold on a connection's descriptors, for the gauge:
/// dropped before the sockets close, so a reader never reads a descriptor
/// that was reused.
pub struct Entry {
    registry: Arc<Registry>,
    live: Arc<Live>,
}

impl Entry {
    pub fn meter(&self) -> &Meter {
        &self.live.meter
    }

    /// The connection's id, for its log lines.
    pub fn id(&self) -> u64 {
        self.live.id
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let _held = self.registry.lock();
        for fd in &self.live.fds {
            fd.store(-1, Relaxed);
        }
    }
}

/// What the live connections hold.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Gauge {
    /// Connections a dataplane relays, until their sockets are closed.
    pub connections_active: u64,
    /// Connections accepted and still dialling their backend.
    pub connections_dialling: u64,
    /// Bytes the gateway received on one socket that the peer of the other
    /// has not acknowledged yet: receive queues, psock queues, the agent's
    /// buffers and send queues together, whatever the dataplane.
    pub held_bytes: u64,
    /// The most any one connection holds.
    pub held_max_bytes: u64,
}

/// One live connection as `gateway inspect connections` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnView {
    pub id: u64,
    pub client: String,
    /// The gateway's address of the connection.
    pub local: String,
    pub port: u16,
    pub route: String,
    /// Istio's cluster name (`outbound|9000|v1|tcp-echo.default.svc.cluster.local`).
    pub cluster: Option<String>,
    pub backend: Option<String>,
    /// Where its bytes move now: `userspace`, `ebpf`, `splice`.
    pub dataplane: String,
    /// Bytes received from the client and forwarded to the backend.
    pub bytes_from_client: u64,
    /// Bytes received from the backend and forwarded to the client.
    pub bytes_to_client: u64,
    /// Of those, what the verdict redirected in the kernel.
    pub kernel_bytes_from_client: u64,
    pub kernel_bytes_to_client: u64,
    /// When it was accepted, RFC 3339 in UTC (Envoy's `START_TIME`).
    pub start_time: String,
    pub age_seconds: f64,
    /// `connecting`, `copy`, `kernel`, `splice`, `half-closed` or `draining`.
    pub state: String,
    /// Which directions have passed their FIN on: `client` (client to
    /// backend), `backend`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub closed: Vec<String>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Live>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a connection just accepted.
    pub fn register(
        self: &Arc<Self>,
        client: SocketAddr,
        local: SocketAddr,
        route: Arc<str>,
    ) -> Registration {
        let id = self.next.fetch_add(1, Relaxed) + 1;
        let live = Arc::new(Live {
            id,
            client,
            local,
            route,
            started: SystemTime::now(),
            since: Instant::now(),
            upstream: OnceLock::new(),
            meter: Meter::default(),
            fds: [AtomicI32::new(-1), AtomicI32::new(-1)],
            relayed: AtomicBool::new(false),
            reported: Default::default(),
        });
        self.lock().insert(id, live.clone());
        Registration {
            registry: self.clone(),
            live,
        }
    }

    /// The dataplane takes `live`'s sockets.
    pub fn hold(self: &Arc<Self>, live: &Arc<Live>, client: RawFd, backend: RawFd) -> Entry {
        live.fds[0].store(client, Relaxed);
        live.fds[1].store(backend, Relaxed);
        live.relayed.store(true, Relaxed);
        Entry {
            registry: self.clone(),
            live: live.clone(),
        }
    }

    /// The agent stops accepting: what is left is draining.
    pub fn set_draining(&self) {
        self.draining.store(true, Relaxed);
    }

    /// Every live connection, oldest first.
    pub fn views(&self, flow: impl Fn(u64) -> Option<u64>) -> Vec<ConnView> {
        let mut live: Vec<Arc<Live>> = self.lock().values().cloned().collect();
        live.sort_by_key(|l| l.id);
        let draining = self.draining.load(Relaxed);
        live.iter()
            .map(|l| {
                let moved = l.meter.read(&flow);
                let path = l.meter.path();
                let closed = l.meter.closed_dirs();
                let state = if draining {
                    "draining"
                } else if closed.iter().any(|c| *c) {
                    "half-closed"
                } else {
                    match path {
                        Path::Connecting => "connecting",
                        Path::Copy => "copy",
                        Path::Kernel => "kernel",
                        Path::Splice => "splice",
                    }
                };
                let up = l.upstream();
                ConnView {
                    id: l.id,
                    client: l.client.to_string(),
                    local: l.local.to_string(),
                    port: l.local.port(),
                    route: l.route.to_string(),
                    cluster: up.map(|u| u.cluster.name.clone()),
                    backend: up.map(|u| u.backend.to_string()),
                    dataplane: path.dataplane().to_string(),
                    bytes_from_client: moved.total(FROM_CLIENT),
                    bytes_to_client: moved.total(TO_CLIENT),
                    kernel_bytes_from_client: moved.kernel[FROM_CLIENT],
                    kernel_bytes_to_client: moved.kernel[TO_CLIENT],
                    start_time: rfc3339(l.started),
                    age_seconds: l.since.elapsed().as_secs_f64(),
                    state: state.to_string(),
                    closed: [("client", closed[0]), ("backend", closed[1])]
                        .into_iter()
                        .filter(|(_, c)| *c)
                        .map(|(n, _)| n.to_string())
                        .collect(),
                }
            })
            .collect()
    }

    /// Brings every live connection's bytes into Istio's counters (a
    /// scrape); returns how many connections each dataplane carries now.
    pub fn account_all(&self, flow: impl Fn(u64) -> Option<u64>) -> Vec<(&'static str, u64)> {
        let live: Vec<Arc<Live>> = self.lock().values().cloned().collect();
        let mut paths = [
            (Path::Copy.dataplane(), 0),
            (Path::Kernel.dataplane(), 0),
            (Path::Splice.dataplane(), 0),
        ];
        for l in &live {
            l.account(&l.meter.read(&flow));
            let name = l.meter.path().dataplane();
            if let Some(p) = paths.iter_mut().find(|p| p.0 == name) {
                p.1 += 1;
            }
        }
        paths.to_vec()
    }

    pub fn gauge(&self) -> Gauge {
        let live = self.lock();
        let mut g = Gauge::default();
        for l in live.values() {
            if !l.relayed.load(Relaxed) {
                g.connections_dialling += 1;
                continue;
            }
            g.connections_active += 1;
            let (a, b) = (l.fds[0].load(Relaxed), l.fds[1].load(Relaxed));
            if a < 0 || b < 0 {
                // Closing: its record goes once its sockets are closed.
                continue;
            }
            // SAFETY: descriptors are cleared under this lock before their
            // sockets close, and the lock is held for the whole read.
            let (a, b) = unsafe { (BorrowedFd::borrow_raw(a), BorrowedFd::borrow_raw(b)) };
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

/// `t` as `2026-12-03T17:15:53.123Z`, the form Envoy's access log
/// writes `START_TIME` in.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date, in 400-year eras that start on
    // 0000-03-01 (so the leap day ends each year).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_millis()
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_envoy_writes_them() {
        let at = |s: u64, ms: u64| {
            rfc3339(SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(s * 1000 + ms))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        // A leap day, the end of a century year that is not leap, and now.
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(4_107_542_399, 999), "2100-02-28T23:59:59.999Z");
        assert_eq!(at(1_796_318_153, 120), "2026-12-03T17:15:53.120Z");
    }

    #[test]
    fn a_connection_in_the_kernel_is_counted_from_its_flows_then_from_its_totals() {
        let reg = Arc::new(Registry::default());
        let r = reg.register(
            "10.0.0.1:40000".parse().expect("addr"),
            "10.0.0.2:31400".parse().expect("addr"),
            "default/tcp-echo".into(),
        );
        let m = &r.live.meter;
        m.set_path(Path::Copy);
        m.moved(FROM_CLIENT, 10);
        m.in_kernel([7, 8]);
        let flows = |c: u64| Some(if c == 7 { 100 } else { 200 });
        let v = &reg.views(flows)[0];
        assert_eq!((v.bytes_from_client, v.bytes_to_client), (110, 200));
        assert_eq!(v.state, "kernel");
        m.left_kernel([100, 200]);
        m.closed(FROM_CLIENT);
        // No flow may be read once the cookies are gone.
        let v = &reg.views(|_| Some(1 << 40))[0];
        assert_eq!((v.bytes_from_client, v.kernel_bytes_to_client), (110, 200));
        assert_eq!(
            (v.state.as_str(), v.closed.clone()),
            ("half-closed", vec!["client".to_string()])
        );
        drop(r);
        assert!(reg.views(|_| None).is_empty());
    }
}
