//! From validated resources to what this agent serves: which Gateways
//! select it, which VirtualService rule each TCP server runs, and which
//! endpoints each destination reaches, following Istio's own lookups (file
//! and function names below are istio/istio's).

mod cluster;
mod endpoints;
mod gateway;
mod gateway_api;
mod route;

use std::collections::BTreeMap;

use super::{
    error::{ConfigError, Report},
    names::is_ip,
    resources::{
        DestinationRuleSpec, GatewaySpec, Server, ServiceEntrySpec, VirtualServiceSpec,
        WorkloadEntrySpec,
    },
    resources::{GatewayClassSpec, KubeGatewaySpec, KubeTcpRouteSpec, ReferenceGrantSpec},
    validate, Agent, Listener, Resource, Snapshot, Spec, Status,
};

use super::services::{self, DOMAIN};

/// `resources` must be in creation order: it decides which VirtualService
/// wins a port, as Istio's `sortConfigByCreationTime` does.
pub(crate) fn snapshot(agent: &Agent, resources: &[&Resource]) -> Result<Snapshot, ConfigError> {
    let mut report = Report::default();
    for r in resources {
        validate::resource(r, &mut report);
    }
    // Resolving invalid resources would only repeat the same problems.
    if !report.errors.is_empty() {
        return Err(ConfigError::Invalid(report.errors));
    }
    let derived = services::derived(resources, &mut report);
    for r in &derived {
        validate::resource(r, &mut report);
    }
    if !report.errors.is_empty() {
        return Err(ConfigError::Invalid(report.errors));
    }
    let all: Vec<&Resource> = resources.iter().copied().chain(&derived).collect();
    let world = World::new(agent, &all);
    let mut status = Vec::new();
    let listeners = world.listeners(&mut status, &mut report);
    let warnings = report.into_result()?;
    Ok(Snapshot {
        listeners,
        warnings,
        status,
    })
}

/// `ResolveShortnameToFQDN` (pilot/pkg/model/config.go): a name without
/// dots is a Kubernetes service in the referring resource's namespace;
/// anything with a dot (including `name.namespace`) is taken as written.
pub(crate) fn resolve_host(host: &str, namespace: &str) -> String {
    if host == "*" || is_ip(host) || host.contains('.') {
        host.to_string()
    } else {
        format!("{host}.{namespace}.{DOMAIN}")
    }
}

/// `exportTo` as seen from this agent's namespace; empty means everywhere.
fn visible(export_to: &[String], owner_ns: &str, agent_ns: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || e == agent_ns || (e == "." && owner_ns == agent_ns))
}

fn subset_of(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn show_labels(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

struct World<'a> {
    agent: &'a Agent,
    gateways: Vec<(&'a Resource, &'a GatewaySpec)>,
    virtual_services: Vec<(&'a Resource, &'a VirtualServiceSpec)>,
    destination_rules: Vec<(&'a Resource, &'a DestinationRuleSpec)>,
    service_entries: Vec<(&'a Resource, &'a ServiceEntrySpec)>,
    workload_entries: Vec<(&'a Resource, &'a WorkloadEntrySpec)>,
    kube_gateways: Vec<(&'a Resource, &'a KubeGatewaySpec)>,
    tcp_routes: Vec<(&'a Resource, &'a KubeTcpRouteSpec)>,
    reference_grants: Vec<(&'a Resource, &'a ReferenceGrantSpec)>,
    gateway_classes: Vec<(&'a Resource, &'a GatewayClassSpec)>,
}

/// A server this agent will listen for.
struct Served<'a> {
    gateway: &'a Resource,
    index: usize,
    server: &'a Server,
    port: u16,
}

impl<'a> World<'a> {
    fn new(agent: &'a Agent, resources: &[&'a Resource]) -> Self {
        let mut w = World {
            agent,
            gateways: Vec::new(),
            virtual_services: Vec::new(),
            destination_rules: Vec::new(),
            service_entries: Vec::new(),
            workload_entries: Vec::new(),
            kube_gateways: Vec::new(),
            tcp_routes: Vec::new(),
            reference_grants: Vec::new(),
            gateway_classes: Vec::new(),
        };
        for r in resources {
            match &r.spec {
                Spec::Gateway(s) => w.gateways.push((r, s)),
                Spec::VirtualService(s) => w.virtual_services.push((r, s)),
                Spec::DestinationRule(s) => w.destination_rules.push((r, &**s)),
                Spec::ServiceEntry(s) => w.service_entries.push((r, s)),
                Spec::WorkloadEntry(s) => w.workload_entries.push((r, s)),
                Spec::KubeGateway(s) => w.kube_gateways.push((r, s)),
                Spec::TcpRoute(s) => w.tcp_routes.push((r, s)),
                Spec::ReferenceGrant(s) => w.reference_grants.push((r, s)),
                Spec::GatewayClass(s) => w.gateway_classes.push((r, s)),
                // Read as the ServiceEntries they stand for.
                Spec::Service(_) | Spec::EndpointSlice(_) => {}
            }
        }
        w
    }

    fn listeners(&self, status: &mut Vec<Status>, report: &mut Report) -> Vec<Listener> {
        let served = self.served_servers(report);
        self.check_references(report);
        let mut clusters = BTreeMap::new();
        let mut listeners = Vec::new();
        for s in &served {
            if let Some(route) = self.route_for(s, &mut clusters, report) {
                listeners.push(Listener {
                    port: s.port,
                    gateway: s.gateway.id.qualified_name(),
                    origin: s.gateway.origin.clone(),
                    server: s.index,
                    route,
                });
            }
        }
        // A port is served by one Gateway, whichever API it comes from.
        for k in self.kube_listeners(&mut clusters, status, report) {
            match listeners.iter().find(|l| l.port == k.port) {
                Some(l) => report.error(
                    &k.origin,
                    k.port_field(),
                    format!(
                        "port {} is already served by {} {} ({}, {}); a port is served by one Gateway",
                        k.port,
                        l.gateway_kind().kind_field(),
                        l.gateway,
                        l.gateway_kind().group(),
                        l.origin
                    ),
                ),
                None => listeners.push(k),
            }
        }
        listeners.sort_by_key(|l| l.port);
        listeners
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::istio::DEFAULT_CONNECT_TIMEOUT;
    use std::time::Duration;

    #[test]
    fn short_names_resolve_in_the_referring_namespace() {
        assert_eq!(
            resolve_host("tcp-echo", "ns"),
            "tcp-echo.ns.svc.cluster.local"
        );
        assert_eq!(resolve_host("tcp-echo.other", "ns"), "tcp-echo.other");
        assert_eq!(
            resolve_host("tcp-echo.other.svc.cluster.local", "ns"),
            "tcp-echo.other.svc.cluster.local"
        );
        assert_eq!(resolve_host("*", "ns"), "*");
        assert_eq!(resolve_host("10.0.0.1", "ns"), "10.0.0.1");
    }

    #[test]
    fn export_to_visibility() {
        assert!(visible(&[], "a", "istio-system"));
        assert!(visible(&["*".into()], "a", "istio-system"));
        assert!(!visible(&[".".into()], "a", "istio-system"));
        assert!(visible(&[".".into()], "istio-system", "istio-system"));
        assert!(visible(&["istio-system".into()], "a", "istio-system"));
    }

    #[test]
    fn connect_timeout_default_is_istios() {
        assert_eq!(DEFAULT_CONNECT_TIMEOUT, Duration::from_secs(10));
    }
}
