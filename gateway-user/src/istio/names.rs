//! Names as Kubernetes and Istio read them: object names, DNS names with
//! wildcards, IP addresses, hosts that cover each other, and how a
//! VirtualService names a Gateway. Shared by validation and resolution.
use std::net::IpAddr;

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
pub(crate) fn istio_label(s: &str) -> bool {
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
pub(crate) fn fqdn(name: &str) -> Result<(), String> {
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

pub(crate) fn ip_or_cidr(s: &str) -> bool {
    match s.split_once('/') {
        Some((ip, bits)) => match (ip.parse::<IpAddr>(), bits.parse::<u8>()) {
            (Ok(IpAddr::V4(_)), Ok(b)) => b <= 32,
            (Ok(IpAddr::V6(_)), Ok(b)) => b <= 128,
            _ => false,
        },
        None => is_ip(s),
    }
}

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
