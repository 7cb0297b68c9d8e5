//! The splice dataplane: splice(2) from one socket into a pipe and from the
//! pipe into the other. Bytes stay in kernel pages; the agent only schedules.
use std::{
    io,
    os::fd::{AsFd, OwnedFd},
};

use tokio::{io::Interest, net::TcpStream};

use super::{end_of, End};
use crate::telemetry::{
    conns::{Entry, Meter, Path, FROM_CLIENT, TO_CLIENT},
    Stats,
};

/// Bytes asked of one splice from the source; the pipe takes what fits.
const CHUNK: usize = 1 << 20;
/// The pipe size asked for when the kernel's per-user pipe limits do not
/// apply. One stream on loopback, 3 runs each: 18.8-19.2 Gbit/s with the
/// default 64 KiB pipe, 20.7-24.3 with 1 MiB (and a fifth of the
/// retransmits): each splice moves up to 16 times more per system call.
const BIG_PIPE: usize = 1 << 20;
/// A new pipe's size (16 pages).
const DEFAULT_PIPE: usize = 64 << 10;

/// The pipe size to ask for on this system: [`BIG_PIPE`] (at most
/// `fs.pipe-max-size`) if the process is exempt from `fs.pipe-user-pages-soft`
/// (CAP_SYS_ADMIN or CAP_SYS_RESOURCE); otherwise the default, because past
/// that limit (64 MiB of pipes per user by default, 64 big ones) every new
/// pipe of the user gets 2 pages.
pub fn pipe_bytes() -> usize {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_SYS_RESOURCE: u32 = 24;
    let exempt = crate::sys::effective_caps()
        .is_ok_and(|caps| caps & (1 << CAP_SYS_ADMIN | 1 << CAP_SYS_RESOURCE) != 0);
    if !exempt {
        return 0;
    }
    std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .map_or(BIG_PIPE, |max| BIG_PIPE.min(max))
}

pub async fn relay(
    stats: &Stats,
    pipe_bytes: usize,
    a: TcpStream,
    b: TcpStream,
    entry: Entry,
) -> End {
    let meter = entry.meter();
    meter.set_path(Path::Splice);
    let result = tokio::try_join!(
        one_way(stats, (meter, FROM_CLIENT), pipe_bytes, &a, &b),
        one_way(stats, (meter, TO_CLIENT), pipe_bytes, &b, &a)
    )
    .map(drop);
    end_of(result, a, b, entry)
}

async fn one_way(
    stats: &Stats,
    (meter, dir): (&Meter, usize),
    pipe_bytes: usize,
    src: &TcpStream,
    dst: &TcpStream,
) -> io::Result<()> {
    // A direction holds a pipe only while it has bytes to move: taken from
    // the worker's pool when the source is readable, given back when the
    // source has nothing more (the pipe is empty then). A connection
    // between messages holds no pipe: with a pipe per direction for the
    // connection's life, a 20,000-descriptor limit held 3,330 connections
    // (6 descriptors each) instead of 10,000.
    let mut held: Option<Pipe> = None;
    loop {
        let (n, mut pipe) = loop {
            src.readable().await?;
            let pipe = match held.take() {
                Some(p) => p,
                None => Pipe::take()?,
            };
            match src.try_io(Interest::READABLE, || {
                crate::sys::splice(src.as_fd(), pipe.w.as_fd(), CHUNK)
            }) {
                Ok(n) => break (n, pipe),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Nothing more for now (or tokio's guess that an
                    // accepted socket has bytes was wrong): the empty pipe
                    // goes back.
                    pipe.give_back();
                    continue;
                }
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            pipe.give_back();
            crate::sys::shutdown_write(dst)?;
            meter.closed(dir);
            return Ok(());
        }
        // A pipe grows once a splice fills it: a connection that never
        // moves 64 KiB at once keeps a small one (3,330 idle connections
        // held 98 MiB more kernel memory with every pipe big).
        if n >= pipe.size && pipe.size < pipe_bytes {
            // Best effort: a pipe that stays small still works.
            if let Ok(size) = crate::sys::set_pipe_size(&pipe.w, pipe_bytes) {
                pipe.size = size;
            }
        }
        // On a failure below, the pipe (bytes still in it) is closed with
        // the connection.
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || {
                crate::sys::splice(pipe.r.as_fd(), dst.as_fd(), left)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        held = Some(pipe);
        Stats::add(&stats.bytes_spliced, n as u64);
        meter.moved(dir, n as u64);
    }
}

/// A pipe for one direction's splices. One that still holds bytes (the
/// connection failed mid-way) is closed, never given back.
struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    /// Its capacity, in bytes.
    size: usize,
}

/// Most empty pipes a worker keeps for the next connection.
const POOL: usize = 64;

thread_local! {
    /// This thread's empty pipes (each worker runs its connections on one
    /// thread).
    static PIPES: std::cell::RefCell<Vec<Pipe>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Pipe {
    /// An empty pipe: from this thread's pool, else a new one.
    fn take() -> io::Result<Pipe> {
        if let Some(p) = PIPES.with_borrow_mut(Vec::pop) {
            return Ok(p);
        }
        let (r, w) = crate::sys::pipe()?;
        Ok(Pipe {
            r,
            w,
            size: DEFAULT_PIPE,
        })
    }

    /// Returns an empty pipe to this thread's pool (or closes it if the
    /// pool is full).
    fn give_back(self) {
        PIPES.with_borrow_mut(|pool| {
            if pool.len() < POOL {
                pool.push(self);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::{pipe_bytes, BIG_PIPE};

    /// Where the process is exempt from the per-user pipe limits (root
    /// here), a splice pipe gets the size asked for.
    #[test]
    fn pipes_grow_when_the_limits_allow() {
        let want = pipe_bytes();
        assert!(want == 0 || want <= BIG_PIPE, "{want}");
        if want == 0 {
            return;
        }
        let (_r, w) = crate::sys::pipe().expect("pipe");
        let got = crate::sys::set_pipe_size(&w, want).expect("F_SETPIPE_SZ");
        assert_eq!(got, want);
    }
}
