use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// Runs `cmd` in the workspace root, echoing it, and fails on a non-zero exit.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    cmd.current_dir(root());
    eprintln!("xtask: {}", show(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("failed to start `{}`", show(cmd)))?;
    if !status.success() {
        bail!("`{}` failed: {status}", show(cmd));
    }
    Ok(())
}

/// Runs `cmd` quietly; true if it exits zero.
pub fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("failed to start `{}`", show(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            show(cmd),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The debug gateway with the fault hooks the tests and the soak drive.
fn build_for_tests() -> anyhow::Result<()> {
    run(cargo().args([
        "build",
        "--package",
        "gateway-user",
        "--features",
        "test-hooks",
    ]))
}

pub fn build(release: bool) -> anyhow::Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "--package", "gateway-user"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)
}

pub fn bin(release: bool, name: &str) -> PathBuf {
    target_dir()
        .join(if release { "release" } else { "debug" })
        .join(name)
}

pub fn run_gateway(release: bool, args: &[String]) -> anyhow::Result<()> {
    let gateway = bin(release, "gateway");
    let mut cmd = if is_root() {
        Command::new(&gateway)
    } else {
        let mut c = Command::new("sudo");
        c.arg("-E").arg(&gateway);
        c
    };
    cmd.args(args);
    run(&mut cmd)
}

pub fn lint() -> anyhow::Result<()> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "gateway-ebpf",
        "--all-targets",
        "--",
        "--deny",
        "warnings",
    ]))?;
    // The eBPF crate on its own, for its own target: a workspace-wide pass
    // would unify features with userspace.
    let mut ebpf = Command::new("rustup");
    ebpf.args([
        "run",
        "nightly",
        "cargo",
        "clippy",
        "--package",
        "gateway-ebpf",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--target-dir",
    ])
    .arg(target_dir().join("ebpf-clippy"))
    .args(["--", "--deny", "warnings"])
    .env_remove("RUSTC")
    .env_remove("RUSTC_WORKSPACE_WRAPPER");
    run(&mut ebpf)
}

pub fn test(args: &[String]) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the tests load BPF programs and create network namespaces: run them as root");
    }
    // `cargo test` below does not rebuild the binaries (gateway-user has no
    // integration tests), so the ones built here are what the tests start.
    build_for_tests()?;
    let mut cmd = cargo();
    // The bench's own unit tests (parsing, report) too.
    cmd.args(["test", "--workspace", "--exclude", "gateway-ebpf"])
        .args(args)
        .current_dir(root())
        .stdout(Stdio::piped());
    eprintln!("xtask: {}", show(&cmd));
    let mut child = cmd.spawn().context("failed to start `cargo test`")?;
    // Pass the output through, adding up every test binary's result line, so
    // the run ends with one line for all of them.
    let mut total = [0u64; 3];
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            println!("{line}");
            let Some(rest) = line.strip_prefix("test result: ") else {
                continue;
            };
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(what), Some(n)) = (words.next(), words.next()) else {
                    continue;
                };
                let slot = match what {
                    "passed" => 0,
                    "failed" => 1,
                    "ignored" => 2,
                    _ => continue,
                };
                total[slot] += n.parse::<u64>().unwrap_or(0);
            }
        }
    }
    let status = child.wait().context("failed to wait for `cargo test`")?;
    println!(
        "{} passed, {} failed, {} skipped",
        total[0], total[1], total[2]
    );
    if !status.success() {
        bail!("`cargo test` failed: {status}");
    }
    Ok(())
}

pub fn soak(minutes: f64, seed: Option<u64>) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the soak loads BPF programs and creates network namespaces: run it as root");
    }
    build_for_tests()?;
    run(cargo().args(["build", "--package", "gateway-tests", "--bin", "soak"]))?;
    let mut cmd = Command::new(bin(false, "soak"));
    cmd.arg(minutes.to_string());
    if let Some(seed) = seed {
        cmd.arg(seed.to_string());
    }
    run(&mut cmd)
}

/// A virtualenv under target/ with `package` (pinned) installed, made once;
/// returns its directory.
pub fn venv(name: &str, package: &str) -> anyhow::Result<PathBuf> {
    let venv = target_dir().join(name);
    let stamp = venv.join(".installed");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(package) {
        return Ok(venv);
    }
    run(Command::new("/usr/bin/python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv))
    .context("cannot make a virtualenv (Debian: python3-venv)")?;
    run(Command::new(venv.join("bin").join("pip")).args(["install", "--quiet", package]))
        .with_context(|| format!("cannot install {package} in {}", venv.display()))?;
    std::fs::write(&stamp, package).with_context(|| format!("cannot write {}", stamp.display()))?;
    Ok(venv)
}

/// kmock, the Kubernetes API emulator the `--source kubernetes` tests run
/// (tests/kube/apiserver.py), in target/kmock-venv.
pub const KMOCK: &str = "kmock==0.8";
