//! Istio networking configuration → a validated TCP routing snapshot.
//!
//! The user applies Istio's own YAML (Gateway, VirtualService,
//! DestinationRule, ServiceEntry, WorkloadEntry) as they would with
//! `kubectl apply -n NAMESPACE -f FILE`; this module turns the applied set
//! into the listeners, routes and clusters the data path runs. It is pure:
//! no sockets, no BPF, no clock, no DNS.
//!
//! Lifecycle: [`parse`] reads a file's text into a [`Batch`] (the control
//! plane reads the files);
//! [`Store::apply`] / [`Store::delete`] return a new store together with its
//! [`Snapshot`], or an error and nothing changed (the caller keeps the old
//! store), so a bad file never takes a working gateway down.

mod error;
pub mod limits;
mod names;
mod parse;
mod resolve;
mod resources;
pub mod services;
mod snapshot;
mod store;
mod validate;
mod yaml;

#[cfg(test)]
mod tests;

pub use error::{ConfigError, Diagnostic, Kind, Location, Origin, ResourceId};
pub(crate) use parse::Spec;
pub use parse::{parse, Batch, Namespace, Resource};
pub use snapshot::{
    Address, Agent, Cluster, Condition, Endpoint, LbPolicy, Listener, ListenerStatus, Snapshot,
    Status, TcpRoute, WeightedCluster, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
};
pub use store::{Action, Applied, Change, Store};

const GROUP: &str = "networking.istio.io";
const VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];
/// kubectl's namespace when neither `-n` nor the document names one.
pub const DEFAULT_NAMESPACE: &str = "default";
/// The GatewayClass Istio's own gateways answer to.
pub const DEFAULT_GATEWAY_CLASS: &str = "istio";
/// What this gateway calls itself in a GatewayClass's `controllerName`
/// and in the route status it writes: a class naming it is this
/// gateway's, whatever its name.
pub const CONTROLLER_NAME: &str = "ebpf-gateway.dev/gateway-controller";
