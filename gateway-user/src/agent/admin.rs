//! The admin socket: how `gateway apply` and `gateway delete` reach the
//! running agent.
//!
//! A Unix stream socket, mode 0600 (root only), one request per
//! connection: the client writes one JSON [`Request`] and shuts its write
//! side; the agent answers one JSON [`Response`] and closes. The client
//! sends the files' text, not their paths: it reads them with its own
//! rights, and the names it gives are the ones errors point at.
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

use super::config::{Controller, Outcome};
use crate::istio::{self, Action, Batch, ConfigError};

/// Largest request the agent reads: far more than any set of manifests.
const MAX_REQUEST: u64 = 64 << 20;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client waits for the answer (the agent does one change at a
/// time, and binding ports or saving state can take a moment).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Apply,
    Delete,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::Apply => "gateway apply",
            Op::Delete => "gateway delete",
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
    pub files: Vec<File>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct File {
    /// As the user named it, for messages.
    pub name: String,
    pub text: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Response {
    /// The error, when nothing was changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// kubectl-style lines: `virtualservice.networking.istio.io/x configured`.
    #[serde(default)]
    pub changes: Vec<String>,
    /// Deletions of resources that were not there.
    #[serde(default)]
    pub not_found: Vec<String>,
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The config generation in force after the change.
    #[serde(default)]
    pub generation: u64,
}

impl Response {
    fn of(outcome: Outcome) -> Response {
        let (not_found, changes): (Vec<_>, Vec<_>) = outcome
            .changes
            .iter()
            .partition(|c| c.action == Action::NotFound);
        Response {
            error: None,
            changes: changes.iter().map(ToString::to_string).collect(),
            not_found: not_found.iter().map(ToString::to_string).collect(),
            warnings: outcome.warnings,
            generation: outcome.generation,
        }
    }

    fn error(e: impl Into<String>) -> Response {
        Response {
            error: Some(e.into()),
            ..Response::default()
        }
    }
}

/// Parses the request's files as one batch, every problem reported.
fn parse(req: &Request) -> Result<Batch, String> {
    let ns = istio::Namespace::from(req.namespace.as_deref());
    let mut batch = Batch::default();
    let mut problems = Vec::new();
    for f in &req.files {
        match istio::parse(&f.text, &f.name, ns) {
            Ok(b) => batch.extend(b),
            Err(ConfigError::Invalid(mut p)) => problems.append(&mut p),
            Err(e) => return Err(e.to_string()),
        }
    }
    if problems.is_empty() {
        Ok(batch)
    } else {
        Err(ConfigError::Invalid(problems).to_string())
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

    pub async fn serve(self, controller: Arc<Mutex<Controller>>) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(handle(stream, controller.clone()));
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

async fn handle(mut stream: UnixStream, controller: Arc<Mutex<Controller>>) {
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
    let mut raw = Vec::new();
    let read = tokio::time::timeout(
        READ_TIMEOUT,
        (&mut stream).take(MAX_REQUEST + 1).read_to_end(&mut raw),
    )
    .await;
    let response = match read {
        Err(_) => Response::error("the request did not arrive in time"),
        Ok(Err(e)) => Response::error(format!("cannot read the request: {e}")),
        Ok(Ok(_)) if raw.len() as u64 > MAX_REQUEST => {
            Response::error(format!("the request is larger than {MAX_REQUEST} bytes"))
        }
        Ok(Ok(_)) => match serde_json::from_slice::<Request>(&raw) {
            Err(e) => Response::error(format!("not a gateway admin request: {e}")),
            Ok(req) => match parse(&req) {
                Err(e) => {
                    tracing::warn!("{} refused: {e}", req.op);
                    Response::error(e)
                }
                Ok(batch) => {
                    let mut c = controller.lock().await;
                    let result = match req.op {
                        Op::Apply => c.apply(batch, req.dry_run).await,
                        Op::Delete => c.delete(batch, req.dry_run).await,
                    };
                    match result {
                        Ok(outcome) => Response::of(outcome),
                        Err(e) => {
                            tracing::warn!("{} refused: {e}", req.op);
                            Response::error(e)
                        }
                    }
                }
            },
        },
    };
    let _ = reply(&mut stream, &response).await;
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
