//! Dialling a backend: non-blocking connect with a deadline, Nagle off.
use std::{io, net::SocketAddr, time::Duration};

use tokio::{io::Interest, net::TcpStream};

/// Connects to a backend within `timeout`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    match tokio::time::timeout(timeout, connecting(addr)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

/// Connects to a backend, with Nagle's algorithm off like the client's side
/// (see [`crate::proxy::workers::Workers::bind`]): a relay must not hold back a
/// small write while an earlier one is unacknowledged. With it on, a client
/// that sends a request in two writes waited for the backend's delayed ACK:
/// 40 ms per request on every dataplane (the kernel path's psock worker
/// sends through the same TCP code).
///
/// The outcome is read from the readiness alone: a socket whose connect
/// failed is write-closed (`EPOLLHUP`, or `EPOLLERR` with `EPOLLOUT`), one
/// that connected is only writable; the error itself is asked for only on
/// failure. (tokio's own connect asks for it every time: one `getsockopt`
/// per connection.)
pub async fn connecting(addr: SocketAddr) -> io::Result<TcpStream> {
    use std::os::fd::{FromRawFd as _, IntoRawFd as _};
    // mio's connect starts it (non-blocking, close-on-exec) and returns.
    let started = mio::net::TcpStream::connect(addr)?;
    started.set_nodelay(true)?;
    // SAFETY: the descriptor moves from mio's stream, which gives it up, to
    // std's, which owns it from here.
    let started = unsafe { std::net::TcpStream::from_raw_fd(started.into_raw_fd()) };
    let stream = TcpStream::from_std(started)?;
    let ready = stream.ready(Interest::WRITABLE | Interest::ERROR).await?;
    if ready.is_write_closed() || ready.is_error() {
        return Err(crate::sys::take_error(&stream)?.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection closed while connecting",
            )
        }));
    }
    Ok(stream)
}
