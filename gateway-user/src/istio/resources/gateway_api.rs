//! The Kubernetes Gateway API's TCP kinds, field for field as in
//! gateway-api's `apis/v1` and `apis/v1alpha2` Go types: `Gateway`,
//! `TCPRoute` and `ReferenceGrant`. Fields for HTTP and TLS are accepted
//! as opaque values, so a Gateway shared with other routes still reads.
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::nullable;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct KubeGatewaySpec {
    pub gateway_class_name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub listeners: Vec<KubeListener>,
    #[serde(default, deserialize_with = "nullable")]
    pub addresses: Vec<Value>,
    pub infrastructure: Option<Value>,
    pub backend_tls: Option<Value>,
    pub allowed_listeners: Option<Value>,
    pub default_scope: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct KubeListener {
    pub name: String,
    pub hostname: Option<String>,
    pub port: u32,
    pub protocol: String,
    pub tls: Option<Value>,
    pub allowed_routes: Option<AllowedRoutes>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct AllowedRoutes {
    pub namespaces: Option<RouteNamespaces>,
    #[serde(default, deserialize_with = "nullable")]
    pub kinds: Vec<RouteGroupKind>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RouteNamespaces {
    pub from: Option<FromNamespaces>,
    pub selector: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub(crate) enum FromNamespaces {
    All,
    Same,
    Selector,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RouteGroupKind {
    pub group: Option<String>,
    pub kind: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TcpRouteSpec {
    #[serde(default, deserialize_with = "nullable")]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default, deserialize_with = "nullable")]
    pub rules: Vec<TcpRouteRule>,
    #[serde(default, deserialize_with = "nullable")]
    pub hostnames: Vec<String>,
    pub use_default_gateways: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ParentRef {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TcpRouteRule {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub backend_refs: Vec<BackendRef>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct BackendRef {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<u32>,
    /// Default 1; 0 sends nothing.
    pub weight: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ReferenceGrantSpec {
    pub from: Vec<GrantFrom>,
    pub to: Vec<GrantTo>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct GrantFrom {
    pub group: String,
    pub kind: String,
    pub namespace: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct GrantTo {
    pub group: String,
    pub kind: String,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct GatewayClassSpec {
    pub controller_name: String,
    pub parameters_ref: Option<Value>,
    pub description: Option<String>,
}
