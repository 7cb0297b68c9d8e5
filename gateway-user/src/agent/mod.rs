//! `gateway run`: the long-running agent. It serves what the applied Istio
//! resources say (a listener per Gateway port, a weighted route per
//! listener), takes live changes over a root-only Unix socket (`gateway
//! apply` / `gateway delete`), watches its `--config` files, and keeps what
//! was applied across restarts under `--state-dir`.
//!
//! Every change goes through [`config::Controller`], one at a time: the new
//! store is resolved, new ports are bound and the state is saved before
//! anything is switched, so a change either takes effect whole or not at
//! all. Connections capture their route at accept time; a change affects
//! new connections only.
pub mod admin;
pub mod cli;
mod config;
mod conn;
mod ports;
mod state;
mod table;
mod watch;

use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    path::PathBuf,
    sync::{atomic::AtomicU64, Arc, Mutex, RwLock},
    time::Duration,
};

use anyhow::Context as _;

use crate::{dataplane::Dataplane, istio, proxy::tasks::Tasks, telemetry::Stats};

/// Where `gateway run` listens for `gateway apply` and `gateway delete`.
pub const DEFAULT_ADMIN: &str = "/run/gateway/admin.sock";
/// Exit status for configuration refused at start-up (BSD's `EX_USAGE`).
pub const EXIT_BAD_CONFIG: u8 = 64;

/// The configuration given at start-up was refused; the agent exits with
/// [`EXIT_BAD_CONFIG`].
#[derive(Debug)]
pub struct BadConfig(pub String);

impl fmt::Display for BadConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadConfig {}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Istio YAML to serve: files (any number of `---` separated documents)
    /// or directories (their *.yaml, *.yml and *.json files). Edits are
    /// picked up while the agent runs.
    #[arg(long, value_name = "PATH", num_args = 1..)]
    pub config: Vec<PathBuf>,
    /// Namespace of the --config documents that name none.
    #[arg(short = 'n', long, value_name = "NAMESPACE", default_value = istio::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// This gateway's labels, matched against each Gateway's selector.
    #[arg(
        long,
        value_name = "KEY=VALUE[,...]",
        value_delimiter = ',',
        default_value = "istio=ingressgateway",
        value_parser = parse_label
    )]
    pub labels: Vec<(String, String)>,
    /// The Unix socket `gateway apply` and `gateway delete` talk to (created
    /// root-only).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_ADMIN)]
    pub admin: PathBuf,
    /// Where resources applied with `gateway apply` are kept, so they
    /// survive a restart.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/gateway")]
    pub state_dir: PathBuf,
    /// The address Gateway ports are opened on.
    #[arg(long, value_name = "IP", default_value = "0.0.0.0")]
    pub listen_address: IpAddr,
    #[command(flatten)]
    pub dataplane: crate::dataplane::DataplaneArgs,
    /// How often --config files are checked for changes.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = crate::cli::parse_duration)]
    pub watch_interval: Duration,
    /// On SIGINT/SIGTERM, how long to let open connections finish.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = crate::cli::parse_duration)]
    pub drain_timeout: Duration,
}

pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("`{s}` is not a label (KEY=VALUE)")),
    }
}

pub fn agent_identity(labels: &[(String, String)]) -> istio::Agent {
    istio::Agent {
        labels: labels.iter().cloned().collect(),
        ..istio::Agent::default()
    }
}

/// What the agent itself counts, beside the dataplane's [`Stats`].
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections that went to each cluster, by cluster name; kept when a
    /// cluster goes away, so totals never drop.
    clusters: Mutex<BTreeMap<String, Arc<table::ClusterCounters>>>,
    /// Connections closed because no endpoint of their cluster answered.
    pub no_healthy_endpoint: AtomicU64,
    /// Single dials that failed (the connection then tried the next endpoint).
    pub endpoint_connect_failed: AtomicU64,
    /// Connections closed by the cluster's idle timeout.
    pub idle_timeouts: AtomicU64,
    /// Connections accepted on a port whose route was just removed.
    pub connections_unrouted: AtomicU64,
}

impl Counters {
    fn cluster(&self, name: &str) -> Arc<table::ClusterCounters> {
        let mut map = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(name.to_string()).or_default().clone()
    }

    fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut m = serde_json::Map::new();
        let clusters: serde_json::Map<String, serde_json::Value> = self
            .clusters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, c)| (name.clone(), c.connections.load(Relaxed).into()))
            .collect();
        m.insert("clusters".into(), clusters.into());
        for (name, v) in [
            ("no_healthy_endpoint", &self.no_healthy_endpoint),
            ("endpoint_connect_failed", &self.endpoint_connect_failed),
            ("idle_timeouts", &self.idle_timeouts),
            ("connections_unrouted", &self.connections_unrouted),
        ] {
            m.insert(name.into(), v.load(Relaxed).into());
        }
        m
    }
}

/// What the accept loops and connection tasks share.
pub struct Runtime {
    pub dp: Dataplane,
    pub stats: Arc<Stats>,
    pub counters: Counters,
    pub tasks: Tasks,
    pub workers: crate::proxy::workers::Workers,
    table: RwLock<Arc<table::Table>>,
}

impl Runtime {
    fn table(&self) -> Arc<table::Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_table(&self, t: Arc<table::Table>) {
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = t;
    }

    /// Counters as one JSON line on stdout: `gateway forward`'s, plus the
    /// config generation, open ports and per-cluster connections.
    fn report(&self) {
        let mut json = crate::proxy::report::counters(&self.stats, &self.dp);
        json.extend(self.counters.to_json());
        let table = self.table();
        json.insert("config_generation".into(), table.generation.into());
        json.insert("ports".into(), table.ports().into());
        println!("{}", serde_json::Value::Object(json));
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let agent = agent_identity(&args.labels);
    let state = state::StateDir::open(&args.state_dir)?;
    let overlay = state.load().map_err(|e| BadConfig(e.to_string()))?;
    let seen = watch::fingerprint(&args.config);
    let files = if args.config.is_empty() {
        Vec::new()
    } else {
        istio::load_paths(&args.config, istio::Namespace::Default(&args.namespace))
            .map_err(|e| BadConfig(e.to_string()))?
            .resources
    };
    let plan = config::Controller::plan_start(agent, files, overlay).map_err(BadConfig)?;

    let stats = Arc::new(Stats::default());
    let dp = Dataplane::start(&args.dataplane, stats.clone()).await?;
    if let Ok(limit) = crate::sys::raise_nofile_limit() {
        tracing::debug!("open files limit {limit}");
    }
    let workers = crate::proxy::workers::Workers::start(args.dataplane.workers)
        .context("cannot start the worker threads")?;
    let rt = Arc::new(Runtime {
        dp,
        workers,
        stats,
        counters: Counters::default(),
        tasks: Tasks::default(),
        table: RwLock::new(Arc::default()),
    });
    // Before any port opens: a second agent must fail without serving.
    let admin = admin::Server::bind(&args.admin)?;
    let controller = config::Controller::start(plan, state, args.listen_address, rt.clone())
        .await
        .map_err(BadConfig)?;
    let controller = Arc::new(tokio::sync::Mutex::new(controller));
    // Handlers in place before anyone can be told the agent is ready: a
    // signal that comes first would otherwise kill it.
    let mut signals = crate::proxy::signals::Signals::install()?;
    {
        let c = controller.lock().await;
        tracing::info!(
            "ready: config generation {}, {} resources, ports [{}], dataplane {}, {} workers, \
             admin socket {}",
            c.generation(),
            c.resource_count(),
            rt.table()
                .ports()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            format_args!("{:#}", rt.dp.kind()),
            rt.workers.len(),
            args.admin.display()
        );
    }
    let admin_task = tokio::spawn(admin.serve(controller.clone()));
    let watch_task = (!args.config.is_empty()).then(|| {
        tokio::spawn(watch::run(
            args.config.clone(),
            args.namespace.clone(),
            args.watch_interval,
            seen,
            controller.clone(),
        ))
    });

    while let crate::proxy::signals::Asked::Report = signals.next().await {
        rt.report();
    }
    tracing::info!("stopping: closing ports, letting open connections finish");
    // Awaited so the admin socket is gone before the last report.
    admin_task.abort();
    let _ = admin_task.await;
    if let Some(w) = watch_task {
        w.abort();
        let _ = w.await;
    }
    controller.lock().await.close_ports().await;
    rt.tasks.drain(args.drain_timeout).await;
    rt.report();
    Ok(())
}
