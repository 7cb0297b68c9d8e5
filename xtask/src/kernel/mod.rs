//! The kernel matrix: the privileged tests on the Debian kernels users run,
//! each booted under qemu.
//!
//! For every series the newest Debian build is resolved with apt against a
//! private sources list (the system's apt state is untouched), downloaded,
//! and only its bzImage kept, in `~/.cache/gateway/kernels/<series>/`. The
//! test binaries, the gateway and `ip` go into one initramfs with a small
//! Rust `/init` (`tests/src/bin/guest-init.rs`), which runs a plan of tests
//! and powers off. Serial logs are kept in `target/kernel-matrix/`.
mod debs;
mod initramfs;
mod qemu;

use debs::{ensure_qemu, kernel};
use initramfs::initramfs;
use qemu::{accel, boot};

use std::{fs, path::PathBuf, process::Command, thread};

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
    use super::{initramfs::Cpio, qemu::Serial};

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
