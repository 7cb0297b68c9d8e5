//! Tasks cargo cannot express: preparing a machine, privileged test runs, the
//! demo. Every task runs `setup` first, so a fresh machine needs nothing else.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod demo;
mod fuzz;
mod kernel;
mod manifests;
mod setup;
mod util;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make this machine ready: nightly rust-src, bpf-linker, bpffs, test tools.
    Setup,
    /// Build the gateway (its eBPF programs embedded).
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Build, then run `gateway ARGS` (as root, which loading programs needs).
    Run {
        #[arg(long)]
        release: bool,
        /// Arguments for `gateway`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// fmt and clippy with --deny warnings: userspace, then the eBPF crate.
    Lint,
    /// Lint, build and run every test, the privileged ones included.
    Test {
        /// Skip fmt and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Run every guest-sized test on these kernels under qemu instead of
        /// the tests on this machine: 5.10, 6.1, 6.12, latest or all
        /// (comma separated).
        #[arg(long, value_name = "SERIES")]
        kernel: Option<String>,
        /// With --kernel: only the quick plan (what `cargo xtask test` runs).
        #[arg(long, requires = "kernel")]
        quick: bool,
        /// Skip the quick kernel matrix that follows the tests on this machine.
        #[arg(long)]
        no_kernels: bool,
        /// Skip the short fuzz run (15 s per target) after the tests.
        #[arg(long)]
        no_fuzz: bool,
        /// Rewrite the kernel table in docs/kernels.md with this run's.
        #[arg(long)]
        docs: bool,
        /// Passed to `cargo test` (a test name filter, `--nocapture`...).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The tcp-echo scenario on this machine: backends, gateway, clients.
    Demo,
    /// Random mixes of the data path scenarios for a while; reports bytes,
    /// connections, peak memory and mismatches.
    Soak {
        /// How long to run.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Seed for the mix (random when absent); a failure prints its own.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Benchmarks: the gateway on each dataplane against direct, HAProxy
    /// and nginx; results in target/bench/.
    Bench(bench::Args),
    /// The Kubernetes manifests (CRDs, namespace, RBAC, DaemonSet) as one
    /// stream on stdout, the DaemonSet running --image.
    Manifests(manifests::Args),
    /// The config layer's fuzz targets (cargo fuzz, nightly), seeded with
    /// every fixture; prints each target's runs.
    Fuzz(fuzz::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = (|| -> anyhow::Result<()> {
        if let Command::Manifests(args) = &cli.command {
            // Text only: nothing to set up.
            return manifests::render(args);
        }
        setup::run()?;
        match cli.command {
            Command::Setup => Ok(()),
            Command::Build { release } => util::build(release),
            Command::Run { release, args } => {
                util::build(release)?;
                util::run_gateway(release, &args)
            }
            Command::Lint => util::lint(),
            Command::Test {
                no_lint,
                kernel: Some(which),
                quick,
                docs,
                ..
            } => {
                if !no_lint {
                    util::lint()?;
                }
                let names = if which == "all" {
                    kernel::series_names()
                } else {
                    which.split(',').map(str::trim).collect()
                };
                let plan = if quick {
                    kernel::Plan::Quick
                } else {
                    kernel::Plan::Full
                };
                kernel::run(&names, plan, docs)
            }
            Command::Test {
                no_lint,
                kernel: None,
                no_kernels,
                no_fuzz,
                docs,
                args,
                ..
            } => {
                if !no_lint {
                    util::lint()?;
                }
                manifests::validate()?;
                util::venv("kmock-venv", util::KMOCK)?;
                let host = util::test(&args);
                let host = if no_fuzz || !args.is_empty() {
                    host
                } else {
                    host.and(fuzz::run_all(&fuzz::Args {
                        minutes: 0.25,
                        target: Vec::new(),
                    }))
                };
                // The matrix runs even when a host test failed: its table
                // says on which kernels the failure shows.
                let guests = if no_kernels || !args.is_empty() {
                    Ok(())
                } else {
                    kernel::run(kernel::QUICK, kernel::Plan::Quick, docs)
                };
                host.and(guests)
            }
            Command::Soak { minutes, seed } => util::soak(minutes, seed),
            Command::Bench(args) => bench::run(&args),
            Command::Manifests(args) => manifests::render(&args),
            Command::Fuzz(args) => fuzz::run_all(&args),
            Command::Demo => {
                util::build(false)?;
                demo::run()
            }
        }
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
