//! VirtualService: its hosts, gateways and TCP routes.

use serde::Deserialize;
use serde_json::Value;

use super::{nullable, Labels};

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct VirtualServiceSpec {
    #[serde(default, deserialize_with = "nullable")]
    pub hosts: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub gateways: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub http: Vec<Value>,
    #[serde(default, deserialize_with = "nullable")]
    pub tls: Vec<Value>,
    #[serde(default, deserialize_with = "nullable")]
    pub tcp: Vec<TcpRoute>,
    #[serde(default, deserialize_with = "nullable")]
    pub export_to: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TcpRoute {
    #[serde(default, rename = "match", deserialize_with = "nullable")]
    pub matches: Vec<L4Match>,
    #[serde(default, deserialize_with = "nullable")]
    pub route: Vec<RouteDestination>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct L4Match {
    pub port: Option<u32>,
    #[serde(default, deserialize_with = "nullable")]
    pub gateways: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub destination_subnets: Vec<String>,
    pub source_subnet: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub source_labels: Labels,
    pub source_namespace: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RouteDestination {
    pub destination: Destination,
    pub weight: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Destination {
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<PortSelector>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct PortSelector {
    pub number: Option<u32>,
}
