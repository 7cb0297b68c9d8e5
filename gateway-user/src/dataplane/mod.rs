//! How a connection's bytes move once the agent has both sockets.
//!
//! Every dataplane gives the same guarantees as one TCP connection: each byte
//! arrives once and in order, each direction closes on its own (a FIN follows
//! every byte sent before it), and a reset on one side resets the other.
mod auto;
mod copy;
mod ebpf;
mod end;
mod options;
mod probe;
mod splice;

use std::{fmt, sync::Arc};

use tokio::net::TcpStream;

pub use crate::bpf::Kernel;
use crate::telemetry::{
    conns::{Entry, Live, Path, Registry},
    Stats,
};
use auto::PROMOTE;
pub use end::End;
use end::{end_of, is_peer_gone, reset_both};
pub use options::{BulkPath, Choice, DataplaneArgs, Options};

/// The dataplane in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Every connection in the kernel from its first byte.
    Ebpf,
    /// Copy first; the kernel once a connection proves long-lived, splice
    /// (or the kernel, `--bulk-path ebpf`) once it proves bulk.
    Adaptive,
    Splice,
    Userspace,
}

/// The short name (`ebpf`, `auto`, ...); `{:#}` says what `auto` does.
impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Adaptive if f.alternate() => write!(
                f,
                "auto (each connection starts on the copy path; after {} reads it moves into the \
                 kernel, ebpf; after {} KiB, to splice)",
                PROMOTE.reads,
                PROMOTE.bytes / 1024
            ),
            _ => f.write_str(match self {
                Kind::Ebpf => "ebpf",
                Kind::Adaptive => "auto",
                Kind::Splice => "splice",
                Kind::Userspace => "userspace",
            }),
        }
    }
}

#[derive(Clone)]
pub struct Dataplane {
    kind: Kind,
    kernel: Option<Arc<Kernel>>,
    opts: Options,
    stats: Arc<Stats>,
    conns: Arc<Registry>,
}

/// The kernel path does not work on this kernel.
#[derive(Debug, thiserror::Error)]
#[error("the ebpf dataplane failed its start-up check on Linux {release} ({why}); --dataplane splice works everywhere")]
pub struct CheckFailed {
    release: String,
    why: String,
}

impl Dataplane {
    /// Resolves `choice` into a working dataplane, loading the programs when
    /// it involves ebpf.
    fn new(
        choice: Choice,
        opts: Options,
        stats: Arc<Stats>,
        pin_dir: Option<&std::path::Path>,
    ) -> Result<Self, crate::bpf::LoadError> {
        let (kind, mut kernel) = match choice {
            Choice::Ebpf => (Kind::Ebpf, Some(Kernel::load(opts.max_sockets, pin_dir)?)),
            Choice::Auto => match Kernel::load(opts.max_sockets, pin_dir) {
                Ok(k) => (Kind::Adaptive, Some(k)),
                Err(e @ crate::bpf::LoadError::Busy(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!("ebpf dataplane unavailable, using splice: {e}");
                    (Kind::Splice, None)
                }
            },
            Choice::Splice => (Kind::Splice, None),
            Choice::Userspace => (Kind::Userspace, None),
        };
        if opts.bpf_stats {
            match kernel.as_mut() {
                // Asked for and refused: an error, in `auto` too.
                Some(k) => k.time_runs()?,
                None => tracing::warn!(
                    "--bpf-stats has no effect: dataplane {kind} runs no BPF program"
                ),
            }
        }
        Ok(Self {
            kind,
            kernel: kernel.map(Arc::new),
            opts,
            stats,
            conns: Arc::default(),
        })
    }

    /// The dataplane `args` ask for, loaded and checked on this kernel: what
    /// `gateway forward` and `gateway run` serve with.
    pub async fn start(args: &DataplaneArgs, stats: Arc<Stats>) -> anyhow::Result<Self> {
        let mut dp = Self::new(
            args.dataplane,
            args.options(),
            stats,
            args.pin_dir().as_deref(),
        )?;
        dp.check(args.dataplane).await?;
        if let Some(logger) = dp.kernel().and_then(Kernel::take_logger) {
            tokio::spawn(read_verdict_log(logger));
        }
        Ok(dp)
    }

    /// Checks the kernel path on this kernel before it serves anyone (see
    /// `probe`). If it fails, `auto` falls back to splice with one line
    /// saying why; an explicit `ebpf` is an error.
    async fn check(&mut self, choice: Choice) -> Result<(), CheckFailed> {
        let Some(kernel) = self.kernel.clone() else {
            return Ok(());
        };
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        match probe::check(self).await {
            Ok(()) => {
                tracing::debug!("ebpf dataplane passed its start-up check on Linux {release}");
                kernel.rebase();
                kernel.checked();
                Ok(())
            }
            Err(probe::Outcome::Unavailable(why)) => {
                tracing::warn!("ebpf dataplane start-up check skipped: {why}");
                kernel.rebase();
                Ok(())
            }
            Err(probe::Outcome::Failed(why)) if choice == Choice::Auto => {
                tracing::warn!(
                    "ebpf dataplane failed its start-up check on Linux {release} ({why}): using splice"
                );
                self.kind = Kind::Splice;
                self.kernel = None;
                Ok(())
            }
            Err(probe::Outcome::Failed(why)) => Err(CheckFailed { release, why }),
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn kernel(&self) -> Option<&Kernel> {
        self.kernel.as_deref()
    }

    pub fn conns(&self) -> &Arc<Registry> {
        &self.conns
    }

    /// Every live connection, its kernel bytes read from the flow maps now.
    pub fn connections(&self) -> Vec<crate::telemetry::conns::ConnView> {
        let kernel = self.kernel.as_deref();
        self.conns
            .views(|cookie| kernel.and_then(|k| k.flow(cookie)).map(|f| f.redirected))
    }

    /// Moves bytes both ways between `client` and `backend` until both
    /// directions are closed, then closes both sockets.
    ///
    /// Every connection's task holds this future from accept to close, so
    /// the paths a connection may move to (the kernel path, splice) are
    /// boxed: allocated only when it takes them, not carried by all.
    /// What it moves is counted in `live`'s meter.
    pub async fn relay(&self, client: TcpStream, backend: TcpStream, live: &Arc<Live>) -> End {
        use std::os::fd::AsRawFd as _;
        let entry = self
            .conns
            .hold(live, client.as_raw_fd(), backend.as_raw_fd());
        let end = match (&self.kind, &self.kernel) {
            (Kind::Ebpf, Some(kernel)) => {
                Box::pin(self.in_kernel(kernel, client, backend, entry, ebpf::Before::default()))
                    .await
            }
            (Kind::Adaptive, Some(kernel)) => self.adaptive(kernel, client, backend, entry).await,
            (Kind::Userspace, _) => {
                Stats::inc(&self.stats.dataplane_userspace);
                entry.meter().set_path(Path::Copy);
                let result =
                    match copy::run(&self.stats, entry.meter(), &client, &backend, None).await {
                        copy::Outcome::Ended(result) => result,
                        copy::Outcome::Promote { .. } => unreachable!("no promotion asked for"),
                    };
                end_of(result, client, backend, entry)
            }
            _ => {
                Stats::inc(&self.stats.dataplane_splice);
                self.spliced(client, backend, entry).await
            }
        };
        // Logged by the caller, which knows the connection: keeping it
        // here across the await would make every connection's task bigger.
        Stats::inc(match &end {
            End::Completed => &self.stats.connections_completed,
            End::Reset(_) => &self.stats.connections_reset,
            End::Aborted(_) => &self.stats.connections_aborted,
        });
        end
    }
}

/// Prints what the verdict logs, as it comes, until the agent exits.
async fn read_verdict_log(logger: crate::bpf::Logger) {
    struct Fd(crate::bpf::Logger);
    impl std::os::fd::AsRawFd for Fd {
        fn as_raw_fd(&self) -> std::os::fd::RawFd {
            use std::os::fd::AsFd as _;
            self.0.as_fd().as_raw_fd()
        }
    }
    // SAFETY: the logger owns its ring buffer's descriptor, which nothing
    // closes or replaces while the AsyncFd holds it.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(Fd(logger), tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e.into_parts().1, "the verdict's log cannot be read");
            return;
        }
    };
    loop {
        let Ok(mut ready) = fd.readable_mut().await else {
            return;
        };
        ready.get_inner_mut().0.flush();
        ready.clear_ready();
    }
}

impl Dataplane {
    /// The connection on splice, boxed (see `relay`).
    fn spliced(
        &self,
        client: TcpStream,
        backend: TcpStream,
        entry: Entry,
    ) -> std::pin::Pin<Box<impl std::future::Future<Output = End> + '_>> {
        Box::pin(splice::relay(
            &self.stats,
            self.opts.pipe_bytes,
            client,
            backend,
            entry,
        ))
    }

    /// Runs a connection in the kernel, after what `before` says happened
    /// on the copy path. A connection the maps refuse runs on splice.
    async fn in_kernel(
        &self,
        kernel: &Kernel,
        client: TcpStream,
        backend: TcpStream,
        entry: Entry,
        before: ebpf::Before,
    ) -> End {
        match ebpf::relay(
            kernel,
            &self.opts,
            &self.stats,
            client,
            backend,
            entry,
            before,
        )
        .await
        {
            Ok(end) => {
                Stats::inc(&self.stats.dataplane_ebpf);
                end
            }
            Err((e, client, backend, entry)) => {
                tracing::debug!(conn = entry.id(), error = %e, "connection runs on splice");
                Stats::inc(&self.stats.ebpf_fallback_splice);
                Stats::inc(&self.stats.dataplane_splice);
                self.spliced(client, backend, entry).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection's task holds `relay`'s future from accept to close,
    /// idle or not (10,000 idle connections took 20 MiB more when it
    /// carried the kernel path's and splice's state inline, 1,752 bytes in a
    /// release build, 1,848 in a debug one):
    /// the paths a connection may move to are boxed, so the copy path's
    /// own state is all it holds.
    #[test]
    fn a_connection_holds_only_the_copy_path_state() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
            let (a, (b, _)) = (a.expect("connect"), b.expect("accept"));
            let opts = Options {
                max_sockets: 2,
                sndbuf: 0,
                window: 1 << 20,
                bulk_path: BulkPath::Splice,
                pipe_bytes: 0,
                bpf_stats: false,
            };
            let dp =
                Dataplane::new(Choice::Userspace, opts, Arc::default(), None).expect("dataplane");
            let conn = dp.conns.register(addr, addr, "r".into());
            let relay = dp.relay(a, b, &conn.live);
            let size = std::mem::size_of_val(&relay);
            assert!(size <= 1024, "relay's future is {size} bytes");
        });
    }
}
