//! The workloads: bulk transfers with iperf3, 64-byte round trips on one
//! connection, new connections per second, idle connections held open; and
//! the echo server they talk to. Every loop is bounded in count and time and
//! every socket operation has a timeout.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    sync::atomic::{AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{place::in_ns, place::Place, procs::Proc, sys};

/// Longest any one socket operation may block.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Size of a request (and of its echo) in the round-trip and
/// connection-rate figures.
pub const MESSAGE: usize = 64;

/// One iperf3 run.
#[derive(Debug, Clone, Copy)]
pub struct Bulk {
    pub gbit_per_s: f64,
    /// Bytes the server received.
    pub bytes: u64,
    /// Busy CPU time of the whole system during the run, per 10^9 bytes.
    pub cpu_s_per_gb: f64,
    pub retransmits: Option<u64>,
}

static RUNS: AtomicU64 = AtomicU64::new(0);

/// `iperf3 -c TARGET -P STREAMS -t SECS` from the client's namespace, with
/// the system's busy CPU time around it. A server still finishing the last
/// test answers "busy": then it is tried again, a few times.
pub fn iperf(
    place: &Place,
    tmp: &Path,
    target: SocketAddr,
    streams: usize,
    secs: u32,
) -> anyhow::Result<Bulk> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        let out = tmp.join(format!("iperf3-client-{n}.json"));
        let mut cmd = Command::new("iperf3");
        cmd.arg("-c")
            .arg(target.ip().to_string())
            .arg("-p")
            .arg(target.port().to_string())
            .arg("-P")
            .arg(streams.to_string())
            .arg("-t")
            .arg(secs.to_string())
            .args(["-i", "0", "-J", "--connect-timeout", "5000"]);
        let before = sys::busy_ticks()?;
        let proc = Proc::spawn("iperf3 client", place.client(), &mut cmd, &out)?;
        let status = proc.wait(Duration::from_secs(u64::from(secs) + 30))?;
        let busy = sys::busy_ticks()?.saturating_sub(before);
        let text = std::fs::read_to_string(&out)
            .with_context(|| format!("cannot read {}", out.display()))?;
        match parse_iperf(&text) {
            Ok((bytes, bits_per_second, retransmits)) if status.success() => {
                let cpu_s = busy as f64 / sys::ticks_per_second();
                return Ok(Bulk {
                    gbit_per_s: bits_per_second / 1e9,
                    bytes,
                    cpu_s_per_gb: cpu_s / (bytes as f64 / 1e9),
                    retransmits,
                });
            }
            Ok(_) => bail!("iperf3 failed ({status}): {}", text.trim()),
            Err(e) if attempt < 5 && format!("{e:#}").contains("busy") => {
                thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e),
        }
    }
}

/// (bytes received, bits per second, retransmits) from `iperf3 -J`.
fn parse_iperf(text: &str) -> anyhow::Result<(u64, f64, Option<u64>)> {
    // Anything iperf3 wrote to stderr lands in the same file: take the JSON.
    let json = match (text.find('{'), text.rfind('}')) {
        (Some(a), Some(b)) if a < b => &text[a..=b],
        _ => bail!("iperf3 printed no JSON: {}", text.trim()),
    };
    let v: serde_json::Value = serde_json::from_str(json).context("iperf3's JSON")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let sum = &v["end"]["sum_received"];
    let bytes = sum["bytes"].as_u64().context("iperf3: no received bytes")?;
    let bps = sum["bits_per_second"]
        .as_f64()
        .context("iperf3: no received rate")?;
    if bytes == 0 {
        bail!("iperf3 moved no bytes");
    }
    Ok((bytes, bps, v["end"]["sum_sent"]["retransmits"].as_u64()))
}

/// Round-trip times of one connection.
#[derive(Debug, Clone, Copy)]
pub struct RoundTrips {
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    pub max_us: f64,
    pub count: usize,
}

/// Round trips not measured at the start of a connection.
const WARMUP: usize = 200;

/// `count` round trips of a 64-byte message on one connection (TCP_NODELAY),
/// each echo checked; stops early after two minutes.
pub fn round_trips(place: &Place, target: SocketAddr, count: usize) -> anyhow::Result<RoundTrips> {
    let mut times = in_ns(place.client(), move || -> anyhow::Result<Vec<u64>> {
        let mut s = connect(target)?;
        let mut msg = [0x5au8; MESSAGE];
        let mut echo = [0u8; MESSAGE];
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut times = Vec::with_capacity(count);
        for i in 0..WARMUP + count {
            msg[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let start = Instant::now();
            s.write_all(&msg).context("write")?;
            s.read_exact(&mut echo).context("read the echo")?;
            let took = start.elapsed();
            if echo != msg {
                bail!("round trip {i}: the echo differs from the message");
            }
            if i >= WARMUP {
                times.push(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
            }
            if Instant::now() > deadline {
                break;
            }
        }
        Ok(times)
    })??;
    if times.is_empty() {
        bail!("no round trip was measured");
    }
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize] as f64 / 1e3;
    Ok(RoundTrips {
        p50_us: at(0.50),
        p99_us: at(0.99),
        mean_us: times.iter().sum::<u64>() as f64 / times.len() as f64 / 1e3,
        max_us: at(1.0),
        count: times.len(),
    })
}

fn connect(target: SocketAddr) -> anyhow::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&target, IO_TIMEOUT)
        .with_context(|| format!("cannot connect to {target}"))?;
    s.set_nodelay(true).context("TCP_NODELAY")?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .context("SO_RCVTIMEO")?;
    s.set_write_timeout(Some(IO_TIMEOUT))
        .context("SO_SNDTIMEO")?;
    Ok(s)
}

/// Connections completed per second.
#[derive(Debug, Clone)]
pub struct Rate {
    pub per_s: f64,
    pub completed: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

/// For `duration`, `clients` threads each connect, send 64 bytes, read the
/// echo and close, one connection after another.
pub fn connection_rate(
    place: &Place,
    target: SocketAddr,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Rate> {
    in_ns(place.client(), move || {
        connection_rate_here(target, clients, duration)
    })?
}

/// [`connection_rate`] from the calling thread's namespace.
pub fn connection_rate_here(
    target: SocketAddr,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Rate> {
    {
        let start = Instant::now();
        let deadline = start + duration;
        let per_thread: Vec<(u64, u64, Option<String>)> = thread::scope(|s| {
            let threads: Vec<_> = (0..clients)
                .map(|_| s.spawn(move || one_client(target, deadline)))
                .collect();
            threads
                .into_iter()
                .map(|t| {
                    t.join()
                        .unwrap_or((0, 1, Some("client thread panicked".into())))
                })
                .collect()
        });
        let elapsed = start.elapsed().as_secs_f64();
        let completed = per_thread.iter().map(|t| t.0).sum::<u64>();
        Ok(Rate {
            per_s: completed as f64 / elapsed,
            completed,
            errors: per_thread.iter().map(|t| t.1).sum(),
            first_error: per_thread.into_iter().find_map(|t| t.2),
        })
    }
}

/// One connection-rate client: (completed, failed, first error).
fn one_client(target: SocketAddr, deadline: Instant) -> (u64, u64, Option<String>) {
    let (mut ok, mut failed, mut first) = (0, 0, None);
    let msg = [0x42u8; MESSAGE];
    while Instant::now() < deadline {
        let done = connect(target).and_then(|mut s| {
            let mut echo = [0u8; MESSAGE];
            s.write_all(&msg).context("write")?;
            s.read_exact(&mut echo).context("read the echo")?;
            if echo != msg {
                bail!("the echo differs from the message");
            }
            Ok(())
        });
        match done {
            Ok(()) => ok += 1,
            Err(e) => {
                failed += 1;
                first.get_or_insert_with(|| format!("{e:#}"));
                // A proxy out of something: do not spin.
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
    (ok, failed, first)
}

/// Idle connections held open by the client.
pub struct Held {
    pub conns: Vec<TcpStream>,
    /// Why fewer than asked for were opened.
    pub short: Option<String>,
}

/// Opens up to `count` connections, one after another, each proven to work
/// end to end by a one-byte echo; stops at the first that fails (a proxy out
/// of descriptors leaves it in its accept queue) or after two minutes.
pub fn hold_idle(place: &Place, target: SocketAddr, count: usize) -> anyhow::Result<Held> {
    in_ns(place.client(), move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut conns = Vec::with_capacity(count);
        for i in 0..count {
            let opened = TcpStream::connect_timeout(&target, Duration::from_secs(2))
                .context("connect")
                .and_then(|mut s| {
                    s.set_read_timeout(Some(Duration::from_secs(2)))?;
                    s.write_all(&[1]).context("write")?;
                    let mut b = [0u8; 1];
                    s.read_exact(&mut b).context("no echo")?;
                    Ok(s)
                });
            match opened {
                Ok(s) => conns.push(s),
                Err(e) => {
                    return Held {
                        conns,
                        short: Some(format!("connection {}: {e:#}", i + 1)),
                    }
                }
            }
            if Instant::now() > deadline {
                return Held {
                    conns,
                    short: Some("stopped after two minutes".into()),
                };
            }
        }
        Held { conns, short: None }
    })
}

/// The backend of the round-trip, connection-rate and idle figures: echoes
/// every byte, half-closes after the client does. Runs until killed, in its
/// own process (its own open-files limit: it holds the idle connections).
pub fn echo_server(addr: SocketAddr) -> anyhow::Result<()> {
    let limit = sys::raise_nofile()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        eprintln!("echo: listening on {addr}, open-files limit {limit}");
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    tokio::spawn(echo(s));
                }
                Err(e) => {
                    eprintln!("echo: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    })
}

async fn echo(mut s: tokio::net::TcpStream) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    s.set_nodelay(true)?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return s.shutdown().await;
        }
        s.write_all(&buf[..n]).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::parse_iperf;

    #[test]
    fn iperf_json() {
        let text = r#"{"start": {}, "end": {"sum_sent": {"bytes": 12, "retransmits": 3},
            "sum_received": {"bytes": 10, "bits_per_second": 80.0}}}"#;
        let (bytes, bps, re) = parse_iperf(text).expect("parses");
        assert_eq!((bytes, bps, re), (10, 80.0, Some(3)));
        let busy = "warning\n{\"error\": \"the server is busy running a test. try again later\"}";
        let e = parse_iperf(busy).expect_err("an error");
        assert!(format!("{e:#}").contains("busy"));
    }
}
