//! The data path's scenarios, each runnable on any dataplane and topology.
//! Every one asserts what a plain TCP connection would guarantee; the suite in
//! tests/datapath.rs runs them, and the soak binary mixes them.
use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    exchange_from, exchange_in, read_all, Gateway, Net, Order, Seen, Stream, StreamBackend,
    IO_TIMEOUT,
};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;

/// A backend that runs `handler` on a thread per connection.
pub struct Backend {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Backend {
    pub fn serve(l: TcpListener, handler: impl Fn(TcpStream) + Send + Sync + 'static) -> Backend {
        let addr = l.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(handler);
        let flag = stop.clone();
        l.set_nonblocking(true).expect("nonblocking");
        thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let h = handler.clone();
                        thread::spawn(move || h(s));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Backend { addr, stop }
    }

    /// Echoes every byte until the client's FIN, then sends its own; a first
    /// byte `R` makes it reset the connection instead.
    pub fn echo(l: TcpListener) -> Backend {
        Backend::serve(l, |mut s| {
            let _ = s.set_read_timeout(Some(IO_TIMEOUT));
            let mut buf = vec![0u8; 64 * 1024];
            let mut first = true;
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if first && buf[0] == b'R' {
                            let _ = socket_reset(&s);
                            return;
                        }
                        first = false;
                        if s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = s.shutdown(Shutdown::Write);
        })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Makes `close` send RST: `SO_LINGER {1, 0}`.
pub fn socket_reset(s: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a value that lives for the call.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&l).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn u64_at(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {key} in {v}"))
}

/// One transfer through `gw`: the client sends `up` bytes, the backend
/// `down`, in the given orders; both ends' hashes must match.
fn transfer(
    net: &Net,
    gw: &Gateway,
    backend: &StreamBackend,
    up: u64,
    client_order: Order,
    what: &str,
) {
    let client = net.connect(gw.addr).expect("connect to gateway");
    let seen = exchange_in(client, Stream::new(up ^ 0x5eed, up), client_order)
        .unwrap_or_else(|e| panic!("{what}: client: {e}"));
    let back = backend.next();
    assert_eq!(
        back.received, up,
        "{what}: backend got {} of {up} bytes",
        back.received
    );
    assert_eq!(
        back.received_hash, seen.sent_hash,
        "{what}: client->backend bytes differ"
    );
    assert_eq!(
        seen.received_hash, back.sent_hash,
        "{what}: backend->client bytes differ"
    );
}

/// Byte-exact both ways at once, for every size from nothing to megabytes.
pub fn sizes(net: &Net, dp: &str) {
    for (up, down) in [
        (0, 0),
        (1, 1),
        (0, 64 * KIB),
        (64 * KIB, 0),
        (64 * KIB, 64 * KIB),
        (8 * MIB + 7, 8 * MIB - 3),
    ] {
        let l = net.backend_listener();
        let backend = StreamBackend::on(l, down ^ 0xbeef, down, Order::Concurrent);
        let gw = net.gateway(backend.addr, dp, &[]);
        transfer(
            net,
            &gw,
            &backend,
            up,
            Order::Concurrent,
            &format!("{dp} {up}/{down}"),
        );
    }
}

/// Half-close: a request, the client's FIN, then the whole answer; and the
/// backend closing its side first while the client still sends.
pub fn half_close(net: &Net, dp: &str) {
    // Request, FIN, then the response (the seed's `(date; sleep 1) | nc`).
    let backend = StreamBackend::on(net.backend_listener(), 7, 4 * MIB, Order::ReadFirst);
    let gw = net.gateway(backend.addr, dp, &[]);
    for up in [1, 100, MIB] {
        transfer(
            net,
            &gw,
            &backend,
            up,
            Order::Concurrent,
            &format!("{dp} request {up} then FIN"),
        );
    }
    drop(gw);
    // The backend sends everything and its FIN first; the client reads to the
    // end before it answers and closes.
    let backend = StreamBackend::on(net.backend_listener(), 8, 2 * MIB, Order::Concurrent);
    let gw = net.gateway(backend.addr, dp, &[]);
    transfer(
        net,
        &gw,
        &backend,
        3 * MIB,
        Order::ReadFirst,
        &format!("{dp} backend closes first"),
    );
}

/// Early data: the client speaks first right after connecting, and a backend
/// that speaks first (a banner); each answer arrives promptly, once, in order,
/// with no later segment to push it.
pub fn early_data(net: &Net, dp: &str) {
    const PROMPT: Duration = Duration::from_secs(1);
    // Client first: the backend answers a 100-byte request with 100 bytes.
    let backend = Backend::serve(net.backend_listener(), |mut s| {
        let _ = s.set_read_timeout(Some(IO_TIMEOUT));
        let mut req = [0u8; 100];
        if s.read_exact(&mut req).is_ok() {
            for b in &mut req {
                *b = b.wrapping_add(1);
            }
            let _ = s.write_all(&req);
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        }
    });
    let gw = net.gateway(backend.addr, dp, &[]);
    for i in 0..10u8 {
        let mut c = net.connect(gw.addr).expect("connect");
        let req: Vec<u8> = (0..100u8).map(|b| b.wrapping_mul(i + 3)).collect();
        c.write_all(&req).expect("send request");
        c.set_read_timeout(Some(PROMPT)).expect("timeout");
        let started = Instant::now();
        let mut reply = [0u8; 100];
        c.read_exact(&mut reply).unwrap_or_else(|e| {
            panic!("{dp}: early request {i}: no answer within {PROMPT:?}: {e}")
        });
        let want: Vec<u8> = req.iter().map(|b| b.wrapping_add(1)).collect();
        assert_eq!(
            reply.to_vec(),
            want,
            "{dp}: early request {i}: wrong answer"
        );
        assert!(started.elapsed() < PROMPT);
        c.shutdown(Shutdown::Write).expect("fin");
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).expect("read to end");
        assert!(rest.is_empty(), "{dp}: {} unexpected bytes", rest.len());
    }
    drop(gw);
    // Backend first: a 64-byte banner on accept, before the client says anything.
    let backend = Backend::serve(net.backend_listener(), |mut s| {
        let banner: Vec<u8> = (0..64u8).collect();
        let _ = s.write_all(&banner);
        let _ = s.set_read_timeout(Some(IO_TIMEOUT));
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        let _ = s.write_all(&rest);
        let _ = s.shutdown(Shutdown::Write);
    });
    let gw = net.gateway(backend.addr, dp, &[]);
    for i in 0..10 {
        let mut c = net.connect(gw.addr).expect("connect");
        c.set_read_timeout(Some(PROMPT)).expect("timeout");
        let mut banner = [0u8; 64];
        c.read_exact(&mut banner)
            .unwrap_or_else(|e| panic!("{dp}: banner {i}: not within {PROMPT:?}: {e}"));
        assert_eq!(
            banner.to_vec(),
            (0..64u8).collect::<Vec<_>>(),
            "{dp}: banner {i}"
        );
        c.write_all(b"bye").expect("send");
        c.shutdown(Shutdown::Write).expect("fin");
        c.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).expect("read to end");
        assert_eq!(rest, b"bye", "{dp}: banner {i}: echo after banner");
    }
}

/// Waits for `s` to report a reset; returns how long it took.
fn time_to_reset(s: &mut TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    s.set_read_timeout(Some(within)).expect("timeout");
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => panic!("got a FIN where a reset was due"),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return started.elapsed(),
            Err(e) => panic!("no reset within {within:?}: {e}"),
        }
        assert!(started.elapsed() < within, "no reset within {within:?}");
    }
}

/// A reset on either side reaches the other within a second.
pub fn resets(net: &Net, dp: &str) {
    let within = Duration::from_secs(1);
    // The client resets mid-stream; the backend must see it.
    let (tx, rx) = mpsc::channel();
    let backend = Backend::serve(net.backend_listener(), move |mut s| {
        let mut first = [0u8; 1];
        let _ = s.set_read_timeout(Some(IO_TIMEOUT));
        if s.read_exact(&mut first).is_err() {
            return;
        }
        let _ = tx.send(std::panic::catch_unwind(move || {
            time_to_reset(&mut s, Duration::from_secs(3))
        }));
    });
    let gw = net.gateway(backend.addr, dp, &[]);
    let mut c = net.connect(gw.addr).expect("connect");
    c.write_all(&vec![1u8; 256 * 1024]).expect("send");
    thread::sleep(Duration::from_millis(100));
    socket_reset(&c).expect("linger");
    drop(c);
    let took = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("backend connection")
        .unwrap_or_else(|_| panic!("{dp}: backend saw no reset"));
    assert!(
        took < within,
        "{dp}: client reset reached the backend after {took:?}"
    );
    drop(gw);

    // The backend resets after sending; the client must see it.
    let backend = Backend::serve(net.backend_listener(), |mut s| {
        let _ = s.write_all(&vec![2u8; 256 * 1024]);
        thread::sleep(Duration::from_millis(100));
        let _ = socket_reset(&s);
        let _ = s.flush();
    });
    let gw = net.gateway(backend.addr, dp, &[]);
    let mut c = net.connect(gw.addr).expect("connect");
    let took = time_to_reset(&mut c, Duration::from_secs(3));
    assert!(
        took < Duration::from_millis(1100),
        "{dp}: backend reset reached the client after {took:?}"
    );
    let stats = gw.stop();
    assert!(u64_at(&stats, "connections_reset") >= 1, "{dp}: {stats}");
}

/// A backend that stops reading throttles the client: what the client gets
/// to write is bounded, the gateway holds a bounded amount, and once the
/// backend reads again every byte arrives.
pub fn backpressure(net: &Net, dp: &str, connections: usize) {
    const STALL: Duration = Duration::from_secs(2);
    // Reduced (in a guest under emulation) the stream still outgrows what
    // the asserts below allow to be in flight.
    let total = if crate::reduced() { 56 * MIB } else { 96 * MIB };
    let (tx, got) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let backend = Backend::serve(net.backend_listener(), move |mut s| {
        thread::sleep(STALL);
        let _ = s.set_read_timeout(Some(IO_TIMEOUT));
        let seen = read_all(&mut s);
        let _ = s.shutdown(Shutdown::Write);
        let _ = tx
            .lock()
            .expect("lock")
            .send(seen.map_err(|e| e.to_string()));
    });
    let gw = net.gateway(backend.addr, dp, &[]);
    let mut clients = Vec::new();
    for i in 0..connections {
        let c = net.connect(gw.addr).expect("connect");
        let written = Arc::new(AtomicU64::new(0));
        let w = written.clone();
        let h = thread::spawn(move || {
            let mut s = c;
            s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
            let mut counting = Counting {
                inner: &mut s,
                n: &w,
            };
            let hash = Stream::new(i as u64, total)
                .write_to(&mut counting)
                .expect("write");
            s.shutdown(Shutdown::Write).expect("fin");
            let mut rest = Vec::new();
            s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
            s.read_to_end(&mut rest).expect("read to end");
            hash
        });
        clients.push((written, h));
    }
    // While the backend is stalled, sample what the client got to write and
    // what the gateway holds.
    let mut peak_held = 0;
    let mut peak_rss = 0;
    let started = Instant::now();
    while started.elapsed() < STALL - Duration::from_millis(300) {
        let s = gw.sample();
        peak_held = peak_held.max(u64_at(&s, "held_max_bytes"));
        peak_rss = peak_rss.max(u64_at(&s, "rss_bytes"));
        thread::sleep(Duration::from_millis(100));
    }
    let written: Vec<u64> = clients
        .iter()
        .map(|(w, _)| w.load(Ordering::Relaxed))
        .collect();
    for (i, w) in written.iter().enumerate() {
        // Client send buffer + gateway + backend receive buffer: tens of MiB
        // at most, nowhere near the whole stream.
        assert!(
            *w < 48 * MIB,
            "{dp}: client {i} wrote {w} bytes to a stalled reader"
        );
    }
    // What the gateway may hold for one connection: the source socket's
    // receive buffer and the target's send buffer at their autotuning
    // limits, plus the verdict's window (4 MiB) on the kernel path. A
    // connection that `auto` moves into the kernel after its copy path grew
    // the receive buffer (seen: 34 MB with tcp_rmem's 32 MiB limit) reaches
    // more than one that started there (19 MB).
    let limit = |f: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/{f}"))
            .ok()
            .and_then(|v| v.split_whitespace().nth(2)?.parse().ok())
            .unwrap_or(6 * MIB)
    };
    let bound = limit("tcp_rmem") + limit("tcp_wmem") + 4 * MIB;
    assert!(
        peak_held < bound,
        "{dp}: one connection held {peak_held} bytes (bound {bound})"
    );
    let mut sent: Vec<[u8; 32]> = clients
        .into_iter()
        .map(|(_, h)| h.join().expect("client finished"))
        .collect();
    let mut received: Vec<[u8; 32]> = (0..connections)
        .map(|_| {
            let (n, hash) = got
                .recv_timeout(IO_TIMEOUT)
                .expect("backend finished")
                .unwrap_or_else(|e| panic!("{dp}: backend: {e}"));
            assert_eq!(n, total, "{dp}: backend got {n} of {total} bytes");
            hash
        })
        .collect();
    sent.sort_unstable();
    received.sort_unstable();
    assert_eq!(sent, received, "{dp}: bytes differ after backpressure");
    let stats = gw.stop();
    assert_eq!(
        u64_at(&stats, "connections_completed"),
        connections as u64,
        "{dp}: {stats}"
    );
    eprintln!(
        "{} {dp}: {connections} stalled readers: client wrote at most {} KiB, gateway held at most {} KiB per connection, agent RSS peak {} MiB",
        net.name(),
        written.iter().max().copied().unwrap_or(0) / KIB,
        peak_held / KIB,
        peak_rss / MIB,
    );
}

struct Counting<'a> {
    inner: &'a mut TcpStream,
    n: &'a AtomicU64,
}

impl std::io::Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(&buf[..buf.len().min(64 * 1024)])?;
        self.n.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// What a mixed run moved.
#[derive(Debug, Default, Clone, Copy)]
pub struct Mix {
    pub connections: u64,
    pub bytes: u64,
    pub failures: u64,
    /// The gateway's peak resident memory and peak bytes held, sampled.
    pub peak_rss: u64,
    pub peak_held: u64,
}

/// The first bytes of a mixed client's stream: what the backend must do.
const HEADER: usize = 24;

fn order_code(o: Order) -> u8 {
    match o {
        Order::Concurrent => 0,
        Order::ReadFirst => 1,
        Order::FinLast => 2,
    }
}

fn order_of(code: u8) -> Order {
    match code % 3 {
        0 => Order::Concurrent,
        1 => Order::ReadFirst,
        _ => Order::FinLast,
    }
}

/// What a scripted backend saw on one connection: the client's id and the
/// exchange, or what went wrong.
pub type Report = Result<(u64, Seen), String>;

/// A backend whose behaviour each client chooses: the client's stream starts
/// with [`HEADER`] bytes giving the answer's length and seed, when to send it
/// relative to the FIN, and how slowly to read. It reports what it saw.
pub fn scripted_backend(l: TcpListener) -> (Backend, mpsc::Receiver<Report>) {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let backend = Backend::serve(l, move |mut s| {
        let result = (|| -> std::io::Result<(u64, Seen)> {
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.set_write_timeout(Some(IO_TIMEOUT))?;
            let mut h = [0u8; HEADER];
            s.read_exact(&mut h)?;
            let id = u64::from_le_bytes(h[0..8].try_into().expect("8 bytes"));
            let down = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
            let order = order_of(h[16]);
            let pause = Duration::from_micros(u64::from(h[17]) * 100);
            let mut r = Slow {
                inner: s.try_clone()?,
                pause,
                header: Some(h),
            };
            let seen = exchange_from(&mut r, s, Stream::new(id ^ 0xd0d0, down), order)?;
            Ok((id, seen))
        })();
        let _ = tx
            .lock()
            .expect("lock")
            .send(result.map_err(|e| e.to_string()));
    });
    (backend, rx)
}

/// A reader that sleeps between reads (a slow application), and hands back a
/// header it has already consumed so the hash covers the whole stream.
struct Slow {
    inner: TcpStream,
    pause: Duration,
    header: Option<[u8; HEADER]>,
}

impl std::io::Read for Slow {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(h) = self.header.take() {
            buf[..HEADER].copy_from_slice(&h);
            return Ok(HEADER);
        }
        if !self.pause.is_zero() {
            thread::sleep(self.pause);
        }
        self.inner.read(buf)
    }
}

/// A client stream that starts with the header for [`scripted_backend`].
struct Scripted {
    header: [u8; HEADER],
    rest: Stream,
}

impl crate::Source for Scripted {
    fn send(self, w: &mut TcpStream) -> std::io::Result<[u8; 32]> {
        use sha2::Digest as _;
        // Hash header and body as one stream, as the backend sees it.
        let mut tee = Tee {
            inner: w,
            hash: sha2::Sha256::new(),
        };
        tee.write_all(&self.header)?;
        self.rest.write_to(&mut tee)?;
        Ok(tee.hash.finalize().into())
    }
}

struct Tee<'a, W> {
    inner: &'a mut W,
    hash: sha2::Sha256,
}

impl<W: std::io::Write> std::io::Write for Tee<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use sha2::Digest as _;
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A size from a log-uniform spread: mostly small, sometimes megabytes.
fn size(rng: &mut impl rand::Rng, max_log2: u32) -> u64 {
    match rng.random_range(0..8) {
        0 => 0,
        1 => rng.random_range(1..16),
        _ => {
            let bits = rng.random_range(4..=max_log2);
            rng.random_range(0..(1u64 << bits))
        }
    }
}

/// `n` connections through one gateway, `concurrency` at a time, each with a
/// random size each way (up to 2^max_log2 bytes), random FIN orders on both
/// ends and, for some, a slow reader. Every byte is checked.
pub fn mixed(net: &Net, dp: &str, n: u64, concurrency: u64, seed: u64, max_log2: u32) -> Mix {
    use rand::{Rng as _, SeedableRng as _};
    let (backend, seen) = scripted_backend(net.backend_listener());
    let gw = net.gateway(backend.addr, dp, &[]);
    let mut plan = rand::rngs::SmallRng::seed_from_u64(seed);
    let jobs: Vec<_> = (0..n)
        .map(|id| {
            let up = size(&mut plan, max_log2);
            let down = size(&mut plan, max_log2);
            let orders = [Order::Concurrent, Order::ReadFirst, Order::FinLast];
            // The client always speaks first (the backend waits for its
            // header), so it never reads first.
            let client_order = orders[[0, 2][plan.random_range(0..2)]];
            // A client that closes only after the whole answer needs a
            // backend that closes without waiting for the client's FIN;
            // otherwise both would wait forever, as over any TCP path.
            let backend_order = match client_order {
                Order::FinLast => Order::Concurrent,
                _ => orders[plan.random_range(0..3)],
            };
            let slow = if plan.random_range(0..6) == 0 {
                plan.random_range(1..=20)
            } else {
                0
            };
            (id, up, down, client_order, backend_order, slow)
        })
        .collect();
    let jobs = Arc::new(std::sync::Mutex::new(jobs.into_iter()));
    let mut mix = Mix::default();
    let mut sent = std::collections::HashMap::new();
    let results: Vec<_> = (0..concurrency)
        .map(|_| {
            let (jobs, net, addr) = (jobs.clone(), net.clone(), gw.addr);
            thread::spawn(move || {
                let mut out = Vec::new();
                loop {
                    let job = jobs.lock().expect("lock").next();
                    let Some((id, up, down, co, bo, slow)) = job else {
                        break;
                    };
                    let mut header = [0u8; HEADER];
                    header[0..8].copy_from_slice(&id.to_le_bytes());
                    header[8..16].copy_from_slice(&down.to_le_bytes());
                    header[16] = order_code(bo);
                    header[17] = slow;
                    let r = net.connect(addr).and_then(|s| {
                        s.set_read_timeout(Some(IO_TIMEOUT))?;
                        s.set_write_timeout(Some(IO_TIMEOUT))?;
                        let mut r = s.try_clone()?;
                        let script = Scripted {
                            header,
                            rest: Stream::new(id, up),
                        };
                        exchange_from(&mut r, s, script, co)
                    });
                    out.push((id, up, down, r.map_err(|e| e.to_string())));
                }
                out
            })
        })
        .collect();
    // Sample the gateway while the clients run.
    while !results.iter().all(|h| h.is_finished()) {
        let s = gw.sample();
        mix.peak_rss = mix.peak_rss.max(u64_at(&s, "rss_bytes"));
        mix.peak_held = mix.peak_held.max(u64_at(&s, "held_bytes"));
        thread::sleep(Duration::from_millis(200));
    }
    for h in results {
        for (id, up, down, r) in h.join().expect("client thread") {
            mix.connections += 1;
            match r {
                Ok(seen) => {
                    if seen.received != down
                        || seen.received_hash != Stream::hash(id ^ 0xd0d0, down)
                    {
                        eprintln!(
                            "{dp} connection {id}: client got {} of {down} bytes, or wrong ones",
                            seen.received
                        );
                        mix.failures += 1;
                    }
                    sent.insert(id, (up, seen.sent_hash));
                    mix.bytes += up + down;
                }
                Err(e) => {
                    eprintln!("{dp} connection {id} (up {up}, down {down}): client: {e}");
                    mix.failures += 1;
                }
            }
        }
    }
    for _ in 0..mix.connections {
        match seen.recv_timeout(IO_TIMEOUT) {
            Ok(Ok((id, back))) => {
                let ok = sent.get(&id).is_some_and(|(up, hash)| {
                    back.received == *up + HEADER as u64 && back.received_hash == *hash
                });
                if !ok {
                    eprintln!(
                        "{dp} connection {id}: backend got {} bytes, or wrong ones",
                        back.received
                    );
                    mix.failures += 1;
                }
            }
            Ok(Err(e)) => {
                eprintln!("{dp}: backend: {e}");
                mix.failures += 1;
            }
            Err(_) => {
                eprintln!("{dp}: a backend connection never finished");
                mix.failures += 1;
                break;
            }
        }
    }
    let stderr = gw.stderr();
    let stats = gw.stop();
    if u64_at(&stats, "connections_aborted") > 0 || u64_at(&stats, "connections_reset") > 0 {
        eprintln!("{dp}: {stats}");
        for line in stderr.iter().filter(|l| l.contains("WARN")) {
            eprintln!("{dp}: gateway: {line}");
        }
        mix.failures += 1;
    }
    drop(backend);
    mix
}

/// What [`bulk_echo`] saw.
#[derive(Debug, Default, Clone)]
pub struct Bulk {
    pub connections: u64,
    pub bytes: u64,
    /// One line per transfer that did not come back whole and in order.
    pub failures: Vec<String>,
    /// Log lines in which the agent detected duplicated bytes.
    pub detected: Vec<String>,
    /// The gateway's final counters.
    pub stats: serde_json::Value,
}

/// Bulk both ways: `runs` transfers of `len` bytes of the position-encoded
/// stream (crate::positions) to an echo backend one after another, then
/// `at_once` at the same time, through one gateway on `dp`.
pub fn bulk_echo(net: &Net, dp: &str, runs: u64, at_once: usize, len: u64) -> Bulk {
    let backend = Backend::echo(net.backend_listener());
    let gw = net.gateway(backend.addr, dp, &[]);
    let addr = gw.addr;
    let mut failures = Vec::new();
    for run in 0..runs {
        match net.connect(addr) {
            Ok(s) => {
                if let Err(e) = crate::positioned_echo(s, len) {
                    failures.push(format!("run {run}: {e}"));
                }
            }
            Err(e) => failures.push(format!("run {run}: connect: {e}")),
        }
    }
    let together: Vec<_> = (0..at_once)
        .map(|_| {
            let s = net.connect(addr);
            thread::spawn(move || crate::positioned_echo(s.map_err(|e| e.to_string())?, len))
        })
        .collect();
    for (i, t) in together.into_iter().enumerate() {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("together {i}: {e}")),
            Err(_) => failures.push(format!("together {i}: client panicked")),
        }
    }
    let detected = gw
        .stderr()
        .into_iter()
        .filter(|l| l.contains("duplicated"))
        .collect();
    let connections = runs + at_once as u64;
    Bulk {
        connections,
        bytes: 2 * len * connections,
        failures,
        detected,
        stats: gw.stop(),
    }
}
