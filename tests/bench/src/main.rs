//! `cargo xtask bench`: the gateway on each dataplane against `direct` (no
//! proxy: the limit) and the proxies people use for TCP (HAProxy, nginx's
//! stream module), on loopback in a namespace and across veth pairs.
//!
//! Figures: bulk throughput with 1 and 8 connections (iperf3), 64-byte round
//! trips (p50, p99), new connections per second, the whole system's CPU time
//! per GB moved, and the memory 10,000 idle connections take (the proxy's
//! RSS, the kernel's slab). Contenders are interleaved in every repetition
//! (in an order that rotates from one repetition to the next),
//! so drift on the machine spreads over all of them; each figure is the
//! median over repetitions, with its range. Nothing passes or fails on a
//! number: the bench measures and reports, in `target/bench/` (results.md,
//! results.json, chart.png), and prints the table.
//!
//! Needs root (BPF, namespaces), iperf3, haproxy, nginx with its stream
//! module, and a `gateway` binary next to this one; `cargo xtask bench`
//! provides all of them.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

mod chart;
mod contenders;
mod load;
mod place;
mod procs;
mod report;
mod sys;

use contenders::{Contender, Endpoint, Tools};
use place::{free_port, wait_listening, Layout, Place};
use procs::Proc;
use report::{ContenderResult, LayoutResult, Results, Sample};

/// Benchmarks the gateway against direct connections, HAProxy and nginx.
#[derive(Debug, Parser)]
#[command(name = "bench", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    serve: Option<Serve>,
    /// Fewer repetitions and shorter runs: a few minutes for both layouts.
    #[arg(long)]
    quick: bool,
    /// Which layout to measure.
    #[arg(long, value_enum, default_value_t = Which::Both)]
    topology: Which,
    /// Where results.md, results.json and chart.png go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Repetitions (default: 3 quick, 5 full).
    #[arg(long)]
    reps: Option<usize>,
    /// Only these contenders, comma separated (direct, auto, ebpf, splice,
    /// userspace, haproxy, nginx; also ebpf+sndbuf16M).
    #[arg(long, value_delimiter = ',')]
    contenders: Vec<String>,
    /// Keep the scratch directory (configurations, logs) and print where.
    #[arg(long)]
    keep: bool,
}

#[derive(Debug, Subcommand)]
enum Serve {
    /// The echo backend (the bench starts it in the backend's namespace).
    #[command(hide = true)]
    EchoServer { addr: SocketAddr },
    /// The new-connections figure alone, in the current namespace, against
    /// any target (for profiling a proxy by hand).
    #[command(hide = true)]
    ConnRate {
        target: SocketAddr,
        #[arg(long, default_value_t = 8)]
        clients: usize,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Which {
    Lo,
    Netns,
    Both,
}

/// What one run measures, and how long each figure runs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub quick: bool,
    pub reps: usize,
    pub bulk_secs: u32,
    pub round_trips: usize,
    pub conn_clients: usize,
    pub conn_secs: f64,
    pub idle_target: usize,
    /// Idle connections in every repetition, or in the first only.
    pub idle_every_rep: bool,
    pub layouts: Vec<Layout>,
    pub contenders: Vec<&'static str>,
}

impl Plan {
    fn from(cli: &Cli) -> anyhow::Result<Plan> {
        let layouts = match cli.topology {
            Which::Lo => vec![Layout::Lo],
            Which::Netns => vec![Layout::Netns],
            Which::Both => vec![Layout::Lo, Layout::Netns],
        };
        let contenders = if cli.contenders.is_empty() {
            contenders::ALL.iter().map(|c| c.name()).collect()
        } else {
            cli.contenders
                .iter()
                .map(|n| {
                    Contender::by_name(n)
                        .map(Contender::name)
                        .with_context(|| format!("unknown contender `{n}`"))
                })
                .collect::<anyhow::Result<_>>()?
        };
        let reps = cli.reps.unwrap_or(if cli.quick { 3 } else { 5 }).max(1);
        Ok(if cli.quick {
            Plan {
                quick: true,
                reps,
                bulk_secs: 1,
                round_trips: 3_000,
                conn_clients: 8,
                conn_secs: 1.0,
                idle_target: 10_000,
                idle_every_rep: false,
                layouts,
                contenders,
            }
        } else {
            Plan {
                quick: false,
                reps,
                bulk_secs: 4,
                // About 4-5 s: a run's p99 swings between two modes from one second
                // to the next on the machine measured (README, Performance).
                round_trips: 100_000,
                conn_clients: 8,
                conn_secs: 3.0,
                idle_target: 10_000,
                idle_every_rep: true,
                layouts,
                contenders,
            }
        })
    }

    fn contenders(&self) -> Vec<Contender> {
        self.contenders
            .iter()
            .filter_map(|n| Contender::by_name(n))
            .collect()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.serve {
        Some(Serve::EchoServer { addr }) => load::echo_server(addr),
        Some(Serve::ConnRate {
            target,
            clients,
            secs,
        }) => load::connection_rate_here(target, clients, Duration::from_secs_f64(secs)).map(|r| {
            println!(
                "{:.0} connections/s ({} completed, {} failed{})",
                r.per_s,
                r.completed,
                r.errors,
                r.first_error.map(|e| format!(": {e}")).unwrap_or_default()
            );
        }),
        None => run(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the bench loads BPF programs and creates network namespaces: run it as root");
    }
    let started = Instant::now();
    let plan = Plan::from(cli)?;
    let nofile = sys::raise_nofile()?;
    let mut scratch = Scratch::new()?;
    scratch.keep = cli.keep;
    let tools = Tools::find(scratch.dir.clone(), nofile)?;
    let machine = sys::Machine::describe(nofile);
    std::fs::create_dir_all(&cli.out)
        .with_context(|| format!("cannot create {}", cli.out.display()))?;
    eprintln!(
        "bench: {} run, {} repetitions of {} on {}; results in {}",
        if plan.quick { "quick" } else { "full" },
        plan.reps,
        plan.contenders.join(", "),
        plan.layouts
            .iter()
            .map(|l| l.name())
            .collect::<Vec<_>>()
            .join(" and "),
        cli.out.display()
    );
    let mut results = Results {
        machine,
        plan: plan.clone(),
        layouts: Vec::new(),
    };
    for &layout in &plan.layouts {
        results.layouts.push(run_layout(layout, &plan, &tools)?);
        // Written after each layout, so a failure later keeps what was measured.
        write_results(&cli.out, &results)?;
    }
    println!("{}", report::markdown(&results));
    eprintln!(
        "bench: done in {:.0} s; {}/results.md, results.json, chart.png",
        started.elapsed().as_secs_f64(),
        cli.out.display()
    );
    Ok(())
}

fn write_results(out: &Path, results: &Results) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(results).context("cannot serialise the results")?;
    let path = out.join("results.json");
    std::fs::write(&path, json).with_context(|| format!("cannot write {}", path.display()))?;
    let path = out.join("results.md");
    std::fs::write(&path, report::markdown(results))
        .with_context(|| format!("cannot write {}", path.display()))?;
    let m = &results.machine;
    let heading = format!(
        "gateway benchmark ({} run, {} repetitions): {}, {} cores, Linux {}, {}",
        if results.plan.quick { "quick" } else { "full" },
        results.plan.reps,
        m.cpu,
        m.cores,
        m.kernel,
        m.date
    );
    chart::draw(&out.join("chart.png"), &heading, &results.layouts)
}

/// The bench's scratch directory (configurations, logs, iperf3 output),
/// removed when dropped; one left by a bench that was killed is removed by
/// the next.
struct Scratch {
    dir: PathBuf,
    keep: bool,
}

impl Scratch {
    const PREFIX: &'static str = "gateway-bench-";

    fn new() -> anyhow::Result<Scratch> {
        let tmp = std::env::temp_dir();
        if let Ok(dir) = std::fs::read_dir(&tmp) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(pid) = name.strip_prefix(Self::PREFIX) else {
                    continue;
                };
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = tmp.join(format!("{}{}", Self::PREFIX, std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Scratch { dir, keep: false })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep {
            eprintln!(
                "bench: logs and configurations kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The servers behind every contender, in the backend's namespace.
struct Backends {
    iperf: SocketAddr,
    echo: SocketAddr,
    procs: Vec<Proc>,
}

impl Backends {
    fn start(place: &Place, tools: &Tools) -> anyhow::Result<Backends> {
        let (ns, ip) = (place.backend(), place.backend_ip());
        let iperf = SocketAddr::new(ip, free_port(ns, ip)?);
        let mut cmd = Command::new("iperf3");
        cmd.args(["-s", "-B", &ip.to_string(), "-p", &iperf.port().to_string()]);
        let iperf_proc = Proc::spawn(
            "iperf3 -s",
            ns,
            &mut cmd,
            &tools.tmp.join("iperf3-server.log"),
        )?;
        let echo = SocketAddr::new(ip, free_port(ns, ip)?);
        // This very binary, even if a rebuild has replaced the file since.
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg("echo-server").arg(echo.to_string());
        let echo_proc = Proc::spawn(
            "echo server",
            ns,
            &mut cmd,
            &tools.tmp.join("echo-server.log"),
        )?;
        let mut procs = vec![iperf_proc, echo_proc];
        for (port, i) in [(iperf.port(), 0), (echo.port(), 1)] {
            let p = &mut procs[i];
            wait_listening(ns, port, Duration::from_secs(10), || p.check_alive())?;
        }
        Ok(Backends { iperf, echo, procs })
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        self.procs.iter_mut().try_for_each(Proc::check_alive)
    }
}

fn run_layout(layout: Layout, plan: &Plan, tools: &Tools) -> anyhow::Result<LayoutResult> {
    let started = Instant::now();
    let place = Place::new(layout)?;
    let mut backends = Backends::start(&place, tools)?;
    let contenders = plan.contenders();
    let mut results: Vec<ContenderResult> = contenders
        .iter()
        .map(|c| ContenderResult::new(c.name(), c.describe()))
        .collect();
    for rep in 0..plan.reps {
        // Each repetition starts one contender further on (A B C, B C A,
        // C A B, ...): what one run leaves in the namespace (tens of
        // thousands of TIME-WAIT sockets after a connection-rate run) falls
        // on a different successor each time.
        let n = contenders.len();
        for i in (0..n).map(|k| (k + rep) % n) {
            let (c, result) = (&contenders[i], &mut results[i]);
            backends.check_alive()?;
            let t = Instant::now();
            let sample = measure(*c, rep, &place, &backends, plan, tools);
            eprintln!(
                "bench: {} {}/{} {:<15}{} ({:.1} s)",
                layout.name(),
                rep + 1,
                plan.reps,
                c.name(),
                progress(&sample),
                t.elapsed().as_secs_f64()
            );
            result.samples.push(sample);
        }
    }
    for r in &mut results {
        r.summarise();
    }
    Ok(LayoutResult {
        name: layout.name(),
        description: layout.description(),
        seconds: started.elapsed().as_secs_f64(),
        contenders: results,
    })
}

/// A sample on one line, as it is measured.
fn progress(s: &Sample) -> String {
    use report::*;
    let shown = [
        (BULK1, "bulk ×1", "Gbit/s"),
        (BULK8, "×8", "Gbit/s"),
        (KERNEL_SHARE, "in kernel", "%"),
        (VERDICT_BULK_NS, "verdict bulk", "ns/run"),
        (RR_P50, "rtt p50", "µs"),
        (RR_P99, "p99", "µs"),
        (CONN_RATE, "", "conn/s"),
        (CPU, "", "CPU-s/GB"),
        (IDLE_CONNS, "idle", "conns"),
        (IDLE_RSS, "rss", "MiB"),
        (IDLE_KERNEL, "kernel", "MiB"),
        (VERDICT_ECHO_NS, "verdict echo", "ns/run"),
    ];
    let parts: Vec<String> = shown
        .iter()
        .filter_map(|&(key, label, unit)| {
            let count = METRICS.iter().any(|m| m.key == key && m.count);
            let value = match s.metrics.get(key) {
                Some(v) => format!("{} {unit}", number(*v, count)),
                None if s.errors.contains_key(key) => "failed".to_owned(),
                None => return None,
            };
            Some(format!("{label} {value}").trim_start().to_owned())
        })
        .collect();
    parts.join(", ")
}

const MIB: f64 = 1024.0 * 1024.0;

/// Error messages in results stay short.
fn brief(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    match text.char_indices().nth(400) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

fn fail(s: &mut Sample, keys: &[&'static str], e: &anyhow::Error) {
    for k in keys {
        s.errors.insert(k, brief(e));
    }
}

/// Every figure for one contender, once. A figure that fails is recorded as
/// failed; the others go on.
fn measure(
    c: Contender,
    rep: usize,
    place: &Place,
    backends: &Backends,
    plan: &Plan,
    tools: &Tools,
) -> Sample {
    use report::*;
    let mut s = Sample {
        rep,
        ..Sample::default()
    };
    let bulk = [BULK1, BULK8, CPU];
    match c.start(tools, place, backends.iperf) {
        Ok(mut ep) => {
            match load::iperf(place, &tools.tmp, ep.addr, 1, plan.bulk_secs) {
                Ok(b) => {
                    s.metrics.insert(BULK1, b.gbit_per_s);
                    s.metrics.insert(CPU, b.cpu_s_per_gb);
                    s.metrics.insert("bulk1_bytes", b.bytes as f64);
                    if let Some(r) = b.retransmits {
                        s.metrics.insert("bulk1_retransmits", r as f64);
                    }
                }
                Err(e) => fail(&mut s, &[BULK1, CPU], &e),
            }
            match load::iperf(place, &tools.tmp, ep.addr, 8, plan.bulk_secs) {
                Ok(b) => {
                    s.metrics.insert(BULK8, b.gbit_per_s);
                    s.metrics.insert("bulk8_cpu_s_per_gb", b.cpu_s_per_gb);
                    if let Some(r) = b.retransmits {
                        s.metrics.insert("bulk8_retransmits", r as f64);
                    }
                }
                Err(e) => fail(&mut s, &[BULK8], &e),
            }
            if let Err(e) = ep.check_alive() {
                fail(&mut s, &bulk, &e);
            }
            let counters = ep.stop();
            if c.kernel_path() {
                if let Some(share) = counters.as_ref().and_then(kernel_share) {
                    s.metrics.insert(KERNEL_SHARE, share);
                }
                verdict_time(
                    &mut s,
                    counters.as_ref(),
                    [VERDICT_BULK_NS, "verdict_bulk_runs", "verdict_bulk_ns"],
                );
            }
        }
        Err(e) => fail(&mut s, &bulk, &e),
    }
    let idle = rep == 0 || plan.idle_every_rep;
    let mut echo = vec![RR_P50, RR_P99, CONN_RATE];
    if idle {
        echo.extend([IDLE_CONNS, IDLE_RSS, IDLE_KERNEL]);
    }
    match c.start(tools, place, backends.echo) {
        Ok(mut ep) => {
            let before = sys::cpu_ticks().ok();
            match load::round_trips(place, ep.addr, plan.round_trips) {
                Ok(r) => {
                    if let (Some(before), Ok(after)) = (before, sys::cpu_ticks()) {
                        s.metrics.insert(RR_STEAL, after.steal_pct_since(&before));
                    }
                    s.metrics.insert(RR_P50, r.p50_us);
                    s.metrics.insert(RR_P99, r.p99_us);
                    s.metrics.insert("rr_mean_us", r.mean_us);
                    s.metrics.insert("rr_max_us", r.max_us);
                    s.metrics.insert("rr_count", r.count as f64);
                }
                Err(e) => fail(&mut s, &[RR_P50, RR_P99], &e),
            }
            match load::connection_rate(
                place,
                ep.addr,
                plan.conn_clients,
                Duration::from_secs_f64(plan.conn_secs),
            ) {
                Ok(r) if r.completed > 0 => {
                    s.metrics.insert(CONN_RATE, r.per_s);
                    s.metrics.insert("conn_errors", r.errors as f64);
                    if let Some(e) = r.first_error {
                        s.notes
                            .insert(CONN_RATE, format!("{} failed, first: {e}", r.errors));
                    }
                }
                Ok(r) => fail(
                    &mut s,
                    &[CONN_RATE],
                    &anyhow::anyhow!(
                        "no connection completed: {}",
                        r.first_error.unwrap_or_default()
                    ),
                ),
                Err(e) => fail(&mut s, &[CONN_RATE], &e),
            }
            // Last: the gateway takes a while (about 0.6 s on ebpf) to tear
            // 10,000 connections down, and new connections wait meanwhile.
            if idle {
                if let Err(e) = idle_figure(&mut s, place, &ep, plan.idle_target) {
                    fail(&mut s, &[IDLE_CONNS, IDLE_RSS, IDLE_KERNEL], &e);
                }
            }
            if let Err(e) = ep.check_alive() {
                fail(&mut s, &echo, &e);
            }
            if c.kernel_path() {
                let counters = ep.stop();
                verdict_time(
                    &mut s,
                    counters.as_ref(),
                    [VERDICT_ECHO_NS, "verdict_echo_runs", "verdict_echo_ns"],
                );
            }
        }
        Err(e) => fail(&mut s, &echo, &e),
    }
    s
}

/// Of the bytes the gateway moved, the percentage the verdict redirected in
/// the kernel (the rest was spliced, or copied by the agent when a reader
/// fell behind), from its exit counters.
fn kernel_share(counters: &serde_json::Value) -> Option<f64> {
    let get = |k: &str| counters[k].as_u64().map(|v| v as f64);
    let kernel = get("bytes_kernel_redirected")?;
    let total = kernel + get("bytes_spliced")? + get("bytes_agent_copied")?;
    (total > 0.0).then(|| 100.0 * kernel / total)
}

/// From a gateway's exit counters: the verdict's average run time under
/// `keys[0]`, its runs and total run time (ns) under `keys[1]` and
/// `keys[2]`; nothing if it never ran.
fn verdict_time(s: &mut Sample, counters: Option<&serde_json::Value>, keys: [&'static str; 3]) {
    let Some(k) = counters.map(|c| &c["kernel"]) else {
        return;
    };
    let (Some(runs), Some(ns)) = (k["verdict_runs"].as_u64(), k["verdict_run_ns"].as_u64()) else {
        return;
    };
    if runs > 0 {
        s.metrics.insert(keys[0], ns as f64 / runs as f64);
        s.metrics.insert(keys[1], runs as f64);
        s.metrics.insert(keys[2], ns as f64);
    }
}

/// Opens the idle connections, measures what they cost while they are
/// held, then closes them.
fn idle_figure(s: &mut Sample, place: &Place, ep: &Endpoint, target: usize) -> anyhow::Result<()> {
    use report::*;
    let rss_before = ep.rss_bytes();
    let slab_before = sys::slab_bytes()?;
    let tcp_before = sys::tcp_mem_bytes()?;
    let held = load::hold_idle(place, ep.addr, target)?;
    // Let the proxy finish with the last ones (the gateway inserts sockets
    // into its maps after the first bytes).
    std::thread::sleep(Duration::from_secs(1));
    let rss = ep.rss_bytes();
    let slab = sys::slab_bytes()?;
    let tcp = sys::tcp_mem_bytes()?;
    let n = held.conns.len();
    drop(held.conns);
    // Let the proxy and the kernel tear them down before the next contender.
    std::thread::sleep(Duration::from_secs(1));
    if n == 0 {
        bail!(
            "no connection could be held: {}",
            held.short.unwrap_or_default()
        );
    }
    let kernel = slab.saturating_sub(slab_before) as f64;
    s.metrics.insert(IDLE_CONNS, n as f64);
    s.metrics.insert(IDLE_KERNEL, kernel / MIB);
    s.metrics
        .insert("idle_kernel_kib_per_conn", kernel / 1024.0 / n as f64);
    s.metrics.insert(
        "idle_tcp_mem_mib",
        tcp.saturating_sub(tcp_before) as f64 / MIB,
    );
    if let (Some(rss), Some(before)) = (rss, rss_before) {
        s.metrics.insert(IDLE_RSS, rss as f64 / MIB);
        s.metrics.insert("idle_rss_before_mib", before as f64 / MIB);
        s.metrics.insert(
            "idle_rss_kib_per_conn",
            rss.saturating_sub(before) as f64 / 1024.0 / n as f64,
        );
    }
    if let Some(why) = held.short {
        s.notes
            .insert(IDLE_CONNS, format!("held {n} of {target}: {why}"));
    }
    Ok(())
}
