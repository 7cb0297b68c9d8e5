//! The admin socket: how `gateway apply` and `gateway delete` reach the
//! running agent, and `gateway inspect` asks what it serves.
//!
//! A Unix stream socket, mode 0600 (root only), one request per
//! connection: the client writes one JSON [`Request`] and shuts its write
//! side; the agent answers one JSON [`Response`] and closes. The client
//! sends the files' text, not their paths: it reads them with its own
//! rights, and the names it gives are the ones errors point at. Errors and
//! warnings travel as lists of diagnostics (file, document, resource,
//! field, message), so a client can show each where it belongs.
use std::{
    io::{Read as _, Write as _},
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{UnixListener, UnixStream},
    sync::Mutex,
};

use super::{Controller, Error, Outcome};
use crate::{
    istio::{self, Action, Batch, ConfigError, Diagnostic, Kind, Location, Origin, ResourceId},
    proxy::{table::RouteView, Runtime},
    telemetry::conns::ConnView,
};

/// Where `gateway run` listens for `gateway apply` and `gateway delete`.
pub const DEFAULT_ADMIN: &str = "/run/gateway/admin.sock";
/// Largest request the agent reads: several files of the most each may
/// hold (`istio::limits::MAX_FILE_BYTES`, 1.5 MiB).
const MAX_REQUEST: u64 = 16 << 20;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; one more is told the agent is busy and
/// closed, rather than left to wait behind a flood.
const MAX_CLIENTS: usize = 1024;
/// What each connection may buffer of its request whatever the others do:
/// far more than an apply of a few files.
const FREE_BYTES: usize = 256 << 10;
/// What all connections may buffer beyond that, together: a few clients
/// sending forever cannot hold more memory than this, nor keep a small
/// request out.
const SHARED_BYTES: usize = 64 << 20;

/// What a client cut off may still send (and the agent drop) before it
/// is closed on.
const DRAIN_BYTES: usize = 4 << 20;

/// Bytes buffered beyond [`FREE_BYTES`], over every connection.
static SHARED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A connection's draw on [`SHARED`], given back when it ends.
struct Draw(usize);

impl Draw {
    /// Takes `n` more bytes from the shared budget, if it has them.
    fn take(&mut self, n: usize) -> bool {
        use std::sync::atomic::Ordering::AcqRel;
        let got = SHARED
            .fetch_update(AcqRel, std::sync::atomic::Ordering::Acquire, |used| {
                (used + n <= SHARED_BYTES).then_some(used + n)
            })
            .is_ok();
        if got {
            self.0 += n;
        }
        got
    }
}

impl Drop for Draw {
    fn drop(&mut self) {
        SHARED.fetch_sub(self.0, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Reads a whole request: at most [`MAX_REQUEST`] bytes, the part beyond
/// [`FREE_BYTES`] drawn from the shared budget.
async fn read_request(stream: &mut UnixStream) -> Result<Vec<u8>, Response> {
    let mut raw = Vec::new();
    let mut draw = Draw(0);
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) => return Ok(raw),
            Ok(n) => n,
            Err(e) => return Err(Response::error(format!("cannot read the request: {e}"))),
        };
        if raw.len() + n > MAX_REQUEST as usize {
            return Err(Response::error(format!(
                "the request is larger than {MAX_REQUEST} bytes"
            )));
        }
        let beyond = (raw.len() + n).saturating_sub(FREE_BYTES.max(raw.len()));
        if beyond > 0 && !draw.take(beyond) {
            return Err(Response::error(
                "busy: other requests hold the memory for large requests; try again",
            ));
        }
        raw.extend_from_slice(&chunk[..n]);
    }
}
/// How long a client waits for the answer (the agent does one change at a
/// time, and binding ports or saving state can take a moment).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Apply,
    Delete,
    /// The live connections (`gateway inspect connections`).
    Connections,
    /// Each port's route and its split (`gateway inspect routes`).
    Routes,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::Apply => "gateway apply",
            Op::Delete => "gateway delete",
            Op::Connections => "gateway inspect connections",
            Op::Routes => "gateway inspect routes",
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub op: Op,
    /// kubectl's `-n`.
    pub namespace: Option<String>,
    /// Check everything (ports included) but change nothing.
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub files: Vec<File>,
}

impl Request {
    /// A question that changes nothing.
    pub fn query(op: Op) -> Request {
        Request {
            op,
            namespace: None,
            dry_run: false,
            files: Vec::new(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct File {
    /// As the user named it, for messages.
    pub name: String,
    pub text: String,
}

/// A [`Diagnostic`] as it crosses the socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// 1-based, counting every document of the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<usize>,
    /// The resource, when the document was read far enough to know it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<Resource>,
    /// The field path inside the document; empty for the whole document.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub field: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl From<&Diagnostic> for Problem {
    fn from(d: &Diagnostic) -> Self {
        let origin = d.origin.as_ref();
        Problem {
            file: origin.map(|o| o.file.to_string()),
            document: origin.map(|o| o.document),
            resource: origin.and_then(|o| o.id.as_ref()).map(|id| Resource {
                kind: id.kind.as_str().to_string(),
                namespace: id.namespace.clone(),
                name: id.name.clone(),
            }),
            field: d.field.clone(),
            message: d.message.clone(),
            line: d.location.map(|l| l.line),
            column: d.location.map(|l| l.column),
        }
    }
}

impl From<&Problem> for Diagnostic {
    fn from(p: &Problem) -> Self {
        let origin = p.file.as_ref().map(|file| Origin {
            file: file.as_str().into(),
            document: p.document.unwrap_or(0),
            id: p.resource.as_ref().and_then(|r| {
                Some(ResourceId {
                    kind: Kind::parse(&r.kind)?,
                    namespace: r.namespace.clone(),
                    name: r.name.clone(),
                })
            }),
        });
        Diagnostic {
            origin,
            field: p.field.clone(),
            message: p.message.clone(),
            location: p
                .line
                .zip(p.column)
                .map(|(line, column)| Location { line, column }),
        }
    }
}

impl std::fmt::Display for Problem {
    /// As the agent's own log shows the diagnostic.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Diagnostic::from(self).fmt(f)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Response {
    /// Why nothing was changed; empty when the change was made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Problem>,
    /// kubectl-style lines: `virtualservice.networking.istio.io/x configured`.
    #[serde(default)]
    pub changes: Vec<String>,
    /// Deletions of resources that were not there.
    #[serde(default)]
    pub not_found: Vec<String>,
    #[serde(default)]
    pub warnings: Vec<Problem>,
    /// The config generation in force after the change.
    #[serde(default)]
    pub generation: u64,
    /// The dataplane in force, with an answer to a query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<Vec<ConnView>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<RouteView>>,
    /// With routes: the Gateway API status, a line per route parent and
    /// Gateway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status: Vec<String>,
}

impl Response {
    fn of(outcome: Outcome) -> Response {
        let (not_found, changes): (Vec<_>, Vec<_>) = outcome
            .changes
            .iter()
            .partition(|c| c.action == Action::NotFound);
        Response {
            errors: Vec::new(),
            changes: changes.iter().map(ToString::to_string).collect(),
            not_found: not_found.iter().map(ToString::to_string).collect(),
            warnings: outcome.warnings.iter().map(Problem::from).collect(),
            generation: outcome.generation,
            ..Response::default()
        }
    }

    /// Refused for a reason that is not about one resource.
    fn error(message: impl Into<String>) -> Response {
        Response::refused(&[Diagnostic::new(None, "", message)])
    }

    fn refused(problems: &[Diagnostic]) -> Response {
        Response {
            errors: problems.iter().map(Problem::from).collect(),
            ..Response::default()
        }
    }
}

/// Parses the request's files as one batch, every problem reported.
pub(crate) fn parse(req: &Request) -> Result<Batch, Error> {
    let ns = istio::Namespace::from(req.namespace.as_deref());
    let mut batch = Batch::default();
    let mut problems = Vec::new();
    for f in &req.files {
        match istio::parse(&f.text, &f.name, ns) {
            Ok(b) => batch.extend(b),
            Err(ConfigError::Invalid(mut p)) => problems.append(&mut p),
            Err(e) => return Err(e.into()),
        }
    }
    if problems.is_empty() {
        Ok(batch)
    } else {
        Err(ConfigError::Invalid(problems).into())
    }
}

/// The listening admin socket; removed when dropped.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
}

impl Server {
    pub fn bind(path: &Path) -> anyhow::Result<Server> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        if path.exists() {
            // A socket nobody answers on is left from an agent that died.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "another gateway agent is running on the admin socket {}",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
        }
        // The socket is created with the umask's mode: make it 0600 from the
        // start, with no moment where others could connect.
        // SAFETY: umask cannot fail; the previous mask is restored below.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener = bound
            .with_context(|| format!("cannot listen on the admin socket {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", path.display()))?;
        Ok(Server {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Answers requests until dropped: changes through `controller` (none
    /// for `gateway forward`, whose table is fixed), questions from `rt`
    /// without waiting for a change in progress.
    pub async fn serve(self, controller: Option<Arc<Mutex<Controller>>>, rt: Arc<Runtime>) {
        let clients = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
        loop {
            match self.listener.accept().await {
                Ok((mut stream, _)) => {
                    use tracing::Instrument as _;
                    let Ok(permit) = clients.clone().try_acquire_owned() else {
                        tokio::spawn(async move {
                            let busy = Response::error(format!(
                                "busy: {MAX_CLIENTS} requests in progress; try again"
                            ));
                            let _ = tokio::time::timeout(
                                Duration::from_secs(1),
                                reply(&mut stream, &busy),
                            )
                            .await;
                        });
                        continue;
                    };
                    // What the change logs is told apart by its request.
                    let span = tracing::info_span!("admin", op = tracing::field::Empty);
                    let (controller, rt) = (controller.clone(), rt.clone());
                    tokio::spawn(
                        async move {
                            handle(stream, controller, rt).await;
                            drop(permit);
                        }
                        .instrument(span),
                    );
                }
                Err(e) => {
                    tracing::warn!("admin socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn handle(
    mut stream: UnixStream,
    controller: Option<Arc<Mutex<Controller>>>,
    rt: Arc<Runtime>,
) {
    // The socket's mode already keeps others out; this also refuses a
    // process that was handed a descriptor to it.
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == 0 || cred.uid() == me => {}
        _ => {
            let _ = reply(&mut stream, &Response::error("permission denied")).await;
            return;
        }
    }
    let read = tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream)).await;
    let request = match read {
        Err(_) => Err(Response::error("the request did not arrive in time")),
        Ok(Err(r)) => {
            // Cut off while still sending: answer, then take in (and drop)
            // what it goes on sending, up to a few MiB for a moment, so that
            // a client that sent a little too much reads the answer rather
            // than a reset; one sending forever is closed on.
            let _ = reply(&mut stream, &r).await;
            let mut sink = vec![0u8; 64 << 10];
            let drain = async {
                let mut left = DRAIN_BYTES;
                while left > 0 {
                    match stream.read(&mut sink).await {
                        Ok(n) if n > 0 => left = left.saturating_sub(n),
                        _ => break,
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
            return;
        }
        Ok(Ok(raw)) => serde_json::from_slice::<Request>(&raw)
            .map_err(|e| Response::error(format!("not a gateway admin request: {e}"))),
    };
    let response = match request {
        Err(r) => r,
        Ok(req) => {
            tracing::Span::current().record("op", tracing::field::display(req.op));
            answer(req, controller.as_deref(), &rt).await
        }
    };
    let _ = reply(&mut stream, &response).await;
}

async fn answer(req: Request, controller: Option<&Mutex<Controller>>, rt: &Runtime) -> Response {
    if matches!(req.op, Op::Connections | Op::Routes) {
        return query(req.op, rt);
    }
    let Some(controller) = controller else {
        return Response::error(format!(
            "{}: this agent's routing is fixed by its command line (gateway forward)",
            req.op
        ));
    };
    // Parsing is bounded (istio::limits) but still CPU work: off the
    // runtime's threads, so signals, file watching and other requests go on.
    let (req, parsed) = tokio::task::spawn_blocking(move || {
        let parsed = parse(&req);
        (req, parsed)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let batch = match parsed {
        Ok(batch) => batch,
        Err(e) => {
            tracing::warn!("{} refused: {e}", req.op);
            return Response::refused(&e.diagnostics());
        }
    };
    let mut c = controller.lock().await;
    let result = match req.op {
        Op::Delete => c.delete(batch, req.dry_run).await,
        _ => c.apply(batch, req.dry_run).await,
    };
    match result {
        Ok(outcome) => Response::of(outcome),
        Err(e) => {
            tracing::warn!("{} refused: {e}", req.op);
            Response::refused(&e.diagnostics())
        }
    }
}

fn query(op: Op, rt: &Runtime) -> Response {
    let table = rt.table();
    let mut r = Response {
        generation: table.generation,
        dataplane: Some(rt.dp.kind().to_string()),
        ..Response::default()
    };
    match op {
        Op::Connections => r.connections = Some(rt.dp.connections()),
        _ => {
            r.routes = Some(table.views());
            r.status = table.status.clone();
        }
    }
    r
}

async fn reply(stream: &mut UnixStream, r: &Response) -> std::io::Result<()> {
    let mut text = serde_json::to_vec(r).map_err(std::io::Error::other)?;
    text.push(b'\n');
    stream.write_all(&text).await?;
    stream.shutdown().await
}

/// Sends `req` to the agent at `path` and returns its answer.
pub fn call(path: &Path, req: &Request) -> anyhow::Result<Response> {
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                " (is `gateway run` running? --admin must match its --admin)"
            }
            std::io::ErrorKind::PermissionDenied => " (the admin socket is root-only)",
            _ => "",
        };
        anyhow::anyhow!(
            "cannot reach the gateway agent at {}: {e}{hint}",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    let text = serde_json::to_vec(req)?;
    s.write_all(&text)
        .and_then(|()| s.shutdown(std::net::Shutdown::Write))
        .with_context(|| format!("cannot send the request to {}", path.display()))?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .with_context(|| format!("no answer from the gateway agent at {}", path.display()))?;
    serde_json::from_slice(&answer).with_context(|| {
        format!(
            "the gateway agent at {} answered something unexpected",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diagnostic_crosses_the_socket_unchanged() {
        let d = Diagnostic {
            origin: Some(Origin {
                file: "vs.yaml".into(),
                document: 2,
                id: Some(ResourceId {
                    kind: Kind::VirtualService,
                    namespace: "default".into(),
                    name: "tcp-echo".into(),
                }),
            }),
            field: "spec.tcp[0].route[1].weight".into(),
            message: "must be between 0 and 100".into(),
            location: Some(Location {
                line: 14,
                column: 17,
            }),
        };
        let wire = serde_json::to_string(&Problem::from(&d)).unwrap_or_default();
        let back: Problem = serde_json::from_str(&wire).unwrap_or_else(|e| panic!("{e}: {wire}"));
        assert_eq!(
            back.resource.as_ref().map(|r| r.kind.as_str()),
            Some("VirtualService")
        );
        assert_eq!(back.field, d.field);
        assert_eq!(Diagnostic::from(&back), d);
        assert_eq!(back.to_string(), d.to_string());
    }

    #[test]
    fn errors_that_are_not_about_a_resource_become_one_diagnostic_per_line() {
        let e = Error::State {
            path: "/var/lib/gateway/state.json".into(),
            problems: vec!["applied[0]: bad".into(), "deleted[1]: unknown kind".into()],
        };
        let list = e.diagnostics();
        assert_eq!(list.len(), 2);
        assert!(list
            .iter()
            .all(|d| d.origin.is_none() && d.field.is_empty()));
        let r = Response::refused(&list);
        let shown: Vec<String> = r.errors.iter().map(ToString::to_string).collect();
        assert_eq!(shown.join("\n"), e.to_string());
    }
}
