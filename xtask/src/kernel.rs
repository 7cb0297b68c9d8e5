//! The kernel matrix: the privileged tests on the Debian kernels users run,
//! each booted under qemu.
//!
//! For every series the newest Debian build is resolved with apt against a
//! private sources list (the system's apt state is untouched), downloaded,
//! and only its bzImage kept, in `~/.cache/gateway/kernels/<series>/`. The
//! test binaries, the gateway and `ip` go into one initramfs with a small
//! Rust `/init` (`tests/src/bin/guest-init.rs`), which runs a plan of tests
//! and powers off. Serial logs are kept in `target/kernel-matrix/`.
use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::util;

/// A kernel series and where Debian publishes its builds.
struct Series {
    name: &'static str,
    /// Which Debian release carries it (for the table).
    release: &'static str,
    sources: &'static [&'static str],
}

const SERIES: &[Series] = &[
    Series {
        name: "5.10",
        release: "Debian 11",
        sources: &[
            "deb http://deb.debian.org/debian bullseye main",
            "deb http://deb.debian.org/debian-security bullseye-security main",
        ],
    },
    Series {
        name: "6.1",
        release: "Debian 12",
        sources: &[
            "deb http://deb.debian.org/debian bookworm main",
            "deb http://deb.debian.org/debian-security bookworm-security main",
        ],
    },
    Series {
        name: "6.12",
        release: "Debian 13",
        sources: &[
            "deb http://deb.debian.org/debian trixie main",
            "deb http://deb.debian.org/debian-security trixie-security main",
        ],
    },
    Series {
        name: "latest",
        release: "Debian sid",
        sources: &["deb http://deb.debian.org/debian sid main"],
    },
];

/// The kernels `cargo xtask test` runs the quick plan on.
pub const QUICK: &[&str] = &["6.1", "6.12", "latest"];

pub fn series_names() -> Vec<&'static str> {
    SERIES.iter().map(|s| s.name).collect()
}

/// Which plan the guests run: `quick` (the regressions' canaries, in
/// `cargo xtask test`) or `full` (every scenario that fits in a guest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    Quick,
    Full,
}

impl Plan {
    fn name(self) -> &'static str {
        match self {
            Plan::Quick => "quick",
            Plan::Full => "full",
        }
    }

    /// Lines of `/plans/<name>`: `NAME<TAB>[VAR=VALUE ...] PROGRAM ARGS`.
    /// Test binaries run one test at a time (one vCPU).
    fn lines(self) -> Vec<String> {
        let t = "--test-threads=1";
        let mut lines = vec![
            format!("facts\t/tests/forward {t} --exact kernel_facts --nocapture"),
            format!("facts-fin\t/tests/lifecycle {t} --exact a_client_that_half_closed_before_insertion_is_served a_peer_fin_during_insertion_loses_nothing --nocapture"),
            format!("datapath\t/tests/datapath {t} sizes half_close early_data resets"),
            format!("forward\t/tests/forward {t} tcp_echo_line auto_says bulk_64mib_each_way_ebpf bulk_64mib_each_way_auto auto_moves half_closed_connection_waits"),
            format!("stress\tGATEWAY_TEST_SCALE=10 /tests/stress {t} mixed_ebpf mixed_auto"),
            format!("bulk\tGATEWAY_TEST_SCALE=10 /tests/bulk {t}"),
        ];
        if self == Plan::Full {
            lines.extend([
                format!("backpressure\tGATEWAY_TEST_SCALE=10 /tests/datapath {t} backpressure"),
                format!("forward-rest\t/tests/forward {t} --skip tcp_echo_line --skip auto_says --skip bulk_64mib_each_way_ebpf --skip bulk_64mib_each_way_auto --skip auto_moves --skip half_closed_connection_waits --skip kernel_facts --skip small_writes"),
                format!("lifecycle\tGATEWAY_TEST_SCALE=10 /tests/lifecycle {t} --skip a_client_that_half_closed --skip a_peer_fin_during_insertion"),
                format!("stress-rest\tGATEWAY_TEST_SCALE=10 /tests/stress {t} mixed_splice"),
            ]);
        }
        lines
    }
}

/// What one kernel did.
pub struct Outcome {
    pub series: String,
    pub release: String,
    pub version: String,
    pub passed: u64,
    pub failed: Vec<String>,
    /// Plan lines that did not end (a hang, a panic, a crash of the guest).
    pub unfinished: Vec<String>,
    pub seconds: f64,
    /// `fact:` lines the tests printed (what the kernel did at the edges).
    pub facts: Vec<String>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.unfinished.is_empty() && self.passed > 0
    }
}

fn matrix_dir() -> PathBuf {
    util::target_dir().join("kernel-matrix")
}

fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    std::env::var_os("XDG_CACHE_HOME")
        .map_or_else(|| home.join(".cache"), PathBuf::from)
        .join("gateway")
        .join("kernels")
}

/// Runs `plan` on each kernel in `names` and prints the table; fails if any
/// kernel failed.
pub fn run(names: &[&str], plan: Plan, write_docs: bool) -> anyhow::Result<()> {
    let series: Vec<&'static Series> = names
        .iter()
        .map(|n| {
            SERIES.iter().find(|s| s.name == *n).with_context(|| {
                format!("no kernel series {n:?}: one of {:?} or all", series_names())
            })
        })
        .collect::<anyhow::Result<_>>()?;
    ensure_qemu()?;
    fs::create_dir_all(matrix_dir())?;
    // Kernels download while the binaries build.
    let fetch = thread::spawn({
        let series = series.clone();
        move || {
            series
                .iter()
                .map(|s| (s.name, kernel(s)))
                .collect::<Vec<_>>()
        }
    });
    let initrd = initramfs()?;
    let kernels = fetch.join().expect("kernel fetch thread");
    let mut runnable = Vec::new();
    for ((name, k), s) in kernels.into_iter().zip(&series) {
        let (version, vmlinuz) = k.with_context(|| format!("kernel {name}"))?;
        runnable.push((*s, version, vmlinuz));
    }

    // Guests run side by side, one vCPU each, as many as there are cores.
    let width = thread::available_parallelism().map_or(1, |n| n.get());
    let mut outcomes = Vec::new();
    for chunk in runnable.chunks(width) {
        let handles: Vec<_> = chunk
            .iter()
            .map(|(s, version, vmlinuz)| {
                let (name, release) = (s.name.to_string(), s.release.to_string());
                let (version, vmlinuz, initrd) = (version.clone(), vmlinuz.clone(), initrd.clone());
                thread::spawn(move || boot(&name, &release, &version, &vmlinuz, &initrd, plan))
            })
            .collect();
        for h in handles {
            outcomes.push(h.join().expect("guest thread")?);
        }
    }
    let table = table(&outcomes, plan);
    println!("\n{table}");
    fs::write(matrix_dir().join(format!("{}.md", plan.name())), &table)?;
    if write_docs {
        update_docs(&table)?;
    }
    let bad: Vec<_> = outcomes
        .iter()
        .filter(|o| !o.ok())
        .map(|o| o.series.as_str())
        .collect();
    if !bad.is_empty() {
        bail!(
            "kernel matrix failed on {}: serial logs in {}",
            bad.join(", "),
            matrix_dir().display()
        );
    }
    Ok(())
}

fn ensure_qemu() -> anyhow::Result<()> {
    if util::quiet(Command::new("qemu-system-x86_64").arg("--version")) {
        return Ok(());
    }
    eprintln!("xtask: installing qemu-system-x86");
    let install = || {
        util::quiet(
            Command::new("apt-get")
                .args([
                    "install",
                    "-y",
                    "--no-install-recommends",
                    "qemu-system-x86",
                ])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    if !install() {
        util::run(Command::new("apt-get").args(["update", "-q"]))?;
        if !install() {
            bail!("could not install qemu-system-x86 (apt-get install -y qemu-system-x86)");
        }
    }
    Ok(())
}

/// apt options that keep everything in `dir`.
fn apt(tool: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(tool);
    for (k, v) in [
        ("Dir::Etc::SourceList", dir.join("sources.list")),
        ("Dir::Etc::SourceParts", PathBuf::from("/dev/null")),
        ("Dir::State::Lists", dir.join("lists")),
        ("Dir::Cache", dir.join("cache")),
        ("APT::Architecture", PathBuf::from("amd64")),
        ("APT::Sandbox::User", PathBuf::from("root")),
        // Only the package indices: not translations, not AppStream data.
        ("Acquire::Languages", PathBuf::from("none")),
        (
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled",
            PathBuf::from("false"),
        ),
        (
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled",
            PathBuf::from("false"),
        ),
        (
            "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled",
            PathBuf::from("false"),
        ),
        (
            "Acquire::IndexTargets::deb::CNF::DefaultEnabled",
            PathBuf::from("false"),
        ),
    ] {
        cmd.arg("-o").arg(format!("{k}={}", v.display()));
    }
    cmd
}

/// The newest Debian build of `s`: its version and a cached bzImage. Without
/// a network, the newest one cached earlier.
fn kernel(s: &Series) -> anyhow::Result<(String, PathBuf)> {
    let dir = cache_dir().join(s.name);
    let apt_dir = dir.join("apt");
    fs::create_dir_all(apt_dir.join("lists/partial"))?;
    fs::create_dir_all(apt_dir.join("cache/archives/partial"))?;
    fs::write(apt_dir.join("sources.list"), s.sources.join("\n") + "\n")?;
    match newest(s, &dir, &apt_dir) {
        Ok(found) => Ok(found),
        Err(e) => {
            let cached = cached(&dir);
            match cached {
                Some((version, path)) => {
                    eprintln!(
                        "xtask: kernel {}: cannot ask Debian ({e:#}); using the cached {version}",
                        s.name
                    );
                    Ok((version, path))
                }
                None => Err(e),
            }
        }
    }
}

fn cached(dir: &Path) -> Option<(String, PathBuf)> {
    let mut found: Vec<(std::time::SystemTime, String, PathBuf)> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix("vmlinuz-")?.to_string();
            Some((e.metadata().ok()?.modified().ok()?, version, e.path()))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, v, p)| (v, p))
}

fn newest(s: &Series, dir: &Path, apt_dir: &Path) -> anyhow::Result<(String, PathBuf)> {
    util::output(apt("apt-get", apt_dir).args(["-qq", "update"]))
        .context("apt-get update (private sources list)")?;
    // The metapackage depends on the current build's image package.
    let deps =
        util::output(apt("apt-cache", apt_dir).args(["depends", "linux-image-cloud-amd64"]))?;
    let version = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: linux-image-"))
        .find(|v| v.ends_with("-cloud-amd64"))
        .with_context(|| {
            format!("no kernel image in linux-image-cloud-amd64's dependencies:\n{deps}")
        })?
        .to_string();
    let vmlinuz = dir.join(format!("vmlinuz-{version}"));
    let veth = dir.join(format!("veth-{version}.ko"));
    if vmlinuz.exists() && veth.exists() {
        return Ok((version, vmlinuz));
    }
    // Older releases ship the image and its modules in
    // linux-image-V-unsigned, newer ones in linux-binary-unsigned-V and
    // linux-modules-V; the signed packages boot as well.
    let download = dir.join("download");
    let _ = fs::remove_dir_all(&download);
    fs::create_dir_all(&download)?;
    for pkg in [
        format!("linux-image-{version}-unsigned"),
        format!("linux-binary-unsigned-{version}"),
        format!("linux-modules-{version}"),
        format!("linux-image-{version}"),
        format!("linux-binary-{version}"),
    ] {
        if vmlinuz.exists() && veth.exists() {
            break;
        }
        eprintln!("xtask: kernel {}: fetching {pkg}", s.name);
        if !util::quiet(
            apt("apt-get", apt_dir)
                .current_dir(&download)
                .args(["-qq", "download", &pkg]),
        ) {
            continue;
        }
        let Some(deb) = fs::read_dir(&download)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
        else {
            continue;
        };
        if !vmlinuz.exists() {
            extract(&deb, "*/vmlinuz*", "cat", &vmlinuz);
        }
        if !veth.exists() {
            // Modules may be compressed; the guest gets them plain.
            for (glob, unpack) in [
                ("*/veth.ko", "cat"),
                ("*/veth.ko.xz", "xz -dc"),
                ("*/veth.ko.zst", "zstd -dc"),
                ("*/veth.ko.gz", "gzip -dc"),
            ] {
                if extract(&deb, glob, unpack, &veth) {
                    break;
                }
            }
        }
        let _ = fs::remove_file(&deb);
    }
    let _ = fs::remove_dir_all(&download);
    if !vmlinuz.exists() {
        bail!("no package of kernel {version} held a vmlinuz");
    }
    if !veth.exists() {
        bail!("no package of kernel {version} held veth.ko (the veth tests need it)");
    }
    Ok((version, vmlinuz))
}

/// Extracts the member of `deb` matching `glob` through `unpack` into
/// `to`; true if it held something.
fn extract(deb: &Path, glob: &str, unpack: &str, to: &Path) -> bool {
    let partial = to.with_extension("partial");
    let script = format!(
        "dpkg-deb --fsys-tarfile \"$1\" | tar -x -O --wildcards '{glob}' | {unpack} > \"$2\""
    );
    let _ = Command::new("sh")
        .args(["-c", &script, "sh"])
        .arg(deb)
        .arg(&partial)
        .stderr(Stdio::null())
        .status();
    if fs::metadata(&partial).is_ok_and(|m| m.len() > 1024) {
        fs::rename(&partial, to).is_ok()
    } else {
        let _ = fs::remove_file(&partial);
        false
    }
}

/// Builds the guest's binaries statically and packs them, `/init` and `ip`
/// (with the libraries it loads) into an uncompressed initramfs.
fn initramfs() -> anyhow::Result<PathBuf> {
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
fn add_ip(cpio: &mut Cpio) -> anyhow::Result<()> {
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
struct Cpio {
    out: Vec<u8>,
    ino: u32,
    dirs: std::collections::BTreeSet<String>,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
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

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        if self.dirs.insert(name.to_string()) {
            self.entry(name, 0o40755, (0, 0), &[]);
        }
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, (0, 0), data);
    }

    fn node(&mut self, name: &str, mode: u32, rdev: (u32, u32)) {
        self.entry(name, mode, rdev, &[]);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

/// Hardware virtualisation only where the CPU really offers it (a PVM
/// /dev/kvm without vmx/svm hangs stock kernels).
fn accel() -> &'static str {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or("");
    let hw = flags.split_whitespace().any(|f| f == "vmx" || f == "svm");
    let kvm = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if hw && kvm {
        "kvm"
    } else {
        "tcg"
    }
}

/// Boots one kernel with the initramfs, runs `plan`, and reads the result
/// markers off the serial console.
fn boot(
    series: &str,
    release: &str,
    version: &str,
    vmlinuz: &Path,
    initrd: &Path,
    plan: Plan,
) -> anyhow::Result<Outcome> {
    let per_line = Duration::from_secs(match plan {
        Plan::Quick => 300,
        Plan::Full => 600,
    });
    let limit = per_line * plan.lines().len() as u32 + Duration::from_secs(120);
    let log_path = matrix_dir().join(format!("{series}-{}.log", plan.name()));
    let mut log = fs::File::create(&log_path)?;
    let accel = accel();
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel",
        accel,
        "-cpu",
        if accel == "kvm" { "host" } else { "max" },
    ])
    .args(["-smp", "1", "-m", "2G", "-nodefaults", "-display", "none"])
    .args(["-serial", "stdio", "-no-reboot"])
    .arg("-kernel")
    .arg(vmlinuz)
    .arg("-append")
    .arg(format!(
        "console=ttyS0 quiet panic=-1 gw.plan={} gw.deadline={}",
        plan.name(),
        per_line.as_secs()
    ))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // The kernel unpacks concatenated archives in turn: the shared one, then
    // this kernel's modules.
    let mut modules = Cpio::default();
    modules.dir("modules");
    let veth = vmlinuz.with_file_name(format!("veth-{version}.ko"));
    modules.file(
        "modules/veth.ko",
        0o644,
        &fs::read(&veth).with_context(|| veth.display().to_string())?,
    );
    let mut bytes = fs::read(initrd)?;
    bytes.extend(modules.finish());
    let initrd = matrix_dir().join(format!("initrd-{series}.cpio"));
    fs::write(&initrd, bytes)?;
    cmd.arg("-initrd").arg(&initrd);
    eprintln!("xtask: kernel {series} ({version}): booting ({accel})");
    let start = Instant::now();
    let mut child = cmd.spawn().context("start qemu-system-x86_64")?;
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    let tx2 = tx.clone();
    thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx2.send(format!("qemu: {line}"));
        }
    });
    thread::spawn(move || {
        // The console writes CR LF; lines may hold invalid UTF-8.
        let mut r = BufReader::new(out);
        let mut buf = Vec::new();
        while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&buf)
                .trim_end_matches(['\r', '\n'])
                .to_string();
            buf.clear();
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut o = Outcome {
        series: series.to_string(),
        release: release.to_string(),
        version: version.to_string(),
        passed: 0,
        failed: Vec::new(),
        unfinished: Vec::new(),
        seconds: 0.0,
        facts: Vec::new(),
    };
    let mut serial = Serial::default();
    loop {
        let left = limit.saturating_sub(start.elapsed());
        match rx.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(line) => {
                let _ = writeln!(log, "{line}");
                if let Some(say) = serial.read(&mut o, &line) {
                    eprintln!("xtask: kernel {series}: {say}");
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if start.elapsed() >= limit {
            let _ = writeln!(
                log,
                "@@host: no result within {} s; qemu killed",
                limit.as_secs()
            );
            let _ = child.kill();
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    o.seconds = start.elapsed().as_secs_f64();
    serial.finish(&mut o, plan);
    Ok(o)
}

/// What the serial console has said so far: the result markers of
/// `guest-init` and libtest's lines between them.
#[derive(Default)]
struct Serial {
    /// The plan line running now.
    current: Option<String>,
    /// Whether libtest named a failing test in it.
    named_failure: bool,
    begun: Vec<String>,
    done: bool,
}

impl Serial {
    /// Takes one console line into `o`; returns what to tell the user.
    fn read(&mut self, o: &mut Outcome, line: &str) -> Option<String> {
        if let Some(m) = line.strip_prefix("@@gw ") {
            match m.split_whitespace().collect::<Vec<_>>().as_slice() {
                ["begin", name] => {
                    self.current = Some(name.to_string());
                    self.named_failure = false;
                    self.begun.push(name.to_string());
                }
                ["end", name, verdict, secs] => {
                    match *verdict {
                        "ok" => {}
                        // A binary that failed without libtest naming a
                        // test (it crashed) still counts.
                        "fail" if !self.named_failure => o.failed.push(format!("{name}: exit")),
                        "fail" => {}
                        _ => o.unfinished.push(format!("{name} ({verdict})")),
                    }
                    self.current = None;
                    return Some(format!("{name} {verdict} in {secs} s"));
                }
                ["done"] => self.done = true,
                _ => {}
            }
        } else if let Some(at) = line.find("fact: ") {
            // With --nocapture the line may start with libtest's
            // `test NAME ... `.
            o.facts.push(line[at + "fact: ".len()..].to_string());
        } else if let Some((test, result)) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.rsplit_once(" ... "))
        {
            match result.trim() {
                "ok" => o.passed += 1,
                r if r.starts_with("FAILED") => {
                    self.named_failure = true;
                    let plan_line = self.current.as_deref().unwrap_or_default();
                    o.failed.push(format!("{plan_line}: {test}"));
                }
                _ => {}
            }
        } else if ["Kernel panic", "BUG:", "WARNING:"]
            .iter()
            .any(|k| line.contains(k))
        {
            return Some(line.to_string());
        }
        None
    }

    /// After the guest is gone: plan lines that never ended or never began,
    /// and a missing power-off, are failures too.
    fn finish(self, o: &mut Outcome, plan: Plan) {
        if let Some(name) = self.current {
            o.unfinished.push(format!("{name} (no end: hang or crash)"));
        }
        for line in plan.lines() {
            let name = line.split('\t').next().unwrap_or_default();
            if !self.begun.iter().any(|b| b == name) {
                o.unfinished.push(format!("{name} (never started)"));
            }
        }
        if !self.done && o.unfinished.is_empty() {
            o.unfinished.push("power-off (no `done`)".to_string());
        }
    }
}

/// The markdown table docs/kernels.md holds.
fn table(outcomes: &[Outcome], plan: Plan) -> String {
    let date = util::output(Command::new("date").args(["-u", "+%Y-%m-%d"])).unwrap_or_default();
    let mut t = format!(
        "`cargo xtask test --kernel ...`, {}, qemu {} with one vCPU on this machine's {}.\n\n",
        date.trim(),
        accel(),
        cpu_model()
    );
    t.push_str(
        "| kernel | Debian build | plan | result | tests passed | time | edges seen (`kernel_facts`) |\n|---|---|---|---|---|---|---|\n",
    );
    for o in outcomes {
        let result = if o.ok() {
            "pass".to_string()
        } else {
            let mut why: Vec<String> = o.failed.clone();
            why.extend(o.unfinished.iter().cloned());
            format!("**FAIL**: {}", why.join("; "))
        };
        t.push_str(&format!(
            "| {} ({}) | {} | {} | {} | {} | {:.0} s | {} |\n",
            o.series,
            o.release,
            o.version,
            plan.name(),
            result,
            o.passed,
            o.seconds,
            facts(&o.facts)
        ));
    }
    t
}

/// The `kernel_facts` line in words: how the bytes queued before insertion
/// travelled, and how many bare FINs reached the verdict.
fn facts(lines: &[String]) -> String {
    let mut out = Vec::new();
    for line in lines {
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
                .unwrap_or("?")
                .to_string()
        };
        if line.starts_with("kernel=") {
            out.push(format!(
                "queued before insertion: {} of {} bytes redirected, {} moved by the agent; {} zero-length FIN skbs",
                field("redirected"),
                field("bytes"),
                field("agent_copied"),
                field("empty_fin_skbs")
            ));
        } else {
            out.push(line.clone());
        }
    }
    if out.is_empty() {
        "-".into()
    } else {
        out.join("; ")
    }
}

fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "CPU".into())
}

/// Replaces the table between docs/kernels.md's kernel-matrix markers.
fn update_docs(table: &str) -> anyhow::Result<()> {
    let path = util::root().join("docs/kernels.md");
    let text = fs::read_to_string(&path)?;
    let (begin, end) = ("<!-- kernel-matrix:begin -->", "<!-- kernel-matrix:end -->");
    let (Some(a), Some(b)) = (text.find(begin), text.find(end)) else {
        bail!("docs/kernels.md has no {begin} ... {end} section");
    };
    let new = format!("{}{begin}\n{table}{}", &text[..a], &text[b..]);
    fs::write(&path, new)?;
    eprintln!("xtask: docs/kernels.md kernel table updated");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome() -> Outcome {
        Outcome {
            series: "6.1".into(),
            release: "Debian 12".into(),
            version: "6.1.0-1-cloud-amd64".into(),
            passed: 0,
            failed: Vec::new(),
            unfinished: Vec::new(),
            seconds: 0.0,
            facts: Vec::new(),
        }
    }

    fn read(log: &str, plan: Plan) -> Outcome {
        let mut o = outcome();
        let mut serial = Serial::default();
        for line in log.lines() {
            serial.read(&mut o, line);
        }
        serial.finish(&mut o, plan);
        o
    }

    /// Every quick plan line begun and ended ok, with `ends` in between.
    fn quick_log(body: impl Fn(&str) -> String) -> String {
        let mut log = String::from("@@gw kernel 6.1.0-1-cloud-amd64\n");
        for line in Plan::Quick.lines() {
            let name = line.split('\t').next().unwrap_or_default();
            log += &format!("@@gw begin {name}\n{}\n", body(name));
        }
        log + "@@gw done\n"
    }

    #[test]
    fn a_clean_run_passes_and_keeps_its_facts() {
        let log = quick_log(|name| {
            let fact = if name == "facts" {
                "test kernel_facts ... fact: kernel=6.1 bytes=3000 redirected=3000\nok\n"
            } else {
                "test a ... ok\ntest b ... ok\n"
            };
            format!("{fact}@@gw end {name} ok 1.0")
        });
        let o = read(&log, Plan::Quick);
        assert!(o.ok(), "{:?} {:?}", o.failed, o.unfinished);
        assert_eq!(o.passed, 2 * (Plan::Quick.lines().len() as u64 - 1));
        assert_eq!(o.facts, ["kernel=6.1 bytes=3000 redirected=3000"]);
    }

    #[test]
    fn a_named_failure_is_reported_once_and_a_crash_by_its_line() {
        let log = quick_log(|name| match name {
            "datapath" => "test sizes ... FAILED\n@@gw end datapath fail 3.0".into(),
            "stress" => "@@gw end stress fail 3.0".into(),
            _ => format!("test a ... ok\n@@gw end {name} ok 1.0"),
        });
        let o = read(&log, Plan::Quick);
        assert!(!o.ok());
        assert_eq!(o.failed, ["datapath: sizes", "stress: exit"]);
        assert!(o.unfinished.is_empty(), "{:?}", o.unfinished);
    }

    #[test]
    fn a_hang_a_timeout_and_a_missing_power_off_are_failures() {
        let log =
            "@@gw begin facts\n@@gw end facts timeout 300.0\n@@gw begin datapath\ntest a ... ok\n";
        let o = read(log, Plan::Quick);
        assert!(!o.ok());
        assert!(
            o.unfinished.contains(&"facts (timeout)".to_string()),
            "{:?}",
            o.unfinished
        );
        assert!(
            o.unfinished
                .contains(&"datapath (no end: hang or crash)".to_string()),
            "{:?}",
            o.unfinished
        );
        assert!(o
            .unfinished
            .iter()
            .any(|u| u.starts_with("stress (never started)")));
    }

    #[test]
    fn the_initramfs_is_newc_with_a_trailer() {
        let mut c = Cpio::default();
        c.dir("bin");
        c.file("bin/x", 0o755, b"hello");
        let out = c.finish();
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        // The name follows the 110-byte header; data after padding to 4.
        assert_eq!(&out[110..114], b"bin\0");
        let file = out
            .windows(6)
            .skip(1)
            .position(|w| w == b"070701")
            .expect("second entry")
            + 1;
        assert_eq!(&out[file + 110..file + 116], b"bin/x\0");
        assert_eq!(&out[file + 116..file + 121], b"hello");
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
