//! ServiceEntry: hosts, ports, resolution and inline endpoints.
use std::collections::BTreeSet;

use super::checks::{export_to, is_http, is_tls, known_protocol, port_in_range};
use super::workload_entry::workload_entry;
use crate::istio::{
    error::{Origin, Report},
    names::{fqdn, ip_or_cidr, istio_label, wildcard_domain},
    resources::{Resolution, ServiceEntrySpec},
};

pub(super) fn service_entry(o: &Origin, s: &ServiceEntrySpec, report: &mut Report) {
    if s.hosts.is_empty() {
        report.error(o, "spec.hosts", "service entry must have at least one host");
    }
    for (i, h) in s.hosts.iter().enumerate() {
        if h == "*" {
            report.error(o, format!("spec.hosts[{i}]"), "invalid host *");
        } else if let Err(why) = wildcard_domain(h) {
            report.error(o, format!("spec.hosts[{i}]"), why);
        }
    }
    if s.workload_selector.is_some() && !s.endpoints.is_empty() {
        report.error(
            o,
            "spec",
            "only one of WorkloadSelector or Endpoints is allowed in Service Entry",
        );
    }
    for (i, a) in s.addresses.iter().enumerate() {
        if !ip_or_cidr(a) {
            report.error(
                o,
                format!("spec.addresses[{i}]"),
                format!("{a} is not a valid IP address or CIDR block"),
            );
        }
    }
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (i, port) in s.ports.iter().enumerate() {
        let p = format!("spec.ports[{i}]");
        if !names.insert(port.name.as_str()) {
            report.error(
                o,
                format!("{p}.name"),
                format!("service entry port name {:?} already defined", port.name),
            );
        }
        if !numbers.insert(port.number) {
            report.error(
                o,
                format!("{p}.number"),
                format!("service entry port {} already defined", port.number),
            );
        }
        if !istio_label(&port.name) {
            report.error(
                o,
                format!("{p}.name"),
                format!("invalid port name: {}", port.name),
            );
        }
        if let Some(proto) = &port.protocol {
            if !proto.is_empty() && !known_protocol(proto) {
                report.error(
                    o,
                    format!("{p}.protocol"),
                    format!("unsupported protocol: {proto}"),
                );
            }
        }
        if let Err(why) = port_in_range(port.number) {
            report.error(o, format!("{p}.number"), why);
        }
        if let Some(t) = port.target_port {
            if let Err(why) = port_in_range(t) {
                report.error(o, format!("{p}.targetPort"), why);
            }
        }
    }
    let resolution = s.resolution.unwrap_or_default();
    match resolution {
        Resolution::None => {
            if !s.endpoints.is_empty() {
                report.error(
                    o,
                    "spec.endpoints",
                    "no endpoints should be provided for resolution type NONE",
                );
            }
            if s.workload_selector.is_some() {
                report.warn(
                    o,
                    "spec.workloadSelector",
                    "workloadSelector should not be set when resolution mode is NONE",
                );
            }
        }
        Resolution::Static => {
            for (i, e) in s.endpoints.iter().enumerate() {
                workload_entry(
                    o,
                    &format!("spec.endpoints[{i}]"),
                    e,
                    Some(&names),
                    false,
                    report,
                );
            }
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {
            if s.endpoints.is_empty() {
                for (i, h) in s.hosts.iter().enumerate() {
                    if let Err(why) = fqdn(h) {
                        report.error(
                            o,
                            format!("spec.hosts[{i}]"),
                            format!(
                                "hosts must be FQDN if no endpoints are provided for resolution \
                                 mode {}: {why}",
                                resolution.as_str()
                            ),
                        );
                    }
                }
            }
            if resolution == Resolution::DnsRoundRobin && s.endpoints.len() > 1 {
                report.error(
                    o,
                    "spec.endpoints",
                    "there must only be 0 or 1 endpoint for resolution mode DNS_ROUND_ROBIN",
                );
            }
            for (i, e) in s.endpoints.iter().enumerate() {
                workload_entry(
                    o,
                    &format!("spec.endpoints[{i}]"),
                    e,
                    Some(&names),
                    true,
                    report,
                );
            }
        }
        Resolution::DynamicDns => {}
    }
    // Plain TCP cannot tell several hosts apart (validation.go).
    if resolution != Resolution::None && s.hosts.len() > 1 {
        let opaque = s.ports.iter().any(|p| {
            let proto = p.protocol.as_deref().unwrap_or("");
            !is_http(proto) && !is_tls(proto)
        });
        if opaque {
            report.error(
                o,
                "spec.hosts",
                "multiple hosts provided with non-HTTP, non-TLS ports",
            );
        }
    }
    export_to(o, "spec.exportTo", &s.export_to, report);
}
