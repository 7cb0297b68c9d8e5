//! A destination's service, port, policy and subset: its cluster.
use std::{collections::BTreeMap, sync::Arc};

use super::{resolve_host, subset_of, visible, World, DOMAIN};
use crate::istio::{
    error::Report,
    names::hosts_match,
    resources::{
        ConnectionPool, Destination, DestinationRuleSpec, LoadBalancer, ServiceEntrySpec, SimpleLb,
        TrafficPolicy,
    },
    Cluster, LbPolicy, Resource, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
};

impl<'a> World<'a> {
    /// Everything about one destination: its service, port, policy and
    /// endpoints. Problems are reported against the VirtualService that
    /// routes there, since that is where the user looks.
    pub(super) fn cluster(
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

    pub(super) fn unknown_host(&self, written: &str, host: &str) -> String {
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
        } else if self.agent.live_endpoints {
            msg.push_str(" nor by a Kubernetes Service in this namespace");
        } else {
            msg.push_str(
                " (without a cluster, a Kubernetes Service has endpoints when EndpointSlice \
                 documents name it; or declare the service with a ServiceEntry)",
            );
        }
        msg
    }

    /// The DestinationRule for a host: an exact match, else the most
    /// specific wildcard (`MostSpecificHostMatch`), among the rules visible
    /// here whose workload selector, if any, selects this agent.
    pub(super) fn destination_rule(
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
}

/// The parts of a traffic policy this gateway applies.
#[derive(Default, Clone, Copy)]
pub(super) struct Policy<'a> {
    lb: Option<&'a LoadBalancer>,
    pool: Option<&'a ConnectionPool>,
}

/// `MergeSubsetTrafficPolicy` (pilot/pkg/networking/util/util.go): a
/// port-level policy replaces the destination-level one wholesale; the
/// subset's policy then overrides field by field, or wholesale if it too is
/// port-level.
pub(super) fn effective_policy<'a>(
    rule: Option<&'a TrafficPolicy>,
    subset: Option<&'a TrafficPolicy>,
    port: u32,
) -> Policy<'a> {
    pub(super) fn at_port(tp: &TrafficPolicy, port: u32) -> (Policy<'_>, bool) {
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
