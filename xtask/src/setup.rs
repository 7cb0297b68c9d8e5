//! `cargo xtask setup`: everything a fresh machine lacks to build and test the
//! gateway. Idempotent; each step first checks whether there is work to do.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::util::{self, quiet};

/// bpf-linker release known to build against the nightly's LLVM here.
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> anyhow::Result<()> {
    nightly_rust_src()?;
    bpf_linker()?;
    bpffs()?;
    debian_tools()?;
    Ok(())
}

fn nightly_rust_src() -> anyhow::Result<()> {
    let installed = util::output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]));
    match installed {
        Ok(list) if list.lines().any(|l| l.starts_with("rust-src")) => Ok(()),
        Ok(_) => util::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ])),
        Err(_) => util::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src,clippy,rustfmt",
        ])),
    }
}

fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("gateway")
}

/// The nightly toolchain's own libLLVM, e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`.
fn nightly_libllvm() -> anyhow::Result<PathBuf> {
    let sysroot = util::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    std::fs::read_dir(&lib)
        .with_context(|| format!("cannot list {}", lib.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))
}

/// bpf-linker links against the nightly's libLLVM through this directory:
/// `libLLVM.so` for the build, the library's own soname for run time.
fn llvm_prefix(libllvm: &Path) -> anyhow::Result<PathBuf> {
    let prefix = cache_dir().join("llvm");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("cannot create {}", lib.display()))?;
    let soname = libllvm.file_name().context("libLLVM has no file name")?;
    for link in [lib.join("libLLVM.so"), lib.join(soname)] {
        if std::fs::read_link(&link).ok().as_deref() != Some(libllvm) {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(libllvm, &link)
                .with_context(|| format!("cannot link {}", link.display()))?;
        }
    }
    Ok(prefix)
}

fn bpf_linker() -> anyhow::Result<()> {
    let libllvm = nightly_libllvm()?;
    // Refresh the links first: a bpf-linker built earlier finds its libLLVM
    // through them.
    let prefix = llvm_prefix(&libllvm)?;
    if quiet(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    let name = libllvm
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let major = name
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .filter(|m| m.chars().all(|c| c.is_ascii_digit()) && !m.is_empty())
        .with_context(|| format!("cannot tell the LLVM version of {name}"))?;
    eprintln!("xtask: building bpf-linker against {name} (a few minutes, once)");
    util::run(
        util::cargo()
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix),
    )?;
    if !quiet(Command::new("bpf-linker").arg("--version")) {
        bail!("bpf-linker was installed but does not run (is ~/.cargo/bin on PATH?)");
    }
    Ok(())
}

fn bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("bpf"))
    {
        return Ok(());
    }
    if !util::is_root() {
        eprintln!("xtask: bpffs is not mounted and mounting it needs root; skipping");
        return Ok(());
    }
    // A container build, say, may not mount: the agent then runs unpinned,
    // and says so.
    if let Err(e) = util::run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"])) {
        eprintln!("xtask: cannot mount bpffs ({e:#}); the maps will not be pinned");
    }
    Ok(())
}

/// Debian packages the tests and the demo use: each with the shell check
/// that says it is there.
fn debian_tools() -> anyhow::Result<()> {
    let wanted = [
        ("command -v ip", "iproute2"),
        // The Prometheus project's own parser of its text format, which
        // the metrics tests read `/metrics` with.
        (
            "/usr/bin/python3 -c 'import prometheus_client.parser'",
            "python3-prometheus-client",
        ),
        // The manifests' validator is installed in a virtualenv.
        ("/usr/bin/python3 -c 'import ensurepip'", "python3-venv"),
        // The Kubernetes tests drive their API server with kubectl.
        ("command -v kubectl", "kubernetes-client"),
    ];
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(check, _)| !quiet(Command::new("sh").args(["-c", check])))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !util::is_root() {
        bail!(
            "missing packages {}: install them as root",
            missing.join(" ")
        );
    }
    util::run(Command::new("apt-get").arg("update").arg("-q"))?;
    util::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
