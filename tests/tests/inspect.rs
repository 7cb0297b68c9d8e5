//! `gateway inspect`: the live connections and their bytes on every
//! dataplane, the routes' real split, and the agent's pinned maps while it
//! runs, after it was killed, and after a clean stop.
use std::{
    thread,
    time::{Duration, Instant},
};

use gateway_tests::agent::{
    endpoints_yaml, gateway, seed, unique_ip, who_answers, Agent, Backends, Held, TempDir, FQDN,
    NS, PORT,
};

/// `gateway inspect WHAT -o json` against `agent`'s admin socket.
fn ask(agent: &Agent, what: &str) -> serde_json::Value {
    let admin = agent.admin.to_str().expect("utf-8");
    let out = gateway(&["inspect", what, "--admin", admin, "-o", "json"]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

/// Lines of `size` bytes through the held connection: a conversation long
/// enough (100 round trips, 200 reads) for `auto` to move it into the
/// kernel. Returns the bytes sent and received.
fn converse(held: &mut Held, lines: usize, size: usize) -> (u64, u64) {
    let line = "x".repeat(size);
    let (mut sent, mut got) = (0, 0);
    for _ in 0..lines {
        assert_eq!(held.who(&line), "one");
        sent += size as u64 + 1;
        got += size as u64 + 1 + "one ".len() as u64;
    }
    (sent, got)
}

#[test]
fn inspect_connections_counts_each_connections_bytes_on_every_dataplane() {
    gateway_tests::needs_root!();
    let backends = Backends::start();
    for (dataplane, shown, state, in_kernel) in [
        ("userspace", "userspace", "copy", false),
        ("splice", "splice", "splice", false),
        ("ebpf", "ebpf", "kernel", true),
        // 200 reads: moved into the kernel after 64.
        ("auto", "ebpf", "kernel", true),
    ] {
        let dir = TempDir::new(&format!("conns-{dataplane}"));
        let agent = Agent::start(&dir.path, unique_ip(), &["--dataplane", dataplane]);
        let endpoints = dir.write(
            "endpoints.yaml",
            &endpoints_yaml(backends.v1.addr, backends.v2.addr),
        );
        agent.apply_ok(&[&endpoints, &seed("tcp-echo-all-v1.yaml")], Some(NS));
        let mut held = Held::open(agent.addr(PORT));
        let (sent, got) = converse(&mut held, 100, 1000);
        let client = held.local_addr().to_string();
        // The reply was read, so every byte has been forwarded; the agent
        // may count a write a moment after the peer can read it.
        let deadline = Instant::now() + Duration::from_secs(3);
        let conn = loop {
            let all = ask(&agent, "connections");
            let conns = all.as_array().expect("an array");
            assert_eq!(conns.len(), 1, "{dataplane}: {all}");
            let c = conns[0].clone();
            if (c["bytes_from_client"] == sent && c["bytes_to_client"] == got)
                || Instant::now() > deadline
            {
                break c;
            }
            thread::sleep(Duration::from_millis(50));
        };
        let what = format!("{dataplane}: {conn}");
        assert_eq!(conn["bytes_from_client"], sent, "{what}");
        assert_eq!(conn["bytes_to_client"], got, "{what}");
        assert_eq!(conn["client"], client.as_str(), "{what}");
        assert_eq!(
            conn["cluster"],
            format!("outbound|9000|v1|{FQDN}").as_str(),
            "{what}"
        );
        assert_eq!(
            conn["backend"],
            backends.v1.addr.to_string().as_str(),
            "{what}"
        );
        assert_eq!(conn["port"], PORT, "{what}");
        assert_eq!(conn["route"], format!("{NS}/tcp-echo").as_str(), "{what}");
        assert_eq!(conn["dataplane"], shown, "{what}");
        assert_eq!(conn["state"], state, "{what}");
        assert!(
            conn["age_seconds"].as_f64().is_some_and(|a| a > 0.0),
            "{what}"
        );
        let kernel = [
            conn["kernel_bytes_from_client"]
                .as_u64()
                .expect("kernel bytes"),
            conn["kernel_bytes_to_client"]
                .as_u64()
                .expect("kernel bytes"),
        ];
        if in_kernel {
            assert!(kernel[0] > 0 && kernel[1] > 0, "{what}");
            assert!(kernel[0] <= sent && kernel[1] <= got, "{what}");
        } else {
            assert_eq!(kernel, [0, 0], "{what}");
        }
        let table = gateway(&[
            "inspect",
            "connections",
            "--admin",
            agent.admin.to_str().expect("utf-8"),
        ]);
        assert!(
            table.stdout.contains("1 live connection")
                && table.stdout.contains(&client)
                && table.stdout.contains(&sent.to_string()),
            "{table:#?}"
        );
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ask(&agent, "connections")
            .as_array()
            .expect("array")
            .is_empty()
        {
            assert!(
                Instant::now() < deadline,
                "{dataplane}: the closed connection stays listed"
            );
            thread::sleep(Duration::from_millis(50));
        }
        agent.stop();
    }
}

#[test]
fn inspect_routes_shows_each_weight_beside_the_split_it_made() {
    gateway_tests::needs_root!();
    let dir = TempDir::new("routes");
    let backends = Backends::start();
    let agent = Agent::start(&dir.path, unique_ip(), &[]);
    let endpoints = dir.write(
        "endpoints.yaml",
        &endpoints_yaml(backends.v1.addr, backends.v2.addr),
    );
    agent.apply_ok(&[&endpoints, &seed("tcp-echo-all-v1.yaml")], Some(NS));
    who_answers(agent.addr(PORT), 30, 4);
    agent.apply_ok(&[&seed("tcp-echo-20-v2.yaml")], Some(NS));
    let n = 1000;
    let counts = who_answers(agent.addr(PORT), n, 8);
    let routes = ask(&agent, "routes");
    let route = &routes[0];
    assert_eq!(route["port"], PORT, "{routes}");
    // Counted since the weights changed: the 30 connections before are not.
    assert_eq!(route["connections"], n, "{routes}");
    let dest = |subset: &str| {
        route["destinations"]
            .as_array()
            .and_then(|d| {
                d.iter()
                    .find(|d| d["cluster"] == format!("outbound|9000|{subset}|{FQDN}").as_str())
            })
            .cloned()
            .unwrap_or_else(|| panic!("no {subset} in {routes}"))
    };
    let (v1, v2) = (dest("v1"), dest("v2"));
    assert_eq!(
        (v1["weight"].clone(), v2["weight"].clone()),
        (80.into(), 20.into())
    );
    assert_eq!(
        v1["connections"],
        counts.get("one").copied().unwrap_or(0),
        "{routes}"
    );
    assert_eq!(
        v2["connections"],
        counts.get("two").copied().unwrap_or(0),
        "{routes}"
    );
    // The seed's 80/20 within 4 sigma of 1,000 connections.
    let share = v2["share"].as_f64().expect("share");
    let sigma = (0.2 * 0.8 / n as f64).sqrt();
    assert!((share - 0.2).abs() <= 4.0 * sigma, "{routes}");
    let table = gateway(&[
        "inspect",
        "routes",
        "--admin",
        agent.admin.to_str().expect("utf-8"),
    ]);
    assert!(
        table.stdout.contains("80 (80.0%)") && table.stdout.contains("total"),
        "{table:#?}"
    );
    agent.stop();
}

fn maps_json(instance: &str, name: Option<&str>) -> serde_json::Value {
    let mut args = vec!["inspect", "maps"];
    args.extend(name);
    args.extend(["--instance", instance, "-o", "json"]);
    let out = gateway(&args);
    assert_eq!(out.code, Some(0), "{out:#?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

fn entries(doc: &serde_json::Value, name: &str) -> u64 {
    doc["maps"]
        .as_array()
        .and_then(|maps| maps.iter().find(|m| m["name"] == name))
        .and_then(|m| m["entries"].as_u64())
        .unwrap_or_else(|| panic!("no map {name} in {doc}"))
}

#[test]
fn pinned_maps_outlive_a_killed_agent_and_go_with_a_clean_stop() {
    gateway_tests::needs_root!();
    let dir = TempDir::new("inspect");
    let backends = Backends::start();
    let instance = format!("inspect-{}", std::process::id());
    let pins = std::path::Path::new("/sys/fs/bpf/gateway").join(&instance);
    let flags = [
        "--dataplane",
        "ebpf",
        "--instance",
        &instance,
        "--max-connections",
        "512",
    ];
    let agent = Agent::start(&dir.path, unique_ip(), &flags);
    let endpoints = dir.write(
        "endpoints.yaml",
        &endpoints_yaml(backends.v1.addr, backends.v2.addr),
    );
    agent.apply_ok(&[&endpoints, &seed("tcp-echo-all-v1.yaml")], Some(NS));

    // One live connection in the kernel: its two sockets in each socket
    // map, a control record and a flow each.
    let mut held = Held::open(agent.addr(PORT));
    assert_eq!(held.who("hello"), "one");
    let doc = maps_json(&instance, None);
    assert_eq!(doc["agent"], "running", "{doc}");
    for name in ["SOCKS", "TARGETS", "PEERS", "FLOWS"] {
        assert_eq!(entries(&doc, name), 2, "{name}: {doc}");
    }
    let socks = doc["maps"][0].clone();
    assert_eq!(socks["type"], "sockhash", "{doc}");
    assert_eq!(socks["max_entries"], 1024, "{doc}");
    assert_eq!(socks["pin"].as_str(), pins.join("SOCKS").to_str(), "{doc}");
    // The verdict saw each direction's bytes once: "hello\n" from the
    // client, "one hello\n" from the backend (redirected, or passed if
    // they came before the sockets were in).
    let flows = maps_json(&instance, Some("flows"));
    let mut fresh: Vec<u64> = flows
        .as_array()
        .expect("rows")
        .iter()
        .map(|f| f["fresh"].as_u64().expect("fresh"))
        .collect();
    fresh.sort_unstable();
    assert_eq!(fresh, vec![6, 10], "{flows}");
    let table = gateway(&["inspect", "maps", "--instance", &instance]);
    assert!(
        table.stdout.contains("agent: running")
            && table.stdout.contains("SOCKS")
            && table.stdout.contains("2/1024"),
        "{table:#?}"
    );

    // A second agent of the same instance is refused.
    let other = TempDir::new("inspect-second");
    let second = gateway(&[
        "run",
        "--admin",
        other.path.join("admin.sock").to_str().expect("utf-8"),
        "--state-dir",
        other.path.join("state").to_str().expect("utf-8"),
        "--listen-address",
        &unique_ip().to_string(),
        "--dataplane",
        "ebpf",
        "--instance",
        &instance,
    ]);
    assert_eq!(second.code, Some(1), "{second:#?}");
    assert!(
        second
            .stderr
            .contains("another gateway agent of this instance"),
        "{second:#?}"
    );

    // Killed: the pins stay, and inspect says no agent holds them.
    let mut killed = agent;
    killed.kill();
    drop(held);
    let doc = maps_json(&instance, None);
    assert_eq!(doc["agent"], "not running", "{doc}");
    let table = gateway(&["inspect", "maps", "--instance", &instance]);
    assert!(table.stdout.contains("not running"), "{table:#?}");

    // Restarted: the stale pins are replaced; stopped cleanly: all gone.
    let agent = Agent::start(&dir.path, unique_ip(), &flags);
    assert!(
        agent
            .wait_log(&["removed 5 pins"], Duration::from_secs(5))
            .is_some(),
        "{:#?}",
        agent.stderr()
    );
    assert_eq!(maps_json(&instance, None)["agent"], "running");
    agent.stop();
    assert!(
        !pins.exists(),
        "{} is left after a clean stop",
        pins.display()
    );
    let gone = gateway(&["inspect", "maps", "--instance", &instance]);
    assert_eq!(gone.code, Some(1), "{gone:#?}");
    assert!(gone.stderr.contains("nothing is pinned"), "{gone:#?}");
    // The harness removes a dropped agent's pins unless another agent
    // holds them: kept until here so that the restart finds them.
    drop(killed);
}
