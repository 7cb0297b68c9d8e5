//! WorkloadEntry: one workload's address, ports, labels and weight.
use std::collections::BTreeMap;

use serde::Deserialize;

use super::{nullable, Labels};

/// A WorkloadEntry's spec, also the shape of a ServiceEntry's inline endpoint.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct WorkloadEntrySpec {
    pub address: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub ports: BTreeMap<String, u32>,
    #[serde(default, deserialize_with = "nullable")]
    pub labels: Labels,
    pub network: Option<String>,
    pub locality: Option<String>,
    pub weight: Option<u32>,
    pub service_account: Option<String>,
}
