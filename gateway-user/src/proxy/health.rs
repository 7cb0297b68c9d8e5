//! Passive health of a cluster's endpoints, for the clusters that ask for
//! it (`gateway forward`'s): an endpoint whose dial failed is logged once
//! and skipped until a probe every [`REPROBE`] gets through, so while no
//! endpoint answers clients are closed at once instead of each waiting
//! for its connect timeout.
use std::{
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use super::dial::connect;

/// How often an endpoint that does not answer is tried again.
pub const REPROBE: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Health {
    addrs: Vec<SocketAddr>,
    /// Did not answer the last connect; skipped until a probe gets through.
    down: Vec<AtomicBool>,
    connect_timeout: Duration,
}

impl Health {
    /// Every endpoint counts as up until a dial to it fails.
    pub fn new(addrs: Vec<SocketAddr>, connect_timeout: Duration) -> Arc<Self> {
        let down = addrs.iter().map(|_| AtomicBool::new(false)).collect();
        Arc::new(Health {
            addrs,
            down,
            connect_timeout,
        })
    }

    pub fn is_down(&self, i: usize) -> bool {
        self.down.get(i).is_some_and(|d| d.load(Relaxed))
    }

    /// Tries every endpoint once, in the background: one that does not
    /// answer must not hold the listener back for its connect timeout.
    pub fn probe_all(self: &Arc<Self>) {
        for i in 0..self.addrs.len() {
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = connect(me.addrs[i], me.connect_timeout).await {
                    me.failed(i, &e);
                }
            });
        }
    }

    /// Endpoint `i` did not answer: logged once (not once per client), then
    /// tried every [`REPROBE`] until it does.
    pub fn failed(self: &Arc<Self>, i: usize, e: &io::Error) {
        let Some(down) = self.down.get(i) else {
            return;
        };
        if down.swap(true, Relaxed) {
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
}
