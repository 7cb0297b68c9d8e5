//! What the serving stack counts about routing, beside the dataplane's
//! [`super::Stats`]: connections per cluster and the ways a connection can
//! fail before it reaches a dataplane.
use std::{
    collections::BTreeMap,
    sync::{atomic::AtomicU64, Arc, Mutex},
};

#[derive(Debug, Default)]
pub struct Counters {
    /// Connections that went to each cluster, by cluster name; kept when a
    /// cluster goes away, so totals never drop.
    clusters: Mutex<BTreeMap<String, Arc<ClusterCounters>>>,
    /// Connections closed because no endpoint of their cluster answered.
    pub no_healthy_endpoint: AtomicU64,
    /// Single dials that failed (the connection then tried the next endpoint).
    pub endpoint_connect_failed: AtomicU64,
    /// Connections closed by the cluster's idle timeout.
    pub idle_timeouts: AtomicU64,
    /// Connections accepted on a port whose route was just removed.
    pub connections_unrouted: AtomicU64,
}

/// Connections a cluster took, whatever routing table it was in.
#[derive(Debug, Default)]
pub struct ClusterCounters {
    pub connections: AtomicU64,
}

impl Counters {
    /// The counters of cluster `name`, created at first use.
    pub fn cluster(&self, name: &str) -> Arc<ClusterCounters> {
        let mut map = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(name.to_string()).or_default().clone()
    }

    /// The routing counters, and connections per cluster.
    pub fn read(&self) -> (Routing, BTreeMap<String, u64>) {
        use std::sync::atomic::Ordering::Relaxed;
        let clusters = self
            .clusters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, c)| (name.clone(), c.connections.load(Relaxed)))
            .collect();
        let routing = Routing {
            no_healthy_endpoint: self.no_healthy_endpoint.load(Relaxed),
            endpoint_connect_failed: self.endpoint_connect_failed.load(Relaxed),
            idle_timeouts: self.idle_timeouts.load(Relaxed),
            connections_unrouted: self.connections_unrouted.load(Relaxed),
        };
        (routing, clusters)
    }
}

/// [`Counters`] read at one moment.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Routing {
    pub no_healthy_endpoint: u64,
    pub endpoint_connect_failed: u64,
    pub idle_timeouts: u64,
    pub connections_unrouted: u64,
}
