//! The guest's root: the test binaries, the gateway and `ip` in a newc
//! cpio archive with a small Rust `/init`.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};

use super::{matrix_dir, Plan};
use crate::util;

/// Builds the guest's binaries statically and packs them, `/init` and `ip`
/// (with the libraries it loads) into an uncompressed initramfs.
pub(super) fn initramfs() -> anyhow::Result<PathBuf> {
    let target_dir = util::target_dir().join("guest");
    let triple = "x86_64-unknown-linux-gnu";
    let mut build = util::cargo();
    build
        .args(["build", "--release", "--target", triple])
        .args(["--package", "gateway-user", "--package", "gateway-tests"])
        .args(["--features", "gateway-user/test-hooks"])
        .args([
            "--bins",
            "--tests",
            "--message-format=json-render-diagnostics",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static",
        )
        // Small binaries: the initramfs lives in the guest's memory.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .current_dir(util::root())
        .stdout(Stdio::piped());
    eprintln!("xtask: building static binaries for the guests");
    let out = build.output().context("cargo build for the guests")?;
    if !out.status.success() {
        bail!("cargo build for the guests failed");
    }
    // Test executables by target name, binaries by name.
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(exe), Some(name), Some(kinds)) = (
            msg["executable"].as_str(),
            msg["target"]["name"].as_str(),
            msg["target"]["kind"].as_array(),
        ) else {
            continue;
        };
        let is_test = msg["profile"]["test"].as_bool() == Some(true);
        let dir = match (is_test, kinds.iter().any(|k| k == "test")) {
            (true, true) => "tests",
            (false, false) => "bin",
            _ => continue,
        };
        files.insert(format!("{dir}/{name}"), PathBuf::from(exe));
    }
    let mut cpio = Cpio::default();
    for d in [
        "bin", "sbin", "tests", "plans", "dev", "proc", "sys", "run", "tmp", "etc",
    ] {
        cpio.dir(d);
    }
    cpio.node("dev/console", 0o20600, (5, 1));
    let init = files
        .get("bin/guest-init")
        .context("guest-init was not built")?;
    cpio.file("init", 0o755, &fs::read(init)?);
    for (path, exe) in &files {
        if path.starts_with("tests/") || ["bin/gateway", "bin/tcp-echo"].contains(&path.as_str()) {
            cpio.file(
                path,
                0o755,
                &fs::read(exe).with_context(|| exe.display().to_string())?,
            );
        }
    }
    add_ip(&mut cpio)?;
    for plan in [Plan::Quick, Plan::Full] {
        cpio.file(
            &format!("plans/{}", plan.name()),
            0o644,
            (plan.lines().join("\n") + "\n").as_bytes(),
        );
    }
    let path = matrix_dir().join("initrd.cpio");
    fs::write(&path, cpio.finish()).with_context(|| path.display().to_string())?;
    Ok(path)
}

/// `ip` (iproute2, which the tests use for namespaces and veth pairs) with
/// its loader and libraries at the paths it was linked against.
pub(super) fn add_ip(cpio: &mut Cpio) -> anyhow::Result<()> {
    let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("ip (iproute2) is not installed")?;
    cpio.file("sbin/ip", 0o755, &fs::read(ip)?);
    let ldd = util::output(Command::new("ldd").arg(ip))?;
    for line in ldd.lines() {
        let lib = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|w| w.starts_with('/')),
        };
        let Some(lib) = lib.filter(|l| l.starts_with('/')) else {
            continue;
        };
        let rel = lib.trim_start_matches('/');
        let mut parent = String::new();
        for part in Path::new(rel).parent().into_iter().flat_map(|p| p.iter()) {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(&part.to_string_lossy());
            cpio.dir(&parent);
        }
        cpio.file(rel, 0o755, &fs::read(lib).with_context(|| lib.to_string())?);
    }
    Ok(())
}

/// A newc cpio archive, as the kernel unpacks into its initial root.
#[derive(Default)]
pub(super) struct Cpio {
    out: Vec<u8>,
    ino: u32,
    dirs: std::collections::BTreeSet<String>,
}

impl Cpio {
    pub(super) fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            if mode & 0o40000 != 0 { 2 } else { 1 },
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    pub(super) fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    pub(super) fn dir(&mut self, name: &str) {
        if self.dirs.insert(name.to_string()) {
            self.entry(name, 0o40755, (0, 0), &[]);
        }
    }

    pub(super) fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, (0, 0), data);
    }

    pub(super) fn node(&mut self, name: &str, mode: u32, rdev: (u32, u32)) {
        self.entry(name, mode, rdev, &[]);
    }

    pub(super) fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}
