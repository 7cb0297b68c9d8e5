//! The command line: one verb each for the agent (`run`), its clients
//! (`apply`, `delete`, `validate`) and the single-route relay (`forward`).
use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};

use crate::control::admin;

mod change;
mod forward;
mod inspect;
mod run;

/// An eBPF-accelerated TCP gateway: the kernel moves the bytes.
#[derive(Debug, Parser)]
#[command(name = "gateway", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve Istio's Gateway, VirtualService, DestinationRule, ServiceEntry
    /// and WorkloadEntry resources: the long-running agent.
    Run(run::RunArgs),
    /// Apply Istio YAML to the running agent, like `kubectl apply`.
    Apply(change::ChangeArgs),
    /// Delete the resources Istio YAML names from the running agent, like
    /// `kubectl delete -f`.
    Delete(change::ChangeArgs),
    /// Check Istio YAML offline, with the rules the agent applies.
    Validate(change::ValidateArgs),
    /// Forward one listening address to backends (like socat, in the kernel).
    Forward(forward::Args),
    /// Show what the kernel holds for a gateway: its pinned BPF maps.
    Inspect(inspect::Args),
}

/// Parses `10s`, `250ms`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (try 10s, 250ms, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (ms, s, m, h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("`{s}` is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Runs the command line: parses it, runs the verb, and turns its outcome
/// into the process's exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The client commands need neither logging nor a runtime.
    let command = match cli.command {
        Command::Apply(args) => return finish(change::change(admin::Op::Apply, args)),
        Command::Delete(args) => return finish(change::change(admin::Op::Delete, args)),
        Command::Validate(args) => return finish(change::validate(args)),
        Command::Inspect(args) => return finish(inspect::inspect(args)),
        other => other,
    };
    tracing_subscriber::fmt()
        .with_env_filter(match std::env::var("RUST_LOG") {
            // kube's client logs every failed request as an error; the
            // watch that made it says so once, with what it does next.
            Ok(env) if !env.contains("kube") => tracing_subscriber::EnvFilter::new(format!(
                "{env},kube_client::client::builder=off,kube_client::client=error"
            )),
            Ok(env) => tracing_subscriber::EnvFilter::new(env),
            // aya warns when it cannot raise RLIMIT_MEMLOCK (kernels
            // before 5.11); the load error that follows says it in one line.
            Err(_) => tracing_subscriber::EnvFilter::new(
                "info,aya::sys::bpf=error,kube_client::client::builder=off,kube_client::client=error",
            ),
        })
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    // The control plane's runtime; connections run on the workers'
    // (see `workers`).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match command {
            Command::Run(args) => run::run(args).await,
            Command::Forward(args) => forward::run(args).await,
            Command::Apply(_) | Command::Delete(_) | Command::Validate(_) | Command::Inspect(_) => {
                Ok(())
            }
        }
    });
    finish(result)
}

/// `error: ...` on stderr and a failure status; configuration refused at
/// start-up gets its own status, so a supervisor can tell it apart.
fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<crate::control::BadConfig>().is_some() {
                ExitCode::from(crate::control::EXIT_BAD_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
