//! The ebpf dataplane: the verdict moves each received skb to the peer socket;
//! the agent keeps the connection's life. It grants the verdict credit so a
//! slow reader throttles its peer, moves the bytes the verdict passed back to
//! it while a target was congested, forwards each FIN once every byte before
//! it is in the peer socket, and propagates resets.
//!
//! The agent learns what the kernel did from counters, never from a read():
//! `written(T) = bytes_acked(T) + SIOCOUTQ(T)` is every byte socket T has
//! taken, and `bytes_received(S)` every byte S was sent, plus one for its FIN
//! (see the data path design note, facts 2 and 9).
use std::{
    io,
    net::TcpStream as StdStream,
    time::{Duration, Instant},
};

use gateway_common::{FlowStats, PeerCtl, SKIP_RING};
use tokio::{
    io::{unix::AsyncFd, Interest, Ready},
    net::TcpStream,
};

use super::{is_peer_gone, reset_both, End, Options};
use crate::{
    bpf::{AttachError, Kernel},
    sys,
    telemetry::{
        conns::{Entry, Meter},
        Stats,
    },
};

/// Most bytes the agent holds for one direction when it moves passed bytes.
const BUF: usize = 256 * 1024;
/// Pause between checks while a direction waits for the kernel with no event
/// to say when it is done (a FIN to drain, a psock queue to empty): short at
/// first, longer while nothing moves.
const TICK_MIN: Duration = Duration::from_millis(1);
const TICK_MAX: Duration = Duration::from_millis(50);
/// How often credit is renewed while the verdict is redirecting.
const REFRESH: Duration = Duration::from_millis(1);
/// A direction whose target has nothing queued and whose counters have not
/// moved for this long has lost bytes in the kernel.
const STALL: Duration = Duration::from_secs(2);
const KICK: Duration = Duration::from_millis(200);

/// TCP states in which the socket has received its peer's FIN
/// (include/net/tcp_states.h): CLOSE_WAIT, LAST_ACK, CLOSING, TIME_WAIT, and
/// CLOSE, which is where a socket that sent its FIN first lands when the
/// peer's FIN comes (a time-wait mini socket takes over). A reset also ends
/// in CLOSE, but leaves `SO_ERROR` set, which the agent checks first.
fn fin_received(state: u8) -> bool {
    matches!(state, 6..=9 | 11)
}

/// One direction: bytes received by `src` go to `dst`.
struct Way {
    src: usize,
    dst: usize,
    src_cookie: u64,
    /// written(dst) when the connection was attached.
    written0: u64,
    /// Bytes src received before (read by the agent on the copy path and
    /// written to dst): not the kernel path's to account for.
    received0: u64,
    /// Passed bytes read from src and not yet accepted by dst.
    pending: Vec<u8>,
    /// Passed bytes discarded as repeats (the verdict's overlap records):
    /// counted in `ctl.consumed`, never written to dst.
    skipped: u64,
    /// The control record as last written to `PEERS`.
    ctl: PeerCtl,
    fin_sent: bool,
    /// src has received its FIN: nothing more can arrive on it, and its
    /// readiness would stay set for good.
    fin_seen: bool,
    /// Last observed written(dst), and when it last changed or, if later,
    /// when dst last owed nothing: the stall clock.
    last_written: u64,
    last_change: Instant,
    /// Whether dst owed bytes (redirected or passed, not yet written) at the
    /// previous look.
    owing: bool,
    /// The verdict's redirect counter at the previous look.
    last_redirected: u64,
    /// When the direction wants to be looked at again with no event.
    tick: Option<Duration>,
    /// The direction has bytes for dst and dst said EAGAIN.
    blocked: bool,
    /// Most bytes the verdict may queue on dst's psock beyond what dst holds.
    window: u64,
    kicked: bool,
    /// src has no verdict (the kernel refused it after its peer was in):
    /// everything it receives stays on its queue, for the agent to copy.
    copied: bool,
}

/// What happened on a connection before it came to the kernel path (all
/// zero for one that starts there).
#[derive(Debug, Default, Clone, Copy)]
pub struct Before {
    /// Bytes the agent read from [client, backend] and wrote to the other.
    pub read: [u64; 2],
    /// `written` of [client, backend] as of the move, when the agent knows
    /// it exactly (it measures it itself otherwise).
    pub written: Option<[u64; 2]>,
    /// The connection comes from the copy path, which has read from both
    /// sockets: the verdict must be told where those reads ended.
    pub moved: bool,
}

pub async fn relay(
    kernel: &Kernel,
    opts: &Options,
    stats: &Stats,
    client: TcpStream,
    backend: TcpStream,
    entry: Entry,
    before: Before,
) -> Result<End, (AttachError, TcpStream, TcpStream, Entry)> {
    let Before {
        read: already,
        written: written_before,
        moved,
    } = before;
    if opts.sndbuf > 0 {
        let size = opts.sndbuf.min(i32::MAX as u32) as i32;
        let _ = sys::set_sndbuf_force(&client, size);
        let _ = sys::set_sndbuf_force(&backend, size);
    }
    // Snapshot before the psock can write anything.
    // On a fresh connection nothing is in flight and the counters are
    // exact. Mid-stream they are not: an acknowledgement landing between
    // the two reads of `written` under-counts by a segment (seen: a
    // connection aborted as "64 KiB duplicated"), so the copy path's own
    // count of what it wrote is used instead.
    let w0 = match written_before {
        Some(w) => (Ok(w[0]), Ok(w[1])),
        None => (sys::written(&client), sys::written(&backend)),
    };
    let (Ok(w0c), Ok(w0b)) = w0 else {
        return Ok(End::Aborted("cannot read the sockets' counters".into()));
    };
    // First credit: what each target can take now.
    let credit = |t: &TcpStream| initial_allowance(t, opts.window);
    let credits = (credit(&backend), credit(&client));
    // A socket the copy path read may hold an skb it read only the head of;
    // the kernel would hand that skb whole to the verdict, which discards
    // what comes before the anchor.
    let anchors = if moved {
        match (sys::copied_seq(&client), sys::copied_seq(&backend)) {
            (Ok(c), Ok(b)) => [Some(c), Some(b)],
            (Err(e), _) | (_, Err(e)) => {
                return Err((AttachError::Anchor(e), client, backend, entry));
            }
        }
    } else {
        [None, None]
    };
    let pair = match kernel.attach(&client, &backend, [credits.0, credits.1], anchors) {
        Ok(pair) => pair,
        Err(e) => return Err((e, client, backend, entry)),
    };
    entry.meter().in_kernel([pair.a, pair.b]);
    let socks = match (to_async(client), to_async(backend)) {
        (Ok(c), Ok(b)) => [c, b],
        (c, b) => {
            left(entry.meter(), kernel.detach(pair));
            // The verdict may already have taken bytes: the connection ends
            // with a reset on both sides, never a FIN after a hole.
            let open = [c, b].into_iter().filter_map(|s| match s {
                Ok(fd) => Some(fd.into_inner()),
                Err(s) => s,
            });
            for s in open {
                let _ = sys::set_linger_reset(&s);
            }
            return Ok(End::Aborted(
                "cannot register the sockets with the runtime".into(),
            ));
        }
    };
    let now = Instant::now();
    let way = |src, dst, src_cookie, dst_cookie, written0, credit, received0, copied| Way {
        src,
        dst,
        src_cookie,
        written0,
        received0,
        pending: Vec::new(),
        skipped: 0,
        ctl: PeerCtl {
            peer: dst_cookie,
            credit,
            consumed: 0,
            skips_done: 0,
        },
        fin_sent: false,
        fin_seen: false,
        last_written: 0,
        last_change: now,
        owing: false,
        last_redirected: 0,
        tick: None,
        blocked: false,
        window: opts.window,
        kicked: false,
        copied,
    };
    let mut ways = [
        way(0, 1, pair.a, pair.b, w0b, credits.0, already[0], false),
        way(
            1,
            0,
            pair.b,
            pair.a,
            w0c,
            credits.1,
            already[1],
            !pair.b_verdict,
        ),
    ];
    if !pair.b_verdict {
        Stats::inc(&stats.ebpf_backend_copied);
    }
    let end = run(kernel, (entry.id(), entry.meter()), &socks, &mut ways).await;
    if !matches!(end, End::Completed) {
        reset_both(socks[0].get_ref(), socks[1].get_ref());
    }
    let flows = kernel.detach(pair);
    left(entry.meter(), flows);
    Stats::add(
        &stats.bytes_kernel_redirected,
        flows.iter().map(|f| f.redirected).sum(),
    );
    Stats::add(&stats.bytes_agent_copied, ways.iter().map(Way::sent).sum());
    Stats::add(
        &stats.bytes_overlap_discarded,
        ways.iter().map(|w| w.skipped).sum(),
    );
    drop(entry);
    drop(socks);
    Ok(end)
}

/// The connection is out of the sockhash: what the verdict redirected each
/// way is the connection's for good.
fn left(meter: &Meter, flows: [FlowStats; 2]) {
    meter.left_kernel([flows[0].redirected, flows[1].redirected]);
}

fn initial_allowance(t: &TcpStream, window: u64) -> u64 {
    sys::meminfo(t).map_or(0, |m| allowance(m, window))
}

/// What the verdict may queue for `dst` beyond what dst already holds: at
/// most `window`, and no more than three quarters of dst's free send space,
/// so dst's psock never waits on a full socket. A psock that waits holds
/// later skbs passed on the same socket uncharged (design note, fact 9), and
/// the reverse direction would then never be throttled.
fn allowance(m: sys::MemInfo, window: u64) -> u64 {
    let free = u64::from(m.sndbuf.saturating_sub(m.wmem_queued));
    (free / 4 * 3).min(window)
}

/// The socket under an `AsyncFd`; on failure, the socket itself if it is
/// still open (tokio closes it when it cannot give it up).
fn to_async(s: TcpStream) -> Result<AsyncFd<StdStream>, Option<StdStream>> {
    let s = s.into_std().map_err(|_| None)?;
    // SAFETY: the stream owns its descriptor, which nothing closes or
    // replaces while the AsyncFd holds it.
    unsafe { AsyncFd::register_with_interest(s, Interest::READABLE | Interest::WRITABLE) }
        .map_err(|e| Some(e.into_parts().0))
}

/// `conn`: the connection's id, for its log lines, and its meter.
async fn run(
    kernel: &Kernel,
    conn: (u64, &Meter),
    socks: &[AsyncFd<StdStream>; 2],
    ways: &mut [Way; 2],
) -> End {
    loop {
        // Errors first: a reset on either side ends both.
        for s in socks {
            match sys::take_error(s.get_ref()) {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => {
                    return if is_peer_gone(&e) {
                        End::Reset(e)
                    } else {
                        End::Aborted(format!("socket error: {e}"))
                    };
                }
            }
        }
        for w in ways.iter_mut() {
            if let Err(end) = pump(kernel, conn, socks, w) {
                return end;
            }
        }
        if ways.iter().all(|w| w.fin_sent) {
            return End::Completed;
        }
        let tick = ways.iter().filter_map(|w| w.tick).min();
        // Wake on anything a socket reports: bytes passed to it, its FIN, an
        // error, or room to write when a direction is blocked on it. The
        // readiness that woke us is cleared before the next look, so an event
        // after the look wakes us again (epoll is edge-triggered).
        let interest = |i: usize| {
            // A socket whose direction is over stays read-closed, and that
            // readiness is never cleared: asking for it again would wake the
            // loop at once, forever (seen: a connection whose backend closed
            // first spun on two cores until the client closed too).
            let mut want = Interest::ERROR;
            // Once its FIN is in, what is left (bytes to move, the FIN to
            // forward once drained) is paced by the ticks.
            if ways
                .iter()
                .any(|w| w.src == i && !w.fin_sent && !w.fin_seen)
            {
                want |= Interest::READABLE;
            }
            if ways.iter().any(|w| w.dst == i && w.blocked) {
                want |= Interest::WRITABLE;
            }
            want
        };
        let (i0, i1) = (interest(0), interest(1));
        tokio::select! {
            r = socks[0].ready(i0) => if let Ok(mut g) = r { let seen = g.ready(); g.clear_ready_matching(seen & ready_of(i0)); },
            r = socks[1].ready(i1) => if let Ok(mut g) = r { let seen = g.ready(); g.clear_ready_matching(seen & ready_of(i1)); },
            () = tokio::time::sleep(tick.unwrap_or(TICK_MAX)), if tick.is_some() => {},
        }
    }
}

fn ready_of(i: Interest) -> Ready {
    let mut r = Ready::EMPTY;
    if i.is_readable() {
        r |= Ready::READABLE | Ready::READ_CLOSED;
    }
    if i.is_writable() {
        r |= Ready::WRITABLE | Ready::WRITE_CLOSED;
    }
    if i.is_error() {
        r |= Ready::ERROR;
    }
    r
}

fn gone(e: io::Error) -> End {
    if is_peer_gone(&e) {
        End::Reset(e)
    } else {
        End::Aborted(e.to_string())
    }
}

/// Moves one direction forward as far as it can without waiting; `Err` ends
/// the connection.
fn pump(
    kernel: &Kernel,
    (id, meter): (u64, &Meter),
    socks: &[AsyncFd<StdStream>; 2],
    w: &mut Way,
) -> Result<(), End> {
    let was_ticking = w.tick;
    w.tick = None;
    w.blocked = false;
    if w.fin_sent {
        return Ok(());
    }
    let (src, dst) = (socks[w.src].get_ref(), socks[w.dst].get_ref());
    let mut flow = kernel.flow(w.src_cookie).unwrap_or_default();
    let mut waiting = false;
    let consumed_before = w.ctl.consumed;
    // Whether dst is known to hold every redirected byte: then, as long as
    // passed bytes are unconsumed, the verdict passes every new skb too (it
    // redirects only once `passed == consumed` in `PEERS`, which this loop
    // publishes only at its end), so the agent owns the order and need not
    // look at dst's counters again before each read.
    let mut ordered = false;
    let mut looked_again = false;

    // Bytes the verdict passed to src, in order: only once everything it
    // redirected before them is in dst, so no byte overtakes another.
    loop {
        if !w.pending.is_empty() {
            match sys::send(dst, &w.pending) {
                Ok(n) => {
                    w.pending.drain(..n);
                    w.ctl.consumed += n as u64;
                    meter.moved(w.src, n as u64);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    w.blocked = true;
                    break;
                }
                Err(e) => return Err(gone(e)),
            }
        }
        if w.copied {
            // Nothing is redirected from src: what its queue holds is next.
            let mut buf = Vec::with_capacity(BUF);
            match sys::recv_append(src, &mut buf, BUF) {
                Ok(n) if n > 0 => {
                    w.pending = buf;
                    continue;
                }
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(gone(e)),
            }
        }
        let mut unread = flow.passed.saturating_sub(w.ctl.consumed);
        if unread == 0 && ordered && !looked_again {
            // More may have been passed while the agent moved the last
            // bytes: one more look before publishing.
            looked_again = true;
            flow = kernel.flow(w.src_cookie).unwrap_or(flow);
            unread = flow.passed.saturating_sub(w.ctl.consumed);
        }
        if unread == 0 {
            break;
        }
        if !ordered {
            let written = sys::written(dst).map_err(gone)?.saturating_sub(w.written0);
            if written != flow.redirected + w.sent() {
                // dst's psock still owes earlier bytes: look again soon.
                waiting = true;
                break;
            }
            ordered = true;
        }
        let want = unread.min(BUF as u64) as usize;
        let mut buf = Vec::with_capacity(want);
        match sys::recv_append(src, &mut buf, want) {
            Ok(n) if n > 0 => {
                // The verdict wrote its records for these bytes before it
                // passed them, and the queue's lock orders that before this
                // read: a fresh look has every record that covers them.
                flow = settled_flow(kernel, w.src_cookie, flow, w.ctl.skips_done)?;
                discard_repeats(w, &flow, &mut buf)?;
                w.pending = buf;
            }
            Ok(_) => {
                waiting = true;
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Counted by the verdict but not on the queue yet.
                waiting = true;
                break;
            }
            Err(e) => return Err(gone(e)),
        }
    }

    let written = sys::written(dst).map_err(gone)?.saturating_sub(w.written0);
    // A direction idle for a while that just got bytes is not stalled: its
    // clock starts when it first owes something (measuring from the last
    // progress made the agent abort a connection whose psock worker had
    // simply not run yet, seen in a guest after a 5 s one-way upload).
    let owing = written < flow.redirected + w.sent() || !w.pending.is_empty();
    if written != w.last_written || !w.owing {
        w.last_written = written;
        w.last_change = Instant::now();
    }
    w.owing = owing;
    if !w.copied {
        renew_credit(kernel, dst, w, &flow, written, consumed_before)?;
    }

    // The FIN goes on only when every byte before it is in dst.
    let src_info = sys::tcp_info(src).map_err(gone)?;
    let fin = fin_received(src_info.state);
    let payload = src_info
        .bytes_received
        .saturating_sub(u64::from(fin))
        .saturating_sub(w.received0);
    if fin {
        w.fin_seen = true;
        if written == payload && w.pending.is_empty() {
            sys::shutdown_write(dst).map_err(gone)?;
            meter.closed(w.src);
            w.fin_sent = true;
            w.tick = None;
            return Ok(());
        }
        if written > payload {
            return Err(End::Aborted(format!(
                "{written} bytes written for {payload} received: duplicated in the kernel \
                 (way {}->{}: redirected {}, passed {}, consumed {}, discarded {}, \
                 overlap {}, credit {}, received before {})",
                w.src,
                w.dst,
                flow.redirected,
                flow.passed,
                w.ctl.consumed,
                w.skipped,
                flow.overlap,
                w.ctl.credit,
                w.received0,
            )));
        }
        waiting = true;
    }
    if waiting {
        let stuck = w.pending.is_empty()
            && flow.fresh() >= payload
            && written < flow.redirected + w.sent()
            && sys::outq(dst).unwrap_or(1) == 0;
        if stuck && w.last_change.elapsed() > KICK && !w.kicked {
            w.kicked = true;
            tracing::warn!(
                conn = id,
                "psock queue stalled with {} bytes for {:?}: kicking its worker",
                flow.redirected + w.sent() - written,
                w.last_change.elapsed()
            );
            let _ = sys::kick_write_space(dst);
        }
        if w.last_change.elapsed() > STALL
            && w.pending.is_empty()
            && sys::outq(dst).unwrap_or(1) == 0
            && flow.fresh() >= payload
        {
            // Everything received has had its verdict, dst has sent all it
            // took, and nothing moved for seconds: the rest is gone.
            return Err(End::Aborted(format!(
                "bytes lost in the kernel: {written} of {payload} delivered \
                 (redirected {}, passed {}, consumed {}, credit {}, redirect failures {}, \
                 source state {}, target state {})",
                flow.redirected,
                flow.passed,
                w.ctl.consumed,
                w.ctl.credit,
                flow.redirect_failed,
                src_info.state,
                sys::tcp_info(dst).map_or(0, |i| i.state),
            )));
        }
        let next = if w.last_written == written && was_ticking.is_some() {
            was_ticking.map_or(TICK_MIN, |t| (t * 2).min(TICK_MAX))
        } else {
            TICK_MIN
        };
        w.tick = Some(next);
    }
    if flow.redirected != w.last_redirected {
        // The verdict is spending credit: renew it before it runs out.
        w.last_redirected = flow.redirected;
        w.tick = Some(w.tick.map_or(REFRESH, |t| t.min(REFRESH)));
    }
    Ok(())
}

impl Way {
    /// Passed bytes the agent wrote to dst.
    fn sent(&self) -> u64 {
        self.ctl.consumed - self.skipped
    }
}

/// The verdict's record for `cookie` as two looks in a row agree on it: a
/// look copies the record while the verdict may be writing it, and the
/// overlap records for bytes not read yet may be half written. A look with
/// no record the agent has not applied needs no second one: any record
/// covering the bytes just read is visible in full (see the caller).
fn settled_flow(
    kernel: &Kernel,
    cookie: u64,
    last: FlowStats,
    applied: u64,
) -> Result<FlowStats, End> {
    let look = || kernel.flow(cookie).unwrap_or(last);
    let mut a = look();
    if a.skips == applied {
        return Ok(a);
    }
    for _ in 0..8 {
        let b = look();
        if (a.skips, a.skip_at, a.skip_len) == (b.skips, b.skip_at, b.skip_len) {
            return Ok(b);
        }
        a = b;
    }
    Err(End::Aborted(
        "the verdict's overlap records kept changing under the agent".into(),
    ))
}

/// Drops from `buf`, the passed bytes just read from src, the repeats the
/// verdict recorded among them, and counts them as consumed. Ends the
/// connection if the verdict passed bytes it could not vouch for, or its
/// records do not add up: nothing after them is forwarded.
fn discard_repeats(w: &mut Way, flow: &FlowStats, buf: &mut Vec<u8>) -> Result<(), End> {
    if flow.seq_unknown > 0 {
        return Err(End::Aborted(format!(
            "the verdict could not read the sequence numbers of {} skbs; \
             their bytes are not forwarded",
            flow.seq_unknown
        )));
    }
    if flow.skip_overflow > 0 {
        return Err(End::Aborted(format!(
            "{} retransmitted skbs overlapped bytes already forwarded faster \
             than the agent applied its records; bytes after them are not forwarded",
            flow.skip_overflow
        )));
    }
    let start = w.ctl.consumed;
    let end = start + buf.len() as u64;
    // Records of bytes past this read are the next reads' (and may be
    // being written): only those that begin inside it count.
    let ranges: Vec<(u64, u64)> = (w.ctl.skips_done..flow.skips)
        .map(|i| {
            let slot = (i % SKIP_RING as u64) as usize;
            (flow.skip_at[slot], flow.skip_at[slot] + flow.skip_len[slot])
        })
        .take_while(|&(from, _)| from < end)
        .collect();
    // Ascending and disjoint, the first still open: anything else is a
    // record misread, and guessing would forward a repeat or drop a byte.
    let mut floor = start;
    for (k, &(from, to)) in ranges.iter().enumerate() {
        let sane = to > floor && (k == 0 || from >= floor) && from < to;
        if !sane {
            return Err(End::Aborted(format!(
                "overlap record [{from}, {to}) does not follow the passed bytes \
                 already handled ({floor}); bytes after it are not forwarded"
            )));
        }
        floor = to;
    }
    let (removed, done) = strip(buf, start, &ranges);
    w.ctl.skips_done += done as u64;
    w.ctl.consumed += removed;
    w.skipped += removed;
    Ok(())
}

/// Removes from `buf`, which holds the passed bytes from offset `start` on,
/// every byte inside `ranges` (ascending, disjoint `[from, to)` offsets in
/// the passed bytes). Returns how many bytes it removed and how many
/// ranges end within `buf` (those are done; a range that goes on past
/// `buf` continues at the next read, which starts where `buf` ends).
fn strip(buf: &mut Vec<u8>, start: u64, ranges: &[(u64, u64)]) -> (u64, usize) {
    let end = start + buf.len() as u64;
    let mut removed = 0;
    let mut done = 0;
    for &(from, to) in ranges.iter().rev() {
        let (lo, hi) = (from.max(start), to.min(end));
        if lo < hi {
            buf.drain((lo - start) as usize..(hi - start) as usize);
            removed += hi - lo;
        }
        if to <= end {
            done += 1;
        }
    }
    (removed, done)
}

/// Grants the verdict what dst can take, and publishes what the agent
/// consumed. One map write, and only when something changed enough.
fn renew_credit(
    kernel: &Kernel,
    dst: &StdStream,
    w: &mut Way,
    flow: &FlowStats,
    written: u64,
    consumed_before: u64,
) -> Result<(), End> {
    let mem = sys::meminfo(dst).map_err(gone)?;
    let allowance = allowance(mem, w.window);
    // Redirected bytes already in dst; beyond them the verdict may queue
    // `allowance` more on dst's psock.
    let in_dst = written.saturating_sub(w.sent()).min(flow.redirected);
    let credit = in_dst + allowance;
    let consumed_moved = w.ctl.consumed != consumed_before && w.pending.is_empty();
    let worth = credit < w.ctl.credit || credit > w.ctl.credit + allowance / 8;
    if consumed_moved || (worth && credit != w.ctl.credit) {
        w.ctl.credit = credit;
        kernel
            .set_ctl(w.src_cookie, w.ctl)
            .map_err(|e| End::Aborted(format!("cannot update `PEERS`: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::strip;

    fn bytes(from: u8, to: u8) -> Vec<u8> {
        (from..to).collect()
    }

    #[test]
    fn strip_removes_only_recorded_repeats() {
        // Passed bytes 100..120 read; repeats at 102..105 and 110..112.
        let mut buf = bytes(100, 120);
        let (removed, done) = strip(&mut buf, 100, &[(102, 105), (110, 112)]);
        assert_eq!((removed, done), (5, 2));
        let want: Vec<u8> = (100..102).chain(105..110).chain(112..120).collect();
        assert_eq!(buf, want);
    }

    #[test]
    fn a_repeat_running_past_the_read_goes_on_at_the_next() {
        let ranges = [(5, 15), (18, 19)];
        let mut first = bytes(0, 10);
        assert_eq!(strip(&mut first, 0, &ranges), (5, 0));
        assert_eq!(first, bytes(0, 5));
        // The next read starts where the first ended; the open range is
        // still the agent's first, and both now end inside it.
        let mut second = bytes(10, 20);
        assert_eq!(strip(&mut second, 10, &ranges), (6, 2));
        let want: Vec<u8> = (15..18).chain(19..20).collect();
        assert_eq!(second, want);
    }

    #[test]
    fn a_read_of_repeats_only_is_emptied_and_a_later_range_left() {
        let mut buf = bytes(0, 8);
        assert_eq!(strip(&mut buf, 0, &[(0, 8), (30, 40)]), (8, 1));
        assert!(buf.is_empty());
    }
}
