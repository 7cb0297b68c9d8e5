//! The `--config` files: reading them as `kubectl apply -f` reads files and
//! directories, and picking up their edits by polling: the list of files
//! (directories included) and a hash of each file's content. No inotify: it
//! needs no dependency, and it sees files replaced by rename (as editors
//! and ConfigMap volumes do) like any other change. Content rather than
//! mtimes: two same-sized writes within one clock tick keep the mtime, and
//! manifests are small.
use std::{
    hash::{DefaultHasher, Hash as _, Hasher as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::sync::Mutex;

use super::controller::{Controller, Source};
use crate::istio::{self, Batch, ConfigError, Diagnostic};

/// Reads files and directories as `kubectl apply -f` does: a directory
/// contributes its `*.yaml`, `*.yml` and `*.json` files (not recursively), in
/// name order. Problems in every file are reported together.
pub fn load_paths<'a>(
    paths: &[PathBuf],
    namespace: impl Into<istio::Namespace<'a>>,
) -> Result<Batch, ConfigError> {
    let namespace = namespace.into();
    let files = manifest_files(paths)?;
    let mut batch = Batch::default();
    let mut problems = Vec::new();
    for file in files {
        let text = read_manifest(&file).map_err(|source| ConfigError::Read {
            path: file.clone(),
            source,
        })?;
        match istio::parse(&text, &file.display().to_string(), namespace) {
            Ok(b) => batch.extend(b),
            Err(ConfigError::Invalid(mut p)) => problems.append(&mut p),
            Err(e) => return Err(e),
        }
    }
    if problems.is_empty() {
        Ok(batch)
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

/// A manifest's text, read no further than one byte past what a file may
/// hold ([`istio::limits::MAX_FILE_BYTES`]), so that a huge file is refused
/// by the parser's size check without being read whole.
pub fn read_manifest(path: &Path) -> std::io::Result<String> {
    read_capped(std::fs::File::open(path)?)
}

/// The same for any reader (standard input).
pub fn read_capped(r: impl std::io::Read) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    r.take(istio::limits::MAX_FILE_BYTES as u64 + 1)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// The files [`load_paths`] reads for `paths`, in the order it reads them.
pub fn manifest_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ConfigError> {
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let mut found = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                let p = entry.path();
                let manifest = p
                    .extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
                if manifest && p.is_file() {
                    found.push(p);
                }
            }
            if found.is_empty() {
                return Err(ConfigError::Invalid(vec![Diagnostic::new(
                    None,
                    "",
                    format!(
                        "{}: no .yaml, .yml or .json files in this directory",
                        path.display()
                    ),
                )]));
            }
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

pub type Fingerprint = Result<Vec<(PathBuf, u64)>, String>;

/// What the files look like now; taken before they are read, so an edit
/// made while they are being read is seen at the next look.
pub fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    let files = manifest_files(paths).map_err(|e| e.to_string())?;
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
        // Reading and parsing block: off the runtime's threads, which
        // serve the admin socket and signals meanwhile.
        let read = {
            let (paths, seen, namespace) = (paths.clone(), seen.clone(), namespace.clone());
            tokio::task::spawn_blocking(move || {
                let now = fingerprint(&paths);
                let changed = now != seen;
                let loaded = (changed || pending)
                    .then(|| load_paths(&paths, istio::Namespace::Default(&namespace)));
                (now, loaded)
            })
            .await
        };
        let Ok((now, Some(loaded))) = read else {
            continue;
        };
        seen = now;
        let result = match loaded {
            Ok(batch) => {
                controller
                    .lock()
                    .await
                    .reload_source(Source::Files, batch.resources)
                    .await
            }
            Err(e) => Err(e.into()),
        };
        match result.map_err(|e| e.to_string()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_V1: &str = include_str!("../istio/testdata/seed/tcp-echo-all-v1.yaml");
    const ENDPOINTS: &str =
        include_str!("../../../manifests/examples/tcp-echo/tcp-echo-endpoints.yaml");

    #[test]
    fn load_paths_reads_directories_in_name_order() {
        let dir = std::env::temp_dir().join(format!("gateway-istio-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let write = |name: &str, text: &str| {
            std::fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("{e}"));
        };
        write("b-routes.yaml", ALL_V1);
        write("a-endpoints.yml", ENDPOINTS);
        write("notes.txt", "not a manifest");
        let batch =
            load_paths(std::slice::from_ref(&dir), Some("ns")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(batch.resources.len(), 6);
        assert_eq!(batch.resources[0].id.kind, istio::Kind::ServiceEntry);
        assert!(batch.resources[0].origin.file.ends_with("a-endpoints.yml"));

        write("c-bad.yaml", "kind: [");
        let err = load_paths(std::slice::from_ref(&dir), Some("ns"))
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("c-bad.yaml: document 1")),
            "{err:?}"
        );

        let missing = load_paths(&[dir.join("nope.yaml")], Some("ns"));
        assert!(matches!(missing, Err(ConfigError::Read { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
