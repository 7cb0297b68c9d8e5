//! DestinationRule: traffic policy, port-level policies, subsets.

use serde::Deserialize;
use serde_json::Value;

use super::{nullable, Labels, PortSelector, ProtoDuration};

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct DestinationRuleSpec {
    pub host: String,
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(default, deserialize_with = "nullable")]
    pub subsets: Vec<Subset>,
    #[serde(default, deserialize_with = "nullable")]
    pub export_to: Vec<String>,
    pub workload_selector: Option<MatchLabels>,
}

/// `istio.type.v1beta1.WorkloadSelector`, as DestinationRule spells it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct MatchLabels {
    #[serde(default, deserialize_with = "nullable")]
    pub match_labels: Labels,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TrafficPolicy {
    pub load_balancer: Option<LoadBalancer>,
    pub connection_pool: Option<ConnectionPool>,
    pub outlier_detection: Option<Value>,
    pub tls: Option<Value>,
    #[serde(default, deserialize_with = "nullable")]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    pub tunnel: Option<Value>,
    pub proxy_protocol: Option<Value>,
    pub retry_budget: Option<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct PortTrafficPolicy {
    pub port: Option<PortSelector>,
    pub load_balancer: Option<LoadBalancer>,
    pub connection_pool: Option<ConnectionPool>,
    pub outlier_detection: Option<Value>,
    pub tls: Option<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct LoadBalancer {
    pub simple: Option<SimpleLb>,
    pub consistent_hash: Option<Value>,
    pub locality_lb_setting: Option<Value>,
    pub zone_aware_lb_setting: Option<Value>,
    pub warmup_duration_secs: Option<Value>,
    pub warmup: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum SimpleLb {
    Unspecified,
    LeastConn,
    Random,
    Passthrough,
    RoundRobin,
    LeastRequest,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ConnectionPool {
    pub tcp: Option<TcpSettings>,
    pub http: Option<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TcpSettings {
    pub max_connections: Option<i32>,
    pub connect_timeout: Option<ProtoDuration>,
    pub tcp_keepalive: Option<Value>,
    pub max_connection_duration: Option<ProtoDuration>,
    pub idle_timeout: Option<ProtoDuration>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Subset {
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub labels: Labels,
    pub traffic_policy: Option<TrafficPolicy>,
}
