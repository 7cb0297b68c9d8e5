//! The start-up check of the kernel path: one connection relayed over
//! loopback through the real maps, program and agent code, crossing the
//! edges where kernels have differed (bytes queued before insertion in both
//! directions, a stream larger than the socket buffers, half-close each
//! way). A kernel that gets any of it wrong (a sockmap regression, a
//! backport gone wrong) is found before the first user connection.
use std::{net::Ipv4Addr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use super::{Dataplane, End, Kind};
use crate::telemetry::Stats;

/// Bytes each way after insertion: several socket buffers' worth.
const STREAM: usize = 1 << 20;
/// Bytes each way before insertion.
const EARLY: usize = 3000;
/// A kernel that moves no bytes fails by this deadline, not by hanging.
const DEADLINE: Duration = Duration::from_secs(10);

/// Why the check did not pass.
#[derive(Debug)]
pub enum Outcome {
    /// The kernel path lost, reordered, stalled or refused bytes.
    Failed(String),
    /// The check could not be set up (no loopback in this namespace...);
    /// says nothing about the kernel.
    Unavailable(String),
}

async fn read_all(rx: &mut tokio::net::tcp::ReadHalf<'_>) -> std::io::Result<Vec<u8>> {
    let mut got = Vec::with_capacity(EARLY + STREAM);
    rx.read_to_end(&mut got).await?;
    Ok(got)
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(7).wrapping_add(u32::from(seed)) as u8 % 251)
        .collect()
}

/// Relays one loopback connection on `dp`'s kernel path with statistics of
/// its own and checks every byte and both FINs.
pub async fn check(dp: &Dataplane) -> Result<(), Outcome> {
    let probe = Dataplane {
        kind: Kind::Ebpf,
        kernel: dp.kernel.clone(),
        opts: dp.opts,
        stats: Arc::new(Stats::default()),
        conns: Arc::default(),
    };
    let unavailable = |what: &str, e: std::io::Error| Outcome::Unavailable(format!("{what}: {e}"));
    let front = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(|e| unavailable("loopback listener", e))?;
    let back = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(|e| unavailable("loopback listener", e))?;
    let setup = async {
        let client = TcpStream::connect(front.local_addr()?).await?;
        let (gw_client, _) = front.accept().await?;
        let gw_backend = TcpStream::connect(back.local_addr()?).await?;
        let (server, _) = back.accept().await?;
        std::io::Result::Ok((client, gw_client, gw_backend, server))
    };
    let (mut client, gw_client, gw_backend, mut server) = setup
        .await
        .map_err(|e| unavailable("loopback connection", e))?;

    // For the tests of what a failed check does.
    let broken =
        cfg!(feature = "test-hooks") && std::env::var_os("GATEWAY_BREAK_STARTUP_CHECK").is_some();
    let up = pattern(1, EARLY + STREAM);
    let down = pattern(2, EARLY + STREAM);
    let failed = |what: String| Outcome::Failed(what);
    // Queued before insertion, each way.
    client
        .write_all(&up[..EARLY])
        .await
        .map_err(|e| failed(format!("client write: {e}")))?;
    server
        .write_all(&down[..EARLY])
        .await
        .map_err(|e| failed(format!("backend write: {e}")))?;

    let addr = |s: &TcpStream| {
        s.local_addr()
            .map_err(|e| unavailable("loopback address", e))
    };
    let conn = probe
        .conns
        .register(addr(&client)?, addr(&gw_client)?, "start-up check".into());
    let relay = probe.relay(gw_client, gw_backend, &conn.live);
    let (mut client_rx, mut client_tx) = client.split();
    let (mut server_rx, mut server_tx) = server.split();
    let client_send = async {
        client_tx.write_all(&up[EARLY..]).await?;
        client_tx.shutdown().await
    };
    let server_send = async {
        server_tx.write_all(&down[EARLY..]).await?;
        server_tx.shutdown().await
    };
    let all = async {
        tokio::join!(
            relay,
            client_send,
            server_send,
            read_all(&mut client_rx),
            read_all(&mut server_rx)
        )
    };
    let (end, sent_up, sent_down, got_down, got_up) = tokio::time::timeout(DEADLINE, all)
        .await
        .map_err(|_| failed(format!("no end within {DEADLINE:?}: bytes stalled")))?;
    if !matches!(end, End::Completed) {
        return Err(failed(format!("the relay ended with {end:?}")));
    }
    if probe
        .stats
        .dataplane_ebpf
        .load(std::sync::atomic::Ordering::Relaxed)
        != 1
    {
        return Err(failed(
            "the connection could not be put in the socket map".into(),
        ));
    }
    sent_up.map_err(|e| failed(format!("client write: {e}")))?;
    sent_down.map_err(|e| failed(format!("backend write: {e}")))?;
    for (dir, got, want) in [
        ("client to backend", got_up, &up),
        ("backend to client", got_down, &down),
    ] {
        let got = got.map_err(|e| failed(format!("{dir}: read: {e}")))?;
        if broken {
            return Err(failed("GATEWAY_BREAK_STARTUP_CHECK is set".into()));
        }
        if got != *want {
            let at = got.iter().zip(want.iter()).position(|(a, b)| a != b);
            return Err(failed(format!(
                "{dir}: {} of {} bytes arrived{}",
                got.len(),
                want.len(),
                at.map_or(String::new(), |i| format!(", first difference at byte {i}"))
            )));
        }
    }
    Ok(())
}
