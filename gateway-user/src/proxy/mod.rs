//! The serving stack both `gateway run` and `gateway forward` use: worker
//! threads with their listening sockets, the routing table the accept
//! loops read, one connection's life (pick a cluster, dial with fail-over,
//! hand both sockets to the dataplane), the tasks a drain waits for, the
//! signals it answers and the counters report.
//!
//! It knows nothing of where its routing table comes from: the control
//! plane builds one from Istio resources, `gateway forward` builds a fixed
//! one from its command line.
pub mod conn;
pub mod dial;
pub mod health;
pub mod http;
pub mod ports;
pub mod report;
pub mod signals;
pub mod table;
pub mod tasks;
pub mod workers;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc, RwLock,
    },
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    dataplane::{Dataplane, DataplaneArgs},
    telemetry::{
        access::{AccessLog, Target},
        metrics::{Metrics, Source},
        Counters, Stats,
    },
};

/// How the agent can be watched: the HTTP listener and the access log.
#[derive(Debug, Clone, clap::Args)]
pub struct ObserveArgs {
    /// Serve Prometheus metrics (`/metrics`), `/healthz` and `/ready` over
    /// HTTP on ADDR, or `off`. `gateway run` serves them on
    /// 127.0.0.1:15090 (Istio's Prometheus port) unless told otherwise;
    /// `gateway forward` only when given an address.
    #[arg(long, value_name = "ADDR|off")]
    pub metrics: Option<http::Listen>,
    /// Write one JSON line per closed connection to PATH (appended), or to
    /// standard output with `-`.
    #[arg(long, value_name = "PATH|-")]
    pub access_log: Option<Target>,
}

/// What the accept loops and connection tasks share.
pub struct Runtime {
    pub dp: Dataplane,
    pub stats: Arc<Stats>,
    pub counters: Counters,
    pub tasks: tasks::Tasks,
    pub workers: workers::Workers,
    table: RwLock<Arc<table::Table>>,
    pub metrics: Metrics,
    pub access: Option<AccessLog>,
    /// The config is loaded and its ports are bound (`/ready`).
    ready: AtomicBool,
}

impl Runtime {
    /// Starts the dataplane and the workers, with an empty routing table.
    pub async fn start(
        args: &DataplaneArgs,
        observe: &ObserveArgs,
    ) -> anyhow::Result<Arc<Runtime>> {
        let access = match &observe.access_log {
            Some(target) => Some(AccessLog::open(target).context("cannot open the access log")?),
            None => None,
        };
        let stats = Arc::new(Stats::default());
        let dp = Dataplane::start(args, stats.clone()).await?;
        if let Ok(limit) = crate::sys::raise_nofile_limit() {
            tracing::debug!("open files limit {limit}");
        }
        let workers =
            workers::Workers::start(args.workers).context("cannot start the worker threads")?;
        Ok(Arc::new(Runtime {
            dp,
            workers,
            stats,
            counters: Counters::default(),
            tasks: tasks::Tasks::default(),
            table: RwLock::new(Arc::default()),
            metrics: Metrics::new(Source::default()),
            access,
            ready: AtomicBool::new(false),
        }))
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed)
    }

    /// The Prometheus exposition now: live connections' bytes brought into
    /// Istio's counters first.
    pub fn metrics_text(&self) -> String {
        let kernel = self.dp.kernel();
        let paths = self
            .dp
            .conns()
            .account_all(|cookie| kernel.and_then(|k| k.flow(cookie)).map(|f| f.redirected));
        self.metrics.render(&report::snapshot(self), &paths)
    }

    pub fn table(&self) -> Arc<table::Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Switches the table new connections route by; those already
    /// accepted keep the route they took.
    pub fn set_table(&self, t: Arc<table::Table>) {
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = t;
    }

    /// Answers `SIGUSR1` with the counters report until asked to stop.
    pub async fn serve_signals(&self, signals: &mut signals::Signals) {
        while let signals::Asked::Report = signals.next().await {
            report::report(self);
        }
    }

    /// Once the ports are closed: lets open connections finish for up to
    /// `timeout`, removes the maps' pins, then prints the last report.
    pub async fn finish(&self, timeout: Duration) {
        self.ready.store(false, Relaxed);
        self.dp.conns().set_draining();
        let open = self.tasks.live();
        let started = std::time::Instant::now();
        self.tasks.drain(timeout).await;
        let left = self.tasks.live();
        if open > 0 {
            tracing::info!(
                "drained: {open} connections open at stop, {} finished in {:.1?}, {left} closed \
                 at the drain timeout ({timeout:?})",
                open.saturating_sub(left),
                started.elapsed()
            );
        }
        if let Some(log) = &self.access {
            log.flush();
        }
        if let Some(k) = self.dp.kernel() {
            k.unpin();
        }
        report::report(self);
    }
}
