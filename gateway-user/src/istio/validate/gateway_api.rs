//! The Gateway API kinds on their own: what their CRDs' schemas and CEL
//! rules refuse (gateway-api `config/crd`), so a file the API server would
//! refuse is refused here too.
use std::collections::BTreeSet;

use super::checks::port_in_range;
use crate::istio::{
    error::{Origin, Report},
    names::dns1123_subdomain,
    resources::{KubeGatewaySpec, KubeTcpRouteSpec, ReferenceGrantSpec},
};

pub(super) fn gateway(o: &Origin, s: &KubeGatewaySpec, report: &mut Report) {
    if s.gateway_class_name.is_empty() {
        report.error(o, "spec.gatewayClassName", "must not be empty");
    }
    if s.listeners.is_empty() || s.listeners.len() > 64 {
        report.error(o, "spec.listeners", "must have between 1 and 64 listeners");
    }
    let mut names = BTreeSet::new();
    for (i, l) in s.listeners.iter().enumerate() {
        let p = format!("spec.listeners[{i}]");
        if let Err(why) = dns1123_subdomain(&l.name) {
            report.error(o, format!("{p}.name"), why);
        }
        if !names.insert(&l.name) {
            report.error(
                o,
                format!("{p}.name"),
                format!(
                    "listener name {:?} is used twice; names must be unique",
                    l.name
                ),
            );
        }
        if let Err(why) = port_in_range(l.port) {
            report.error(o, format!("{p}.port"), why);
        }
        if l.protocol.is_empty() {
            report.error(o, format!("{p}.protocol"), "must not be empty");
        }
        if l.protocol == "TCP" && l.hostname.is_some() {
            report.warn(
                o,
                format!("{p}.hostname"),
                "a TCP listener cannot match on host names; ignored",
            );
        }
    }
}

pub(super) fn tcp_route(o: &Origin, api_version: &str, s: &KubeTcpRouteSpec, report: &mut Report) {
    if s.parent_refs.len() > 32 {
        report.error(o, "spec.parentRefs", "must have at most 32 entries");
    }
    for (i, p) in s.parent_refs.iter().enumerate() {
        if let Some(port) = p.port {
            if let Err(why) = port_in_range(port) {
                report.error(o, format!("spec.parentRefs[{i}].port"), why);
            }
        }
    }
    let v1 = api_version.ends_with("/v1");
    let rules = if v1 { 1..=1 } else { 1..=16 };
    if !rules.contains(&s.rules.len()) {
        report.error(
            o,
            "spec.rules",
            format!(
                "must have {} ({api_version})",
                if v1 {
                    "exactly one rule".to_string()
                } else {
                    "between 1 and 16 rules".to_string()
                }
            ),
        );
    }
    for (r, rule) in s.rules.iter().enumerate() {
        let count = rule.backend_refs.len();
        if (v1 && count == 0) || count > 16 {
            report.error(
                o,
                format!("spec.rules[{r}].backendRefs"),
                format!(
                    "must have {} backendRefs, found {count}",
                    if v1 { "1 to 16" } else { "at most 16" }
                ),
            );
        }
        for (b, backend) in rule.backend_refs.iter().enumerate() {
            let p = format!("spec.rules[{r}].backendRefs[{b}]");
            if let Some(w) = backend.weight {
                if !(0..=1_000_000).contains(&w) {
                    report.error(
                        o,
                        format!("{p}.weight"),
                        format!("weight {w} must be in the range 0..1000000"),
                    );
                }
            }
            let service = backend.kind.as_deref().is_none_or(|k| k == "Service")
                && backend.group.as_deref().is_none_or(str::is_empty);
            match backend.port {
                None if service => {
                    report.error(
                        o,
                        format!("{p}.port"),
                        "must be set for a Service reference",
                    );
                }
                Some(port) => {
                    if let Err(why) = port_in_range(port) {
                        report.error(o, format!("{p}.port"), why);
                    }
                }
                None => {}
            }
        }
    }
}

pub(super) fn reference_grant(o: &Origin, s: &ReferenceGrantSpec, report: &mut Report) {
    if s.from.is_empty() || s.from.len() > 16 {
        report.error(o, "spec.from", "must have between 1 and 16 entries");
    }
    if s.to.is_empty() || s.to.len() > 16 {
        report.error(o, "spec.to", "must have between 1 and 16 entries");
    }
}
