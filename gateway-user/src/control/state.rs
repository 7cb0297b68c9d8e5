//! What `gateway apply` and `gateway delete` changed, kept under
//! `--state-dir` so it survives a restart.
//!
//! One file, `state.json`, rewritten whole on every change (a temporary
//! file, fsync, rename, fsync of the directory), so a crash leaves the old
//! state or the new one, never a mix. It holds each applied document as it
//! was read, with the namespace and the file it came from, in the order
//! they were first applied, and the resources deleted although a --config
//! file still defines them. A lock file keeps a second agent off the
//! directory.
use std::{
    collections::BTreeSet,
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::{
        fd::AsRawFd as _,
        unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use super::Error;
use crate::istio::{self, Kind, Resource, ResourceId};

const FORMAT: u32 = 1;
const FILE: &str = "state.json";

/// The changes made through the admin socket, on top of the --config files.
#[derive(Debug, Clone, Default)]
pub struct Overlay {
    /// Applied resources, in the order they were first applied.
    pub applied: Vec<Resource>,
    /// Resources deleted while a --config file defines them.
    pub deleted: BTreeSet<ResourceId>,
}

impl Overlay {
    pub fn get(&self, id: &ResourceId) -> Option<&Resource> {
        self.applied.iter().find(|r| &r.id == id)
    }

    /// Does it decide this resource, over whatever the files say?
    pub fn shadows(&self, id: &ResourceId) -> bool {
        self.deleted.contains(id) || self.get(id).is_some()
    }

    /// Adds or replaces, keeping a replaced resource's place.
    pub fn upsert(&mut self, r: Resource) {
        self.deleted.remove(&r.id);
        match self.applied.iter_mut().find(|x| x.id == r.id) {
            Some(slot) => *slot = r,
            None => self.applied.push(r),
        }
    }

    pub fn remove(&mut self, id: &ResourceId) {
        self.applied.retain(|r| &r.id != id);
    }

    /// Nothing to save: the same resources from the same documents.
    pub fn same_as(&self, other: &Overlay) -> bool {
        self.deleted == other.deleted
            && self.applied.len() == other.applied.len()
            && self
                .applied
                .iter()
                .zip(&other.applied)
                .all(|(a, b)| same(a, b) && a.origin == b.origin)
    }
}

/// Same resource, same document: what `kubectl apply` calls unchanged.
pub fn same(a: &Resource, b: &Resource) -> bool {
    a.id == b.id && a.content() == b.content()
}

#[derive(Serialize, Deserialize)]
struct Saved {
    format: u32,
    applied: Vec<SavedResource>,
    deleted: Vec<SavedId>,
}

#[derive(Serialize, Deserialize)]
struct SavedResource {
    namespace: String,
    /// The file it was applied from and its document there, for messages.
    file: String,
    document: usize,
    resource: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct SavedId {
    kind: String,
    namespace: String,
    name: String,
}

/// The state directory, locked for this agent.
pub struct StateDir {
    path: PathBuf,
    // Held for the agent's life: the lock goes with the descriptor.
    _lock: File,
}

impl StateDir {
    pub fn open(dir: &Path) -> anyhow::Result<StateDir> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                bail!(
                    "the state directory {} is in use by another gateway agent",
                    dir.display()
                );
            }
            return Err(e).with_context(|| format!("cannot lock {}", lock_path.display()));
        }
        Ok(StateDir {
            path: dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn file(&self) -> PathBuf {
        self.path.join(FILE)
    }

    /// The saved overlay; empty if nothing was ever applied.
    pub fn load(&self) -> Result<Overlay, Error> {
        let path = self.file();
        let refused = |problems: Vec<String>| Error::State {
            path: path.clone(),
            problems,
        };
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Overlay::default()),
            Err(e) => return Err(refused(vec![e.to_string()])),
        };
        read_saved(&text).map_err(refused)
    }
}

impl StateDir {
    /// Replaces the saved overlay, atomically.
    pub fn save(&self, overlay: &Overlay) -> Result<(), Error> {
        let saved = Saved {
            format: FORMAT,
            applied: overlay
                .applied
                .iter()
                .map(|r| SavedResource {
                    namespace: r.namespace().to_string(),
                    file: r.origin.file.to_string(),
                    document: r.origin.document,
                    resource: r.content().clone(),
                })
                .collect(),
            deleted: overlay
                .deleted
                .iter()
                .map(|id| SavedId {
                    kind: id.kind.as_str().to_string(),
                    namespace: id.namespace.clone(),
                    name: id.name.clone(),
                })
                .collect(),
        };
        let path = self.file();
        let tmp = self.path.join(format!("{FILE}.tmp"));
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)?;
            let mut text = serde_json::to_vec_pretty(&saved).map_err(io::Error::other)?;
            text.push(b'\n');
            f.write_all(&text)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&self.path)?.sync_all()
        };
        write().map_err(|source| Error::Save { path, source })
    }
}

/// A state file's text, read back into the overlay it saved; every
/// problem found, else.
pub(crate) fn read_saved(text: &str) -> Result<Overlay, Vec<String>> {
    let saved: Saved =
        serde_json::from_str(text).map_err(|e| vec![format!("not a gateway state file: {e}")])?;
    if saved.format != FORMAT {
        return Err(vec![format!(
            "state format {} is not known to this version (expected {FORMAT})",
            saved.format
        )]);
    }
    let mut overlay = Overlay::default();
    let mut problems = Vec::new();
    for (i, s) in saved.applied.into_iter().enumerate() {
        // Read back as it was first read, so messages point at the file
        // it was applied from and it compares equal to a re-apply.
        let text = s.resource.to_string();
        match istio::parse(&text, &s.file, istio::Namespace::Only(&s.namespace)) {
            Ok(batch) if batch.resources.len() == 1 => {
                for mut r in batch.resources {
                    r.origin.document = s.document;
                    overlay.applied.push(r);
                }
            }
            Ok(_) => problems.push(format!("applied[{i}] is not one Istio resource")),
            Err(e) => problems.push(format!("applied[{i}]: {e}")),
        }
    }
    for (i, d) in saved.deleted.into_iter().enumerate() {
        match Kind::parse(&d.kind) {
            Some(kind) => {
                overlay.deleted.insert(ResourceId {
                    kind,
                    namespace: d.namespace,
                    name: d.name,
                });
            }
            None => problems.push(format!("deleted[{i}]: unknown kind {:?}", d.kind)),
        }
    }
    if problems.is_empty() {
        Ok(overlay)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VS: &str = include_str!("../istio/testdata/seed/tcp-echo-20-v2.yaml");
    const NS: &str = "istio-io-tcp-traffic-shifting";

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn saved_state_reads_back_the_same_and_is_locked() {
        let dir =
            Dir(std::env::temp_dir().join(format!("gateway-state-test-{}", std::process::id())));
        let _ = fs::remove_dir_all(&dir.0);
        let state = StateDir::open(&dir.0).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(state.load().is_ok_and(|o| o.applied.is_empty()));

        let batch = istio::parse(
            &format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n---\n{VS}"),
            "v2.yaml",
            Some(NS),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut overlay = Overlay::default();
        overlay.upsert(batch.resources[0].clone());
        overlay.deleted.insert(ResourceId {
            kind: Kind::Gateway,
            namespace: NS.into(),
            name: "tcp-echo-gateway".into(),
        });
        state.save(&overlay).unwrap_or_else(|e| panic!("{e:#}"));
        let back = state.load().unwrap_or_else(|e| panic!("{e}"));
        assert!(back.same_as(&overlay));
        // Messages still point at the document it was applied from.
        assert_eq!(back.applied[0].origin.document, 2);
        assert_eq!(&*back.applied[0].origin.file, "v2.yaml");

        let second = StateDir::open(&dir.0).err().map(|e| e.to_string());
        assert!(
            second
                .as_deref()
                .is_some_and(|e| e.contains("in use by another gateway agent")),
            "{second:?}"
        );
        drop(state);
        assert!(
            StateDir::open(&dir.0).is_ok(),
            "the lock goes with the agent"
        );

        fs::write(dir.0.join(FILE), "{").unwrap_or_else(|e| panic!("{e}"));
        let bad = StateDir::open(&dir.0).map(|s| s.load());
        assert!(
            matches!(&bad, Ok(Err(e)) if e.to_string().contains("not a gateway state file")),
            "{:?}",
            bad.map_err(|e| e.to_string())
        );
    }
}
