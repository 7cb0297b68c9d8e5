//! Where the client, the proxy and the backend run: all three on loopback in
//! one fresh network namespace (`lo`), or each in its own namespace, joined
//! by veth pairs (`netns`). Both are made for the run and deleted after it.
use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, TcpListener},
    os::fd::AsRawFd as _,
    panic::AssertUnwindSafe,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _};
use gateway_tests::{Netns, Topology};

/// The two layouts measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Loopback inside one network namespace.
    Lo,
    /// Client, proxy and backend namespaces joined by veth pairs.
    Netns,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Lo => "lo",
            Layout::Netns => "netns",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Layout::Lo => "client, proxy and backend on 127.0.0.1 in one network namespace",
            Layout::Netns => {
                "client, proxy and backend in three network namespaces joined by veth pairs \
                 (direct: routed through the proxy's namespace)"
            }
        }
    }
}

/// The namespaces of one layout; deleted when dropped.
pub enum Place {
    Lo(Netns),
    Netns(Topology),
}

impl Place {
    pub fn new(layout: Layout) -> anyhow::Result<Place> {
        // The harness's helpers panic when `ip` fails (they were written for
        // tests); here that is an error like any other.
        let place = std::panic::catch_unwind(AssertUnwindSafe(|| match layout {
            Layout::Lo => Place::Lo(Netns::new("bench")),
            Layout::Netns => Place::Netns(Topology::new()),
        }))
        .map_err(|_| anyhow!("cannot create the network namespaces (`ip` failed, see above)"))?;
        for ns in place.all() {
            // Connection-rate runs leave tens of thousands of sockets in
            // TIME-WAIT towards the same backend.
            set_sysctl(ns, "net/ipv4/ip_local_port_range", "1024 65535")?;
            set_sysctl(ns, "net/ipv4/tcp_tw_reuse", "1")?;
        }
        if let Place::Netns(t) = &place {
            // `direct` goes from the client to the backend through the
            // proxy's namespace as a router: the same two veth hops.
            set_sysctl(&t.gateway, "net/ipv4/ip_forward", "1")?;
            ip(
                &t.client,
                &[
                    "route",
                    "add",
                    "10.77.2.0/24",
                    "via",
                    Topology::GATEWAY_FRONT,
                ],
            )?;
            ip(
                &t.backend,
                &[
                    "route",
                    "add",
                    "10.77.1.0/24",
                    "via",
                    Topology::GATEWAY_BACK,
                ],
            )?;
        }
        Ok(place)
    }

    fn all(&self) -> Vec<&Netns> {
        match self {
            Place::Lo(ns) => vec![ns],
            Place::Netns(t) => vec![&t.client, &t.gateway, &t.backend],
        }
    }

    pub fn client(&self) -> &Netns {
        match self {
            Place::Lo(ns) => ns,
            Place::Netns(t) => &t.client,
        }
    }

    pub fn proxy(&self) -> &Netns {
        match self {
            Place::Lo(ns) => ns,
            Place::Netns(t) => &t.gateway,
        }
    }

    pub fn backend(&self) -> &Netns {
        match self {
            Place::Lo(ns) => ns,
            Place::Netns(t) => &t.backend,
        }
    }

    /// The address proxies listen on.
    pub fn proxy_ip(&self) -> IpAddr {
        match self {
            Place::Lo(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Place::Netns(_) => parse_ip(Topology::GATEWAY_FRONT),
        }
    }

    /// The address backends listen on.
    pub fn backend_ip(&self) -> IpAddr {
        match self {
            Place::Lo(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Place::Netns(_) => parse_ip(Topology::BACKEND),
        }
    }
}

fn parse_ip(s: &str) -> IpAddr {
    s.parse().expect("the topology's addresses are IP literals")
}

fn ip(ns: &Netns, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(["-n", &ns.name])
        .args(args)
        .output()
        .context("cannot run `ip`")?;
    if !out.status.success() {
        bail!(
            "ip -n {} {}: {}",
            ns.name,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Writes a per-namespace sysctl (`/proc/sys/net/...` answers for the
/// namespace of the thread that opens it).
fn set_sysctl(ns: &Netns, key: &str, value: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/{key}");
    let value = value.to_owned();
    in_ns(ns, move || std::fs::write(&path, value))?
        .with_context(|| format!("cannot set {key} in {}", ns.name))
}

fn ns_file(ns: &Netns) -> anyhow::Result<File> {
    let path = format!("/run/netns/{}", ns.name);
    File::open(&path).with_context(|| format!("cannot open {path}"))
}

/// Moves the calling thread into the namespace named `name` for good (for
/// a thread of its own).
pub fn enter(name: &str) -> anyhow::Result<()> {
    let path = format!("/run/netns/{name}");
    let file = File::open(&path).with_context(|| format!("cannot open {path}"))?;
    // SAFETY: setns on a descriptor we hold, for this thread only.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot enter {name}"));
    }
    Ok(())
}

/// Runs `f` on a thread inside `ns` and returns what it returns. Threads `f`
/// spawns are in `ns` too, and sockets it creates stay there.
pub fn in_ns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let file = ns_file(ns)?;
    thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns on a descriptor we hold, for this thread only.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("cannot enter {}", ns.name));
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow!("a thread in {} panicked", ns.name))?
    })
}

/// Makes `cmd` start inside `ns`, and die with the thread that spawns it
/// (the bench's main thread), so a killed bench leaves no process behind.
pub fn command_in(ns: &Netns, cmd: &mut Command) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let file = ns_file(ns)?;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0
                || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// A port nothing listens on at `ip` in `ns` (bound, then released).
pub fn free_port(ns: &Netns, ip: IpAddr) -> anyhow::Result<u16> {
    in_ns(ns, move || {
        TcpListener::bind((ip, 0)).and_then(|l| l.local_addr())
    })?
    .with_context(|| format!("cannot bind {ip}:0 in {}", ns.name))
    .map(|a| a.port())
}

/// Whether a TCP socket listens on `port` in `ns`.
pub fn listening(ns: &Netns, port: u16) -> anyhow::Result<bool> {
    in_ns(ns, move || {
        // /proc/thread-self: /proc/self/net would show the process's
        // namespace, not this thread's.
        ["tcp", "tcp6"].iter().any(|t| {
            std::fs::read_to_string(format!("/proc/thread-self/net/{t}"))
                .is_ok_and(|table| table_listens(&table, port))
        })
    })
}

/// Whether a `/proc/net/tcp` table has a socket in LISTEN on `port`.
fn table_listens(table: &str, port: u16) -> bool {
    let want = format!(":{port:04X}");
    table.lines().skip(1).any(|line| {
        let mut cols = line.split_whitespace();
        let local = cols.nth(1).unwrap_or_default();
        let state = cols.nth(1).unwrap_or_default();
        local.ends_with(&want) && state == "0A"
    })
}

/// Polls until `port` listens in `ns`, or `alive` fails, or `timeout`.
pub fn wait_listening(
    ns: &Netns,
    port: u16,
    timeout: Duration,
    mut alive: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if listening(ns, port)? {
            return Ok(());
        }
        alive()?;
        if Instant::now() > deadline {
            bail!("nothing listens on port {port} after {timeout:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::table_listens;

    #[test]
    fn listening_sockets_are_found_by_port_and_state() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n   \
            0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000\n   \
            1: 0100007F:1F91 0100007F:C350 01 00000000:00000000 00:00000000 00000000\n";
        assert!(table_listens(table, 8080));
        assert!(!table_listens(table, 8081), "established, not listening");
        assert!(!table_listens(table, 80));
    }
}
