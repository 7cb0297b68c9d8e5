//! What an operator watches: `/metrics` read by Prometheus' own parser, its
//! counters against what the test did; `/healthz` and `/ready`; the access
//! log's line per connection, with Envoy's flags for a refused backend and
//! an idle timeout.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use gateway_tests::{
    agent::{
        endpoints_yaml, free_port_on, read, seed, unique_ip, who_answers, Agent, Backends, Echo,
        Held, TempDir, FQDN, NS, PORT,
    },
    prometheus::{get, parse, sum, Sample},
    Gateway,
};

/// Istio's labels of a healthy connection to v1.
fn v1(flags: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("reporter", "source"),
        ("destination_service", FQDN),
        ("destination_service_name", "tcp-echo"),
        ("destination_service_namespace", NS),
        ("destination_version", "v1"),
        ("destination_app", "tcp-echo"),
        ("request_protocol", "tcp"),
        ("response_flags", flags),
    ]
}

/// Scrapes until `done` says the samples are complete, for up to 3 s (a
/// connection is counted closed a moment after its client saw the end).
fn scrape_until(agent: &Agent, done: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let samples = agent.metrics();
        if done(&samples) || Instant::now() > deadline {
            return samples;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The access log's lines, once there are `n` (for up to 3 s).
fn log_lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= n || Instant::now() > deadline {
            return text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not JSON: {l:?}")))
                .collect();
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_and_access_log_count_what_the_clients_did() {
    gateway_tests::needs_root!();
    let dir = TempDir::new("observe");
    let backends = Backends::start();
    let log = dir.path.join("access.log");
    let agent = Agent::start(
        &dir.path,
        unique_ip(),
        &["--access-log", log.to_str().expect("utf-8")],
    );
    let probes = agent.metrics_addr();
    assert_eq!(get(probes, "/healthz").0, 200);
    assert_eq!(get(probes, "/ready").0, 200);
    assert_eq!(get(probes, "/nothing").0, 404);
    let endpoints = dir.write("endpoints.yaml", &backends.endpoints_yaml());
    agent.apply_ok(&[&endpoints, &seed("tcp-echo-all-v1.yaml")], Some(NS));
    let addr = agent.addr(PORT);

    // Short connections, each one line each way, and one that stays open.
    let n = 20;
    assert_eq!(
        who_answers(addr, n, 4),
        BTreeMap::from([("one".to_string(), n)])
    );
    let line = |i: usize| format!("hello {i}\n").len() as u64;
    let mut from_clients: u64 = (0..n).map(line).sum();
    let mut to_clients = from_clients + 4 * n as u64;
    let mut held = Held::open(addr);
    for i in 0..10 {
        assert_eq!(held.who(&format!("held {i}")), "one");
        from_clients += format!("held {i}\n").len() as u64;
        to_clients += format!("one held {i}\n").len() as u64;
    }

    let ok = v1("-");
    // The gateway counts a write once it returns, which can be just after
    // the client read the bytes, and a close once the connection's sockets
    // are closed, which can be just after the client saw its FIN: wait for
    // the counters to catch up, then check that they are exact.
    let samples = scrape_until(&agent, |s| {
        sum(s, "istio_tcp_connections_closed_total", &ok) == n as f64
            && sum(s, "gateway_connections_active", &[]) == 1.0
            && sum(s, "istio_tcp_received_bytes_total", &ok) >= from_clients as f64
            && sum(s, "istio_tcp_sent_bytes_total", &ok) >= to_clients as f64
    });
    let count = |name: &str, labels: &[(&str, &str)]| sum(&samples, name, labels);
    assert_eq!(
        count("istio_tcp_connections_opened_total", &ok),
        (n + 1) as f64
    );
    assert_eq!(count("istio_tcp_connections_closed_total", &ok), n as f64);
    // The open connection's bytes count too, as of the scrape.
    assert_eq!(
        count("istio_tcp_received_bytes_total", &ok),
        from_clients as f64
    );
    assert_eq!(count("istio_tcp_sent_bytes_total", &ok), to_clients as f64);
    assert_eq!(
        count("gateway_connections_accepted_total", &[]),
        (n + 1) as f64
    );
    assert_eq!(count("gateway_connections_active", &[]), 1.0);
    assert!(
        samples
            .iter()
            .filter(|s| s.name.starts_with("istio_"))
            .all(|s| s.labels.len() == 23 && !s.labels.values().any(String::is_empty)),
        "every Istio sample carries Istio's 23 labels, unknown ones as `unknown`"
    );
    drop(held);

    // A backend that refuses: UF.
    let dead = SocketAddr::new(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        free_port_on(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    );
    let refusing = dir.write("refusing.yaml", &endpoints_yaml(dead, backends.v2.addr));
    agent.apply_ok(&[&refusing], Some(NS));
    assert!(Held::open(addr).ask("anyone?").is_err());
    // An idle timeout: DT.
    let with_idle = read(&seed("tcp-echo-all-v1.yaml")).replace(
        "spec:\n  host: tcp-echo\n",
        "spec:\n  host: tcp-echo\n  trafficPolicy:\n    connectionPool:\n      tcp:\n        idleTimeout: 1s\n",
    );
    let routes = dir.write("idle.yaml", &with_idle);
    agent.apply_ok(&[&endpoints, &routes], Some(NS));
    let mut idle = Held::open(addr);
    assert_eq!(idle.who("then silence"), "one");
    assert!(idle.wait_closed(Duration::from_secs(5)).is_some());

    let samples = scrape_until(&agent, |s| {
        sum(s, "istio_tcp_connections_closed_total", &v1("DT")) == 1.0
    });
    let count = |name: &str, labels: &[(&str, &str)]| sum(&samples, name, labels);
    let uf = [("destination_service", FQDN), ("response_flags", "UF")];
    assert_eq!(count("istio_tcp_connections_opened_total", &uf), 1.0);
    assert_eq!(count("istio_tcp_connections_closed_total", &uf), 1.0);
    assert_eq!(count("istio_tcp_connections_closed_total", &v1("DT")), 1.0);
    assert_eq!(count("gateway_idle_timeouts_total", &[]), 1.0);

    // One line per connection: the 20, the held one, the refused one and
    // the idle one, in the order they closed.
    let lines = log_lines(&log, n + 3);
    assert_eq!(lines.len(), n + 3, "{lines:#?}");
    let cluster = format!("outbound|9000|v1|{FQDN}");
    let route = format!("{NS}/tcp-echo");
    for l in &lines {
        for key in [
            "start_time",
            "duration",
            "bytes_received",
            "bytes_sent",
            "upstream_cluster",
            "downstream_remote_address",
            "downstream_local_address",
            "route_name",
            "response_flags",
            "dataplane",
            "kernel_bytes_received",
        ] {
            assert!(l.get(key).is_some(), "no {key} in {l}");
        }
        assert_eq!(l["upstream_cluster"], cluster.as_str(), "{l}");
        assert_eq!(l["route_name"], route.as_str(), "{l}");
        assert_eq!(
            l["downstream_local_address"],
            addr.to_string().as_str(),
            "{l}"
        );
        let start = l["start_time"].as_str().expect("start_time");
        assert!(start.len() == 24 && start.ends_with('Z'), "{l}");
    }
    let flagged = |f: &str| lines.iter().filter(|l| l["response_flags"] == f).count();
    assert_eq!(
        (flagged("-"), flagged("UF"), flagged("DT")),
        (n + 1, 1, 1),
        "{lines:#?}"
    );
    let refused = lines
        .iter()
        .find(|l| l["response_flags"] == "UF")
        .expect("UF");
    assert_eq!(
        refused["upstream_host"],
        serde_json::Value::Null,
        "{refused}"
    );
    assert_eq!(refused["bytes_received"], 0, "{refused}");
    let timed_out = lines
        .iter()
        .find(|l| l["response_flags"] == "DT")
        .expect("DT");
    assert_eq!(
        timed_out["bytes_received"],
        "then silence\n".len(),
        "{timed_out}"
    );
    assert_eq!(
        timed_out["upstream_host"],
        backends.v1.addr.to_string().as_str(),
        "{timed_out}"
    );
    let logged_from: u64 = lines
        .iter()
        .filter(|l| l["response_flags"] == "-")
        .map(|l| l["bytes_received"].as_u64().expect("bytes"))
        .sum();
    assert_eq!(logged_from, from_clients);
    let logged_to: u64 = lines
        .iter()
        .filter(|l| l["response_flags"] == "-")
        .map(|l| l["bytes_sent"].as_u64().expect("bytes"))
        .sum();
    assert_eq!(logged_to, to_clients);

    // Stopping: not ready any more while it drains, and the log is whole.
    agent.stop();
}

#[test]
fn gateway_forward_serves_the_same_metrics_for_its_one_cluster() {
    gateway_tests::needs_root!();
    let echo = Echo::start(IpAddr::V4(Ipv4Addr::LOCALHOST), "one");
    let gw = Gateway::forward(echo.addr, "auto", &["--metrics", "127.0.0.1:0"]);
    let metrics: SocketAddr = gw
        .stderr()
        .iter()
        .find_map(|l| l.split("metrics on http://").nth(1))
        .and_then(|rest| rest.split('/').next())
        .and_then(|a| a.parse().ok())
        .expect("forward says where its metrics are");
    let mut held = Held::open(gw.addr);
    assert_eq!(held.who("hi"), "one");
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(3);
    let forward = [("destination_service", "forward"), ("response_flags", "-")];
    let samples = loop {
        let samples = parse(&get(metrics, "/metrics").1);
        if sum(&samples, "istio_tcp_connections_closed_total", &forward) == 1.0
            || Instant::now() > deadline
        {
            break samples;
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        sum(&samples, "istio_tcp_connections_opened_total", &forward),
        1.0
    );
    assert_eq!(
        sum(&samples, "istio_tcp_connections_closed_total", &forward),
        1.0
    );
    assert_eq!(
        sum(&samples, "istio_tcp_received_bytes_total", &forward),
        3.0
    );
    assert_eq!(sum(&samples, "istio_tcp_sent_bytes_total", &forward), 7.0);
    assert_eq!(get(metrics, "/ready").0, 200);
    gw.stop();
}

/// The verdict reports a rare event through aya-log, and the agent prints
/// it: here a client socket whose control record the agent was made to drop
/// (a test hook), so that its verdict meets a socket the maps do not know.
#[test]
fn the_verdict_logs_what_it_cannot_handle_through_the_agent() {
    gateway_tests::needs_root!();
    let echo = Echo::start(IpAddr::V4(Ipv4Addr::LOCALHOST), "one");
    let to = echo.addr.to_string();
    let gw = Gateway::start_with(
        None,
        &[
            "forward",
            "--listen",
            "127.0.0.1:0",
            "--to",
            &to,
            "--dataplane",
            "ebpf",
        ],
        &[("GATEWAY_TEST_FORGET_CLIENT", "1")],
    );
    let mut s = std::net::TcpStream::connect(gw.addr).expect("connect");
    // Each write an skb: the log comes when this CPU's count of such skbs
    // reaches a power of two.
    let deadline = Instant::now() + Duration::from_secs(5);
    let said = loop {
        use std::io::Write as _;
        let _ = s.write_all(b"x\n");
        if let Some(line) = gw
            .stderr()
            .into_iter()
            .find(|l| l.contains("the maps do not know"))
        {
            break Some(line);
        }
        if Instant::now() > deadline {
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let line = said.unwrap_or_else(|| panic!("no verdict log line: {:#?}", gw.stderr()));
    assert!(line.contains("WARN"), "{line}");
}
