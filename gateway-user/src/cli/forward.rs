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
    control::admin,
    dataplane,
    istio::{Address, Cluster, Endpoint, LbPolicy},
    proxy::{
        dial::connect, health::Health, http, ports::Ports, signals::Signals, table::Table,
        ObserveArgs, Runtime,
    },
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
    #[command(flatten)]
    pub observe: ObserveArgs,
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
    /// An admin socket for `gateway inspect connections|routes --admin PATH`
    /// (none by default: several forwards may run side by side).
    #[arg(long, value_name = "PATH")]
    pub admin: Option<std::path::PathBuf>,
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

pub async fn run(mut args: Args) -> anyhow::Result<()> {
    let instance = match args.listen.port() {
        0 => format!("forward-{}", std::process::id()),
        port => format!("forward-{port}"),
    };
    args.dataplane.instance.get_or_insert(instance);
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
    let rt = Runtime::start(&args.dataplane, &args.observe).await?;
    let metrics = match args.observe.metrics {
        Some(http::Listen::On(addr)) => Some(http::bind(addr).await?),
        _ => None,
    };
    let metrics_addr = metrics.as_ref().and_then(|l| l.local_addr().ok());
    let metrics_task = metrics.map(|l| tokio::spawn(http::serve(l, rt.clone())));
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
    let admin_task = match &args.admin {
        Some(path) => {
            let server = admin::Server::bind(path)?;
            Some(tokio::spawn(server.serve(None, rt.clone())))
        }
        None => None,
    };
    let mut ports = Ports::default();
    ports.serve(local.port(), listeners, rt.clone());
    rt.set_ready();
    tracing::info!(
        "listening on {local}, forwarding to {}, dataplane {}, {} workers{}{}",
        addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        format_args!("{:#}", rt.dp.kind()),
        rt.workers.len(),
        metrics_addr
            .map(|a| format!(", metrics on http://{a}/metrics"))
            .unwrap_or_default(),
        rt.dp
            .kernel()
            .and_then(|k| k.pin_dir())
            .map(|d| format!(", maps pinned at {}", d.display()))
            .unwrap_or_default()
    );
    rt.serve_signals(&mut signals).await;
    ports.close_all().await;
    rt.finish(args.drain_timeout).await;
    for task in [admin_task, metrics_task].into_iter().flatten() {
        task.abort();
        let _ = task.await;
    }
    Ok(())
}
