//! From validated resources to what this agent serves: which Gateways
//! select it, which VirtualService rule each TCP server runs, and which
//! endpoints each destination reaches, following Istio's own lookups (file
//! and function names below are istio/istio's).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use super::{
    error::{ConfigError, Origin, Report},
    model::{
        ConnectionPool, Destination, DestinationRuleSpec, GatewaySpec, LoadBalancer, Resolution,
        Server, ServiceEntrySpec, ServicePort, SimpleLb, Subset, TcpRoute as TcpRouteSpec,
        TrafficPolicy, VirtualServiceSpec, WorkloadEntrySpec,
    },
    validate::{self, hosts_match, is_ip, resolve_gateway_name, MESH},
    Address, Agent, Cluster, Endpoint, LbPolicy, Listener, Resource, Snapshot, Spec, TcpRoute,
    WeightedCluster, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
};

/// Kubernetes' cluster domain, as Istio assumes it for short names.
const DOMAIN: &str = "svc.cluster.local";

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
    let world = World::new(agent, resources);
    let listeners = world.listeners(&mut report);
    let warnings = report.into_result()?;
    Ok(Snapshot {
        listeners,
        warnings,
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
        };
        for r in resources {
            match &r.spec {
                Spec::Gateway(s) => w.gateways.push((r, s)),
                Spec::VirtualService(s) => w.virtual_services.push((r, s)),
                Spec::DestinationRule(s) => w.destination_rules.push((r, &**s)),
                Spec::ServiceEntry(s) => w.service_entries.push((r, s)),
                Spec::WorkloadEntry(s) => w.workload_entries.push((r, s)),
            }
        }
        w
    }

    fn listeners(&self, report: &mut Report) -> Vec<Listener> {
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
        listeners.sort_by_key(|l| l.port);
        listeners
    }

    /// The TCP servers of the Gateways that select this agent, refusing
    /// reserved ports and ports two servers want (Istio's `mergeGateways`
    /// drops the later server with only a log line; here it is an error).
    fn served_servers(&self, report: &mut Report) -> Vec<Served<'a>> {
        struct Claim<'b> {
            origin: &'b Origin,
            gateway: String,
            index: usize,
            protocol: &'b str,
            tcp: bool,
        }
        let mut claims: BTreeMap<u16, Claim<'_>> = BTreeMap::new();
        let mut served = Vec::new();
        for &(gw, spec) in &self.gateways {
            let o = &gw.origin;
            if !subset_of(&spec.selector, &self.agent.labels) {
                report.warn(
                    o,
                    "spec.selector",
                    format!(
                        "selects {} but this gateway's labels are {}; not served here",
                        show_labels(&spec.selector),
                        show_labels(&self.agent.labels)
                    ),
                );
                continue;
            }
            for (i, server) in spec.servers.iter().enumerate() {
                let p = format!("spec.servers[{i}]");
                let protocol = server.port.protocol.as_str();
                let upper = protocol.to_ascii_uppercase();
                let tcp = match upper.as_str() {
                    "TCP" => true,
                    // Istio proxies these as TCP too; only its protocol
                    // filters (stats, sharding) are missing here.
                    "MONGO" | "REDIS" | "MYSQL" => {
                        report.warn(
                            o,
                            format!("{p}.port.protocol"),
                            format!("{upper} is served as opaque TCP; protocol-specific filters are not applied"),
                        );
                        true
                    }
                    _ => false,
                };
                let Ok(port) = u16::try_from(server.port.number) else {
                    continue;
                };
                if !tcp {
                    report.warn(
                        o,
                        format!("{p}.port.protocol"),
                        format!("{protocol} servers are not supported by this TCP gateway; server on port {port} skipped"),
                    );
                }
                if let Some(first) = claims.get(&port) {
                    if tcp || first.tcp {
                        report.error(
                            o,
                            format!("{p}.port.number"),
                            format!(
                                "port {port} ({protocol}) is already declared by Gateway {} \
                                 ({} document {}, spec.servers[{}], {}); a port can carry one TCP server",
                                first.gateway, first.origin.file, first.origin.document, first.index, first.protocol
                            ),
                        );
                    }
                    continue;
                }
                claims.insert(
                    port,
                    Claim {
                        origin: o,
                        gateway: gw.id.qualified_name(),
                        index: i,
                        protocol,
                        tcp,
                    },
                );
                if !tcp {
                    continue;
                }
                if let Some(what) = self.agent.reserved_ports.get(&port) {
                    report.error(
                        o,
                        format!("{p}.port.number"),
                        format!("port {port} is reserved by this gateway for {what}"),
                    );
                    continue;
                }
                if server.bind.as_deref().is_some_and(|b| !b.is_empty()) {
                    report.warn(
                        o,
                        format!("{p}.bind"),
                        "not supported; ports open on the address `gateway run --listen-address` gives",
                    );
                }
                if server.default_endpoint.is_some() {
                    report.warn(
                        o,
                        format!("{p}.defaultEndpoint"),
                        "applies to sidecars only; ignored",
                    );
                }
                served.push(Served {
                    gateway: gw,
                    index: i,
                    server,
                    port,
                });
            }
        }
        served
    }

    /// Warnings about VirtualServices that will never reach this agent
    /// although they probably were meant to.
    fn check_references(&self, report: &mut Report) {
        let existing: BTreeSet<String> = self
            .gateways
            .iter()
            .map(|(g, _)| g.id.qualified_name())
            .collect();
        for (vs, spec) in &self.virtual_services {
            let o = &vs.origin;
            if spec.gateways.is_empty() {
                if !spec.tcp.is_empty() {
                    report.warn(
                        o,
                        "spec.gateways",
                        "not set, so this VirtualService applies only to sidecars (mesh); this gateway ignores it",
                    );
                }
                continue;
            }
            for (i, g) in spec.gateways.iter().enumerate() {
                if g == MESH {
                    continue;
                }
                let full = resolve_gateway_name(g, vs.namespace());
                if !existing.contains(&full) {
                    // Istio accepts the VirtualService and binds nothing;
                    // `istioctl analyze` reports IST0101 (ReferencedResourceNotFound).
                    report.warn(
                        o,
                        format!("spec.gateways[{i}]"),
                        format!("gateway {full} not found; nothing is bound until it is applied"),
                    );
                }
            }
            if !visible(&spec.export_to, vs.namespace(), &self.agent.namespace) {
                report.warn(
                    o,
                    "spec.exportTo",
                    format!(
                        "not exported to namespace {}, where this gateway runs; ignored here",
                        self.agent.namespace
                    ),
                );
            }
        }
    }

    /// `buildGatewayNetworkFiltersFromTCPRoutes`: the first VirtualService
    /// (by creation) bound to the gateway whose hosts meet the server's,
    /// and in it the first TCP rule matching the port and the gateway.
    fn route_for(
        &self,
        s: &Served<'a>,
        clusters: &mut BTreeMap<String, Arc<Cluster>>,
        report: &mut Report,
    ) -> Option<TcpRoute> {
        let gw_name = s.gateway.id.qualified_name();
        let gw_ns = s.gateway.namespace();
        let mut chosen: Option<(&Resource, usize, &TcpRouteSpec)> = None;
        for (vs, spec) in &self.virtual_services {
            let bound = spec
                .gateways
                .iter()
                .any(|g| g != MESH && resolve_gateway_name(g, vs.namespace()) == gw_name);
            if !bound || !visible(&spec.export_to, vs.namespace(), &self.agent.namespace) {
                continue;
            }
            if !self.hosts_meet(s.server, gw_ns, vs, spec) {
                report.warn(
                    &vs.origin,
                    "spec.hosts",
                    format!(
                        "none of these hosts is among the hosts of Gateway {gw_name} spec.servers[{}] ({}); \
                         not bound to its port {}",
                        s.index,
                        s.server.hosts.join(", "),
                        s.port
                    ),
                );
                continue;
            }
            let Some((rule, tcp)) = spec.tcp.iter().enumerate().find(|(_, t)| {
                !t.route.is_empty() && tcp_rule_matches(t, s.port, &gw_name, vs.namespace())
            }) else {
                continue;
            };
            match chosen {
                None => chosen = Some((vs, rule, tcp)),
                Some((winner, winner_rule, _)) => report.warn(
                    &vs.origin,
                    format!("spec.tcp[{rule}]"),
                    format!(
                        "not used on port {} of Gateway {gw_name}: VirtualService {} spec.tcp[{winner_rule}] \
                         was applied first and also matches",
                        s.port,
                        winner.id.qualified_name()
                    ),
                ),
            }
        }
        let Some((vs, rule, tcp)) = chosen else {
            report.warn(
                &s.gateway.origin,
                format!("spec.servers[{}]", s.index),
                format!(
                    "no VirtualService binds a TCP route to this server; port {} is not served",
                    s.port
                ),
            );
            return None;
        };

        let mut destinations = Vec::new();
        let single = tcp.route.len() == 1;
        let mut ok = true;
        for (k, rd) in tcp.route.iter().enumerate() {
            let path = format!("spec.tcp[{rule}].route[{k}]");
            // networkfilter.go: a lone destination takes all traffic whatever
            // its weight; among several, weight 0 means none.
            let weight = if single {
                100
            } else {
                u32::try_from(rd.weight.unwrap_or(0)).unwrap_or(0)
            };
            // Resolve even zero-weight destinations: a typo there is still a typo.
            match self.cluster(vs, &path, &rd.destination, s.port, clusters, report) {
                Some(cluster) if weight > 0 => {
                    destinations.push(WeightedCluster { weight, cluster })
                }
                Some(_) => {}
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        Some(TcpRoute {
            virtual_service: vs.id.qualified_name(),
            rule,
            destinations,
        })
    }

    /// `pickMatchingGatewayHosts` (gateway.go): some VirtualService host
    /// meets some server host, where `ns/host` limits the namespace.
    fn hosts_meet(
        &self,
        server: &Server,
        gw_ns: &str,
        vs: &Resource,
        spec: &VirtualServiceSpec,
    ) -> bool {
        spec.hosts.iter().any(|vh| {
            let vh = resolve_host(vh, vs.namespace());
            server.hosts.iter().any(|sh| {
                let host = match sh.split_once('/') {
                    Some((".", h)) => (gw_ns == vs.namespace()).then_some(h),
                    Some(("*", h)) => Some(h),
                    Some((ns, h)) => (ns == vs.namespace()).then_some(h),
                    None => Some(sh.as_str()),
                };
                host.is_some_and(|h| hosts_match(h, &vh))
            })
        })
    }

    /// Everything about one destination: its service, port, policy and
    /// endpoints. Problems are reported against the VirtualService that
    /// routes there, since that is where the user looks.
    fn cluster(
        &self,
        vs: &Resource,
        path: &str,
        d: &Destination,
        listener_port: u16,
        clusters: &mut BTreeMap<String, Arc<Cluster>>,
        report: &mut Report,
    ) -> Option<Arc<Cluster>> {
        let o = &vs.origin;
        let host = resolve_host(&d.host, vs.namespace());
        let host_field = format!("{path}.destination.host");

        let entries: Vec<&(&Resource, &ServiceEntrySpec)> = self
            .service_entries
            .iter()
            .filter(|(se, spec)| {
                spec.hosts.contains(&host)
                    && visible(&spec.export_to, se.namespace(), &self.agent.namespace)
            })
            .collect();
        let (se, se_spec) = match entries.as_slice() {
            [one] => (one.0, one.1),
            [] => {
                report.error(o, host_field, self.unknown_host(&d.host, &host));
                return None;
            }
            many => {
                let names: Vec<String> = many.iter().map(|(r, _)| r.id.qualified_name()).collect();
                report.error(
                    o,
                    host_field,
                    format!(
                        "host {host} is defined by several ServiceEntries ({}); keep one",
                        names.join(", ")
                    ),
                );
                return None;
            }
        };

        // route.go GetDestinationCluster: the given port, else the
        // service's only port, else the listener's.
        let number = d
            .port
            .as_ref()
            .and_then(|p| p.number)
            .or(match se_spec.ports.as_slice() {
                [only] => Some(only.number),
                _ => None,
            })
            .unwrap_or(u32::from(listener_port));
        let port_field = if d.port.is_some() {
            format!("{path}.destination.port.number")
        } else {
            format!("{path}.destination")
        };
        let Some(se_port) = se_spec.ports.iter().find(|p| p.number == number) else {
            let known: Vec<String> = se_spec
                .ports
                .iter()
                .map(|p| format!("{} ({})", p.number, p.name))
                .collect();
            let known = if known.is_empty() {
                "it declares none".to_string()
            } else {
                known.join(", ")
            };
            let implied = if d.port.is_none() {
                " (no port given, so the gateway port is used)"
            } else {
                ""
            };
            report.error(
                o,
                port_field,
                format!(
                    "port {number}{implied} is not a port of host {host} in ServiceEntry {} ({known})",
                    se.id.qualified_name()
                ),
            );
            return None;
        };

        let dr = self.destination_rule(&host, report)?;
        let subset_name = d.subset.as_deref().unwrap_or("");
        let subset = match (d.subset.as_deref(), dr) {
            (None, _) => None,
            (Some(name), None) => {
                report.error(
                    o,
                    format!("{path}.destination.subset"),
                    format!("subset {name:?} is not defined: no DestinationRule for host {host}"),
                );
                return None;
            }
            (Some(name), Some((dr_res, dr_spec))) => {
                match dr_spec.subsets.iter().find(|s| s.name == name) {
                    Some(s) => Some(s),
                    None => {
                        let defined: Vec<&str> =
                            dr_spec.subsets.iter().map(|s| s.name.as_str()).collect();
                        let defined = if defined.is_empty() {
                            format!(
                                "DestinationRule {} defines none",
                                dr_res.id.qualified_name()
                            )
                        } else {
                            format!("defined: {}", defined.join(", "))
                        };
                        report.error(
                            o,
                            format!("{path}.destination.subset"),
                            format!(
                                "subset {name:?} is not defined in any DestinationRule for host {host} ({defined})"
                            ),
                        );
                        return None;
                    }
                }
            }
        };

        let name = format!("outbound|{}|{subset_name}|{host}", se_port.number);
        if let Some(c) = clusters.get(&name) {
            return Some(c.clone());
        }

        let policy = effective_policy(
            dr.and_then(|(_, s)| s.traffic_policy.as_ref()),
            subset.and_then(|s| s.traffic_policy.as_ref()),
            se_port.number,
        );
        let lb = match policy.lb.and_then(|lb| lb.simple) {
            None
            | Some(SimpleLb::Unspecified)
            | Some(SimpleLb::LeastConn)
            | Some(SimpleLb::LeastRequest) => {
                // cluster_traffic_policy.go: defaultLBAlgorithm is LEAST_REQUEST,
                // and LEAST_CONN is its deprecated alias.
                LbPolicy::LeastRequest
            }
            Some(SimpleLb::RoundRobin) => LbPolicy::RoundRobin,
            Some(SimpleLb::Random) => LbPolicy::Random,
            Some(SimpleLb::Passthrough) => {
                let dr_name = dr.map(|(r, _)| r.id.qualified_name()).unwrap_or_default();
                report.error(
                    o,
                    format!("{path}.destination"),
                    format!(
                        "DestinationRule {dr_name} sets loadBalancer.simple PASSTHROUGH for this \
                         destination; that forwards to the connection's original destination, \
                         which at a gateway is the gateway itself"
                    ),
                );
                return None;
            }
        };
        let tcp = policy.pool.and_then(|p| p.tcp.as_ref());
        let connect_timeout = tcp
            .and_then(|t| t.connect_timeout)
            .map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.0);
        let idle_timeout = match tcp.and_then(|t| t.idle_timeout) {
            None => Some(DEFAULT_IDLE_TIMEOUT),
            Some(d) if d.0.is_zero() => None,
            Some(d) => Some(d.0),
        };

        let endpoints = self.endpoints(vs, path, se, se_spec, &host, se_port, subset, report)?;
        let cluster = Arc::new(Cluster {
            name: name.clone(),
            endpoints,
            lb,
            connect_timeout,
            idle_timeout,
        });
        clusters.insert(name, cluster.clone());
        Some(cluster)
    }

    fn unknown_host(&self, written: &str, host: &str) -> String {
        let mut msg = format!("host {host} is not defined by any ServiceEntry");
        let known = |h: &str| {
            self.service_entries
                .iter()
                .any(|(_, s)| s.hosts.iter().any(|x| x == h))
        };
        let expanded = format!("{written}.{DOMAIN}");
        if written.contains('.') && known(&expanded) {
            // Istio takes `name.namespace` literally; Kubernetes DNS would not.
            msg.push_str(&format!("; did you mean {expanded}?"));
        } else {
            msg.push_str(
                " (Kubernetes Services are not read: declare the service and its endpoints with a ServiceEntry)",
            );
        }
        msg
    }

    /// The DestinationRule for a host: an exact match, else the most
    /// specific wildcard (`MostSpecificHostMatch`), among the rules visible
    /// here whose workload selector, if any, selects this agent.
    fn destination_rule(
        &self,
        host: &str,
        report: &mut Report,
    ) -> Option<Option<(&'a Resource, &'a DestinationRuleSpec)>> {
        let candidates: Vec<(&'a Resource, &'a DestinationRuleSpec, String)> = self
            .destination_rules
            .iter()
            .filter(|(r, s)| {
                // A workload selector only reaches workloads in the rule's
                // own namespace (destination_rule.proto).
                visible(&s.export_to, r.namespace(), &self.agent.namespace)
                    && s.workload_selector.as_ref().is_none_or(|sel| {
                        r.namespace() == self.agent.namespace
                            && subset_of(&sel.match_labels, &self.agent.labels)
                    })
            })
            .map(|(r, s)| (*r, *s, resolve_host(&s.host, r.namespace())))
            .collect();
        let exact: Vec<_> = candidates.iter().filter(|(_, _, h)| h == host).collect();
        match exact.as_slice() {
            [(r, s, _)] => return Some(Some((*r, *s))),
            [first, rest @ ..] => {
                // Istio merges such rules by creation time with rules of its
                // own; asking for one rule per host is clearer.
                for (r, _, _) in rest {
                    report.error(
                        &r.origin,
                        "spec.host",
                        format!(
                            "host {host} already has DestinationRule {}; keep one DestinationRule per host",
                            first.0.id.qualified_name()
                        ),
                    );
                }
                return None;
            }
            [] => {}
        }
        let best = candidates
            .iter()
            .filter(|(_, _, h)| h.starts_with('*') && hosts_match(h, host))
            .max_by_key(|(_, _, h)| h.len());
        Some(best.map(|(r, s, _)| (*r, *s)))
    }

    /// `convertServiceEntryToInstances` / `convertWorkloadInstanceToServiceInstance`
    /// (pilot/pkg/serviceregistry/serviceentry/conversion.go).
    #[expect(clippy::too_many_arguments, reason = "one lookup, many inputs")]
    fn endpoints(
        &self,
        vs: &Resource,
        path: &str,
        se: &Resource,
        spec: &ServiceEntrySpec,
        host: &str,
        port: &ServicePort,
        subset: Option<&Subset>,
        report: &mut Report,
    ) -> Option<Vec<Endpoint>> {
        let o = &vs.origin;
        let resolution = spec.resolution.unwrap_or_default();
        let dns = matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin);
        match resolution {
            Resolution::Static | Resolution::Dns | Resolution::DnsRoundRobin => {}
            Resolution::None => {
                report.error(
                    o,
                    format!("{path}.destination.host"),
                    format!(
                        "ServiceEntry {} has resolution NONE (the default): connections would go to \
                         their original destination, which at a gateway is the gateway itself; \
                         use resolution STATIC or DNS with endpoints",
                        se.id.qualified_name()
                    ),
                );
                return None;
            }
            Resolution::DynamicDns => {
                report.error(
                    o,
                    format!("{path}.destination.host"),
                    format!(
                        "ServiceEntry {} has resolution DYNAMIC_DNS, which this gateway does not support",
                        se.id.qualified_name()
                    ),
                );
                return None;
            }
        }

        // (origin of the entry, its spec)
        let mut candidates: Vec<(&Origin, String, &WorkloadEntrySpec)> = Vec::new();
        if !spec.endpoints.is_empty() {
            for (i, e) in spec.endpoints.iter().enumerate() {
                candidates.push((&se.origin, format!("spec.endpoints[{i}]"), e));
            }
        } else if let Some(sel) = &spec.workload_selector {
            let mut selected: Vec<&(&Resource, &WorkloadEntrySpec)> = self
                .workload_entries
                .iter()
                .filter(|(we, s)| {
                    we.namespace() == se.namespace() && subset_of(&sel.labels, &s.labels)
                })
                .collect();
            selected.sort_by(|a, b| a.0.id.cmp(&b.0.id));
            for (we, s) in selected {
                candidates.push((&we.origin, "spec.address".to_string(), s));
            }
        }

        let endpoint_port = |ports: &BTreeMap<String, u32>| -> u16 {
            let n = ports
                .get(&port.name)
                .copied()
                .filter(|p| *p > 0)
                .or(port.target_port.filter(|p| *p > 0))
                .unwrap_or(port.number);
            // Validation keeps every port within 1..=65535.
            u16::try_from(n).unwrap_or(0)
        };

        let mut all = Vec::new();
        if candidates.is_empty() && spec.workload_selector.is_none() && dns {
            // A DNS ServiceEntry without endpoints reaches its own host name.
            all.push(Endpoint {
                address: Address::Dns(host.to_string()),
                port: endpoint_port(&BTreeMap::new()),
                weight: 1,
                labels: BTreeMap::new(),
            });
        }
        for (origin, field, e) in &candidates {
            let addr = e.address.as_deref().unwrap_or("");
            let address = if addr.is_empty() {
                continue;
            } else if addr.starts_with("unix://") {
                report.warn(
                    origin,
                    field.as_str(),
                    "unix domain socket endpoints are not supported; skipped",
                );
                continue;
            } else if let Ok(ip) = addr.parse::<IpAddr>() {
                Address::Ip(ip)
            } else if dns {
                Address::Dns(addr.to_string())
            } else {
                // Istio uses host-name workload entries for DNS services only.
                report.warn(
                    origin,
                    field.as_str(),
                    format!(
                        "address {addr:?} is a host name, which ServiceEntry {} (resolution STATIC) \
                         cannot use; skipped",
                        se.id.qualified_name()
                    ),
                );
                continue;
            };
            all.push(Endpoint {
                address,
                port: endpoint_port(&e.ports),
                weight: e.weight.filter(|w| *w > 0).unwrap_or(1),
                labels: e.labels.clone(),
            });
        }

        let total = all.len();
        let wanted = subset.map(|s| &s.labels);
        let endpoints: Vec<Endpoint> = all
            .into_iter()
            .filter(|e| wanted.is_none_or(|w| subset_of(w, &e.labels)))
            .collect();
        if !endpoints.is_empty() {
            return Some(endpoints);
        }
        let why = if total > 0 {
            format!(
                "ServiceEntry {} has {total} endpoint(s), none labelled {}",
                se.id.qualified_name(),
                wanted.map(show_labels).unwrap_or_default()
            )
        } else if let Some(sel) = &spec.workload_selector {
            format!(
                "the workloadSelector {} of ServiceEntry {} selects no WorkloadEntry in namespace {}",
                show_labels(&sel.labels),
                se.id.qualified_name(),
                se.namespace()
            )
        } else {
            format!("ServiceEntry {} lists no endpoints", se.id.qualified_name())
        };
        let subset_note = subset
            .map(|s| format!(" subset {}", s.name))
            .unwrap_or_default();
        report.error(
            o,
            format!("{path}.destination"),
            format!(
                "no endpoints for host {host} port {}{subset_note}: {why}",
                port.number
            ),
        );
        None
    }
}

/// At a gateway, a TCP rule matches on the server port and the gateway
/// name only (`l4MultiMatch` / `l4SingleMatch` in gateway.go).
fn tcp_rule_matches(rule: &TcpRouteSpec, port: u16, gateway: &str, vs_ns: &str) -> bool {
    rule.matches.is_empty()
        || rule.matches.iter().any(|m| {
            let port_ok = m.port.is_none_or(|p| p == 0 || p == u32::from(port));
            let gw_ok = m.gateways.is_empty()
                || m.gateways
                    .iter()
                    .any(|g| resolve_gateway_name(g, vs_ns) == gateway);
            port_ok && gw_ok
        })
}

/// The parts of a traffic policy this gateway applies.
#[derive(Default, Clone, Copy)]
struct Policy<'a> {
    lb: Option<&'a LoadBalancer>,
    pool: Option<&'a ConnectionPool>,
}

/// `MergeSubsetTrafficPolicy` (pilot/pkg/networking/util/util.go): a
/// port-level policy replaces the destination-level one wholesale; the
/// subset's policy then overrides field by field, or wholesale if it too is
/// port-level.
fn effective_policy<'a>(
    rule: Option<&'a TrafficPolicy>,
    subset: Option<&'a TrafficPolicy>,
    port: u32,
) -> Policy<'a> {
    fn at_port(tp: &TrafficPolicy, port: u32) -> (Policy<'_>, bool) {
        match tp
            .port_level_settings
            .iter()
            .find(|p| p.port.as_ref().and_then(|s| s.number) == Some(port))
        {
            Some(pl) => (
                Policy {
                    lb: pl.load_balancer.as_ref(),
                    pool: pl.connection_pool.as_ref(),
                },
                true,
            ),
            None => (
                Policy {
                    lb: tp.load_balancer.as_ref(),
                    pool: tp.connection_pool.as_ref(),
                },
                false,
            ),
        }
    }
    let mut policy = rule.map(|tp| at_port(tp, port).0).unwrap_or_default();
    if let Some(tp) = subset {
        let (sub, port_level) = at_port(tp, port);
        if sub.lb.is_some() || port_level {
            policy.lb = sub.lb;
        }
        if sub.pool.is_some() || port_level {
            policy.pool = sub.pool;
        }
    }
    policy
}

#[cfg(test)]
mod tests {
    use super::*;
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
