//! A Kubernetes API for `gateway run --source kubernetes`: kmock's
//! emulator behind the thin front in `tests/kube/apiserver.py` (which says
//! where kmock differs from a real API server and what the front adds),
//! driven with the real `kubectl`.
//!
//! The emulator keeps the objects; the front is what the agent and kubectl
//! talk to, so killing it and starting it again on the same port is the
//! API server going away and coming back with its objects intact.
use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::{
    agent::{free_port_on, workspace, Output, TempDir},
    Process,
};

/// The Python with kmock in it: `GATEWAY_KMOCK_PYTHON`, else the
/// virtualenv `cargo xtask setup` makes.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("GATEWAY_KMOCK_PYTHON") {
        return PathBuf::from(p);
    }
    let p = workspace().join("target/kmock-venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask setup` (it installs kmock in a virtualenv)",
        p.display()
    );
    p
}

fn script() -> PathBuf {
    workspace().join("tests/kube/apiserver.py")
}

fn start(args: &[String]) -> Process {
    let mut cmd = Command::new(python());
    cmd.arg(script()).args(args);
    Process::spawn(&mut cmd, |line| {
        line.starts_with("listening on").then(|| line.to_string())
    })
    .0
}

/// The emulator and its front, and a kubeconfig for them.
pub struct ApiServer {
    _emulator: Process,
    front: Option<Process>,
    emulator_port: u16,
    pub port: u16,
    pub kubeconfig: PathBuf,
    dir: TempDir,
}

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

impl ApiServer {
    pub fn start() -> ApiServer {
        let emulator_port = free_port_on(LOOPBACK.into());
        let emulator = start(&["emulator".into(), emulator_port.to_string()]);
        let port = free_port_on(LOOPBACK.into());
        let dir = TempDir::new("kube");
        let kubeconfig = dir.write(
            "kubeconfig",
            &format!(
                "apiVersion: v1\nkind: Config\n\
                 clusters:\n- name: kmock\n  cluster:\n    server: http://127.0.0.1:{port}\n\
                 contexts:\n- name: kmock\n  context:\n    cluster: kmock\n    user: test\n\
                 users:\n- name: test\n  user: {{}}\n\
                 current-context: kmock\n"
            ),
        );
        let mut api = ApiServer {
            _emulator: emulator,
            front: None,
            emulator_port,
            port,
            kubeconfig,
            dir,
        };
        api.up();
        api
    }

    /// The API server comes back (on the same port).
    pub fn up(&mut self) {
        assert!(self.front.is_none(), "already up");
        self.front = Some(start(&[
            "front".into(),
            self.port.to_string(),
            self.emulator_port.to_string(),
        ]));
    }

    /// The API server goes away: connections refused, watches cut.
    pub fn down(&mut self) {
        if let Some(mut f) = self.front.take() {
            f.kill();
        }
        let addr = SocketAddr::from((LOOPBACK, self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kubectl_on(&self, server: u16, args: &[&str]) -> Output {
        let cache = self.dir.path.join(format!("kubectl-cache-{server}"));
        let out = Command::new("kubectl")
            .arg("--server")
            .arg(format!("http://127.0.0.1:{server}"))
            .arg("--cache-dir")
            .arg(&cache)
            .args(args)
            .output()
            .expect("run kubectl");
        Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `kubectl ARGS` against the API server.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_on(self.port, args)
    }

    /// `kubectl apply --validate=false -n NS -f FILE...` (kmock serves no
    /// OpenAPI document to validate against); panics unless it worked.
    pub fn apply(&self, ns: &str, files: &[&Path]) -> String {
        self.apply_on(self.port, ns, files)
    }

    /// The same, straight to the emulator: a change made while the API
    /// server the agent talks to is away.
    pub fn apply_behind(&self, ns: &str, files: &[&Path]) -> String {
        self.apply_on(self.emulator_port, ns, files)
    }

    fn apply_on(&self, server: u16, ns: &str, files: &[&Path]) -> String {
        let mut args = vec!["apply", "--validate=false", "-n", ns];
        for f in files {
            args.extend(["-f", f.to_str().expect("utf-8 path")]);
        }
        let out = self.kubectl_on(server, &args);
        assert!(out.ok(), "kubectl {args:?}: {out:#?}");
        out.stdout
    }

    /// Ends every open watch with `410 Gone`; returns how many there were.
    pub fn expire_watches(&self) -> u64 {
        let body = self.front_get("/_front/expire", "POST");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        v["expired"].as_u64().expect("a count")
    }

    /// How many watches are open through the front now.
    pub fn open_watches(&self) -> u64 {
        let body = self.front_get("/_front/watches", "GET");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        v["open"].as_u64().expect("a count")
    }

    /// Every request the front passed on: (method, path, watch, user agent).
    pub fn requests(&self) -> Vec<serde_json::Value> {
        let body = self.front_get("/_front/requests", "GET");
        serde_json::from_str(&body).expect("json")
    }

    fn front_get(&self, path: &str, method: &str) -> String {
        use std::io::{Read as _, Write as _};
        let mut s = TcpStream::connect((LOOPBACK, self.port)).expect("front");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read");
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    }
}

/// What the tests play of a cluster's controllers: a pod (its labels) and
/// the EndpointSlice the endpoint controller would write for it.
pub struct Pod<'a> {
    pub name: &'a str,
    pub labels: &'a [(&'a str, &'a str)],
    pub service: &'a str,
    pub addr: SocketAddr,
    pub ready: bool,
}

impl Pod<'_> {
    /// The Pod and its own EndpointSlice (one per pod: each backend here
    /// listens on a port of its own, and a slice's ports are shared by its
    /// endpoints).
    pub fn yaml(&self) -> String {
        let labels = self
            .labels
            .iter()
            .map(|(k, v)| format!("    {k}: {v}\n"))
            .collect::<String>();
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n{labels}\
             spec:\n  containers:\n  - name: tcp-echo\n    image: docker.io/istio/tcp-echo-server:1.3\n\
             ---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n\
             \x20 labels:\n    kubernetes.io/service-name: {service}\n\
             addressType: IPv4\n\
             ports:\n- name: tcp\n  port: {port}\n  protocol: TCP\n\
             endpoints:\n- addresses: [\"{ip}\"]\n  conditions:\n    ready: {ready}\n\
             \x20 targetRef:\n    kind: Pod\n    name: {name}\n",
            name = self.name,
            service = self.service,
            port = self.addr.port(),
            ip = self.addr.ip(),
            ready = self.ready,
        )
    }
}
