//! The access log: one JSON line per closed connection, with the keys of
//! Istio's JSON access log where they apply (Envoy's TCP fields and
//! response flags), plus the dataplane and the bytes that stayed in the
//! kernel.
//!
//! Connections hand their line to a writer thread and go on: a slow disk
//! never holds a connection's task. The queue is bounded; a line that finds
//! it full is dropped and counted, as the log's only way to never grow
//! without bound.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        mpsc, Arc,
    },
};

use serde::Serialize;

/// Lines waiting for the writer before new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// One closed connection.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    pub start_time: &'a str,
    /// Milliseconds from accept to close (Envoy's `%DURATION%`).
    pub duration: u64,
    /// Envoy's TCP response flags (`UF`, `UH`, `NR`, `DT`), `-` for none.
    pub response_flags: &'a str,
    /// Bytes received from the client (Envoy's `%BYTES_RECEIVED%`).
    pub bytes_received: u64,
    /// Bytes sent to the client (`%BYTES_SENT%`).
    pub bytes_sent: u64,
    pub upstream_host: Option<String>,
    pub upstream_cluster: Option<&'a str>,
    pub downstream_remote_address: String,
    pub downstream_local_address: String,
    pub route_name: &'a str,
    /// Why the connection ended, when not both sides closing in turn.
    pub connection_termination_details: Option<String>,
    /// The dataplane that carried it last: `userspace`, `ebpf`, `splice`.
    pub dataplane: &'a str,
    /// Of `bytes_received` and `bytes_sent`, what the verdict moved in the
    /// kernel without the agent reading it.
    pub kernel_bytes_received: u64,
    pub kernel_bytes_sent: u64,
    pub connection_id: u64,
}

pub struct AccessLog {
    tx: mpsc::SyncSender<Msg>,
    pub dropped: Arc<AtomicU64>,
}

enum Msg {
    Line(String),
    /// Write out everything before this, then answer.
    Flush(mpsc::Sender<()>),
}

/// Where the log goes: a file (appended to) or standard output.
#[derive(Debug, Clone)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

impl std::str::FromStr for Target {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(if s == "-" {
            Target::Stdout
        } else {
            Target::File(PathBuf::from(s))
        })
    }
}

impl AccessLog {
    /// Opens `target` and starts the writer.
    pub fn open(target: &Target) -> std::io::Result<AccessLog> {
        let mut out: Box<dyn std::io::Write + Send> = match target {
            Target::Stdout => Box::new(std::io::stdout()),
            Target::File(path) => Box::new(open_append(path)?),
        };
        let (tx, rx) = mpsc::sync_channel::<Msg>(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut buf = std::io::BufWriter::new(&mut out);
                let mut next = rx.recv();
                while let Ok(msg) = next {
                    match msg {
                        Msg::Line(line) => {
                            let _ = buf.write_all(line.as_bytes());
                        }
                        Msg::Flush(done) => {
                            let _ = buf.flush();
                            let _ = done.send(());
                        }
                    }
                    // Written in batches while lines keep coming, flushed
                    // as soon as none waits.
                    next = match rx.try_recv() {
                        Ok(msg) => Ok(msg),
                        Err(_) => {
                            let _ = buf.flush();
                            rx.recv()
                        }
                    };
                }
            })?;
        Ok(AccessLog {
            tx,
            dropped: Arc::default(),
        })
    }

    pub fn write(&self, entry: &Entry<'_>) {
        let mut line = serde_json::to_string(entry).unwrap_or_default();
        line.push('\n');
        if self.tx.try_send(Msg::Line(line)).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }

    /// Waits (up to a second) until every line written so far is out: the
    /// agent calls it before it exits.
    pub fn flush(&self) {
        let (done, wait) = mpsc::channel();
        if self.tx.send(Msg::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(std::time::Duration::from_secs(1));
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}
