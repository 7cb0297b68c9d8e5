//! The applied resources, keyed as `kubectl apply` keys them, and what each
//! change does to them; every change resolves to a new snapshot or to an
//! error, with the old store left as it was.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    sync::Arc,
};

use super::{
    error::{ConfigError, Diagnostic, Origin, ResourceId},
    resolve, Agent, Resource, Snapshot,
};

/// The resources currently applied, keyed like kubectl keys them.
/// Immutable: every change returns a new store.
#[derive(Debug, Clone)]
pub struct Store {
    agent: Arc<Agent>,
    entries: BTreeMap<ResourceId, Entry>,
    next_seq: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    /// Order of first creation; Istio orders competing VirtualServices by
    /// creation time, and re-applying keeps a resource's place.
    seq: u64,
    resource: Arc<Resource>,
}

/// What happened to one resource, in kubectl's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Created,
    Configured,
    Unchanged,
    Deleted,
    /// Deleting something that was not there; kubectl reports it and goes on.
    NotFound,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub id: ResourceId,
    pub action: Action,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = format!("{}/{}", self.id.kind.resource_name(), self.id.name);
        match self.action {
            Action::Created => write!(f, "{name} created"),
            Action::Configured => write!(f, "{name} configured"),
            Action::Unchanged => write!(f, "{name} unchanged"),
            Action::Deleted => write!(f, "{name} deleted"),
            Action::NotFound => write!(
                f,
                "{name} not found in namespace {}; nothing to delete",
                self.id.namespace
            ),
        }
    }
}

/// A successful apply or delete: the store to keep and what it serves.
#[derive(Debug, Clone)]
pub struct Applied {
    pub store: Store,
    pub snapshot: Snapshot,
    pub changes: Vec<Change>,
}

impl Store {
    pub fn new(agent: Agent) -> Store {
        Store {
            agent: Arc::new(agent),
            entries: BTreeMap::new(),
            next_seq: 0,
        }
    }

    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// The applied resources, in key order.
    pub fn resources(&self) -> impl Iterator<Item = &Resource> {
        self.entries.values().map(|e| e.resource.as_ref())
    }

    /// `kubectl apply`: create or replace each resource by key, all or
    /// nothing. Fails if the batch names a resource twice or if the result
    /// does not resolve to a valid snapshot; `self` is left as it was.
    pub fn apply(&self, resources: &[Resource]) -> Result<Applied, ConfigError> {
        self.update(resources, &[])
    }

    /// [`Store::apply`] of `resources` and removal of `remove` as one
    /// change, all or nothing: a watched file that swaps one resource for
    /// another must not pass through a state that does not resolve. Removing
    /// a missing resource is not an error; it shows as [`Action::NotFound`].
    /// An id in both lists is applied, not removed.
    pub fn update(
        &self,
        resources: &[Resource],
        remove: &[ResourceId],
    ) -> Result<Applied, ConfigError> {
        let mut seen: BTreeMap<&ResourceId, &Origin> = BTreeMap::new();
        let mut problems = Vec::new();
        for r in resources {
            if let Some(first) = seen.insert(&r.id, &r.origin) {
                problems.push(Diagnostic::new(
                    Some(&r.origin),
                    "metadata.name",
                    format!(
                        "{} is also defined by {}; one apply may define a resource only once",
                        r.id,
                        plain_origin(first)
                    ),
                ));
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }

        let mut next = self.clone();
        let mut changes = Vec::with_capacity(resources.len());
        for r in resources {
            let action = match next.entries.get_mut(&r.id) {
                Some(entry) => {
                    let unchanged = entry.resource.content == r.content;
                    entry.resource = Arc::new(r.clone());
                    if unchanged {
                        Action::Unchanged
                    } else {
                        Action::Configured
                    }
                }
                None => {
                    next.entries.insert(
                        r.id.clone(),
                        Entry {
                            seq: next.next_seq,
                            resource: Arc::new(r.clone()),
                        },
                    );
                    next.next_seq += 1;
                    Action::Created
                }
            };
            changes.push(Change {
                id: r.id.clone(),
                action,
            });
        }
        // What the same change also applies stays.
        changes.extend(next.remove(remove.iter().filter(|id| !seen.contains_key(id))));
        let snapshot = next.snapshot()?;
        Ok(Applied {
            store: next,
            snapshot,
            changes,
        })
    }

    fn remove<'a>(&mut self, ids: impl Iterator<Item = &'a ResourceId>) -> Vec<Change> {
        let mut done = BTreeSet::new();
        let mut changes = Vec::new();
        for id in ids {
            if !done.insert(id) {
                continue;
            }
            let action = if self.entries.remove(id).is_some() {
                Action::Deleted
            } else {
                Action::NotFound
            };
            changes.push(Change {
                id: id.clone(),
                action,
            });
        }
        changes
    }

    /// `kubectl delete -f`: remove each resource by key, all or nothing.
    /// Missing resources are reported as [`Action::NotFound`], not refused,
    /// so deleting files in any order works as it does with kubectl.
    pub fn delete(&self, resources: &[Resource]) -> Result<Applied, ConfigError> {
        let mut next = self.clone();
        let changes = next.remove(resources.iter().map(|r| &r.id));
        let snapshot = next.snapshot()?;
        Ok(Applied {
            store: next,
            snapshot,
            changes,
        })
    }

    /// Validates every resource and resolves what this agent serves.
    pub fn snapshot(&self) -> Result<Snapshot, ConfigError> {
        let mut ordered: Vec<&Entry> = self.entries.values().collect();
        ordered.sort_by(|a, b| (a.seq, &a.resource.id).cmp(&(b.seq, &b.resource.id)));
        let resources: Vec<&Resource> = ordered.iter().map(|e| e.resource.as_ref()).collect();
        resolve::snapshot(&self.agent, &resources)
    }
}

/// An origin without the resource, for "also defined by FILE document N".
fn plain_origin(o: &Origin) -> String {
    format!("{} document {}", o.file, o.document)
}
