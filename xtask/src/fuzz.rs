//! `cargo xtask fuzz`: the config layer's fuzz targets (tests/fuzz), seeded
//! with every YAML fixture the project has, each run for a while with
//! libFuzzer through `cargo fuzz` on the nightly toolchain.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::util::{root, run};

/// The targets, as `tests/fuzz/Cargo.toml` names them.
pub const TARGETS: [&str; 5] = ["config", "changes", "admin", "state", "limits"];
/// A run longer than this for one input is a hang (generous: on a loaded
/// machine a millisecond input was once descheduled past 10 s).
const TIMEOUT_SECONDS: u32 = 30;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long each target runs.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Only these targets (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub target: Vec<String>,
}

fn fuzz_dir() -> PathBuf {
    root().join("tests/fuzz")
}

/// `cargo +nightly ARGS` in a clean environment: what the outer cargo set
/// for its own toolchain and package (RUSTC, CARGO_*, LD_LIBRARY_PATH...)
/// would otherwise reach cargo fuzz's nested builds.
fn nightly(args: &[&str]) -> Command {
    let mut c = Command::new("cargo");
    c.arg("+nightly").args(args).env_clear();
    for keep in [
        "PATH",
        "HOME",
        "USER",
        "TERM",
        "RUSTUP_HOME",
        "CARGO_HOME",
        "TMPDIR",
    ] {
        if let Some(v) = std::env::var_os(keep) {
            c.env(keep, v);
        }
    }
    c
}

/// `cargo fuzz`, installed once (it is a cargo subcommand from crates.io).
fn cargo_fuzz() -> anyhow::Result<()> {
    let found = nightly(&["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        run(Command::new("cargo").args(["install", "--locked", "cargo-fuzz@0.13.2"]))
            .context("cannot install cargo-fuzz")?;
    }
    Ok(())
}

/// Every YAML and JSON fixture: the seed's files as the tests keep them,
/// the examples, the manifests.
fn fixtures() -> anyhow::Result<Vec<(String, String)>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p
                .extension()
                .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
            {
                out.push(p);
            }
        }
    }
    let mut paths = Vec::new();
    for d in ["gateway-user/src/istio/testdata", "manifests"] {
        walk(&root().join(d), &mut paths);
    }
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(&p).with_context(|| p.display().to_string())?;
        let name = p.strip_prefix(root()).unwrap_or(&p).display().to_string();
        out.push((name, text));
    }
    if out.is_empty() {
        bail!("no fixtures found to seed the fuzzers");
    }
    Ok(out)
}

/// Each target's seeds, from the fixtures and the committed seeds
/// (tests/fuzz/seeds/TARGET).
fn seeds(target: &str, fixtures: &[(String, String)]) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out: Vec<Vec<u8>> = match target {
        "config" | "limits" => fixtures
            .iter()
            .map(|(_, t)| t.clone().into_bytes())
            .collect(),
        // Each fixture after the one before: a change on top of a store.
        "changes" => fixtures
            .windows(2)
            .map(|w| format!("{}\n=====\n{}", w[0].1, w[1].1).into_bytes())
            .collect(),
        "admin" => fixtures
            .iter()
            .map(|(name, text)| {
                serde_json::json!({
                    "op": "apply",
                    "namespace": "istio-io-tcp-traffic-shifting",
                    "files": [{"name": name, "text": text}],
                })
                .to_string()
                .into_bytes()
            })
            .collect(),
        _ => Vec::new(),
    };
    let committed = fuzz_dir().join("seeds").join(target);
    if let Ok(entries) = std::fs::read_dir(&committed) {
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            out.push(std::fs::read(&f).with_context(|| f.display().to_string())?);
        }
    }
    Ok(out)
}

/// Runs the targets for `minutes` each; prints each one's executions.
pub fn run_all(args: &Args) -> anyhow::Result<()> {
    cargo_fuzz()?;
    let targets: Vec<&str> = if args.target.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in &args.target {
            if !TARGETS.contains(&t.as_str()) {
                bail!("no fuzz target {t:?} (targets: {})", TARGETS.join(", "));
            }
        }
        args.target.iter().map(String::as_str).collect()
    };
    let fixtures = fixtures()?;
    run(nightly(&["fuzz", "build", "-O", "--fuzz-dir"]).arg(fuzz_dir()))?;
    let seconds = (args.minutes * 60.0).max(1.0).round() as u64;
    let mut report = BTreeMap::new();
    for t in &targets {
        let corpus = fuzz_dir().join("corpus").join(t);
        std::fs::create_dir_all(&corpus)?;
        for (i, s) in seeds(t, &fixtures)?.into_iter().enumerate() {
            std::fs::write(corpus.join(format!("seed-{i:03}")), s)?;
        }
        eprintln!("xtask: fuzzing {t} for {seconds} s");
        let out = nightly(&["fuzz", "run", "-O", "--fuzz-dir"])
            .arg(fuzz_dir())
            .arg(t)
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-timeout={TIMEOUT_SECONDS}"))
            .arg("-rss_limit_mb=2048")
            .arg("-print_final_stats=1")
            .current_dir(fuzz_dir())
            .output()
            .context("cannot run cargo fuzz")?;
        let log = String::from_utf8_lossy(&out.stderr);
        let stat = |name: &str| {
            log.lines()
                .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| "?".into())
        };
        let runs = stat("number_of_executed_units");
        let per_second = stat("average_exec_per_sec");
        if !out.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "fuzz target {t} failed after {runs} runs (the input is under \
                 tests/fuzz/artifacts/{t}/; make it a regression test):\n{}",
                tail.join("\n")
            );
        }
        eprintln!("xtask: {t}: {runs} runs, {per_second}/s, no crash or hang");
        report.insert(*t, (runs, per_second));
    }
    println!("| target | seconds | runs | runs/s |");
    println!("|---|---|---|---|");
    for (t, (runs, per_second)) in report {
        println!("| {t} | {seconds} | {runs} | {per_second} |");
    }
    Ok(())
}
