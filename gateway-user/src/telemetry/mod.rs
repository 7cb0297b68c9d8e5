//! What the gateway counts: the dataplane's counters, the routing
//! counters, the verdict's kernel totals, and the registry of live
//! connections behind the held-bytes gauge and the process figures; read
//! together into one [`Snapshot`] that each exporter renders.
pub mod access;
pub mod conns;
pub mod counters;
pub mod kernel;
pub mod metrics;
pub mod snapshot;
pub mod stats;

pub use counters::Counters;
pub use kernel::KernelTotals;
pub use snapshot::Snapshot;
pub use stats::Stats;
