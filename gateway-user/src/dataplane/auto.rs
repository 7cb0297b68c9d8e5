//! `auto`: every connection starts on the copy path, which costs least for
//! short exchanges, and moves once it proves worth it: into the kernel
//! when long-lived, to splice (or the kernel, `--bulk-path ebpf`) when bulk.
use tokio::net::TcpStream;

use super::{copy, ebpf, end_of, BulkPath, Dataplane, End, Kernel};
use crate::telemetry::{conns::Entry, Stats};

/// When `auto` moves a connection off the copy path: once it has moved
/// 256 KiB (bulk: to splice) or made 64 reads (a long-lived exchange, 32
/// round trips: into the kernel, where a round trip costs least). A
/// connection that sends a request and reads an answer never pays for
/// either.
///
/// Bulk goes to splice, not the sockhash: the kernel path's only brake on a
/// sender that outruns its reader is to pass bytes to the agent, and a
/// continuous sender then keeps the connection on the agent's copy for good
/// (docs/datapath.md, "How the bytes move"); splice moved bulk as fast or faster at
/// less CPU in every measured layout. `--dataplane ebpf` still puts every
/// connection in the kernel.
pub(super) const PROMOTE: copy::Promote = copy::Promote {
    bytes: 256 * 1024,
    reads: 64,
};

impl Dataplane {
    /// Relays on the copy path until [`PROMOTE`] says the connection is
    /// worth moving, then moves it.
    pub(super) async fn adaptive(
        &self,
        kernel: &Kernel,
        client: TcpStream,
        backend: TcpStream,
        entry: Entry,
    ) -> End {
        entry.meter().set_path(crate::telemetry::conns::Path::Copy);
        match copy::run(&self.stats, entry.meter(), &client, &backend, Some(PROMOTE)).await {
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
                        tracing::debug!(
                            conn = entry.id(),
                            "moved connection: counters unsettled, measured on the kernel path"
                        );
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
}
