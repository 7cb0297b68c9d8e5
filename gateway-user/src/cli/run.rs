//! `gateway run`: the long-running agent. It serves what the applied Istio
//! resources say (a listener per Gateway port, a weighted route per
//! listener), takes live changes over a root-only Unix socket (`gateway
//! apply` / `gateway delete`), watches its `--config` files, and keeps what
//! was applied across restarts under `--state-dir`. With `--source
//! kubernetes` it also serves what the cluster says (Istio resources,
//! Services, EndpointSlices), ready once that has been listed.
//!
//! Every change goes through [`Controller`], one at a time: the new
//! store is resolved, new ports are bound and the state is saved before
//! anything is switched, so a change either takes effect whole or not at
//! all. Connections capture their route at accept time; a change affects
//! new connections only.
use std::{net::IpAddr, path::PathBuf, sync::Arc, time::Duration};

use crate::{
    control::{admin, files, kube, state::StateDir, BadConfig, Controller},
    istio,
    proxy::{http, signals::Signals, ObserveArgs, Runtime},
};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Istio YAML to serve: files (any number of `---` separated documents)
    /// or directories (their *.yaml, *.yml and *.json files). Edits are
    /// picked up while the agent runs.
    #[arg(long, value_name = "PATH", num_args = 1..)]
    pub config: Vec<PathBuf>,
    /// Where resources come from besides --config and `gateway apply`:
    /// `kubernetes` watches the cluster's (in-cluster credentials, or
    /// --kubeconfig).
    #[arg(long, value_enum, default_value = "files")]
    pub source: ConfigSource,
    /// The kubeconfig for --source kubernetes (default: the pod's service
    /// account, else $KUBECONFIG or ~/.kube/config).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
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
    /// The GatewayClass whose Gateway API Gateways this gateway serves.
    #[arg(long, value_name = "NAME", default_value = istio::DEFAULT_GATEWAY_CLASS)]
    pub gateway_class: String,
    /// The Unix socket `gateway apply` and `gateway delete` talk to (created
    /// root-only).
    #[arg(long, value_name = "PATH", default_value = admin::DEFAULT_ADMIN)]
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
    #[command(flatten)]
    pub observe: ObserveArgs,
    /// How often --config files are checked for changes.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = super::parse_duration)]
    pub watch_interval: Duration,
    /// On SIGINT/SIGTERM, how long to let open connections finish.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = super::parse_duration)]
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConfigSource {
    /// --config files and `gateway apply` only.
    Files,
    /// Also the Kubernetes API: Istio's kinds, Services, EndpointSlices.
    Kubernetes,
}

/// The instance a `gateway run` is unless told otherwise.
pub const DEFAULT_INSTANCE: &str = "default";

pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("`{s}` is not a label (KEY=VALUE)")),
    }
}

pub fn agent_identity(labels: &[(String, String)], gateway_class: &str) -> istio::Agent {
    istio::Agent {
        labels: labels.iter().cloned().collect(),
        gateway_class: gateway_class.to_string(),
        ..istio::Agent::default()
    }
}

pub async fn run(mut args: RunArgs) -> anyhow::Result<()> {
    args.dataplane
        .instance
        .get_or_insert_with(|| DEFAULT_INSTANCE.to_string());
    let mut agent = agent_identity(&args.labels, &args.gateway_class);
    let cluster = args.source == ConfigSource::Kubernetes;
    agent.live_endpoints = cluster;
    // Before anything binds: a bad kubeconfig is a start-up error.
    let client = if cluster {
        Some(kube::client(args.kubeconfig.as_deref()).await?)
    } else {
        None
    };
    let state = StateDir::open(&args.state_dir)?;
    let overlay = state.load().map_err(BadConfig)?;
    let seen = files::fingerprint(&args.config);
    let files = if args.config.is_empty() {
        Vec::new()
    } else {
        files::load_paths(&args.config, istio::Namespace::Default(&args.namespace))
            .map_err(BadConfig::from)?
            .resources
    };
    let plan = Controller::plan_start(agent, files, overlay).map_err(BadConfig)?;

    let rt = Runtime::start(&args.dataplane, &args.observe).await?;
    let metrics = match args.observe.metrics {
        Some(http::Listen::Off) => None,
        Some(http::Listen::On(addr)) => Some(http::bind(addr).await?),
        None => Some(http::bind(http::DEFAULT_METRICS.parse()?).await?),
    };
    let metrics_addr = metrics.as_ref().and_then(|l| l.local_addr().ok());
    // Up from the start: `/healthz` answers while the config loads.
    let metrics_task = metrics.map(|l| tokio::spawn(http::serve(l, rt.clone())));
    // Before any port opens: a second agent must fail without serving.
    let admin = admin::Server::bind(&args.admin)?;
    let controller = Controller::start(plan, state, args.listen_address, rt.clone())
        .await
        .map_err(BadConfig)?;
    let controller = Arc::new(tokio::sync::Mutex::new(controller));
    // Handlers in place before anyone can be told the agent is ready: a
    // signal that comes first would otherwise kill it.
    let mut signals = Signals::install()?;
    let kube_task = client.map(|client| {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (
            kube::spawn(client, controller.clone(), tx, &args.gateway_class),
            rx,
        )
    });
    let mut stopped = false;
    let kube_task = match kube_task {
        Some((task, synced)) => {
            tracing::info!("waiting for the Kubernetes API's resources before serving them");
            tokio::select! {
                _ = synced => {}
                () = rt.serve_signals(&mut signals) => stopped = true,
            }
            Some(task)
        }
        None => None,
    };
    rt.set_ready();
    {
        let c = controller.lock().await;
        tracing::info!(
            "ready: config generation {}, {} resources, ports [{}], dataplane {}, {} workers, \
             admin socket {}, metrics {}{}",
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
            args.admin.display(),
            metrics_addr.map_or("off".to_string(), |a| format!("on http://{a}/metrics")),
            rt.dp
                .kernel()
                .and_then(|k| k.pin_dir())
                .map(|d| format!(", maps pinned at {}", d.display()))
                .unwrap_or_default()
        );
    }
    let admin_task = tokio::spawn(admin.serve(Some(controller.clone()), rt.clone()));
    let watch_task = (!args.config.is_empty()).then(|| {
        tokio::spawn(files::run(
            args.config.clone(),
            args.namespace.clone(),
            args.watch_interval,
            seen,
            controller.clone(),
        ))
    });

    if !stopped {
        rt.serve_signals(&mut signals).await;
    }
    tracing::info!("stopping: closing ports, letting open connections finish");
    if let Some(k) = kube_task {
        k.stop().await;
    }
    // Awaited so the admin socket is gone before the last report.
    admin_task.abort();
    let _ = admin_task.await;
    if let Some(w) = watch_task {
        w.abort();
        let _ = w.await;
    }
    controller.lock().await.close_ports().await;
    rt.finish(args.drain_timeout).await;
    if let Some(task) = metrics_task {
        task.abort();
        let _ = task.await;
    }
    Ok(())
}
