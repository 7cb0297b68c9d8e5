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

use super::{table::Route, Runtime};
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
    let (cluster, attempts) = {
        let mut rng = rand::rng();
        let cluster = route.pick(&mut rng).clone();
        let attempts: Vec<usize> = cluster.attempts(&mut rng).collect();
        (cluster, attempts)
    };
    let config = &cluster.config;
    let health = cluster.health.as_ref();
    let mut failures = Vec::new();
    let mut backend = None;
    for i in attempts {
        let Some(ep) = config.endpoints.get(i) else {
            continue;
        };
        if health.is_some_and(|h| h.is_down(i)) {
            continue;
        }
        match dial(ep, config.connect_timeout).await {
            Ok(s) => {
                backend = Some((i, s));
                break;
            }
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
    let Some((i, backend)) = backend else {
        Stats::inc(&rt.counters.no_healthy_endpoint);
        Stats::inc(&rt.stats.backend_connect_failed);
        if health.is_some() {
            // Each endpoint that went down was logged once already.
            tracing::debug!("connection from {peer} on port {port}: no endpoint answers");
            return;
        }
        tracing::warn!(
            "connection from {peer} on port {port} closed: no healthy endpoint in {} \
             (VirtualService {}): {}",
            config.name,
            route.virtual_service,
            failures.join("; ")
        );
        // Dropping the client closes it now, rather than leaving it waiting.
        return;
    };
    Stats::inc(&cluster.counters.connections);
    let _active = cluster.activate(i);
    relay(&rt, client, backend, config.idle_timeout).await;
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

/// Relays the connection; with an idle timeout, watches both sockets'
/// byte counters beside the dataplane and resets both once neither moved
/// for that long. The dataplane is never cancelled: it sees the reset as
/// any other and ends the connection its own way.
async fn relay(rt: &Runtime, client: TcpStream, backend: TcpStream, idle: Option<Duration>) {
    // Our own descriptors: the dataplane closes its own when it is done,
    // and a raw number could by then name another socket.
    let watched = match idle {
        Some(idle) => match (
            client.as_fd().try_clone_to_owned(),
            backend.as_fd().try_clone_to_owned(),
        ) {
            (Ok(c), Ok(b)) => Some((idle, [c, b])),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!("idle timeout not enforced on a connection: {e}");
                None
            }
        },
        None => None,
    };
    let relay = rt.dp.relay(client, backend);
    let Some((idle, fds)) = watched else {
        relay.await;
        return;
    };
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
