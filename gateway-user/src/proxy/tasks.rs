//! Connection tasks the agent waits for when it stops.
use std::{
    future::Future,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::Notify;

#[derive(Default, Clone)]
pub struct Tasks {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    live: AtomicUsize,
    idle: Notify,
}

struct Guard(Arc<Inner>);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Tasks {
    pub fn spawn(&self, f: impl Future<Output = ()> + Send + 'static) {
        self.inner.live.fetch_add(1, Ordering::AcqRel);
        let guard = Guard(self.inner.clone());
        tokio::spawn(async move {
            let _guard = guard;
            f.await;
        });
    }

    pub fn live(&self) -> usize {
        self.inner.live.load(Ordering::Acquire)
    }

    /// Waits until no task is left, or `timeout`.
    pub async fn drain(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, async {
            loop {
                let idle = self.inner.idle.notified();
                if self.live() == 0 {
                    return;
                }
                idle.await;
            }
        })
        .await;
    }
}
