//! `cargo xtask bench`: the gateway on each dataplane against direct
//! connections, HAProxy and nginx, on loopback in a namespace and across
//! veth pairs. Installs the Debian packages the bench drives, builds the
//! gateway and the bench (`tests/bench`) with the release profile, and
//! runs it as root. Results go to `target/bench/` (results.md,
//! results.json, chart.png); the table is printed too.
use std::process::Command;

use anyhow::{bail, Context as _};

use crate::util::{self, quiet};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Fewer repetitions and shorter runs (under 5 minutes for both layouts;
    /// the full run takes about 25).
    #[arg(long)]
    quick: bool,
    /// Where the client, the proxy and the backend run.
    #[arg(long, value_enum, default_value_t = Topology::Both)]
    topology: Topology,
    /// Repetitions (default: 3 quick, 5 full).
    #[arg(long)]
    reps: Option<usize>,
    /// Only these contenders, comma separated (direct, auto, ebpf, splice,
    /// userspace, haproxy, nginx; also ebpf+sndbuf16M, not run by default).
    #[arg(long, value_name = "NAME,...")]
    contenders: Option<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Topology {
    /// Loopback inside one network namespace.
    Lo,
    /// Client, proxy and backend namespaces joined by veth pairs.
    Netns,
    /// Both, one after the other.
    Both,
}

impl Topology {
    fn name(self) -> &'static str {
        match self {
            Topology::Lo => "lo",
            Topology::Netns => "netns",
            Topology::Both => "both",
        }
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if !util::is_root() {
        bail!(
            "the bench loads BPF programs, creates network namespaces and installs packages: \
             run it as root"
        );
    }
    debian_packages()?;
    util::build(true)?;
    util::run(util::cargo().args([
        "build",
        "--release",
        "--package",
        "gateway-bench",
        "--bin",
        "bench",
    ]))?;
    let mut cmd = Command::new(util::bin(true, "bench"));
    cmd.arg("--topology")
        .arg(args.topology.name())
        .arg("--out")
        .arg(util::target_dir().join("bench"));
    if args.quick {
        cmd.arg("--quick");
    }
    if let Some(reps) = args.reps {
        cmd.arg("--reps").arg(reps.to_string());
    }
    if let Some(names) = &args.contenders {
        cmd.arg("--contenders").arg(names);
    }
    util::run(&mut cmd)
}

/// Installed, not merely known to dpkg (a removed package keeps its
/// configuration files and a status).
fn installed(package: &str) -> bool {
    util::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_ok_and(|status| status.trim() == "install ok installed")
}

/// iperf3, HAProxy, nginx with its stream module, and the chart's font.
fn debian_packages() -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for package in ["iperf3", "haproxy", "fonts-dejavu-core"] {
        if !installed(package) {
            missing.push(package);
        }
    }
    // Any of Debian's nginx builds will do; nginx-light is the smallest
    // (Debian 13 has only `nginx`).
    if ![
        "nginx-light",
        "nginx",
        "nginx-core",
        "nginx-full",
        "nginx-extras",
    ]
    .iter()
    .any(|p| installed(p))
    {
        let light = quiet(Command::new("apt-cache").args(["show", "nginx-light"]));
        missing.push(if light { "nginx-light" } else { "nginx" });
    }
    // Debian builds the stream module as a dynamic module of its own.
    if !installed("libnginx-mod-stream") {
        missing.push("libnginx-mod-stream");
    }
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: the bench needs {}", missing.join(" "));
    let install = || {
        util::run(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    if install().is_err() {
        // A fresh machine has no package lists yet.
        util::run(Command::new("apt-get").args(["update", "-q"]))?;
        install().context("cannot install the bench's packages")?;
    }
    Ok(())
}
