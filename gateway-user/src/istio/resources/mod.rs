//! Serde types for the Istio resources, field for field as in istio/api's
//! `networking/v1alpha3/*.proto` (v1beta1 and v1 are the same schema).
//!
//! Unknown fields inside `spec` are rejected: Istio's CRDs publish a full
//! structural schema for `spec` (only `status` preserves unknown fields), and
//! kubectl's default `--validate=strict` refuses fields that schema does not
//! know, so a typo such as `weigth` never reaches Istio either. Fields Istio
//! knows but this gateway does not implement are accepted as opaque values
//! and reported as warnings by the validation pass.
//!
//! Fields the CRD marks required are required here too; everything else is
//! optional, and `null` reads as absent, as Kubernetes treats it.

mod destination_rule;
mod gateway;
mod gateway_api;
mod kubernetes;
mod service_entry;
mod virtual_service;
mod workload_entry;

use std::{collections::BTreeMap, fmt, time::Duration};

use serde::{de, Deserialize, Deserializer};

pub(crate) use destination_rule::{
    ConnectionPool, DestinationRuleSpec, LoadBalancer, PortTrafficPolicy, SimpleLb, Subset,
    TrafficPolicy,
};
pub(crate) use gateway::{GatewaySpec, Server};
pub(crate) use gateway_api::{
    BackendRef, FromNamespaces, GatewayClassSpec, KubeGatewaySpec, KubeListener, ParentRef,
    ReferenceGrantSpec, TcpRouteSpec as KubeTcpRouteSpec,
};
pub(crate) use kubernetes::{EndpointSliceDoc, ServiceSpec, SliceEnvelope};
pub(crate) use service_entry::{Resolution, ServiceEntrySpec, ServicePort};
pub(crate) use virtual_service::{
    Destination, L4Match, PortSelector, TcpRoute, VirtualServiceSpec,
};
pub(crate) use workload_entry::WorkloadEntrySpec;

pub(super) type Labels = BTreeMap<String, String>;

/// Reads `null` (e.g. a bare `labels:`) as the empty default.
pub(super) fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The part of a document we read with types: kubectl's other top-level
/// fields (`apiVersion`, `kind`, `status`) are read from the untyped value.
#[derive(Debug, Deserialize)]
#[serde(bound = "S: Deserialize<'de>")]
pub(crate) struct Envelope<S> {
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: Option<S>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Metadata {
    pub name: Option<String>,
    pub generate_name: Option<String>,
    pub namespace: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub labels: Labels,
}

// --------------------------------------------------------------- Duration

/// A `google.protobuf.Duration` as Istio's CRDs accept it: Go's duration
/// syntax (`10s`, `1.5s`, `100ms`, `1m`, `1h30m`), which the CRD's CEL rule
/// `duration(self)` and Istio's JSON decoding both use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProtoDuration(pub Duration);

impl<'de> Deserialize<'de> for ProtoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ProtoDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"10s\", \"100ms\" or \"1m\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ProtoDuration, E> {
                parse_duration(s).map(ProtoDuration).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// Go's `time.ParseDuration`, minus negative values (the CRD requires
/// durations of at least 1ms, and 0s for idle timeouts).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    const NS: u128 = 1;
    let bad = |why: &str| format!("invalid duration \"{s}\": {why}");
    let mut rest = s;
    if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    } else if rest.starts_with('-') {
        return Err(bad("must not be negative"));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad("empty"));
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.find(|c: char| !c.is_ascii_digit()).unwrap_or(a.len());
                a.split_at(n)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(bad("expected a number"));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => NS,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(bad("missing unit (use h, m, s, ms, us or ns)")),
            other => {
                return Err(bad(&format!(
                    "unknown unit \"{other}\" (use h, m, s, ms, us or ns)"
                )))
            }
        };
        let too_big = || bad("too large");
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| too_big())?
        };
        let mut value = int.checked_mul(scale).ok_or_else(too_big)?;
        if !frac_part.is_empty() {
            // Digits past nanosecond precision cannot matter; dropping them
            // keeps the arithmetic in range.
            let digits = &frac_part[..frac_part.len().min(18)];
            let frac: u128 = digits.parse().map_err(|_| too_big())?;
            let denom = 10u128.pow(u32::try_from(digits.len()).map_err(|_| too_big())?);
            value = value
                .checked_add(frac * scale / denom)
                .ok_or_else(too_big)?;
        }
        total = total.checked_add(value).ok_or_else(too_big)?;
        rest = after;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| bad("too large"))?;
    let nanos = u32::try_from(total % 1_000_000_000).map_err(|_| bad("too large"))?;
    Ok(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_in_istio_form() {
        let ok = |s: &str| parse_duration(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(ok("10s"), Duration::from_secs(10));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("100ms"), Duration::from_millis(100));
        assert_eq!(ok("1m"), Duration::from_secs(60));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("0s"), Duration::ZERO);
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("250us"), Duration::from_micros(250));
        assert_eq!(ok("0.000000001s"), Duration::from_nanos(1));
    }

    #[test]
    fn bad_durations() {
        for s in ["", "10", "ten", "5d", "-1s", "1.s.", "s", "10 s"] {
            assert!(parse_duration(s).is_err(), "{s:?} should be refused");
        }
        let e = parse_duration("5d").err().unwrap_or_default();
        assert!(e.contains("unknown unit \"d\""), "{e}");
    }
}
