//! The Gateway ports: bound when a change needs them (so a port the system
//! refuses fails the change), served by one accept loop each, closed when
//! no Gateway wants them. Closing stops accepting; the connections already
//! accepted are tasks of their own and go on.
use std::{collections::BTreeMap, io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, TcpSocket},
    task::JoinHandle,
};

use super::Runtime;
use crate::stats::Stats;

/// Pending connections per port before the kernel refuses more.
const BACKLOG: u32 = 4096;

#[derive(Default)]
pub struct Ports {
    open: BTreeMap<u16, (SocketAddr, JoinHandle<()>)>,
}

impl Ports {
    pub fn is_open(&self, port: u16) -> bool {
        self.open.contains_key(&port)
    }

    pub fn open_ports(&self) -> Vec<u16> {
        self.open.keys().copied().collect()
    }

    /// Starts accepting on `listener`, which [`bind`] made.
    pub fn serve(&mut self, port: u16, listener: TcpListener, rt: Arc<Runtime>) {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], port)));
        let task = tokio::spawn(accept_loop(listener, port, rt));
        if let Some((_, old)) = self.open.insert(port, (addr, task)) {
            old.abort();
        }
    }

    /// Stops accepting on `port`; returns once its socket is closed.
    pub async fn close(&mut self, port: u16) {
        if let Some((addr, task)) = self.open.remove(&port) {
            task.abort();
            let _ = task.await;
            tracing::info!("stopped listening on {addr}");
        }
    }
}

/// A listening socket for `addr`, not yet accepting.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Lets a port closed a moment ago open again while its old connections
    // sit in TIME_WAIT; a port another socket listens on is still refused.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

async fn accept_loop(listener: TcpListener, port: u16, rt: Arc<Runtime>) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off rather than spin.
                tracing::warn!("accept on port {port} failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        Stats::inc(&rt.stats.connections_accepted);
        // The route is taken now and kept for the connection's life.
        let Some(route) = rt.table().route(port) else {
            // Accepted just as the port was being closed.
            Stats::inc(&rt.counters.connections_unrouted);
            continue;
        };
        let task_rt = rt.clone();
        rt.tasks
            .spawn(super::conn::serve(client, peer, port, route, task_rt));
    }
}
