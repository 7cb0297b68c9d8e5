//! The Kubernetes Gateway API beside Istio's: Istio's task with its Gateway
//! API files unchanged, and the cases the Gateway API's TCPRoute
//! conformance suite checks (weights, attachment, the oldest route, grants,
//! invalid backends, non-TCP listeners), with the status each produces as
//! `gateway validate` shows it. Backends are tcp-echo processes on
//! loopback; each Service is a ServiceEntry with its Kubernetes host, as
//! the gateway reads Services without a cluster.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
};

use gateway_tests::agent::{
    assert_all, example, gateway, read, seed, unique_ip, who_answers, Agent, Backends, Echo, Held,
    TempDir, NS, PORT,
};

fn task_file(name: &str) -> PathBuf {
    gateway_tests::agent::workspace()
        .join("gateway-user/src/istio/testdata/gateway-api")
        .join(name)
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// Service `name` in `ns` on port `port`, reaching `backend`.
fn service(ns: &str, name: &str, port: u16, backend: SocketAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {name}
  namespace: {ns}
spec:
  hosts: [{name}.{ns}.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {port}, name: tcp, protocol: TCP}}]
  endpoints:
  - address: {ip}
    ports: {{tcp: {real}}}
---
",
        ip = backend.ip(),
        real = backend.port()
    )
}

fn kube_gateway(ns: &str, name: &str, listeners: &[(&str, &str, u16)]) -> String {
    let mut s = format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: {name}
  namespace: {ns}
spec:
  gatewayClassName: istio
  listeners:
"
    );
    for (lname, protocol, port) in listeners {
        s.push_str(&format!(
            "  - name: {lname}\n    protocol: {protocol}\n    port: {port}\n"
        ));
    }
    s.push_str("---\n");
    s
}

/// A TCPRoute (v1) with one parentRef and weighted Service backends
/// (`ns/name` for another namespace).
fn route(
    ns: &str,
    name: &str,
    parent: &str,
    section: Option<&str>,
    port: Option<u16>,
    backends: &[(&str, u16, u32)],
) -> String {
    let mut p = format!("  - name: {parent}\n");
    if let Some(s) = section {
        p.push_str(&format!("    sectionName: {s}\n"));
    }
    if let Some(port) = port {
        p.push_str(&format!("    port: {port}\n"));
    }
    let mut b = String::new();
    for (backend, bport, weight) in backends {
        let (bns, bname) = backend.split_once('/').unwrap_or((ns, backend));
        b.push_str(&format!(
            "    - name: {bname}\n      namespace: {bns}\n      port: {bport}\n      weight: {weight}\n"
        ));
    }
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata:
  name: {name}
  namespace: {ns}
spec:
  parentRefs:
{p}  rules:
  - backendRefs:
{b}---
"
    )
}

/// `gateway validate` of `files`: its stdout, which must say valid.
fn validate(files: &[&Path]) -> String {
    let mut args = vec!["validate".to_string()];
    for f in files {
        args.push("-f".into());
        args.push(f.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = gateway(&args);
    assert!(out.ok(), "{out:#?}");
    out.stdout
}

fn status_line<'a>(out: &'a str, pieces: &[&str]) -> &'a str {
    out.lines()
        .find(|l| l.starts_with("status: ") && pieces.iter().all(|p| l.contains(p)))
        .unwrap_or_else(|| panic!("no status line with {pieces:?} in:\n{out}"))
}

/// Who answered, with refused connections counted under "refused".
fn answers(addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (k, v) in who_answers(addr, n, 8) {
        let k = if k.starts_with("error") || k.starts_with("bad reply") {
            "refused".to_string()
        } else {
            k
        };
        *out.entry(k).or_insert(0) += v;
    }
    out
}

/// Istio's task, Gateway API tab: its files unchanged, then the project's
/// 100% v2 step; each change leaves open connections where they were.
#[test]
fn the_gateway_api_task_step_by_step() {
    gateway_tests::needs_root!();
    let dir = TempDir::new("gwapi-task");
    let backends = Backends::start();
    let agent = Agent::start(&dir.path, unique_ip(), &[]);
    let addr = agent.addr(PORT);
    let endpoints = dir.write("endpoints.yaml", &backends.endpoints_yaml());
    agent.apply_ok(
        &[&endpoints, &example("gateway-api/tcp-echo-services.yaml")],
        Some(NS),
    );
    let out = agent.apply(&[&task_file("tcp-echo-all-v1.yaml")], Some(NS));
    assert!(out.ok(), "{out:#?}");
    assert_eq!(
        out.stdout,
        "gateway.gateway.networking.k8s.io/tcp-echo-gateway created\n\
         service/tcp-echo-v1 created\n\
         service/tcp-echo-v2 created\n\
         tcproute.gateway.networking.k8s.io/tcp-echo created\n"
    );
    // The Services' hosts are the ServiceEntries': nothing to warn of.
    assert!(!out.stderr.contains("Warning"), "{out:#?}");
    assert_all(addr, 50, "one");

    let mut before = Held::open(addr);
    assert_eq!(before.who("before"), "one");
    assert_eq!(
        agent.apply_ok(&[&task_file("tcp-echo-20-v2.yaml")], Some(NS)),
        "tcproute.gateway.networking.k8s.io/tcp-echo configured\n"
    );
    let n = 2000;
    let counts = who_answers(addr, n, 16);
    let (one, two) = (
        counts.get("one").copied().unwrap_or(0),
        counts.get("two").copied().unwrap_or(0),
    );
    assert_eq!(one + two, n, "{counts:?}");
    gateway_tests::agent::assert_within_4_sigma(two, n, 0.2, "v2");
    assert_eq!(before.who("after 80/20"), "one");

    let mut during = Held::open(addr);
    let was = during.who("under 80/20");
    agent.apply_ok(&[&example("gateway-api/tcp-echo-all-v2.yaml")], Some(NS));
    assert_all(addr, 50, "two");
    assert_eq!(during.who("after 100% v2"), was);

    let out = agent.delete(&[&task_file("tcp-echo-all-v1.yaml")], Some(NS));
    assert!(out.ok(), "{out:#?}");
    assert!(TcpStream::connect(addr).is_err(), "the port closes");
    assert_eq!(before.who("after cleanup"), "one");
    drop((before, during));
    agent.stop();
}

/// The example EndpointSlices with v1 and v2 at `backends`, and v1's
/// endpoint marked `ready` as given.
fn slices_yaml(backends: &Backends, v1_ready: bool) -> String {
    let text = read(&example("gateway-api/tcp-echo-endpointslices.yaml"));
    let (v1, v2) = (backends.v1.addr, backends.v2.addr);
    let mut out = String::new();
    let mut which = None;
    for line in text.lines() {
        match line.trim() {
            "kubernetes.io/service-name: tcp-echo-v1" => which = Some(v1),
            "kubernetes.io/service-name: tcp-echo-v2" => which = Some(v2),
            _ => {}
        }
        let at = || which.expect("a slice names its Service before its endpoints");
        let line = match line.trim() {
            "port: 9000" => line.replace("9000", &at().port().to_string()),
            "- addresses: [\"127.0.0.1\"]" | "- addresses: [\"127.0.0.2\"]" => {
                format!("- addresses: [\"{}\"]", at().ip())
            }
            "ready: true" if at() == v1 => line.replace("true", &v1_ready.to_string()),
            _ => line.to_string(),
        };
        out.push_str(&line);
        out.push('\n');
    }
    assert_eq!(
        out.matches("addresses:").count(),
        2,
        "slices layout changed"
    );
    out
}

/// In file mode the task's own Services take their endpoints from
/// EndpointSlice documents, as in a cluster: the 80/20 step within 4
/// sigma, then v1's endpoint unready sends every new connection to v2,
/// while one already open stays where it is.
#[test]
fn endpoint_slices_give_the_task_services_their_endpoints() {
    gateway_tests::needs_root!();
    let dir = TempDir::new("gwapi-slices");
    let backends = Backends::start();
    let agent = Agent::start(&dir.path, unique_ip(), &[]);
    let addr = agent.addr(PORT);
    let slices = dir.write("slices.yaml", &slices_yaml(&backends, true));
    let out = agent.apply(&[&slices, &task_file("tcp-echo-all-v1.yaml")], Some(NS));
    assert!(out.ok(), "{out:#?}");
    assert!(
        out.stdout
            .starts_with("endpointslice.discovery.k8s.io/tcp-echo-v1-local created\n"),
        "{out:#?}"
    );
    assert!(!out.stderr.contains("Warning"), "{out:#?}");
    assert_all(addr, 20, "one");
    agent.apply_ok(&[&task_file("tcp-echo-20-v2.yaml")], Some(NS));
    let n = 2000;
    let counts = who_answers(addr, n, 16);
    let two = counts.get("two").copied().unwrap_or(0);
    assert_eq!(
        counts.get("one").copied().unwrap_or(0) + two,
        n,
        "{counts:?}"
    );
    gateway_tests::agent::assert_within_4_sigma(two, n, 0.2, "v2");

    let mut held = Held::open(addr);
    let was = loop {
        // A v1 connection to keep open across the change.
        let who = held.who("held");
        if who == "one" {
            break who;
        }
        held = Held::open(addr);
    };
    let unready = dir.write("unready.yaml", &slices_yaml(&backends, false));
    assert_eq!(
        agent.apply_ok(&[&unready], Some(NS)),
        "endpointslice.discovery.k8s.io/tcp-echo-v1-local configured\n\
         endpointslice.discovery.k8s.io/tcp-echo-v2-local unchanged\n"
    );
    // v1 keeps its weight and has no ready endpoint: its 80% is refused,
    // as a Service with no ready pods refuses in a cluster.
    let counts = answers(addr, 200);
    assert!(!counts.contains_key("one"), "{counts:?}");
    assert!(counts.get("two").copied().unwrap_or(0) > 0, "{counts:?}");
    assert_eq!(held.who("after unready"), was);
    agent.stop();
}

/// A GatewayClass naming this gateway's controller makes its Gateways this
/// gateway's, whatever the class is called; validate shows it Accepted.
#[test]
fn a_gateway_class_of_this_controller_is_served() {
    gateway_tests::needs_root!();
    let dir = TempDir::new("gwapi-class");
    let backends = Backends::start();
    let agent = Agent::start(&dir.path, unique_ip(), &[]);
    let addr = agent.addr(PORT);
    let slices = dir.write("slices.yaml", &slices_yaml(&backends, true));
    let task = dir.write(
        "all-v1.yaml",
        &read(&task_file("tcp-echo-all-v1.yaml"))
            .replace("gatewayClassName: istio", "gatewayClassName: ebpf"),
    );
    let out = agent.apply(&[&slices, &task], Some(NS));
    assert!(out.ok(), "{out:#?}");
    assert!(
        out.stderr.contains("class \"ebpf\" is not this gateway's"),
        "{out:#?}"
    );
    assert!(TcpStream::connect(addr).is_err());
    let class = dir.write(
        "class.yaml",
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: ebpf
spec:
  controllerName: ebpf-gateway.dev/gateway-controller
",
    );
    assert_eq!(
        agent.apply_ok(&[&class], Some(NS)),
        "gatewayclass.gateway.networking.k8s.io/ebpf created\n"
    );
    assert_all(addr, 20, "one");
    let out = validate(&[&class]);
    assert!(
        status_line(&out, &["GatewayClass ebpf:"]).contains("Accepted=True (Accepted)"),
        "{out}"
    );
    // With its Gateway: the listener's attached routes, as
    // status.listeners[] has them.
    let mut args = vec!["validate", "-n", NS];
    let files = [&class, &slices, &task];
    for f in &files {
        args.extend(["-f", f.to_str().expect("utf-8")]);
    }
    let out = gateway(&args);
    assert!(out.ok(), "{out:#?}");
    let line = status_line(&out.stdout, &["Gateway.gateway.networking.k8s.io"]);
    assert!(
        line.contains("Programmed=True") && line.contains("listener tcp-31400: 1 route(s);"),
        "{line}"
    );
    agent.stop();
}

/// Conformance's TCPRouteWeightedRouting: 70/30/0 within 5% over 500
/// connections, the weight-0 backend getting none.
#[test]
fn weights_70_30_0() {
    gateway_tests::needs_root!();
    let dir = TempDir::new("gwapi-weights");
    let (a, b, c) = (
        Echo::start(loopback(1), "v1"),
        Echo::start(loopback(2), "v2"),
        Echo::start(loopback(3), "v3"),
    );
    let agent = Agent::start(&dir.path, unique_ip(), &[]);
    let text = [
        service("infra", "tcp-backend-v1", 3000, a.addr),
        service("infra", "tcp-backend-v2", 3000, b.addr),
        service("infra", "tcp-backend-v3", 3000, c.addr),
        kube_gateway("infra", "tcp-weighted-gateway", &[("tcp", "TCP", 9300)]),
        route(
            "infra",
            "tcp-weighted-route",
            "tcp-weighted-gateway",
            Some("tcp"),
            None,
            &[
                ("tcp-backend-v1", 3000, 70),
                ("tcp-backend-v2", 3000, 30),
                ("tcp-backend-v3", 3000, 0),
            ],
        ),
    ]
    .concat();
    let file = dir.write("weighted.yaml", &text);
    agent.apply_ok(&[&file], None);
    let n = 500;
    let counts = answers(agent.addr(9300), n);
    eprintln!("{counts:?}");
    assert_eq!(counts.get("v3"), None, "weight 0 gets nothing: {counts:?}");
    let v1 = counts.get("v1").copied().unwrap_or(0) as f64 / n as f64;
    let v2 = counts.get("v2").copied().unwrap_or(0) as f64 / n as f64;
    assert!(
        (v1 - 0.7).abs() <= 0.05 && (v2 - 0.3).abs() <= 0.05,
        "{counts:?}"
    );
    let out = validate(&[&file]);
    let line = status_line(&out, &["TCPRoute infra/tcp-weighted-route"]);
    assert!(
        line.contains("Accepted=True (Accepted)") && line.contains("ResolvedRefs=True"),
        "{line}"
    );
    agent.stop();
}

/// Conformance's ParentRefPortAndSectionName and ParentRefAttachAll:
/// attaching by port, by sectionName, by both, and to every listener when a
/// parentRef names neither.
#[test]
fn attaching_by_port_section_both_and_all() {
    gateway_tests::needs_root!();
    let dir = TempDir::new("gwapi-attach");
    let echoes: Vec<Echo> = ["one", "two", "three", "all"]
        .iter()
        .enumerate()
        .map(|(i, p)| Echo::start(loopback(1 + i as u8), p))
        .collect();
    let agent = Agent::start(&dir.path, unique_ip(), &[]);
    let mut text = String::new();
    for (e, name) in echoes.iter().zip([
        "tcp-echo-one",
        "tcp-echo-two",
        "tcp-echo-three",
        "tcp-echo-all",
    ]) {
        text.push_str(&service("infra", name, 3000, e.addr));
    }
    text.push_str(&kube_gateway(
        "infra",
        "multi",
        &[
            ("one", "TCP", 9300),
            ("two", "TCP", 9301),
            ("three", "TCP", 9302),
        ],
    ));
    text.push_str(&kube_gateway(
        "infra",
        "attach-all",
        &[
            ("a", "TCP", 9310),
            ("b", "TCP", 9311),
            ("c", "TCP", 9312),
            ("d", "TCP", 9313),
        ],
    ));
    text.push_str(&route(
        "infra",
        "by-port",
        "multi",
        None,
        Some(9300),
        &[("tcp-echo-one", 3000, 1)],
    ));
    text.push_str(&route(
        "infra",
        "by-section",
        "multi",
        Some("two"),
        None,
        &[("tcp-echo-two", 3000, 1)],
    ));
    text.push_str(&route(
        "infra",
        "by-both",
        "multi",
        Some("three"),
        Some(9302),
        &[("tcp-echo-three", 3000, 1)],
    ));
    text.push_str(&route(
        "infra",
        "all",
        "attach-all",
        None,
        None,
        &[("tcp-echo-all", 3000, 1)],
    ));
    let file = dir.write("attach.yaml", &text);
    agent.apply_ok(&[&file], None);
    assert_all(agent.addr(9300), 20, "one");
    assert_all(agent.addr(9301), 20, "two");
    assert_all(agent.addr(9302), 20, "three");
    for port in 9310..=9313 {
        assert_all(agent.addr(port), 20, "all");
    }
    let out = validate(&[&file]);
    for name in ["by-port", "by-section", "by-both", "all"] {
        let line = status_line(&out, &[&format!("TCPRoute infra/{name} ")]);
        assert!(line.contains("Accepted=True (Accepted)"), "{line}");
    }
    // A sectionName and port that do not meet: no listener.
    let bad = dir.write(
        "mismatch.yaml",
        &[
            read(&file),
            route(
                "infra",
                "mismatch",
                "multi",
                Some("two"),
                Some(9300),
                &[("tcp-echo-one", 3000, 1)],
            ),
        ]
        .concat(),
    );
    let out = validate(&[&bad]);
    let line = status_line(&out, &["TCPRoute infra/mismatch "]);
    assert!(line.contains("Accepted=False (NoMatchingParent)"), "{line}");
    agent.stop();
}

/// Conformance's MultipleRoutesAttachment: of two routes on one listener,
/// both accepted, the older one carries the traffic.
#[test]
fn of_two_routes_on_a_listener_the_older_serves() {
    gateway_tests::needs_root!();
    let dir = TempDir::new("gwapi-older");
    let (a, b) = (
        Echo::start(loopback(1), "older"),
        Echo::start(loopback(2), "newer"),
    );
    let agent = Agent::start(&dir.path, unique_ip(), &[]);
    let base = dir.write(
        "base.yaml",
        &[
            service("infra", "backend-1", 3000, a.addr),
            service("infra", "backend-2", 3000, b.addr),
            kube_gateway("infra", "gw", &[("tcp", "TCP", 9310)]),
            route(
                "infra",
                "tcproute-attach-older",
                "gw",
                Some("tcp"),
                None,
                &[("backend-1", 3000, 1)],
            ),
        ]
        .concat(),
    );
    agent.apply_ok(&[&base], None);
    assert_all(agent.addr(9310), 20, "older");
    // Newer, and first by name: creation order decides, not the name.
    let newer = dir.write(
        "newer.yaml",
        &route(
            "infra",
            "a-newer",
            "gw",
            Some("tcp"),
            None,
            &[("backend-2", 3000, 1)],
        ),
    );
    agent.apply_ok(&[&newer], None);
    assert_all(agent.addr(9310), 100, "older");
    let out = gateway(&[
        "validate",
        "-f",
        base.to_str().expect("utf-8"),
        "-f",
        newer.to_str().expect("utf-8"),
    ]);
    assert!(out.ok(), "{out:#?}");
    for name in ["tcproute-attach-older", "a-newer"] {
        let line = status_line(&out.stdout, &[&format!("TCPRoute infra/{name} ")]);
        assert!(line.contains("Accepted=True (Accepted)"), "{line}");
    }
    assert!(
        out.stderr.contains("is older and attached there first"),
        "{out:#?}"
    );
    assert!(
        status_line(&out.stdout, &["Gateway.gateway.networking.k8s.io infra/gw"])
            .contains("2 route(s) attached")
    );
    agent.stop();
}

/// Conformance's ReferenceGrant and InvalidCrossNamespaceBackendRef: a
/// backend in another namespace only with a grant there, and revoking it
/// revokes the access.
#[test]
fn cross_namespace_backends_need_a_reference_grant() {
    gateway_tests::needs_root!();
    let dir = TempDir::new("gwapi-grant");
    let e = Echo::start(loopback(1), "web");
    let agent = Agent::start(&dir.path, unique_ip(), &[]);
    let base = dir.write(
        "base.yaml",
        &[
            service("web-backend", "backend", 3000, e.addr),
            kube_gateway("infra", "gw", &[("tcp", "TCP", 9320)]),
            route(
                "infra",
                "xns",
                "gw",
                Some("tcp"),
                None,
                &[("web-backend/backend", 3000, 1)],
            ),
        ]
        .concat(),
    );
    let grant = dir.write(
        "grant.yaml",
        "apiVersion: gateway.networking.k8s.io/v1
kind: ReferenceGrant
metadata:
  name: tcp-reference-grant
  namespace: web-backend
spec:
  from:
  - group: gateway.networking.k8s.io
    kind: TCPRoute
    namespace: infra
  to:
  - group: \"\"
    kind: Service
    name: backend
",
    );
    let addr = agent.addr(9320);
    agent.apply_ok(&[&base], None);
    let refused = answers(addr, 20);
    assert_eq!(refused.get("refused"), Some(&20), "{refused:?}");
    let line = status_line(&validate(&[&base]), &["TCPRoute infra/xns "]).to_string();
    assert!(
        line.contains("Accepted=True (Accepted)")
            && line.contains("ResolvedRefs=False (RefNotPermitted)"),
        "{line}"
    );

    agent.apply_ok(&[&grant], None);
    assert_all(addr, 20, "web");
    let line = status_line(&validate(&[&base, &grant]), &["TCPRoute infra/xns "]).to_string();
    assert!(line.contains("ResolvedRefs=True"), "{line}");

    let out = agent.delete(&[&grant], None);
    assert!(out.ok(), "{out:#?}");
    let refused = answers(addr, 20);
    assert_eq!(refused.get("refused"), Some(&20), "revoked: {refused:?}");
    agent.stop();
}

/// An invalid or missing backend keeps its weight: its share of connections
/// is refused (InvalidBackendRefNonexistent's BackendNotFound).
#[test]
fn a_missing_backend_refuses_its_share() {
    gateway_tests::needs_root!();
    let dir = TempDir::new("gwapi-missing");
    let e = Echo::start(loopback(1), "v1");
    let agent = Agent::start(&dir.path, unique_ip(), &[]);
    let file = dir.write(
        "missing.yaml",
        &[
            service("infra", "backend", 3000, e.addr),
            kube_gateway("infra", "gw", &[("tcp", "TCP", 9300)]),
            route(
                "infra",
                "half",
                "gw",
                Some("tcp"),
                None,
                &[("backend", 3000, 50), ("nonexistent-service", 8080, 50)],
            ),
        ]
        .concat(),
    );
    let out = agent.apply(&[&file], None);
    assert!(out.ok(), "{out:#?}");
    assert!(
        out.stderr.contains("its share of connections is refused"),
        "{out:#?}"
    );
    let n = 400;
    let counts = answers(agent.addr(9300), n);
    let served = counts.get("v1").copied().unwrap_or(0);
    assert_eq!(counts.values().sum::<usize>(), n, "{counts:?}");
    gateway_tests::agent::assert_within_4_sigma(served, n, 0.5, "the existing backend");
    let line = status_line(&validate(&[&file]), &["TCPRoute infra/half "]).to_string();
    assert!(
        line.contains("ResolvedRefs=False (BackendNotFound)"),
        "{line}"
    );
    agent.stop();
}

/// InvalidNonTCPListener: a TCPRoute on an HTTP listener is not accepted,
/// and nothing listens for it; a port claimed by both APIs is refused,
/// naming both Gateways.
#[test]
fn non_tcp_listeners_and_ports_claimed_twice_are_refused() {
    gateway_tests::needs_root!();
    let dir = TempDir::new("gwapi-refused");
    let agent = Agent::start(&dir.path, unique_ip(), &[]);
    let file = dir.write(
        "http.yaml",
        &[
            kube_gateway(
                "infra",
                "mixed",
                &[("only-allow-http-routes", "HTTP", 5300)],
            ),
            route(
                "infra",
                "tcp-route",
                "mixed",
                Some("only-allow-http-routes"),
                None,
                &[("tcp-echo-backend", 8080, 1)],
            ),
        ]
        .concat(),
    );
    let out = validate(&[&file]);
    let line = status_line(&out, &["TCPRoute infra/tcp-route "]);
    assert!(
        line.contains("Accepted=False (NotAllowedByListeners)"),
        "{line}"
    );
    agent.apply_ok(&[&file], None);
    assert!(TcpStream::connect(agent.addr(5300)).is_err());

    // Istio's Gateway on 31400, then a Gateway API Gateway on it too.
    let backends = Backends::start();
    let endpoints = dir.write("endpoints.yaml", &backends.endpoints_yaml());
    agent.apply_ok(&[&endpoints, &seed("tcp-echo-all-v1.yaml")], Some(NS));
    agent.apply_ok(&[&example("gateway-api/tcp-echo-services.yaml")], Some(NS));
    let out = agent.apply(&[&task_file("tcp-echo-all-v1.yaml")], Some(NS));
    assert!(!out.ok(), "{out:#?}");
    // Both Gateways named: the refused one as the origin, the other in the message.
    assert!(
        out.stderr.contains(&format!(
            "(Gateway.gateway.networking.k8s.io {NS}/tcp-echo-gateway)"
        )) && out.stderr.contains(&format!(
            "already served by Gateway {NS}/tcp-echo-gateway (networking.istio.io"
        )),
        "{out:#?}"
    );
    assert!(
        out.stderr
            .contains("port 31400 is already served by Gateway")
            && out.stderr.contains("networking.istio.io"),
        "{out:#?}"
    );
    assert_all(agent.addr(PORT), 20, "one");
    agent.stop();
}

/// Bad Gateway API input is refused as Istio's is: file, document, field;
/// the running config keeps serving.
#[test]
fn bad_gateway_api_input_names_file_document_and_field() {
    gateway_tests::needs_root!();
    let dir = TempDir::new("gwapi-bad");
    let e = Echo::start(loopback(1), "v1");
    let agent = Agent::start(&dir.path, unique_ip(), &[]);
    let good = [
        service("infra", "backend", 3000, e.addr),
        kube_gateway("infra", "gw", &[("tcp", "TCP", 9300)]),
        route(
            "infra",
            "r",
            "gw",
            Some("tcp"),
            None,
            &[("backend", 3000, 1)],
        ),
    ]
    .concat();
    let file = dir.write("good.yaml", &good);
    agent.apply_ok(&[&file], None);
    for (name, text, pieces) in [
        (
            "weight.yaml",
            good.replace("weight: 1", "weight: -1"),
            vec![
                "weight.yaml: document 3 (TCPRoute infra/r)",
                "spec.rules[0].backendRefs[0].weight",
            ],
        ),
        (
            "field.yaml",
            good.replace("sectionName: tcp", "sectionNmae: tcp"),
            vec!["field.yaml: document 3", "sectionNmae"],
        ),
        (
            "listeners.yaml",
            good.replace("port: 9300", "port: 70000"),
            vec!["listeners.yaml: document 2", "spec.listeners[0].port"],
        ),
        (
            "noport.yaml",
            good.replace("      port: 3000\n", ""),
            vec![
                "noport.yaml: document 3",
                "spec.rules[0].backendRefs[0].port",
                "must be set",
            ],
        ),
    ] {
        let bad = dir.write(name, &text);
        let out = agent.apply(&[&bad], None);
        assert!(!out.ok(), "{name}: {out:#?}");
        for p in pieces {
            assert!(out.stderr.contains(p), "{name}: {p}: {out:#?}");
        }
        assert_all(agent.addr(9300), 10, "v1");
    }
    agent.stop();
}
