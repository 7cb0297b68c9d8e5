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

/// A tmpfs mounted for a test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mount tmpfs at {}", at.display());
        Tmpfs(at.to_path_buf())
    }

    fn remount(&self, options: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount {options}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The state directory full, then read-only: the apply is refused saying
/// why, the running config and the state file stay as they were; with
/// room again, the same apply goes through.
#[test]
fn a_full_or_read_only_state_directory_refuses_the_apply_and_changes_nothing() {
    gateway_tests::needs_root!();
    let dir = TempDir::new("fault-disk");
    let backends = Backends::start();
    let endpoints = dir.write("endpoints.yaml", &backends.endpoints_yaml());
    let fs = Tmpfs::mount(&dir.path.join("state"), "256k");
    let agent = Agent::start(&dir.path, unique_ip(), &[]);
    let addr = agent.addr(PORT);
    agent.apply_ok(&[&endpoints, &seed("tcp-echo-all-v1.yaml")], Some(NS));
    let before = read(&agent.state.join("state.json"));

    // Full: a file takes every block left.
    let fill = agent.state.join("fill");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&fill).expect("fill");
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
    }
    let out = agent.apply(&[&seed("tcp-echo-20-v2.yaml")], Some(NS));
    assert!(!out.ok(), "{out:#?}");
    assert!(
        out.stderr.contains("No space left on device") && out.stderr.contains("state"),
        "{out:#?}"
    );
    assert_all(addr, 50, "one");
    assert_eq!(read(&agent.state.join("state.json")), before);

    // Room again: the same apply goes through.
    std::fs::remove_file(&fill).expect("unfill");
    agent.apply_ok(&[&seed("tcp-echo-20-v2.yaml")], Some(NS));
    let counts = gateway_tests::agent::who_answers(addr, 200, 8);
    assert!(counts.contains_key("two"), "{counts:?}");
    let shifted = read(&agent.state.join("state.json"));

    // Read-only: the agent holds a file open for writing there, so the
    // mount cannot turn read-only under it; a read-only one replaces it,
    // holding the same state file.
    drop(fs);
    let fs = Tmpfs::mount(&agent.state, "256k");
    std::fs::write(agent.state.join("state.json"), &shifted).expect("copy the state");
    fs.remount("ro");
    let out = agent.apply(&[&seed("tcp-echo-all-v1.yaml")], Some(NS));
    assert!(!out.ok(), "{out:#?}");
    assert!(out.stderr.contains("Read-only file system"), "{out:#?}");
    let counts = gateway_tests::agent::who_answers(addr, 200, 8);
    assert!(counts.contains_key("two"), "still 80/20: {counts:?}");
    assert_eq!(read(&agent.state.join("state.json")), shifted);
    fs.remount("rw");
    agent.stop();
}

/// The admin socket flooded: 500 connections that send nothing and 20
/// that send forever. A valid apply is still answered within a second and
/// takes effect; the senders are cut off at the request cap.
#[test]
fn a_flooded_admin_socket_still_serves_a_valid_apply_within_a_second() {
    gateway_tests::needs_root!();
    use std::{io::Write as _, os::unix::net::UnixStream};
    let dir = TempDir::new("fault-flood");
    let backends = Backends::start();
    let endpoints = dir.write("endpoints.yaml", &backends.endpoints_yaml());
    let agent = Agent::start(&dir.path, unique_ip(), &[]);
    let addr = agent.addr(PORT);
    agent.apply_ok(&[&endpoints, &seed("tcp-echo-all-v1.yaml")], Some(NS));

    let idle: Vec<UnixStream> = (0..500)
        .map(|_| UnixStream::connect(&agent.admin).expect("connect"))
        .collect();
    let senders: Vec<_> = (0..20)
        .map(|_| {
            let admin = agent.admin.clone();
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(admin).expect("connect");
                let chunk = vec![b' '; 64 << 10];
                let mut sent = 0usize;
                // Bounded: the agent cuts a request off at 16 MiB.
                while sent < (64 << 20) {
                    match s.write(&chunk) {
                        Ok(n) => sent += n,
                        Err(_) => break,
                    }
                }
                sent
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let out = agent.apply(&[&seed("tcp-echo-20-v2.yaml")], Some(NS));
    let took = started.elapsed();
    assert!(out.ok(), "{out:#?}");
    eprintln!("a valid apply beside 500 idle and 20 endless clients: {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    let counts = gateway_tests::agent::who_answers(addr, 200, 8);
    assert!(counts.contains_key("two"), "{counts:?}");
    for s in senders {
        let sent = s.join().expect("sender");
        assert!(sent < (64 << 20), "a sender was never cut off");
    }
    drop(idle);
    agent.stop();
}
