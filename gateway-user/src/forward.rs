//! `gateway forward`: one route, round robin over its targets.
use std::{
    io,
    net::{SocketAddr, ToSocketAddrs},
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use anyhow::{bail, Context as _};
use tokio::{
    io::Interest,
    net::{TcpListener, TcpStream},
};

use crate::{
    dataplane::{self, Dataplane},
    stats::Stats,
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
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::parse_duration)]
    pub connect_timeout: Duration,
    /// Start even if no target accepts a connection at start-up.
    #[arg(long)]
    pub no_check_targets: bool,
    /// On SIGINT/SIGTERM, how long to let open connections finish.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = crate::parse_duration)]
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

/// Connects to a backend within `timeout`.
pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    match tokio::time::timeout(timeout, connecting(addr)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

/// Connects to a backend, with Nagle's algorithm off like the client's side
/// (see [`crate::workers::Workers::bind`]): a relay must not hold back a
/// small write while an earlier one is unacknowledged. With it on, a client
/// that sends a request in two writes waited for the backend's delayed ACK:
/// 40 ms per request on every dataplane (the kernel path's psock worker
/// sends through the same TCP code).
///
/// The outcome is read from the readiness alone: a socket whose connect
/// failed is write-closed (`EPOLLHUP`, or `EPOLLERR` with `EPOLLOUT`), one
/// that connected is only writable; the error itself is asked for only on
/// failure. (tokio's own connect asks for it every time: one `getsockopt`
/// per connection.)
pub(crate) async fn connecting(addr: SocketAddr) -> io::Result<TcpStream> {
    use std::os::fd::{FromRawFd as _, IntoRawFd as _};
    // mio's connect starts it (non-blocking, close-on-exec) and returns.
    let started = mio::net::TcpStream::connect(addr)?;
    started.set_nodelay(true)?;
    // SAFETY: the descriptor moves from mio's stream, which gives it up, to
    // std's, which owns it from here.
    let started = unsafe { std::net::TcpStream::from_raw_fd(started.into_raw_fd()) };
    let stream = TcpStream::from_std(started)?;
    let ready = stream.ready(Interest::WRITABLE | Interest::ERROR).await?;
    if ready.is_write_closed() || ready.is_error() {
        return Err(crate::sys::take_error(&stream)?.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection closed while connecting",
            )
        }));
    }
    Ok(stream)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let targets = resolve(&args.to)?;
    if !args.no_check_targets {
        let mut errors = Vec::new();
        for t in &targets {
            match connect(*t, args.connect_timeout).await {
                Ok(_) => {}
                Err(e) => errors.push(format!("{t}: {e}")),
            }
        }
        if errors.len() == targets.len() {
            bail!("no target is reachable: {}", errors.join("; "));
        }
        for e in errors {
            tracing::warn!("target unreachable at start: {e}");
        }
    }
    let stats = Arc::new(Stats::default());
    // Before anything says the gateway is up: SIGUSR1's default action is
    // to terminate the process.
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        .context("cannot handle SIGUSR1")?;
    let shutdown = crate::shutdown_signal();
    tokio::pin!(shutdown);
    let dp = Dataplane::start(&args.dataplane, stats.clone()).await?;
    let workers = crate::workers::Workers::start(args.dataplane.workers)
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
        connect_timeout: args.connect_timeout,
        tasks: crate::tasks::Tasks::default(),
    });
    let accepting = workers.serve(listeners, |listener| accept_loop(listener, shared.clone()));
    loop {
        tokio::select! {
            _ = usr1.recv() => report(&stats, &shared.dp),
            () = &mut shutdown => break,
        }
    }
    // Stop accepting: each worker's listening socket closes with its loop.
    for task in &accepting {
        task.abort();
    }
    for task in accepting {
        let _ = task.await;
    }
    shared.tasks.drain(args.drain_timeout).await;
    report(&stats, &shared.dp);
    Ok(())
}

/// What every worker's accept loop shares.
struct Shared {
    dp: Dataplane,
    stats: Arc<Stats>,
    targets: Vec<SocketAddr>,
    /// Round robin over `targets`, across all workers.
    next: AtomicUsize,
    connect_timeout: Duration,
    tasks: crate::tasks::Tasks,
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let what = listener
        .local_addr()
        .map_or_else(|_| "the listening socket".to_owned(), |a| a.to_string());
    loop {
        let (client, peer) = crate::workers::accept(&listener, &what).await;
        Stats::inc(&shared.stats.connections_accepted);
        let s = shared.clone();
        shared.tasks.spawn(async move {
            let first = s.next.fetch_add(1, Relaxed);
            let mut backend = None;
            for i in 0..s.targets.len() {
                let t = s.targets[(first + i) % s.targets.len()];
                match connect(t, s.connect_timeout).await {
                    Ok(b) => {
                        backend = Some(b);
                        break;
                    }
                    Err(e) => tracing::warn!("connection from {peer}: backend {t}: {e}"),
                }
            }
            match backend {
                Some(b) => {
                    s.dp.relay(client, b).await;
                }
                None => Stats::inc(&s.stats.backend_connect_failed),
            }
        });
    }
}

/// Prints the counters as one JSON line on stdout.
pub fn report(stats: &Stats, dp: &Dataplane) {
    println!("{}", serde_json::Value::Object(counters(stats, dp)));
}

/// The counters [`report`] prints, for callers that add their own.
pub(crate) fn counters(
    stats: &Stats,
    dp: &Dataplane,
) -> serde_json::Map<String, serde_json::Value> {
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
        serde_json::to_value(crate::conns::Process::read()).unwrap_or_default(),
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
