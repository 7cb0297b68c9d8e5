//! How a connection's bytes move once the agent has both sockets.
//!
//! Every dataplane gives the same guarantees as one TCP connection: each byte
//! arrives once and in order, each direction closes on its own (a FIN follows
//! every byte sent before it), and a reset on one side resets the other.
mod copy;
mod ebpf;
mod probe;
mod splice;

use std::{fmt, io, sync::Arc};

use tokio::net::TcpStream;

pub use crate::bpf::Kernel;
use crate::telemetry::{
    conns::{Entry, Registry},
    Stats,
};

/// What the user asked for with `--dataplane`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Choice {
    /// Each connection starts on the copy path and moves into the kernel
    /// (ebpf) once it proves long-lived, or to splice once it proves bulk;
    /// splice for all if the programs do not load.
    Auto,
    /// Sockhash + sk_skb stream verdict: the kernel moves the bytes.
    Ebpf,
    /// splice(2) through a pipe per direction.
    Splice,
    /// A copy loop through the agent's memory.
    Userspace,
}

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

/// The command-line flags that choose and tune the dataplane, shared by
/// `gateway forward` and `gateway run`.
#[derive(Debug, clap::Args)]
pub struct DataplaneArgs {
    /// How bytes move between the two sockets of a connection.
    #[arg(long, value_enum, default_value = "auto")]
    pub dataplane: Choice,
    /// Most connections spliced in the kernel at once (sizes the BPF maps);
    /// connections beyond it run on splice.
    #[arg(long, value_name = "N", default_value_t = 32_768)]
    pub max_connections: u32,
    /// Send buffer forced on kernel-spliced sockets, in bytes (0: the
    /// kernel's default).
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    pub sndbuf: u32,
    /// Flow control: most bytes the verdict may queue for a socket beyond
    /// what the socket itself holds.
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20)]
    pub window: u64,
    /// Where `auto` moves a bulk connection (256 KiB moved on the copy
    /// path): splice, or the kernel path like a long-lived exchange.
    #[arg(long, value_enum, default_value = "splice")]
    pub bulk_path: BulkPath,
    /// Threads serving connections, each with its own listening socket per
    /// port (0: one per CPU). A connection stays on the thread that
    /// accepted it.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub workers: usize,
    /// Count the verdict program's runs and run time (reported with the
    /// counters as `verdict_runs` and `verdict_run_ns`). The kernel keeps
    /// these for every BPF program on the host while any process asks for
    /// them (BPF_ENABLE_STATS, Linux 5.8), at two clock reads per run.
    #[arg(long)]
    pub bpf_stats: bool,
}

/// Where `auto` sends bulk connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BulkPath {
    Splice,
    Ebpf,
}

impl DataplaneArgs {
    pub fn options(&self) -> Options {
        Options {
            max_sockets: self.max_connections.saturating_mul(2),
            sndbuf: self.sndbuf,
            window: self.window,
            bulk_path: self.bulk_path,
            pipe_bytes: splice::pipe_bytes(),
            bpf_stats: self.bpf_stats,
        }
    }
}

/// Tunables of the data path.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Capacity of the socket maps, in sockets (two per connection).
    pub max_sockets: u32,
    /// `SO_SNDBUFFORCE` on both sockets of a kernel-spliced connection
    /// (0: leave the kernel's default). A bigger send buffer lets the psock
    /// worker write more before it backs off.
    pub sndbuf: u32,
    /// Most bytes the verdict may queue on a target's psock beyond what the
    /// target socket holds (flow control).
    pub window: u64,
    /// Where `auto` moves bulk connections.
    pub bulk_path: BulkPath,
    /// Size asked for each splice pipe (0: the kernel's default, 64 KiB).
    pub pipe_bytes: usize,
    /// Keep the kernel's run-time statistics on while the programs are
    /// loaded.
    pub bpf_stats: bool,
}

#[derive(Clone)]
pub struct Dataplane {
    kind: Kind,
    kernel: Option<Arc<Kernel>>,
    opts: Options,
    stats: Arc<Stats>,
    conns: Arc<Registry>,
}

/// How a relayed connection ended.
#[derive(Debug)]
pub enum End {
    /// Both directions delivered every byte and their FIN.
    Completed,
    /// One side reset (or failed); the other was reset too.
    Reset(io::Error),
    /// The agent gave up on the connection and reset both sides.
    Aborted(String),
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
    ) -> Result<Self, crate::bpf::LoadError> {
        let (kind, mut kernel) = match choice {
            Choice::Ebpf => (Kind::Ebpf, Some(Kernel::load(opts.max_sockets)?)),
            Choice::Auto => match Kernel::load(opts.max_sockets) {
                Ok(k) => (Kind::Adaptive, Some(k)),
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
        let mut dp = Self::new(args.dataplane, args.options(), stats)?;
        dp.check(args.dataplane).await?;
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

    pub fn conns(&self) -> &Registry {
        &self.conns
    }

    /// Moves bytes both ways between `client` and `backend` until both
    /// directions are closed, then closes both sockets.
    ///
    /// Every connection's task holds this future from accept to close, so
    /// the paths a connection may move to (the kernel path, splice) are
    /// boxed: allocated only when it takes them, not carried by all.
    pub async fn relay(&self, client: TcpStream, backend: TcpStream) -> End {
        use std::os::fd::AsRawFd as _;
        let entry = self.conns.add(client.as_raw_fd(), backend.as_raw_fd());
        let end = match (&self.kind, &self.kernel) {
            (Kind::Ebpf, Some(kernel)) => {
                Box::pin(self.in_kernel(kernel, client, backend, entry, ebpf::Before::default()))
                    .await
            }
            (Kind::Adaptive, Some(kernel)) => {
                match copy::run(&self.stats, &client, &backend, Some(PROMOTE)).await {
                    copy::Outcome::Ended(result) => {
                        Stats::inc(&self.stats.dataplane_userspace);
                        end_of(result, client, backend, entry)
                    }
                    copy::Outcome::Promote { bulk: true, .. }
                        if self.opts.bulk_path == BulkPath::Splice =>
                    {
                        // See PROMOTE.
                        Stats::inc(&self.stats.connections_bulk_spliced);
                        Stats::inc(&self.stats.dataplane_splice);
                        self.spliced(client, backend, entry).await
                    }
                    copy::Outcome::Promote { read, .. } => {
                        Stats::inc(&self.stats.connections_promoted);
                        // What each socket has taken, read now that the
                        // copy path writes no more: exact (see
                        // `written_settled`), where a plain read under
                        // acknowledgements could miss a segment. Read here,
                        // not before the first write, so that the many
                        // connections that never move pay nothing for it.
                        let settled = |s: &TcpStream| crate::sys::written_settled(s).ok().flatten();
                        let written = match (settled(&client), settled(&backend)) {
                            (Some(c), Some(b)) => Some([c, b]),
                            _ => {
                                tracing::debug!("moved connection: counters unsettled, measured on the kernel path");
                                None
                            }
                        };
                        let before = ebpf::Before {
                            read,
                            written,
                            moved: true,
                        };
                        Box::pin(self.in_kernel(kernel, client, backend, entry, before)).await
                    }
                }
            }
            (Kind::Userspace, _) => {
                Stats::inc(&self.stats.dataplane_userspace);
                let result = match copy::run(&self.stats, &client, &backend, None).await {
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
        match &end {
            End::Completed => Stats::inc(&self.stats.connections_completed),
            End::Reset(e) => {
                tracing::debug!("connection reset: {e}");
                Stats::inc(&self.stats.connections_reset)
            }
            End::Aborted(why) => {
                tracing::warn!("connection aborted: {why}");
                Stats::inc(&self.stats.connections_aborted)
            }
        }
        end
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
                tracing::debug!("connection runs on splice: {e}");
                Stats::inc(&self.stats.ebpf_fallback_splice);
                Stats::inc(&self.stats.dataplane_splice);
                self.spliced(client, backend, entry).await
            }
        }
    }
}

/// When `auto` moves a connection off the copy path: once it has moved
/// 256 KiB (bulk: to splice) or made 64 reads (a long-lived exchange, 32
/// round trips: into the kernel, where a round trip costs least). A
/// connection that sends a request and reads an answer never pays for
/// either.
///
/// Bulk goes to splice, not the sockhash: the kernel path's only brake on a
/// sender that outruns its reader is to pass bytes to the agent, and a
/// continuous sender then keeps the connection on the agent's copy for good
/// (README, "How the bytes move"); splice moved bulk as fast or faster at
/// less CPU in every measured layout. `--dataplane ebpf` still puts every
/// connection in the kernel.
const PROMOTE: copy::Promote = copy::Promote {
    bytes: 256 * 1024,
    reads: 64,
};

/// Is `e` the peer going away (as opposed to a local failure)?
fn is_peer_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNRESET
                | libc::EPIPE
                | libc::ETIMEDOUT
                | libc::ECONNABORTED
                | libc::EHOSTUNREACH
        )
    )
}

/// Ends both sockets with a reset: the next close sends RST, not FIN.
fn reset_both(a: &impl std::os::fd::AsRawFd, b: &impl std::os::fd::AsRawFd) {
    let _ = crate::sys::set_linger_reset(a);
    let _ = crate::sys::set_linger_reset(b);
}

/// The end of a copy or splice relay whose directions ran to `result`.
fn end_of(result: io::Result<()>, a: TcpStream, b: TcpStream, entry: Entry) -> End {
    let end = match result {
        Ok(()) => End::Completed,
        Err(e) => {
            reset_both(&a, &b);
            if is_peer_gone(&e) {
                End::Reset(e)
            } else {
                End::Aborted(e.to_string())
            }
        }
    };
    drop(entry);
    drop((a, b));
    end
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
            let dp = Dataplane::new(Choice::Userspace, opts, Arc::default()).expect("dataplane");
            let relay = dp.relay(a, b);
            let size = std::mem::size_of_val(&relay);
            assert!(size <= 1024, "relay's future is {size} bytes");
        });
    }
}
