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
pub mod ports;
pub mod report;
pub mod signals;
pub mod table;
pub mod tasks;
pub mod workers;

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    dataplane::{Dataplane, DataplaneArgs},
    telemetry::{Counters, Stats},
};

/// What the accept loops and connection tasks share.
pub struct Runtime {
    pub dp: Dataplane,
    pub stats: Arc<Stats>,
    pub counters: Counters,
    pub tasks: tasks::Tasks,
    pub workers: workers::Workers,
    table: RwLock<Arc<table::Table>>,
}

impl Runtime {
    /// Starts the dataplane and the workers, with an empty routing table.
    pub async fn start(args: &DataplaneArgs) -> anyhow::Result<Arc<Runtime>> {
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
        }))
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
    /// `timeout`, then prints the last report.
    pub async fn finish(&self, timeout: Duration) {
        self.tasks.drain(timeout).await;
        report::report(self);
    }
}
