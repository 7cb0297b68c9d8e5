//! `gateway run --source kubernetes` against a Kubernetes API: kmock's
//! emulator behind a thin front (tests/kube/apiserver.py), changed with the
//! real `kubectl apply` of the seed's own files. The tests play the
//! cluster's controllers: they create the pods and the EndpointSlices the
//! endpoint controller would, pointing at tcp-echo processes on loopback.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use gateway_tests::{
    agent::{
        assert_all, example, read, seed, unique_ip, who_answers, Agent, Echo, Held, TempDir, FQDN,
        NS, PORT,
    },
    kube::{ApiServer, Pod},
};

const V1: &[(&str, &str)] = &[("app", "tcp-echo"), ("version", "v1")];
const V2: &[(&str, &str)] = &[("app", "tcp-echo"), ("version", "v2")];

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// Polls `f` until it holds, for at most `timeout`.
fn eventually(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// All of `n` connections answered by `who`, once the agent has caught up.
fn eventually_all(addr: SocketAddr, who: &str) {
    eventually(
        Duration::from_secs(20),
        &format!("all answered by {who}"),
        || {
            let c = who_answers(addr, 20, 4);
            c.len() == 1 && c.contains_key(who)
        },
    );
    assert_all(addr, 50, who);
}

/// An API server holding the seed's Service and Deployments, an agent
/// watching it, and a pod (with its EndpointSlice) per backend.
struct Cluster {
    dir: TempDir,
    api: ApiServer,
    agent: Agent,
}

impl Cluster {
    fn start(tag: &str, extra: &[&str]) -> Cluster {
        let dir = TempDir::new(tag);
        let api = ApiServer::start();
        let out = api.apply(NS, &[&seed("tcp-echo-services.yaml")]);
        assert_eq!(
            out,
            "service/tcp-echo created\ndeployment.apps/tcp-echo-v1 created\n\
             deployment.apps/tcp-echo-v2 created\n"
        );
        let kubeconfig = api.kubeconfig.to_str().expect("utf-8").to_string();
        let mut args = vec!["--source", "kubernetes", "--kubeconfig", &kubeconfig];
        args.extend_from_slice(extra);
        let agent = Agent::start(&dir.path, unique_ip(), &args);
        Cluster { dir, api, agent }
    }

    /// Creates or updates a pod and its EndpointSlice.
    fn pod(&self, pod: Pod<'_>) {
        let file = self
            .dir
            .write(&format!("pod-{}.yaml", pod.name), &pod.yaml());
        self.api.apply(NS, &[&file]);
    }
}

fn pod<'a>(name: &'a str, labels: &'a [(&'a str, &'a str)], echo: &Echo, ready: bool) -> Pod<'a> {
    Pod {
        name,
        labels,
        service: "tcp-echo",
        addr: echo.addr,
        ready,
    }
}

/// Istio's task with the seed's files applied unchanged with kubectl: 100%
/// v1, 80/20, 100% v2, cleanup; each edit affects new connections only.
#[test]
fn the_seed_task_through_the_api_server() {
    gateway_tests::needs_root!();
    let one = Echo::start(loopback(1), "one");
    let two = Echo::start(loopback(2), "two");
    let c = Cluster::start("kube-task", &[]);
    let addr = c.agent.addr(PORT);
    c.pod(pod("tcp-echo-v1-7d9f", V1, &one, true));
    c.pod(pod("tcp-echo-v2-5c4b", V2, &two, true));
    assert!(TcpStream::connect(addr).is_err(), "no Gateway yet");

    assert_eq!(
        c.api.apply(NS, &[&seed("tcp-echo-all-v1.yaml")]),
        "gateway.networking.istio.io/tcp-echo-gateway created\n\
         destinationrule.networking.istio.io/tcp-echo-destination created\n\
         virtualservice.networking.istio.io/tcp-echo created\n"
    );
    eventually_all(addr, "one");

    let mut before = Held::open(addr);
    assert_eq!(before.who("before the shift"), "one");
    assert_eq!(
        c.api.apply(NS, &[&seed("tcp-echo-20-v2.yaml")]),
        "virtualservice.networking.istio.io/tcp-echo configured\n"
    );
    eventually(Duration::from_secs(20), "v2 answers", || {
        who_answers(addr, 20, 4).contains_key("two")
    });
    let n = 2000;
    let counts = who_answers(addr, n, 16);
    eprintln!("{n} connections: {counts:?}");
    let (v1, v2) = (
        counts.get("one").copied().unwrap_or(0),
        counts.get("two").copied().unwrap_or(0),
    );
    assert_eq!(v1 + v2, n, "every connection answered: {counts:?}");
    gateway_tests::agent::assert_within_4_sigma(v2, n, 0.2, "v2");
    assert_eq!(before.who("after the shift"), "one");

    let mut during = Held::open(addr);
    let was = during.who("under 80/20");
    c.api.apply(NS, &[&example("tcp-echo-all-v2.yaml")]);
    eventually_all(addr, "two");
    assert_eq!(during.who("after 100% v2"), was);
    assert_eq!(before.who("still there"), "one");

    // kmock keeps an object per apiVersion (a real API server has one), so
    // the v1 copy the last step wrote goes too.
    for file in [
        seed("tcp-echo-all-v1.yaml"),
        example("tcp-echo-all-v2.yaml"),
    ] {
        let out = c
            .api
            .kubectl(&["delete", "-n", NS, "-f", file.to_str().expect("utf-8")]);
        assert!(out.ok(), "{out:#?}");
    }
    eventually(Duration::from_secs(20), "the port closes", || {
        TcpStream::connect(addr).is_err()
    });
    assert_eq!(during.who("after cleanup"), was);
    drop((before, during));
    let stats = c.agent.stop();
    assert_eq!(
        gateway_tests::agent::counter(&stats, "connections_reset"),
        0,
        "{stats}"
    );
}

/// The Gateway API variant of the task, its files applied unchanged: the
/// Gateway, the Services tcp-echo-v1 and tcp-echo-v2 (their pods' slices
/// written by the test) and the TCPRoute, then 80/20.
#[test]
fn the_gateway_api_task_through_the_api_server() {
    gateway_tests::needs_root!();
    let one = Echo::start(loopback(1), "one");
    let two = Echo::start(loopback(2), "two");
    let c = Cluster::start("kube-gwapi", &[]);
    let addr = c.agent.addr(PORT);
    let task = |f: &str| {
        gateway_tests::agent::workspace()
            .join("gateway-user/src/istio/testdata/gateway-api")
            .join(f)
    };
    assert_eq!(
        c.api.apply(NS, &[&task("tcp-echo-all-v1.yaml")]),
        "gateway.gateway.networking.k8s.io/tcp-echo-gateway created\n\
         service/tcp-echo-v1 created\nservice/tcp-echo-v2 created\n\
         tcproute.gateway.networking.k8s.io/tcp-echo created\n"
    );
    for (name, labels, echo, service) in [
        ("tcp-echo-v1-7d9f", V1, &one, "tcp-echo-v1"),
        ("tcp-echo-v2-5c4b", V2, &two, "tcp-echo-v2"),
    ] {
        c.pod(Pod {
            name,
            labels,
            service,
            addr: echo.addr,
            ready: true,
        });
    }
    eventually_all(addr, "one");
    c.api.apply(NS, &[&task("tcp-echo-20-v2.yaml")]);
    eventually(Duration::from_secs(20), "v2 answers", || {
        who_answers(addr, 20, 4).contains_key("two")
    });
    let n = 1000;
    let counts = who_answers(addr, n, 16);
    let two_n = counts.get("two").copied().unwrap_or(0);
    assert_eq!(counts.values().sum::<usize>(), n);
    assert_eq!(counts.len(), 2, "{counts:?}");
    gateway_tests::agent::assert_within_4_sigma(two_n, n, 0.2, "v2");
    c.agent.stop();
}

fn gateway_api_file(f: &str) -> std::path::PathBuf {
    gateway_tests::agent::workspace()
        .join("gateway-user/src/istio/testdata/gateway-api")
        .join(f)
}

const CONTROLLER: &str = "ebpf-gateway.dev/gateway-controller";
/// The task's TCPRoutes are v1alpha2; kmock keeps an object at the
/// version it was written in only (a real API server serves it at all).
const TCPROUTES: &str = "tcproutes.v1alpha2.gateway.networking.k8s.io";

/// The object at API path `path` (`kubectl get --raw`, which needs no
/// discovery), once `ok` holds of it.
fn eventually_object(
    api: &ApiServer,
    path: &str,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = api.kubectl(&["get", "--raw", path]);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
        if ok(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: not within 20 s: {what}: {out:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn gw_api_path(version: &str, plural: &str, name: &str) -> String {
    format!("/apis/gateway.networking.k8s.io/{version}/namespaces/{NS}/{plural}/{name}")
}

/// This controller's entry of a route's `status.parents`.
fn our_parent(route: &serde_json::Value) -> Option<&serde_json::Value> {
    route["status"]["parents"]
        .as_array()?
        .iter()
        .find(|p| p["controllerName"] == CONTROLLER)
}

fn condition<'a>(conditions: &'a serde_json::Value, kind: &str) -> (&'a str, &'a str) {
    conditions
        .as_array()
        .and_then(|a| a.iter().find(|c| c["type"] == kind))
        .map(|c| {
            (
                c["status"].as_str().unwrap_or(""),
                c["reason"].as_str().unwrap_or(""),
            )
        })
        .unwrap_or(("", ""))
}

/// The Gateway API status reaches the cluster's objects, written by one
/// of two agents (the Lease's holder); another controller's entry in a
/// route's status stays; when the writer stops, the other agent takes the
/// Lease over and writes the next change.
#[test]
fn gateway_api_status_is_written_to_the_cluster_by_one_agent() {
    gateway_tests::needs_root!();
    let one = Echo::start(loopback(1), "one");
    let c = Cluster::start("kube-status", &[]);
    let dir = TempDir::new("kube-status-b");
    let kubeconfig = c.api.kubeconfig.to_str().expect("utf-8").to_string();
    let b = Agent::start(
        &dir.path,
        unique_ip(),
        &["--source", "kubernetes", "--kubeconfig", &kubeconfig],
    );
    c.pod(Pod {
        name: "tcp-echo-v1-7d9f",
        labels: V1,
        service: "tcp-echo-v1",
        addr: one.addr,
        ready: true,
    });
    // The route first, with another controller's status on it, then its
    // Gateway: this gateway's entry joins the other's.
    let text = read(&gateway_api_file("tcp-echo-all-v1.yaml"));
    let (gateway, rest) = text.split_once("\n---\n").expect("the Gateway comes first");
    let route_only = c.dir.write("route.yaml", rest);
    c.api.apply(NS, &[&route_only]);
    let other = r#"{"status":{"parents":[{"parentRef":{"name":"elsewhere"},"controllerName":"example.net/other","conditions":[]}]}}"#;
    let out = c.api.kubectl(&[
        "patch",
        TCPROUTES,
        "tcp-echo",
        "-n",
        NS,
        "--subresource=status",
        "--type=merge",
        "-p",
        other,
    ]);
    assert!(out.ok(), "{out:#?}");
    let gateway_file = c.dir.write("gateway.yaml", gateway);
    c.api.apply(NS, &[&gateway_file]);
    eventually_all(c.agent.addr(PORT), "one");
    eventually_all(b.addr(PORT), "one");

    let route = eventually_object(
        &c.api,
        &gw_api_path("v1alpha2", "tcproutes", "tcp-echo"),
        "our parent entry",
        |r| our_parent(r).is_some(),
    );
    let ours = our_parent(&route).expect("our entry");
    assert_eq!(ours["parentRef"]["name"], "tcp-echo-gateway", "{route:#}");
    assert_eq!(ours["parentRef"]["sectionName"], "tcp-31400", "{route:#}");
    assert_eq!(
        condition(&ours["conditions"], "Accepted"),
        ("True", "Accepted")
    );
    assert_eq!(
        condition(&ours["conditions"], "ResolvedRefs"),
        ("True", "ResolvedRefs")
    );
    let parents = route["status"]["parents"].as_array().expect("parents");
    assert_eq!(
        parents.len(),
        2,
        "the other controller's entry stays: {route:#}"
    );
    assert!(parents
        .iter()
        .any(|p| p["controllerName"] == "example.net/other"));

    let gw = eventually_object(
        &c.api,
        &gw_api_path("v1", "gateways", "tcp-echo-gateway"),
        "Programmed",
        |g| condition(&g["status"]["conditions"], "Programmed").0 == "True",
    );
    assert_eq!(
        condition(&gw["status"]["conditions"], "Accepted"),
        ("True", "Accepted")
    );
    let listener = &gw["status"]["listeners"][0];
    assert_eq!(listener["name"], "tcp-31400", "{gw:#}");
    assert_eq!(listener["attachedRoutes"], 1, "{gw:#}");
    assert_eq!(listener["supportedKinds"][0]["kind"], "TCPRoute", "{gw:#}");
    assert_eq!(
        condition(&listener["conditions"], "Programmed"),
        ("True", "Programmed")
    );

    // One writer: the agent that started first took the Lease.
    let leading = "writing the Gateway API status";
    assert!(c
        .agent
        .wait_log(&[leading], Duration::from_secs(5))
        .is_some());
    assert!(b
        .wait_log(
            &["another agent writes the Gateway API status"],
            Duration::from_secs(5)
        )
        .is_some());
    assert_eq!(b.count_log(&["status written"], 0, Duration::ZERO), 0);
    let writers: std::collections::BTreeSet<String> = c
        .api
        .requests()
        .iter()
        .filter(|r| r["method"] == "PATCH" && r["path"].as_str().unwrap_or("").ends_with("/status"))
        .filter(|r| !r["agent"].as_str().unwrap_or("").starts_with("kubectl"))
        .map(|r| r["path"].to_string())
        .collect();
    assert!(!writers.is_empty(), "no status PATCH");

    // The writer stops and gives the Lease up; the other takes over and
    // writes what changes next: a backend that does not exist.
    c.agent.stop();
    assert!(
        b.wait_log(&[leading], Duration::from_secs(10)).is_some(),
        "{:#?}",
        b.stderr()
    );
    let missing = c.dir.write(
        "missing.yaml",
        &read(&gateway_api_file("tcp-echo-20-v2.yaml"))
            .replace("name: tcp-echo-v2", "name: tcp-echo-v3"),
    );
    c.api.apply(NS, &[&missing]);
    let route = eventually_object(
        &c.api,
        &gw_api_path("v1alpha2", "tcproutes", "tcp-echo"),
        "BackendNotFound",
        |r| {
            our_parent(r)
                .is_some_and(|p| condition(&p["conditions"], "ResolvedRefs").1 == "BackendNotFound")
        },
    );
    let ours = our_parent(&route).expect("our entry");
    assert_eq!(condition(&ours["conditions"], "ResolvedRefs").0, "False");
    assert_eq!(
        condition(&ours["conditions"], "Accepted"),
        ("True", "Accepted")
    );
    let lease = c.api.kubectl(&[
        "get",
        "--raw",
        "/apis/coordination.k8s.io/v1/namespaces/default/leases/gateway-status-istio",
    ]);
    let v: serde_json::Value = serde_json::from_str(&lease.stdout).unwrap_or_default();
    assert_eq!(v["spec"]["leaseTransitions"], 1, "{lease:#?}");

    // The Gateway goes: the route is no longer attached here, and this
    // controller's entry goes with it; the other controller's stays.
    let out = c.api.kubectl(&[
        "delete",
        "-n",
        NS,
        "-f",
        gateway_file.to_str().expect("utf-8"),
    ]);
    assert!(out.ok(), "{out:#?}");
    let route = eventually_object(
        &c.api,
        &gw_api_path("v1alpha2", "tcproutes", "tcp-echo"),
        "our entry removed",
        |r| r["status"]["parents"].is_array() && our_parent(r).is_none(),
    );
    let parents = route["status"]["parents"].as_array().expect("parents");
    assert_eq!(parents.len(), 1, "{route:#}");
    assert_eq!(parents[0]["controllerName"], "example.net/other");
    b.stop();
}

/// Endpoints follow the pods: a pod that turns unready leaves its subset,
/// one that turns ready joins, a relabelled pod moves to the other subset;
/// none of it touches connections already open.
#[test]
fn pods_turning_ready_and_unready_move_endpoints_between_subsets() {
    gateway_tests::needs_root!();
    let one = Echo::start(loopback(1), "one");
    let two = Echo::start(loopback(2), "two");
    let three = Echo::start(loopback(3), "three");
    let c = Cluster::start("kube-pods", &[]);
    let addr = c.agent.addr(PORT);
    c.pod(pod("a", V1, &one, true));
    c.pod(pod("b", V2, &two, true));
    c.pod(pod("c", V1, &three, false));
    c.api.apply(NS, &[&seed("tcp-echo-all-v1.yaml")]);
    eventually_all(addr, "one");
    let mut held = Held::open(addr);
    assert_eq!(held.who("on a"), "one");

    // a goes unready as c turns ready: v1 is c alone.
    c.pod(pod("c", V1, &three, true));
    c.pod(pod("a", V1, &one, false));
    eventually_all(addr, "three");
    assert_eq!(held.who("a is unready, its connection stays"), "one");

    // No ready v1 pod: v1's connections are refused, the config still served.
    c.pod(pod("c", V1, &three, false));
    eventually(Duration::from_secs(20), "v1 has no endpoint", || {
        who_answers(addr, 5, 1)
            .keys()
            .all(|k| k.starts_with("error"))
    });
    assert!(
        c.agent
            .wait_log(
                &["no endpoints for host", FQDN, "subset v1"],
                Duration::from_secs(5)
            )
            .is_some(),
        "{:#?}",
        c.agent.stderr()
    );

    // b is relabelled v1: it moves from subset v2 to v1.
    c.pod(pod("b", V1, &two, true));
    eventually_all(addr, "two");
    assert_eq!(held.who("still on a"), "one");
    drop(held);
    c.agent.stop();
}

/// The API server goes away (connections refused, watches cut) and comes
/// back with a change made meanwhile; then every watch is answered with
/// 410 Gone and the watches relist. Traffic flows throughout.
#[test]
fn the_api_server_going_away_and_410_gone_are_survived() {
    gateway_tests::needs_root!();
    let one = Echo::start(loopback(1), "one");
    let two = Echo::start(loopback(2), "two");
    let mut c = Cluster::start("kube-away", &[]);
    let addr = c.agent.addr(PORT);
    c.pod(pod("tcp-echo-v1-7d9f", V1, &one, true));
    c.pod(pod("tcp-echo-v2-5c4b", V2, &two, true));
    c.api.apply(NS, &[&seed("tcp-echo-all-v1.yaml")]);
    eventually_all(addr, "one");

    c.api.down();
    assert!(
        c.agent
            .wait_log(
                &["watch of", "failed", "still serving"],
                Duration::from_secs(20)
            )
            .is_some(),
        "{:#?}",
        c.agent.stderr()
    );
    assert_all(addr, 100, "one");
    c.api.apply_behind(NS, &[&example("tcp-echo-all-v2.yaml")]);
    std::thread::sleep(Duration::from_secs(2));
    assert_all(addr, 50, "one");
    c.api.up();
    eventually_all(addr, "two");
    assert!(c
        .agent
        .wait_log(&["watch of", "is back"], Duration::from_secs(20))
        .is_some());

    let expired = c.api.expire_watches();
    assert!(expired >= 3, "the agent's watches were open: {expired}");
    // Relisted and watching again before the changes below: kmock ignores
    // the watch's resourceVersion and replays what exists, so an object
    // deleted between the relist and the new watch would never be seen to
    // go (a real API server sends that DELETED from the list's version).
    eventually(
        Duration::from_secs(20),
        "the watches are open again",
        || c.api.open_watches() >= expired,
    );
    c.api.apply(NS, &[&seed("tcp-echo-20-v2.yaml")]);
    // v1alpha3 now says 80/20 but the v1 copy (kmock keeps one per
    // version) says all v2 and is read first: delete it to see the change.
    let out = c.api.kubectl(&[
        "delete",
        "-n",
        NS,
        "-f",
        example("tcp-echo-all-v2.yaml").to_str().expect("utf-8"),
    ]);
    assert!(out.ok(), "{out:#?}");
    eventually(Duration::from_secs(20), "80/20 after the relist", || {
        let counts: BTreeMap<_, _> = who_answers(addr, 100, 4);
        counts.contains_key("one") && counts.contains_key("two")
    });
    assert_eq!(
        who_answers(addr, 200, 8)
            .keys()
            .filter(|k| k.starts_with("error"))
            .count(),
        0
    );
    c.agent.stop();
}

/// A resource the validator refuses is skipped, named in the log; the rest
/// keeps serving, and a fix is picked up; `gateway apply` works beside the
/// cluster and takes precedence.
#[test]
fn a_refused_resource_is_skipped_and_the_rest_served() {
    gateway_tests::needs_root!();
    let one = Echo::start(loopback(1), "one");
    let c = Cluster::start("kube-bad", &[]);
    let addr = c.agent.addr(PORT);
    c.pod(pod("tcp-echo-v1-7d9f", V1, &one, true));
    c.api.apply(NS, &[&seed("tcp-echo-all-v1.yaml")]);
    eventually_all(addr, "one");

    let bad = read(&example("tcp-echo-all-v2.yaml"))
        .replace("name: tcp-echo\n", "name: tcp-echo-typo\n")
        .replace("weight: 100", "weigth: 100");
    let file = c.dir.write("bad.yaml", &bad);
    c.api.apply(NS, &[&file]);
    let line = c
        .agent
        .wait_log(&["skipped, not served"], Duration::from_secs(20));
    assert!(line.is_some(), "{:#?}", c.agent.stderr());
    let log = c.agent.stderr().join("\n");
    assert!(
        log.contains(&format!(
            "kubernetes:/apis/networking.istio.io/v1/namespaces/{NS}/virtualservices/tcp-echo-typo"
        )) && log.contains("weigth"),
        "{log}"
    );
    assert_all(addr, 50, "one");

    // The fix is picked up (served beside tcp-echo, which keeps the port).
    let fixed = c
        .dir
        .write("fixed.yaml", &bad.replace("weigth: 100", "weight: 100"));
    c.api.apply(NS, &[&fixed]);
    assert!(
        c.agent
            .wait_log(
                &["virtualservices/tcp-echo-typo: no longer refused"],
                Duration::from_secs(20)
            )
            .is_some(),
        "{:#?}",
        c.agent.stderr()
    );

    // The admin socket stays beside the cluster, and what it applies wins.
    let two = Echo::start(loopback(2), "two");
    c.pod(pod("tcp-echo-v2-5c4b", V2, &two, true));
    let out = c
        .agent
        .apply_ok(&[&example("tcp-echo-all-v2.yaml")], Some(NS));
    assert_eq!(
        out,
        "virtualservice.networking.istio.io/tcp-echo configured\n"
    );
    // Once the new pod's slice is seen, if the apply came first.
    eventually_all(addr, "two");
    c.agent.stop();
}

/// The ClusterRole and the Role in manifests/deploy/rbac.yaml allow every
/// call the agent made here, and the agent made a call under every rule:
/// the roles are neither short of what the code does nor wider than it.
#[test]
fn the_cluster_role_matches_the_calls_the_agent_makes() {
    gateway_tests::needs_root!();
    let c = Cluster::start("kube-rbac", &[]);
    let one = Echo::start(loopback(1), "one");
    c.pod(pod("tcp-echo-v1-7d9f", V1, &one, true));
    c.api.apply(NS, &[&seed("tcp-echo-all-v1.yaml")]);
    eventually_all(c.agent.addr(PORT), "one");
    // The Gateway API's kinds, and a GatewayClass of this controller, so
    // that every status is written: on another port, beside Istio's.
    let class = c.dir.write(
        "class.yaml",
        &format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata:\n  name: ebpf\nspec:\n  controllerName: {CONTROLLER}\n"
        ),
    );
    let task = c.dir.write(
        "gwapi.yaml",
        &read(&gateway_api_file("tcp-echo-all-v1.yaml"))
            .replace("gatewayClassName: istio", "gatewayClassName: ebpf")
            .replace("port: 31400", "port: 31401"),
    );
    c.api.apply(NS, &[&class, &task]);
    let gc = eventually_object(
        &c.api,
        "/apis/gateway.networking.k8s.io/v1/gatewayclasses/ebpf",
        "Accepted",
        |g| condition(&g["status"]["conditions"], "Accepted").0 == "True",
    );
    assert_eq!(gc["status"]["conditions"][0]["reason"], "Accepted");
    eventually_object(
        &c.api,
        &gw_api_path("v1alpha2", "tcproutes", "tcp-echo"),
        "our parent entry",
        |r| our_parent(r).is_some(),
    );
    eventually_object(
        &c.api,
        &gw_api_path("v1", "gateways", "tcp-echo-gateway"),
        "status",
        |g| !g["status"]["listeners"].is_null(),
    );
    // The Lease renewed at least once, as well as created.
    eventually(Duration::from_secs(10), "a Lease renewal", || {
        c.api.requests().iter().any(|r| {
            r["method"] == "PATCH" && r["path"].as_str().unwrap_or("").contains("/leases/")
        })
    });

    let rbac = read(&gateway_tests::agent::workspace().join("manifests/deploy/rbac.yaml"));
    let rules = cluster_role_rules(&rbac);
    let mut used = vec![false; rules.len()];
    let mut calls = Vec::new();
    for r in c.api.requests() {
        if r["agent"].as_str().unwrap_or("").starts_with("kubectl") {
            continue; // the test's own
        }
        let path = r["path"].as_str().unwrap_or("");
        let Some((group, resource, named)) = resource_of(path) else {
            continue; // discovery: allowed to every authenticated user
        };
        let verb = match (
            r["method"].as_str().unwrap_or(""),
            r["watch"].as_bool(),
            named,
        ) {
            ("GET", Some(true), _) => "watch",
            ("GET", _, false) => "list",
            ("GET", _, true) => "get",
            ("PATCH", _, true) => "patch",
            ("POST", _, false) => "create",
            (m, _, _) => panic!("the agent made a call no rule could allow: {m} {path}"),
        };
        calls.push(format!("{verb} {group}/{resource}"));
        let rule = rules.iter().position(|(g, res, verbs)| {
            g.contains(&group) && res.contains(&resource) && verbs.contains(&verb.to_string())
        });
        match rule {
            Some(i) => used[i] = true,
            None => panic!("{verb} {group}/{resource} ({path}) is not allowed by the roles"),
        }
    }
    calls.sort();
    calls.dedup();
    eprintln!("calls: {calls:#?}");
    for (i, u) in used.iter().enumerate() {
        assert!(
            u,
            "ClusterRole rule {:?} is never used: {calls:#?}",
            rules[i]
        );
    }
    // Each rule's every resource and verb, too.
    for (groups, resources, verbs) in &rules {
        for g in groups {
            for r in resources {
                for v in verbs {
                    assert!(
                        calls.contains(&format!("{v} {g}/{r}")),
                        "the ClusterRole grants {v} {g}/{r}, which the agent never does: {calls:#?}"
                    );
                }
            }
        }
    }
    c.agent.stop();
}

/// (apiGroups, resources, verbs) of the ClusterRole's and Role's rules.
fn cluster_role_rules(yaml: &str) -> Vec<(Vec<String>, Vec<String>, Vec<String>)> {
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for doc in yaml.split("\n---\n") {
        let v: serde_json::Value = serde_norway::from_str(doc).expect("rbac.yaml parses");
        if v["kind"] != "ClusterRole" && v["kind"] != "Role" {
            continue;
        }
        for r in v["rules"].as_array().expect("rules") {
            out.push((
                strings(&r["apiGroups"]),
                strings(&r["resources"]),
                strings(&r["verbs"]),
            ));
        }
    }
    assert!(!out.is_empty(), "no ClusterRole in rbac.yaml");
    out
}

/// (group, resource, names one object) of a resource path; None for
/// discovery paths.
fn resource_of(path: &str) -> Option<(String, String, bool)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _v, rest @ ..] => (String::new(), rest),
        ["apis", g, _v, rest @ ..] => (g.to_string(), rest),
        _ => return None,
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] if !rest.is_empty() => rest,
        r => r,
    };
    match rest {
        [resource] => Some((group, resource.to_string(), false)),
        [resource, _name] => Some((group, resource.to_string(), true)),
        [resource, _name, sub] => Some((group, format!("{resource}/{sub}"), true)),
        _ => None,
    }
}

/// SIGTERM, as the kubelet sends it: the ports close at once, live
/// connections keep working for the drain timeout, then close, and the
/// counts are logged.
#[test]
fn sigterm_drains_live_connections_then_closes_them() {
    gateway_tests::needs_root!();
    let one = Echo::start(loopback(1), "one");
    let c = Cluster::start("kube-term", &["--drain-timeout", "3s"]);
    let addr = c.agent.addr(PORT);
    c.pod(pod("tcp-echo-v1-7d9f", V1, &one, true));
    c.api.apply(NS, &[&seed("tcp-echo-all-v1.yaml")]);
    eventually_all(addr, "one");
    let mut held = Held::open(addr);
    assert_eq!(held.who("before"), "one");
    let mut finished = Held::open(addr);
    assert_eq!(finished.who("before"), "one");

    let stopped = Instant::now();
    c.agent.terminate();
    eventually(Duration::from_secs(5), "the port closes", || {
        TcpStream::connect(addr).is_err()
    });
    assert_eq!(held.who("while draining"), "one");
    drop(finished);
    let line = c
        .agent
        .wait_log(&["drained:"], Duration::from_secs(10))
        .unwrap_or_else(|| panic!("{:#?}", c.agent.stderr()));
    assert!(
        line.contains("2 connections open at stop, 1 finished")
            && line.contains("1 closed at the drain timeout (3s)"),
        "{line}"
    );
    assert!(stopped.elapsed() >= Duration::from_millis(2900), "{line}");
    assert!(
        matches!(
            held.wait_closed(Duration::from_secs(5)),
            Some(Ok(0)) | Some(Err(_))
        ),
        "closed after the drain"
    );
    c.agent.stop();
}
