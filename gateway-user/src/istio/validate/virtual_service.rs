//! VirtualService: its gateways, hosts and TCP routes.
use std::collections::BTreeMap;

use super::checks::{export_to, port_in_range};
use crate::istio::{
    error::{Origin, Report},
    names::{
        dns1123_label, fqdn, hosts_match, ip_or_cidr, is_ip, istio_label, wildcard_domain, MESH,
    },
    resources::{L4Match, VirtualServiceSpec},
};

pub(super) fn gateway_reference(o: &Origin, path: &str, name: &str, report: &mut Report) {
    if name == MESH {
        return;
    }
    match name.split_once('/') {
        Some((ns, gw)) => {
            if ns.is_empty() || gw.is_empty() {
                report.error(o, path, "config namespace and gateway name cannot be empty");
            } else if ns != "." && dns1123_label(ns).is_err() {
                report.error(o, path, format!("invalid value for namespace: {ns:?}"));
            } else if dns1123_label(gw).is_err() {
                report.error(o, path, format!("invalid value for gateway name: {gw:?}"));
            }
        }
        None => {
            if let Some((gw, rest)) = name.split_once('.') {
                let ns = rest.split('.').next().unwrap_or(rest);
                report.warn(
                    o,
                    path,
                    format!(
                        "using legacy gatewayName format {name:?}; prefer the <namespace>/<name> \
                         format: \"{ns}/{gw}\""
                    ),
                );
            }
            if let Err(why) = fqdn(name) {
                report.error(o, path, why);
            }
        }
    }
}

pub(super) fn virtual_service(o: &Origin, s: &VirtualServiceSpec, report: &mut Report) {
    for (i, g) in s.gateways.iter().enumerate() {
        gateway_reference(o, &format!("spec.gateways[{i}]"), g, report);
    }
    let to_mesh = s.gateways.is_empty() || s.gateways.iter().any(|g| g == MESH);
    let to_gateway = s.gateways.iter().any(|g| g != MESH);

    if s.hosts.is_empty() && (!s.gateways.is_empty() || !s.tcp.is_empty()) {
        // Only delegates may omit hosts, and delegates have no gateways and
        // no TCP routes (Istio's "delegate virtual service must have no ...").
        report.error(
            o,
            "spec.hosts",
            "hosts are required: a VirtualService without hosts is a delegate, which may have \
             no gateways and no tcp routes",
        );
    }
    let mut all_valid = true;
    for (i, h) in s.hosts.iter().enumerate() {
        let path = format!("spec.hosts[{i}]");
        if let Err(why) = wildcard_domain(h) {
            if !is_ip(h) {
                report.error(o, path, why);
                all_valid = false;
            }
        } else if to_mesh && h == "*" {
            report.error(
                o,
                path,
                "wildcard host * is not allowed for virtual services bound to the mesh gateway",
            );
            all_valid = false;
        }
    }
    if all_valid {
        for (i, a) in s.hosts.iter().enumerate() {
            for b in &s.hosts[i + 1..] {
                if hosts_match(a, b) {
                    report.error(
                        o,
                        "spec.hosts",
                        format!("duplicate hosts in virtual service: {a} & {b}"),
                    );
                }
            }
        }
    }
    if s.http.is_empty() && s.tcp.is_empty() && s.tls.is_empty() {
        report.error(
            o,
            "spec",
            "http, tcp or tls must be provided in virtual service",
        );
    }
    if to_gateway && !s.http.is_empty() {
        report.warn(
            o,
            "spec.http",
            "HTTP routes are not supported by this TCP gateway; ignored",
        );
    }
    if to_gateway && !s.tls.is_empty() {
        report.warn(
            o,
            "spec.tls",
            "TLS (SNI) routes are not supported by this TCP gateway; ignored",
        );
    }
    export_to(o, "spec.exportTo", &s.export_to, report);

    for (i, route) in s.tcp.iter().enumerate() {
        let p = format!("spec.tcp[{i}]");
        for (j, m) in route.matches.iter().enumerate() {
            l4_match(o, &format!("{p}.match[{j}]"), m, to_gateway, report);
        }
        if route.route.is_empty() {
            report.error(o, format!("{p}.route"), "TCP route is required");
        }
        // Weights: pkg/config/validation/validation.go, validateRouteDestinations
        // and validateWeight. A weight must not be negative; there is no upper
        // bound and no rule that they add up to 100 (weights are relative);
        // several destinations must not all be 0. A lone destination gets all
        // traffic whatever its weight.
        let mut total: i64 = 0;
        for (k, rd) in route.route.iter().enumerate() {
            let q = format!("{p}.route[{k}]");
            let d = &rd.destination;
            if d.host == "*" {
                report.error(
                    o,
                    format!("{q}.destination.host"),
                    "invalid destination host *",
                );
            } else if let Err(why) = wildcard_domain(&d.host) {
                report.error(o, format!("{q}.destination.host"), why);
            }
            if let Some(subset) = &d.subset {
                if subset.is_empty() {
                    report.error(
                        o,
                        format!("{q}.destination.subset"),
                        "subset name cannot be empty",
                    );
                } else if !istio_label(subset) {
                    report.error(
                        o,
                        format!("{q}.destination.subset"),
                        format!("subset name is invalid: {subset}"),
                    );
                }
            }
            if let Some(port) = &d.port {
                if let Err(why) = port_in_range(port.number.unwrap_or(0)) {
                    report.error(o, format!("{q}.destination.port.number"), why);
                }
            }
            let weight = rd.weight.unwrap_or(0);
            if weight < 0 {
                report.error(
                    o,
                    format!("{q}.weight"),
                    format!("weight {weight} must not be negative"),
                );
            }
            total += i64::from(weight.max(0));
        }
        if total > i64::from(u32::MAX) {
            report.error(
                o,
                format!("{p}.route"),
                format!("the weights add up to {total}, more than {}", u32::MAX),
            );
        }
        if route.route.len() > 1 && total == 0 {
            report.error(
                o,
                format!("{p}.route"),
                "total destination weight is 0; give at least one destination a positive weight",
            );
        }
    }
    unreachable_tcp_rules(o, s, report);
}

pub(super) fn l4_match(o: &Origin, p: &str, m: &L4Match, to_gateway: bool, report: &mut Report) {
    if let Some(port) = m.port {
        // 0 is proto3's "unset".
        if port != 0 {
            if let Err(why) = port_in_range(port) {
                report.error(o, format!("{p}.port"), why);
            }
        }
    }
    for (i, g) in m.gateways.iter().enumerate() {
        gateway_reference(o, &format!("{p}.gateways[{i}]"), g, report);
    }
    for (i, subnet) in m.destination_subnets.iter().enumerate() {
        if !ip_or_cidr(subnet) {
            report.error(
                o,
                format!("{p}.destinationSubnets[{i}]"),
                format!("{subnet} is not a valid CIDR block"),
            );
        }
    }
    if !to_gateway {
        return;
    }
    // At a gateway Istio matches TCP rules on port and gateway only
    // (l4SingleMatch in pilot/pkg/networking/core/gateway.go); these are
    // sidecar-only conditions, ignored there as here.
    let ignored = [
        ("destinationSubnets", !m.destination_subnets.is_empty()),
        ("sourceLabels", !m.source_labels.is_empty()),
        (
            "sourceNamespace",
            m.source_namespace.as_ref().is_some_and(|s| !s.is_empty()),
        ),
        (
            "sourceSubnet",
            m.source_subnet.as_ref().is_some_and(|s| !s.is_empty()),
        ),
    ];
    for (field, set) in ignored {
        if set {
            report.warn(
                o,
                format!("{p}.{field}"),
                "unsupported at a gateway and ignored (Istio matches only port and gateways there)",
            );
        }
    }
}

/// Istio's `analyzeUnreachableTCPRules`, reported as warnings like Istio does.
pub(super) fn unreachable_tcp_rules(o: &Origin, s: &VirtualServiceSpec, report: &mut Report) {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut catch_all: Option<usize> = None;
    for (i, route) in s.tcp.iter().enumerate() {
        let p = format!("spec.tcp[{i}]");
        if route.matches.is_empty() {
            if let Some(first) = catch_all {
                report.warn(
                    o,
                    p,
                    format!("rule not used: spec.tcp[{first}] already matches everything"),
                );
            }
            catch_all = Some(i);
            continue;
        }
        if let Some(first) = catch_all {
            report.warn(
                o,
                p,
                format!("rule not used: spec.tcp[{first}] has no match and comes first"),
            );
            continue;
        }
        let mut dup = 0;
        for (j, m) in route.matches.iter().enumerate() {
            let key = format!("{m:?}");
            if let Some(&earlier) = seen.get(&key) {
                report.warn(
                    o,
                    format!("{p}.match[{j}]"),
                    format!("match not used: spec.tcp[{earlier}] has the same match"),
                );
                dup += 1;
            } else {
                seen.insert(key, i);
            }
        }
        if dup == route.matches.len() {
            report.warn(
                o,
                p,
                "rule not used: all its matches are used by earlier rules",
            );
        }
    }
}
