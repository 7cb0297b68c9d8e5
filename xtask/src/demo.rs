//! `cargo xtask demo`: Istio's TCP traffic shifting task on one machine, no
//! cluster. tcp-echo v1 and v2 run on 127.0.0.1 and 127.0.0.2, `gateway
//! run` stands where the ingress gateway stands, and the task's own YAML is
//! applied with `gateway apply`, as `kubectl apply` would apply it.
use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Shutdown, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::util;

const NS: &str = "istio-io-tcp-traffic-shifting";
const GATEWAY: &str = "127.0.0.1:31400";
const EXAMPLES: &str = "manifests/examples/tcp-echo";
/// Clients at once: enough to keep the demo short, few enough to look
/// like someone running `nc` in a loop.
const BATCH: usize = 25;

/// Kills the demo's processes and removes its directory however it ends.
struct Demo {
    dir: PathBuf,
    procs: Vec<Child>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        for c in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Demo {
    fn admin(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("gateway.log")
    }

    fn log_tail(&self) -> String {
        log_tail(&self.log())
    }

    /// `gateway VERB -f FILE -n NS`, shown as the user would type it, and
    /// its output.
    fn gateway(&self, verb: &str, file: &str) -> anyhow::Result<()> {
        println!("$ gateway {verb} -f {EXAMPLES}/{file} -n {NS}");
        let out = Command::new(util::bin(false, "gateway"))
            .arg(verb)
            .arg("--admin")
            .arg(self.admin())
            .args(["-f", &format!("{EXAMPLES}/{file}"), "-n", NS])
            .current_dir(util::root())
            .output()
            .context("cannot run gateway")?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            bail!(
                "gateway {verb} failed; the agent's log:\n{}",
                self.log_tail()
            );
        }
        Ok(())
    }
}

/// The end of the agent's log, to show when something goes wrong.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// What `(date; sleep 1) | nc HOST PORT` does: one line, a pause, a
/// half-close, then everything the server answers.
fn date_client(addr: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("cannot connect to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let date = util::output(&mut Command::new("date"))?;
    s.write_all(date.as_bytes())?;
    thread::sleep(Duration::from_secs(1));
    s.shutdown(Shutdown::Write)?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    Ok(reply)
}

/// `n` date clients, `BATCH` at a time; their replies in order.
fn clients(n: usize) -> anyhow::Result<Vec<String>> {
    let mut replies = Vec::with_capacity(n);
    for start in (0..n).step_by(BATCH) {
        let batch: Vec<_> = (start..n.min(start + BATCH))
            .map(|_| thread::spawn(|| date_client(GATEWAY)))
            .collect();
        for t in batch {
            match t.join() {
                Ok(reply) => replies.push(reply?),
                Err(_) => bail!("a client thread panicked"),
            }
        }
    }
    Ok(replies)
}

/// The task's client loop; with `all`, every reply must come from it.
fn show_loop(n: usize, all: Option<&str>) -> anyhow::Result<()> {
    let host = GATEWAY.replace(':', " ");
    println!("$ for i in {{1..{n}}}; do sh -c \"(date; sleep 1) | nc {host}\"; done");
    let replies = clients(n)?;
    for r in &replies {
        print!("{r}");
    }
    if let Some(who) = all {
        if !replies.iter().all(|r| r.starts_with(&format!("{who} "))) {
            bail!("every connection should have been answered by {who}");
        }
    }
    Ok(())
}

fn show_split(n: usize) -> anyhow::Result<()> {
    let host = GATEWAY.replace(':', " ");
    println!(
        "$ for i in {{1..{n}}}; do sh -c \"(date; sleep 1) | nc {host}\"; done | cut -d' ' -f1 | sort | uniq -c"
    );
    let mut counts = BTreeMap::new();
    for r in clients(n)? {
        let who = r
            .split_whitespace()
            .next()
            .unwrap_or("(no reply)")
            .to_string();
        *counts.entry(who).or_insert(0) += 1;
    }
    for (who, c) in &counts {
        println!("{c:>7} {who}");
    }
    Ok(())
}

fn wait_for(addr: &str) -> anyhow::Result<()> {
    for _ in 0..100 {
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on {addr} after 5s (is the port taken?)")
}

fn wait_ready(log: &Path, agent: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(" ready: ") {
            return Ok(());
        }
        if agent.try_wait()?.is_some() || Instant::now() > deadline {
            bail!("gateway run did not start:\n{}", log_tail(log));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn start_echo(address: &str, prefix: &str) -> anyhow::Result<Child> {
    let child = Command::new(util::bin(false, "tcp-echo"))
        .args(["9000,9001", prefix, "--address", address])
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start tcp-echo")?;
    Ok(child)
}

/// The per-cluster connection counts in the agent's counters line, a flat
/// JSON object of names (which hold no quote, comma or brace) to numbers.
fn clusters_of(line: &str) -> Vec<(&str, &str)> {
    let key = "\"clusters\":{";
    let Some(start) = line.find(key).map(|i| i + key.len()) else {
        return Vec::new();
    };
    let Some(len) = line[start..].find('}') else {
        return Vec::new();
    };
    line[start..start + len]
        .split(',')
        .filter_map(|kv| kv.rsplit_once(':'))
        .map(|(k, v)| (k.trim_matches('"'), v))
        .collect()
}

pub fn run() -> anyhow::Result<()> {
    if !util::is_root() {
        bail!("the demo loads BPF programs: run it as root");
    }
    if !examples().is_dir() {
        bail!(
            "{} is missing: the demo applies its files",
            examples().display()
        );
    }
    let dir = std::env::temp_dir().join(format!("gateway-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut demo = Demo {
        dir,
        procs: Vec::new(),
    };

    println!("Istio's TCP traffic shifting task, with `gateway` as the ingress gateway.");
    println!("tcp-echo v1 answers \"one\" on 127.0.0.1, v2 answers \"two\" on 127.0.0.2:");
    println!("$ tcp-echo 9000,9001 one --address 127.0.0.1 &");
    println!("$ tcp-echo 9000,9001 two --address 127.0.0.2 &");
    demo.procs.push(start_echo("127.0.0.1", "one")?);
    demo.procs.push(start_echo("127.0.0.2", "two")?);
    wait_for("127.0.0.1:9000")?;
    wait_for("127.0.0.2:9000")?;

    let admin = demo.admin();
    let state = demo.dir.join("state");
    println!(
        "$ gateway run --admin {} --state-dir {} --listen-address 127.0.0.1 &",
        admin.display(),
        state.display()
    );
    println!(
        "  (the commands below talk to it with --admin {})",
        admin.display()
    );
    let log = std::fs::File::create(demo.log()).context("cannot create the agent's log")?;
    let mut agent = Command::new(util::bin(false, "gateway"))
        .arg("run")
        .arg("--admin")
        .arg(&admin)
        .arg("--state-dir")
        .arg(&state)
        .args(["--listen-address", "127.0.0.1"])
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .context("cannot start gateway run")?;
    let (tx, counters) = mpsc::channel();
    if let Some(out) = agent.stdout.take() {
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let pid = agent.id();
    demo.procs.push(agent);
    let log = demo.log();
    if let Some(agent) = demo.procs.last_mut() {
        wait_ready(&log, agent)?;
    }
    println!();

    println!("# Where tcp-echo runs (a ServiceEntry and two WorkloadEntries stand in for the Kubernetes Service and pods):");
    demo.gateway("apply", "tcp-echo-endpoints.yaml")?;
    println!();
    println!("# Step 1: all TCP traffic to v1.");
    demo.gateway("apply", "tcp-echo-all-v1.yaml")?;
    show_loop(10, Some("one"))?;
    println!();

    println!("# Step 2: 20% of the connections to v2.");
    demo.gateway("apply", "tcp-echo-20-v2.yaml")?;
    show_loop(10, None)?;
    show_split(100)?;
    println!();

    println!("# Step 3: all TCP traffic to v2.");
    demo.gateway("apply", "tcp-echo-all-v2.yaml")?;
    show_loop(10, Some("two"))?;
    println!();

    println!("# Connections per cluster, from the counters the gateway prints on SIGUSR1:");
    println!("$ kill -USR1 {pid}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
    match counters.recv_timeout(Duration::from_secs(10)) {
        Ok(line) => {
            for (cluster, n) in clusters_of(&line) {
                println!("{cluster}: {n}");
            }
        }
        Err(_) => bail!("the gateway did not answer SIGUSR1"),
    }
    println!();

    println!("# Cleanup.");
    demo.gateway("delete", "tcp-echo-all-v1.yaml")?;
    demo.gateway("delete", "tcp-echo-endpoints.yaml")?;
    match TcpStream::connect(GATEWAY) {
        Ok(_) => bail!("port 31400 is still open after the cleanup"),
        Err(e) => println!("$ nc {} # {e}", GATEWAY.replace(':', " ")),
    }
    Ok(())
}

fn examples() -> PathBuf {
    util::root().join(EXAMPLES)
}

#[cfg(test)]
mod tests {
    use super::clusters_of;

    #[test]
    fn clusters_part_of_the_counters() {
        let line =
            r#"{"a":1,"clusters":{"outbound|9000|v1|x":3,"outbound|9000|v2|x":1},"b":{"c":2}}"#;
        assert_eq!(
            clusters_of(line),
            [("outbound|9000|v1|x", "3"), ("outbound|9000|v2|x", "1")]
        );
        assert!(clusters_of("{}").is_empty());
        assert!(clusters_of(r#"{"clusters":{}}"#).is_empty());
    }

    #[test]
    fn the_examples_exist() {
        for f in [
            "tcp-echo-endpoints.yaml",
            "tcp-echo-all-v1.yaml",
            "tcp-echo-20-v2.yaml",
            "tcp-echo-all-v2.yaml",
        ] {
            assert!(super::examples().join(f).is_file(), "{f}");
        }
    }
}
