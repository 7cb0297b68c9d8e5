//! Faults injected into a running agent's control plane: killed in the
//! middle of applies, started on a corrupt state file. The state file is
//! only ever the old config or the new one, never torn, and a bad one is
//! refused at start, named, and left as it was.
use std::{path::Path, time::Duration};

use gateway_tests::agent::{
    assert_all, gateway, read, seed, unique_ip, Agent, Backends, TempDir, NS, PORT,
};

/// The state file's applied resources, by kind and name; panics if it is
/// not a whole JSON document.
fn saved(state: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(state.join("state.json")).expect("the state file");
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("a torn state file ({e}): {text}"));
    v["applied"]
        .as_array()
        .expect("applied")
        .iter()
        .map(|r| {
            format!(
                "{} {} {}",
                r["resource"]["kind"].as_str().unwrap_or(""),
                r["resource"]["metadata"]["name"].as_str().unwrap_or(""),
                r["resource"]["spec"]["tcp"][0]["route"]
                    .as_array()
                    .map_or(0, Vec::len)
            )
        })
        .collect()
}

/// SIGKILL at a random moment of a stream of applies alternating between
/// two configs (all to v1, 80/20), 20 times: each time the state file is
/// whole and one of the two, and the agent started again on it serves
/// what it says.
#[test]
fn sigkill_during_applies_leaves_the_old_or_the_new_state() {
    gateway_tests::needs_root!();
    let dir = TempDir::new("fault-kill");
    let backends = Backends::start();
    let endpoints = dir.write("endpoints.yaml", &backends.endpoints_yaml());
    let all_v1 = seed("tcp-echo-all-v1.yaml");
    let shift = seed("tcp-echo-20-v2.yaml");
    let ip = unique_ip();
    let mut seen = std::collections::BTreeMap::new();
    for round in 0..20u64 {
        let mut agent = Agent::start(&dir.path, ip, &[]);
        if round == 0 {
            agent.apply_ok(&[&endpoints, &all_v1], Some(NS));
        }
        let before = saved(&agent.state);
        let applier = {
            let (admin, all_v1, shift) = (agent.admin.clone(), all_v1.clone(), shift.clone());
            std::thread::spawn(move || {
                for i in 0..200 {
                    let f = if i % 2 == 0 { &shift } else { &all_v1 };
                    let out = gateway(&[
                        "apply",
                        "--admin",
                        admin.to_str().expect("utf-8"),
                        "-f",
                        f.to_str().expect("utf-8"),
                        "-n",
                        NS,
                    ]);
                    if !out.ok() {
                        break; // the agent is gone
                    }
                }
            })
        };
        // Somewhere within the stream of applies.
        std::thread::sleep(Duration::from_millis(30 + (round * 37) % 200));
        agent.kill();
        applier.join().expect("applier");
        let after = saved(&agent.state);
        let routes = after
            .iter()
            .find(|r| r.starts_with("VirtualService"))
            .cloned();
        assert!(
            matches!(
                routes.as_deref(),
                Some("VirtualService tcp-echo 1" | "VirtualService tcp-echo 2")
            ),
            "round {round}: {after:?} (before: {before:?})"
        );
        *seen.entry(routes.unwrap_or_default()).or_insert(0) += 1;
        drop(agent);
    }
    eprintln!("states found after SIGKILL, over 20 rounds: {seen:?}");
    // Started again, the agent serves what the file says.
    let agent = Agent::start(&dir.path, ip, &[]);
    let state = saved(&agent.state);
    let counts = gateway_tests::agent::who_answers(agent.addr(PORT), 100, 8);
    if state.iter().any(|r| r == "VirtualService tcp-echo 2") {
        assert!(counts.contains_key("two"), "{counts:?} for {state:?}");
    } else {
        assert_eq!(counts.len(), 1, "{counts:?} for {state:?}");
        assert_all(agent.addr(PORT), 20, "one");
    }
    agent.stop();
}

/// A truncated or corrupt state file at start: a clear error naming it,
/// exit 64, and the file left exactly as it was.
#[test]
fn a_corrupt_state_file_at_start_is_refused_and_left_alone() {
    gateway_tests::needs_root!();
    let dir = TempDir::new("fault-state");
    let backends = Backends::start();
    let endpoints = dir.write("endpoints.yaml", &backends.endpoints_yaml());
    let ip = unique_ip();
    let agent = Agent::start(&dir.path, ip, &[]);
    agent.apply_ok(&[&endpoints, &seed("tcp-echo-all-v1.yaml")], Some(NS));
    let file = agent.state.join("state.json");
    agent.stop();
    let good = read(&file);
    let half = &good[..good.len() / 2];
    let wrong_kind = good.replacen(
        "\"kind\": \"VirtualService\"",
        "\"kind\": \"VirtualServise\"",
        1,
    );
    assert_ne!(wrong_kind, good);
    for (what, text) in [
        ("truncated", half.to_string()),
        ("not JSON", "\u{0}\u{1}garbage".to_string()),
        ("a resource no longer valid", wrong_kind),
    ] {
        std::fs::write(&file, &text).expect("write");
        let out = gateway(&[
            "run",
            "--admin",
            dir.path.join("admin.sock").to_str().expect("utf-8"),
            "--state-dir",
            dir.path.join("state").to_str().expect("utf-8"),
            "--listen-address",
            &ip.to_string(),
        ]);
        assert_eq!(out.code, Some(64), "{what}: {out:#?}");
        assert!(
            out.stderr.contains(file.to_str().expect("utf-8")),
            "{what}: the message names the file: {out:#?}"
        );
        assert_eq!(read(&file), text, "{what}: the file is left as it was");
    }
}
