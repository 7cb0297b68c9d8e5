//! The agent's configuration and every change to it.
//!
//! Two layers make up what is served: the `--config` files, and on top of
//! them what `gateway apply` / `gateway delete` changed (the overlay, saved
//! under `--state-dir`). Where both define a resource, the overlay wins,
//! until the files agree with it: an applied resource equal to its file's
//! version, or a deleted one no file defines any more, leaves the overlay,
//! so the files own it again. A change is resolved, its new ports bound and
//! the overlay saved before anything switches; any failure leaves the agent
//! as it was.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use super::{
    state::{same, Overlay, StateDir},
    Error,
};
use crate::{
    istio::{
        Action, Agent, Applied, Batch, Change, ConfigError, Diagnostic, Resource, Snapshot, Status,
        Store,
    },
    proxy::{ports::Ports, table::Table, Runtime},
};

/// Where resources under the overlay come from. Where two sources define
/// the same resource, the first in this order wins: a node's own files
/// over the cluster's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// `--config`.
    Files,
    /// `--source kubernetes`: the watched Istio resources and Services.
    Kubernetes,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Files => "--config",
            Source::Kubernetes => "kubernetes",
        }
    }
}

/// What each source says, merged by [`Source`] order.
fn merged(sources: &BTreeMap<Source, Vec<Resource>>) -> Vec<Resource> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (source, resources) in sources {
        for r in resources {
            if seen.insert(r.id.clone()) {
                out.push(r.clone());
            } else {
                tracing::debug!(
                    "{} from {} is also defined by an earlier source; not used",
                    r.id,
                    source.name()
                );
            }
        }
    }
    out
}

/// What a change did, for the admin client and the log.
#[derive(Debug)]
pub struct Outcome {
    pub changes: Vec<Change>,
    /// Warnings this change brought, and notes about skipped documents.
    pub warnings: Vec<Diagnostic>,
    pub generation: u64,
}

/// The first configuration, resolved before anything starts.
pub struct Plan {
    applied: Applied,
    files: Vec<Resource>,
    overlay: Overlay,
    /// The overlay as saved; it differs from `overlay` when the files now
    /// agree with some of it, and is then saved again.
    saved: Overlay,
}

pub struct Controller {
    store: Store,
    snapshot: Snapshot,
    sources: BTreeMap<Source, Vec<Resource>>,
    overlay: Overlay,
    state: StateDir,
    listen: IpAddr,
    generation: u64,
    ports: Ports,
    rt: Arc<Runtime>,
}

/// Drops from `overlay` what the files now say the same way.
fn settle(mut overlay: Overlay, files: &[Resource]) -> Overlay {
    overlay
        .applied
        .retain(|r| !files.iter().any(|f| same(f, r)));
    overlay
        .deleted
        .retain(|id| files.iter().any(|f| &f.id == id));
    overlay
}

impl Controller {
    /// Resolves the files and the saved overlay together.
    pub fn plan_start(agent: Agent, files: Vec<Resource>, overlay: Overlay) -> Result<Plan, Error> {
        let saved = overlay.clone();
        let overlay = settle(overlay, &files);
        let mut upserts: Vec<Resource> = files
            .iter()
            .filter(|r| !overlay.shadows(&r.id))
            .cloned()
            .collect();
        upserts.extend(overlay.applied.iter().cloned());
        let applied = Store::new(agent).apply(&upserts)?;
        Ok(Plan {
            applied,
            files,
            overlay,
            saved,
        })
    }

    /// Opens the planned ports and starts serving.
    pub async fn start(
        plan: Plan,
        state: StateDir,
        listen: IpAddr,
        rt: Arc<Runtime>,
    ) -> Result<Controller, Error> {
        let mut c = Controller {
            store: Store::new(plan.applied.store.agent().clone()),
            snapshot: Snapshot::default(),
            sources: BTreeMap::new(),
            overlay: plan.saved,
            state,
            listen,
            generation: 0,
            ports: Ports::default(),
            rt,
        };
        c.commit(
            plan.applied,
            Some(plan.overlay),
            Some(BTreeMap::from([(Source::Files, plan.files)])),
            false,
            "start",
        )
        .await?;
        Ok(c)
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn resource_count(&self) -> usize {
        self.store.resources().count()
    }

    /// `gateway apply`.
    pub async fn apply(&mut self, batch: Batch, dry_run: bool) -> Result<Outcome, Error> {
        let applied = self.store.apply(&batch.resources)?;
        let mut overlay = self.overlay.clone();
        let base = merged(&self.sources);
        for r in &batch.resources {
            if base.iter().any(|f| same(f, r)) {
                // The file's own version: the file owns it again.
                overlay.remove(&r.id);
                overlay.deleted.remove(&r.id);
            } else {
                overlay.upsert(r.clone());
            }
        }
        let mut out = self
            .commit(applied, Some(overlay), None, dry_run, "gateway apply")
            .await?;
        out.warnings.splice(0..0, batch.notes.iter().cloned());
        Ok(out)
    }

    /// `gateway delete`.
    pub async fn delete(&mut self, batch: Batch, dry_run: bool) -> Result<Outcome, Error> {
        let applied = self.store.delete(&batch.resources)?;
        let mut overlay = self.overlay.clone();
        let base = merged(&self.sources);
        for c in &applied.changes {
            overlay.remove(&c.id);
            if c.action == Action::Deleted && base.iter().any(|f| f.id == c.id) {
                overlay.deleted.insert(c.id.clone());
            }
        }
        let mut out = self
            .commit(applied, Some(overlay), None, dry_run, "gateway delete")
            .await?;
        out.warnings.splice(0..0, batch.notes.iter().cloned());
        Ok(out)
    }

    /// A source says something new: serve what every source says now,
    /// except where the overlay decides.
    pub async fn reload_source(
        &mut self,
        source: Source,
        resources: Vec<Resource>,
    ) -> Result<Outcome, Error> {
        let old = merged(&self.sources);
        let mut sources = self.sources.clone();
        sources.insert(source, resources);
        let files = merged(&sources);
        let overlay = settle(self.overlay.clone(), &files);
        let upserts: Vec<Resource> = files
            .iter()
            .filter(|r| !overlay.shadows(&r.id))
            .cloned()
            .collect();
        let kept: BTreeSet<_> = files.iter().map(|r| &r.id).collect();
        let removals: Vec<_> = old
            .iter()
            .map(|r| r.id.clone())
            .filter(|id| !kept.contains(id) && !overlay.shadows(id))
            .collect();
        // Say once, when the source's version changes, that it is not served.
        let mut notes = Vec::new();
        for f in &files {
            let edited = !old.iter().any(|o| same(o, f));
            if !edited || !overlay.shadows(&f.id) {
                continue;
            }
            let why = if overlay.deleted.contains(&f.id) {
                "was deleted with `gateway delete`, so this version is not served; \
                 `gateway apply` this file to serve it, or remove the resource from it"
            } else {
                "was set otherwise with `gateway apply`, which takes precedence; \
                 `gateway apply` this file (or make it match) to serve it from the file again"
            };
            notes.push(Diagnostic::new(
                Some(&f.origin),
                "",
                format!("{} {why}", f.id),
            ));
        }
        let applied = self.store.update(&upserts, &removals)?;
        let mut out = self
            .commit(applied, Some(overlay), Some(sources), false, source.name())
            .await?;
        for n in &notes {
            tracing::warn!("{n}");
        }
        out.warnings.extend(notes);
        Ok(out)
    }

    /// The Gateway API status of the config in force, for the resources
    /// that came from the cluster (what the files or `gateway apply` set
    /// is not the cluster's to be told about), each with its API path.
    pub fn cluster_status(&self) -> Vec<(String, Status)> {
        self.snapshot
            .status
            .iter()
            .filter_map(|s| {
                let r = self.store.resources().find(|r| r.id == s.resource)?;
                let path = r.origin.file.strip_prefix(super::kube::ORIGIN)?;
                Some((path.to_string(), s.clone()))
            })
            .collect()
    }

    /// Stops accepting everywhere (the agent is stopping).
    pub async fn close_ports(&mut self) {
        self.ports.close_all().await;
    }

    /// Binds what `applied` needs, saves `overlay`, then switches: closes
    /// the ports no longer served, swaps the routing table, opens the new
    /// ports. Nothing switches unless every step before it worked.
    async fn commit(
        &mut self,
        applied: Applied,
        overlay: Option<Overlay>,
        sources: Option<BTreeMap<Source, Vec<Resource>>>,
        dry_run: bool,
        source: &str,
    ) -> Result<Outcome, Error> {
        let mut fresh = Vec::new();
        let mut problems = Vec::new();
        for l in &applied.snapshot.listeners {
            if self.ports.is_open(l.port) {
                continue;
            }
            let addr = SocketAddr::new(self.listen, l.port);
            match self.rt.workers.bind(addr) {
                Ok(listener) => fresh.push((l, addr, listener)),
                Err(e) => problems.push(Diagnostic::new(
                    Some(&l.origin),
                    l.port_field(),
                    format!("cannot listen on {addr}: {e}"),
                )),
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems).into());
        }
        let known: BTreeSet<String> = self
            .snapshot
            .warnings
            .iter()
            .map(ToString::to_string)
            .collect();
        let warnings: Vec<Diagnostic> = applied
            .snapshot
            .warnings
            .iter()
            .filter(|w| !known.contains(&w.to_string()))
            .cloned()
            .collect();
        let changed = applied.changes.iter().any(|c| {
            matches!(
                c.action,
                Action::Created | Action::Configured | Action::Deleted
            )
        });
        let generation = if changed || self.generation == 0 {
            self.generation + 1
        } else {
            self.generation
        };
        let outcome = Outcome {
            changes: applied.changes.clone(),
            warnings,
            generation,
        };
        if dry_run {
            return Ok(outcome);
        }
        if let Some(o) = &overlay {
            if !o.same_as(&self.overlay) {
                self.state.save(o)?;
            }
        }

        let wanted: BTreeSet<u16> = applied.snapshot.listeners.iter().map(|l| l.port).collect();
        for port in self.ports.open_ports() {
            if !wanted.contains(&port) {
                self.ports.close(port).await;
            }
        }
        let table = Table::build(
            generation,
            &applied.snapshot,
            &self.rt.table(),
            &self.rt.counters,
        );
        self.rt.set_table(Arc::new(table));
        for (l, addr, listener) in fresh {
            tracing::info!(
                "listening on {addr}: Gateway {}, VirtualService {}",
                l.gateway,
                l.route.virtual_service
            );
            self.ports.serve(l.port, listener, self.rt.clone());
        }

        let shown: Vec<String> = applied
            .changes
            .iter()
            .filter(|c| c.action != Action::Unchanged)
            .map(|c| format!("{} ({})", c, c.id.namespace))
            .collect();
        if !shown.is_empty() {
            tracing::info!(
                "config generation {generation} from {source}: {}",
                shown.join(", ")
            );
        }
        for w in &outcome.warnings {
            tracing::warn!("{w}");
        }
        self.store = applied.store;
        self.snapshot = applied.snapshot;
        self.generation = generation;
        if let Some(o) = overlay {
            self.overlay = o;
        }
        if let Some(s) = sources {
            self.sources = s;
        }
        Ok(outcome)
    }
}
