//! Which Gateway servers this agent serves, and the references that will
//! never reach it.
use std::collections::{BTreeMap, BTreeSet};

use super::{show_labels, subset_of, visible, Served, World};
use crate::istio::{
    error::{Origin, Report},
    names::{resolve_gateway_name, MESH},
};

impl<'a> World<'a> {
    /// The TCP servers of the Gateways that select this agent, refusing
    /// reserved ports and ports two servers want (Istio's `mergeGateways`
    /// drops the later server with only a log line; here it is an error).
    pub(super) fn served_servers(&self, report: &mut Report) -> Vec<Served<'a>> {
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
    pub(super) fn check_references(&self, report: &mut Report) {
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
}
