//! `/init` of the initramfs `cargo xtask test --kernel` boots under qemu.
//!
//! Mounts what the tests need, brings `lo` up, runs each line of
//! `/plans/<gw.plan>` (`NAME<TAB>[VAR=VALUE...] PROGRAM ARGS...`) with a deadline, and powers the machine off.
//! Everything goes to the console (the serial port), framed by markers the
//! host reads:
//!
//! ```text
//! @@gw kernel 6.1.0-41-cloud-amd64
//! @@gw begin datapath
//! ... the test binary's own output ...
//! @@gw end datapath ok 41.2
//! @@gw done
//! ```
//!
//! A missing `end` or `done` (a panic, a hang) is the host's to notice.
use std::{
    ffi::CString,
    io::Write as _,
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    process::{Command, ExitStatus},
    thread,
    time::{Duration, Instant},
};

fn main() {
    mounts();
    load_modules();
    run_quiet(Command::new("/sbin/ip").args(["link", "set", "lo", "up"]));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    say(&format!("kernel {}", kernel.trim()));
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    say(&format!("cpus {cpus}"));

    let plan = std::fs::read_to_string(format!(
        "/plans/{}",
        param("gw.plan").unwrap_or("quick".into())
    ))
    .unwrap_or_default();
    for line in plan.lines().filter(|l| !l.trim().is_empty()) {
        let Some((name, rest)) = line.split_once('\t') else {
            say(&format!("bad plan line {line:?}"));
            continue;
        };
        let mut words = rest.split_whitespace().peekable();
        let mut env = Vec::new();
        while let Some((k, v)) = words.peek().and_then(|w| w.split_once('=')) {
            env.push((k.to_string(), v.to_string()));
            words.next();
        }
        let Some(program) = words.next() else {
            continue;
        };
        say(&format!("begin {name}"));
        let start = Instant::now();
        let result = run_with_deadline(
            Command::new(program)
                .args(words)
                .env("PATH", "/bin:/sbin:/usr/bin:/usr/sbin")
                .env("GATEWAY_BIN_DIR", "/bin")
                .env("GATEWAY_IN_GUEST", "1")
                .env("RUST_BACKTRACE", "1")
                .envs(env)
                .current_dir("/tmp"),
            deadline(),
        );
        let verdict = match result {
            Some(s) if s.success() => "ok",
            Some(_) => "fail",
            None => "timeout",
        };
        say(&format!(
            "end {name} {verdict} {:.1}",
            start.elapsed().as_secs_f64()
        ));
    }
    say("done");
    // SAFETY: plain system calls; nothing else runs.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
}

/// `KEY=VALUE` from the kernel command line.
fn param(key: &str) -> Option<String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .map(String::from)
}

/// Longest one plan line may run (`gw.deadline=SECONDS` on the kernel
/// command line; 600 s otherwise).
fn deadline() -> Duration {
    let secs = param("gw.deadline")
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    Duration::from_secs(secs)
}

fn say(what: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "@@gw {what}");
    let _ = out.flush();
}

fn mounts() {
    for (what, dir, fstype) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
        ("tmpfs", "/run", "tmpfs"),
        ("tmpfs", "/tmp", "tmpfs"),
        ("bpf", "/sys/fs/bpf", "bpf"),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2"),
    ] {
        let _ = std::fs::create_dir_all(dir);
        let c = |s: &str| CString::new(s).expect("no NUL");
        let (what, dir_c, fstype) = (c(what), c(dir), c(fstype));
        // SAFETY: valid C strings, no data argument.
        let rc = unsafe {
            libc::mount(
                what.as_ptr(),
                dir_c.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            say(&format!("mount {dir}: {}", std::io::Error::last_os_error()));
        }
    }
}

/// Loads every `/modules/*.ko` (veth: the kernels are modular, the
/// initramfs has no module tools).
fn load_modules() {
    let Ok(dir) = std::fs::read_dir("/modules") else {
        return;
    };
    for e in dir.flatten() {
        let path = e.path();
        let Ok(image) = std::fs::read(&path) else {
            continue;
        };
        let params = CString::default();
        // SAFETY: init_module reads `image` and the empty parameter string.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_init_module,
                image.as_ptr(),
                image.len(),
                params.as_ptr(),
            )
        };
        if rc != 0 {
            say(&format!(
                "module {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
    }
}

fn run_quiet(cmd: &mut Command) {
    if let Err(e) = cmd.status() {
        say(&format!("{cmd:?}: {e}"));
    }
}

/// Runs `cmd` in a process group of its own; on the deadline the whole
/// group (the test and the gateways it started) is killed and `None`
/// returned.
fn run_with_deadline(cmd: &mut Command, limit: Duration) -> Option<ExitStatus> {
    let mut child = match cmd.process_group(0).spawn() {
        Ok(c) => c,
        Err(e) => {
            say(&format!("cannot start {cmd:?}: {e}"));
            return Some(ExitStatus::from_raw(127 << 8));
        }
    };
    let pid = child.id() as i32;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if start.elapsed() < limit => thread::sleep(Duration::from_millis(100)),
            _ => break None,
        }
    };
    // Whatever the outcome, nothing of this line may outlive it.
    // SAFETY: signalling a process group we created.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let _ = child.wait();
    // As PID 1 we inherit every orphan: reap them.
    // SAFETY: non-blocking wait for any child.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
    status
}
