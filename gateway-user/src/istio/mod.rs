//! Istio networking configuration → a validated TCP routing snapshot.
//!
//! The user applies Istio's own YAML (Gateway, VirtualService,
//! DestinationRule, ServiceEntry, WorkloadEntry) as they would with
//! `kubectl apply -n NAMESPACE -f FILE`; this module turns the applied set
//! into the listeners, routes and clusters the data path runs. It is pure:
//! no sockets, no BPF, no clock, no DNS.
//!
//! Lifecycle: [`parse`] or [`load_paths`] read files into a [`Batch`];
//! [`Store::apply`] / [`Store::delete`] return a new store together with its
//! [`Snapshot`], or an error and nothing changed (the caller keeps the old
//! store), so a bad file never takes a working gateway down.

mod error;
mod model;
mod resolve;
mod validate;
mod yaml;

#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

pub use error::{ConfigError, Diagnostic, Kind, Origin, ResourceId};

use model::{
    DestinationRuleSpec, Envelope, GatewaySpec, Metadata, ServiceEntrySpec, VirtualServiceSpec,
    WorkloadEntrySpec,
};

const GROUP: &str = "networking.istio.io";
const VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];
/// kubectl's namespace when neither `-n` nor the document names one.
pub const DEFAULT_NAMESPACE: &str = "default";

// ------------------------------------------------------------- the output

/// Everything the data path needs, fully resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// One per served port, sorted by port.
    pub listeners: Vec<Listener>,
    /// Unsupported-but-harmless settings and other things worth a look.
    pub warnings: Vec<Diagnostic>,
}

/// A TCP port the gateway accepts connections on.
///
/// A gateway evaluates TCP matches statically (Istio matches only the
/// server port and the gateway name there, see `l4SingleMatch` in
/// pilot/pkg/networking/core/gateway.go), so the first matching route is
/// already chosen here and there is exactly one per listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub port: u16,
    /// The Gateway that declared it, `namespace/name`.
    pub gateway: String,
    /// Where that Gateway came from and which of its `spec.servers` this
    /// is, so a port the system refuses can be blamed on the right field.
    pub origin: Origin,
    pub server: usize,
    pub route: TcpRoute,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpRoute {
    /// The VirtualService it came from, `namespace/name`.
    pub virtual_service: String,
    /// Index of the rule in the VirtualService's `spec.tcp`.
    pub rule: usize,
    /// Never empty; weights are relative (a connection goes to a
    /// destination with probability weight / sum of weights).
    pub destinations: Vec<WeightedCluster>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedCluster {
    pub weight: u32,
    pub cluster: Arc<Cluster>,
}

/// A set of endpoints plus how to use them, named like Envoy's clusters so
/// logs and stats read the same as Istio's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// `outbound|PORT|SUBSET|HOST`, e.g. `outbound|9000|v1|tcp-echo.ns.svc.cluster.local`.
    pub name: String,
    /// Never empty.
    pub endpoints: Vec<Endpoint>,
    pub lb: LbPolicy,
    /// `connectionPool.tcp.connectTimeout`; Istio's default is 10s.
    pub connect_timeout: Duration,
    /// `connectionPool.tcp.idleTimeout`; `None` means no idle timeout (the
    /// user wrote `0s`). Istio's default when unset is 1h.
    pub idle_timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: Address,
    pub port: u16,
    /// Relative load-balancing weight, at least 1.
    pub weight: u32,
    pub labels: BTreeMap<String, String>,
}

/// Where an endpoint is. DNS names (ServiceEntry `resolution: DNS`) are
/// kept as names and resolved when connecting, as Envoy's STRICT_DNS does.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Address {
    Ip(IpAddr),
    Dns(String),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Ip(ip) => write!(f, "{ip}"),
            Address::Dns(name) => f.write_str(name),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    /// Istio's default (`UNSPECIFIED`), and what `LEAST_CONN` now means.
    LeastRequest,
    Random,
}

/// Istio's defaults for what a DestinationRule leaves out.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

// ------------------------------------------------------------- the input

/// Who this gateway is, as Istio would see its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// Matched against each Gateway's `spec.selector`.
    pub labels: BTreeMap<String, String>,
    /// The namespace the gateway "runs in", for `exportTo` visibility.
    pub namespace: String,
    /// Ports a Gateway may not claim, with what holds them (e.g. a metrics
    /// endpoint), so the error can say why.
    pub reserved_ports: BTreeMap<u16, String>,
}

impl Default for Agent {
    /// Istio's default ingress gateway: `istio=ingressgateway` in `istio-system`.
    fn default() -> Self {
        Agent {
            labels: BTreeMap::from([("istio".to_string(), "ingressgateway".to_string())]),
            namespace: "istio-system".to_string(),
            reserved_ports: BTreeMap::new(),
        }
    }
}

/// One parsed Istio resource and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub id: ResourceId,
    pub origin: Origin,
    pub api_version: String,
    /// The whole document as read, to tell `unchanged` from `configured`.
    content: serde_json::Value,
    metadata: Metadata,
    spec: Spec,
}

#[derive(Debug, Clone, PartialEq)]
enum Spec {
    Gateway(GatewaySpec),
    VirtualService(VirtualServiceSpec),
    // Boxed: by far the largest spec.
    DestinationRule(Box<DestinationRuleSpec>),
    ServiceEntry(ServiceEntrySpec),
    WorkloadEntry(WorkloadEntrySpec),
}

/// What one or more files held: the Istio resources, plus notes about the
/// documents that were skipped (Kubernetes kinds and the like).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub resources: Vec<Resource>,
    pub notes: Vec<Diagnostic>,
}

impl Batch {
    pub fn extend(&mut self, other: Batch) {
        self.resources.extend(other.resources);
        self.notes.extend(other.notes);
    }
}

/// Which namespace documents without `metadata.namespace` land in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace<'a> {
    /// kubectl's `-n`: documents without a namespace get it, and a document
    /// naming a different one is refused, as kubectl does.
    Only(&'a str),
    /// A default for documents without one; others keep theirs (`gateway
    /// run --namespace`, where a directory may mix namespaces).
    Default(&'a str),
}

impl<'a> From<Option<&'a str>> for Namespace<'a> {
    /// `-n` if given, else kubectl's [`DEFAULT_NAMESPACE`].
    fn from(n: Option<&'a str>) -> Self {
        n.map_or(Namespace::Default(DEFAULT_NAMESPACE), Namespace::Only)
    }
}

/// Reads one YAML file (any number of `---` separated documents).
///
/// `namespace` is usually kubectl's `-n` as an `Option` (see [`Namespace`]):
/// documents without `metadata.namespace` get it, and a document naming a
/// different one is refused. Without it, documents default to
/// [`DEFAULT_NAMESPACE`].
pub fn parse<'a>(
    text: &str,
    file: &str,
    namespace: impl Into<Namespace<'a>>,
) -> Result<Batch, ConfigError> {
    let namespace = namespace.into();
    let file: Arc<str> = Arc::from(file);
    let mut errors = Vec::new();
    let mut batch = Batch::default();

    // First pass: the untyped documents. A syntax error ends the stream,
    // since nothing after it can be trusted to be split correctly.
    let mut heads = Vec::new();
    for (i, doc) in yaml::documents(text).enumerate() {
        match doc.decode::<serde_json::Value>() {
            Ok(v) => heads.push(v),
            Err(e) => {
                let origin = Origin {
                    file: file.clone(),
                    document: i + 1,
                    id: None,
                };
                // Past a syntax error the parser's path is a guess; the
                // line and column are the real pointer.
                return Err(ConfigError::Invalid(vec![Diagnostic {
                    origin: Some(origin),
                    field: String::new(),
                    message: format!("malformed YAML: {}", e.message),
                    location: e.location,
                }]));
            }
        }
    }

    for ((i, doc), head) in yaml::documents(text).enumerate().zip(heads) {
        let mut origin = Origin {
            file: file.clone(),
            document: i + 1,
            id: None,
        };
        match read_document(doc, head, &mut origin, namespace) {
            Ok(Read::Resource(r)) => batch.resources.push(*r),
            Ok(Read::Skipped(note)) => batch.notes.extend(note),
            Err(mut problems) => errors.append(&mut problems),
        }
    }
    if errors.is_empty() {
        Ok(batch)
    } else {
        Err(ConfigError::Invalid(errors))
    }
}

/// Reads files and directories as `kubectl apply -f` does: a directory
/// contributes its `*.yaml`, `*.yml` and `*.json` files (not recursively), in
/// name order. Problems in every file are reported together.
pub fn load_paths<'a>(
    paths: &[PathBuf],
    namespace: impl Into<Namespace<'a>>,
) -> Result<Batch, ConfigError> {
    let namespace = namespace.into();
    let files = manifest_files(paths)?;
    let mut batch = Batch::default();
    let mut problems = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::Read {
            path: file.clone(),
            source,
        })?;
        match parse(&text, &file.display().to_string(), namespace) {
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

enum Read {
    Resource(Box<Resource>),
    Skipped(Option<Diagnostic>),
}

fn read_document(
    doc: yaml::Document<'_>,
    head: serde_json::Value,
    origin: &mut Origin,
    namespace: Namespace<'_>,
) -> Result<Read, Vec<Diagnostic>> {
    let one = |origin: &Origin, field: &str, message: String| {
        vec![Diagnostic::new(Some(origin), field, message)]
    };
    let obj = match &head {
        serde_json::Value::Null => return Ok(Read::Skipped(None)),
        serde_json::Value::Object(obj) => obj,
        _ => {
            return Err(one(
                origin,
                "",
                "a document must be a mapping with apiVersion, kind, metadata and spec".into(),
            ))
        }
    };
    let string_field = |name: &str| -> Result<String, Vec<Diagnostic>> {
        match obj.get(name) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            None | Some(serde_json::Value::Null) => {
                Err(one(origin, name, format!("{name} is required")))
            }
            Some(other) => Err(one(
                origin,
                name,
                format!("expected a string, found {other}"),
            )),
        }
    };
    let api_version = string_field("apiVersion")?;
    let kind_name = string_field("kind")?;
    let meta_name = obj
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("")
        .to_string();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));

    if group != GROUP {
        let message = if group.ends_with(".istio.io") {
            // An AuthorizationPolicy the user expects to protect the
            // gateway must not pass silently.
            format!(
                "{kind_name} {meta_name} ({api_version}) is not enforced by this gateway; skipped"
            )
        } else if kind_name == "Service" && group.is_empty() {
            format!(
                "skipped Kubernetes Service {meta_name}: without a cluster, endpoints come from \
                 a ServiceEntry (inline endpoints or WorkloadEntries)"
            )
        } else {
            format!(
                "skipped {kind_name} {meta_name} ({api_version}): not an Istio networking resource"
            )
        };
        return Ok(Read::Skipped(Some(Diagnostic::new(
            Some(origin),
            "",
            message,
        ))));
    }
    if !VERSIONS.contains(&version) {
        return Err(one(
            origin,
            "apiVersion",
            format!("{api_version} is not served; use {GROUP}/v1, v1beta1 or v1alpha3"),
        ));
    }
    let Some(kind) = Kind::parse(&kind_name) else {
        let message = match kind_name.as_str() {
            "Sidecar" | "EnvoyFilter" | "WorkloadGroup" | "ProxyConfig" => {
                format!("{kind_name} {meta_name} is not supported by this gateway; skipped")
            }
            _ => {
                return Err(one(
                    origin,
                    "kind",
                    format!(
                        "unknown kind {kind_name:?} in {api_version} (known: Gateway, \
                         VirtualService, DestinationRule, ServiceEntry, WorkloadEntry)"
                    ),
                ))
            }
        };
        return Ok(Read::Skipped(Some(Diagnostic::new(
            Some(origin),
            "",
            message,
        ))));
    };

    let decode_err = |origin: &Origin, e: yaml::DecodeError| {
        vec![Diagnostic {
            origin: Some(origin.clone()),
            field: e.path,
            message: e.message,
            location: e.location,
        }]
    };
    let (Namespace::Only(fallback_ns) | Namespace::Default(fallback_ns)) = namespace;
    // Name the resource in messages as early as its metadata allows.
    let provisional_ns = obj
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(|n| n.as_str())
        .unwrap_or(fallback_ns)
        .to_string();
    if !meta_name.is_empty() {
        origin.id = Some(ResourceId {
            kind,
            namespace: provisional_ns,
            name: meta_name.clone(),
        });
    }
    let (metadata, spec) = match kind {
        Kind::Gateway => {
            let e: Envelope<GatewaySpec> = doc.decode().map_err(|e| decode_err(origin, e))?;
            (e.metadata, Spec::Gateway(e.spec.unwrap_or_default()))
        }
        Kind::VirtualService => {
            let e: Envelope<VirtualServiceSpec> =
                doc.decode().map_err(|e| decode_err(origin, e))?;
            (e.metadata, Spec::VirtualService(e.spec.unwrap_or_default()))
        }
        Kind::DestinationRule => {
            let e: Envelope<DestinationRuleSpec> =
                doc.decode().map_err(|e| decode_err(origin, e))?;
            match e.spec {
                Some(s) => (e.metadata, Spec::DestinationRule(Box::new(s))),
                None => return Err(one(origin, "spec", "spec.host is required".into())),
            }
        }
        Kind::ServiceEntry => {
            let e: Envelope<ServiceEntrySpec> = doc.decode().map_err(|e| decode_err(origin, e))?;
            match e.spec {
                Some(s) => (e.metadata, Spec::ServiceEntry(s)),
                None => return Err(one(origin, "spec", "spec.hosts is required".into())),
            }
        }
        Kind::WorkloadEntry => {
            let e: Envelope<WorkloadEntrySpec> = doc.decode().map_err(|e| decode_err(origin, e))?;
            (e.metadata, Spec::WorkloadEntry(e.spec.unwrap_or_default()))
        }
    };

    let name = match (&metadata.name, &metadata.generate_name) {
        (Some(n), _) if !n.is_empty() => n.clone(),
        (_, Some(_)) => {
            return Err(one(
                origin,
                "metadata.generateName",
                "generateName is not supported by apply; set metadata.name".into(),
            ))
        }
        _ => {
            return Err(one(
                origin,
                "metadata.name",
                "metadata.name is required".into(),
            ))
        }
    };
    if let Err(why) = validate::dns1123_subdomain(&name) {
        return Err(one(origin, "metadata.name", why));
    }
    let ns = match (&metadata.namespace, namespace) {
        (Some(doc_ns), Namespace::Only(flag)) if doc_ns != flag => {
            return Err(one(
                origin,
                "metadata.namespace",
                format!(
                    "the document's namespace {doc_ns:?} does not match the requested namespace \
                     {flag:?} (kubectl refuses this too)"
                ),
            ))
        }
        (Some(doc_ns), _) => doc_ns.clone(),
        (None, _) => fallback_ns.to_string(),
    };
    if let Err(why) = validate::dns1123_label(&ns) {
        return Err(one(origin, "metadata.namespace", why));
    }
    let id = ResourceId {
        kind,
        namespace: ns,
        name,
    };
    origin.id = Some(id.clone());
    let mut content = head;
    if let serde_json::Value::Object(o) = &mut content {
        // Status is written by controllers, not by the user.
        o.remove("status");
    }
    Ok(Read::Resource(Box::new(Resource {
        id,
        origin: origin.clone(),
        api_version,
        content,
        metadata,
        spec,
    })))
}

// ------------------------------------------------------------- the store

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

impl Resource {
    pub fn namespace(&self) -> &str {
        &self.id.namespace
    }

    /// The document as it was read (without `status`), to store it and
    /// read it again later.
    pub fn content(&self) -> &serde_json::Value {
        &self.content
    }
}
