//! Where connections run: one thread per core, each driving a
//! single-threaded runtime, each with its own listening socket on every port
//! (`SO_REUSEPORT`: the kernel spreads new connections over them by address
//! hash). A connection lives on the worker that accepted it, from accept to
//! close, so no thread ever wakes another on its behalf.
//!
//! Measured on the connection-rate bench (2 cores, connect, 64 B, echo,
//! close): with the multi-threaded runtime, where the accepting thread
//! handed each connection to another (a futex wake-up each), the agent spent
//! 89 µs of CPU per connection; with this, 59 µs on one worker and 75 on two
//! (HAProxy, one thread: 62).
//!
//! The control plane (configuration, the admin socket, signals) stays on the
//! main thread's runtime; it only reaches the workers by spawning accept
//! loops on them.
use std::{io, net::SocketAddr, num::NonZeroUsize, thread};

use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    runtime::Handle,
    sync::oneshot,
    task::JoinHandle,
};

/// The worker threads. Dropping this stops them (and drops every task
/// still on them).
pub struct Workers {
    handles: Vec<Handle>,
    _stop: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `n` workers; 0 means one per CPU this process may run on.
    pub fn start(n: usize) -> io::Result<Workers> {
        let n = match n {
            0 => thread::available_parallelism().map_or(1, NonZeroUsize::get),
            n => n,
        };
        let mut handles = Vec::with_capacity(n);
        let mut stops = Vec::with_capacity(n);
        for i in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || {
                    // Runs the spawned tasks until the sender goes.
                    let _ = runtime.block_on(stopped);
                })?;
        }
        Ok(Workers {
            handles,
            _stop: stops,
        })
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Binds one listening socket per worker on `addr` (port 0: a free
    /// port, the same for all). A port another socket listens on is
    /// refused, as with a single socket: the kernel refuses a socket that
    /// did not ask to share, and [`foreign_listener`] one that did (another
    /// gateway on the same port would otherwise silently take half of it).
    pub fn bind(&self, addr: SocketAddr) -> io::Result<Listeners> {
        let mut sockets = Vec::with_capacity(self.len());
        let mut addr = addr;
        for _ in 0..self.len() {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            // Lets a port closed a moment ago open again while its old
            // connections sit in TIME_WAIT.
            socket.set_reuseaddr(true)?;
            socket.set_reuseport(true)?;
            // Inherited by every accepted socket: the client's side has
            // Nagle's algorithm off without a system call per connection
            // (see `proxy::dial::connecting`).
            socket.set_nodelay(true)?;
            socket.bind(addr)?;
            let listener = socket.listen(BACKLOG)?;
            // The first socket chose the port the others join.
            addr = listener.local_addr()?;
            // Registered with this runtime by `listen`; the worker
            // registers it again with its own.
            sockets.push(listener.into_std()?);
        }
        let ours: Vec<u64> = sockets
            .iter()
            .filter_map(|s| crate::sys::inode(s).ok())
            .collect();
        if let Some(inode) = foreign_listener(addr, &ours) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("address already in use (another process listens on it too: socket inode {inode})"),
            ));
        }
        Ok(Listeners { addr, sockets })
    }

    /// Runs `serve` on every worker, each with its own socket of
    /// `listeners`.
    pub fn serve<F, Fut>(&self, listeners: Listeners, serve: F) -> Vec<JoinHandle<()>>
    where
        F: Fn(TcpListener) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let addr = listeners.addr;
        self.handles
            .iter()
            .zip(listeners.sockets)
            .map(|(handle, socket)| {
                // The runtime's context is needed to register the socket
                // with the worker's own reactor.
                let _in_worker = handle.enter();
                match TcpListener::from_std(socket) {
                    Ok(listener) => handle.spawn(serve(listener)),
                    Err(e) => {
                        tracing::warn!("a worker cannot listen on {addr}: {e}");
                        handle.spawn(async {})
                    }
                }
            })
            .collect()
    }
}

/// A listening socket on `addr`'s port, of its family, whose address
/// overlaps `addr` (equal, or either unspecified) and which is not one of
/// `ours`: its inode. Read from `/proc/net/tcp{,6}` (this network
/// namespace's); unreadable tables find nothing.
fn foreign_listener(addr: SocketAddr, ours: &[u64]) -> Option<u64> {
    let table = if addr.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let text = std::fs::read_to_string(table).ok()?;
    text.lines().skip(1).find_map(|line| {
        let (local, inode) = parse_listener(line)?;
        let overlaps =
            local.ip() == addr.ip() || local.ip().is_unspecified() || addr.ip().is_unspecified();
        (local.port() == addr.port() && overlaps && !ours.contains(&inode)).then_some(inode)
    })
}

/// A `/proc/net/tcp{,6}` line's local address and inode, if it is a
/// listening socket. Addresses are printed as the raw 32-bit words in the
/// host's byte order, ports in hex.
fn parse_listener(line: &str) -> Option<(SocketAddr, u64)> {
    const LISTEN: &str = "0A";
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.get(3) != Some(&LISTEN) {
        return None;
    }
    let (ip, port) = fields.get(1)?.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for i in (0..ip.len()).step_by(8) {
        let word = u32::from_str_radix(ip.get(i..i + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => std::net::IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
        _ => return None,
    };
    let inode = fields.get(9)?.parse().ok()?;
    Some((SocketAddr::new(ip, port), inode))
}

/// The next connection on `listener`. A failed accept (EMFILE and friends)
/// is logged and retried after a pause rather than in a spin.
pub async fn accept(listener: &TcpListener, what: &str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(c) => return c,
            Err(e) => {
                tracing::warn!("accept on {what} failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Pending connections per listening socket before the kernel refuses more.
const BACKLOG: u32 = 4096;

/// One listening socket per worker, all on the same address.
pub struct Listeners {
    addr: SocketAddr,
    sockets: Vec<std::net::TcpListener>,
}

impl Listeners {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

#[cfg(test)]
mod tests {
    use super::parse_listener;

    #[test]
    fn proc_net_tcp_lines() {
        let v4 = "   0: 0100007F:07E8 00000000:0000 0A 00000000:00000000 00:00000000 \
                  00000000     0        0 1594 1 00000000c1f9219d 100 0 0 10 0";
        assert_eq!(
            parse_listener(v4),
            Some(("127.0.0.1:2024".parse().expect("addr"), 1594))
        );
        let established = v4.replace(" 0A ", " 01 ");
        assert_eq!(parse_listener(&established), None);
        let v6 = "   1: 00000000000000000000000001000000:1F90 \
                  00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 \
                  00000000     0        0 77 1 0000000000000000 100 0 0 10 0";
        assert_eq!(
            parse_listener(v6),
            Some(("[::1]:8080".parse().expect("addr"), 77))
        );
        assert_eq!(parse_listener("  sl  local_address rem_address   st"), None);
    }
}
