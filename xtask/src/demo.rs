//! `cargo xtask demo`: Istio's tcp-echo scenario on one machine, no cluster.
use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, TcpStream},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _};

use crate::util;

/// Kills the demo's processes however the demo ends.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What `(date; sleep 1) | nc HOST PORT` does: one line, a pause, a
/// half-close, then everything the server answers.
fn date_client(addr: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("cannot connect to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let date = util::output(&mut Command::new("date"))?;
    s.write_all(date.as_bytes())?;
    std::thread::sleep(Duration::from_secs(1));
    s.shutdown(Shutdown::Write)?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    Ok(reply)
}

fn wait_for(addr: &str) -> anyhow::Result<()> {
    for _ in 0..100 {
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on {addr} after 5s")
}

pub fn run() -> anyhow::Result<()> {
    if !util::is_root() {
        bail!("the demo loads BPF programs: run it as root");
    }
    let mut procs = Procs(Vec::new());
    procs.0.push(
        Command::new(util::bin(false, "tcp-echo"))
            .args(["9000", "one", "--address", "127.0.0.1"])
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start tcp-echo")?,
    );
    wait_for("127.0.0.1:9000")?;
    procs.0.push(
        Command::new(util::bin(false, "gateway"))
            .args([
                "forward",
                "--listen",
                "127.0.0.1:31400",
                "--to",
                "127.0.0.1:9000",
            ])
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start gateway")?,
    );
    wait_for("127.0.0.1:31400")?;
    println!("$ for i in {{1..10}}; do sh -c \"(date; sleep 1) | nc 127.0.0.1 31400\"; done");
    for _ in 0..10 {
        print!("{}", date_client("127.0.0.1:31400")?);
    }
    Ok(())
}
