//! Checks each resource on its own, as Istio's admission webhook does
//! (istio/istio pkg/config/validation/validation.go and
//! pkg/config/validation/agent/validation.go), so anything Istio would
//! refuse is refused here with the same reasoning. Settings Istio accepts
//! but this gateway does not implement become warnings.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use super::{
    error::{Origin, Report},
    model::{
        ConnectionPool, DestinationRuleSpec, GatewaySpec, L4Match, LoadBalancer, PortTrafficPolicy,
        Resolution, ServiceEntrySpec, TrafficPolicy, VirtualServiceSpec, WorkloadEntrySpec,
    },
    Resource, Spec,
};

pub(crate) fn resource(r: &Resource, report: &mut Report) {
    let o = &r.origin;
    match &r.spec {
        Spec::Gateway(s) => gateway(o, &r.id.name, s, report),
        Spec::VirtualService(s) => virtual_service(o, s, report),
        Spec::DestinationRule(s) => destination_rule(o, s, report),
        Spec::ServiceEntry(s) => service_entry(o, s, report),
        Spec::WorkloadEntry(s) => workload_entry(o, "spec", s, None, true, report),
    }
}

// ------------------------------------------------------------------ names

fn label_chars_ok(s: &str, upper: bool) -> bool {
    let ok =
        |c: char| c.is_ascii_digit() || c.is_ascii_lowercase() || (upper && c.is_ascii_uppercase());
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| ok(c) || c == '-')
        && s.starts_with(ok)
        && s.ends_with(ok)
}

/// A Kubernetes object name segment (namespace, Gateway name): lowercase.
pub(crate) fn dns1123_label(s: &str) -> Result<(), String> {
    if label_chars_ok(s, false) {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid DNS-1123 label (lowercase letters, digits and '-', at most 63)"
        ))
    }
}

/// A Kubernetes object name.
pub(crate) fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.len() <= 253 && s.split('.').all(|l| label_chars_ok(l, false)) {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid name (lowercase letters, digits, '-' and '.', at most 253)"
        ))
    }
}

/// Istio's `labels.IsDNS1123Label`, which also allows uppercase.
fn istio_label(s: &str) -> bool {
    label_chars_ok(s, true)
}

/// Istio's `ValidateWildcardDomain`: a DNS name whose first label may be
/// `*`, `*foo` or `*-foo`.
pub(crate) fn wildcard_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() {
        return Err("empty domain name not allowed".into());
    }
    if domain.len() > 255 {
        return Err(format!("domain name {domain:?} too long (max 255)"));
    }
    let (first, rest) = match domain.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (domain, None),
    };
    let first_ok = first == "*"
        || istio_label(
            first
                .strip_prefix("*-")
                .or(first.strip_prefix('*'))
                .unwrap_or(first),
        );
    if !first_ok {
        return Err(format!(
            "domain name {domain:?} invalid (label {first:?} invalid)"
        ));
    }
    match rest {
        Some(rest) => dns_labels(domain, rest),
        None => Ok(()),
    }
}

/// Istio's `ValidateFQDN`.
fn fqdn(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty domain name not allowed".into());
    }
    if name.len() > 255 {
        return Err(format!("domain name {name:?} too long (max 255)"));
    }
    dns_labels(name, name)
}

fn dns_labels(whole: &str, labels: &str) -> Result<(), String> {
    let parts: Vec<&str> = labels.split('.').collect();
    if let Some(tld) = parts.last() {
        if !tld.is_empty() && tld.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!(
                "domain name {whole:?} invalid (top level domain {tld:?} cannot be all-numeric)"
            ));
        }
    }
    for (i, label) in parts.iter().enumerate() {
        // A trailing dot (`istio.io.`) is allowed.
        if i == parts.len() - 1 && label.is_empty() {
            break;
        }
        if !istio_label(label) {
            return Err(format!(
                "domain name {whole:?} invalid (label {label:?} invalid)"
            ));
        }
    }
    Ok(())
}

pub(crate) fn is_ip(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
}

fn ip_or_cidr(s: &str) -> bool {
    match s.split_once('/') {
        Some((ip, bits)) => match (ip.parse::<IpAddr>(), bits.parse::<u8>()) {
            (Ok(IpAddr::V4(_)), Ok(b)) => b <= 32,
            (Ok(IpAddr::V6(_)), Ok(b)) => b <= 128,
            _ => false,
        },
        None => is_ip(s),
    }
}

fn port_in_range(n: u32) -> Result<(), String> {
    if (1..=65535).contains(&n) {
        Ok(())
    } else {
        Err(format!("port number {n} must be in the range 1..65535"))
    }
}

/// Protocols Istio knows (`protocol.Parse`), case-insensitive.
pub(crate) fn known_protocol(p: &str) -> bool {
    matches!(
        p.to_ascii_lowercase().as_str(),
        "tcp"
            | "udp"
            | "grpc"
            | "grpc-web"
            | "http"
            | "http_proxy"
            | "http2"
            | "https"
            | "tls"
            | "mongo"
            | "redis"
            | "mysql"
    )
}

fn is_http(p: &str) -> bool {
    matches!(
        p.to_ascii_lowercase().as_str(),
        "http" | "http2" | "http_proxy" | "grpc" | "grpc-web"
    )
}

fn is_tls(p: &str) -> bool {
    matches!(p.to_ascii_lowercase().as_str(), "https" | "tls")
}

/// Istio's `ValidateDuration`: at least 1ms, in whole milliseconds.
fn proto_duration(d: Duration) -> Result<(), String> {
    if d < Duration::from_millis(1) {
        return Err("duration must be at least 1ms".into());
    }
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return Err("only durations to ms precision are supported".into());
    }
    Ok(())
}

fn export_to(o: &Origin, path: &str, values: &[String], report: &mut Report) {
    for (i, v) in values.iter().enumerate() {
        if v != "." && v != "*" && dns1123_label(v).is_err() {
            report.error(
                o,
                format!("{path}[{i}]"),
                format!("invalid exportTo value {v:?} (use \".\", \"*\" or a namespace)"),
            );
        }
    }
}

// --------------------------------------------------------------- Gateway

fn gateway(o: &Origin, name: &str, s: &GatewaySpec, report: &mut Report) {
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
fn gateway_host(h: &str) -> Result<(), String> {
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

// --------------------------------------------------------- VirtualService

/// How a VirtualService names a gateway (`resolveGatewayName` in
/// pilot/pkg/model/config.go): `name` and `./name` are in the
/// VirtualService's namespace, `ns/name` is explicit, and the legacy
/// `name.ns[.svc.cluster.local]` form maps to `ns/name`.
pub(crate) fn resolve_gateway_name(name: &str, namespace: &str) -> String {
    if name == MESH {
        return name.to_string();
    }
    match name.split_once('/') {
        Some((".", rest)) => format!("{namespace}/{rest}"),
        Some(_) => name.to_string(),
        None => match name.split_once('.') {
            None => format!("{namespace}/{name}"),
            Some((gw, rest)) => {
                let ns = rest.split('.').next().unwrap_or(rest);
                format!("{ns}/{gw}")
            }
        },
    }
}

pub(crate) const MESH: &str = "mesh";

fn gateway_reference(o: &Origin, path: &str, name: &str, report: &mut Report) {
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

/// Istio's `host.Name.Matches`: equal, or one wildcard covers the other.
pub(crate) fn hosts_match(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) => {
            if sa.len() < sb.len() {
                sb.ends_with(sa)
            } else {
                sa.ends_with(sb)
            }
        }
        (Some(sa), None) => b.ends_with(sa),
        (None, Some(sb)) => a.ends_with(sb),
        (None, None) => a == b,
    }
}

fn virtual_service(o: &Origin, s: &VirtualServiceSpec, report: &mut Report) {
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

fn l4_match(o: &Origin, p: &str, m: &L4Match, to_gateway: bool, report: &mut Report) {
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
fn unreachable_tcp_rules(o: &Origin, s: &VirtualServiceSpec, report: &mut Report) {
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

// -------------------------------------------------------- DestinationRule

fn destination_rule(o: &Origin, s: &DestinationRuleSpec, report: &mut Report) {
    if let Err(why) = wildcard_domain(&s.host) {
        report.error(o, "spec.host", why);
    }
    if let Some(tp) = &s.traffic_policy {
        traffic_policy(o, "spec.trafficPolicy", tp, report);
    }
    let mut names = BTreeSet::new();
    for (i, subset) in s.subsets.iter().enumerate() {
        let p = format!("spec.subsets[{i}]");
        if subset.name.is_empty() {
            report.error(o, format!("{p}.name"), "subset name cannot be empty");
        } else if !istio_label(&subset.name) {
            report.error(
                o,
                format!("{p}.name"),
                format!("subset name is invalid: {}", subset.name),
            );
        }
        if !names.insert(subset.name.as_str()) {
            report.error(
                o,
                format!("{p}.name"),
                format!("duplicate subset names: {}", subset.name),
            );
        }
        if let Some(tp) = &subset.traffic_policy {
            traffic_policy(o, &format!("{p}.trafficPolicy"), tp, report);
        }
    }
    export_to(o, "spec.exportTo", &s.export_to, report);
}

fn traffic_policy(o: &Origin, p: &str, tp: &TrafficPolicy, report: &mut Report) {
    let empty = tp.load_balancer.is_none()
        && tp.connection_pool.is_none()
        && tp.outlier_detection.is_none()
        && tp.tls.is_none()
        && tp.port_level_settings.is_empty()
        && tp.tunnel.is_none()
        && tp.proxy_protocol.is_none()
        && tp.retry_budget.is_none();
    if empty {
        report.error(o, p, "traffic policy must have at least one field");
        return;
    }
    if tp.tunnel.is_some() && tp.proxy_protocol.is_some() {
        report.error(o, p, "tunnel and proxyProtocol must not be set together");
    }
    if let Some(lb) = &tp.load_balancer {
        load_balancer(o, &format!("{p}.loadBalancer"), lb, report);
    }
    if let Some(cp) = &tp.connection_pool {
        connection_pool(o, &format!("{p}.connectionPool"), cp, report);
    }
    unsupported_policy_parts(o, p, tp.outlier_detection.as_ref(), tp.tls.as_ref(), report);
    for (field, value) in [
        ("tunnel", &tp.tunnel),
        ("proxyProtocol", &tp.proxy_protocol),
        ("retryBudget", &tp.retry_budget),
    ] {
        if value.is_some() {
            report.warn(
                o,
                format!("{p}.{field}"),
                "not supported by this gateway; ignored",
            );
        }
    }
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        port_traffic_policy(o, &format!("{p}.portLevelSettings[{i}]"), pl, report);
    }
}

fn port_traffic_policy(o: &Origin, p: &str, pl: &PortTrafficPolicy, report: &mut Report) {
    match pl.port.as_ref().and_then(|s| s.number) {
        None => report.error(
            o,
            format!("{p}.port"),
            "portTrafficPolicy must have valid port",
        ),
        Some(n) => {
            if let Err(why) = port_in_range(n) {
                report.error(o, format!("{p}.port.number"), why);
            }
        }
    }
    if pl.load_balancer.is_none()
        && pl.connection_pool.is_none()
        && pl.outlier_detection.is_none()
        && pl.tls.is_none()
    {
        report.error(o, p, "port traffic policy must have at least one field");
        return;
    }
    if let Some(lb) = &pl.load_balancer {
        load_balancer(o, &format!("{p}.loadBalancer"), lb, report);
    }
    if let Some(cp) = &pl.connection_pool {
        connection_pool(o, &format!("{p}.connectionPool"), cp, report);
    }
    unsupported_policy_parts(o, p, pl.outlier_detection.as_ref(), pl.tls.as_ref(), report);
}

fn unsupported_policy_parts(
    o: &Origin,
    p: &str,
    outlier: Option<&serde_json::Value>,
    tls: Option<&serde_json::Value>,
    report: &mut Report,
) {
    if outlier.is_some() {
        report.warn(
            o,
            format!("{p}.outlierDetection"),
            "not supported by this gateway; failing endpoints are not ejected",
        );
    }
    if let Some(tls) = tls {
        let mode = tls
            .get("mode")
            .and_then(|m| m.as_str())
            .unwrap_or("DISABLE");
        if mode != "DISABLE" {
            report.warn(
                o,
                format!("{p}.tls.mode"),
                format!("TLS origination ({mode}) is not supported; connections to endpoints are plain TCP"),
            );
        }
    }
}

fn load_balancer(o: &Origin, p: &str, lb: &LoadBalancer, report: &mut Report) {
    if lb.locality_lb_setting.is_some() && lb.zone_aware_lb_setting.is_some() {
        report.error(
            o,
            p,
            "only one of localityLbSetting and zoneAwareLbSetting can be set",
        );
    }
    if lb.warmup.is_some() && lb.warmup_duration_secs.is_some() {
        report.error(o, p, "only one of warmupDurationSecs or warmup can be set");
    }
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        report.error(o, p, "only one of simple or consistentHash can be set");
    }
    for (field, value, what) in [
        (
            "consistentHash",
            &lb.consistent_hash,
            "the default policy (LEAST_REQUEST) is used instead",
        ),
        ("localityLbSetting", &lb.locality_lb_setting, "ignored"),
        ("zoneAwareLbSetting", &lb.zone_aware_lb_setting, "ignored"),
        ("warmupDurationSecs", &lb.warmup_duration_secs, "ignored"),
        ("warmup", &lb.warmup, "ignored"),
    ] {
        if value.is_some() {
            report.warn(
                o,
                format!("{p}.{field}"),
                format!("not supported by this gateway; {what}"),
            );
        }
    }
}

fn connection_pool(o: &Origin, p: &str, cp: &ConnectionPool, report: &mut Report) {
    let Some(tcp) = &cp.tcp else {
        if cp.http.is_none() {
            report.error(o, p, "connection pool must have at least one field");
        }
        // HTTP pool settings never apply to TCP proxying, in Istio either.
        return;
    };
    let p = format!("{p}.tcp");
    if let Some(max) = tcp.max_connections {
        if max < 0 {
            report.error(
                o,
                format!("{p}.maxConnections"),
                "max connections must be non-negative",
            );
        } else if max > 0 {
            report.warn(
                o,
                format!("{p}.maxConnections"),
                "not supported by this gateway; no limit is applied",
            );
        }
    }
    if let Some(d) = tcp.connect_timeout {
        if let Err(why) = proto_duration(d.0) {
            report.error(o, format!("{p}.connectTimeout"), why);
        }
    }
    if let Some(d) = tcp.max_connection_duration {
        if let Err(why) = proto_duration(d.0) {
            report.error(o, format!("{p}.maxConnectionDuration"), why);
        }
        report.warn(
            o,
            format!("{p}.maxConnectionDuration"),
            "not supported by this gateway; ignored",
        );
    }
    if let Some(d) = tcp.idle_timeout {
        // 0s disables the timeout (validateConnectionPool skips it).
        if !d.0.is_zero() {
            if let Err(why) = proto_duration(d.0) {
                report.error(o, format!("{p}.idleTimeout"), why);
            }
        }
    }
    if tcp.tcp_keepalive.is_some() {
        report.warn(
            o,
            format!("{p}.tcpKeepalive"),
            "not supported by this gateway; ignored",
        );
    }
}

// ----------------------------------------------------------- ServiceEntry

fn service_entry(o: &Origin, s: &ServiceEntrySpec, report: &mut Report) {
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

/// Istio's `validateWorkloadEntry`, for WorkloadEntry resources and for a
/// ServiceEntry's inline endpoints (which then must use its port names).
fn workload_entry(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_names_resolve_like_istio() {
        assert_eq!(resolve_gateway_name("gw", "ns"), "ns/gw");
        assert_eq!(resolve_gateway_name("./gw", "ns"), "ns/gw");
        assert_eq!(resolve_gateway_name("other/gw", "ns"), "other/gw");
        assert_eq!(
            resolve_gateway_name("gw.other.svc.cluster.local", "ns"),
            "other/gw"
        );
        assert_eq!(resolve_gateway_name("gw.other", "ns"), "other/gw");
        assert_eq!(resolve_gateway_name("mesh", "ns"), "mesh");
    }

    #[test]
    fn host_matching_like_istio() {
        assert!(hosts_match("*", "tcp-echo.ns.svc.cluster.local"));
        assert!(hosts_match("*.example.com", "a.example.com"));
        assert!(hosts_match("a.example.com", "*.example.com"));
        assert!(hosts_match("*.example.com", "*.a.example.com"));
        assert!(!hosts_match("a.example.com", "b.example.com"));
        assert!(!hosts_match("*.example.com", "example.org"));
    }

    #[test]
    fn domains() {
        assert!(wildcard_domain("tcp-echo").is_ok());
        assert!(wildcard_domain("*.example.com").is_ok());
        assert!(wildcard_domain("Example.COM").is_ok());
        assert!(wildcard_domain("a.*.com").is_err());
        assert!(wildcard_domain("bad_name").is_err());
        assert!(wildcard_domain("host.123").is_err());
        assert!(fqdn("istio.io.").is_ok());
        assert!(dns1123_label("Upper").is_err());
        assert!(dns1123_subdomain("a.b-c").is_ok());
        assert!(ip_or_cidr("10.0.0.0/8") && ip_or_cidr("::1") && !ip_or_cidr("10.0.0.0/33"));
    }
}
