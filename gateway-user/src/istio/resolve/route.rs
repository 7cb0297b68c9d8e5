//! Which VirtualService rule each served port runs.
use std::{collections::BTreeMap, sync::Arc};

use super::{resolve_host, visible, Served, World};
use crate::istio::{
    error::Report,
    names::{hosts_match, resolve_gateway_name, MESH},
    resources::{Server, TcpRoute as TcpRouteSpec, VirtualServiceSpec},
    Cluster, Resource, TcpRoute, WeightedCluster,
};

impl<'a> World<'a> {
    /// `buildGatewayNetworkFiltersFromTCPRoutes`: the first VirtualService
    /// (by creation) bound to the gateway whose hosts meet the server's,
    /// and in it the first TCP rule matching the port and the gateway.
    pub(super) fn route_for(
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
            kind: crate::istio::Kind::VirtualService,
            virtual_service: vs.id.qualified_name(),
            rule,
            destinations,
        })
    }

    /// `pickMatchingGatewayHosts` (gateway.go): some VirtualService host
    /// meets some server host, where `ns/host` limits the namespace.
    pub(super) fn hosts_meet(
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
}

/// At a gateway, a TCP rule matches on the server port and the gateway
/// name only (`l4MultiMatch` / `l4SingleMatch` in gateway.go).
pub(super) fn tcp_rule_matches(rule: &TcpRouteSpec, port: u16, gateway: &str, vs_ns: &str) -> bool {
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
