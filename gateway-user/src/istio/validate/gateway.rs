//! Gateway: its servers, ports and hosts.
use std::collections::BTreeSet;

use super::checks::{is_http, is_tls, known_protocol, port_in_range};
use crate::istio::{
    error::{Origin, Report},
    names::{dns1123_label, is_ip, wildcard_domain},
    resources::GatewaySpec,
};

pub(super) fn gateway(o: &Origin, name: &str, s: &GatewaySpec, report: &mut Report) {
    if let Err(why) = dns1123_label(name) {
        // Istio refuses dots in Gateway names: `ns/name` references could
        // not tell them from the legacy `name.ns` form.
        report.error(o, "metadata.name", format!("invalid gateway name: {why}"));
    }
    if s.servers.is_empty() {
        report.error(o, "spec.servers", "a Gateway must have at least one server");
    }
    let mut port_names = BTreeSet::new();
    for (i, server) in s.servers.iter().enumerate() {
        let p = format!("spec.servers[{i}]");
        if server.hosts.is_empty() {
            report.error(
                o,
                format!("{p}.hosts"),
                "a server must have at least one host",
            );
        }
        for (j, h) in server.hosts.iter().enumerate() {
            if let Err(why) = gateway_host(h) {
                report.error(o, format!("{p}.hosts[{j}]"), why);
            }
        }
        let port = &server.port;
        if let Err(why) = port_in_range(port.number) {
            report.error(o, format!("{p}.port.number"), why);
        }
        if !known_protocol(&port.protocol) {
            report.error(
                o,
                format!("{p}.port.protocol"),
                format!(
                    "invalid protocol {:?}, supported protocols are HTTP, HTTPS, HTTP2, GRPC, \
                     GRPC-WEB, MONGO, REDIS, MYSQL, TCP, TLS",
                    port.protocol
                ),
            );
        }
        if port.name.is_empty() {
            report.error(o, format!("{p}.port.name"), "port name must be set");
        } else if !port_names.insert(port.name.as_str()) {
            report.error(
                o,
                format!("{p}.port.name"),
                format!(
                    "port names in servers must be unique: duplicate name {}",
                    port.name
                ),
            );
        }
        if port.target_port.is_some_and(|t| t > 0) {
            report.error(
                o,
                format!("{p}.port.targetPort"),
                "targetPort has no impact on Gateways",
            );
        }
        let has_tls = server.tls.as_ref().is_some_and(|t| !t.is_null());
        if is_tls(&port.protocol) && !has_tls {
            report.error(
                o,
                format!("{p}.tls"),
                "server must have TLS settings for HTTPS/TLS protocols",
            );
        } else if has_tls
            && known_protocol(&port.protocol)
            && !is_tls(&port.protocol)
            && !is_http(&port.protocol)
        {
            report.error(
                o,
                format!("{p}.tls"),
                "server cannot have TLS settings for non HTTPS/TLS ports",
            );
        }
        if let Some(bind) = &server.bind {
            if !bind.is_empty() && !bind.starts_with("unix://") && !is_ip(bind) {
                report.error(
                    o,
                    format!("{p}.bind"),
                    format!("{bind:?} is not a valid IP address"),
                );
            }
        }
    }
}

/// `host`, `ns/host`, `./host` or `*/host`, where host may be `*` or a
/// wildcard domain (`ValidateNamespaceSlashWildcardHostname`).
pub(super) fn gateway_host(h: &str) -> Result<(), String> {
    let host = match h.split_once('/') {
        Some((ns, host)) => {
            if ns.is_empty() || host.is_empty() {
                return Err("config namespace and dnsName in host entry cannot be empty".into());
            }
            if ns != "*" && ns != "." && dns1123_label(ns).is_err() {
                return Err(format!("invalid namespace value {ns:?} in gateway"));
            }
            host
        }
        None => h,
    };
    if host == "*" || is_ip(host) {
        return Ok(());
    }
    wildcard_domain(host)
}
