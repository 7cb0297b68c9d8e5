//! Kubernetes' own Service and EndpointSlice (core/v1, discovery.k8s.io/v1),
//! as far as a TCP gateway needs them: a Service's ports and selector, an
//! EndpointSlice's ready addresses and port numbers. Both carry many fields
//! the API server sets or other controllers read (clusterIP, nodeName,
//! hints); those are accepted and ignored, not refused, since they do not
//! change where connections go.
use serde::Deserialize;
use serde_json::Value;

use super::{nullable, Labels, Metadata};

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ServiceSpec {
    #[serde(default, deserialize_with = "nullable")]
    pub ports: Vec<KubeServicePort>,
    #[serde(default, deserialize_with = "nullable")]
    pub selector: Labels,
    #[serde(rename = "type")]
    pub type_: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct KubeServicePort {
    pub name: Option<String>,
    pub port: u32,
    pub protocol: Option<String>,
    /// A number, or the name of a container port (which only the pod
    /// knows: read as the same number as `port`).
    pub target_port: Option<Value>,
}

/// An EndpointSlice document: its fields sit at the top level, beside
/// `metadata`, not under a `spec`.
#[derive(Debug, Deserialize)]
pub(crate) struct SliceEnvelope {
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: Metadata,
    #[serde(flatten)]
    pub slice: EndpointSliceDoc,
}

/// What an EndpointSlice says.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EndpointSliceDoc {
    #[serde(default)]
    pub address_type: String,
    #[serde(default, deserialize_with = "nullable")]
    pub endpoints: Vec<SliceEndpoint>,
    #[serde(default, deserialize_with = "nullable")]
    pub ports: Vec<SlicePort>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SliceEndpoint {
    #[serde(default, deserialize_with = "nullable")]
    pub addresses: Vec<String>,
    pub conditions: Option<SliceConditions>,
    /// The pod behind it, in a cluster (whose labels it then carries).
    pub target_ref: Option<TargetRef>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TargetRef {
    pub kind: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SliceConditions {
    /// "Nil should be interpreted as true" (discovery.k8s.io/v1).
    pub ready: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SlicePort {
    pub name: Option<String>,
    pub port: Option<u32>,
    pub protocol: Option<String>,
}
