//! The Gateway API's Gateways and TCPRoutes: which listeners this gateway
//! serves, which route each runs and where its backends are, with the
//! status the spec defines for each route and Gateway.
//!
//! A backend is a Service, found as the ServiceEntry host Kubernetes would
//! give it (`name.namespace.svc.cluster.local`, which `--source
//! kubernetes` makes from each Service). One that is missing or refused
//! keeps its weight and gets no endpoints, so its share of connections is
//! refused, as the spec asks.
use std::{collections::BTreeMap, sync::Arc};

use super::{World, DOMAIN};
use crate::istio::{
    error::{Report, GATEWAY_API_GROUP},
    resources::{
        BackendRef, Destination, FromNamespaces, KubeGatewaySpec, KubeListener, ParentRef,
        PortSelector,
    },
    Cluster, Condition, Listener, ListenerStatus, Resource, Status, TcpRoute, WeightedCluster,
    CONTROLLER_NAME, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
};

fn condition(kind: &'static str, status: bool, reason: &'static str, message: String) -> Condition {
    Condition {
        kind,
        status,
        reason,
        message,
    }
}

/// `Gateway ns/name`, with the parentRef's sectionName and port as written.
fn show_parent(ns: &str, p: &ParentRef) -> String {
    let mut s = format!("Gateway {ns}/{}", p.name);
    if let Some(section) = &p.section_name {
        s.push_str(&format!(" sectionName {section}"));
    }
    if let Some(port) = p.port {
        s.push_str(&format!(" port {port}"));
    }
    s
}

/// Whether `listener` admits TCPRoutes from `route_ns`, its Gateway being
/// in `gw_ns`; `None` if it does, else why not.
fn admits(listener: &KubeListener, gw_ns: &str, route_ns: &str) -> Option<String> {
    if listener.protocol != "TCP" {
        return Some(format!(
            "listener {} is {}, not TCP",
            listener.name, listener.protocol
        ));
    }
    let allowed = listener.allowed_routes.clone().unwrap_or_default();
    if !allowed.kinds.is_empty()
        && !allowed.kinds.iter().any(|k| {
            k.kind == "TCPRoute" && k.group.as_deref().is_none_or(|g| g == GATEWAY_API_GROUP)
        })
    {
        return Some(format!(
            "listener {} does not allow the kind TCPRoute",
            listener.name
        ));
    }
    match allowed.namespaces.and_then(|n| n.from) {
        None | Some(FromNamespaces::Same) if gw_ns != route_ns => Some(format!(
            "listener {} allows routes from its own namespace {gw_ns} only",
            listener.name
        )),
        // A label selector needs the namespaces' labels, which the
        // gateway does not read.
        Some(FromNamespaces::Selector) => Some(format!(
            "listener {} selects route namespaces by label, which this gateway does not support",
            listener.name
        )),
        _ => None,
    }
}

impl<'a> World<'a> {
    /// A Gateway is this gateway's when its class is the one named by
    /// `--gateway-class`, or a GatewayClass naming this controller.
    fn ours(&self, spec: &KubeGatewaySpec) -> bool {
        spec.gateway_class_name == self.agent.gateway_class
            || self.gateway_classes.iter().any(|(c, s)| {
                c.id.name == spec.gateway_class_name && s.controller_name == CONTROLLER_NAME
            })
    }

    /// Whether a ReferenceGrant in `to_ns` lets TCPRoutes of `from_ns`
    /// reach Service `name`.
    fn granted(&self, from_ns: &str, to_ns: &str, name: &str) -> bool {
        self.reference_grants.iter().any(|(g, spec)| {
            g.namespace() == to_ns
                && spec.from.iter().any(|f| {
                    f.group == GATEWAY_API_GROUP && f.kind == "TCPRoute" && f.namespace == from_ns
                })
                && spec.to.iter().any(|t| {
                    t.group.is_empty()
                        && t.kind == "Service"
                        && t.name.as_deref().is_none_or(|n| n == name)
                })
        })
    }

    pub(super) fn kube_listeners(
        &self,
        clusters: &mut BTreeMap<String, Arc<Cluster>>,
        status: &mut Vec<Status>,
        report: &mut Report,
    ) -> Vec<Listener> {
        for (gw, spec) in &self.kube_gateways {
            if !self.ours(spec) {
                report.warn(
                    &gw.origin,
                    "spec.gatewayClassName",
                    format!(
                        "class {:?} is not this gateway's (--gateway-class {:?}, or a \
                         GatewayClass with controllerName {CONTROLLER_NAME}); not served",
                        spec.gateway_class_name, self.agent.gateway_class
                    ),
                );
            }
        }
        for (c, spec) in &self.gateway_classes {
            if spec.controller_name == CONTROLLER_NAME {
                status.push(Status {
                    resource: c.id.clone(),
                    parent: None,
                    parent_ref: None,
                    conditions: vec![condition("Accepted", true, "Accepted", String::new())],
                    listeners: Vec::new(),
                });
            }
        }
        // (gateway index, listener index) → the routes attached, oldest first.
        let mut attached: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
        for (ri, (route, spec)) in self.tcp_routes.iter().enumerate() {
            for (pi, p) in spec.parent_refs.iter().enumerate() {
                let kind_ok = p.kind.as_deref().is_none_or(|k| k == "Gateway")
                    && p.group.as_deref().is_none_or(|g| g == GATEWAY_API_GROUP);
                if !kind_ok {
                    continue;
                }
                let ns = p.namespace.as_deref().unwrap_or(route.namespace());
                let Some(gi) = self
                    .kube_gateways
                    .iter()
                    .position(|(g, s)| g.namespace() == ns && g.id.name == p.name && self.ours(s))
                else {
                    if !self
                        .kube_gateways
                        .iter()
                        .any(|(g, _)| g.namespace() == ns && g.id.name == p.name)
                    {
                        report.warn(
                            &route.origin,
                            format!("spec.parentRefs[{pi}]"),
                            format!("Gateway {ns}/{} does not exist; not served", p.name),
                        );
                    }
                    continue;
                };
                let (gw, gspec) = self.kube_gateways[gi];
                let named: Vec<usize> = gspec
                    .listeners
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| {
                        p.section_name.as_ref().is_none_or(|s| *s == l.name)
                            && p.port.is_none_or(|port| port == l.port)
                    })
                    .map(|(i, _)| i)
                    .collect();
                let parent = Some(show_parent(ns, p));
                let accepted = if named.is_empty() {
                    condition(
                        "Accepted",
                        false,
                        "NoMatchingParent",
                        "no listener of the Gateway has this sectionName and port".into(),
                    )
                } else {
                    let mut refusals = Vec::new();
                    for &li in &named {
                        match admits(&gspec.listeners[li], gw.namespace(), route.namespace()) {
                            None => attached.entry((gi, li)).or_default().push(ri),
                            Some(why) => refusals.push(why),
                        }
                    }
                    if refusals.len() == named.len() {
                        condition(
                            "Accepted",
                            false,
                            "NotAllowedByListeners",
                            refusals.join("; "),
                        )
                    } else {
                        condition("Accepted", true, "Accepted", String::new())
                    }
                };
                let resolved = self.resolved_refs(
                    route,
                    spec.rules
                        .first()
                        .map(|r| &r.backend_refs[..])
                        .unwrap_or_default(),
                );
                status.push(Status {
                    resource: route.id.clone(),
                    parent,
                    parent_ref: serde_json::to_value(p).ok(),
                    conditions: vec![accepted, resolved],
                    listeners: Vec::new(),
                });
            }
        }

        let mut listeners = Vec::new();
        for ((gi, li), routes) in &attached {
            let (gw, gspec) = self.kube_gateways[*gi];
            let l = &gspec.listeners[*li];
            let Ok(port) = u16::try_from(l.port) else {
                continue;
            };
            let (winner, spec) = self.tcp_routes[routes[0]];
            for &later in &routes[1..] {
                let (r, _) = self.tcp_routes[later];
                report.warn(
                    &r.origin,
                    "spec.parentRefs",
                    format!(
                        "not served on listener {} of Gateway {}: TCPRoute {} is older and \
                         attached there first (one TCPRoute per TCP listener)",
                        l.name,
                        gw.id.qualified_name(),
                        winner.id.qualified_name()
                    ),
                );
            }
            if let Some(what) = self.agent.reserved_ports.get(&port) {
                report.error(
                    &gw.origin,
                    format!("spec.listeners[{li}].port"),
                    format!("port {port} is reserved by this gateway for {what}"),
                );
                continue;
            }
            let backends = spec
                .rules
                .first()
                .map(|r| &r.backend_refs[..])
                .unwrap_or_default();
            let destinations = self.backends(winner, backends, port, clusters, report);
            listeners.push(Listener {
                port,
                gateway: gw.id.qualified_name(),
                origin: gw.origin.clone(),
                server: *li,
                route: TcpRoute {
                    kind: crate::istio::Kind::TcpRoute,
                    virtual_service: winner.id.qualified_name(),
                    rule: 0,
                    destinations,
                },
            });
        }
        for (gi, (gw, gspec)) in self.kube_gateways.iter().enumerate() {
            if !self.ours(gspec) {
                continue;
            }
            let served = listeners
                .iter()
                .filter(|l| l.gateway == gw.id.qualified_name())
                .count();
            let attached_routes: usize = attached
                .iter()
                .filter(|((g, _), _)| *g == gi)
                .map(|(_, r)| r.len())
                .sum();
            let listener_status = gspec
                .listeners
                .iter()
                .enumerate()
                .map(|(li, l)| {
                    let attached_routes = attached.get(&(gi, li)).map_or(0, Vec::len);
                    let port = u16::try_from(l.port).unwrap_or(0);
                    let programmed = listeners
                        .iter()
                        .any(|s| s.gateway == gw.id.qualified_name() && s.server == li);
                    if l.protocol != "TCP" {
                        let why = format!(
                            "protocol {} is not served by this gateway (TCP only)",
                            l.protocol
                        );
                        return ListenerStatus {
                            name: l.name.clone(),
                            supported_kinds: Vec::new(),
                            attached_routes,
                            conditions: vec![
                                condition("Accepted", false, "UnsupportedProtocol", why.clone()),
                                condition("Programmed", false, "Invalid", why),
                                condition("ResolvedRefs", true, "ResolvedRefs", String::new()),
                            ],
                        };
                    }
                    let pending = if attached_routes == 0 {
                        "no TCPRoute attached".to_string()
                    } else {
                        format!("port {port} is not served (see the Gateway's warnings)")
                    };
                    ListenerStatus {
                        name: l.name.clone(),
                        supported_kinds: vec!["TCPRoute"],
                        attached_routes,
                        conditions: vec![
                            condition("Accepted", true, "Accepted", String::new()),
                            if programmed {
                                condition("Programmed", true, "Programmed", String::new())
                            } else {
                                condition("Programmed", false, "Pending", pending)
                            },
                            condition("ResolvedRefs", true, "ResolvedRefs", String::new()),
                        ],
                    }
                })
                .collect();
            status.push(Status {
                resource: gw.id.clone(),
                parent: None,
                parent_ref: None,
                listeners: listener_status,
                conditions: vec![
                    condition("Accepted", true, "Accepted", String::new()),
                    condition(
                        "Programmed",
                        served > 0,
                        if served > 0 { "Programmed" } else { "Pending" },
                        format!(
                            "{served} TCP listener(s) served, {attached_routes} route(s) attached"
                        ),
                    ),
                ],
            });
        }
        listeners
    }

    /// Where a backendRef points: (namespace, host) or why it cannot.
    fn backend_target(
        &self,
        route: &Resource,
        b: &BackendRef,
    ) -> Result<(String, u16), (&'static str, String)> {
        let kind = b.kind.as_deref().unwrap_or("Service");
        let group = b.group.as_deref().unwrap_or("");
        if kind != "Service" || !group.is_empty() {
            return Err((
                "InvalidKind",
                format!("{group}/{kind} {}: backends must be Services", b.name),
            ));
        }
        let ns = b.namespace.as_deref().unwrap_or(route.namespace());
        if ns != route.namespace() && !self.granted(route.namespace(), ns, &b.name) {
            return Err((
                "RefNotPermitted",
                format!(
                    "Service {ns}/{}: no ReferenceGrant in namespace {ns} lets TCPRoutes of {} reach it",
                    b.name,
                    route.namespace()
                ),
            ));
        }
        let host = format!("{}.{ns}.{DOMAIN}", b.name);
        let port = b.port.and_then(|p| u16::try_from(p).ok()).unwrap_or(0);
        let known = self.service_entries.iter().any(|(_, s)| {
            s.hosts.contains(&host) && s.ports.iter().any(|p| p.number == u32::from(port))
        });
        if !known {
            return Err((
                "BackendNotFound",
                format!("Service {ns}/{} port {port} does not exist", b.name),
            ));
        }
        Ok((host, port))
    }

    fn resolved_refs(&self, route: &Resource, backends: &[BackendRef]) -> Condition {
        let problems: Vec<(&'static str, String)> = backends
            .iter()
            .filter_map(|b| self.backend_target(route, b).err())
            .collect();
        match problems.first() {
            None => condition("ResolvedRefs", true, "ResolvedRefs", String::new()),
            Some((reason, _)) => condition(
                "ResolvedRefs",
                false,
                reason,
                problems
                    .iter()
                    .map(|(_, m)| m.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        }
    }

    fn backends(
        &self,
        route: &Resource,
        backends: &[BackendRef],
        listener_port: u16,
        clusters: &mut BTreeMap<String, Arc<Cluster>>,
        report: &mut Report,
    ) -> Vec<WeightedCluster> {
        let mut out = Vec::new();
        for (i, b) in backends.iter().enumerate() {
            let weight = u32::try_from(b.weight.unwrap_or(1)).unwrap_or(0);
            let path = format!("spec.rules[0].backendRefs[{i}]");
            let cluster = match self.backend_target(route, b) {
                Ok((host, port)) => {
                    let d = Destination {
                        host,
                        subset: None,
                        port: Some(PortSelector {
                            number: Some(u32::from(port)),
                        }),
                    };
                    match self.cluster(route, &path, &d, listener_port, clusters, report) {
                        Some(c) => c,
                        None => continue,
                    }
                }
                Err((_, why)) => {
                    report.warn(
                        &route.origin,
                        path,
                        format!("{why}: its share of connections is refused"),
                    );
                    refused(&b.name, b.port.unwrap_or(0))
                }
            };
            if weight > 0 {
                out.push(WeightedCluster { weight, cluster });
            }
        }
        if out.is_empty() {
            // Nothing may receive traffic: every connection is refused.
            out.push(WeightedCluster {
                weight: 1,
                cluster: refused("none", 0),
            });
        }
        out
    }
}

/// A cluster with no endpoints: its connections are refused (`UH`).
fn refused(name: &str, port: u32) -> Arc<Cluster> {
    Arc::new(Cluster {
        name: format!("outbound|{port}||{name}.invalid"),
        endpoints: Vec::new(),
        lb: crate::istio::LbPolicy::RoundRobin,
        connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
    })
}
