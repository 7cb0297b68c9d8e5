//! One client connection: pick a cluster by weight, dial its endpoints in
//! load-balancing order until one answers, then hand both sockets to the
//! dataplane, enforcing the cluster's idle timeout from outside it; at the
//! end, its metrics and its access log line.
use std::{
    io,
    net::SocketAddr,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::net::TcpStream;

use super::{
    table::{ClusterRt, Route},
    Runtime,
};
use crate::{
    dataplane::End,
    istio::{Address, Cluster, Endpoint},
    telemetry::{
        access,
        conns::{rfc3339, Live, Registration, Upstream, FROM_CLIENT, TO_CLIENT},
        metrics::NO_FLAGS,
        Stats,
    },
};

/// Envoy's TCP response flags.
mod flags {
    /// No healthy upstream: nothing to dial.
    pub const UH: &str = "UH";
    /// Upstream connection failure: every endpoint tried refused.
    pub const UF: &str = "UF";
    /// No route: the port's route went away as the connection came.
    pub const NR: &str = "NR";
    /// Idle timeout.
    pub const DT: &str = "DT";
}

pub async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    port: u16,
    route: Arc<Route>,
    rt: Arc<Runtime>,
) {
    let conn = rt.dp.conns().register(
        peer,
        local_addr(&client, port),
        route.virtual_service.clone(),
    );
    // The thread-local generator cannot live across an await.
    let cluster = route.pick(&mut rand::rng()).clone();
    // Its own future: what dialling keeps (the order of attempts, the
    // failures) is gone once the connection relays.
    let (i, backend) = match connect(&rt, &cluster, conn.live.id, peer, port, &route).await {
        Ok(dialled) => dialled,
        Err(failure) => {
            // Dropping the client closes it now, rather than leaving it
            // waiting.
            drop(client);
            finished(&rt, conn, Some(&cluster.config), failure, None);
            return;
        }
    };
    drop(route);
    Stats::inc(&cluster.counters.connections);
    let _active = cluster.activate(i);
    let istio = cluster.istio(i, &rt.metrics);
    istio.opened.inc();
    conn.live.set_upstream(Upstream {
        cluster: cluster.config.clone(),
        endpoint: i,
        backend: backend
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0)),
        istio,
    });
    // Not a function of its own: each async layer keeps room for its
    // arguments beside the future it awaits (the sockets twice over).
    let (end, idle) = match cluster.config.idle_timeout {
        None => (rt.dp.relay(client, backend, &conn.live).await, false),
        Some(idle) => Box::pin(relay_watched(&rt, client, backend, idle, &conn.live)).await,
    };
    let flags = if idle { flags::DT } else { NO_FLAGS };
    finished(&rt, conn, None, flags, Some(&end));
}

/// A connection accepted on a port whose route had just gone: counted and
/// logged as Envoy would (`NR`), then closed.
pub fn unrouted(rt: &Runtime, client: TcpStream, peer: SocketAddr, port: u16) {
    let conn = rt
        .dp
        .conns()
        .register(peer, local_addr(&client, port), "-".into());
    drop(client);
    finished(rt, conn, None, flags::NR, None);
}

/// The gateway's address of `client`'s connection.
fn local_addr(client: &TcpStream, port: u16) -> SocketAddr {
    client
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), port))
}

/// The connection is over: its last bytes into Istio's counters, its close
/// counted under the flags it ended with, and its access log line.
///
/// Its record leaves the registry first, so a scrape that counts it closed
/// no longer counts it active (opened - closed = active, as a user checks).
fn finished(
    rt: &Runtime,
    conn: Registration,
    cluster: Option<&Cluster>,
    flags: &str,
    end: Option<&End>,
) {
    let live = conn.live.clone();
    drop(conn);
    match end {
        Some(End::Reset(e)) => tracing::debug!(conn = live.id, error = %e, "connection reset"),
        Some(End::Aborted(why)) => tracing::warn!(conn = live.id, "connection aborted: {why}"),
        _ => {}
    }
    // Out of the sockhash by now: every figure is in the meter.
    let moved = live.meter.read(|_| None);
    live.account(&moved);
    match live.upstream() {
        Some(up) if flags == NO_FLAGS => {
            up.istio.closed.inc();
        }
        Some(up) => {
            rt.metrics
                .counters(
                    Some(&up.cluster),
                    up.cluster.endpoints.get(up.endpoint),
                    flags,
                )
                .closed
                .inc();
        }
        None => {
            let c = rt.metrics.counters(cluster, None, flags);
            c.opened.inc();
            c.closed.inc();
        }
    }
    let Some(log) = &rt.access else {
        return;
    };
    let up = live.upstream();
    let details = match (flags, end) {
        (flags::DT, _) => Some("idle timeout".to_string()),
        (_, Some(End::Reset(e))) => Some(format!("reset: {e}")),
        (_, Some(End::Aborted(why))) => Some(format!("aborted: {why}")),
        (flags::UH, None) => Some("no healthy endpoint".to_string()),
        (flags::UF, None) => Some("every endpoint refused or timed out".to_string()),
        (flags::NR, None) => Some("no route for the port".to_string()),
        _ => None,
    };
    log.write(&access::Entry {
        start_time: &rfc3339(live.started),
        duration: live.since.elapsed().as_millis() as u64,
        response_flags: flags,
        bytes_received: moved.total(FROM_CLIENT),
        bytes_sent: moved.total(TO_CLIENT),
        upstream_host: up.map(|u| u.backend.to_string()),
        upstream_cluster: up
            .map(|u| u.cluster.name.as_str())
            .or(cluster.map(|c| c.name.as_str())),
        downstream_remote_address: live.client.to_string(),
        downstream_local_address: live.local.to_string(),
        route_name: &live.route,
        connection_termination_details: details,
        dataplane: live.meter.path().dataplane(),
        kernel_bytes_received: moved.kernel[FROM_CLIENT],
        kernel_bytes_sent: moved.kernel[TO_CLIENT],
        connection_id: live.id,
    });
}

/// Dials `cluster`'s endpoints in load-balancing order until one answers:
/// its index and the socket; else the response flag saying why not.
async fn connect(
    rt: &Runtime,
    cluster: &ClusterRt,
    id: u64,
    peer: SocketAddr,
    port: u16,
    route: &Route,
) -> Result<(usize, TcpStream), &'static str> {
    let attempts: Vec<usize> = cluster.attempts(&mut rand::rng()).collect();
    let config = &cluster.config;
    let health = cluster.health.as_ref();
    let mut failures = Vec::new();
    for i in attempts {
        let Some(ep) = config.endpoints.get(i) else {
            continue;
        };
        if health.is_some_and(|h| h.is_down(i)) {
            continue;
        }
        match dial(ep, config.connect_timeout).await {
            Ok(s) => return Ok((i, s)),
            Err(e) => {
                if let Some(h) = health {
                    h.failed(i, &e);
                }
                Stats::inc(&rt.counters.endpoint_connect_failed);
                tracing::debug!(
                    conn = id,
                    client = %peer,
                    port,
                    cluster = %config.name,
                    endpoint = %format_args!("{}:{}", ep.address, ep.port),
                    error = %e,
                    "endpoint refused"
                );
                failures.push(format!("{}:{}: {e}", ep.address, ep.port));
            }
        }
    }
    Stats::inc(&rt.counters.no_healthy_endpoint);
    Stats::inc(&rt.stats.backend_connect_failed);
    let flag = if failures.is_empty() {
        flags::UH
    } else {
        flags::UF
    };
    if health.is_some() {
        // Each endpoint that went down was logged once already.
        tracing::debug!(conn = id, client = %peer, port, "no endpoint answers");
        return Err(flag);
    }
    tracing::warn!(
        conn = id,
        client = %peer,
        port,
        cluster = %config.name,
        virtual_service = %route.virtual_service,
        "connection closed: no healthy endpoint in {}: {}",
        config.name,
        failures.join("; ")
    );
    Err(flag)
}

async fn dial(ep: &Endpoint, timeout: Duration) -> io::Result<TcpStream> {
    match &ep.address {
        Address::Ip(ip) => super::dial::connect(SocketAddr::new(*ip, ep.port), timeout).await,
        // Resolved per connection, as Envoy's STRICT_DNS re-resolves: a
        // name's addresses may change while the config does not.
        Address::Dns(name) => {
            let attempt = async {
                let mut last = None;
                for addr in tokio::net::lookup_host((name.as_str(), ep.port)).await? {
                    match super::dial::connecting(addr).await {
                        Ok(s) => return Ok(s),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, "the name resolves to no address")
                }))
            };
            match tokio::time::timeout(timeout, attempt).await {
                Ok(r) => r,
                Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
            }
        }
    }
}

/// Watches both sockets' byte counters beside the dataplane and resets
/// both once neither moved for `idle`. The dataplane is never cancelled:
/// it sees the reset as any other and ends the connection its own way.
async fn relay_watched(
    rt: &Runtime,
    client: TcpStream,
    backend: TcpStream,
    idle: Duration,
    live: &Arc<Live>,
) -> (End, bool) {
    // Our own descriptors: the dataplane closes its own when it is done,
    // and a raw number could by then name another socket.
    let fds = match (
        client.as_fd().try_clone_to_owned(),
        backend.as_fd().try_clone_to_owned(),
    ) {
        (Ok(c), Ok(b)) => [c, b],
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(conn = live.id, error = %e, "idle timeout not enforced");
            return (rt.dp.relay(client, backend, live).await, false);
        }
    };
    let relay = rt.dp.relay(client, backend, live);
    tokio::pin!(relay);
    let ended = tokio::select! {
        end = &mut relay => (end, false),
        () = idle_for(&fds, idle) => {
            Stats::inc(&rt.counters.idle_timeouts);
            tracing::debug!(conn = live.id, ?idle, "idle: resetting the connection");
            for fd in &fds {
                if let Err(e) = disconnect(fd) {
                    tracing::debug!(conn = live.id, error = %e, "cannot reset an idle socket");
                }
            }
            (relay.await, true)
        }
    };
    // Only now may the sockets really close: the dataplane's close was of
    // its own descriptors.
    drop(fds);
    ended
}

/// Every byte either socket received or had acknowledged: it moves with
/// any traffic in either direction, whichever dataplane carries it.
fn activity(fds: &[OwnedFd; 2]) -> Option<u64> {
    let mut sum = 0u64;
    for fd in fds {
        let info = crate::sys::tcp_info(fd).ok()?;
        sum = sum
            .wrapping_add(info.bytes_received)
            .wrapping_add(info.bytes_acked);
    }
    Some(sum)
}

/// Returns once the counters have not moved for `idle`. Sampled, so it
/// fires up to an eighth of `idle` late, never early.
async fn idle_for(fds: &[OwnedFd; 2], idle: Duration) {
    let period = (idle / 8).clamp(Duration::from_millis(10), Duration::from_secs(60));
    let mut last = activity(fds);
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(period).await;
        let now = activity(fds);
        // Unreadable counters count as activity: never reset blind.
        if now.is_none() || now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= idle {
            return;
        }
    }
}

/// `connect(AF_UNSPEC)` on a connected TCP socket is the RFC 793 ABORT
/// (`tcp_disconnect`): it sends a reset to the peer and leaves
/// ECONNRESET pending on the socket, which every dataplane reports as a
/// reset and propagates.
fn disconnect(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: an all-zero sockaddr is valid; we set its family.
    let mut addr: libc::sockaddr = unsafe { std::mem::zeroed() };
    addr.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
    // SAFETY: `addr` lives for the call and its size is passed with it.
    let ret = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &addr,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use clap::Parser as _;

    use super::super::{table::Table, Runtime};
    use crate::istio::{Cluster, LbPolicy};

    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        dataplane: crate::dataplane::DataplaneArgs,
        #[command(flatten)]
        observe: super::super::ObserveArgs,
    }

    /// A connection's task is this future, whatever it waits on: dialling
    /// and the idle watch must not make every relaying connection bigger
    /// than the dataplane's own future (at most 1,024 bytes) needs. With the
    /// idle watch inline it was 2,576 bytes, and 10,000 idle connections
    /// took 30 MiB more.
    #[test]
    fn a_connection_task_is_little_more_than_its_relay() {
        let flags = Flags::parse_from(["gateway", "--dataplane", "userspace", "--workers", "1"]);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let rt = Runtime::start(&flags.dataplane, &flags.observe)
                .await
                .expect("runtime");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let cluster = Arc::new(Cluster {
                name: "c".into(),
                endpoints: Vec::new(),
                lb: LbPolicy::RoundRobin,
                connect_timeout: Duration::from_secs(1),
                idle_timeout: None,
            });
            let table = Table::fixed(1, "r", cluster, None, &rt.counters);
            let route = table.route(1).expect("route");
            let task = super::serve(client, addr, 1, route, rt.clone());
            let size = std::mem::size_of_val(&task);
            assert!(size <= 1280, "a connection's task is {size} bytes");
        });
    }
}
