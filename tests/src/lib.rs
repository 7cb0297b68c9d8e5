//! Harness for the end-to-end tests: the real `gateway` binary, real sockets,
//! real BPF programs. Every process started is killed when its guard drops,
//! so a failing test leaves nothing behind.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

pub mod agent;
pub mod kube;
pub mod netns;
pub mod prometheus;
pub mod scenarios;

pub use netns::{Netns, Topology};
use rand::{rngs::SmallRng, RngCore as _, SeedableRng as _};
use sha2::{Digest as _, Sha256};

/// Whether this process may do what the end-to-end tests do (load BPF
/// programs, create network namespaces, bind where it likes): root. If not,
/// says which test is skipped and why, so that a plain `cargo test` as a
/// normal user passes with the reason in its output; `cargo xtask test`
/// runs as root and runs them all.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    eprintln!("skipped {test}: needs root (it loads BPF programs and creates network namespaces)");
    false
}

/// Returns from the calling test, saying so, unless it runs as root.
#[macro_export]
macro_rules! needs_root {
    () => {
        let here = std::any::type_name_of_val(&|| ());
        if !$crate::privileged(here.trim_end_matches("::{{closure}}")) {
            return;
        }
    };
}

/// Longest any single socket operation in a test may block.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// `n` scaled by `GATEWAY_TEST_SCALE` (a percentage, 100 when unset): the
/// kernel matrix runs the many-connection tests smaller, since a guest
/// under qemu's emulation is some ten times slower than this machine.
pub fn scaled(n: u64) -> u64 {
    let pct = std::env::var("GATEWAY_TEST_SCALE")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(100);
    (n * pct / 100).max(1)
}

/// True when `GATEWAY_TEST_SCALE` asks for smaller runs (the kernel matrix).
pub fn reduced() -> bool {
    scaled(100) < 100
}

/// A binary of the gateway-user package, built next to this test binary
/// (`cargo xtask test` builds them first). `GATEWAY_BIN_DIR` overrides.
pub fn bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("GATEWAY_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> or target/<profile>/<bin> -> target/<profile>/<name>
    let mut dir = exe.parent().expect("binary has a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("deps has a parent");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo xtask test` does)",
        path.display()
    );
    path
}

/// A running agent process (`gateway forward` or `gateway run`): its log
/// lines, and the counters it prints on stdout. Killed when dropped; its log
/// is printed if the test is failing.
pub struct Process {
    child: Option<Child>,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: mpsc::Receiver<String>,
}

impl Process {
    /// Starts `cmd` and waits until a log line makes `ready` say something;
    /// returns that.
    pub fn spawn(
        cmd: &mut Command,
        ready: impl Fn(&str) -> Option<String> + Send + 'static,
    ) -> (Process, String) {
        cmd.env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start gateway");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let lines = stderr.clone();
        let pipe = child.stderr.take().expect("stderr");
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let seen = ready(&line);
                lines.lock().expect("lock").push(line);
                if let Some(seen) = seen {
                    let _ = tx.send(seen);
                }
            }
        });
        let (out_tx, stdout) = mpsc::channel();
        let pipe = child.stdout.take().expect("stdout");
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = out_tx.send(line);
            }
        });
        let p = Process {
            child: Some(child),
            stderr,
            stdout,
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(seen) => (p, seen),
            Err(_) => panic!("gateway did not start: {:#?}", p.stderr()),
        }
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().expect("lock").clone()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// The counters now (printed on SIGUSR1).
    pub fn sample(&self) -> serde_json::Value {
        while self.stdout.try_recv().is_ok() {}
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), libc::SIGUSR1) };
        let line = self
            .stdout
            .recv_timeout(Duration::from_secs(10))
            .expect("gateway answered SIGUSR1");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad stats line {line:?}: {e}"))
    }

    /// Stops the process with SIGTERM and returns its final counters.
    pub fn stop(mut self) -> serde_json::Value {
        let mut child = self.child.take().expect("running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "gateway did not stop on SIGTERM");
            thread::sleep(Duration::from_millis(20));
        }
        let mut last = None;
        while let Ok(line) = self.stdout.recv_timeout(Duration::from_secs(5)) {
            last = Some(line);
        }
        let last = last.expect("gateway printed its counters");
        serde_json::from_str(&last).unwrap_or_else(|e| panic!("bad stats line {last:?}: {e}"))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if thread::panicking() {
            for line in self.stderr() {
                eprintln!("gateway: {line}");
            }
        }
        self.kill();
        self.remove_pins();
    }
}

impl Process {
    /// SIGKILL, as a crash or the OOM killer would; returns once it is
    /// gone. Its pins stay until this is dropped.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A killed agent leaves its pinned maps behind (as it would in
    /// production, for `inspect` to read); a test cleans up after itself
    /// unless another agent of the same instance runs there now.
    fn remove_pins(&self) {
        let lines = self.stderr();
        let Some(dir) = lines
            .iter()
            .find_map(|l| l.split("maps pinned at ").nth(1))
            .map(|rest| rest.split([',', ' ']).next().unwrap_or(rest))
        else {
            return;
        };
        let Ok(handle) = std::fs::File::open(dir) else {
            return;
        };
        use std::os::fd::AsRawFd as _;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(handle.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A running `gateway forward`.
pub struct Gateway {
    process: Process,
    pub addr: SocketAddr,
}

impl Gateway {
    /// `gateway forward` from a free loopback port to `to`, on `dataplane`.
    pub fn forward(to: SocketAddr, dataplane: &str, extra: &[&str]) -> Gateway {
        Net::Loopback.gateway(to, dataplane, extra)
    }

    /// Starts `gateway ARGS` and waits until it says where it listens.
    pub fn start(args: &[&str]) -> Gateway {
        Gateway::start_in(None, args)
    }

    /// Starts `gateway ARGS`, inside `ns` if given.
    pub fn start_in(ns: Option<&Netns>, args: &[&str]) -> Gateway {
        Gateway::start_with(ns, args, &[])
    }

    /// Starts `gateway ARGS` with extra environment variables, inside `ns`
    /// if given.
    pub fn start_with(ns: Option<&Netns>, args: &[&str], env: &[(&str, &str)]) -> Gateway {
        let mut cmd = Command::new(bin("gateway"));
        cmd.args(args).envs(env.iter().copied());
        if let Some(ns) = ns {
            ns.command(&mut cmd);
        }
        let (process, addr) = Process::spawn(&mut cmd, |line| {
            line.split("listening on ")
                .nth(1)
                .and_then(|rest| rest.split([',', ' ']).next())
                .map(str::to_owned)
        });
        Gateway {
            process,
            addr: addr.parse().expect("listen address"),
        }
    }

    pub fn stderr(&self) -> Vec<String> {
        self.process.stderr()
    }

    /// The gateway's counters now (it prints them on SIGUSR1).
    pub fn sample(&self) -> serde_json::Value {
        self.process.sample()
    }

    /// Stops the gateway with SIGTERM and returns its final counters.
    pub fn stop(self) -> serde_json::Value {
        self.process.stop()
    }

    /// CPU time the gateway process has used so far (user + system).
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.process.pid()))
            .expect("read the gateway's /proc stat");
        // Fields after the command name, which is in parentheses: state is
        // the 3rd field, utime and stime the 14th and 15th.
        let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
        let fields: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|f| f.parse().expect("clock ticks"))
            .collect();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis((fields[0] + fields[1]) * 1000 / hz)
    }

    /// Every pipe the gateway holds open (`pipe:[inode]`) and its size,
    /// whichever of its ends are open.
    pub fn pipes(&self) -> std::collections::BTreeMap<String, usize> {
        use std::os::fd::AsRawFd as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let dir = format!("/proc/{}/fd", self.process.pid());
        let mut pipes = std::collections::BTreeMap::new();
        for fd in std::fs::read_dir(&dir).expect("read the gateway's fds") {
            let path = fd.expect("an fd").path();
            let Ok(target) = std::fs::read_link(&path) else {
                continue;
            };
            let target = target.to_string_lossy().into_owned();
            if !target.starts_with("pipe:") || pipes.contains_key(&target) {
                continue;
            }
            // Opening a pipe through /proc opens the pipe itself, like a
            // FIFO; non-blocking, so that a pipe without a writer does not
            // wait for one.
            let Ok(f) = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path)
            else {
                continue;
            };
            // SAFETY: F_GETPIPE_SZ takes no argument; the fd is open.
            let size = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETPIPE_SZ) };
            assert!(size > 0, "F_GETPIPE_SZ on {}: {size}", path.display());
            pipes.insert(target, size as usize);
        }
        pipes
    }

    /// The gateway's threads: name and how many times each has gone to
    /// sleep waiting for something (voluntary context switches).
    pub fn thread_waits(&self) -> Vec<(String, u64)> {
        let dir = format!("/proc/{}/task", self.process.pid());
        let mut threads = Vec::new();
        for task in std::fs::read_dir(&dir).expect("read the gateway's threads") {
            let path = task.expect("a thread").path();
            let (Ok(name), Ok(status)) = (
                std::fs::read_to_string(path.join("comm")),
                std::fs::read_to_string(path.join("status")),
            ) else {
                continue;
            };
            let waits = status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            threads.push((name.trim().to_string(), waits));
        }
        threads
    }
}

/// Where a test's client, gateway and backend live.
#[derive(Clone)]
pub enum Net {
    /// All three on loopback in this process's namespace.
    Loopback,
    /// Each in its own namespace, joined by veth pairs.
    Veth(Arc<Topology>),
}

impl Net {
    pub fn veth() -> Net {
        Net::Veth(Arc::new(Topology::new()))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Net::Loopback => "loopback",
            Net::Veth(_) => "veth",
        }
    }

    /// A listening socket where backends live.
    pub fn backend_listener(&self) -> TcpListener {
        match self {
            Net::Loopback => TcpListener::bind("127.0.0.1:0").expect("bind backend"),
            Net::Veth(t) => t
                .backend
                .run(|| TcpListener::bind((Topology::BACKEND, 0)).expect("bind backend")),
        }
    }

    /// Connects from where clients live.
    pub fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        match self {
            Net::Loopback => TcpStream::connect(addr),
            Net::Veth(t) => t.client.run(move || TcpStream::connect(addr)),
        }
    }

    /// `gateway forward` to `to`, where gateways live.
    pub fn gateway(&self, to: SocketAddr, dataplane: &str, extra: &[&str]) -> Gateway {
        self.gateway_with(to, dataplane, extra, &[])
    }

    /// [`Net::gateway`] with extra environment variables.
    pub fn gateway_with(
        &self,
        to: SocketAddr,
        dataplane: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Gateway {
        let to = to.to_string();
        let listen = match self {
            Net::Loopback => "127.0.0.1:0".to_owned(),
            Net::Veth(_) => format!("{}:0", Topology::GATEWAY_FRONT),
        };
        // `auto-ebpf`: auto with bulk connections moved into the kernel too.
        let (dataplane, bulk) = match dataplane {
            "auto-ebpf" => ("auto", Some("ebpf")),
            dp => (dp, None),
        };
        let mut args = vec![
            "forward",
            "--listen",
            &listen,
            "--to",
            &to,
            "--dataplane",
            dataplane,
            "--no-check-targets",
        ];
        if let Some(path) = bulk {
            args.extend(["--bulk-path", path]);
        }
        args.extend_from_slice(extra);
        match self {
            Net::Loopback => Gateway::start_with(None, &args, env),
            Net::Veth(t) => Gateway::start_with(Some(&t.gateway), &args, env),
        }
    }
}

/// Runs `gateway ARGS` to its end; returns (exit code, stderr).
pub fn gateway_fails(args: &[&str], uid: Option<u32>) -> (Option<i32>, String) {
    gateway_fails_with(args, uid, &[])
}

/// `gateway_fails` with extra environment variables.
pub fn gateway_fails_with(
    args: &[&str],
    uid: Option<u32>,
    env: &[(&str, &str)],
) -> (Option<i32>, String) {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = Command::new(bin("gateway"));
    cmd.args(args)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let mut child = cmd.spawn().expect("start gateway");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            let _ = child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut err);
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("gateway {args:?} kept running: it was expected to fail");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A deterministic byte stream: `len` bytes from `seed`.
pub struct Stream {
    rng: SmallRng,
    left: u64,
}

impl Stream {
    pub fn new(seed: u64, len: u64) -> Self {
        Stream {
            rng: SmallRng::seed_from_u64(seed),
            left: len,
        }
    }

    /// The SHA-256 of the stream `seed` gives for `len` bytes.
    pub fn hash(seed: u64, len: u64) -> [u8; 32] {
        Stream::new(seed, len)
            .write_to(&mut std::io::sink())
            .expect("sink")
    }

    /// Writes the whole stream to `w`; returns its SHA-256.
    pub fn write_to(mut self, w: &mut impl std::io::Write) -> std::io::Result<[u8; 32]> {
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        while self.left > 0 {
            let n = self.left.min(buf.len() as u64) as usize;
            self.rng.fill_bytes(&mut buf[..n]);
            hash.update(&buf[..n]);
            w.write_all(&buf[..n])?;
            self.left -= n as u64;
        }
        Ok(hash.finalize().into())
    }
}

/// Reads `r` to its end; returns (bytes, SHA-256).
pub fn read_all(r: &mut impl std::io::Read) -> std::io::Result<(u64, [u8; 32])> {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok((total, hash.finalize().into()));
        }
        hash.update(&buf[..n]);
        total += n as u64;
    }
}

/// What one end of a transfer saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub sent_hash: [u8; 32],
    pub received: u64,
    pub received_hash: [u8; 32],
}

/// When an end sends its FIN relative to what it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Send the stream and FIN while reading (both directions at once).
    Concurrent,
    /// Read the peer's whole stream first, then send (a response).
    ReadFirst,
    /// Send the stream, read the peer's to its end, then FIN (a request that
    /// keeps its write side open until the answer is complete).
    FinLast,
}

/// Sends `stream` on `s` and half-closes, while reading everything the peer
/// sends until its FIN.
pub fn exchange(s: TcpStream, stream: Stream) -> std::io::Result<Seen> {
    exchange_in(s, stream, Order::Concurrent)
}

pub fn exchange_in(s: TcpStream, stream: Stream, order: Order) -> std::io::Result<Seen> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut r = s.try_clone()?;
    exchange_from(&mut r, s, stream, order)
}

/// What one end sends: written whole, hashed as written.
pub trait Source: Send + 'static {
    fn send(self, w: &mut TcpStream) -> std::io::Result<[u8; 32]>;
}

impl Source for Stream {
    fn send(self, w: &mut TcpStream) -> std::io::Result<[u8; 32]> {
        self.write_to(w)
    }
}

/// Sends `src` on `w` and reads `r` to its end, with the FIN placed as
/// `order` says; returns what was sent and received.
pub fn exchange_from(
    r: &mut impl std::io::Read,
    w: TcpStream,
    src: impl Source,
    order: Order,
) -> std::io::Result<Seen> {
    let mut w = w;
    let mut first = None;
    if order == Order::ReadFirst {
        first = Some(read_all(r)?);
    }
    let writer = thread::spawn(move || -> std::io::Result<([u8; 32], TcpStream)> {
        let h = src.send(&mut w)?;
        if order != Order::FinLast {
            w.shutdown(Shutdown::Write)?;
        }
        Ok((h, w))
    });
    let (received, received_hash) = match first {
        Some(seen) => seen,
        None => read_all(r)?,
    };
    let (sent_hash, w) = writer.join().expect("writer thread")?;
    if order == Order::FinLast {
        w.shutdown(Shutdown::Write)?;
    }
    Ok(Seen {
        sent_hash,
        received,
        received_hash,
    })
}

/// A backend that, for each connection, sends its own stream (from `seed`,
/// `len` bytes) while reading the client's, and reports what it saw. Start
/// gateways in front of it with `--no-check-targets`: their start-up check
/// would count as a connection.
pub struct StreamBackend {
    pub addr: SocketAddr,
    pub seen: mpsc::Receiver<std::io::Result<Seen>>,
}

impl StreamBackend {
    pub fn start(seed: u64, len: u64) -> Self {
        Self::with_order(seed, len, Order::Concurrent)
    }

    pub fn with_order(seed: u64, len: u64, order: Order) -> Self {
        Self::on(Net::Loopback.backend_listener(), seed, len, order)
    }

    /// Serves on `l` (made by [`Net::backend_listener`]).
    pub fn on(l: TcpListener, seed: u64, len: u64, order: Order) -> Self {
        Self::on_after(l, seed, len, order, Duration::ZERO)
    }

    /// [`StreamBackend::on`], each connection starting `delay` after it was
    /// accepted.
    pub fn on_after(l: TcpListener, seed: u64, len: u64, order: Order, delay: Duration) -> Self {
        let addr = l.local_addr().expect("addr");
        let (tx, seen) = mpsc::channel();
        thread::spawn(move || {
            // Ends when the test drops `seen` and a later accept fails to send.
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                let tx = tx.clone();
                thread::spawn(move || {
                    if !delay.is_zero() {
                        thread::sleep(delay);
                    }
                    let _ = tx.send(exchange_in(s, Stream::new(seed, len), order));
                });
            }
        });
        StreamBackend { addr, seen }
    }

    pub fn next(&self) -> Seen {
        self.seen
            .recv_timeout(IO_TIMEOUT)
            .expect("backend saw no connection")
            .expect("backend exchange")
    }
}

/// Sends a line, waits, half-closes and reads the reply, like
/// `(date; sleep 1) | nc HOST PORT` in Istio's task.
pub fn line_client(addr: SocketAddr, line: &str, pause: Duration) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.write_all(line.as_bytes()).expect("write");
    thread::sleep(pause);
    s.shutdown(Shutdown::Write).expect("shutdown");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read reply");
    reply
}

/// A free port on loopback (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A running `tcp-echo` server.
pub struct TcpEcho {
    child: Child,
}

impl TcpEcho {
    pub fn start(port: u16, prefix: &str) -> Self {
        let child = Command::new(bin("tcp-echo"))
            .args([&port.to_string(), prefix, "--address", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tcp-echo");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tcp-echo did not start");
            thread::sleep(Duration::from_millis(20));
        }
        TcpEcho { child }
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fills `buf` with the stream from offset `at` on in which every aligned
/// 8-byte word holds its own offset (little endian): the first wrong byte
/// a reader finds names where the stream went wrong, and what follows it
/// names where it resumed (a repeat, a hole).
pub fn positions(buf: &mut [u8], at: u64) {
    let first = at - at % 8;
    let mut word = first;
    let mut i = 0;
    while i < buf.len() {
        let bytes = word.to_le_bytes();
        let skip = if word == first {
            (at - first) as usize
        } else {
            0
        };
        let n = (8 - skip).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&bytes[skip..skip + n]);
        i += n;
        word += 8;
    }
}

/// The byte at offset `at` of the [`positions`] stream.
pub fn position_byte(at: u64) -> u8 {
    ((at - at % 8) >> (8 * (at % 8))) as u8
}

/// Sends `len` bytes of the [`positions`] stream on `s` in 1 MiB writes
/// while reading back what the other end returns, then half-closes; checks
/// that exactly the same stream comes back. On a wrong byte, says where and,
/// when the bytes after it are a stretch of the stream from elsewhere, where
/// from: "resumes at X" names a repeat or a hole.
pub fn positioned_echo(s: TcpStream, len: u64) -> Result<(), String> {
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    let mut tx = s.try_clone().map_err(|e| format!("clone: {e}"))?;
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < len {
            let n = (len - at).min(buf.len() as u64) as usize;
            positions(&mut buf[..n], at);
            std::io::Write::write_all(&mut tx, &buf[..n])?;
            at += n as u64;
        }
        tx.shutdown(Shutdown::Write)
    });
    let mut rx = s;
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    let mut wrong: Option<String> = None;
    loop {
        let n = match std::io::Read::read(&mut rx, &mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                wrong.get_or_insert(format!("read after {got} bytes: {e}"));
                break;
            }
        };
        if wrong.is_none() {
            if let Some(i) = (0..n).find(|&i| buf[i] != position_byte(got + i as u64)) {
                let at = got + i as u64;
                // The first aligned word after the wrong byte tells where the
                // stream picked up again.
                let from = (i..n.saturating_sub(7))
                    .find(|&j| (got + j as u64).is_multiple_of(8))
                    .map(|j| {
                        let word = u64::from_le_bytes(buf[j..j + 8].try_into().expect("8 bytes"));
                        (word, got + j as u64)
                    });
                wrong = Some(match from {
                    Some((word, pos)) if word != pos => format!(
                        "first wrong byte at {at}; at {pos} the stream resumes at {word} ({})",
                        if word < pos {
                            format!("{} bytes repeated", pos - word)
                        } else {
                            format!("{} bytes missing", word - pos)
                        }
                    ),
                    _ => format!("first wrong byte at {at}"),
                });
            }
        }
        got += n as u64;
    }
    let sent = sender.join().map_err(|_| "sender panicked".to_owned())?;
    if let Some(w) = wrong {
        return Err(format!("{w}; {got} of {len} bytes came back"));
    }
    sent.map_err(|e| format!("send: {e}"))?;
    if got != len {
        return Err(format!("{got} of {len} bytes came back, every one right"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_name_their_offsets() {
        let mut whole = vec![0u8; 100];
        positions(&mut whole, 0);
        for (i, &b) in whole.iter().enumerate() {
            assert_eq!(b, position_byte(i as u64), "byte {i}");
        }
        // Any split gives the same stream.
        let mut part = vec![0u8; 37];
        positions(&mut part, 13);
        assert_eq!(part, whole[13..50]);
    }
}
