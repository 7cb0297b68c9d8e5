//! Kubernetes Services as the resolver sees them: each becomes the
//! ServiceEntry Istio's own registry would make of it, host
//! `name.namespace.svc.cluster.local`, endpoints the ready addresses of
//! its EndpointSlices. `--source kubernetes` builds them from the watched
//! Services, EndpointSlices and pods; in file mode they come from Service
//! and EndpointSlice documents, the endpoints labelled with the Service's
//! selector (the pods behind a selector carry at least its labels).
use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{
    error::Report,
    resources::{EndpointSliceDoc, ServiceSpec},
    Namespace, Resource, Spec,
};

/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Kubernetes' cluster domain, as Istio assumes it for short names.
pub(crate) const DOMAIN: &str = "svc.cluster.local";

/// One TCP port of a Service: number, name, and the target port when it
/// is a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub number: u16,
    pub name: String,
    pub target: Option<u16>,
}

impl Port {
    /// The name the ServiceEntry gives it; a Service's single port may be
    /// unnamed.
    fn entry_name(&self) -> String {
        if self.name.is_empty() {
            format!("port-{}", self.number)
        } else {
            self.name.clone()
        }
    }
}

/// A ready address, its labels, and the port numbers its slice gives each
/// Service port name.
pub struct Ready<'a> {
    pub address: &'a str,
    pub labels: BTreeMap<String, String>,
    pub ports: &'a BTreeMap<String, u16>,
}

/// The name of the ServiceEntry standing for Service `name`. It cannot
/// clash with one the user writes for the Service: a Service's name has no
/// dots.
pub fn entry_name(name: &str) -> String {
    format!("{name}.service")
}

/// The ServiceEntry document standing for Service `ns/name`; an address
/// in several slices counts once.
pub fn service_entry<'a>(
    ns: &str,
    name: &str,
    ports: &[Port],
    ready: impl IntoIterator<Item = Ready<'a>>,
) -> Value {
    let entry_ports: Vec<Value> = ports
        .iter()
        .map(|p| {
            let mut v = json!({"number": p.number, "name": p.entry_name(), "protocol": "TCP"});
            if let Some(t) = p.target {
                v["targetPort"] = json!(t);
            }
            v
        })
        .collect();
    let mut endpoints: BTreeMap<String, Value> = BTreeMap::new();
    for r in ready {
        let mut eports = serde_json::Map::new();
        for p in ports {
            if let Some(n) = r.ports.get(&p.name) {
                eports.insert(p.entry_name(), json!(n));
            }
        }
        endpoints
            .entry(r.address.to_string())
            .or_insert_with(|| json!({"address": r.address, "labels": r.labels, "ports": eports}));
    }
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": entry_name(name), "namespace": ns},
        "spec": {
            "hosts": [format!("{name}.{ns}.{DOMAIN}")],
            "location": "MESH_INTERNAL",
            "resolution": "STATIC",
            "ports": entry_ports,
            "endpoints": endpoints.into_values().collect::<Vec<_>>(),
        }
    })
}

/// A Service's TCP ports; an ExternalName Service has none to dial.
pub(crate) fn ports(spec: &ServiceSpec) -> Vec<Port> {
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    spec.ports
        .iter()
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|p| {
            Some(Port {
                number: u16::try_from(p.port).ok()?,
                name: p.name.clone().unwrap_or_default(),
                target: p
                    .target_port
                    .as_ref()
                    .and_then(Value::as_u64)
                    .and_then(|n| u16::try_from(n).ok()),
            })
        })
        .collect()
}

/// A slice's port numbers by port name.
pub type PortNumbers = BTreeMap<String, u16>;

/// The TCP ports of a Service's `spec` as the API serves it (what a
/// cluster's watch gives).
pub fn ports_of_spec(spec: &Value) -> Vec<Port> {
    serde_json::from_value::<ServiceSpec>(spec.clone()).map_or_else(|_| Vec::new(), |s| ports(&s))
}

/// An EndpointSlice as the API serves it: its TCP port numbers by name,
/// and each ready endpoint's address with the pod behind it.
pub fn endpoints_of_slice(slice: &Value) -> (PortNumbers, Vec<(String, Option<String>)>) {
    let Ok(s) = serde_json::from_value::<EndpointSliceDoc>(slice.clone()) else {
        return (BTreeMap::new(), Vec::new());
    };
    let (ports, ready) = slice_ready(&s);
    let ready = ready
        .into_iter()
        .map(|(a, pod)| (a.to_string(), pod.map(str::to_string)))
        .collect();
    (ports, ready)
}

/// A slice's TCP port numbers by name, and its ready addresses with the
/// pod behind each, if it names one.
pub(crate) fn slice_ready(s: &EndpointSliceDoc) -> (PortNumbers, Vec<(&str, Option<&str>)>) {
    if s.address_type == "FQDN" {
        return (BTreeMap::new(), Vec::new());
    }
    let ports = s
        .ports
        .iter()
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|p| {
            Some((
                p.name.clone().unwrap_or_default(),
                u16::try_from(p.port?).ok()?,
            ))
        })
        .collect();
    let ready = s
        .endpoints
        .iter()
        // "Nil should be interpreted as true" (discovery.k8s.io/v1).
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .filter_map(|e| {
            let pod = e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.as_deref());
            Some((e.addresses.first()?.as_str(), pod))
        })
        .collect();
    (ports, ready)
}

/// The ServiceEntries that the Service and EndpointSlice documents among
/// `resources` stand for, each with the Service's origin. A Service no
/// slice names has no endpoints here, and is left to a ServiceEntry of
/// its host, if there is one: said as a warning.
pub(crate) fn derived(resources: &[&Resource], report: &mut Report) -> Vec<Resource> {
    let mut slices: BTreeMap<(&str, &str), Vec<&EndpointSliceDoc>> = BTreeMap::new();
    for r in resources {
        if let Spec::EndpointSlice(s) = &r.spec {
            match r.metadata.labels.get(SERVICE_NAME_LABEL) {
                Some(service) => slices
                    .entry((r.namespace(), service.as_str()))
                    .or_default()
                    .push(s),
                None => report.warn(
                    &r.origin,
                    format!("metadata.labels.{SERVICE_NAME_LABEL}"),
                    "names no Service; its endpoints are not used",
                ),
            }
        }
    }
    let mut out = Vec::new();
    for r in resources {
        let Spec::Service(spec) = &r.spec else {
            continue;
        };
        let (ns, name) = (r.namespace(), r.id.name.as_str());
        let Some(of_service) = slices.get(&(ns, name)) else {
            let host = format!("{name}.{ns}.{DOMAIN}");
            let shadowed = resources.iter().any(|o| match &o.spec {
                Spec::ServiceEntry(se) => se.hosts.contains(&host),
                _ => false,
            });
            if !shadowed {
                report.warn(
                    &r.origin,
                    "",
                    format!(
                        "no EndpointSlice document (label {SERVICE_NAME_LABEL}: {name}) gives it \
                         endpoints, nor a ServiceEntry of host {host}: without a cluster it has none"
                    ),
                );
            }
            continue;
        };
        let ports = ports(spec);
        let read: Vec<_> = of_service.iter().map(|s| slice_ready(s)).collect();
        let ready = read.iter().flat_map(|(ports, addresses)| {
            addresses.iter().map(move |(a, _)| Ready {
                address: a,
                labels: spec.selector.clone(),
                ports,
            })
        });
        let doc = service_entry(ns, name, &ports, ready);
        match super::parse(&doc.to_string(), &r.origin.file, Namespace::Only(ns)) {
            Ok(batch) => out.extend(batch.resources.into_iter().map(|mut e| {
                e.origin.file = r.origin.file.clone();
                e.origin.document = r.origin.document;
                e.from_service = true;
                e
            })),
            Err(e) => report.error(
                &r.origin,
                "",
                format!("its endpoints cannot be served: {e}"),
            ),
        }
    }
    out
}
