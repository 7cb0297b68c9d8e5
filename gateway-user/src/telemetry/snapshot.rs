//! Every figure the gateway reports, read at one moment into one typed
//! value. Exporters render it: the JSON line on `SIGUSR1` and at exit
//! ([`Snapshot::to_json`]) today.
use std::collections::BTreeMap;

use serde::Serialize;

use super::{
    conns::{Gauge, Process},
    counters::Routing,
    KernelTotals,
};

#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// Every [`super::Stats`] counter, by its name.
    #[serde(flatten)]
    pub stats: BTreeMap<&'static str, u64>,
    #[serde(flatten)]
    pub routing: Routing,
    /// Connections each cluster took, by Istio's cluster name.
    pub clusters: BTreeMap<String, u64>,
    #[serde(flatten)]
    pub gauge: Gauge,
    #[serde(flatten)]
    pub process: Process,
    /// The dataplane in use (`ebpf`, `splice`, `userspace`, `auto`).
    pub dataplane: String,
    /// The verdict's totals, with the kernel dataplane.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelTotals>,
    /// Entries in the socket, control and flow maps together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub map_entries: Option<usize>,
    pub config_generation: u64,
    /// The gateway ports open now.
    pub ports: Vec<u16>,
}

impl Snapshot {
    /// One JSON object, on one line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_line_is_flat_where_the_report_always_was() {
        let s = Snapshot {
            stats: BTreeMap::from([("connections_accepted", 3)]),
            clusters: BTreeMap::from([(
                "outbound|9000|v1|tcp-echo.default.svc.cluster.local".into(),
                2,
            )]),
            dataplane: "ebpf".into(),
            ports: vec![31400],
            ..Snapshot::default()
        };
        let v: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap_or_default();
        assert_eq!(v["connections_accepted"], 3);
        assert_eq!(v["no_healthy_endpoint"], 0);
        assert_eq!(v["connections_active"], 0);
        assert_eq!(v["rss_bytes"], 0);
        assert_eq!(
            v["clusters"]["outbound|9000|v1|tcp-echo.default.svc.cluster.local"],
            2
        );
        assert_eq!(v["ports"][0], 31400);
        assert!(v.get("kernel").is_none());
    }
}
