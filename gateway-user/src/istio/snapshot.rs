//! What the config layer yields: listeners, their weighted routes and the
//! clusters they reach, fully resolved for this agent.
use std::{collections::BTreeMap, fmt, net::IpAddr, sync::Arc, time::Duration};

use super::error::{Diagnostic, Origin};

/// Everything the data path needs, fully resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// One per served port, sorted by port.
    pub listeners: Vec<Listener>,
    /// Unsupported-but-harmless settings and other things worth a look.
    pub warnings: Vec<Diagnostic>,
    /// The Gateway API's status of each route and Gateway this gateway
    /// serves, as its spec defines it.
    pub status: Vec<Status>,
}

/// A Gateway API resource's status: a TCPRoute's per parent
/// (`status.parents[]`), a Gateway's own (`status.conditions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub resource: super::ResourceId,
    /// For a route, the parent: `Gateway ns/name` and the parentRef's
    /// sectionName / port as written.
    pub parent: Option<String>,
    /// For a route, that parentRef as written, which `status.parents[]`
    /// repeats to say which entry it describes.
    pub parent_ref: Option<serde_json::Value>,
    pub conditions: Vec<Condition>,
    /// For a Gateway, each listener's (`status.listeners[]`).
    pub listeners: Vec<ListenerStatus>,
}

/// A Gateway listener's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerStatus {
    pub name: String,
    /// The route kinds it takes: TCPRoute, or none for a protocol this
    /// gateway does not serve.
    pub supported_kinds: Vec<&'static str>,
    pub attached_routes: usize,
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub kind: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.resource)?;
        if let Some(p) = &self.parent {
            write!(f, " on {p}")?;
        }
        f.write_str(":")?;
        for c in &self.conditions {
            write!(
                f,
                " {}={} ({})",
                c.kind,
                if c.status { "True" } else { "False" },
                c.reason
            )?;
            if !c.message.is_empty() {
                write!(f, " {}", c.message)?;
            }
            f.write_str(";")?;
        }
        for l in &self.listeners {
            write!(f, " listener {}: {} route(s)", l.name, l.attached_routes)?;
            for c in &l.conditions {
                if !c.status {
                    write!(f, ", {}=False ({}) {}", c.kind, c.reason, c.message)?;
                }
            }
            f.write_str(";")?;
        }
        Ok(())
    }
}

/// A TCP port the gateway accepts connections on.
///
/// A gateway evaluates TCP matches statically (Istio matches only the
/// server port and the gateway name there, see `l4SingleMatch` in
/// pilot/pkg/networking/core/gateway.go), so the first matching route is
/// already chosen here and there is exactly one per listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub port: u16,
    /// The Gateway that declared it, `namespace/name`.
    pub gateway: String,
    /// Where that Gateway came from and which of its `spec.servers` this
    /// is, so a port the system refuses can be blamed on the right field.
    pub origin: Origin,
    /// The index in `spec.servers` (Istio) or `spec.listeners` (Gateway API).
    pub server: usize,
    pub route: TcpRoute,
}

impl Listener {
    /// Its port's field in the Gateway, for errors.
    pub fn port_field(&self) -> String {
        if self.route.kind == super::Kind::TcpRoute {
            format!("spec.listeners[{}].port", self.server)
        } else {
            format!("spec.servers[{}].port.number", self.server)
        }
    }

    /// The Gateway's kind, as messages name it.
    pub fn gateway_kind(&self) -> super::Kind {
        if self.route.kind == super::Kind::TcpRoute {
            super::Kind::KubeGateway
        } else {
            super::Kind::Gateway
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpRoute {
    /// `VirtualService` or `TcpRoute`.
    pub kind: super::Kind,
    /// The VirtualService (or TCPRoute) it came from, `namespace/name`.
    pub virtual_service: String,
    /// Index of the rule in the VirtualService's `spec.tcp`.
    pub rule: usize,
    /// Never empty; weights are relative (a connection goes to a
    /// destination with probability weight / sum of weights).
    pub destinations: Vec<WeightedCluster>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedCluster {
    pub weight: u32,
    pub cluster: Arc<Cluster>,
}

/// A set of endpoints plus how to use them, named like Envoy's clusters so
/// logs and stats read the same as Istio's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// `outbound|PORT|SUBSET|HOST`, e.g. `outbound|9000|v1|tcp-echo.ns.svc.cluster.local`.
    pub name: String,
    /// Empty only where none can be: a Gateway API backend that is
    /// missing or refused, or a Kubernetes Service without ready pods;
    /// connections there are refused (`UH`).
    pub endpoints: Vec<Endpoint>,
    pub lb: LbPolicy,
    /// `connectionPool.tcp.connectTimeout`; Istio's default is 10s.
    pub connect_timeout: Duration,
    /// `connectionPool.tcp.idleTimeout`; `None` means no idle timeout (the
    /// user wrote `0s`). Istio's default when unset is 1h.
    pub idle_timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: Address,
    pub port: u16,
    /// Relative load-balancing weight, at least 1.
    pub weight: u32,
    pub labels: BTreeMap<String, String>,
}

/// Where an endpoint is. DNS names (ServiceEntry `resolution: DNS`) are
/// kept as names and resolved when connecting, as Envoy's STRICT_DNS does.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Address {
    Ip(IpAddr),
    Dns(String),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Ip(ip) => write!(f, "{ip}"),
            Address::Dns(name) => f.write_str(name),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    /// Istio's default (`UNSPECIFIED`), and what `LEAST_CONN` now means.
    LeastRequest,
    Random,
}

/// Istio's defaults for what a DestinationRule leaves out.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Who this gateway is, as Istio would see its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// Matched against each Gateway's `spec.selector`.
    pub labels: BTreeMap<String, String>,
    /// The namespace the gateway "runs in", for `exportTo` visibility.
    pub namespace: String,
    /// Ports a Gateway may not claim, with what holds them (e.g. a metrics
    /// endpoint), so the error can say why.
    pub reserved_ports: BTreeMap<u16, String>,
    /// Endpoints come and go with pods (`--source kubernetes`): a
    /// destination with none is served, its connections refused (`UH`), and
    /// warned about, where a hand-written config is refused instead.
    pub live_endpoints: bool,
    /// The Gateway API GatewayClass whose Gateways this gateway serves.
    pub gateway_class: String,
}

impl Default for Agent {
    /// Istio's default ingress gateway: `istio=ingressgateway` in `istio-system`.
    fn default() -> Self {
        Agent {
            labels: BTreeMap::from([("istio".to_string(), "ingressgateway".to_string())]),
            namespace: "istio-system".to_string(),
            reserved_ports: BTreeMap::new(),
            live_endpoints: false,
            gateway_class: super::DEFAULT_GATEWAY_CLASS.to_string(),
        }
    }
}
