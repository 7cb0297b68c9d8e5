//! Checks each resource on its own, as Istio's admission webhook does
//! (istio/istio pkg/config/validation/validation.go and
//! pkg/config/validation/agent/validation.go), so anything Istio would
//! refuse is refused here with the same reasoning. Settings Istio accepts
//! but this gateway does not implement become warnings.

mod checks;
mod destination_rule;
mod gateway;
mod gateway_api;
mod kubernetes;
mod service_entry;
mod virtual_service;
mod workload_entry;

use super::{error::Report, Resource, Spec};

pub(crate) fn resource(r: &Resource, report: &mut Report) {
    let o = &r.origin;
    match &r.spec {
        Spec::Gateway(s) => gateway::gateway(o, &r.id.name, s, report),
        Spec::VirtualService(s) => virtual_service::virtual_service(o, s, report),
        Spec::DestinationRule(s) => destination_rule::destination_rule(o, s, report),
        Spec::ServiceEntry(s) => service_entry::service_entry(o, s, report),
        Spec::WorkloadEntry(s) => workload_entry::workload_entry(o, "spec", s, None, true, report),
        Spec::KubeGateway(s) => gateway_api::gateway(o, s, report),
        Spec::TcpRoute(s) => gateway_api::tcp_route(o, &r.api_version, s, report),
        Spec::ReferenceGrant(s) => gateway_api::reference_grant(o, s, report),
        Spec::GatewayClass(s) => kubernetes::gateway_class(o, s, report),
        Spec::Service(s) => kubernetes::service(o, s, report),
        Spec::EndpointSlice(s) => kubernetes::endpoint_slice(o, s, report),
    }
}
