//! One client connection: pick a cluster by weight, dial its endpoints in
//! load-balancing order until one answers, then hand both sockets to the
//! dataplane, enforcing the cluster's idle timeout from outside it.
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
    istio::{Address, Endpoint},
    telemetry::Stats,
};

pub async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    port: u16,
    route: Arc<Route>,
    rt: Arc<Runtime>,
) {
    // The thread-local generator cannot live across an await.
    let cluster = route.pick(&mut rand::rng()).clone();
    // Its own future: what dialling keeps (the order of attempts, the
    // failures) is gone once the connection relays.
    let Some((i, backend)) = connect(&rt, &cluster, peer, port, &route).await else {
        // Dropping the client closes it now, rather than leaving it waiting.
        return;
    };
    drop(route);
    Stats::inc(&cluster.counters.connections);
    let _active = cluster.activate(i);
    relay(&rt, client, backend, cluster.config.idle_timeout).await;
}

/// Dials `cluster`'s endpoints in load-balancing order until one answers:
/// its index and the socket.
async fn connect(
    rt: &Runtime,
    cluster: &ClusterRt,
    peer: SocketAddr,
    port: u16,
    route: &Route,
) -> Option<(usize, TcpStream)> {
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
            Ok(s) => return Some((i, s)),
            Err(e) => {
                if let Some(h) = health {
                    h.failed(i, &e);
                }
                Stats::inc(&rt.counters.endpoint_connect_failed);
                tracing::debug!(
                    "connection from {peer} on port {port}: {} endpoint {}:{}: {e}",
                    config.name,
                    ep.address,
                    ep.port
                );
                failures.push(format!("{}:{}: {e}", ep.address, ep.port));
            }
        }
    }
    Stats::inc(&rt.counters.no_healthy_endpoint);
    Stats::inc(&rt.stats.backend_connect_failed);
    if health.is_some() {
        // Each endpoint that went down was logged once already.
        tracing::debug!("connection from {peer} on port {port}: no endpoint answers");
        return None;
    }
    tracing::warn!(
        "connection from {peer} on port {port} closed: no healthy endpoint in {} \
         (VirtualService {}): {}",
        config.name,
        route.virtual_service,
        failures.join("; ")
    );
    None
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

/// Relays the connection. Every connection's task holds this future from
/// accept to close, so the idle watch (its timer and the select over both)
/// is boxed: only connections whose cluster has an idle timeout carry it
/// (the task was 2,576 bytes with it inline, 30 MiB more for 10,000 idle
/// connections).
async fn relay(rt: &Runtime, client: TcpStream, backend: TcpStream, idle: Option<Duration>) {
    match idle {
        None => {
            rt.dp.relay(client, backend).await;
        }
        Some(idle) => Box::pin(relay_watched(rt, client, backend, idle)).await,
    }
}

/// Watches both sockets' byte counters beside the dataplane and resets
/// both once neither moved for `idle`. The dataplane is never cancelled:
/// it sees the reset as any other and ends the connection its own way.
async fn relay_watched(rt: &Runtime, client: TcpStream, backend: TcpStream, idle: Duration) {
    // Our own descriptors: the dataplane closes its own when it is done,
    // and a raw number could by then name another socket.
    let fds = match (
        client.as_fd().try_clone_to_owned(),
        backend.as_fd().try_clone_to_owned(),
    ) {
        (Ok(c), Ok(b)) => [c, b],
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!("idle timeout not enforced on a connection: {e}");
            rt.dp.relay(client, backend).await;
            return;
        }
    };
    let relay = rt.dp.relay(client, backend);
    tokio::pin!(relay);
    tokio::select! {
        _ = &mut relay => {}
        () = idle_for(&fds, idle) => {
            Stats::inc(&rt.counters.idle_timeouts);
            tracing::debug!("connection idle for {idle:?}: resetting it");
            for fd in &fds {
                if let Err(e) = disconnect(fd) {
                    tracing::debug!("cannot reset an idle connection's socket: {e}");
                }
            }
            relay.await;
        }
    }
    // Only now may the sockets really close: the dataplane's close was of
    // its own descriptors.
    drop(fds);
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
            let rt = Runtime::start(&flags.dataplane).await.expect("runtime");
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
