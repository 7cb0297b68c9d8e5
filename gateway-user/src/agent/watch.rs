//! Picks up edits to the `--config` files by polling: the list of files
//! (directories included) and a hash of each file's content. No inotify: it
//! needs no dependency, and it sees files replaced by rename (as editors
//! and ConfigMap volumes do) like any other change. Content rather than
//! mtimes: two same-sized writes within one clock tick keep the mtime, and
//! manifests are small.
use std::{
    hash::{DefaultHasher, Hash as _, Hasher as _},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use tokio::sync::Mutex;

use super::config::Controller;
use crate::istio;

pub type Fingerprint = Result<Vec<(PathBuf, u64)>, String>;

/// What the files look like now; taken before they are read, so an edit
/// made while they are being read is seen at the next look.
pub fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    let files = istio::manifest_files(paths).map_err(|e| e.to_string())?;
    files
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?;
            let mut h = DefaultHasher::new();
            bytes.hash(&mut h);
            Ok((f, h.finish()))
        })
        .collect()
}

/// Reloads the files whenever they differ from `seen`.
pub async fn run(
    paths: Vec<PathBuf>,
    namespace: String,
    interval: Duration,
    mut seen: Fingerprint,
    controller: Arc<Mutex<Controller>>,
) {
    // A change that failed is tried again at every tick (a port may have
    // been freed), but its error is logged only when it changes.
    let mut pending = false;
    let mut last_error: Option<String> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = fingerprint(&paths);
        if now == seen && !pending {
            continue;
        }
        seen = now;
        let result = match istio::load_paths(&paths, istio::Namespace::Default(&namespace)) {
            Ok(batch) => controller.lock().await.reload(batch.resources).await,
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(_) => {
                pending = false;
                last_error = None;
            }
            Err(e) => {
                pending = true;
                if last_error.as_ref() != Some(&e) {
                    tracing::error!(
                        "--config change refused, still serving the last good config:\n{e}"
                    );
                    last_error = Some(e);
                }
            }
        }
    }
}
