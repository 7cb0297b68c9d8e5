//! How a relayed connection ends, and ending one: what every path shares.
use std::io;

use tokio::net::TcpStream;

use crate::telemetry::conns::Entry;

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

/// Is `e` the peer going away (as opposed to a local failure)?
pub(super) fn is_peer_gone(e: &io::Error) -> bool {
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
pub(super) fn reset_both(a: &impl std::os::fd::AsRawFd, b: &impl std::os::fd::AsRawFd) {
    let _ = crate::sys::set_linger_reset(a);
    let _ = crate::sys::set_linger_reset(b);
}

/// The end of a copy or splice relay whose directions ran to `result`.
pub(super) fn end_of(result: io::Result<()>, a: TcpStream, b: TcpStream, entry: Entry) -> End {
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
