//! `gateway forward`: one route, round robin over its targets.
use std::{
    io,
    net::{SocketAddr, ToSocketAddrs},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use anyhow::{bail, Context as _};
use tokio::net::{TcpListener, TcpStream};

use crate::{
    dataplane::{self, Dataplane},
    proxy::{dial::connect, signals::Asked},
    telemetry::Stats,
};

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
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::cli::parse_duration)]
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
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = crate::cli::parse_duration)]
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

pub async fn run(args: Args) -> anyhow::Result<()> {
    let addrs = resolve(&args.to)?;
    let targets = Arc::new(Targets::new(addrs, args.connect_timeout));
    if args.check_targets {
        let mut errors = Vec::new();
        for (i, t) in targets.addrs.iter().enumerate() {
            if let Err(e) = connect(*t, args.connect_timeout).await {
                errors.push((i, e));
            }
        }
        if errors.len() == targets.addrs.len() {
            let all: Vec<String> = errors
                .iter()
                .map(|(i, e)| format!("{}: {e}", targets.addrs[*i]))
                .collect();
            bail!("no target is reachable: {}", all.join("; "));
        }
        for (i, e) in errors {
            targets.failed(i, &e);
        }
    } else if !args.no_check_targets {
        // In the background: a target that does not answer must not hold
        // the listener back for its connect timeout.
        for i in 0..targets.addrs.len() {
            let targets = targets.clone();
            tokio::spawn(async move {
                if let Err(e) = connect(targets.addrs[i], targets.connect_timeout).await {
                    targets.failed(i, &e);
                }
            });
        }
    }
    let stats = Arc::new(Stats::default());
    let mut signals = crate::proxy::signals::Signals::install()?;
    let dp = Dataplane::start(&args.dataplane, stats.clone()).await?;
    let workers = crate::proxy::workers::Workers::start(args.dataplane.workers)
        .context("cannot start the worker threads")?;
    let listeners = workers
        .bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    if let Ok(limit) = crate::sys::raise_nofile_limit() {
        tracing::debug!("open files limit {limit}");
    }
    let local = listeners.local_addr();
    tracing::info!(
        "listening on {local}, forwarding to {}, dataplane {}, {} workers",
        targets
            .addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        format_args!("{:#}", dp.kind()),
        workers.len()
    );

    let shared = Arc::new(Shared {
        dp,
        stats: stats.clone(),
        targets,
        next: AtomicUsize::new(0),
        tasks: crate::proxy::tasks::Tasks::default(),
    });
    let accepting = workers.serve(listeners, |listener| accept_loop(listener, shared.clone()));
    while let Asked::Report = signals.next().await {
        crate::proxy::report::report(&stats, &shared.dp);
    }
    // Stop accepting: each worker's listening socket closes with its loop.
    for task in &accepting {
        task.abort();
    }
    for task in accepting {
        let _ = task.await;
    }
    shared.tasks.drain(args.drain_timeout).await;
    crate::proxy::report::report(&stats, &shared.dp);
    Ok(())
}

/// What every worker's accept loop shares.
struct Shared {
    dp: Dataplane,
    stats: Arc<Stats>,
    targets: Arc<Targets>,
    /// Round robin over `targets`, across all workers.
    next: AtomicUsize,
    tasks: crate::proxy::tasks::Tasks,
}

/// The targets, and which of them are known not to answer.
struct Targets {
    addrs: Vec<SocketAddr>,
    /// Did not answer the last connect; skipped until a probe gets through.
    down: Vec<AtomicBool>,
    connect_timeout: Duration,
}

/// How often a target that does not answer is tried again.
const REPROBE: Duration = Duration::from_secs(1);

impl Targets {
    fn new(addrs: Vec<SocketAddr>, connect_timeout: Duration) -> Self {
        let down = addrs.iter().map(|_| AtomicBool::new(false)).collect();
        Targets {
            addrs,
            down,
            connect_timeout,
        }
    }

    /// Target `i` did not answer: logged once (not once per client), then
    /// tried every [`REPROBE`] until it does.
    fn failed(self: &Arc<Self>, i: usize, e: &io::Error) {
        if self.down[i].swap(true, Relaxed) {
            return;
        }
        let t = self.addrs[i];
        tracing::warn!("target {t} does not answer ({e}): skipped until it does");
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REPROBE).await;
                if connect(t, me.connect_timeout).await.is_ok() {
                    me.down[i].store(false, Relaxed);
                    tracing::info!("target {t} answers again");
                    return;
                }
            }
        });
    }

    /// A backend connection for the client that came `n`th: round robin
    /// over the targets that answer, the next one on a failure; none, at
    /// once, while no target answers.
    async fn connect(self: &Arc<Self>, n: usize) -> Option<TcpStream> {
        let len = self.addrs.len();
        for k in 0..len {
            let i = (n + k) % len;
            if self.down[i].load(Relaxed) {
                continue;
            }
            match connect(self.addrs[i], self.connect_timeout).await {
                Ok(b) => return Some(b),
                Err(e) => self.failed(i, &e),
            }
        }
        None
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let what = listener
        .local_addr()
        .map_or_else(|_| "the listening socket".to_owned(), |a| a.to_string());
    loop {
        let (client, peer) = crate::proxy::workers::accept(&listener, &what).await;
        Stats::inc(&shared.stats.connections_accepted);
        let s = shared.clone();
        shared.tasks.spawn(async move {
            let n = s.next.fetch_add(1, Relaxed);
            match s.targets.connect(n).await {
                Some(b) => {
                    s.dp.relay(client, b).await;
                }
                None => {
                    tracing::debug!("connection from {peer}: no target answers");
                    Stats::inc(&s.stats.backend_connect_failed);
                }
            }
        });
    }
}
