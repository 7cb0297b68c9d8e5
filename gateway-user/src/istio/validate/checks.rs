//! Checks several kinds share: ports, protocols, durations, `exportTo`.
use std::time::Duration;

use crate::istio::{
    error::{Origin, Report},
    names::dns1123_label,
};

pub(super) fn port_in_range(n: u32) -> Result<(), String> {
    if (1..=65535).contains(&n) {
        Ok(())
    } else {
        Err(format!("port number {n} must be in the range 1..65535"))
    }
}

/// Protocols Istio knows (`protocol.Parse`), case-insensitive.
pub(super) fn known_protocol(p: &str) -> bool {
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

pub(super) fn is_http(p: &str) -> bool {
    matches!(
        p.to_ascii_lowercase().as_str(),
        "http" | "http2" | "http_proxy" | "grpc" | "grpc-web"
    )
}

pub(super) fn is_tls(p: &str) -> bool {
    matches!(p.to_ascii_lowercase().as_str(), "https" | "tls")
}

/// Istio's `ValidateDuration`: at least 1ms, in whole milliseconds.
pub(super) fn proto_duration(d: Duration) -> Result<(), String> {
    if d < Duration::from_millis(1) {
        return Err("duration must be at least 1ms".into());
    }
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return Err("only durations to ms precision are supported".into());
    }
    Ok(())
}

pub(super) fn export_to(o: &Origin, path: &str, values: &[String], report: &mut Report) {
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
