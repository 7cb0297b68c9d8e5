//! The copy path: each direction read into the agent's memory and written
//! out again. It is the userspace dataplane (the reference every other one is
//! compared with), and the first phase of `auto`, where every connection
//! starts: a connection that only exchanges a few messages never costs the
//! kernel path's set-up, and one that proves long-lived or bulk is handed
//! over at a point where the agent holds none of its bytes.
use std::io;

use tokio::{io::Interest, net::TcpStream};

use crate::telemetry::{conns::Meter, Stats};

const BUF: usize = 64 * 1024;
/// Most one read takes when it must empty the queue before a move to the
/// kernel (the default receive buffer tops out at 6 MiB; a queue bigger
/// than this is emptied over several tries).
const DRAIN_MAX: usize = 4 << 20;

/// When a connection on the copy path is worth moving off it.
#[derive(Debug, Clone, Copy)]
pub struct Promote {
    /// Bytes read, both directions together.
    pub bytes: u64,
    /// Reads (each a message or a buffer full), both directions together.
    pub reads: u64,
}

/// How the copy path left a connection.
#[derive(Debug)]
pub enum Outcome {
    /// Both directions ran to their FIN (`Ok`), or one failed.
    Ended(io::Result<()>),
    /// The connection met the [`Promote`] bar while neither direction had
    /// seen a FIN and the agent held no byte: everything read so far has
    /// been written. `read[0]` bytes were read from `a`, `read[1]` from `b`.
    /// `bulk`: it crossed the byte bar (else the read count).
    Promote { read: [u64; 2], bulk: bool },
}

/// One direction: bytes read from one socket, written to the other.
struct Way {
    /// Read and not yet written: `buf[off..]`. Has capacity only while
    /// bytes flow: an idle connection holds no memory here (10,000 idle
    /// connections held 600 MiB when each direction kept its buffer).
    buf: Vec<u8>,
    off: usize,
    /// FIN forwarded: the direction is over.
    done: bool,
    /// Waiting for the source to have bytes (or its FIN).
    want_read: bool,
    /// Waiting for room in the destination.
    want_write: bool,
    read: u64,
    reads: u64,
    /// No skb on the source's queue is partly read: the last read emptied
    /// the queue (or there was none). Only then may the socket go into the
    /// sockhash: the kernel hands the verdict whole skbs from the queue
    /// (tcp_read_skb), bytes already read from the first one included, so
    /// inserting after a read that stopped inside an skb sends those bytes
    /// twice (seen: 131,072 duplicated bytes on 6.18).
    whole: bool,
}

impl Default for Way {
    fn default() -> Self {
        Way {
            buf: Vec::new(),
            off: 0,
            done: false,
            want_read: false,
            want_write: false,
            read: 0,
            reads: 0,
            whole: true,
        }
    }
}

impl Way {
    fn holds_nothing(&self) -> bool {
        self.off == self.buf.len()
    }
}

enum Step {
    /// Waiting on readiness (or done).
    Wait,
    Promote {
        bulk: bool,
    },
}

/// Relays `a` and `b` until both directions have forwarded their FIN, one
/// fails, or (with `promote`) the connection should move to the kernel.
pub async fn run(
    stats: &Stats,
    meter: &Meter,
    a: &TcpStream,
    b: &TcpStream,
    promote: Option<Promote>,
) -> Outcome {
    let socks = [a, b];
    let mut ways = [Way::default(), Way::default()];
    loop {
        for i in 0..2 {
            match step(stats, meter, &socks, &mut ways, i, promote) {
                Ok(Step::Wait) => {}
                Ok(Step::Promote { bulk }) => {
                    return Outcome::Promote {
                        read: [ways[0].read, ways[1].read],
                        bulk,
                    }
                }
                Err(e) => return Outcome::Ended(Err(e)),
            }
        }
        if ways.iter().all(|w| w.done) {
            return Outcome::Ended(Ok(()));
        }
        // Socket i is read by way i and written by way 1 - i.
        let interest = |i: usize| {
            let read = ways[i].want_read.then_some(Interest::READABLE);
            let write = ways[1 - i].want_write.then_some(Interest::WRITABLE);
            match (read, write) {
                (Some(r), Some(w)) => Some(r | w),
                (r, w) => r.or(w),
            }
        };
        let (i0, i1) = (interest(0), interest(1));
        // Readiness is only looked at here; the next step's syscalls say
        // what it meant. An error shows as readiness too.
        tokio::select! {
            _ = a.ready(i0.unwrap_or(Interest::READABLE)), if i0.is_some() => {}
            _ = b.ready(i1.unwrap_or(Interest::READABLE)), if i1.is_some() => {}
        }
    }
}

/// Moves way `i` as far as it goes without waiting.
fn step(
    stats: &Stats,
    meter: &Meter,
    socks: &[&TcpStream; 2],
    ways: &mut [Way; 2],
    i: usize,
    promote: Option<Promote>,
) -> io::Result<Step> {
    let (src, dst) = (socks[i], socks[1 - i]);
    ways[i].want_read = false;
    ways[i].want_write = false;
    let mut drained = false;
    loop {
        let w = &mut ways[i];
        if w.done {
            return Ok(Step::Wait);
        }
        if !w.holds_nothing() {
            match dst.try_write(&w.buf[w.off..]) {
                Ok(n) => {
                    w.off += n;
                    Stats::add(&stats.bytes_agent_copied, n as u64);
                    meter.moved(i, n as u64);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    w.want_write = true;
                    return Ok(Step::Wait);
                }
                Err(e) => return Err(e),
            }
        }
        w.buf.clear();
        w.off = 0;
        // Every byte read is written: a point where the connection can
        // change hands, if the other direction is at one too.
        let bulk = promote.is_some_and(|p| ways[0].read + ways[1].read >= p.bytes);
        let due = bulk || promote.is_some_and(|p| ways[0].reads + ways[1].reads >= p.reads);
        if due && ways.iter().all(|w| w.holds_nothing() && w.whole && !w.done) {
            return Ok(Step::Promote { bulk });
        }
        let w = &mut ways[i];
        if drained {
            // The last read emptied the queue; wait for more, with the
            // buffer given back.
            w.buf = Vec::new();
            w.want_read = true;
            return Ok(Step::Wait);
        }
        // Once the connection is due to move, each read asks for everything
        // queued so that it empties the queue (see `Way::whole`).
        let want = if due {
            crate::sys::inq(src).map_or(BUF, |q| (q as usize + BUF).min(DRAIN_MAX))
        } else {
            BUF
        };
        // A short read means the queue is empty: the readiness is cleared
        // with it (as tokio's own reads do) instead of paying for an EAGAIN.
        // A FIN that came with the bytes stays flagged (read-closed is never
        // cleared), so the next look still finds it. The buffer is taken
        // only once the socket says it is readable.
        let mut got = 0;
        let buf = &mut w.buf;
        let read = src.try_io(Interest::READABLE, || {
            buf.reserve_exact(want);
            got = crate::sys::recv_append(src, buf, want)?;
            if got > 0 && got < want {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(got)
            }
        });
        match read {
            Ok(0) => {
                // Every byte before the FIN has been written: pass it on.
                // When the other direction is over too, the close that
                // follows sends it (both receive queues are empty, so it is
                // a FIN, not a reset): one system call less per connection.
                if !ways[1 - i].done {
                    crate::sys::shutdown_write(dst)?;
                }
                meter.closed(i);
                let w = &mut ways[i];
                w.done = true;
                w.buf = Vec::new();
                return Ok(Step::Wait);
            }
            Ok(_) => w.whole = false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => {
                drained = true;
                w.whole = true;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                w.buf = Vec::new();
                w.want_read = true;
                return Ok(Step::Wait);
            }
            Err(e) => return Err(e),
        }
        w.read += got as u64;
        w.reads += 1;
    }
}
