//! `gateway forward`: one listening address, round robin over its targets,
//! served by the same stack as `gateway run` with a routing table fixed at
//! start: one port, one cluster.
use std::{
    net::{SocketAddr, ToSocketAddrs},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context as _};

use crate::{
    dataplane,
    istio::{Address, Cluster, Endpoint, LbPolicy},
    proxy::{dial::connect, health::Health, ports::Ports, signals::Signals, table::Table, Runtime},
};

/// The cluster's name in the counters.
const CLUSTER: &str = "forward";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to accept connections on (port 0 picks a free one).
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Backends as HOST:PORT, comma separated. Connections go to them round
    /// robin; a connection whose backend refuses tries the next one.
    #[arg(
        long,
        value_name = "ADDR[,ADDR...]",
        value_delimiter = ',',
        required = true
    )]
    pub to: Vec<String>,
    #[command(flatten)]
    pub dataplane: dataplane::DataplaneArgs,
    /// How long to wait for a backend to accept (Istio's default: 10s).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = super::parse_duration)]
    pub connect_timeout: Duration,
    /// Refuse to start unless a target accepts a connection. By default the
    /// gateway starts whatever its targets do, like HAProxy, nginx and
    /// Envoy: each target is tried once in the background, one that does
    /// not answer is logged once and skipped until it answers again, and
    /// while none answers clients are closed at once (counted as
    /// `backend_connect_failed`).
    #[arg(long)]
    pub check_targets: bool,
    /// Do not try the targets at start-up: the first client finds out.
    #[arg(long, conflicts_with = "check_targets")]
    pub no_check_targets: bool,
    /// On SIGINT/SIGTERM, how long to let open connections finish.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = super::parse_duration)]
    pub drain_timeout: Duration,
}

fn resolve(targets: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    targets
        .iter()
        .map(|t| {
            t.to_socket_addrs()
                .with_context(|| format!("cannot resolve target `{t}`"))?
                .next()
                .with_context(|| format!("target `{t}` resolves to no address"))
        })
        .collect()
}

/// The one cluster: the targets in the order given, equal weights.
fn cluster(addrs: &[SocketAddr], connect_timeout: Duration) -> Arc<Cluster> {
    Arc::new(Cluster {
        name: CLUSTER.into(),
        endpoints: addrs
            .iter()
            .map(|a| Endpoint {
                address: Address::Ip(a.ip()),
                port: a.port(),
                weight: 1,
                labels: Default::default(),
            })
            .collect(),
        lb: LbPolicy::RoundRobin,
        connect_timeout,
        idle_timeout: None,
    })
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let addrs = resolve(&args.to)?;
    let health = Health::new(addrs.clone(), args.connect_timeout);
    if args.check_targets {
        let mut errors = Vec::new();
        for (i, t) in addrs.iter().enumerate() {
            if let Err(e) = connect(*t, args.connect_timeout).await {
                errors.push((i, e));
            }
        }
        if errors.len() == addrs.len() {
            let all: Vec<String> = errors
                .iter()
                .map(|(i, e)| format!("{}: {e}", addrs[*i]))
                .collect();
            bail!("no target is reachable: {}", all.join("; "));
        }
        for (i, e) in errors {
            health.failed(i, &e);
        }
    } else if !args.no_check_targets {
        health.probe_all();
    }
    let mut signals = Signals::install()?;
    let rt = Runtime::start(&args.dataplane).await?;
    let listeners = rt
        .workers
        .bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listeners.local_addr();
    rt.set_table(Arc::new(Table::fixed(
        local.port(),
        &format!("gateway forward {local}"),
        cluster(&addrs, args.connect_timeout),
        Some(health),
        &rt.counters,
    )));
    let mut ports = Ports::default();
    ports.serve(local.port(), listeners, rt.clone());
    tracing::info!(
        "listening on {local}, forwarding to {}, dataplane {}, {} workers",
        addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        format_args!("{:#}", rt.dp.kind()),
        rt.workers.len()
    );
    rt.serve_signals(&mut signals).await;
    ports.close_all().await;
    rt.finish(args.drain_timeout).await;
    Ok(())
}
