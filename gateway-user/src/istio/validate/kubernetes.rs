//! Kubernetes' Service and EndpointSlice, and the Gateway API's
//! GatewayClass: what their API server refuses in the fields this gateway
//! reads.
use std::collections::BTreeSet;

use super::checks::port_in_range;
use crate::istio::{
    error::{Origin, Report},
    names::{dns1123_label, dns1123_subdomain},
    resources::{EndpointSliceDoc, GatewayClassSpec, ServiceSpec},
};

pub(super) fn service(o: &Origin, s: &ServiceSpec, report: &mut Report) {
    let mut names = BTreeSet::new();
    for (i, p) in s.ports.iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        if let Err(why) = port_in_range(p.port) {
            report.error(o, format!("{f}.port"), why);
        }
        match p.name.as_deref() {
            None | Some("") if s.ports.len() > 1 => report.error(
                o,
                format!("{f}.name"),
                "required when a Service has more than one port",
            ),
            None | Some("") => {}
            Some(n) => {
                if let Err(why) = dns1123_label(n) {
                    report.error(o, format!("{f}.name"), why);
                }
                if !names.insert(n) {
                    report.error(
                        o,
                        format!("{f}.name"),
                        format!("port name {n:?} is used twice"),
                    );
                }
            }
        }
    }
}

pub(super) fn endpoint_slice(o: &Origin, s: &EndpointSliceDoc, report: &mut Report) {
    let family = match s.address_type.as_str() {
        "IPv4" => Some(true),
        "IPv6" => Some(false),
        "FQDN" => {
            report.warn(
                o,
                "addressType",
                "FQDN endpoints are not dialled by this gateway; ignored",
            );
            None
        }
        "" => {
            report.error(o, "addressType", "required: IPv4, IPv6 or FQDN");
            None
        }
        other => {
            report.error(
                o,
                "addressType",
                format!("{other:?} is not IPv4, IPv6 or FQDN"),
            );
            None
        }
    };
    if let Some(v4) = family {
        for (i, e) in s.endpoints.iter().enumerate() {
            if e.addresses.is_empty() {
                report.error(o, format!("endpoints[{i}].addresses"), "must not be empty");
            }
            for (j, a) in e.addresses.iter().enumerate() {
                let ok = match a.parse::<std::net::IpAddr>() {
                    Ok(ip) => ip.is_ipv4() == v4,
                    Err(_) => false,
                };
                if !ok {
                    report.error(
                        o,
                        format!("endpoints[{i}].addresses[{j}]"),
                        format!("{a:?} is not an {} address", s.address_type),
                    );
                }
            }
        }
    }
    for (i, p) in s.ports.iter().enumerate() {
        if let Some(n) = p.port {
            if let Err(why) = port_in_range(n) {
                report.error(o, format!("ports[{i}].port"), why);
            }
        }
    }
}

/// `controllerName` is a domain-prefixed path, e.g.
/// `istio.io/gateway-controller`.
pub(super) fn gateway_class(o: &Origin, s: &GatewayClassSpec, report: &mut Report) {
    let bad = match s.controller_name.split_once('/') {
        _ if s.controller_name.len() > 253 => Some("must be at most 253 characters".to_string()),
        Some((domain, path)) if !path.is_empty() => dns1123_subdomain(domain).err(),
        _ => Some("must be a domain-prefixed path such as example.net/gateway-controller".into()),
    };
    if let Some(why) = bad {
        report.error(o, "spec.controllerName", why);
    }
}
