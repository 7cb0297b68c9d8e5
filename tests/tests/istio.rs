//! `gateway run` end to end with Istio's own YAML: the TCP traffic shifting
//! task with the user's files as given (tcp-echo v1 on 127.0.0.1, v2 on
//! 127.0.0.2), live changes, bad input, ports, restarts, file watching,
//! `validate`, dead endpoints and idle timeouts.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use gateway_tests::agent::{
    assert_all, cluster, counter, endpoints_yaml, example, free_port_on, gateway, gateway_as, read,
    seed, unique_ip, who_answers, Agent, Backends, Held, TempDir, FQDN, NS, PORT,
};

/// A Gateway `name` on `port` and a VirtualService `name` sending all of
/// it to tcp-echo `subset`.
fn gateway_with_route(name: &str, port: u16, subset: &str) -> String {
    gateway_to(
        name,
        port,
        "tcp-echo",
        &format!("\n        subset: {subset}"),
    )
}

/// A Gateway `name` on `port` and a VirtualService `name` sending all of
/// it to `host` port 9000, `extra` added to the destination.
fn gateway_to(name: &str, port: u16, host: &str, extra: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: {name}
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: {port}
      name: tcp
      protocol: TCP
    hosts:
    - \"*\"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: {name}
spec:
  hosts:
  - \"*\"
  gateways:
  - {name}
  tcp:
  - route:
    - destination:
        host: {host}
        port:
          number: 9000{extra}
"
    )
}

/// An agent with the task's endpoints and Istio's all-v1 file applied.
fn task(tag: &str) -> (TempDir, Backends, Agent) {
    let dir = TempDir::new(tag);
    let backends = Backends::start();
    let agent = Agent::start(&dir.path, unique_ip(), &[]);
    let endpoints = dir.write("tcp-echo-endpoints.yaml", &backends.endpoints_yaml());
    agent.apply_ok(&[&endpoints, &seed("tcp-echo-all-v1.yaml")], Some(NS));
    (dir, backends, agent)
}

/// Istio's task, step by step: 100% v1, 80/20, 100% v2, cleanup; each
/// change leaves the connections opened before it where they were.
#[test]
fn traffic_shifting_task() {
    gateway_tests::needs_root!();
    let dir = TempDir::new("task");
    let backends = Backends::start();
    let agent = Agent::start(&dir.path, unique_ip(), &[]);
    let addr = agent.addr(PORT);
    let endpoints = dir.write("tcp-echo-endpoints.yaml", &backends.endpoints_yaml());
    let all_v1 = seed("tcp-echo-all-v1.yaml");
    let v2_20 = seed("tcp-echo-20-v2.yaml");
    let all_v2 = example("tcp-echo-all-v2.yaml");

    assert_eq!(
        agent.apply_ok(&[&endpoints], Some(NS)),
        "serviceentry.networking.istio.io/tcp-echo created\n\
         workloadentry.networking.istio.io/tcp-echo-v1 created\n\
         workloadentry.networking.istio.io/tcp-echo-v2 created\n"
    );
    assert!(
        TcpStream::connect(addr).is_err(),
        "no Gateway yet: nothing listens"
    );
    assert_eq!(
        agent.apply_ok(&[&all_v1], Some(NS)),
        "gateway.networking.istio.io/tcp-echo-gateway created\n\
         destinationrule.networking.istio.io/tcp-echo-destination created\n\
         virtualservice.networking.istio.io/tcp-echo created\n"
    );
    assert_all(addr, 50, "one");

    // 80/20, over a connection opened before it.
    let mut before = Held::open(addr);
    assert_eq!(before.who("before the shift"), "one");
    assert_eq!(
        agent.apply_ok(&[&v2_20], Some(NS)),
        "virtualservice.networking.istio.io/tcp-echo configured\n"
    );
    assert_eq!(before.who("after the shift"), "one");
    let n = 2000;
    let started = Instant::now();
    let counts = who_answers(addr, n, 16);
    eprintln!("{n} connections in {:?}: {counts:?}", started.elapsed());
    let (one, two) = (counts.get("one").copied(), counts.get("two").copied());
    assert_eq!(
        one.unwrap_or(0) + two.unwrap_or(0),
        n,
        "every connection answered: {counts:?}"
    );
    gateway_tests::agent::assert_within_4_sigma(two.unwrap_or(0), n, 0.2, "v2");
    let stats = agent.sample();
    assert_eq!(
        cluster(&stats, "v2", 9000),
        two.unwrap_or(0) as u64,
        "{stats}"
    );
    assert_eq!(counter(&stats, "config_generation"), 4, "{stats}");

    // 100% v2, over a connection opened under 80/20.
    let mut during = Held::open(addr);
    let was = during.who("under 80/20");
    assert_eq!(
        agent.apply_ok(&[&all_v2], Some(NS)),
        "virtualservice.networking.istio.io/tcp-echo configured\n"
    );
    assert_all(addr, 50, "two");
    assert_eq!(during.who("after 100% v2"), was);
    assert_eq!(before.who("still there"), "one");
    // Re-applying the same file changes nothing.
    assert_eq!(
        agent.apply_ok(&[&all_v2], Some(NS)),
        "virtualservice.networking.istio.io/tcp-echo unchanged\n"
    );
    assert_eq!(counter(&agent.sample(), "config_generation"), 5);

    // Cleanup as the task does it: the port closes, held connections stay.
    let out = agent.delete(&[&all_v1], Some(NS));
    assert!(out.ok(), "{out:#?}");
    assert_eq!(
        out.stdout,
        "gateway.networking.istio.io/tcp-echo-gateway deleted\n\
         destinationrule.networking.istio.io/tcp-echo-destination deleted\n\
         virtualservice.networking.istio.io/tcp-echo deleted\n"
    );
    assert!(TcpStream::connect(addr).is_err(), "the port should close");
    assert_eq!(during.who("after cleanup"), was);
    let out = agent.delete(&[&v2_20], Some(NS));
    assert!(out.ok(), "{out:#?}");
    assert!(out.stderr.contains("not found"), "{out:#?}");
    drop((before, during));
    let stats = agent.stop();
    assert_eq!(counter(&stats, "connections_reset"), 0, "{stats}");
    assert_eq!(counter(&stats, "connections_aborted"), 0, "{stats}");
    assert_eq!(counter(&stats, "no_healthy_endpoint"), 0, "{stats}");
}

/// Applies `text` as `name`; it must fail naming each piece; then the
/// agent must still route as before (100% v1) at the same generation.
fn refused(dir: &TempDir, agent: &Agent, name: &str, text: &str, pieces: &[&str]) {
    let generation = counter(&agent.sample(), "config_generation");
    let file = dir.write(name, text);
    let out = agent.apply(&[&file], Some(NS));
    assert!(!out.ok(), "{name} should be refused: {out:#?}");
    assert!(out.stdout.is_empty(), "{out:#?}");
    assert!(out.stderr.starts_with("error: "), "{name}: {}", out.stderr);
    for p in pieces {
        assert!(
            out.stderr.contains(p),
            "{name}: {p:?} missing from: {}",
            out.stderr
        );
    }
    assert_all(agent.addr(PORT), 10, "one");
    assert_eq!(
        counter(&agent.sample(), "config_generation"),
        generation,
        "{name} changed the config"
    );
}

#[test]
fn bad_input_is_refused_and_the_old_config_keeps_serving() {
    gateway_tests::needs_root!();
    let (dir, _backends, agent) = task("bad");
    let mut held = Held::open(agent.addr(PORT));
    assert_eq!(held.who("first"), "one");
    let v2_20 = read(&seed("tcp-echo-20-v2.yaml"));
    let all_v1 = read(&seed("tcp-echo-all-v1.yaml"));

    refused(
        &dir,
        &agent,
        "malformed.yaml",
        &v2_20.replace("  tcp:\n", "  tcp: [\n"),
        &["malformed.yaml: document 1", "malformed YAML", "line "],
    );
    refused(
        &dir,
        &agent,
        "unknown-subset.yaml",
        &v2_20.replace("subset: v2", "subset: v3"),
        &[
            "unknown-subset.yaml: document 1 (VirtualService istio-io-tcp-traffic-shifting/tcp-echo)",
            "spec.tcp[0].route[1].destination.subset",
            "\"v3\" is not defined",
        ],
    );
    refused(
        &dir,
        &agent,
        "negative-weight.yaml",
        &v2_20.replace("weight: 80", "weight: -20"),
        &[
            "negative-weight.yaml: document 1",
            "spec.tcp[0].route[0].weight",
            "must not be negative",
        ],
    );
    refused(
        &dir,
        &agent,
        "zero-weights.yaml",
        &v2_20
            .replace("weight: 80", "weight: 0")
            .replace("weight: 20", "weight: 0"),
        &[
            "zero-weights.yaml: document 1",
            "spec.tcp[0].route",
            "total destination weight is 0",
        ],
    );
    refused(
        &dir,
        &agent,
        "no-endpoints.yaml",
        &v2_20.replace("host: tcp-echo\n", "host: tcp-echo-nowhere\n"),
        &[
            "no-endpoints.yaml: document 1",
            "spec.tcp[0].route[0].destination.host",
            "tcp-echo-nowhere.istio-io-tcp-traffic-shifting.svc.cluster.local is not defined",
        ],
    );
    // A subset whose labels no workload has: the route has no endpoints.
    refused(
        &dir,
        &agent,
        "empty-subset.yaml",
        &all_v1.replace("      version: v1\n", "      version: v9\n"),
        &[
            "empty-subset.yaml: document 3",
            "spec.tcp[0].route[0].destination",
            "none labelled version=v9",
        ],
    );
    // Another Gateway on the task's port.
    let gateway_doc = all_v1.split("---").next().unwrap_or_default();
    refused(
        &dir,
        &agent,
        "port-clash.yaml",
        &gateway_doc.replace("name: tcp-echo-gateway", "name: other-gateway"),
        &[
            "port-clash.yaml: document 1 (Gateway istio-io-tcp-traffic-shifting/other-gateway)",
            "spec.servers[0].port.number",
            "port 31400 (TCP) is already declared",
        ],
    );
    // A port the system refuses: something else listens there.
    let taken = TcpListener::bind((agent.ip, 0)).expect("bind");
    let busy = taken.local_addr().expect("addr").port();
    let busy_yaml = gateway_with_route("busy", busy, "v1");
    refused(
        &dir,
        &agent,
        "port-in-use.yaml",
        &busy_yaml,
        &[
            "port-in-use.yaml: document 1 (Gateway istio-io-tcp-traffic-shifting/busy)",
            "spec.servers[0].port.number",
            &format!("cannot listen on {}:{busy}", agent.ip),
            "in use",
        ],
    );
    // The same file once the port is free: applied (so it was only the port).
    drop(taken);
    let file = dir.write("port-in-use.yaml", &busy_yaml);
    let out = agent.apply(&[&file], Some(NS));
    assert!(out.ok(), "{out:#?}");
    assert_all(agent.addr(busy), 5, "one");
    // A document naming another namespace than -n, as kubectl refuses it.
    refused(
        &dir,
        &agent,
        "other-namespace.yaml",
        &v2_20.replace(
            "  name: tcp-echo\n",
            "  name: tcp-echo\n  namespace: elsewhere\n",
        ),
        &[
            "other-namespace.yaml: document 1",
            "metadata.namespace",
            "does not match",
        ],
    );
    // Errors in several documents are reported together.
    let two_bad = format!(
        "{}---\n{}",
        v2_20.replace("subset: v2", "subset: v3"),
        gateway_doc.replace("name: tcp-echo-gateway", "name: other-gateway")
    );
    refused(
        &dir,
        &agent,
        "two-bad.yaml",
        &two_bad,
        &["two-bad.yaml: document 1", "two-bad.yaml: document 2"],
    );
    // --dry-run checks and changes nothing.
    let file = dir.write("v2-20.yaml", &v2_20);
    let out = agent.apply_with(&[&file], Some(NS), &["--dry-run"]);
    assert!(out.ok(), "{out:#?}");
    assert_eq!(
        out.stdout,
        "virtualservice.networking.istio.io/tcp-echo configured (dry run)\n"
    );
    assert_all(agent.addr(PORT), 10, "one");
    assert_eq!(held.who("through it all"), "one");
}

/// A Gateway's ports open when it is applied and close when it is
/// deleted; connections accepted before keep going.
#[test]
fn gateway_ports_open_and_close_with_their_gateways() {
    gateway_tests::needs_root!();
    let (dir, _backends, agent) = task("ports");
    let port = free_port_on(agent.ip);
    let second = dir.write("second.yaml", &gateway_with_route("second", port, "v2"));
    let addr = agent.addr(port);
    assert!(TcpStream::connect(addr).is_err());
    assert_eq!(
        agent.apply_ok(&[&second], Some(NS)),
        "gateway.networking.istio.io/second created\nvirtualservice.networking.istio.io/second created\n"
    );
    assert_all(addr, 10, "two");
    assert_all(agent.addr(PORT), 10, "one");
    assert_eq!(agent.sample()["ports"], serde_json::json!([PORT, port]));
    let mut held = Held::open(addr);
    assert_eq!(held.who("before delete"), "two");

    let out = agent.delete(&[&second], Some(NS));
    assert!(out.ok(), "{out:#?}");
    // Every worker's socket is closed: connections from many source ports
    // (hashed over the sockets) are all refused.
    for _ in 0..20 {
        assert!(
            TcpStream::connect(addr).is_err(),
            "port {port} should be closed"
        );
    }
    assert_eq!(held.who("after delete"), "two");
    assert_all(agent.addr(PORT), 10, "one");
    assert_eq!(agent.sample()["ports"], serde_json::json!([PORT]));

    // Deleting only the VirtualService closes the port too: nothing to serve.
    let mut gone = Held::open(agent.addr(PORT));
    assert_eq!(gone.who("before"), "one");
    let vs = dir.write("vs.yaml", &read(&seed("tcp-echo-20-v2.yaml")));
    let out = agent.delete(&[&vs], Some(NS));
    assert!(out.ok(), "{out:#?}");
    assert!(
        out.stderr.contains("no VirtualService binds a TCP route"),
        "the warning says why the port closed: {out:#?}"
    );
    assert!(TcpStream::connect(agent.addr(PORT)).is_err());
    assert_eq!(gone.who("after"), "one");
    drop((held, gone));
    let stats = agent.stop();
    assert_eq!(counter(&stats, "connections_aborted"), 0, "{stats}");
}

/// What was applied survives a restart; --config files load with it.
#[test]
fn applied_state_survives_a_restart() {
    gateway_tests::needs_root!();
    let dir = TempDir::new("restart");
    let backends = Backends::start();
    // The endpoints come from --config, without a namespace: --namespace.
    let endpoints = dir.write("endpoints.yaml", &backends.endpoints_yaml());
    let ip = unique_ip();
    let config = [
        "--config",
        endpoints.to_str().expect("utf-8"),
        "--namespace",
        NS,
    ];
    let agent = Agent::start(&dir.path, ip, &config);
    agent.apply_ok(&[&seed("tcp-echo-all-v1.yaml")], Some(NS));
    agent.apply_ok(&[&example("tcp-echo-all-v2.yaml")], Some(NS));
    assert_all(agent.addr(PORT), 10, "two");
    agent.stop();
    assert!(TcpStream::connect(SocketAddr::new(ip, PORT)).is_err());

    let agent = Agent::start(&dir.path, ip, &config);
    assert!(
        agent
            .wait_log(&["ready", "6 resources", "ports [31400]"], Duration::ZERO)
            .is_some(),
        "{:#?}",
        agent.stderr()
    );
    assert_all(agent.addr(PORT), 10, "two");
    assert_eq!(
        agent.apply_ok(&[&example("tcp-echo-all-v2.yaml")], Some(NS)),
        "virtualservice.networking.istio.io/tcp-echo unchanged\n"
    );
    // Deletions survive too.
    let out = agent.delete(&[&seed("tcp-echo-all-v1.yaml")], Some(NS));
    assert!(out.ok(), "{out:#?}");
    agent.stop();
    let agent = Agent::start(&dir.path, ip, &config);
    assert!(
        agent
            .wait_log(&["ready", "3 resources", "ports []"], Duration::ZERO)
            .is_some(),
        "{:#?}",
        agent.stderr()
    );
    // The state file is root's alone.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(agent.state.join("state.json"))
        .expect("state file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // A second agent on the same state directory is refused.
    let second = gateway(&[
        "run",
        "--admin",
        dir.path.join("other.sock").to_str().expect("utf-8"),
        "--state-dir",
        agent.state.to_str().expect("utf-8"),
        "--listen-address",
        &unique_ip().to_string(),
    ]);
    assert_eq!(second.code, Some(1), "{second:#?}");
    assert!(
        second.stderr.contains("in use by another gateway agent"),
        "{second:#?}"
    );
}

/// Edits to --config files are picked up; a broken edit is refused and the
/// last good config stays; `gateway apply` takes precedence over the files
/// until it applies what the files say.
#[test]
fn config_files_are_watched() {
    gateway_tests::needs_root!();
    let dir = TempDir::new("watch");
    let backends = Backends::start();
    let config = TempDir::new("watch-config");
    config.write("endpoints.yaml", &backends.endpoints_yaml());
    let all_v1 = read(&seed("tcp-echo-all-v1.yaml"));
    let routes = config.write("routes.yaml", &all_v1);
    let agent = Agent::start(
        &dir.path,
        unique_ip(),
        &[
            "--config",
            config.path.to_str().expect("utf-8"),
            "-n",
            NS,
            "--watch-interval",
            "100ms",
        ],
    );
    let addr = agent.addr(PORT);
    assert_all(addr, 10, "one");
    let generation = |a: &Agent| counter(&a.sample(), "config_generation");
    let wait_generation = |a: &Agent, g: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while generation(a) != g {
            assert!(Instant::now() < deadline, "generation {g} never came");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(generation(&agent), 1);

    let to_v2 = all_v1.replace("subset: v1", "subset: v2");
    std::fs::write(&routes, &to_v2).expect("write");
    wait_generation(&agent, 2);
    assert_all(addr, 10, "two");

    // A broken file: refused with its name, the last good config stays.
    let broken = config.write("broken.yaml", "kind: [\n");
    assert!(
        agent
            .wait_log(
                &["broken.yaml: document 1", "malformed YAML"],
                Duration::from_secs(10)
            )
            .is_some(),
        "{:#?}",
        agent.stderr()
    );
    assert_all(addr, 10, "two");
    std::fs::remove_file(&broken).expect("remove");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(generation(&agent), 2, "nothing changed");

    // `gateway apply` wins over the file...
    agent.apply_ok(&[&seed("tcp-echo-20-v2.yaml")], Some(NS));
    let counts = who_answers(addr, 100, 8);
    assert!(
        counts.contains_key("one") && counts.contains_key("two"),
        "{counts:?}"
    );
    // ... also over a later edit of it, which is reported ...
    std::fs::write(&routes, &all_v1).expect("write");
    assert!(
        agent
            .wait_log(
                &["routes.yaml", "was set otherwise with `gateway apply`"],
                Duration::from_secs(10)
            )
            .is_some(),
        "{:#?}",
        agent.stderr()
    );
    assert_eq!(generation(&agent), 3);
    // ... until the file's own version is applied: the file owns it again.
    agent.apply_ok(&[&routes], Some(NS));
    assert_all(addr, 10, "one");
    std::fs::write(&routes, &to_v2).expect("write");
    wait_generation(&agent, 5);
    assert_all(addr, 10, "two");
}

#[test]
fn validate_checks_offline() {
    gateway_tests::needs_root!();
    let dir = TempDir::new("validate");
    let endpoints = dir.write(
        "endpoints.yaml",
        &endpoints_yaml(
            "127.0.0.1:9000".parse().expect("addr"),
            "127.0.0.2:9000".parse().expect("addr"),
        ),
    );
    let e = endpoints.to_str().expect("utf-8");
    let all_v1 = seed("tcp-echo-all-v1.yaml");
    let services = seed("tcp-echo-services.yaml");
    let out = gateway(&[
        "validate",
        "-f",
        e,
        "-f",
        all_v1.to_str().expect("utf-8"),
        "-f",
        services.to_str().expect("utf-8"),
        "-n",
        NS,
    ]);
    assert!(out.ok(), "{out:#?}");
    assert!(out.stdout.contains("7 resource(s)"), "{out:#?}");
    assert!(
        out.stdout.contains(&format!(
            "port 31400: Gateway {NS}/tcp-echo-gateway, VirtualService {NS}/tcp-echo -> outbound|9000|v1|{FQDN} 100%"
        )),
        "{out:#?}"
    );
    // The Service is read (the endpoints' ServiceEntry serves its host);
    // the Deployments are skipped, with a warning each.
    assert_eq!(out.stderr.matches("Warning: ").count(), 2, "{out:#?}");
    assert_eq!(
        out.stderr.matches("Deployment tcp-echo-v").count(),
        2,
        "{out:#?}"
    );

    let bad = dir.write(
        "bad.yaml",
        &read(&seed("tcp-echo-20-v2.yaml")).replace("weight: 80", "weigth: 80"),
    );
    let out = gateway(&[
        "validate",
        "-f",
        e,
        "-f",
        bad.to_str().expect("utf-8"),
        "-n",
        NS,
    ]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(
        out.stderr.contains("bad.yaml: document 1")
            && out.stderr.contains("spec.tcp[0].route[0]")
            && out.stderr.contains("weigth"),
        "{out:#?}"
    );
    // Routes are checked against the endpoints they name.
    let out = gateway(&["validate", "-f", all_v1.to_str().expect("utf-8"), "-n", NS]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(
        out.stderr.contains("is not defined by any ServiceEntry"),
        "{out:#?}"
    );
}

#[test]
fn bad_config_at_start_exits_64() {
    gateway_tests::needs_root!();
    let dir = TempDir::new("start");
    let bad = dir.write(
        "bad.yaml",
        &read(&seed("tcp-echo-20-v2.yaml")).replace("subset: v2", "subset: [v2"),
    );
    let state = dir.path.join("state");
    let admin = dir.path.join("admin.sock");
    let run = |config: &Path, ip: IpAddr| {
        gateway(&[
            "run",
            "--config",
            config.to_str().expect("utf-8"),
            "-n",
            NS,
            "--admin",
            admin.to_str().expect("utf-8"),
            "--state-dir",
            state.to_str().expect("utf-8"),
            "--listen-address",
            &ip.to_string(),
        ])
    };
    let out = run(&bad, unique_ip());
    assert_eq!(out.code, Some(64), "{out:#?}");
    assert!(
        out.stderr.starts_with("error: ") && out.stderr.contains("bad.yaml: document 1"),
        "{out:#?}"
    );
    // A valid file whose Gateway port is taken is bad config too.
    let ip = unique_ip();
    let _taken = TcpListener::bind((ip, PORT)).expect("bind");
    let good = dir.write(
        "good.yaml",
        &format!(
            "{}---\n{}",
            endpoints_yaml(
                "127.0.0.1:9000".parse().expect("addr"),
                "127.0.0.2:9000".parse().expect("addr")
            ),
            read(&seed("tcp-echo-all-v1.yaml"))
        ),
    );
    let out = run(&good, ip);
    assert_eq!(out.code, Some(64), "{out:#?}");
    assert!(
        out.stderr.contains("good.yaml: document 4 (Gateway")
            && out
                .stderr
                .contains("spec.servers[0].port.number: cannot listen on"),
        "{out:#?}"
    );
    assert!(
        !admin.exists(),
        "the admin socket is removed on the way out"
    );
}

/// Every endpoint refuses: the client is closed at once, and counted.
#[test]
fn a_route_whose_endpoints_all_refuse_closes_the_client_at_once() {
    gateway_tests::needs_root!();
    let dir = TempDir::new("refuse");
    let agent = Agent::start(&dir.path, unique_ip(), &[]);
    // Ports nothing listens on.
    let dead = |ip: [u8; 4]| {
        let ip = IpAddr::V4(Ipv4Addr::from(ip));
        SocketAddr::new(ip, free_port_on(ip))
    };
    let endpoints = dir.write(
        "endpoints.yaml",
        &endpoints_yaml(dead([127, 0, 0, 1]), dead([127, 0, 0, 2])),
    );
    agent.apply_ok(&[&endpoints, &seed("tcp-echo-all-v1.yaml")], Some(NS));
    let n = 5;
    for i in 0..n {
        let mut held = Held::open(agent.addr(PORT));
        let started = Instant::now();
        let end = held.wait_closed(Duration::from_secs(5));
        assert!(
            matches!(end, Some(Ok(0)) | Some(Err(_))),
            "connection {i} should be closed, got {end:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "closed after {:?}",
            started.elapsed()
        );
    }
    let stats = agent.sample();
    assert_eq!(counter(&stats, "no_healthy_endpoint"), n, "{stats}");
    assert_eq!(counter(&stats, "backend_connect_failed"), n, "{stats}");
    assert_eq!(counter(&stats, "endpoint_connect_failed"), n, "{stats}");
    assert_eq!(cluster(&stats, "v1", 9000), 0, "{stats}");
    let logged = agent.count_log(
        &["no healthy endpoint in outbound|9000|v1|"],
        n as usize,
        Duration::from_secs(5),
    );
    assert_eq!(logged as u64, n, "one line per connection");
}

/// A `resolution: DNS` ServiceEntry: its names are resolved when a
/// connection is made, every address tried.
#[test]
fn dns_endpoints_are_resolved_when_connecting() {
    gateway_tests::needs_root!();
    let dir = TempDir::new("dns");
    let backends = Backends::start();
    let agent = Agent::start(&dir.path, unique_ip(), &[]);
    let entry = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: echo-dns
spec:
  hosts:
  - echo.example.internal
  location: MESH_EXTERNAL
  ports:
  - number: 9000
    name: tcp
    protocol: TCP
  resolution: DNS
  endpoints:
  - address: localhost
    ports:
      tcp: {}
---
{}",
        backends.v1.addr.port(),
        gateway_to("dns", PORT, "echo.example.internal", "")
    );
    let file = dir.write("dns.yaml", &entry);
    agent.apply_ok(&[&file], Some(NS));
    assert_all(agent.addr(PORT), 10, "one");
    let stats = agent.sample();
    assert_eq!(
        stats["clusters"]["outbound|9000||echo.example.internal"], 10,
        "{stats}"
    );
}

/// DestinationRule `connectionPool.tcp.idleTimeout`: an idle connection is
/// reset once it passes; a busy one is not; on every dataplane (each on its
/// own agent, at the same time).
#[test]
fn idle_timeout_ends_idle_connections_on_every_dataplane() {
    gateway_tests::needs_root!();
    let backends = Backends::start();
    std::thread::scope(|s| {
        let runs: Vec<_> = ["ebpf", "splice", "userspace"]
            .into_iter()
            .map(|dp| s.spawn(|| idle_timeout_on(dp, &backends)))
            .collect();
        for r in runs {
            if let Err(panic) = r.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
}

fn idle_timeout_on(dp: &str, backends: &Backends) {
    let dir = TempDir::new("idle");
    let agent = Agent::start(&dir.path, unique_ip(), &["--dataplane", dp]);
    let endpoints = dir.write("endpoints.yaml", &backends.endpoints_yaml());
    let with_idle = read(&seed("tcp-echo-all-v1.yaml")).replace(
        "spec:\n  host: tcp-echo\n",
        "spec:\n  host: tcp-echo\n  trafficPolicy:\n    connectionPool:\n      tcp:\n        idleTimeout: 1s\n",
    );
    let routes = dir.write("routes.yaml", &with_idle);
    agent.apply_ok(&[&endpoints, &routes], Some(NS));

    let mut idle = Held::open(agent.addr(PORT));
    let mut busy = Held::open(agent.addr(PORT));
    assert_eq!(idle.who("hello"), "one", "{dp}");
    // The busy one talks every 300ms for 2.4s: never idle for 1s.
    for i in 0..8 {
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(busy.who(&format!("busy {i}")), "one", "{dp}");
        if i == 1 {
            // 600ms in: not yet.
            let early = idle.wait_closed(Duration::from_millis(1));
            assert!(early.is_none(), "{dp}: closed early: {early:?}");
        }
    }
    let end = idle.wait_closed(Duration::from_secs(5));
    assert!(
        matches!(end, Some(Ok(0)) | Some(Err(_))),
        "{dp}: the idle connection should be closed, got {end:?}"
    );
    assert_eq!(busy.who("still busy"), "one", "{dp}");
    drop((idle, busy));
    let stats = agent.stop();
    assert_eq!(counter(&stats, "idle_timeouts"), 1, "{dp}: {stats}");
    assert_eq!(counter(&stats, "connections_active"), 0, "{dp}: {stats}");
    if dp == "ebpf" {
        assert_eq!(counter(&stats, "map_entries"), 0, "{dp}: {stats}");
    }
}

#[test]
fn the_admin_socket_is_root_only() {
    gateway_tests::needs_root!();
    let dir = TempDir::new("admin");
    let agent = Agent::start(&dir.path, unique_ip(), &[]);
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    let meta = std::fs::metadata(&agent.admin).expect("admin socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let file = dir.write("all-v1.yaml", &read(&seed("tcp-echo-all-v1.yaml")));
    let out = gateway_as(
        &[
            "apply",
            "--admin",
            agent.admin.to_str().expect("utf-8"),
            "-f",
            file.to_str().expect("utf-8"),
        ],
        Some(65534),
    );
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stderr.contains("Permission denied"), "{out:#?}");
    // With no agent there, the client says so.
    let out = gateway(&[
        "apply",
        "--admin",
        dir.path.join("nobody.sock").to_str().expect("utf-8"),
        "-f",
        file.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stderr.contains("is `gateway run` running?"), "{out:#?}");
}
