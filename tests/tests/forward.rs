//! `gateway forward` end to end on loopback: bulk transfers on every
//! dataplane, the tcp-echo exchange of Istio's task, and start-up failures.
use std::time::Duration;

use gateway_tests::{
    exchange, exchange_in, free_port, gateway_fails, gateway_fails_with, line_client, Gateway,
    Order, Stream, StreamBackend, TcpEcho,
};

const MIB: u64 = 1024 * 1024;

fn u64_of(stats: &serde_json::Value, path: &[&str]) -> u64 {
    let mut v = stats;
    for p in path {
        v = &v[p];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("no counter {path:?} in {stats}"))
}

/// 64 MiB each way at once, both ends hashed; returns the gateway's counters.
fn bulk(dataplane: &str) -> serde_json::Value {
    let len = 64 * MIB;
    let backend = StreamBackend::start(2, len);
    let gw = Gateway::forward(backend.addr, dataplane, &[]);
    let client = std::net::TcpStream::connect(gw.addr).expect("connect");
    let client_seen = exchange(client, Stream::new(1, len)).expect("client exchange");
    let backend_seen = backend.next();
    assert_eq!(backend_seen.received, len, "backend got a short stream");
    assert_eq!(
        backend_seen.received_hash, client_seen.sent_hash,
        "client -> backend bytes differ"
    );
    assert_eq!(client_seen.received, len, "client got a short stream");
    assert_eq!(
        client_seen.received_hash, backend_seen.sent_hash,
        "backend -> client bytes differ"
    );
    // The relay task finishes right after the last FIN; let it account.
    std::thread::sleep(Duration::from_millis(200));
    let stats = gw.stop();
    assert_eq!(u64_of(&stats, &["connections_completed"]), 1, "{stats}");
    assert_eq!(u64_of(&stats, &["connections_reset"]), 0, "{stats}");
    assert_eq!(u64_of(&stats, &["connections_aborted"]), 0, "{stats}");
    stats
}

#[test]
fn bulk_64mib_each_way_ebpf_in_kernel() {
    gateway_tests::needs_root!();
    let stats = bulk("ebpf");
    assert_eq!(stats["dataplane"], "ebpf");
    assert_eq!(u64_of(&stats, &["dataplane_ebpf"]), 1, "{stats}");
    // Every payload byte is accounted for: redirected by the verdict, or
    // passed to the agent by flow control while a reader was behind (both
    // readers here are slower than the kernel path, so some are).
    let redirected = u64_of(&stats, &["bytes_kernel_redirected"]);
    let copied = u64_of(&stats, &["bytes_agent_copied"]);
    assert_eq!(redirected + copied, 128 * MIB, "{stats}");
    assert_eq!(
        u64_of(&stats, &["kernel", "redirected_bytes"]),
        redirected,
        "{stats}"
    );
    assert_eq!(
        u64_of(&stats, &["kernel", "passed_bytes"]),
        copied,
        "{stats}"
    );
    assert_eq!(u64_of(&stats, &["bytes_spliced"]), 0, "{stats}");
    assert_eq!(u64_of(&stats, &["map_entries"]), 0, "{stats}");
    eprintln!("ebpf both ways: {redirected} bytes redirected in the kernel, {copied} moved by flow control");
}

/// One direction at a time, as a download or an upload is: the kernel moves
/// the bytes.
#[test]
fn bulk_64mib_one_way_ebpf_mostly_in_kernel() {
    gateway_tests::needs_root!();
    let len = 64 * MIB;
    let small = 1024;
    // A small request then a 64 MiB answer; a 64 MiB upload then a small answer.
    for (up, down, client_order, backend_order) in [
        (small, len, Order::FinLast, Order::Concurrent),
        (len, small, Order::Concurrent, Order::ReadFirst),
    ] {
        let backend = StreamBackend::with_order(2, down, backend_order);
        let gw = Gateway::forward(backend.addr, "ebpf", &[]);
        let client = std::net::TcpStream::connect(gw.addr).expect("connect");
        let seen = exchange_in(client, Stream::new(1, up), client_order).expect("client exchange");
        let back = backend.next();
        assert_eq!((seen.received, back.received), (down, up));
        assert_eq!(seen.received_hash, back.sent_hash);
        assert_eq!(back.received_hash, seen.sent_hash);
        std::thread::sleep(Duration::from_millis(200));
        let stats = gw.stop();
        let redirected = u64_of(&stats, &["bytes_kernel_redirected"]);
        let copied = u64_of(&stats, &["bytes_agent_copied"]);
        assert_eq!(u64_of(&stats, &["dataplane_ebpf"]), 1, "{stats}");
        assert_eq!(redirected + copied, up + down, "{stats}");
        assert!(
            redirected >= len / 2,
            "most bytes should stay in the kernel: {stats}"
        );
        eprintln!("ebpf one way (up {up}, down {down}): {redirected} redirected, {copied} by flow control");
    }
}

/// `--bpf-stats`: the kernel counts the verdict's runs and their run time,
/// and the counters report them (since start-up, like the byte totals).
#[test]
fn bpf_stats_count_the_verdict_runs() {
    gateway_tests::needs_root!();
    let len = 16 * MIB;
    let backend = StreamBackend::with_order(2, len, Order::Concurrent);
    let gw = Gateway::forward(backend.addr, "ebpf", &["--bpf-stats"]);
    // The start-up check's runs are not counted.
    let at_start = gw.sample();
    assert_eq!(
        u64_of(&at_start, &["kernel", "verdict_runs"]),
        0,
        "{at_start}"
    );
    let client = std::net::TcpStream::connect(gw.addr).expect("connect");
    let seen = exchange_in(client, Stream::new(1, 1024), Order::FinLast).expect("client exchange");
    let back = backend.next();
    assert_eq!((seen.received, back.received), (len, 1024));
    assert_eq!(seen.received_hash, back.sent_hash);
    std::thread::sleep(Duration::from_millis(200));
    let stats = gw.stop();
    let runs = u64_of(&stats, &["kernel", "verdict_runs"]);
    let ns = u64_of(&stats, &["kernel", "verdict_run_ns"]);
    let moved = u64_of(&stats, &["kernel", "redirected_bytes"])
        + u64_of(&stats, &["kernel", "passed_bytes"]);
    assert_eq!(moved, len + 1024, "{stats}");
    // Each run is handed one skb: at least one per 1 MiB moved (loopback's
    // largest is 64 KiB), at most one per byte and empty skb.
    let empty = u64_of(&stats, &["kernel", "empty_dropped"]);
    assert!(
        runs >= moved / MIB && runs <= moved + empty,
        "verdict runs {runs} for {moved} bytes: {stats}"
    );
    // Some time, and less than a millisecond a run on average.
    assert!(
        ns > 0 && ns / runs < 1_000_000,
        "{ns} ns over {runs} runs: {stats}"
    );
    eprintln!(
        "verdict: {runs} runs, {} ns a run, {moved} bytes",
        ns / runs
    );
    // A dataplane without the verdict says the flag does nothing.
    let gw = Gateway::forward(backend.addr, "splice", &["--bpf-stats"]);
    let said = gw.stderr().join("\n");
    assert!(
        said.contains("--bpf-stats has no effect: dataplane splice runs no BPF program"),
        "{said}"
    );
    assert_eq!(gw.stop()["kernel"], serde_json::Value::Null);
}

/// `auto` starts a connection on its copy path and moves it to splice
/// mid-stream once it has moved 256 KiB: both directions at once, every byte
/// once and in order across the move.
#[test]
fn bulk_64mib_each_way_auto_moves_to_splice() {
    gateway_tests::needs_root!();
    let stats = bulk("auto");
    assert_eq!(stats["dataplane"], "auto");
    assert_eq!(u64_of(&stats, &["connections_bulk_spliced"]), 1, "{stats}");
    assert_eq!(u64_of(&stats, &["dataplane_splice"]), 1, "{stats}");
    assert_eq!(u64_of(&stats, &["connections_promoted"]), 0, "{stats}");
    let spliced = u64_of(&stats, &["bytes_spliced"]);
    let copied = u64_of(&stats, &["bytes_agent_copied"]);
    assert_eq!(spliced + copied, 128 * MIB, "{stats}");
    assert!(spliced > 64 * MIB, "most bytes should be spliced: {stats}");
    eprintln!("auto both ways: {spliced} bytes spliced, {copied} copied before the move");
}

/// The same with `--bulk-path ebpf`: the connection moves into the sockhash
/// mid-stream, with bytes flowing both ways (the hardest moment: a partly
/// read skb at insertion would be sent twice).
#[test]
fn bulk_64mib_each_way_auto_bulk_path_ebpf_moves_into_the_kernel() {
    gateway_tests::needs_root!();
    let stats = bulk("auto-ebpf");
    assert_eq!(u64_of(&stats, &["connections_promoted"]), 1, "{stats}");
    assert_eq!(u64_of(&stats, &["dataplane_ebpf"]), 1, "{stats}");
    let redirected = u64_of(&stats, &["bytes_kernel_redirected"]);
    let copied = u64_of(&stats, &["bytes_agent_copied"]);
    assert_eq!(redirected + copied, 128 * MIB, "{stats}");
    assert!(redirected > 0, "nothing went through the kernel: {stats}");
    assert_eq!(u64_of(&stats, &["map_entries"]), 0, "{stats}");
    eprintln!("auto (bulk in the kernel) both ways: {redirected} redirected, {copied} copied (before the move and by flow control)");
}

/// A long-lived exchange of small messages moves into the kernel after 64
/// reads; the answers stay whole and in order across the move.
#[test]
fn auto_moves_a_chatty_connection_into_the_kernel() {
    gateway_tests::needs_root!();
    use std::io::{BufRead, BufReader, Write};
    let port = free_port();
    let _echo = TcpEcho::start(port, "one");
    let to = format!("127.0.0.1:{port}");
    let gw = Gateway::start(&["forward", "--listen", "127.0.0.1:0", "--to", &to]);
    let mut s = std::net::TcpStream::connect(gw.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.set_nodelay(true).expect("nodelay");
    let mut lines = BufReader::new(s.try_clone().expect("clone"));
    for i in 0..200 {
        let line = format!("message {i} {}\n", "x".repeat(i % 50));
        s.write_all(line.as_bytes()).expect("write");
        let mut reply = String::new();
        lines.read_line(&mut reply).expect("read the answer");
        assert_eq!(reply, format!("one {line}"), "answer {i}");
    }
    s.shutdown(std::net::Shutdown::Write).expect("fin");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut lines, &mut rest).expect("read to the end");
    assert!(
        rest.is_empty(),
        "unexpected bytes after the last answer: {rest:?}"
    );
    std::thread::sleep(Duration::from_millis(200));
    let stats = gw.stop();
    assert_eq!(u64_of(&stats, &["connections_promoted"]), 1, "{stats}");
    assert_eq!(u64_of(&stats, &["dataplane_ebpf"]), 1, "{stats}");
    assert_eq!(u64_of(&stats, &["connections_completed"]), 1, "{stats}");
    assert!(
        u64_of(&stats, &["bytes_kernel_redirected"]) > 0,
        "the answers after the move should go through the kernel: {stats}"
    );
}

/// A connection whose backend has finished while the client keeps its own
/// side open costs nothing while it waits (a read-closed socket stays
/// readable for good; asking for that readiness spun the relay on a core).
#[test]
fn a_half_closed_connection_waits_without_spinning() {
    gateway_tests::needs_root!();
    use gateway_tests::scenarios::Backend;
    use std::io::{Read, Write};
    for dp in ["ebpf", "auto", "splice", "userspace"] {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let backend = Backend::serve(l, |mut s| {
            let _ = s.write_all(&vec![7u8; 512 * 1024]);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        });
        let gw = Gateway::forward(backend.addr, dp, &[]);
        let mut c = std::net::TcpStream::connect(gw.addr).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        c.write_all(&[1u8; 1024]).expect("write");
        let mut got = Vec::new();
        c.read_to_end(&mut got).expect("read to the backend's FIN");
        assert_eq!(got.len(), 512 * 1024, "{dp}");
        // The backend is done; the client's side stays open a second.
        std::thread::sleep(Duration::from_millis(100));
        let before = gw.cpu_time();
        std::thread::sleep(Duration::from_secs(1));
        let used = gw.cpu_time().saturating_sub(before);
        c.shutdown(std::net::Shutdown::Write).expect("fin");
        drop(c);
        std::thread::sleep(Duration::from_millis(200));
        let stats = gw.stop();
        assert!(
            used < Duration::from_millis(300),
            "{dp}: the gateway used {used:?} of CPU in a second with one half-closed connection"
        );
        assert_eq!(
            u64_of(&stats, &["connections_completed"]),
            1,
            "{dp}: {stats}"
        );
    }
}

#[test]
fn bulk_64mib_each_way_splice() {
    gateway_tests::needs_root!();
    let stats = bulk("splice");
    assert_eq!(u64_of(&stats, &["bytes_spliced"]), 128 * MIB, "{stats}");
    assert_eq!(u64_of(&stats, &["bytes_agent_copied"]), 0, "{stats}");
}

#[test]
fn bulk_64mib_each_way_userspace() {
    gateway_tests::needs_root!();
    let stats = bulk("userspace");
    assert_eq!(
        u64_of(&stats, &["bytes_agent_copied"]),
        128 * MIB,
        "{stats}"
    );
    assert_eq!(u64_of(&stats, &["bytes_spliced"]), 0, "{stats}");
}

/// A message sent in two writes a few milliseconds apart, each way: the
/// gateway must pass the second write on at once, not hold it until the
/// first is acknowledged (Nagle's algorithm, which then waits for the
/// receiver's delayed ACK: 40 ms or more per message, seen on every
/// dataplane before the gateway turned it off).
#[test]
fn small_writes_are_not_held_back_on_every_dataplane() {
    gateway_tests::needs_root!();
    use gateway_tests::scenarios::Backend;
    use std::io::{Read, Write};
    const HALF: usize = 100;
    const ROUNDS: usize = 20;
    let gap = Duration::from_millis(5);
    // Send one message as two writes `gap` apart.
    let send = move |s: &mut std::net::TcpStream, tag: u8| -> std::io::Result<()> {
        s.write_all(&[tag; HALF])?;
        std::thread::sleep(gap);
        s.write_all(&[tag; HALF])
    };
    for dp in ["ebpf", "auto", "splice", "userspace"] {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let backend = Backend::serve(l, move |mut s| {
            let _ = s.set_nodelay(true);
            let mut msg = [0u8; 2 * HALF];
            while s.read_exact(&mut msg).is_ok() {
                if send(&mut s, msg[0].wrapping_add(1)).is_err() {
                    break;
                }
            }
        });
        let gw = Gateway::forward(backend.addr, dp, &[]);
        let mut c = std::net::TcpStream::connect(gw.addr).expect("connect");
        c.set_nodelay(true).expect("nodelay");
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut took = Vec::new();
        for round in 0..ROUNDS {
            let tag = (round * 2) as u8;
            let start = std::time::Instant::now();
            send(&mut c, tag).expect("send");
            let mut reply = [0u8; 2 * HALF];
            c.read_exact(&mut reply).expect("reply");
            took.push(start.elapsed());
            assert_eq!(reply, [tag + 1; 2 * HALF], "{dp}: round {round}");
        }
        drop(c);
        took.sort();
        // Two gaps of 5 ms, each way: about 10 ms. A held-back write adds a
        // delayed ACK (at least 40 ms) in one direction or both.
        let median = took[ROUNDS / 2];
        assert!(
            median < Duration::from_millis(30),
            "{dp}: a message took {median:?} (median of {ROUNDS}): a write was held back"
        );
        drop(gw);
    }
}

/// On splice, a direction holds a pipe only while it has bytes to move:
/// taken from the worker's pool when bytes arrive, given back once the
/// source is drained. Fifty connections, idle and then after a message
/// each way, hold no pipe of their own; the one pipe in the pool stays at
/// the kernel's 64 KiB until a splice fills it, then grows (to 1 MiB where
/// the per-user pipe limits do not bind the gateway).
#[test]
fn splice_pipes_are_held_only_while_bytes_move() {
    gateway_tests::needs_root!();
    use std::io::{Read, Write};
    const SMALL: usize = 64 << 10;
    const CONNS: usize = 50;
    // What `splice::pipe_bytes` asks for with the capabilities this test
    // (and so the gateway it starts) has.
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .expect("CapEff");
    let exempt = caps & (1 << 21 | 1 << 24) != 0;
    let max: usize = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .expect("pipe-max-size")
        .trim()
        .parse()
        .expect("a size");
    let big = if exempt { max.min(1 << 20) } else { SMALL };

    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    // One worker: one pool.
    let gw = Gateway::forward(l.local_addr().expect("addr"), "splice", &["--workers", "1"]);
    // The sizes of the pipes opened since start (the gateway may have
    // inherited some, a build tool's jobserver for one), smallest first.
    let inherited = gw.pipes();
    let pipe_sizes = || -> Vec<usize> {
        let mut sizes: Vec<usize> = gw
            .pipes()
            .into_iter()
            .filter(|(pipe, _)| !inherited.contains_key(pipe))
            .map(|(_, size)| size)
            .collect();
        sizes.sort_unstable();
        sizes
    };
    let mut conns = Vec::new();
    for _ in 0..CONNS {
        let client = std::net::TcpStream::connect(gw.addr).expect("connect");
        let (server, _) = l.accept().expect("accept");
        server
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        conns.push((client, server));
    }
    std::thread::sleep(Duration::from_millis(100));
    // (tokio marks an accepted socket readable before any event: the first
    // splice may take a pipe, find nothing and give it back to the pool.)
    let idle = pipe_sizes();
    assert!(
        idle.len() <= 1,
        "{CONNS} connections, nothing sent: {idle:?}"
    );
    let mut buf = vec![0u8; 1024];
    for (client, server) in &mut conns {
        client.write_all(&buf).expect("client write");
        server.read_exact(&mut buf).expect("server read");
        server.write_all(&buf).expect("server write");
        client.read_exact(&mut buf).expect("client read");
    }
    assert_eq!(pipe_sizes(), [SMALL], "after a message each way on each");

    // 16 MiB client -> backend on one connection, with the backend not
    // reading for a while: the client's bytes pile up in the gateway's
    // receive queue, so the splices after the backend starts reading fill
    // the pipe.
    const LEN: usize = 16 << 20;
    let (mut client, mut server) = conns.pop().expect("a connection");
    let writer = std::thread::spawn(move || {
        let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
        client.write_all(&data).map(|()| client)
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut got = vec![0u8; LEN];
    server.read_exact(&mut got).expect("server bulk read");
    assert!(
        got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8),
        "bytes differ"
    );
    let _client = writer.join().expect("writer").expect("client bulk write");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        pipe_sizes(),
        [big],
        "after 16 MiB one way (capabilities {caps:x}, pipe-max-size {max})"
    );
}

/// Istio's task: `(date; sleep 1) | nc GATEWAY 31400` gets `one <date>`.
#[test]
fn tcp_echo_line_with_half_close_on_every_dataplane() {
    gateway_tests::needs_root!();
    let port = free_port();
    let _echo = TcpEcho::start(port, "one");
    let to = format!("127.0.0.1:{port}");
    for dp in ["ebpf", "auto", "splice", "userspace"] {
        let gw = Gateway::start(&[
            "forward",
            "--listen",
            "127.0.0.1:0",
            "--to",
            &to,
            "--dataplane",
            dp,
        ]);
        for i in 0..3 {
            let line = format!("Thu Nov 26 18:{i:02}:00 UTC 2026\n");
            let reply = line_client(gw.addr, &line, Duration::from_millis(300));
            assert_eq!(reply, format!("one {line}"), "dataplane {dp}");
        }
        std::thread::sleep(Duration::from_millis(200));
        let stats = gw.stop();
        assert_eq!(
            u64_of(&stats, &["connections_completed"]),
            3,
            "{dp}: {stats}"
        );
        if dp == "auto" {
            // A line and its answer: never worth the kernel path's set-up.
            assert_eq!(u64_of(&stats, &["connections_promoted"]), 0, "{stats}");
            assert_eq!(u64_of(&stats, &["dataplane_userspace"]), 3, "{stats}");
            assert_eq!(
                u64_of(&stats, &["kernel", "redirected_bytes"]),
                0,
                "{stats}"
            );
        }
    }
}

/// Exactly one line on stderr, saying what is wrong, and a failure status.
fn assert_one_line_error(code: Option<i32>, stderr: &str, needle: &str) {
    assert_ne!(code, Some(0), "gateway should fail; stderr: {stderr}");
    assert!(
        code.is_some(),
        "gateway died from a signal; stderr: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        lines[0].to_lowercase().contains(needle),
        "expected {needle:?} in: {stderr}"
    );
}

#[test]
fn with_check_targets_fails_clearly_when_no_target_is_reachable() {
    gateway_tests::needs_root!();
    // Nothing listens on this port: connection refused.
    let dead = format!("127.0.0.1:{}", free_port());
    let (code, err) = gateway_fails(
        &[
            "forward",
            "--listen",
            "127.0.0.1:0",
            "--to",
            &dead,
            "--check-targets",
        ],
        None,
    );
    assert_one_line_error(code, &err, "no target is reachable");
    assert!(err.contains(&dead), "{err}");
}

#[test]
fn fails_clearly_when_the_port_is_in_use() {
    gateway_tests::needs_root!();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let echo_port = free_port();
    let _echo = TcpEcho::start(echo_port, "one");
    let to = format!("127.0.0.1:{echo_port}");
    let (code, err) = gateway_fails(
        &[
            "forward",
            "--listen",
            &addr,
            "--to",
            &to,
            "--dataplane",
            "splice",
        ],
        None,
    );
    assert_one_line_error(code, &err, "address already in use");
    assert!(err.contains(&addr), "{err}");
}

/// Another gateway (or anything else that asked to share the port with
/// SO_REUSEPORT) already listening: refused, not silently sharing it.
#[test]
fn fails_clearly_when_another_gateway_has_the_port() {
    gateway_tests::needs_root!();
    let echo_port = free_port();
    let _echo = TcpEcho::start(echo_port, "one");
    let to = format!("127.0.0.1:{echo_port}");
    let first = Gateway::forward(([127, 0, 0, 1], echo_port).into(), "auto", &[]);
    let addr = first.addr.to_string();
    let (code, err) = gateway_fails(&["forward", "--listen", &addr, "--to", &to], None);
    assert_one_line_error(code, &err, "address already in use");
    assert!(err.contains("another process listens on it"), "{err}");
    // The first one still has every connection.
    for i in 0..20 {
        let line = format!("line {i}\n");
        assert_eq!(
            line_client(first.addr, &line, Duration::ZERO),
            format!("one {line}")
        );
    }
}

/// Each worker has its own listening socket; the kernel spreads new
/// connections over them, and each is served where it was accepted.
#[test]
fn connections_are_spread_over_the_workers() {
    gateway_tests::needs_root!();
    let echo_port = free_port();
    let _echo = TcpEcho::start(echo_port, "one");
    let gw = Gateway::forward(
        ([127, 0, 0, 1], echo_port).into(),
        "auto",
        &["--workers", "3"],
    );
    let waits = |gw: &Gateway| -> Vec<u64> {
        let mut w: Vec<(String, u64)> = gw
            .thread_waits()
            .into_iter()
            .filter(|(name, _)| name.starts_with("worker-"))
            .collect();
        w.sort();
        w.into_iter().map(|(_, n)| n).collect()
    };
    let before = waits(&gw);
    assert_eq!(before.len(), 3, "three worker threads: {before:?}");
    for i in 0..90 {
        let line = format!("line {i}\n");
        assert_eq!(
            line_client(gw.addr, &line, Duration::ZERO),
            format!("one {line}")
        );
    }
    let after = waits(&gw);
    // One connection wakes its worker at least once; a worker that got
    // none would not have moved. (90 connections over 3 sockets by hash:
    // a worker with fewer than 5 is a one-in-a-million draw.)
    for (b, a) in before.iter().zip(&after) {
        assert!(
            a - b >= 5,
            "every worker serves connections: {before:?} -> {after:?}"
        );
    }
    let stats = gw.stop();
    assert_eq!(u64_of(&stats, &["connections_completed"]), 90, "{stats}");
}

#[test]
fn fails_clearly_without_privileges_for_ebpf() {
    gateway_tests::needs_root!();
    let echo_port = free_port();
    let _echo = TcpEcho::start(echo_port, "one");
    let to = format!("127.0.0.1:{echo_port}");
    // uid/gid 65534: nobody, no capabilities.
    let (code, err) = gateway_fails(
        &[
            "forward",
            "--listen",
            "127.0.0.1:0",
            "--to",
            &to,
            "--dataplane",
            "ebpf",
        ],
        Some(65534),
    );
    assert_one_line_error(code, &err, "needs root");
}

#[test]
fn auto_says_which_dataplane_it_chose() {
    gateway_tests::needs_root!();
    let echo_port = free_port();
    let _echo = TcpEcho::start(echo_port, "one");
    let to = format!("127.0.0.1:{echo_port}");
    let gw = Gateway::start(&["forward", "--listen", "127.0.0.1:0", "--to", &to]);
    assert!(
        gw.stderr()
            .iter()
            .any(|l| l.contains("dataplane auto (each connection starts on the copy path;")),
        "{:?}",
        gw.stderr()
    );
}

#[test]
fn auto_runs_on_splice_when_the_kernel_path_fails_its_startup_check() {
    gateway_tests::needs_root!();
    let echo_port = free_port();
    let _echo = TcpEcho::start(echo_port, "one");
    let to = format!("127.0.0.1:{echo_port}");
    let gw = Gateway::start_with(
        None,
        &["forward", "--listen", "127.0.0.1:0", "--to", &to],
        &[("GATEWAY_BREAK_STARTUP_CHECK", "1")],
    );
    let log = gw.stderr();
    let said: Vec<_> = log
        .iter()
        .filter(|l| l.contains("failed its start-up check"))
        .collect();
    assert_eq!(said.len(), 1, "{log:?}");
    assert!(said[0].contains("using splice"), "{log:?}");
    assert!(
        log.iter().any(|l| l.contains("dataplane splice")),
        "{log:?}"
    );
    // And it serves, on splice.
    let reply = line_client(gw.addr, "hello\n", Duration::from_millis(10));
    assert_eq!(reply, "one hello\n");
    let stats = gw.sample();
    assert_eq!(stats["dataplane"], "splice", "{stats}");
    assert_eq!(stats["map_entries"], serde_json::Value::Null, "{stats}");
}

#[test]
fn ebpf_refuses_to_start_when_the_kernel_path_fails_its_startup_check() {
    gateway_tests::needs_root!();
    let echo_port = free_port();
    let _echo = TcpEcho::start(echo_port, "one");
    let to = format!("127.0.0.1:{echo_port}");
    let (code, err) = gateway_fails_with(
        &[
            "forward",
            "--listen",
            "127.0.0.1:0",
            "--to",
            &to,
            "--dataplane",
            "ebpf",
        ],
        None,
        &[("GATEWAY_BREAK_STARTUP_CHECK", "1")],
    );
    assert_one_line_error(code, &err, "failed its start-up check");
    assert!(err.contains("--dataplane splice"), "{err}");
}

#[test]
fn the_startup_check_leaves_no_trace_in_the_counters() {
    gateway_tests::needs_root!();
    let echo_port = free_port();
    let _echo = TcpEcho::start(echo_port, "one");
    let to = format!("127.0.0.1:{echo_port}");
    let gw = Gateway::start(&[
        "forward",
        "--listen",
        "127.0.0.1:0",
        "--to",
        &to,
        "--dataplane",
        "ebpf",
    ]);
    let stats = gw.sample();
    for key in ["redirected_bytes", "passed_bytes", "empty_dropped"] {
        assert_eq!(stats["kernel"][key], 0, "{key}: {stats}");
    }
    assert_eq!(stats["connections_accepted"], 0, "{stats}");
    assert_eq!(stats["map_entries"], 0, "{stats}");
}

/// What this kernel does at the data path's edges, printed as one `fact:`
/// line (the kernel matrix collects them): bytes queued before insertion
/// both ways (a client's first bytes, a backend's banner), an exchange after
/// it, and a half-close each way. Asserts every byte arrived once and in
/// order and that the verdict and the agent account for all of them.
#[test]
fn kernel_facts() {
    gateway_tests::needs_root!();
    use std::io::{Read as _, Write as _};
    const N: usize = 1000;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let backend_addr = listener.local_addr().expect("addr");
    let banner: Vec<u8> = (0..N).map(|i| (i % 251) as u8).collect();
    let early: Vec<u8> = (0..N).map(|i| (i % 241) as u8 ^ 0x5a).collect();
    let backend = {
        let banner = banner.clone();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            s.write_all(&banner).expect("banner");
            let mut got = vec![0; N];
            s.read_exact(&mut got).expect("client's bytes");
            s.write_all(&got).expect("echo");
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).expect("client's FIN");
            s.shutdown(std::net::Shutdown::Write).expect("FIN");
            rest.len()
        })
    };
    let gw = Gateway::forward(backend_addr, "ebpf", &[]);
    let mut c = std::net::TcpStream::connect(gw.addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    c.write_all(&early).expect("early bytes");
    let mut got = vec![0; 2 * N];
    c.read_exact(&mut got).expect("banner and echo within 10 s");
    assert_eq!(&got[..N], &banner[..], "banner");
    assert_eq!(&got[N..], &early[..], "echo");
    c.shutdown(std::net::Shutdown::Write).expect("FIN");
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).expect("backend's FIN");
    assert!(rest.is_empty());
    assert_eq!(backend.join().expect("backend"), 0);
    drop(c);
    std::thread::sleep(Duration::from_millis(300));
    let stats = gw.stop();
    let k = |key: &str| u64_of(&stats, &["kernel", key]);
    let copied = u64_of(&stats, &["bytes_agent_copied"]);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    eprintln!(
        "fact: kernel={} bytes={} redirected={} passed={} agent_copied={copied} empty_fin_skbs={}",
        release.trim(),
        3 * N,
        k("redirected_bytes"),
        k("passed_bytes"),
        k("empty_dropped"),
    );
    assert_eq!(u64_of(&stats, &["dataplane_ebpf"]), 1, "{stats}");
    assert_eq!(
        k("redirected_bytes") + copied,
        3 * N as u64,
        "every byte once: {stats}"
    );
}
