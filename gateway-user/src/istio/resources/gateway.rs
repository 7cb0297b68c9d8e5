//! Gateway: `spec.servers`, each with its port and hosts.

use serde::Deserialize;
use serde_json::Value;

use super::{nullable, Labels};

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct GatewaySpec {
    #[serde(default, deserialize_with = "nullable")]
    pub servers: Vec<Server>,
    #[serde(default, deserialize_with = "nullable")]
    pub selector: Labels,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Server {
    pub port: ServerPort,
    pub hosts: Vec<String>,
    pub bind: Option<String>,
    pub tls: Option<Value>,
    pub default_endpoint: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ServerPort {
    pub number: u32,
    pub protocol: String,
    pub name: String,
    pub target_port: Option<u32>,
}
