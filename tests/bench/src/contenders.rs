//! What stands between the client and the backend: nothing (`direct`), the
//! gateway on each dataplane, HAProxy, or nginx's stream module. Each proxy
//! is started fresh for one target, listening on a free port in the proxy's
//! namespace, and stopped when its [`Endpoint`] drops.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context as _};

use crate::{
    place::{enter, free_port, wait_listening, Place},
    procs::Proc,
};

/// `--sndbuf` for the extra ebpf contender.
pub const BIG_SNDBUF: u32 = 16 * 1024 * 1024;

/// How long a proxy may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contender {
    /// The client connects to the backend itself.
    Direct,
    /// `gateway forward` on a dataplane, with `--sndbuf` if given; with
    /// `observe`, serving Prometheus metrics and writing an access log.
    Gateway {
        dataplane: &'static str,
        sndbuf: Option<u32>,
        observe: bool,
    },
    Haproxy,
    Nginx,
}

/// Every contender, in the order they run and are shown: `auto` (the
/// default: copy first, the kernel once a connection proves long-lived or
/// bulk), the same observed, and each dataplane forced for every
/// connection.
pub const ALL: [Contender; 8] = [
    Contender::Direct,
    Contender::Gateway {
        dataplane: "auto",
        sndbuf: None,
        observe: false,
    },
    // What watching it costs: the same, with `/metrics` served (and
    // scraped during each measurement, see `load`) and an access log line
    // written per connection.
    Contender::Gateway {
        dataplane: "auto",
        sndbuf: None,
        observe: true,
    },
    Contender::Gateway {
        dataplane: "ebpf",
        sndbuf: None,
        observe: false,
    },
    Contender::Gateway {
        dataplane: "splice",
        sndbuf: None,
        observe: false,
    },
    Contender::Gateway {
        dataplane: "userspace",
        sndbuf: None,
        observe: false,
    },
    Contender::Haproxy,
    Contender::Nginx,
];

/// Not run unless named: `ebpf` with a 16 MiB send buffer forced on both
/// sockets (measured before: more bytes stay in the kernel, no more
/// throughput).
pub const EXTRA: [Contender; 1] = [Contender::Gateway {
    dataplane: "ebpf",
    sndbuf: Some(BIG_SNDBUF),
    observe: false,
}];

impl Contender {
    pub fn name(self) -> &'static str {
        match self {
            Contender::Direct => "direct",
            Contender::Gateway {
                dataplane: "ebpf",
                sndbuf: Some(_),
                ..
            } => "ebpf+sndbuf16M",
            Contender::Gateway { observe: true, .. } => "auto+observe",
            Contender::Gateway { dataplane, .. } => dataplane,
            Contender::Haproxy => "haproxy",
            Contender::Nginx => "nginx",
        }
    }

    /// Whether it loads the verdict (its runs are then timed: the kernel's
    /// run-time statistics cost two clock reads a run).
    pub fn kernel_path(self) -> bool {
        matches!(
            self,
            Contender::Gateway {
                dataplane: "ebpf" | "auto",
                ..
            }
        )
    }

    pub fn by_name(name: &str) -> Option<Contender> {
        ALL.into_iter().chain(EXTRA).find(|c| c.name() == name)
    }

    /// How it was run, for the report.
    pub fn describe(self) -> String {
        match self {
            Contender::Direct => "the client connects to the backend: no proxy".to_owned(),
            Contender::Gateway {
                dataplane,
                sndbuf,
                observe,
            } => format!(
                "gateway forward --dataplane {dataplane} --workers 1{}{}{}",
                sndbuf.map_or_else(String::new, |b| format!(" --sndbuf {b}")),
                if observe {
                    " --metrics ADDR --access-log FILE (scraped every second)"
                } else {
                    ""
                },
                if self.kernel_path() {
                    " --bpf-stats"
                } else {
                    ""
                }
            ),
            Contender::Haproxy => {
                "haproxy -db: mode tcp, nbthread 1, no splicing, client-fin/server-fin 1h"
                    .to_owned()
            }
            Contender::Nginx => {
                "nginx stream: worker_processes 1, proxy_pass, proxy_half_close on".to_owned()
            }
        }
    }

    /// Starts the contender in front of `target`.
    pub fn start(
        self,
        tools: &Tools,
        place: &Place,
        target: SocketAddr,
    ) -> anyhow::Result<Endpoint> {
        if self == Contender::Direct {
            return Ok(Endpoint {
                addr: target,
                _scraper: None,
                proc: None,
            });
        }
        let ns = place.proxy();
        let listen = SocketAddr::new(place.proxy_ip(), free_port(ns, place.proxy_ip())?);
        let dir = &tools.tmp;
        let tag = format!("{}-{}", self.name(), listen.port());
        let log = dir.join(format!("{tag}.log"));
        let mut scrape = None;
        let mut cmd = match self {
            Contender::Direct => bail!("direct has no process to start"),
            Contender::Gateway {
                dataplane,
                sndbuf,
                observe,
            } => {
                let mut cmd = Command::new(&tools.gateway);
                cmd.arg("forward")
                    .arg("--listen")
                    .arg(listen.to_string())
                    .arg("--to")
                    .arg(target.to_string())
                    .args(["--dataplane", dataplane])
                    // One thread serving connections, as HAProxy and nginx
                    // get one (the default is one per CPU).
                    .args(["--workers", "1"])
                    .args(["--no-check-targets", "--drain-timeout", "1s"])
                    .args(self.kernel_path().then_some("--bpf-stats"))
                    .env("RUST_LOG", "info")
                    .env("NO_COLOR", "1");
                if let Some(bytes) = sndbuf {
                    cmd.arg("--sndbuf").arg(bytes.to_string());
                }
                if observe {
                    let metrics =
                        SocketAddr::new(place.proxy_ip(), free_port(ns, place.proxy_ip())?);
                    cmd.arg("--metrics")
                        .arg(metrics.to_string())
                        .arg("--access-log")
                        .arg(dir.join(format!("{tag}-access.log")));
                    scrape = Some(metrics);
                }
                cmd
            }
            Contender::Haproxy => {
                let cfg = dir.join(format!("{tag}.cfg"));
                write(&cfg, &haproxy_config(listen, target, tools.nofile, dir))?;
                let mut cmd = Command::new("haproxy");
                cmd.arg("-db").arg("-f").arg(&cfg);
                cmd
            }
            Contender::Nginx => {
                let prefix = dir.join(&tag);
                std::fs::create_dir_all(&prefix)
                    .with_context(|| format!("cannot create {}", prefix.display()))?;
                let cfg = prefix.join("nginx.conf");
                let text = nginx_config(
                    listen,
                    target,
                    tools.nofile,
                    &prefix,
                    tools.nginx_module.as_deref(),
                );
                write(&cfg, &text)?;
                let mut cmd = Command::new("nginx");
                cmd.arg("-p")
                    .arg(&prefix)
                    .arg("-e")
                    .arg(prefix.join("error.log"))
                    .arg("-c")
                    .arg(&cfg)
                    .args(["-g", "daemon off;"]);
                cmd
            }
        };
        let mut proc = Proc::spawn(self.name(), ns, &mut cmd, &log)?;
        wait_listening(ns, listen.port(), START_TIMEOUT, || proc.check_alive())
            .with_context(|| format!("{} did not start: {}", self.name(), proc.log_tail()))?;
        let scraper = match scrape {
            Some(addr) => Some(Scraper::start(place.proxy().name.clone(), addr)?),
            None => None,
        };
        Ok(Endpoint {
            addr: listen,
            _scraper: scraper,
            proc: Some(proc),
        })
    }
}

/// Fetches `/metrics` once a second (Prometheus scrapes every 15 s by
/// default: this is the harsher case) from inside the proxy's namespace,
/// until dropped.
pub struct Scraper {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Scraper {
    fn start(ns: String, addr: SocketAddr) -> anyhow::Result<Scraper> {
        use std::sync::atomic::Ordering::Relaxed;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("scraper".into())
            .spawn(move || {
                if enter(&ns).is_err() {
                    return;
                }
                while !flag.load(Relaxed) {
                    let _ = scrape(addr);
                    // Short sleeps, so that a drop does not wait a second.
                    for _ in 0..10 {
                        if flag.load(Relaxed) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })
            .context("cannot start the scraper")?;
        Ok(Scraper {
            stop,
            thread: Some(thread),
        })
    }
}

fn scrape(addr: SocketAddr) -> std::io::Result<usize> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Where the client connects; the proxy (if any) stops when this drops.
pub struct Endpoint {
    pub addr: SocketAddr,
    /// Stopped before the proxy (fields drop in order).
    pub _scraper: Option<Scraper>,
    pub proc: Option<Proc>,
}

impl Endpoint {
    /// An error if the proxy has died.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.proc.as_mut().map_or(Ok(()), Proc::check_alive)
    }

    /// Stops the proxy; for the gateway, returns the counters it prints as
    /// it exits (one JSON line on stdout).
    pub fn stop(self) -> Option<serde_json::Value> {
        let log = self.proc?.stop();
        log.lines()
            .rev()
            .filter(|l| l.starts_with('{'))
            .find_map(|l| serde_json::from_str(l).ok())
    }

    /// The proxy's resident memory (its children included), if there is one.
    pub fn rss_bytes(&self) -> Option<u64> {
        self.proc.as_ref().map(Proc::rss_bytes)
    }
}

/// What starting contenders needs.
pub struct Tools {
    pub gateway: PathBuf,
    /// Scratch directory: configurations, logs, pid files.
    pub tmp: PathBuf,
    /// The open-files limit every process gets.
    pub nofile: u64,
    /// nginx's stream module, when nginx has it as a dynamic module.
    pub nginx_module: Option<PathBuf>,
}

impl Tools {
    pub fn find(tmp: PathBuf, nofile: u64) -> anyhow::Result<Tools> {
        let gateway = gateway_binary()?;
        for (tool, args) in [("haproxy", "-v"), ("nginx", "-v"), ("iperf3", "--version")] {
            Command::new(tool)
                .arg(args)
                .output()
                .with_context(|| format!("cannot run {tool} (`cargo xtask bench` installs it)"))?;
        }
        Ok(Tools {
            gateway,
            tmp,
            nofile,
            nginx_module: nginx_stream_module()?,
        })
    }
}

/// `gateway`, next to this binary (`cargo xtask bench` builds both), or in
/// `GATEWAY_BIN_DIR`.
fn gateway_binary() -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("GATEWAY_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_exe()
            .context("cannot find this binary")?
            .parent()
            .context("this binary has no directory")?
            .to_owned(),
    };
    let path = dir.join("gateway");
    if !path.exists() {
        bail!(
            "{} is missing: build it first (`cargo xtask bench` does)",
            path.display()
        );
    }
    Ok(path)
}

/// Debian builds the stream module as a dynamic module
/// (`libnginx-mod-stream`); other builds may have it compiled in.
fn nginx_stream_module() -> anyhow::Result<Option<PathBuf>> {
    let out = Command::new("nginx")
        .arg("-V")
        .output()
        .context("cannot run nginx -V")?;
    let flags = String::from_utf8_lossy(&out.stderr);
    if flags.split_whitespace().any(|f| f == "--with-stream") {
        return Ok(None);
    }
    if !flags.contains("--with-stream=dynamic") {
        bail!("this nginx has no stream module");
    }
    let dirs = flags
        .split_whitespace()
        .filter_map(|f| f.strip_prefix("--modules-path="))
        .map(PathBuf::from)
        .chain(["/usr/lib/nginx/modules", "/usr/share/nginx/modules"].map(PathBuf::from));
    for dir in dirs {
        let module = dir.join("ngx_stream_module.so");
        if module.exists() {
            return Ok(Some(module));
        }
    }
    bail!("nginx's stream module (ngx_stream_module.so) is not installed (Debian: libnginx-mod-stream)")
}

/// Descriptors a proxy keeps for itself besides two per connection.
const SPARE_FDS: u64 = 64;

/// HAProxy in TCP mode with one thread. It forwards each shutdown as it
/// comes (half-close); `client-fin`/`server-fin` are as long as the other
/// timeouts, so a half-closed connection is not cut early.
fn haproxy_config(listen: SocketAddr, target: SocketAddr, nofile: u64, dir: &Path) -> String {
    let maxconn = nofile.saturating_sub(SPARE_FDS) / 2;
    format!(
        "global
    nbthread 1
    maxconn {maxconn}
    pidfile {pid}

defaults
    mode tcp
    maxconn {maxconn}
    timeout connect 10s
    timeout client 1h
    timeout server 1h
    timeout client-fin 1h
    timeout server-fin 1h

frontend bench
    bind {listen}
    default_backend target

backend target
    server target {target}
",
        pid = dir.join(format!("haproxy-{}.pid", listen.port())).display()
    )
}

/// nginx's stream proxy with one worker; `proxy_half_close` (1.21.4+) keeps
/// the other direction open after one side's FIN.
fn nginx_config(
    listen: SocketAddr,
    target: SocketAddr,
    nofile: u64,
    prefix: &Path,
    module: Option<&Path>,
) -> String {
    let load = module.map_or_else(String::new, |m| format!("load_module {};\n", m.display()));
    format!(
        "{load}worker_processes 1;
worker_rlimit_nofile {nofile};
pid {pid};
error_log {prefix}/error.log warn;

events {{
    worker_connections {conns};
}}

stream {{
    server {{
        listen {listen};
        proxy_pass {target};
        proxy_half_close on;
        proxy_connect_timeout 10s;
        proxy_timeout 1h;
    }}
}}
",
        pid = prefix.join("nginx.pid").display(),
        prefix = prefix.display(),
        conns = nofile.saturating_sub(SPARE_FDS),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found() {
        for c in ALL {
            assert_eq!(Contender::by_name(c.name()), Some(c));
        }
        assert_eq!(Contender::by_name("fastest"), None);
    }

    #[test]
    fn configurations_fit_the_descriptor_limit() {
        let (l, t): (SocketAddr, SocketAddr) = (
            "127.0.0.1:1".parse().expect("addr"),
            "127.0.0.1:2".parse().expect("addr"),
        );
        let h = haproxy_config(l, t, 20_000, Path::new("/tmp"));
        assert!(h.contains("maxconn 9968"), "{h}");
        assert!(h.contains("bind 127.0.0.1:1") && h.contains("server target 127.0.0.1:2"));
        let n = nginx_config(l, t, 20_000, Path::new("/tmp/n"), Some(Path::new("/m.so")));
        assert!(n.starts_with("load_module /m.so;"), "{n}");
        assert!(n.contains("worker_connections 19936;") && n.contains("proxy_half_close on;"));
    }
}
