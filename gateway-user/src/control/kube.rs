//! `--source kubernetes`: the cluster's Istio resources, Services,
//! EndpointSlices and pod labels, watched through kube-rs and served as one
//! more source under the overlay.
//!
//! Each kind is watched with kube-runtime's watcher (list, then watch from
//! the list's resourceVersion, relist after `410 Gone`), retried with a
//! backoff while the API server is away; what was last synced keeps
//! serving meanwhile. A Service becomes a ServiceEntry the resolver already
//! knows (`<name>.<namespace>.svc.cluster.local`, STATIC, one endpoint per
//! ready EndpointSlice address, labelled with its pod's labels), so subsets
//! select pods exactly as Istio's do: the Service's endpoints whose pod
//! carries the subset's labels.
//!
//! The Gateway API's Gateway, TCPRoute and ReferenceGrant are watched the
//! same way, when their CRDs are installed.
//!
//! Istio's CRDs serve each kind at v1, v1beta1 and v1alpha3. A real API
//! server returns every object at every served version; an emulator may
//! keep each at the version it was written with. Every served version is
//! watched and an object seen at several counts once, at the newest.
//!
//! A resource the validator or resolver refuses is skipped and logged (once
//! per distinct problem), and the rest is served.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    api::{Api, ApiResource, DynamicObject},
    core::PartialObjectMeta,
    runtime::{utils::Backoff, watcher, WatchStreamExt as _},
    Client, ResourceExt as _,
};
use rand::Rng as _;
use serde_json::{json, Value};
use tokio::{
    sync::{mpsc, oneshot, Mutex},
    task::JoinSet,
};

use super::{
    controller::{Controller, Source},
    Error,
};
use crate::istio::{
    self,
    services::{self, SERVICE_NAME_LABEL},
    ConfigError, Resource, ResourceId,
};

/// A kind of config watched: its group, resource, kind, and the versions
/// read, newest first (an object seen at several is read at the first).
pub struct ConfigKind {
    pub group: &'static str,
    pub resource: &'static str,
    pub kind: &'static str,
    pub versions: &'static [&'static str],
}

const ISTIO: &str = "networking.istio.io";
const ISTIO_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];
const GATEWAY_API: &str = "gateway.networking.k8s.io";

/// Istio's networking kinds and the Gateway API's TCP ones.
pub const CONFIG_KINDS: [ConfigKind; 9] = [
    ConfigKind {
        group: ISTIO,
        resource: "gateways",
        kind: "Gateway",
        versions: ISTIO_VERSIONS,
    },
    ConfigKind {
        group: ISTIO,
        resource: "virtualservices",
        kind: "VirtualService",
        versions: ISTIO_VERSIONS,
    },
    ConfigKind {
        group: ISTIO,
        resource: "destinationrules",
        kind: "DestinationRule",
        versions: ISTIO_VERSIONS,
    },
    ConfigKind {
        group: ISTIO,
        resource: "serviceentries",
        kind: "ServiceEntry",
        versions: ISTIO_VERSIONS,
    },
    ConfigKind {
        group: ISTIO,
        resource: "workloadentries",
        kind: "WorkloadEntry",
        versions: ISTIO_VERSIONS,
    },
    ConfigKind {
        group: GATEWAY_API,
        resource: "gateways",
        kind: "Gateway",
        versions: &["v1", "v1beta1"],
    },
    ConfigKind {
        group: GATEWAY_API,
        resource: "tcproutes",
        kind: "TCPRoute",
        versions: &["v1", "v1alpha2"],
    },
    ConfigKind {
        group: GATEWAY_API,
        resource: "gatewayclasses",
        kind: "GatewayClass",
        versions: &["v1", "v1beta1"],
    },
    ConfigKind {
        group: GATEWAY_API,
        resource: "referencegrants",
        kind: "ReferenceGrant",
        versions: &["v1", "v1beta1"],
    },
];
/// How long a burst of events is gathered before one resync.
const SETTLE: Duration = Duration::from_millis(100);
/// How often discovery looks again for Istio versions not watched yet (the
/// CRDs may be installed after the gateway).
const REDISCOVER: Duration = Duration::from_secs(30);
/// Resources skipped one by one before a refused sync is given up.
const MAX_SKIPPED: usize = 64;

/// The client: `--kubeconfig` if given, else in-cluster config (the pod's
/// service account), else `$KUBECONFIG` or `~/.kube/config`.
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no Kubernetes client config: not in a pod and no kubeconfig found; pass --kubeconfig",
        )?,
    };
    Client::try_from(config).context("cannot build the Kubernetes client")
}

/// Where a resource read from the cluster says it came from: this, then
/// its API path.
pub const ORIGIN: &str = "kubernetes:";

/// The watches, and the writer of the Gateway API status.
pub struct Watcher {
    watch: tokio::task::JoinHandle<()>,
    status: tokio::task::JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Watcher {
    /// Stops watching; the status writer gives up its Lease first (for at
    /// most a few seconds, if the API server is slow to answer).
    pub async fn stop(self) {
        self.watch.abort();
        let _ = self.watch.await;
        let _ = self.stop.send(true);
        let mut status = self.status;
        if tokio::time::timeout(Duration::from_secs(3), &mut status)
            .await
            .is_err()
        {
            status.abort();
            let _ = status.await;
        }
    }
}

/// Starts watching. `synced` fires once everything discovered at start has
/// been listed and served (or refused) once: the agent is ready then.
pub fn spawn(
    client: Client,
    controller: Arc<Mutex<Controller>>,
    synced: oneshot::Sender<()>,
    gateway_class: &str,
) -> Watcher {
    let (desired_tx, desired_rx) = tokio::sync::watch::channel(Vec::new());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let election = super::status::Election::from_env(&client, gateway_class);
    Watcher {
        status: tokio::spawn(super::status::run(
            client.clone(),
            election,
            desired_rx,
            stopped,
        )),
        watch: tokio::spawn(run(client, controller, synced, desired_tx)),
        stop,
    }
}

/// What a watch is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Watch {
    /// Indices into [`CONFIG_KINDS`] and its versions.
    Config {
        kind: usize,
        version: usize,
    },
    Services,
    Slices,
    Pods,
}

impl fmt::Display for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Watch::Config { kind, version } => {
                let k = &CONFIG_KINDS[kind];
                write!(f, "{}.{}/{}", k.resource, k.group, k.versions[version])
            }
            Watch::Services => f.write_str("services/v1"),
            Watch::Slices => f.write_str("endpointslices.discovery.k8s.io/v1"),
            Watch::Pods => f.write_str("pods/v1 (metadata)"),
        }
    }
}

/// (namespace, name)
type Key = (String, String);
type Labels = BTreeMap<String, String>;

/// What the gateway keeps of each object.
#[derive(Debug, Clone, PartialEq)]
enum Obj {
    /// The document as the parser reads it: apiVersion, kind, metadata
    /// (name, namespace, labels) and spec.
    Istio(Value),
    Service(Svc),
    Slice(Slice),
    Pod(Labels),
}

#[derive(Debug, Clone, PartialEq)]
struct Svc {
    ports: Vec<services::Port>,
}

#[derive(Debug, Clone, PartialEq)]
struct Slice {
    service: String,
    /// Port name → the endpoints' port.
    ports: BTreeMap<String, u16>,
    /// (address, pod name) of the ready endpoints.
    ready: Vec<(String, Option<String>)>,
}

enum Event {
    Init,
    InitApply(Key, Obj),
    InitDone,
    Apply(Key, Obj),
    Delete(Key),
}

struct Update {
    watch: Watch,
    event: Event,
}

#[derive(Default)]
struct WatchState {
    objects: BTreeMap<Key, Obj>,
    /// A list in progress: replaces `objects` when done, so what was
    /// deleted while the watch was down goes too.
    pending: Option<BTreeMap<Key, Obj>>,
    synced: bool,
}

/// Retries a failed watch: 250 ms doubling to 5 s, ±25% so that a
/// DaemonSet's agents do not come back to the API server in step.
struct Retry(Duration);

impl Retry {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(5);
}

impl Iterator for Retry {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let d = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        Some(d.mul_f64(rand::rng().random_range(0.75..1.25)))
    }
}

impl Backoff for Retry {
    fn reset(&mut self) {
        self.0 = Self::FIRST;
    }
}

fn key<K: kube::Resource>(o: &K) -> Key {
    (o.namespace().unwrap_or_default(), o.name_any())
}

/// Forwards one kind's watch events, converted, until the receiver goes.
fn watch<K>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    watch: Watch,
    tx: mpsc::Sender<Update>,
    convert: fn(K) -> Option<Obj>,
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + fmt::Debug + Send + 'static,
{
    tasks.spawn(async move {
        let mut stream = watcher(api, watcher::Config::default())
            .backoff(Retry(Retry::FIRST))
            .boxed();
        let mut failing = false;
        while let Some(item) = stream.next().await {
            let event = match item {
                Err(e) => {
                    if failing {
                        tracing::debug!("watch of {watch}: {e}");
                    } else {
                        tracing::warn!(
                            "watch of {watch} failed ({e}); retrying, still serving what was last seen"
                        );
                        failing = true;
                    }
                    continue;
                }
                Ok(e) => {
                    if failing {
                        tracing::info!("watch of {watch} is back");
                        failing = false;
                    }
                    e
                }
            };
            let event = match event {
                watcher::Event::Init => Event::Init,
                watcher::Event::InitApply(o) => {
                    let k = key(&o);
                    match convert(o) {
                        Some(obj) => Event::InitApply(k, obj),
                        None => continue,
                    }
                }
                watcher::Event::InitDone => Event::InitDone,
                watcher::Event::Apply(o) => {
                    let k = key(&o);
                    match convert(o) {
                        Some(obj) => Event::Apply(k, obj),
                        // Changed into something not served: gone for us.
                        None => Event::Delete(k),
                    }
                }
                watcher::Event::Delete(o) => Event::Delete(key(&o)),
            };
            if tx.send(Update { watch, event }).await.is_err() {
                return;
            }
        }
    });
}

fn istio_doc(o: DynamicObject) -> Option<Obj> {
    let types = o.types.as_ref()?;
    Some(Obj::Istio(json!({
        "apiVersion": types.api_version,
        "kind": types.kind,
        "metadata": {
            "name": o.metadata.name,
            "namespace": o.metadata.namespace,
            "labels": o.metadata.labels,
        },
        "spec": o.data.get("spec").cloned().unwrap_or(Value::Null),
    })))
}

// Read through the same types as Service and EndpointSlice documents in
// files (istio::services), so both follow one set of rules.
fn service(s: Service) -> Option<Obj> {
    let spec = serde_json::to_value(s.spec?).ok()?;
    Some(Obj::Service(Svc {
        ports: services::ports_of_spec(&spec),
    }))
}

fn slice(s: EndpointSlice) -> Option<Obj> {
    let service = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?.clone();
    let (ports, ready) = services::endpoints_of_slice(&serde_json::to_value(&s).ok()?);
    Some(Obj::Slice(Slice {
        service,
        ports,
        ready,
    }))
}

fn pod(p: PartialObjectMeta<Pod>) -> Option<Obj> {
    Some(Obj::Pod(p.metadata.labels.unwrap_or_default()))
}

/// The ServiceEntry standing for Service `ns/name`, its endpoints
/// labelled with their pods' labels.
fn service_entry(
    ns: &str,
    name: &str,
    svc: &Svc,
    slices: &[&Slice],
    pods: &BTreeMap<Key, Obj>,
) -> Value {
    let ready = slices.iter().flat_map(|s| {
        s.ready.iter().map(|(address, pod)| services::Ready {
            address,
            labels: pod
                .as_ref()
                .and_then(|p| match pods.get(&(ns.to_string(), p.clone())) {
                    Some(Obj::Pod(l)) => Some(l.clone()),
                    _ => None,
                })
                .unwrap_or_default(),
            ports: &s.ports,
        })
    });
    services::service_entry(ns, name, &svc.ports, ready)
}

struct World {
    watches: BTreeMap<Watch, WatchState>,
    /// Problems already logged, by the resource's address: each is said
    /// once, and again only when it changes.
    reported: BTreeMap<String, String>,
    /// What was reported in this round of [`World::sync`].
    round: BTreeSet<String>,
}

impl World {
    fn handle(&mut self, u: Update) -> bool {
        let w = self.watches.entry(u.watch).or_default();
        match u.event {
            Event::Init => {
                w.pending = Some(BTreeMap::new());
                false
            }
            Event::InitApply(k, o) => {
                w.pending.get_or_insert_default().insert(k, o);
                false
            }
            Event::InitDone => {
                let fresh = w.pending.take().unwrap_or_default();
                let changed = fresh != w.objects || !w.synced;
                w.objects = fresh;
                w.synced = true;
                changed
            }
            Event::Apply(k, o) => w.objects.insert(k, o.clone()).as_ref() != Some(&o),
            Event::Delete(k) => w.objects.remove(&k).is_some(),
        }
    }

    fn synced(&self) -> bool {
        self.watches.values().all(|w| w.synced)
    }

    fn objects(&self, watch: Watch) -> impl Iterator<Item = (&Key, &Obj)> {
        self.watches
            .get(&watch)
            .into_iter()
            .flat_map(|w| w.objects.iter())
    }

    /// Everything the cluster says now, as resources; what the parser
    /// refuses is left out and logged.
    fn resources(&mut self) -> Vec<Resource> {
        let mut docs: BTreeMap<(usize, &Key), (usize, &Value)> = BTreeMap::new();
        for (watch, state) in &self.watches {
            let Watch::Config { kind, version } = *watch else {
                continue;
            };
            for (k, o) in &state.objects {
                if let Obj::Istio(doc) = o {
                    let e = docs.entry((kind, k)).or_insert((version, doc));
                    if version < e.0 {
                        *e = (version, doc);
                    }
                }
            }
        }
        let mut out: Vec<(String, String, Value)> = docs
            .into_iter()
            .map(|((kind, (ns, name)), (version, doc))| {
                let k = &CONFIG_KINDS[kind];
                let scope = if ns.is_empty() {
                    String::new()
                } else {
                    format!("namespaces/{ns}/")
                };
                let path = format!(
                    "{ORIGIN}/apis/{}/{}/{scope}{}/{name}",
                    k.group, k.versions[version], k.resource
                );
                (path, ns.clone(), doc.clone())
            })
            .collect();

        let no_pods = BTreeMap::new();
        let pods = self
            .watches
            .get(&Watch::Pods)
            .map_or(&no_pods, |w| &w.objects);
        let mut by_service: BTreeMap<Key, Vec<&Slice>> = BTreeMap::new();
        for ((ns, _), o) in self.objects(Watch::Slices) {
            if let Obj::Slice(s) = o {
                by_service
                    .entry((ns.clone(), s.service.clone()))
                    .or_default()
                    .push(s);
            }
        }
        for ((ns, name), o) in self.objects(Watch::Services) {
            let Obj::Service(svc) = o else { continue };
            if svc.ports.is_empty() {
                continue;
            }
            let slices = by_service
                .get(&(ns.clone(), name.clone()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let path = format!("{ORIGIN}/api/v1/namespaces/{ns}/services/{name}");
            out.push((path, ns.clone(), service_entry(ns, name, svc, slices, pods)));
        }

        let mut resources = Vec::new();
        for (path, ns, doc) in out {
            match istio::parse(&doc.to_string(), &path, istio::Namespace::Only(&ns)) {
                Ok(batch) => resources.extend(batch.resources),
                Err(e) => self.report(&path, format!("skipped, not served:\n{e}")),
            }
        }
        resources
    }

    fn report(&mut self, what: &str, problem: String) {
        self.round.insert(what.to_string());
        if self.reported.get(what) != Some(&problem) {
            tracing::warn!("{problem}");
            self.reported.insert(what.to_string(), problem);
        }
    }

    /// Serves what the cluster says now.
    async fn sync(&mut self, controller: &Mutex<Controller>) {
        self.try_sync(controller).await;
        let round = std::mem::take(&mut self.round);
        for p in self.reported.keys().filter(|p| !round.contains(*p)) {
            tracing::info!("{p}: no longer refused");
        }
        self.reported.retain(|p, _| round.contains(p));
    }

    /// Leaves out, one by one, the resources the whole config is refused
    /// for.
    async fn try_sync(&mut self, controller: &Mutex<Controller>) {
        let mut resources = self.resources();
        for _ in 0..MAX_SKIPPED {
            let result = controller
                .lock()
                .await
                .reload_source(Source::Kubernetes, resources.clone())
                .await;
            let diagnostics = match result {
                Ok(_) => return,
                Err(Error::Config(ConfigError::Invalid(d))) => d,
                Err(e) => {
                    self.report("sync", format!("{e}"));
                    return;
                }
            };
            let ours: BTreeSet<ResourceId> = diagnostics
                .iter()
                .filter_map(|d| d.origin.as_ref()?.id.clone())
                .filter(|id| resources.iter().any(|r| &r.id == id))
                .collect();
            if ours.is_empty() {
                let all = diagnostics
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>();
                self.report(
                    "sync",
                    format!(
                        "the cluster's resources conflict with the rest of the config; still \
                         serving the last good one:\n{}",
                        all.join("\n")
                    ),
                );
                return;
            }
            for id in &ours {
                let problems: Vec<String> = diagnostics
                    .iter()
                    .filter(|d| d.origin.as_ref().and_then(|o| o.id.as_ref()) == Some(id))
                    .map(ToString::to_string)
                    .collect();
                if let Some(r) = resources.iter().find(|r| &r.id == id) {
                    let file = r.origin.file.to_string();
                    self.report(
                        &file,
                        format!("skipped, not served:\n{}", problems.join("\n")),
                    );
                }
            }
            resources.retain(|r| !ours.contains(&r.id));
        }
        self.report(
            "sync",
            format!(
                "more than {MAX_SKIPPED} resources refused; still serving the last good config"
            ),
        );
    }
}

/// The config (kind, version) pairs the API server serves now.
async fn discover(client: &Client) -> kube::Result<Vec<(Watch, ApiResource)>> {
    let mut found = Vec::new();
    for group_name in [ISTIO, GATEWAY_API] {
        let group = match kube::discovery::group(client, group_name).await {
            Ok(g) => g,
            Err(kube::Error::Api(s)) if s.code == 404 => continue,
            Err(e) => return Err(e),
        };
        for (kind, k) in CONFIG_KINDS.iter().enumerate() {
            if k.group != group_name {
                continue;
            }
            for (version, v) in k.versions.iter().enumerate() {
                if !group.versions().any(|served| served == *v) {
                    continue;
                }
                if let Some((ar, _)) = group
                    .versioned_resources(v)
                    .into_iter()
                    .find(|(ar, _)| ar.plural == k.resource && ar.kind == k.kind)
                {
                    found.push((Watch::Config { kind, version }, ar));
                }
            }
        }
    }
    Ok(found)
}

async fn run(
    client: Client,
    controller: Arc<Mutex<Controller>>,
    synced: oneshot::Sender<()>,
    status: tokio::sync::watch::Sender<Vec<(String, istio::Status)>>,
) {
    let (tx, mut rx) = mpsc::channel::<Update>(1024);
    let mut tasks = JoinSet::new();
    let mut world = World {
        watches: BTreeMap::new(),
        reported: BTreeMap::new(),
        round: BTreeSet::new(),
    };
    let mut watching: BTreeSet<Watch> = BTreeSet::new();
    let start = |world: &mut World,
                 tasks: &mut JoinSet<()>,
                 found: Vec<(Watch, ApiResource)>,
                 watching: &mut BTreeSet<Watch>| {
        for (w, ar) in found {
            if watching.insert(w) {
                world.watches.entry(w).or_default();
                let api = Api::<DynamicObject>::all_with(client.clone(), &ar);
                watch(tasks, api, w, tx.clone(), istio_doc);
            }
        }
    };

    // Discovery first: without it the Istio kinds are not known. The API
    // server may not answer yet; the agent stays unready until it does.
    let mut retry = Retry(Retry::FIRST);
    let found = loop {
        match discover(&client).await {
            Ok(found) => break found,
            Err(e) => {
                let d = retry.next().unwrap_or(Retry::MAX);
                tracing::warn!("Kubernetes API discovery failed ({e}); trying again in {d:?}");
                tokio::time::sleep(d).await;
            }
        }
    };
    if found.is_empty() {
        tracing::warn!(
            "the API server serves neither {ISTIO} nor {GATEWAY_API} (no Istio or Gateway API \
             CRDs installed; `cargo xtask manifests --crds` has Istio's); watching Services, \
             checking again every {REDISCOVER:?}"
        );
    } else {
        tracing::info!(
            "watching {}",
            found
                .iter()
                .map(|(w, _)| w.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    start(&mut world, &mut tasks, found, &mut watching);
    for w in [Watch::Services, Watch::Slices, Watch::Pods] {
        world.watches.entry(w).or_default();
    }
    watch(
        &mut tasks,
        Api::<Service>::all(client.clone()),
        Watch::Services,
        tx.clone(),
        service,
    );
    watch(
        &mut tasks,
        Api::<EndpointSlice>::all(client.clone()),
        Watch::Slices,
        tx.clone(),
        slice,
    );
    watch(
        &mut tasks,
        Api::<PartialObjectMeta<Pod>>::all(client.clone()),
        Watch::Pods,
        tx.clone(),
        pod,
    );

    let mut synced = Some(synced);
    let mut dirty = false;
    let mut rediscover = tokio::time::interval(REDISCOVER);
    rediscover.tick().await;
    loop {
        let update = if dirty {
            match tokio::time::timeout(SETTLE, rx.recv()).await {
                Ok(u) => u,
                Err(_) => {
                    if world.synced() {
                        world.sync(&controller).await;
                        let now = controller.lock().await.cluster_status();
                        status.send_if_modified(|s| {
                            let changed = *s != now;
                            *s = now;
                            changed
                        });
                        dirty = false;
                        if let Some(s) = synced.take() {
                            let _ = s.send(());
                        }
                    }
                    rx.recv().await
                }
            }
        } else {
            tokio::select! {
                u = rx.recv() => u,
                _ = rediscover.tick() => {
                    if let Ok(found) = discover(&client).await {
                        let new: Vec<_> = found.into_iter().filter(|(w, _)| !watching.contains(w)).collect();
                        if !new.is_empty() {
                            tracing::info!(
                                "now also watching {}",
                                new.iter().map(|(w, _)| w.to_string()).collect::<Vec<_>>().join(", ")
                            );
                            start(&mut world, &mut tasks, new, &mut watching);
                        }
                    }
                    continue;
                }
            }
        };
        let Some(u) = update else { return };
        dirty |= world.handle(u);
    }
}
