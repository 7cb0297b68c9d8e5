//! The ebpf dataplane: the verdict moves each received skb to the peer socket;
//! the agent only keeps the connection's life: it forwards each FIN once every
//! byte before it is in the peer socket, moves bytes the verdict passed to it,
//! and propagates resets.
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

use gateway_common::PeerCtl;
use tokio::{
    io::{unix::AsyncFd, Interest, Ready},
    net::TcpStream,
};

use super::{
    is_peer_gone,
    kernel::{AttachError, Kernel},
    reset_both, End, Options,
};
use crate::{stats::Stats, sys};

/// Most bytes the agent holds for one direction when it moves passed bytes.
const BUF: usize = 64 * 1024;
/// First and longest pause between checks while a direction waits for the
/// kernel (its FIN to drain, its psock queue to empty).
const TICK_MIN: Duration = Duration::from_millis(1);
const TICK_MAX: Duration = Duration::from_millis(50);
/// A direction whose target has nothing queued and whose counters have not
/// moved for this long has lost bytes in the kernel.
const STALL: Duration = Duration::from_secs(2);

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
    dst_cookie: u64,
    /// written(dst) when the connection was attached.
    written0: u64,
    /// Passed bytes read from src and not yet accepted by dst.
    pending: Vec<u8>,
    /// Passed bytes fully written to dst (the verdict's `consumed`).
    consumed: u64,
    fin_sent: bool,
    /// Last observed written(dst), and when it last changed.
    last_written: u64,
    last_change: Instant,
    /// The direction needs polling (the kernel owes it progress with no
    /// event to say so).
    waiting: bool,
    /// The direction has bytes for dst and dst said EAGAIN.
    blocked: bool,
}

pub async fn relay(
    kernel: &Kernel,
    opts: &Options,
    stats: &Stats,
    client: TcpStream,
    backend: TcpStream,
) -> Result<End, (AttachError, TcpStream, TcpStream)> {
    if opts.sndbuf > 0 {
        let size = opts.sndbuf.min(i32::MAX as u32) as i32;
        let _ = sys::set_sndbuf_force(&client, size);
        let _ = sys::set_sndbuf_force(&backend, size);
    }
    // Snapshot before the psock can write anything.
    let w0 = (sys::written(&client), sys::written(&backend));
    let (Ok(w0c), Ok(w0b)) = w0 else {
        return Ok(End::Aborted("cannot read the sockets' counters".into()));
    };
    let pair = match kernel.attach(&client, &backend, u64::MAX) {
        Ok(pair) => pair,
        Err(e) => return Err((e, client, backend)),
    };
    let socks = match (to_async(client), to_async(backend)) {
        (Ok(c), Ok(b)) => [c, b],
        _ => {
            kernel.detach(pair);
            return Ok(End::Aborted(
                "cannot register the sockets with the runtime".into(),
            ));
        }
    };
    let now = Instant::now();
    let way = |src, dst, src_cookie, dst_cookie, written0| Way {
        src,
        dst,
        src_cookie,
        dst_cookie,
        written0,
        pending: Vec::new(),
        consumed: 0,
        fin_sent: false,
        last_written: written0,
        last_change: now,
        waiting: false,
        blocked: false,
    };
    let mut ways = [
        way(0, 1, pair.a, pair.b, w0b),
        way(1, 0, pair.b, pair.a, w0c),
    ];
    let end = run(kernel, &socks, &mut ways).await;
    if !matches!(end, End::Completed) {
        reset_both(socks[0].get_ref(), socks[1].get_ref());
    }
    let flows = kernel.detach(pair);
    let redirected: u64 = flows.iter().map(|f| f.redirected).sum();
    Stats::add(&stats.bytes_kernel_redirected, redirected);
    Stats::add(
        &stats.bytes_agent_copied,
        ways.iter().map(|w| w.consumed).sum(),
    );
    Ok(end)
}

fn to_async(s: TcpStream) -> io::Result<AsyncFd<StdStream>> {
    let s = s.into_std()?;
    // SAFETY: the stream owns its descriptor, which nothing closes or
    // replaces while the AsyncFd holds it.
    unsafe { AsyncFd::register_with_interest(s, Interest::READABLE | Interest::WRITABLE) }
        .map_err(io::Error::from)
}

async fn run(kernel: &Kernel, socks: &[AsyncFd<StdStream>; 2], ways: &mut [Way; 2]) -> End {
    let mut tick = TICK_MIN;
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
        let mut progressed = false;
        for w in ways.iter_mut() {
            match pump(kernel, socks, w) {
                Ok(p) => progressed |= p,
                Err(end) => return end,
            }
        }
        if ways.iter().all(|w| w.fin_sent) {
            return End::Completed;
        }
        tick = if progressed {
            TICK_MIN
        } else {
            (tick * 2).min(TICK_MAX)
        };
        let poll = ways.iter().any(|w| w.waiting);
        // Wake on anything a socket reports: bytes passed to it, its FIN, an
        // error, or room to write when a direction is blocked on it. The
        // readiness that woke us is cleared before the next look, so an event
        // after the look wakes us again (epoll is edge-triggered).
        let interest = |i: usize| {
            let mut want = Interest::READABLE | Interest::ERROR;
            if ways.iter().any(|w| w.dst == i && w.blocked) {
                want |= Interest::WRITABLE;
            }
            want
        };
        let (i0, i1) = (interest(0), interest(1));
        tokio::select! {
            r = socks[0].ready(i0) => if let Ok(mut g) = r { let seen = g.ready(); g.clear_ready_matching(seen & ready_of(i0)); },
            r = socks[1].ready(i1) => if let Ok(mut g) = r { let seen = g.ready(); g.clear_ready_matching(seen & ready_of(i1)); },
            () = tokio::time::sleep(tick), if poll => {},
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

/// Moves one direction forward as far as it can without waiting. Returns
/// whether anything moved; `Err` ends the connection.
fn pump(kernel: &Kernel, socks: &[AsyncFd<StdStream>; 2], w: &mut Way) -> Result<bool, End> {
    w.waiting = false;
    w.blocked = false;
    if w.fin_sent {
        return Ok(false);
    }
    let (src, dst) = (socks[w.src].get_ref(), socks[w.dst].get_ref());
    let gone = |e: io::Error| {
        if is_peer_gone(&e) {
            End::Reset(e)
        } else {
            End::Aborted(e.to_string())
        }
    };
    let flow = kernel.flow(w.src_cookie).unwrap_or_default();
    let mut progressed = false;

    // Bytes the verdict passed to src, in order: only once everything it
    // redirected before them is in dst, so no byte overtakes another.
    loop {
        if !w.pending.is_empty() {
            match sys::send(dst, &w.pending) {
                Ok(n) => {
                    w.pending.drain(..n);
                    w.consumed += n as u64;
                    progressed = true;
                    if w.pending.is_empty() {
                        // The verdict redirects again once it sees every
                        // passed byte consumed.
                        kernel
                            .set_ctl(
                                w.src_cookie,
                                PeerCtl {
                                    peer: w.dst_cookie,
                                    credit: u64::MAX,
                                    consumed: w.consumed,
                                },
                            )
                            .map_err(|e| End::Aborted(format!("cannot update `PEERS`: {e}")))?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    w.blocked = true;
                    break;
                }
                Err(e) => return Err(gone(e)),
            }
            continue;
        }
        let unread = flow.passed.saturating_sub(w.consumed);
        if unread == 0 {
            break;
        }
        let written = sys::written(dst).map_err(gone)? - w.written0;
        if written != flow.redirected + w.consumed {
            // dst's psock still owes earlier bytes: check again soon.
            w.waiting = true;
            break;
        }
        let mut buf = vec![0u8; unread.min(BUF as u64) as usize];
        match sys::recv(src, &mut buf) {
            Ok(0) => {
                w.waiting = true;
                break;
            }
            Ok(n) => {
                buf.truncate(n);
                w.pending = buf;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Counted by the verdict but not yet on the queue.
                w.waiting = true;
                break;
            }
            Err(e) => return Err(gone(e)),
        }
    }

    // The FIN goes on only when every byte before it is in dst.
    let src_info = sys::tcp_info(src).map_err(gone)?;
    let written = sys::written(dst).map_err(gone)? - w.written0;
    if written != w.last_written {
        w.last_written = written;
        w.last_change = Instant::now();
        progressed = true;
    }
    let fin = fin_received(src_info.state);
    let payload = src_info.bytes_received - u64::from(fin);
    if fin {
        if written == payload && w.pending.is_empty() {
            sys::shutdown_write(dst).map_err(gone)?;
            w.fin_sent = true;
            return Ok(true);
        }
        if written > payload {
            return Err(End::Aborted(format!(
                "{} bytes written for {payload} received: duplicated in the kernel",
                written
            )));
        }
        w.waiting = true;
    }
    if w.waiting
        && w.last_change.elapsed() > STALL
        && sys::outq(dst).unwrap_or(1) == 0
        && flow.redirected + flow.passed >= payload
    {
        // Everything received has had its verdict, dst has sent all it
        // took, and nothing moved for seconds: the rest is gone.
        return Err(End::Aborted(format!(
            "bytes lost in the kernel: {written} of {} delivered",
            flow.redirected + flow.passed
        )));
    }
    Ok(progressed)
}
