//! Errors and warnings, each pointing at the file, the document and the field
//! the user has to change.

use std::{fmt, path::PathBuf, sync::Arc};

/// The kinds this gateway understands: Istio's networking kinds and the
/// Kubernetes Gateway API's TCP ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Gateway,
    VirtualService,
    DestinationRule,
    ServiceEntry,
    WorkloadEntry,
    /// The Gateway API's `Gateway` (gateway.networking.k8s.io).
    KubeGateway,
    TcpRoute,
    ReferenceGrant,
    /// Cluster-scoped: its namespace is empty.
    GatewayClass,
    /// Kubernetes' own Service and EndpointSlice: in file mode, the
    /// backends of TCPRoutes and of VirtualServices' short host names.
    Service,
    EndpointSlice,
}

/// The Gateway API's group.
pub const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::Gateway,
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::KubeGateway,
        Kind::TcpRoute,
        Kind::ReferenceGrant,
        Kind::GatewayClass,
        Kind::Service,
        Kind::EndpointSlice,
    ];

    /// The name in messages and saved state; the Gateway API's Gateway is
    /// qualified with its group, as kubectl does where a kind is ambiguous.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gateway => "Gateway",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::KubeGateway => "Gateway.gateway.networking.k8s.io",
            Kind::TcpRoute => "TCPRoute",
            Kind::ReferenceGrant => "ReferenceGrant",
            Kind::GatewayClass => "GatewayClass",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
        }
    }

    /// The `kind` field of the document.
    pub fn kind_field(self) -> &'static str {
        match self {
            Kind::KubeGateway => "Gateway",
            k => k.as_str(),
        }
    }

    pub fn group(self) -> &'static str {
        match self {
            Kind::KubeGateway | Kind::TcpRoute | Kind::ReferenceGrant | Kind::GatewayClass => {
                GATEWAY_API_GROUP
            }
            Kind::Service => "",
            Kind::EndpointSlice => "discovery.k8s.io",
            _ => "networking.istio.io",
        }
    }

    /// Whether its objects live outside namespaces.
    pub fn cluster_scoped(self) -> bool {
        self == Kind::GatewayClass
    }

    /// The name kubectl prints, e.g. `virtualservice.networking.istio.io`
    /// (`service` for the core group's).
    pub fn resource_name(self) -> String {
        let kind = self.kind_field().to_ascii_lowercase();
        match self.group() {
            "" => kind,
            group => format!("{kind}.{group}"),
        }
    }

    /// A kind as [`Kind::as_str`] writes it.
    pub fn parse(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    /// A document's kind in its API group.
    pub fn of(group: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.group() == group && k.kind_field() == kind)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `kubectl apply` keys a resource by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceId {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ResourceId {
    /// `namespace/name`, the form Istio uses in its own references; the
    /// name alone for a cluster-scoped kind.
    pub fn qualified_name(&self) -> String {
        if self.namespace.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.namespace, self.name)
        }
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.qualified_name())
    }
}

/// Where a document came from: enough for the user to find it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: Arc<str>,
    /// 1-based, counting every `---` separated document of the file.
    pub document: usize,
    /// Unknown when the document could not be read far enough.
    pub id: Option<ResourceId>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file, self.document)?;
        if let Some(id) = &self.id {
            write!(f, " ({id})")?;
        }
        Ok(())
    }
}

/// A 1-based position in the YAML text, as the YAML parser reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// One problem (or warning) about the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub origin: Option<Origin>,
    /// The field path inside the document, e.g. `spec.tcp[0].route[1].weight`;
    /// empty when the problem is about the document as a whole.
    pub field: String,
    pub message: String,
    pub location: Option<Location>,
}

impl Diagnostic {
    pub fn new(
        origin: Option<&Origin>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            origin: origin.cloned(),
            field: field.into(),
            message: message.into(),
            location: None,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(origin) = &self.origin {
            write!(f, "{origin}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)?;
        if let Some(loc) = self.location {
            write!(f, " (line {}, column {})", loc.line, loc.column)?;
        }
        Ok(())
    }
}

/// Why a set of Istio resources was refused. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Every problem found, in document order, so one run fixes them all.
    #[error("{}", Joined(.0))]
    Invalid(Vec<Diagnostic>),
}

struct Joined<'a>(&'a [Diagnostic]);

impl fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Collects errors and warnings while a pass walks the configuration, so
/// the user sees every problem at once rather than one per attempt.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl Report {
    pub fn error(&mut self, origin: &Origin, field: impl Into<String>, message: impl Into<String>) {
        self.errors
            .push(Diagnostic::new(Some(origin), field, message));
    }

    pub fn warn(&mut self, origin: &Origin, field: impl Into<String>, message: impl Into<String>) {
        self.warnings
            .push(Diagnostic::new(Some(origin), field, message));
    }

    /// Several routes can trip over the same resource; say it once.
    pub fn into_result(self) -> Result<Vec<Diagnostic>, ConfigError> {
        if self.errors.is_empty() {
            Ok(dedup(self.warnings))
        } else {
            Err(ConfigError::Invalid(dedup(self.errors)))
        }
    }
}

fn dedup(list: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let mut out: Vec<Diagnostic> = Vec::with_capacity(list.len());
    for d in list {
        if !out.contains(&d) {
            out.push(d);
        }
    }
    out
}
