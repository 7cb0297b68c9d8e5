//! What the gateway counts: its counters, and the registry of live
//! connections behind the held-bytes gauge and the process figures.
pub mod conns;
pub mod stats;

pub use stats::Stats;
