//! ServiceEntry: hosts, ports, resolution, inline endpoints.

use serde::Deserialize;

use super::{nullable, Labels, WorkloadEntrySpec};

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ServiceEntrySpec {
    pub hosts: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub addresses: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub ports: Vec<ServicePort>,
    pub location: Option<MeshLocation>,
    pub resolution: Option<Resolution>,
    #[serde(default, deserialize_with = "nullable")]
    pub endpoints: Vec<WorkloadEntrySpec>,
    pub workload_selector: Option<SelectorLabels>,
    #[serde(default, deserialize_with = "nullable")]
    pub export_to: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub subject_alt_names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ServicePort {
    pub number: u32,
    pub name: String,
    pub protocol: Option<String>,
    pub target_port: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum MeshLocation {
    MeshExternal,
    MeshInternal,
}

/// Istio's default, when `resolution` is absent, is `NONE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum Resolution {
    #[default]
    None,
    Static,
    Dns,
    DnsRoundRobin,
    DynamicDns,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::None => "NONE",
            Resolution::Static => "STATIC",
            Resolution::Dns => "DNS",
            Resolution::DnsRoundRobin => "DNS_ROUND_ROBIN",
            Resolution::DynamicDns => "DYNAMIC_DNS",
        }
    }
}

/// `networking.v1alpha3.WorkloadSelector`, as ServiceEntry spells it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SelectorLabels {
    #[serde(default, deserialize_with = "nullable")]
    pub labels: Labels,
}
