//! Harness for `gateway run`, the Istio-configured agent: the agent
//! itself, its `apply` / `delete` / `validate` clients, Istio's tcp-echo
//! backends on loopback, and clients that count who answered.
//!
//! Each test gets its own directory (admin socket, state, YAML) and its own
//! loopback address for the Gateway ports, so tests that all serve Istio's
//! port 31400 run side by side. Guards kill processes and remove
//! directories however the test ends.
use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use crate::{bin, Process, IO_TIMEOUT};

/// The namespace of Istio's task.
pub const NS: &str = "istio-io-tcp-traffic-shifting";
/// The host the task's short name `tcp-echo` stands for in [`NS`].
pub const FQDN: &str = "tcp-echo.istio-io-tcp-traffic-shifting.svc.cluster.local";
/// The Gateway port of Istio's task.
pub const PORT: u16 = 31400;

static NEXT: AtomicU32 = AtomicU32::new(0);

pub fn workspace() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// One of the user's input files, unchanged (`testdata/seed/`).
pub fn seed(name: &str) -> PathBuf {
    workspace()
        .join("gateway-user/src/istio/testdata/seed")
        .join(name)
}

/// One of the project's example files (`manifests/examples/tcp-echo/`).
pub fn example(name: &str) -> PathBuf {
    workspace().join("manifests/examples/tcp-echo").join(name)
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A directory removed when dropped.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("gwt-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    /// Writes `text` to `name` in the directory; returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A loopback address no other test of this run uses (all of 127/8 is
/// loopback on Linux), for the agent's Gateway ports.
pub fn unique_ip() -> IpAddr {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    IpAddr::V4(Ipv4Addr::new(
        127,
        100 + (pid % 100) as u8,
        (n / 250) as u8,
        (n % 250 + 1) as u8,
    ))
}

/// A free port on `ip` (bound, then released).
pub fn free_port_on(ip: IpAddr) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Istio's tcp-echo server on `ip`, on a free port.
pub struct Echo {
    child: Child,
    pub addr: SocketAddr,
}

impl Echo {
    pub fn start(ip: IpAddr, prefix: &str) -> Echo {
        // A free port can be taken between the probe and the start (by
        // another test's echo, whose answers a connect check would take
        // for this one's): wait for this process to say it listens.
        for _ in 0..5 {
            let addr = SocketAddr::new(ip, free_port_on(ip));
            let mut child = Command::new(bin("tcp-echo"))
                .args([
                    &addr.port().to_string(),
                    prefix,
                    "--address",
                    &ip.to_string(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start tcp-echo");
            let (tx, rx) = std::sync::mpsc::channel();
            let pipe = child.stderr.take().expect("stderr");
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                if line.starts_with("listening on") {
                    return Echo { child, addr };
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("tcp-echo did not start on {ip}");
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// tcp-echo v1 ("one") on 127.0.0.1 and v2 ("two") on 127.0.0.2.
pub struct Backends {
    pub v1: Echo,
    pub v2: Echo,
}

impl Backends {
    pub fn start() -> Backends {
        Backends {
            v1: Echo::start(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), "one"),
            v2: Echo::start(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), "two"),
        }
    }

    /// The project's endpoints file with each workload's real port: service
    /// port 9000 (`tcp`) maps to where the backend listens.
    pub fn endpoints_yaml(&self) -> String {
        endpoints_yaml(self.v1.addr, self.v2.addr)
    }
}

/// `manifests/examples/tcp-echo/tcp-echo-endpoints.yaml` with the two
/// workloads at `v1` and `v2`.
pub fn endpoints_yaml(v1: SocketAddr, v2: SocketAddr) -> String {
    let text = read(&example("tcp-echo-endpoints.yaml"));
    let mut out = String::new();
    for line in text.lines() {
        let workload = match line.trim() {
            "address: 127.0.0.1" => Some(v1),
            "address: 127.0.0.2" => Some(v2),
            _ => None,
        };
        match workload {
            Some(addr) => out.push_str(&format!(
                "  address: {}\n  ports:\n    tcp: {}\n",
                addr.ip(),
                addr.port()
            )),
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    assert_eq!(
        out.matches("    tcp: ").count(),
        2,
        "endpoints layout changed"
    );
    out
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `gateway ARGS` to its end (at most a minute).
pub fn gateway(args: &[&str]) -> Output {
    gateway_as(args, None)
}

/// Runs `gateway ARGS` as `uid` if given.
pub fn gateway_as(args: &[&str], uid: Option<u32>) -> Output {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = Command::new(bin("gateway"));
    cmd.args(args)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let mut child = cmd.spawn().expect("start gateway");
    let pipe = |r: Option<Box<dyn std::io::Read + Send>>| {
        thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = pipe(child.stdout.take().map(|p| Box::new(p) as _));
    let err = pipe(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("gateway {args:?} did not finish");
        }
        thread::sleep(Duration::from_millis(10));
    };
    Output {
        code: status.code(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// The last component of `dir`, as an instance name can hold it.
fn dir_tag(dir: &Path) -> String {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("agent");
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(60)
        .collect()
}

/// A running `gateway run`.
pub struct Agent {
    process: Process,
    /// Where the Gateway ports open.
    pub ip: IpAddr,
    pub admin: PathBuf,
    pub state: PathBuf,
    /// Where it serves `/metrics`, `/healthz` and `/ready`.
    pub metrics: Option<SocketAddr>,
}

impl Agent {
    /// `gateway run` with its admin socket and state under `dir`, Gateway
    /// ports on `ip`, plus `extra` arguments; returns once it is ready.
    pub fn start(dir: &Path, ip: IpAddr, extra: &[&str]) -> Agent {
        let admin = dir.join("admin.sock");
        let state = dir.join("state");
        let ip_text = ip.to_string();
        let mut args = vec![
            "run",
            "--admin",
            admin.to_str().expect("utf-8 path"),
            "--state-dir",
            state.to_str().expect("utf-8 path"),
            "--listen-address",
            &ip_text,
        ];
        // Agents of one test binary run side by side: each its own
        // instance, so that their pins do not collide.
        let instance = dir_tag(dir);
        if !extra.contains(&"--instance") {
            args.extend(["--instance", &instance]);
        }
        // Beside the Gateway ports, on a port the system picks.
        let metrics = format!("{ip}:0");
        if !extra.contains(&"--metrics") {
            args.extend(["--metrics", &metrics]);
        }
        args.extend_from_slice(extra);
        let mut cmd = Command::new(bin("gateway"));
        cmd.args(&args);
        let (process, ready) = Process::spawn(&mut cmd, |line| {
            line.contains(" ready: ").then(|| line.to_string())
        });
        let metrics = ready
            .split("metrics on http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|a| a.parse().ok());
        Agent {
            process,
            ip,
            admin,
            state,
            metrics,
        }
    }

    /// `/metrics`, parsed by Prometheus' own parser.
    pub fn metrics(&self) -> Vec<crate::prometheus::Sample> {
        let (status, body) = crate::prometheus::get(self.metrics_addr(), "/metrics");
        assert_eq!(status, 200, "{body}");
        crate::prometheus::parse(&body)
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics.expect("the agent serves metrics")
    }

    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip, port)
    }

    pub fn stderr(&self) -> Vec<String> {
        self.process.stderr()
    }

    /// Waits (at most `timeout`) for a log line containing every piece.
    pub fn wait_log(&self, pieces: &[&str], timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .stderr()
                .into_iter()
                .find(|l| pieces.iter().all(|p| l.contains(p)))
            {
                return Some(l);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Counts the log lines containing every piece, waiting (at most
    /// `timeout`) for `expected` of them: the log is read by a thread and
    /// may lag behind what the counters already show.
    pub fn count_log(&self, pieces: &[&str], expected: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self
                .stderr()
                .iter()
                .filter(|l| pieces.iter().all(|p| l.contains(p)))
                .count();
            if n >= expected || Instant::now() > deadline {
                return n;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn change(&self, verb: &str, files: &[&Path], ns: Option<&str>, extra: &[&str]) -> Output {
        let mut args = vec![verb, "--admin", self.admin.to_str().expect("utf-8 path")];
        for f in files {
            args.push("-f");
            args.push(f.to_str().expect("utf-8 path"));
        }
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        args.extend_from_slice(extra);
        gateway(&args)
    }

    /// `gateway apply -f FILE... [-n NS]` against this agent.
    pub fn apply(&self, files: &[&Path], ns: Option<&str>) -> Output {
        self.change("apply", files, ns, &[])
    }

    /// Like [`Agent::apply`], and it must succeed.
    pub fn apply_ok(&self, files: &[&Path], ns: Option<&str>) -> String {
        let out = self.apply(files, ns);
        assert!(out.ok(), "apply {files:?} failed: {out:#?}");
        out.stdout
    }

    pub fn apply_with(&self, files: &[&Path], ns: Option<&str>, extra: &[&str]) -> Output {
        self.change("apply", files, ns, extra)
    }

    /// `gateway delete -f FILE... [-n NS]` against this agent.
    pub fn delete(&self, files: &[&Path], ns: Option<&str>) -> Output {
        self.change("delete", files, ns, &[])
    }

    /// See [`Process::kill`].
    pub fn kill(&mut self) {
        self.process.kill();
    }

    pub fn pid(&self) -> i32 {
        self.process.pid()
    }

    /// The agent's counters now (it prints them on SIGUSR1).
    pub fn sample(&self) -> serde_json::Value {
        self.process.sample()
    }

    /// Sends SIGTERM and returns at once: the agent drains, then exits.
    pub fn terminate(&self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
    }

    /// Stops the agent with SIGTERM; returns its last counters.
    pub fn stop(self) -> serde_json::Value {
        self.process.stop()
    }
}

/// One tcp-echo exchange: a line, a half-close, the whole reply.
pub fn ask(addr: SocketAddr, line: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(line.as_bytes())?;
    s.shutdown(Shutdown::Write)?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    Ok(reply)
}

/// Who answered `n` connections to `addr`, `threads` at a time: the
/// reply's first word ("one", "two"), or what went wrong.
pub fn who_answers(addr: SocketAddr, n: usize, threads: usize) -> BTreeMap<String, usize> {
    let next = Arc::new(AtomicUsize::new(0));
    let counts = Arc::new(Mutex::new(BTreeMap::new()));
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let (next, counts) = (next.clone(), counts.clone());
            thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let line = format!("hello {i}\n");
                let key = match ask(addr, &line) {
                    Ok(reply) => match reply.strip_suffix(&format!(" {line}")) {
                        Some(prefix) if !prefix.contains(' ') => prefix.to_string(),
                        _ => format!("bad reply {reply:?}"),
                    },
                    Err(e) => format!("error: {e}"),
                };
                *counts.lock().expect("lock").entry(key).or_insert(0) += 1;
            })
        })
        .collect();
    for w in workers {
        w.join().expect("client thread");
    }
    let counts = counts.lock().expect("lock").clone();
    counts
}

/// `got` of `n` connections is within 4 sigma of the binomial mean for a
/// share `p` (a weighted split is one draw per connection).
pub fn assert_within_4_sigma(got: usize, n: usize, p: f64, what: &str) {
    let mean = n as f64 * p;
    let sigma = (n as f64 * p * (1.0 - p)).sqrt();
    assert!(
        (got as f64 - mean).abs() <= 4.0 * sigma,
        "{what} got {got} of {n}, expected {mean} ± {:.0}",
        4.0 * sigma
    );
}

/// `who_answers` must be exactly `n` of `who`.
pub fn assert_all(addr: SocketAddr, n: usize, who: &str) {
    let counts = who_answers(addr, n, 8);
    assert_eq!(
        counts,
        BTreeMap::from([(who.to_string(), n)]),
        "every connection should be answered by {who}"
    );
}

/// A connection kept open across changes: one line at a time.
pub struct Held {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Held {
    pub fn open(addr: SocketAddr) -> Held {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        Held { stream, reader }
    }

    /// The client's end of the connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local address")
    }

    /// Sends `line` (newline added), returns the reply line.
    pub fn ask(&mut self, line: &str) -> std::io::Result<String> {
        self.stream.write_all(format!("{line}\n").as_bytes())?;
        let mut reply = String::new();
        if self.reader.read_line(&mut reply)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed",
            ));
        }
        Ok(reply.trim_end().to_string())
    }

    /// The first word of the reply to `line`, which must echo it.
    pub fn who(&mut self, line: &str) -> String {
        let reply = self.ask(line).expect("held connection answers");
        match reply.split_once(' ') {
            Some((who, rest)) if rest == line => who.to_string(),
            _ => panic!("bad reply {reply:?} to {line:?}"),
        }
    }

    /// Waits up to `timeout` for the connection to end; how it ended.
    pub fn wait_closed(&mut self, timeout: Duration) -> Option<std::io::Result<usize>> {
        self.stream
            .set_read_timeout(Some(timeout))
            .expect("timeout");
        let mut buf = [0u8; 64];
        match self.reader.read(&mut buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            other => Some(other),
        }
    }
}

/// A counter of the agent's report.
pub fn counter(stats: &serde_json::Value, name: &str) -> u64 {
    stats[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {stats}"))
}

/// The per-cluster connection count of the agent's report.
pub fn cluster(stats: &serde_json::Value, subset: &str, port: u16) -> u64 {
    stats["clusters"][format!("outbound|{port}|{subset}|{FQDN}")]
        .as_u64()
        .unwrap_or(0)
}
