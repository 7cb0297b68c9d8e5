//! What `--dataplane` and its tuning flags ask for, shared by `gateway
//! run` and `gateway forward`.
use std::path::PathBuf;

use super::splice;

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
    /// This gateway's name on the host: it names the directory its BPF
    /// maps are pinned in, which `gateway inspect` reads (default:
    /// `default` for `gateway run`, `forward-PORT` for `gateway forward`).
    /// Two agents of one instance are refused.
    #[arg(long, value_name = "NAME", value_parser = crate::bpf::pins::check_instance)]
    pub instance: Option<String>,
    /// Where the BPF maps are pinned (default:
    /// /sys/fs/bpf/gateway/INSTANCE). Removed at a clean stop; a restarted
    /// agent removes what a killed one left.
    #[arg(long, value_name = "DIR")]
    pub bpffs: Option<PathBuf>,
}

/// Where `auto` sends bulk connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BulkPath {
    Splice,
    Ebpf,
}

impl DataplaneArgs {
    /// Where the maps are pinned: `--bpffs`, else the instance's directory.
    pub fn pin_dir(&self) -> Option<PathBuf> {
        self.bpffs
            .clone()
            .or_else(|| self.instance.as_deref().map(crate::bpf::pins::instance_dir))
    }

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
