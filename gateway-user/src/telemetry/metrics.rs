//! The Prometheus metrics: Istio's four TCP counters with Istio's labels,
//! kept as the connections open, move bytes and close; and the gateway's
//! own figures, read from a [`Snapshot`] at each scrape.
//!
//! Direction, as Istio's metric definitions say it: `received` bytes are
//! the request's (what the client sent, forwarded to the backend), `sent`
//! bytes the response's (what the backend sent, forwarded to the client).
//! Envoy's source reporter once swapped the two (istio/istio#32399); here
//! they mean that on every path.
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::Snapshot;
use crate::istio::{Cluster, Endpoint};

/// What Istio writes for a label it cannot know.
const UNKNOWN: &str = "unknown";
/// Envoy's response flags for a connection with nothing to flag.
pub const NO_FLAGS: &str = "-";

/// The labels of Istio's TCP metrics (ztunnel's set, in its order).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IstioLabels {
    reporter: String,
    source_workload: String,
    source_canonical_service: String,
    source_canonical_revision: String,
    source_workload_namespace: String,
    source_principal: String,
    source_app: String,
    source_version: String,
    source_cluster: String,
    destination_service: String,
    destination_service_namespace: String,
    destination_service_name: String,
    destination_workload: String,
    destination_canonical_service: String,
    destination_canonical_revision: String,
    destination_workload_namespace: String,
    destination_principal: String,
    destination_app: String,
    destination_version: String,
    destination_cluster: String,
    request_protocol: String,
    response_flags: String,
    connection_security_policy: String,
}

/// Who the gateway is, as the `source_*` labels say it. In Kubernetes the
/// DaemonSet passes its pod's namespace (`POD_NAMESPACE`); the workload is
/// the gateway's own name either way.
#[derive(Debug, Clone)]
pub struct Source {
    pub workload: String,
    pub namespace: String,
}

impl Default for Source {
    fn default() -> Self {
        Source {
            workload: "gateway".into(),
            namespace: std::env::var("POD_NAMESPACE").unwrap_or_else(|_| UNKNOWN.into()),
        }
    }
}

/// Istio's four TCP counters for one label set, resolved once and kept by
/// whoever counts into them (a connection, an endpoint).
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub opened: Counter,
    pub closed: Counter,
    pub received: Counter,
    pub sent: Counter,
}

#[derive(Debug, Default)]
struct Families {
    opened: Family<IstioLabels, Counter>,
    closed: Family<IstioLabels, Counter>,
    received: Family<IstioLabels, Counter>,
    sent: Family<IstioLabels, Counter>,
}

#[derive(Debug, Default)]
pub struct Metrics {
    source: Source,
    istio: Families,
}

/// Service, name and namespace from an Istio cluster name
/// (`outbound|9000|v1|tcp-echo.ns.svc.cluster.local`); a name that is not
/// one (`gateway forward`'s) is the service itself.
fn service(cluster: &str) -> (String, String, String) {
    let host = cluster.rsplit('|').next().unwrap_or(cluster);
    let mut parts = host.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(name), Some(ns), Some(rest)) if rest.starts_with("svc.") => {
            (host.to_string(), name.to_string(), ns.to_string())
        }
        _ => (host.to_string(), host.to_string(), UNKNOWN.to_string()),
    }
}

impl Metrics {
    pub fn new(source: Source) -> Self {
        Metrics {
            source,
            istio: Families::default(),
        }
    }

    fn labels(&self, cluster: Option<&Cluster>, ep: Option<&Endpoint>, flags: &str) -> IstioLabels {
        let unknown = || UNKNOWN.to_string();
        let (service, name, namespace) =
            cluster.map_or_else(|| (unknown(), unknown(), unknown()), |c| service(&c.name));
        let label = |keys: &[&str]| {
            ep.and_then(|e| keys.iter().find_map(|k| e.labels.get(*k)))
                .cloned()
                .unwrap_or_else(unknown)
        };
        let app = label(&["app", "app.kubernetes.io/name"]);
        let version = label(&["version", "app.kubernetes.io/version"]);
        // Istio's canonical labels, defaulting to app and version as
        // Istio's own defaulting does.
        let known = |keys: &[&str], or: &String| {
            ep.and_then(|e| keys.iter().find_map(|k| e.labels.get(*k)))
                .cloned()
                .unwrap_or_else(|| or.clone())
        };
        let canonical = known(&["service.istio.io/canonical-name"], &app);
        let revision = known(&["service.istio.io/canonical-revision"], &version);
        IstioLabels {
            reporter: "source".into(),
            source_workload: self.source.workload.clone(),
            source_canonical_service: self.source.workload.clone(),
            source_canonical_revision: "latest".into(),
            source_workload_namespace: self.source.namespace.clone(),
            source_principal: unknown(),
            source_app: self.source.workload.clone(),
            source_version: unknown(),
            source_cluster: unknown(),
            destination_service: service,
            destination_service_namespace: namespace,
            destination_service_name: name,
            destination_workload: unknown(),
            destination_canonical_service: canonical,
            destination_canonical_revision: revision,
            destination_workload_namespace: unknown(),
            destination_principal: unknown(),
            destination_app: app,
            destination_version: version,
            destination_cluster: unknown(),
            request_protocol: "tcp".into(),
            response_flags: flags.into(),
            connection_security_policy: unknown(),
        }
    }

    /// The counters of connections to `ep` of `cluster` with `flags`
    /// (`cluster` `None`: no route).
    pub fn counters(
        &self,
        cluster: Option<&Cluster>,
        ep: Option<&Endpoint>,
        flags: &str,
    ) -> Counters {
        let labels = self.labels(cluster, ep, flags);
        Counters {
            opened: self.istio.opened.get_or_create(&labels).clone(),
            closed: self.istio.closed.get_or_create(&labels).clone(),
            received: self.istio.received.get_or_create(&labels).clone(),
            sent: self.istio.sent.get_or_create(&labels).clone(),
        }
    }

    /// The exposition: Istio's counters, then the gateway's own from
    /// `snapshot` and `paths` (live connections per dataplane).
    pub fn render(&self, snapshot: &Snapshot, paths: &[(&str, u64)]) -> String {
        let mut reg = Registry::default();
        reg.register(
            "istio_tcp_connections_opened",
            "Connections the gateway opened to a destination",
            self.istio.opened.clone(),
        );
        reg.register(
            "istio_tcp_connections_closed",
            "Connections closed",
            self.istio.closed.clone(),
        );
        reg.register(
            "istio_tcp_received_bytes",
            "Bytes received from clients (the request), forwarded to the destination",
            self.istio.received.clone(),
        );
        reg.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to clients (the response), received from the destination",
            self.istio.sent.clone(),
        );
        own(reg.sub_registry_with_prefix("gateway"), snapshot, paths);
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &reg);
        text
    }
}

/// Help as the encoder wants it: it adds the full stop itself, and doc
/// comments come with a leading space.
fn help(doc: &str) -> &str {
    doc.trim().trim_end_matches('.')
}

fn counter(reg: &mut Registry, name: &str, doc: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    reg.register(name, help(doc), c);
}

fn gauge(reg: &mut Registry, name: &str, doc: &str, value: u64) {
    let g: Gauge = Gauge::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    reg.register(name, help(doc), g);
}

/// The gateway's own figures, named as the JSON report names them.
fn own(reg: &mut Registry, s: &Snapshot, paths: &[(&str, u64)]) {
    for (name, help) in super::stats::HELP {
        counter(reg, name, help, s.stats.get(name).copied().unwrap_or(0));
    }
    let r = &s.routing;
    counter(
        reg,
        "no_healthy_endpoint",
        "Connections closed because no endpoint of their cluster answered",
        r.no_healthy_endpoint,
    );
    counter(
        reg,
        "endpoint_connect_failed",
        "Single dials that failed (the connection then tried the next endpoint)",
        r.endpoint_connect_failed,
    );
    counter(
        reg,
        "idle_timeouts",
        "Connections closed by their cluster's idle timeout",
        r.idle_timeouts,
    );
    counter(
        reg,
        "connections_unrouted",
        "Connections accepted on a port whose route was just removed",
        r.connections_unrouted,
    );
    let clusters: Family<Vec<(String, String)>, Counter> = Family::default();
    for (name, n) in &s.clusters {
        clusters
            .get_or_create(&vec![("cluster".to_string(), name.clone())])
            .inc_by(*n);
    }
    reg.register(
        "cluster_connections",
        "Connections each cluster took, by Istio's cluster name",
        clusters,
    );
    let active: Family<Vec<(String, String)>, Gauge> = Family::default();
    for (path, n) in paths {
        active
            .get_or_create(&vec![("dataplane".to_string(), path.to_string())])
            .set(i64::try_from(*n).unwrap_or(i64::MAX));
    }
    reg.register(
        "connections_active",
        "Live connections, by the dataplane that carries each now",
        active,
    );
    let g = &s.gauge;
    gauge(
        reg,
        "connections_dialling",
        "Connections accepted and still dialling their backend",
        g.connections_dialling,
    );
    gauge(
        reg,
        "held_bytes",
        "Bytes received on one socket not yet acknowledged by the other's peer",
        g.held_bytes,
    );
    gauge(
        reg,
        "held_max_bytes",
        "The most any one connection holds",
        g.held_max_bytes,
    );
    let p = &s.process;
    gauge(
        reg,
        "resident_memory_bytes",
        "The agent's resident memory",
        p.rss_bytes,
    );
    gauge(
        reg,
        "open_fds",
        "The agent's open file descriptors",
        p.open_fds,
    );
    gauge(reg, "threads", "The agent's threads", p.threads);
    gauge(
        reg,
        "config_generation",
        "The routing table's generation",
        s.config_generation,
    );
    if let Some(entries) = s.map_entries {
        gauge(
            reg,
            "map_entries",
            "Entries in the socket, control and flow maps together",
            entries as u64,
        );
    }
    if let Some(k) = &s.kernel {
        let verdict = reg.sub_registry_with_prefix("verdict");
        for (name, help, value) in k.fields() {
            counter(verdict, name, help, value);
        }
    }
}
