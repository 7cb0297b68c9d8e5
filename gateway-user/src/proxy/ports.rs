//! The Gateway ports: bound when a change needs them (so a port the system
//! refuses fails the change), served by one accept loop each, closed when
//! no Gateway wants them. Each port has a listening socket and an accept
//! loop on every worker (see [`super::workers`]). Closing stops accepting;
//! the connections already accepted are tasks of their own and go on.
use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use tokio::{net::TcpListener, task::JoinHandle};

use super::{workers::Listeners, Runtime};
use crate::telemetry::Stats;

#[derive(Default)]
pub struct Ports {
    open: BTreeMap<u16, (SocketAddr, Vec<JoinHandle<()>>)>,
}

impl Ports {
    pub fn is_open(&self, port: u16) -> bool {
        self.open.contains_key(&port)
    }

    pub fn open_ports(&self) -> Vec<u16> {
        self.open.keys().copied().collect()
    }

    /// Starts accepting on `listeners` (from `Workers::bind`).
    pub fn serve(&mut self, port: u16, listeners: Listeners, rt: Arc<Runtime>) {
        let addr = listeners.local_addr();
        let tasks = rt.workers.serve(listeners, |listener| {
            accept_loop(listener, port, rt.clone())
        });
        if let Some((_, old)) = self.open.insert(port, (addr, tasks)) {
            old.iter().for_each(JoinHandle::abort);
        }
    }

    /// Stops accepting on `port`; returns once its sockets are closed.
    pub async fn close(&mut self, port: u16) {
        if let Some((addr, tasks)) = self.open.remove(&port) {
            tasks.iter().for_each(JoinHandle::abort);
            for task in tasks {
                let _ = task.await;
            }
            tracing::info!("stopped listening on {addr}");
        }
    }

    /// Stops accepting everywhere (the gateway is stopping).
    pub async fn close_all(&mut self) {
        for port in self.open_ports() {
            self.close(port).await;
        }
    }
}

async fn accept_loop(listener: TcpListener, port: u16, rt: Arc<Runtime>) {
    let what = format!("port {port}");
    loop {
        let (client, peer) = super::workers::accept(&listener, &what).await;
        Stats::inc(&rt.stats.connections_accepted);
        // The route is taken now and kept for the connection's life.
        let Some(route) = rt.table().route(port) else {
            // Accepted just as the port was being closed.
            Stats::inc(&rt.counters.connections_unrouted);
            super::conn::unrouted(&rt, client, peer, port);
            continue;
        };
        let task_rt = rt.clone();
        rt.tasks
            .spawn(super::conn::serve(client, peer, port, route, task_rt));
    }
}
