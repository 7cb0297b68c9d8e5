//! The endpoints a cluster reaches: a ServiceEntry's own, or the
//! WorkloadEntries it selects.
use std::{collections::BTreeMap, net::IpAddr};

use super::{show_labels, subset_of, World};
use crate::istio::{
    error::{Origin, Report},
    resources::{Resolution, ServiceEntrySpec, ServicePort, Subset, WorkloadEntrySpec},
    Address, Endpoint, Resource,
};

impl<'a> World<'a> {
    /// `convertServiceEntryToInstances` / `convertWorkloadInstanceToServiceInstance`
    /// (pilot/pkg/serviceregistry/serviceentry/conversion.go).
    #[expect(clippy::too_many_arguments, reason = "one lookup, many inputs")]
    pub(super) fn endpoints(
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
        let message = format!(
            "no endpoints for host {host} port {}{subset_note}: {why}",
            port.number
        );
        if self.agent.live_endpoints || se.from_service {
            report.warn(
                o,
                format!("{path}.destination"),
                format!("{message}; its connections are refused until one is ready"),
            );
            return Some(Vec::new());
        }
        report.error(o, format!("{path}.destination"), message);
        None
    }
}
