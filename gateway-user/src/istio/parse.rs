//! Reading Istio YAML: documents into typed resources, each with where it
//! came from, and the notes about documents that are not Istio's.
use std::sync::Arc;

use super::{
    error::GATEWAY_API_GROUP,
    error::{ConfigError, Diagnostic, Kind, Origin, ResourceId},
    limits, names,
    resources::{
        DestinationRuleSpec, EndpointSliceDoc, Envelope, GatewayClassSpec, GatewaySpec,
        KubeGatewaySpec, KubeTcpRouteSpec, Metadata, ReferenceGrantSpec, ServiceEntrySpec,
        ServiceSpec, SliceEnvelope, VirtualServiceSpec, WorkloadEntrySpec,
    },
    yaml, DEFAULT_NAMESPACE, GROUP, VERSIONS,
};

/// One parsed Istio resource and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub id: ResourceId,
    pub origin: Origin,
    pub api_version: String,
    /// The whole document as read, to tell `unchanged` from `configured`.
    pub(super) content: serde_json::Value,
    pub(super) metadata: Metadata,
    pub(super) spec: Spec,
    /// Made from a Kubernetes Service and its EndpointSlices: its
    /// endpoints are the ready ones of the moment, and none is a state to
    /// serve (refusing connections), not a mistake to refuse.
    pub(super) from_service: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Spec {
    Gateway(GatewaySpec),
    VirtualService(VirtualServiceSpec),
    // Boxed: by far the largest spec.
    DestinationRule(Box<DestinationRuleSpec>),
    ServiceEntry(ServiceEntrySpec),
    WorkloadEntry(WorkloadEntrySpec),
    KubeGateway(KubeGatewaySpec),
    TcpRoute(KubeTcpRouteSpec),
    ReferenceGrant(ReferenceGrantSpec),
    GatewayClass(GatewayClassSpec),
    Service(ServiceSpec),
    EndpointSlice(EndpointSliceDoc),
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
    // Before the parser, whose time can grow with the square of nesting.
    if let Err(e) = limits::check(text) {
        return Err(ConfigError::Invalid(vec![Diagnostic {
            origin: Some(Origin {
                file,
                document: e.document,
                id: None,
            }),
            field: String::new(),
            message: format!("refused before parsing: {}", e.message),
            location: e.at.map(|(line, column)| super::Location { line, column }),
        }]));
    }
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

    if group == GATEWAY_API_GROUP {
        let served: &[&str] = match kind_name.as_str() {
            "Gateway" => &["v1", "v1beta1"],
            "TCPRoute" => &["v1", "v1alpha2"],
            "ReferenceGrant" => &["v1", "v1beta1", "v1alpha2"],
            "GatewayClass" => &["v1", "v1beta1"],
            _ => {
                return Ok(Read::Skipped(Some(Diagnostic::new(
                    Some(origin),
                    "",
                    format!(
                        "{kind_name} {meta_name} ({api_version}) is not served by this gateway \
                         (TCP only: GatewayClass, Gateway, TCPRoute, ReferenceGrant); skipped"
                    ),
                ))))
            }
        };
        if !served.contains(&version) {
            return Err(one(
                origin,
                "apiVersion",
                format!(
                    "{api_version} does not serve {kind_name}; use {}",
                    served
                        .iter()
                        .map(|v| format!("{GATEWAY_API_GROUP}/{v}"))
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            ));
        }
    } else if let Some((kind, served)) = match (group, kind_name.as_str()) {
        ("", "Service") => Some(("Service", "v1")),
        ("discovery.k8s.io", "EndpointSlice") => Some(("EndpointSlice", "discovery.k8s.io/v1")),
        _ => None,
    } {
        if api_version != served {
            return Err(one(
                origin,
                "apiVersion",
                format!("{api_version} does not serve {kind}; use {served}"),
            ));
        }
    } else if group != GROUP {
        let message = if group.ends_with(".istio.io") {
            // An AuthorizationPolicy the user expects to protect the
            // gateway must not pass silently.
            format!(
                "{kind_name} {meta_name} ({api_version}) is not enforced by this gateway; skipped"
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
    if group == GROUP && !VERSIONS.contains(&version) {
        return Err(one(
            origin,
            "apiVersion",
            format!("{api_version} is not served; use {GROUP}/v1, v1beta1 or v1alpha3"),
        ));
    }
    let Some(kind) = Kind::of(group, &kind_name) else {
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
    let provisional_ns = if kind.cluster_scoped() {
        String::new()
    } else {
        obj.get("metadata")
            .and_then(|m| m.get("namespace"))
            .and_then(|n| n.as_str())
            .unwrap_or(fallback_ns)
            .to_string()
    };
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
        Kind::KubeGateway => {
            let e: Envelope<KubeGatewaySpec> = doc.decode().map_err(|e| decode_err(origin, e))?;
            match e.spec {
                Some(s) => (e.metadata, Spec::KubeGateway(s)),
                None => {
                    return Err(one(
                        origin,
                        "spec",
                        "spec.gatewayClassName is required".into(),
                    ))
                }
            }
        }
        Kind::TcpRoute => {
            let e: Envelope<KubeTcpRouteSpec> = doc.decode().map_err(|e| decode_err(origin, e))?;
            (e.metadata, Spec::TcpRoute(e.spec.unwrap_or_default()))
        }
        Kind::ReferenceGrant => {
            let e: Envelope<ReferenceGrantSpec> =
                doc.decode().map_err(|e| decode_err(origin, e))?;
            (e.metadata, Spec::ReferenceGrant(e.spec.unwrap_or_default()))
        }
        Kind::GatewayClass => {
            let e: Envelope<GatewayClassSpec> = doc.decode().map_err(|e| decode_err(origin, e))?;
            match e.spec {
                Some(s) => (e.metadata, Spec::GatewayClass(s)),
                None => {
                    return Err(one(
                        origin,
                        "spec",
                        "spec.controllerName is required".into(),
                    ))
                }
            }
        }
        Kind::Service => {
            let e: Envelope<ServiceSpec> = doc.decode().map_err(|e| decode_err(origin, e))?;
            (e.metadata, Spec::Service(e.spec.unwrap_or_default()))
        }
        Kind::EndpointSlice => {
            let e: SliceEnvelope = doc.decode().map_err(|e| decode_err(origin, e))?;
            (e.metadata, Spec::EndpointSlice(e.slice))
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
    if let Err(why) = names::dns1123_subdomain(&name) {
        return Err(one(origin, "metadata.name", why));
    }
    // A cluster-scoped object has no namespace; the API server drops one
    // written in its metadata, and kubectl ignores -n for it.
    let ns = match (&metadata.namespace, namespace) {
        _ if kind.cluster_scoped() => String::new(),
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
    if let Err(why) = names::dns1123_label(&ns).or_else(|e| {
        if kind.cluster_scoped() {
            Ok(())
        } else {
            Err(e)
        }
    }) {
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
        from_service: false,
    })))
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
