//! The splice dataplane: splice(2) from one socket into a pipe and from the
//! pipe into the other. Bytes stay in kernel pages; the agent only schedules.
use std::{io, os::fd::AsFd};

use tokio::{io::Interest, net::TcpStream};

use super::{end_of, End};
use crate::{conns::Entry, stats::Stats};

/// Bytes asked of one splice from the source; the pipe takes what fits.
const CHUNK: usize = 1 << 20;

pub async fn relay(stats: &Stats, a: TcpStream, b: TcpStream, entry: Entry) -> End {
    let result = tokio::try_join!(one_way(stats, &a, &b), one_way(stats, &b, &a)).map(drop);
    end_of(result, a, b, entry)
}

async fn one_way(stats: &Stats, src: &TcpStream, dst: &TcpStream) -> io::Result<()> {
    let (pipe_r, pipe_w) = crate::sys::pipe()?;
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
