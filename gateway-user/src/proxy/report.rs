//! The counters report: the serving stack's, the dataplane's and the
//! process's, read into one [`Snapshot`] and printed as one JSON line on
//! stdout (`SIGUSR1`, exit).
use super::Runtime;
use crate::telemetry::{conns::Process, Snapshot};

/// Prints the counters as one JSON line on stdout.
pub fn report(rt: &Runtime) {
    println!("{}", snapshot(rt).to_json());
}

/// Everything the serving stack, its dataplane and the process count, now.
pub fn snapshot(rt: &Runtime) -> Snapshot {
    let (routing, clusters) = rt.counters.read();
    let table = rt.table();
    let kernel = rt.dp.kernel();
    Snapshot {
        stats: rt.stats.read(),
        routing,
        clusters,
        gauge: rt.dp.conns().gauge(),
        process: Process::read(),
        dataplane: rt.dp.kind().to_string(),
        kernel: kernel.map(|k| k.totals()),
        map_entries: kernel.map(|k| {
            let (socks, peers, flows) = k.occupancy();
            socks + peers + flows
        }),
        config_generation: table.generation,
        ports: table.ports(),
    }
}
