//! Writing the Gateway API status of the cluster's GatewayClasses,
//! Gateways and TCPRoutes back to them, as a Gateway API controller does:
//! `kubectl get tcproute -o yaml` then says whether the route is
//! accepted and its backends resolved, without reading the agent's log.
//!
//! A DaemonSet runs one agent per node, all computing the same status;
//! one of them writes it. They elect that one with a Lease
//! (coordination.k8s.io), as client-go's leader election does: the holder
//! renews it every [`RENEW`]; another takes it over when it has seen no
//! renewal for the lease's duration, measured on its own clock (so clock
//! skew between nodes does not matter), and a holder that stops cleanly
//! gives it up at once. Every write of the Lease and of a status carries
//! the resourceVersion it read, so two writers racing are told apart by
//! the API server (409 Conflict) rather than overwriting each other.
//!
//! Writes are merge patches of the `status` subresource, made only when
//! the status differs from the object's (conditions compared without
//! their times), so a status write, which the agent's own watch then
//! sees, does not lead to another. A route's `status.parents` keeps the
//! entries of other controllers; a condition keeps its
//! `lastTransitionTime` while its status stays the same.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
    Api, Client,
};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::istio::{Condition, Kind, Status, CONTROLLER_NAME};

/// How often the holder renews the Lease, and others look at it.
pub const RENEW: Duration = Duration::from_secs(2);
/// How long a Lease stays its holder's without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the writer checks every status again, in case something
/// else changed it.
const RECHECK: Duration = Duration::from_secs(60);

/// Who this agent is, and which Lease the writers of its gateway class
/// share.
#[derive(Debug, Clone)]
pub struct Election {
    pub namespace: String,
    pub name: String,
    pub identity: String,
}

impl Election {
    /// The Lease in the agent's namespace (`POD_NAMESPACE`, else the
    /// client's default), one per gateway class, held under the pod's
    /// name (`POD_NAME`, else the host name and process id).
    pub fn from_env(client: &Client, gateway_class: &str) -> Election {
        let namespace = std::env::var("POD_NAMESPACE")
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| client.default_namespace().to_string());
        let identity = std::env::var("POD_NAME")
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "gateway".to_string());
                format!("{host}-{}", std::process::id())
            });
        Election {
            namespace,
            name: format!("gateway-status-{gateway_class}"),
            identity,
        }
    }
}

/// What this agent last saw of the Lease, on its own clock.
struct Seen {
    holder: Option<String>,
    renewed: Option<MicroTime>,
    since: Instant,
}

struct Lock {
    api: Api<Lease>,
    election: Election,
    seen: Option<Seen>,
}

/// An object, or none if the API server says it does not exist (404,
/// whatever the reason's wording).
fn found<K>(r: kube::Result<K>) -> kube::Result<Option<K>> {
    match r {
        Ok(o) => Ok(Some(o)),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

impl Lock {
    /// Takes or renews the Lease; whether this agent holds it now.
    async fn hold(&mut self) -> kube::Result<bool> {
        let me = &self.election.identity;
        let Some(lease) = found(self.api.get(&self.election.name).await)? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.election.name.clone()),
                    namespace: Some(self.election.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.clone()),
                    lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let changed = self
            .seen
            .as_ref()
            .is_none_or(|s| s.holder != spec.holder_identity || s.renewed != spec.renew_time);
        if changed {
            self.seen = Some(Seen {
                holder: spec.holder_identity.clone(),
                renewed: spec.renew_time.clone(),
                since: Instant::now(),
            });
        }
        let mine = spec.holder_identity.as_deref() == Some(me.as_str());
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(LEASE_DURATION, Duration::from_secs);
        let free = spec.holder_identity.as_deref().is_none_or(str::is_empty)
            || self
                .seen
                .as_ref()
                .is_some_and(|s| s.since.elapsed() >= duration);
        if !mine && !free {
            return Ok(false);
        }
        let mut patch = json!({
            "metadata": {"resourceVersion": lease.metadata.resource_version},
            "spec": {
                "holderIdentity": me,
                "leaseDurationSeconds": LEASE_DURATION.as_secs(),
                "renewTime": now(),
            }
        });
        if !mine {
            patch["spec"]["acquireTime"] = json!(now());
            patch["spec"]["leaseTransitions"] = json!(spec.lease_transitions.unwrap_or(0) + 1);
        }
        match self
            .api
            .patch(
                &self.election.name,
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up, so another agent takes over without waiting.
    async fn release(&mut self) {
        let Ok(Some(lease)) = found(self.api.get(&self.election.name).await) else {
            return;
        };
        let spec = lease.spec.unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.election.identity.as_str()) {
            return;
        }
        let patch = json!({
            "metadata": {"resourceVersion": lease.metadata.resource_version},
            "spec": {"holderIdentity": null, "renewTime": now(), "leaseDurationSeconds": 1},
        });
        let _ = self
            .api
            .patch(
                &self.election.name,
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await;
    }
}

/// An object's API path, parsed: `/apis/GROUP/VERSION/[namespaces/NS/]PLURAL/NAME`.
struct Target<'a> {
    group: &'a str,
    version: &'a str,
    namespace: Option<&'a str>,
    plural: &'a str,
    name: &'a str,
}

fn target(path: &str) -> Option<Target<'_>> {
    let parts: Vec<&str> = path.strip_prefix("/apis/")?.split('/').collect();
    match parts.as_slice() {
        [group, version, "namespaces", ns, plural, name] => Some(Target {
            group,
            version,
            namespace: Some(ns),
            plural,
            name,
        }),
        [group, version, plural, name] => Some(Target {
            group,
            version,
            namespace: None,
            plural,
            name,
        }),
        _ => None,
    }
}

/// Conditions as the API has them; a condition whose status is unchanged
/// keeps the time it last changed.
fn conditions(conds: &[Condition], old: Option<&Value>, generation: Option<i64>) -> Value {
    let stamp = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let status = |b: bool| if b { "True" } else { "False" };
    Value::Array(
        conds
            .iter()
            .map(|c| {
                let since = old
                    .and_then(Value::as_array)
                    .and_then(|a| {
                        a.iter()
                            .find(|o| o["type"] == c.kind && o["status"] == status(c.status))
                    })
                    .and_then(|o| o.get("lastTransitionTime").cloned())
                    .unwrap_or_else(|| json!(stamp));
                let mut v = json!({
                    "type": c.kind,
                    "status": status(c.status),
                    "reason": c.reason,
                    "message": c.message,
                    "lastTransitionTime": since,
                });
                if let Some(g) = generation {
                    v["observedGeneration"] = json!(g);
                }
                v
            })
            .collect(),
    )
}

/// The status the object should have, from this gateway's view of it
/// (`ours`: every status entry of this object) and what it has now.
fn wanted(kind: Kind, ours: &[&Status], old: &Value, generation: Option<i64>) -> Value {
    match kind {
        Kind::TcpRoute => {
            let old_parents = old["parents"].as_array().cloned().unwrap_or_default();
            let mut parents: Vec<Value> = old_parents
                .iter()
                .filter(|p| p["controllerName"] != CONTROLLER_NAME)
                .cloned()
                .collect();
            for s in ours {
                let before = old_parents.iter().find(|p| {
                    p["controllerName"] == CONTROLLER_NAME
                        && Some(&p["parentRef"]) == s.parent_ref.as_ref()
                });
                parents.push(json!({
                    "parentRef": s.parent_ref,
                    "controllerName": CONTROLLER_NAME,
                    "conditions": conditions(
                        &s.conditions,
                        before.map(|b| &b["conditions"]),
                        generation,
                    ),
                }));
            }
            json!({ "parents": parents })
        }
        _ => {
            let Some(s) = ours.first() else {
                return old.clone();
            };
            let mut v = json!({
                "conditions": conditions(&s.conditions, old.get("conditions"), generation),
            });
            if kind == Kind::KubeGateway {
                let old_listeners = old["listeners"].as_array().cloned().unwrap_or_default();
                v["listeners"] = s
                    .listeners
                    .iter()
                    .map(|l| {
                        let before = old_listeners.iter().find(|o| o["name"] == l.name.as_str());
                        json!({
                            "name": l.name,
                            "supportedKinds": l
                                .supported_kinds
                                .iter()
                                .map(|k| json!({"group": crate::istio::Kind::TcpRoute.group(), "kind": k}))
                                .collect::<Vec<_>>(),
                            "attachedRoutes": l.attached_routes,
                            "conditions": conditions(
                                &l.conditions,
                                before.map(|b| &b["conditions"]),
                                generation,
                            ),
                        })
                    })
                    .collect();
            }
            v
        }
    }
}

/// The same status, times aside.
fn same(a: &Value, b: &Value) -> bool {
    fn strip(v: &Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .filter(|(k, _)| k.as_str() != "lastTransitionTime")
                    .map(|(k, v)| (k.clone(), strip(v)))
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.iter().map(strip).collect()),
            v => v.clone(),
        }
    }
    strip(a) == strip(b)
}

/// Brings one object's status to what this gateway says of it; whether
/// it wrote.
async fn write(client: &Client, path: &str, kind: Kind, ours: &[&Status]) -> kube::Result<bool> {
    let Some(t) = target(path) else {
        return Ok(false);
    };
    let gvk = GroupVersionKind::gvk(t.group, t.version, kind.kind_field());
    let ar = ApiResource::from_gvk_with_plural(&gvk, t.plural);
    let api: Api<DynamicObject> = match t.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let obj = match api.get_status(t.name).await {
        Ok(o) => o,
        // Deleted meanwhile: nothing to tell.
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(false),
        Err(e) => return Err(e),
    };
    let old = obj.data.get("status").cloned().unwrap_or(json!({}));
    let new = wanted(kind, ours, &old, obj.metadata.generation);
    if same(&old, &new) {
        return Ok(false);
    }
    let patch = json!({
        "metadata": {"resourceVersion": obj.metadata.resource_version},
        "status": new,
    });
    api.patch_status(t.name, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    Ok(true)
}

/// Writes what `desired` says while this agent holds the Lease, until
/// `stop` fires; then gives the Lease up.
pub async fn run(
    client: Client,
    election: Election,
    mut desired: watch::Receiver<Vec<(String, Status)>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut lock = Lock {
        api: Api::namespaced(client.clone(), &election.namespace),
        election,
        seen: None,
    };
    let lease = format!("{}/{}", lock.election.namespace, lock.election.name);
    // None until the Lease was first read: a follower says so once too.
    let mut leading: Option<bool> = None;
    // What was last written or found right, by path: written again only
    // when it changes, or at the next recheck.
    let mut done: BTreeMap<String, Vec<Status>> = BTreeMap::new();
    let mut checked = Instant::now();
    // The routes this agent gave an entry, kept across rechecks and
    // leadership changes so that the entry goes when the route leaves.
    let mut routes: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    loop {
        match lock.hold().await {
            Ok(now) if Some(now) != leading => {
                leading = Some(now);
                done.clear();
                if now {
                    tracing::info!(
                        "writing the Gateway API status of the cluster's resources (Lease {lease} \
                         held as {})",
                        lock.election.identity
                    );
                } else {
                    tracing::info!("another agent writes the Gateway API status (Lease {lease})");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("Lease {lease}: {e}; trying again in {RENEW:?}");
            }
        }
        if leading == Some(true) {
            if checked.elapsed() >= RECHECK {
                done.clear();
                checked = Instant::now();
            }
            let all = desired.borrow_and_update().clone();
            let mut by_path: BTreeMap<&str, Vec<&Status>> = BTreeMap::new();
            for (path, s) in &all {
                by_path.entry(path).or_default().push(s);
            }
            for (path, ours) in &by_path {
                let path = *path;
                let want: Vec<Status> = ours.iter().map(|s| (*s).clone()).collect();
                if done.get(path) == Some(&want) {
                    continue;
                }
                let kind = ours[0].resource.kind;
                match write(&client, path, kind, ours).await {
                    Ok(wrote) => {
                        if wrote {
                            let summary: Vec<String> = ours.iter().map(|s| s.to_string()).collect();
                            tracing::info!("status written: {}", summary.join(" "));
                        }
                        done.insert(path.to_string(), want);
                        if kind == Kind::TcpRoute {
                            routes.insert(path.to_string());
                        }
                    }
                    // A conflict is someone else's write in between: the
                    // next round reads it and tries again.
                    Err(e) => tracing::warn!("status of {path} not written: {e}"),
                }
            }
            // A route no longer attached to this gateway's Gateways loses
            // this controller's entries (the spec asks it of the
            // controller that wrote them).
            let gone: Vec<String> = routes
                .iter()
                .filter(|p| !by_path.contains_key(p.as_str()))
                .cloned()
                .collect();
            for path in gone {
                match write(&client, &path, Kind::TcpRoute, &[]).await {
                    Ok(wrote) => {
                        if wrote {
                            tracing::info!("status written: {path}: no longer attached here");
                        }
                        routes.remove(&path);
                        done.remove(&path);
                    }
                    Err(e) => tracing::warn!("status of {path} not written: {e}"),
                }
            }
        }
        tokio::select! {
            _ = desired.changed() => {}
            _ = tokio::time::sleep(RENEW) => {}
            _ = stop.changed() => {
                lock.release().await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_objects() {
        let t = target("/apis/gateway.networking.k8s.io/v1alpha2/namespaces/ns/tcproutes/r")
            .expect("a namespaced path");
        assert_eq!(
            (t.group, t.version, t.namespace, t.plural, t.name),
            (
                "gateway.networking.k8s.io",
                "v1alpha2",
                Some("ns"),
                "tcproutes",
                "r"
            )
        );
        let t = target("/apis/gateway.networking.k8s.io/v1/gatewayclasses/istio")
            .expect("a cluster-scoped path");
        assert_eq!(
            (t.namespace, t.plural, t.name),
            (None, "gatewayclasses", "istio")
        );
        assert!(target("/api/v1/namespaces/ns/services/s").is_none());
    }

    #[test]
    fn a_condition_keeps_its_time_until_it_changes() {
        let c = |status| Condition {
            kind: "Accepted",
            status,
            reason: "Accepted",
            message: String::new(),
        };
        let old = json!([{"type": "Accepted", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}]);
        let kept = conditions(&[c(true)], Some(&old), Some(3));
        assert_eq!(kept[0]["lastTransitionTime"], "2020-01-01T00:00:00Z");
        assert_eq!(kept[0]["observedGeneration"], 3);
        let moved = conditions(&[c(false)], Some(&old), None);
        assert_ne!(moved[0]["lastTransitionTime"], "2020-01-01T00:00:00Z");
        assert!(same(
            &json!({"c": kept}),
            &json!({"c": conditions(&[c(true)], None, Some(3))})
        ));
        assert!(!same(&json!({"c": kept}), &json!({"c": moved})));
    }
}
