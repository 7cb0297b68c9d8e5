//! Booting a kernel under qemu and reading the plan's result markers
//! off its serial console.
use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::initramfs::Cpio;
use super::{matrix_dir, Outcome, Plan};

/// Hardware virtualisation only where the CPU really offers it (a PVM
/// /dev/kvm without vmx/svm hangs stock kernels).
pub(super) fn accel() -> &'static str {
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
pub(super) fn boot(
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
pub(super) struct Serial {
    /// The plan line running now.
    current: Option<String>,
    /// Whether libtest named a failing test in it.
    named_failure: bool,
    begun: Vec<String>,
    done: bool,
}

impl Serial {
    /// Takes one console line into `o`; returns what to tell the user.
    pub(super) fn read(&mut self, o: &mut Outcome, line: &str) -> Option<String> {
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
    pub(super) fn finish(self, o: &mut Outcome, plan: Plan) {
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
