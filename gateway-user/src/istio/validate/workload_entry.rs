//! WorkloadEntry, and a ServiceEntry's inline endpoints.
use std::collections::BTreeSet;

use super::checks::port_in_range;
use crate::istio::{
    error::{Origin, Report},
    names::{fqdn, is_ip, istio_label},
    resources::WorkloadEntrySpec,
};

/// Istio's `validateWorkloadEntry`, for WorkloadEntry resources and for a
/// ServiceEntry's inline endpoints (which then must use its port names).
pub(super) fn workload_entry(
    o: &Origin,
    p: &str,
    we: &WorkloadEntrySpec,
    service_ports: Option<&BTreeSet<&str>>,
    allow_fqdn: bool,
    report: &mut Report,
) {
    let address = we.address.as_deref().unwrap_or("");
    if address.is_empty() {
        if we.network.as_deref().unwrap_or("").is_empty() {
            report.error(o, format!("{p}.address"), "address is required");
        } else {
            report.warn(
                o,
                format!("{p}.address"),
                "address is unset; endpoints on other networks are not reachable from this gateway",
            );
        }
    } else if let Some(path) = address.strip_prefix("unix://") {
        if !(path.starts_with('/') || path.starts_with('@')) {
            report.error(
                o,
                format!("{p}.address"),
                "UDS must be an absolute path or abstract socket",
            );
        }
        if !we.ports.is_empty() {
            report.error(
                o,
                format!("{p}.ports"),
                format!("unix endpoint {address} must not include ports"),
            );
        }
    } else if !is_ip(address) {
        if !allow_fqdn {
            report.error(
                o,
                format!("{p}.address"),
                format!("endpoint address {address:?} is not a valid IP address"),
            );
        } else if fqdn(address).is_err() {
            report.error(
                o,
                format!("{p}.address"),
                format!("endpoint address {address:?} is not a valid FQDN or an IP address"),
            );
        }
    }
    for (name, port) in &we.ports {
        let f = format!("{p}.ports.{name}");
        if let Some(known) = service_ports {
            if !known.contains(name.as_str()) {
                report.error(
                    o,
                    &f,
                    format!("endpoint port {name:?} is not defined by the service entry"),
                );
            }
        }
        if !istio_label(name) {
            report.error(o, &f, format!("invalid port name: {name}"));
        }
        if let Err(why) = port_in_range(*port) {
            report.error(o, &f, why);
        }
    }
}
