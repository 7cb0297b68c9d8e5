//! Tasks cargo cannot express: preparing a machine, privileged test runs, the
//! demo. Every task runs `setup` first, so a fresh machine needs nothing else.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod demo;
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = (|| -> anyhow::Result<()> {
        setup::run()?;
        match cli.command {
            Command::Setup => Ok(()),
            Command::Build { release } => util::build(release),
            Command::Run { release, args } => {
                util::build(release)?;
                util::run_gateway(release, &args)
            }
            Command::Lint => util::lint(),
            Command::Test { no_lint, args } => {
                if !no_lint {
                    util::lint()?;
                }
                util::test(&args)
            }
            Command::Soak { minutes, seed } => util::soak(minutes, seed),
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
