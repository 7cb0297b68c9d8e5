//! The splice dataplane: splice(2) from one socket into a pipe and from the
//! pipe into the other. Bytes stay in kernel pages; the agent only schedules.
use std::{io, os::fd::AsFd};

use tokio::{io::Interest, net::TcpStream};

use super::{end_of, End};
use crate::{conns::Entry, stats::Stats};

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
    let result = tokio::try_join!(
        one_way(stats, pipe_bytes, &a, &b),
        one_way(stats, pipe_bytes, &b, &a)
    )
    .map(drop);
    end_of(result, a, b, entry)
}

async fn one_way(
    stats: &Stats,
    pipe_bytes: usize,
    src: &TcpStream,
    dst: &TcpStream,
) -> io::Result<()> {
    let (pipe_r, pipe_w) = crate::sys::pipe()?;
    // The pipe grows once a splice fills it: a connection that never moves
    // 64 KiB at once keeps the small one (10 KiB of kernel memory per big
    // pipe, 3,330 idle connections held 98 MiB more with every pipe big).
    let mut grown = pipe_bytes <= DEFAULT_PIPE;
    loop {
        let n = loop {
            src.readable().await?;
            match src.try_io(Interest::READABLE, || {
                crate::sys::splice(src.as_fd(), pipe_w.as_fd(), CHUNK)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            crate::sys::shutdown_write(dst)?;
            return Ok(());
        }
        if !grown && n >= DEFAULT_PIPE {
            grown = true;
            // Best effort: a pipe that stays at the default still works.
            let _ = crate::sys::set_pipe_size(&pipe_w, pipe_bytes);
        }
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || {
                crate::sys::splice(pipe_r.as_fd(), dst.as_fd(), left)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        Stats::add(&stats.bytes_spliced, n as u64);
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
