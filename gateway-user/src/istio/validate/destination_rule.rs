//! DestinationRule: its traffic policy, per-port policies and subsets.
use std::collections::BTreeSet;

use super::checks::{export_to, port_in_range, proto_duration};
use crate::istio::{
    error::{Origin, Report},
    names::{istio_label, wildcard_domain},
    resources::{
        ConnectionPool, DestinationRuleSpec, LoadBalancer, PortTrafficPolicy, TrafficPolicy,
    },
};

pub(super) fn destination_rule(o: &Origin, s: &DestinationRuleSpec, report: &mut Report) {
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

pub(super) fn traffic_policy(o: &Origin, p: &str, tp: &TrafficPolicy, report: &mut Report) {
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

pub(super) fn port_traffic_policy(
    o: &Origin,
    p: &str,
    pl: &PortTrafficPolicy,
    report: &mut Report,
) {
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

pub(super) fn unsupported_policy_parts(
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

pub(super) fn load_balancer(o: &Origin, p: &str, lb: &LoadBalancer, report: &mut Report) {
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

pub(super) fn connection_pool(o: &Origin, p: &str, cp: &ConnectionPool, report: &mut Report) {
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
