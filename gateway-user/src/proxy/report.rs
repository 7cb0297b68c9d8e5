//! The counters report: the serving stack's, the dataplane's and the
//! process's, as one JSON object.
use crate::{dataplane::Dataplane, telemetry::Stats};

/// Prints the counters as one JSON line on stdout.
pub fn report(stats: &Stats, dp: &Dataplane) {
    println!("{}", serde_json::Value::Object(counters(stats, dp)));
}

/// The counters [`report`] prints, for callers that add their own.
pub fn counters(stats: &Stats, dp: &Dataplane) -> serde_json::Map<String, serde_json::Value> {
    let mut json = stats.to_json();
    let put = |json: &mut serde_json::Map<String, serde_json::Value>, v: serde_json::Value| {
        if let serde_json::Value::Object(m) = v {
            json.extend(m);
        }
    };
    put(
        &mut json,
        serde_json::to_value(dp.conns().gauge()).unwrap_or_default(),
    );
    put(
        &mut json,
        serde_json::to_value(crate::telemetry::conns::Process::read()).unwrap_or_default(),
    );
    json.insert("dataplane".into(), dp.kind().to_string().into());
    if let Some(k) = dp.kernel() {
        json.insert(
            "kernel".into(),
            serde_json::to_value(k.totals()).unwrap_or_default(),
        );
        let (socks, peers, flows) = k.occupancy();
        json.insert("map_entries".into(), (socks + peers + flows).into());
    }
    json
}
