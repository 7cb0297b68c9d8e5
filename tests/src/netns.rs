//! Network namespaces and veth pairs the tests create for themselves, with
//! names unique to this process, deleted when their guard drops.
use std::{
    fs::File,
    os::fd::AsRawFd as _,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

static NEXT: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace, with `lo` up.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        if n == 0 {
            remove_orphans();
        }
        let name = format!("gwt-{}-{n}-{tag}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    fn file(&self) -> File {
        File::open(format!("/run/netns/{}", self.name)).expect("open netns")
    }

    /// Runs `f` on a thread inside the namespace; sockets it creates stay
    /// there and may be used from any thread afterwards.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = self.file();
        thread::spawn(move || {
            // SAFETY: setns on a descriptor we hold, for this thread only.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in netns")
    }

    /// Makes `cmd` start inside the namespace.
    pub fn command(&self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt as _;
        let ns = self.file();
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// Deletes namespaces left by test processes that died without cleaning up
/// (killed by a signal): their names carry the process id.
fn remove_orphans() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("gwt-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Joins `a` and `b` with a veth pair; `a` gets `addr_a`, `b` gets `addr_b`
/// (both /24).
pub fn link(a: &Netns, addr_a: &str, b: &Netns, addr_b: &str) {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let (va, vb) = (format!("v{n}a"), format!("v{n}b"));
    ip(&[
        "link", "add", &va, "netns", &a.name, "type", "veth", "peer", "name", &vb, "netns", &b.name,
    ]);
    for (ns, dev, addr) in [(a, &va, addr_a), (b, &vb, addr_b)] {
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            dev,
        ]);
        ip(&["-n", &ns.name, "link", "set", dev, "up"]);
    }
}

/// client (10.77.1.1) -- (10.77.1.2) gateway (10.77.2.2) -- (10.77.2.1) backend
pub struct Topology {
    pub client: Netns,
    pub gateway: Netns,
    pub backend: Netns,
}

impl Topology {
    pub const CLIENT: &'static str = "10.77.1.1";
    pub const GATEWAY_FRONT: &'static str = "10.77.1.2";
    pub const GATEWAY_BACK: &'static str = "10.77.2.2";
    pub const BACKEND: &'static str = "10.77.2.1";

    pub fn new() -> Topology {
        let t = Topology {
            client: Netns::new("c"),
            gateway: Netns::new("g"),
            backend: Netns::new("b"),
        };
        link(&t.client, Self::CLIENT, &t.gateway, Self::GATEWAY_FRONT);
        link(&t.gateway, Self::GATEWAY_BACK, &t.backend, Self::BACKEND);
        t
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}
