//! End-to-end tests of the config layer: Istio's TCP traffic shifting task
//! with its files as given (testdata/seed/, copies of the user's inputs),
//! the project's own example files, and every kind of bad input.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc, time::Duration};

use super::*;

const NS: &str = "istio-io-tcp-traffic-shifting";
const FQDN: &str = "tcp-echo.istio-io-tcp-traffic-shifting.svc.cluster.local";

const ALL_V1: &str = include_str!("testdata/seed/tcp-echo-all-v1.yaml");
const V2_20: &str = include_str!("testdata/seed/tcp-echo-20-v2.yaml");
const SERVICES: &str = include_str!("testdata/seed/tcp-echo-services.yaml");
const INGRESS_SERVICE: &str = include_str!("testdata/seed/istio-ingressgateway-service.yaml");
const ENDPOINTS: &str =
    include_str!("../../../manifests/examples/tcp-echo/tcp-echo-endpoints.yaml");
const ALL_V2: &str = include_str!("../../../manifests/examples/tcp-echo/tcp-echo-all-v2.yaml");

fn parse_ns(text: &str, file: &str) -> Batch {
    parse(text, file, Some(NS)).unwrap_or_else(|e| panic!("{file} should parse:\n{e}"))
}

fn apply(store: &Store, text: &str, file: &str) -> Applied {
    let batch = parse_ns(text, file);
    store
        .apply(&batch.resources)
        .unwrap_or_else(|e| panic!("{file} should apply:\n{e}"))
}

/// A store holding the endpoints and Istio's all-v1 file.
fn task_store() -> Store {
    let store = Store::new(Agent::default());
    let store = apply(&store, ENDPOINTS, "tcp-echo-endpoints.yaml").store;
    apply(&store, ALL_V1, "tcp-echo-all-v1.yaml").store
}

fn snapshot(store: &Store) -> Snapshot {
    store
        .snapshot()
        .unwrap_or_else(|e| panic!("snapshot:\n{e}"))
}

/// (cluster name, weight) of each destination of the only listener.
fn split(snap: &Snapshot) -> Vec<(String, u32)> {
    assert_eq!(snap.listeners.len(), 1, "{snap:#?}");
    snap.listeners[0]
        .route
        .destinations
        .iter()
        .map(|d| (d.cluster.name.clone(), d.weight))
        .collect()
}

fn v(subset: &str) -> String {
    format!("outbound|9000|{subset}|{FQDN}")
}

fn ip(s: &str) -> Address {
    Address::Ip(s.parse::<IpAddr>().unwrap_or_else(|e| panic!("{s}: {e}")))
}

/// Applies `text` on top of `store`, expects a refusal mentioning every
/// piece of `expected`, and checks the old store still serves as before.
fn refused(store: &Store, text: &str, file: &str, expected: &[&str]) -> String {
    let before = store.snapshot().ok();
    let count = store.resources().count();
    let err = match parse(text, file, Some(NS)) {
        Err(e) => e,
        Ok(batch) => match store.apply(&batch.resources) {
            Err(e) => e,
            Ok(a) => panic!("{file} should be refused, got {:#?}", a.snapshot),
        },
    };
    let msg = err.to_string();
    for piece in expected {
        assert!(msg.contains(piece), "missing {piece:?} in:\n{msg}");
    }
    assert_eq!(store.snapshot().ok(), before, "the old store changed");
    assert_eq!(store.resources().count(), count);
    msg
}

fn has_warning(snap: &Snapshot, pieces: &[&str]) -> bool {
    snap.warnings
        .iter()
        .map(|w| w.to_string())
        .any(|w| pieces.iter().all(|p| w.contains(p)))
}

// -------------------------------------------------------------- the task

#[test]
fn seed_files_parse_unchanged() {
    let all = parse_ns(ALL_V1, "tcp-echo-all-v1.yaml");
    let kinds: Vec<Kind> = all.resources.iter().map(|r| r.id.kind).collect();
    assert_eq!(
        kinds,
        [Kind::Gateway, Kind::DestinationRule, Kind::VirtualService]
    );
    assert!(all.resources.iter().all(|r| r.id.namespace == NS));
    assert!(all.notes.is_empty());

    let shift = parse_ns(V2_20, "tcp-echo-20-v2.yaml");
    assert_eq!(shift.resources.len(), 1);
    assert_eq!(
        shift.resources[0].api_version,
        "networking.istio.io/v1alpha3"
    );

    // A Service is read (its endpoints may come from EndpointSlice
    // documents); the Deployments are skipped with a note, not refused.
    let services = parse_ns(SERVICES, "tcp-echo-services.yaml");
    assert_eq!(services.resources.len(), 1);
    assert_eq!(
        services.resources[0].id.to_string(),
        format!("Service {NS}/tcp-echo")
    );
    assert_eq!(services.notes.len(), 2, "{:#?}", services.notes);
    assert!(services.notes[0]
        .to_string()
        .contains("tcp-echo-services.yaml: document 2"));
    assert!(services.notes[0]
        .to_string()
        .contains("Deployment tcp-echo-v1"));

    // The ingress gateway's own Service names istio-system: read as
    // written without -n, refused with -n of another namespace, as kubectl
    // does.
    let ingress = parse(INGRESS_SERVICE, "istio-ingressgateway-service.yaml", None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ingress.resources.len(), 1);
    assert_eq!(ingress.resources[0].namespace(), "istio-system");
    let e = parse(INGRESS_SERVICE, "x.yaml", Some(NS))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("metadata.namespace"), "{e}");
}

#[test]
fn traffic_shifting_task_end_to_end() {
    let store = Store::new(Agent::default());
    // Step 2 and 3: Kubernetes files, nothing to serve yet.
    let batch = parse_ns(SERVICES, "tcp-echo-services.yaml");
    let step = store
        .apply(&batch.resources)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(step.snapshot.listeners.is_empty());
    let store = apply(&step.store, ENDPOINTS, "tcp-echo-endpoints.yaml").store;

    // Step 4: 100% v1.
    let step = apply(&store, ALL_V1, "tcp-echo-all-v1.yaml");
    let actions: Vec<Action> = step.changes.iter().map(|c| c.action).collect();
    assert_eq!(actions, [Action::Created; 3]);
    assert_eq!(
        step.changes[2].to_string(),
        "virtualservice.networking.istio.io/tcp-echo created"
    );
    let snap = &step.snapshot;
    assert_eq!(split(snap), [(v("v1"), 100)]);
    let listener = &snap.listeners[0];
    assert_eq!(listener.port, 31400);
    // Where the port came from, to blame it if the system refuses it.
    assert_eq!(
        listener.origin.to_string(),
        format!("tcp-echo-all-v1.yaml: document 1 (Gateway {NS}/tcp-echo-gateway)")
    );
    assert_eq!(listener.server, 0);
    assert_eq!(listener.gateway, format!("{NS}/tcp-echo-gateway"));
    assert_eq!(listener.route.virtual_service, format!("{NS}/tcp-echo"));
    assert_eq!(listener.route.rule, 0);
    let v1 = &listener.route.destinations[0].cluster;
    assert_eq!(v1.endpoints.len(), 1);
    assert_eq!(v1.endpoints[0].address, ip("127.0.0.1"));
    assert_eq!(v1.endpoints[0].port, 9000);
    assert_eq!(v1.endpoints[0].weight, 1);
    assert_eq!(
        v1.endpoints[0].labels.get("version").map(String::as_str),
        Some("v1")
    );
    assert_eq!(v1.lb, LbPolicy::LeastRequest);
    assert_eq!(v1.connect_timeout, Duration::from_secs(10));
    assert_eq!(v1.idle_timeout, Some(Duration::from_secs(3600)));
    assert!(snap.warnings.is_empty(), "{:#?}", snap.warnings);

    // Step 6: 80/20.
    let step = apply(&step.store, V2_20, "tcp-echo-20-v2.yaml");
    assert_eq!(step.changes[0].action, Action::Configured);
    assert_eq!(split(&step.snapshot), [(v("v1"), 80), (v("v2"), 20)]);
    let v2 = &step.snapshot.listeners[0].route.destinations[1].cluster;
    assert_eq!(v2.endpoints[0].address, ip("127.0.0.2"));

    // Step 7: 100% v2, with the project's own file.
    let step = apply(&step.store, ALL_V2, "tcp-echo-all-v2.yaml");
    assert_eq!(split(&step.snapshot), [(v("v2"), 100)]);

    // Re-applying the same file changes nothing.
    let again = apply(&step.store, ALL_V2, "tcp-echo-all-v2.yaml");
    assert_eq!(again.changes[0].action, Action::Unchanged);
    assert_eq!(again.snapshot, step.snapshot);

    // Cleanup, in Istio's order: all-v1's resources go; the VirtualService
    // was replaced in place, so it goes too, and 20-v2 finds nothing.
    let all = parse_ns(ALL_V1, "tcp-echo-all-v1.yaml");
    let gone = step
        .store
        .delete(&all.resources)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(gone.snapshot.listeners.is_empty());
    assert!(gone.changes.iter().all(|c| c.action == Action::Deleted));
    let shift = parse_ns(V2_20, "tcp-echo-20-v2.yaml");
    let none = gone
        .store
        .delete(&shift.resources)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(none.changes[0].action, Action::NotFound);
}

#[test]
fn seed_and_example_files_resolve_in_one_apply() {
    let mut batch = Batch::default();
    for (text, file) in [
        (SERVICES, "tcp-echo-services.yaml"),
        (ENDPOINTS, "tcp-echo-endpoints.yaml"),
        (ALL_V1, "tcp-echo-all-v1.yaml"),
    ] {
        batch.extend(parse_ns(text, file));
    }
    batch.extend(
        parse(INGRESS_SERVICE, "istio-ingressgateway-service.yaml", None).unwrap_or_default(),
    );
    let applied = Store::new(Agent::default())
        .apply(&batch.resources)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(split(&applied.snapshot), [(v("v1"), 100)]);
}

#[test]
fn routes_before_endpoints_are_refused_and_say_why() {
    let store = Store::new(Agent::default());
    refused(
        &store,
        ALL_V1,
        "tcp-echo-all-v1.yaml",
        &[
            "tcp-echo-all-v1.yaml: document 3 (VirtualService istio-io-tcp-traffic-shifting/tcp-echo): \
             spec.tcp[0].route[0].destination.host: host tcp-echo.istio-io-tcp-traffic-shifting.svc.cluster.local \
             is not defined by any ServiceEntry",
        ],
    );
}

#[test]
fn update_applies_and_removes_in_one_step() {
    let store = task_store();
    let endpoints = parse_ns(ENDPOINTS, "tcp-echo-endpoints.yaml");
    let v1_workload = endpoints.resources[1].id.clone();
    assert_eq!(v1_workload.name, "tcp-echo-v1");
    // Removing v1's workload alone leaves the route without endpoints ...
    let err = store.update(&[], std::slice::from_ref(&v1_workload));
    assert!(err.is_err());
    // ... but not when the route moves to v2 in the same step.
    let all_v2 = parse_ns(ALL_V2, "tcp-echo-all-v2.yaml");
    let step = store
        .update(&all_v2.resources, std::slice::from_ref(&v1_workload))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(split(&step.snapshot), [(v("v2"), 100)]);
    let actions: Vec<Action> = step.changes.iter().map(|c| c.action).collect();
    assert_eq!(actions, [Action::Configured, Action::Deleted]);
    // An id both applied and removed is applied.
    let vs = all_v2.resources[0].id.clone();
    let step = store
        .update(&all_v2.resources, &[vs])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(step.changes.len(), 1);
    assert_eq!(store.resources().count(), 6, "the old store is untouched");
}

#[test]
fn a_namespace_default_does_not_refuse_other_namespaces() {
    let text = V2_20.replace(
        "  name: tcp-echo\n",
        "  name: tcp-echo\n  namespace: elsewhere\n",
    );
    let batch = parse(&text, "vs.yaml", Namespace::Default(NS)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(batch.resources[0].id.namespace, "elsewhere");
    let batch = parse(V2_20, "vs.yaml", Namespace::Default(NS)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(batch.resources[0].id.namespace, NS);
    assert!(parse(&text, "vs.yaml", Namespace::Only(NS)).is_err());
}

// ------------------------------------------------------------ bad input

const VS_HEAD: &str = "apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: tcp-echo
spec:
  hosts:
  - \"*\"
  gateways:
  - tcp-echo-gateway
  tcp:
  - match:
    - port: 31400
    route:
";

/// Istio's all-v1 file with its VirtualService's routes replaced.
fn all_v1_with_routes(routes: &str) -> String {
    let (head, _) = ALL_V1
        .split_once("---\napiVersion: networking.istio.io/v1alpha3\nkind: VirtualService")
        .unwrap_or_else(|| panic!("seed layout changed"));
    format!("{head}---\n{VS_HEAD}{routes}")
}

fn route(subset: &str, weight: &str) -> String {
    format!(
        "    - destination:\n        host: tcp-echo\n        port:\n          number: 9000\n        subset: {subset}\n{weight}"
    )
}

#[test]
fn malformed_yaml_names_file_document_line_and_column() {
    let text = format!("{ALL_V1}\n---\napiVersion: v1\nkind: Foo\n  bad: indent\n");
    let msg = refused(&task_store(), &text, "tcp-echo-bad.yaml", &["tcp-echo-bad.yaml: document 4: malformed YAML: mapping values are not allowed in this context (line 52, column 6)"]);
    assert!(!msg.contains('?'), "{msg}");
}

#[test]
fn wrong_type_names_the_field_and_position() {
    let text = all_v1_with_routes(&route("v1", "      weight: eighty\n"));
    let msg = refused(
        &task_store(),
        &text,
        "tcp-echo-bad.yaml",
        &[
            "tcp-echo-bad.yaml: document 3 (VirtualService istio-io-tcp-traffic-shifting/tcp-echo): \
             spec.tcp[0].route[0].weight: invalid type: string \"eighty\"",
            "(line 48, column 15)",
        ],
    );
    assert!(!msg.contains("at line"), "position given twice: {msg}");
}

#[test]
fn unknown_enum_value_lists_the_valid_ones() {
    let text = ALL_V1.replacen(
        "spec:\n  host: tcp-echo\n",
        "spec:\n  host: tcp-echo\n  trafficPolicy:\n    loadBalancer:\n      simple: ROUND_ROBINN\n",
        1,
    );
    refused(
        &task_store(),
        &text,
        "tcp-echo-bad.yaml",
        &[
            "document 2 (DestinationRule istio-io-tcp-traffic-shifting/tcp-echo-destination): \
             spec.trafficPolicy.loadBalancer.simple: unknown variant `ROUND_ROBINN`",
            "`ROUND_ROBIN`",
        ],
    );
}

#[test]
fn missing_required_field() {
    let text = all_v1_with_routes("    - destination:\n        subset: v1\n");
    refused(
        &task_store(),
        &text,
        "tcp-echo-bad.yaml",
        &["document 3 (VirtualService istio-io-tcp-traffic-shifting/tcp-echo): spec.tcp[0].route[0].destination: missing field `host`"],
    );
    let no_name = ALL_V1.replacen("  name: tcp-echo-gateway\n", "  labels: {}\n", 1);
    refused(
        &task_store(),
        &no_name,
        "x.yaml",
        &["x.yaml: document 1: metadata.name: metadata.name is required"],
    );
    let no_kind = ALL_V1.replacen("kind: Gateway\n", "", 1);
    refused(
        &task_store(),
        &no_kind,
        "x.yaml",
        &["x.yaml: document 1: kind: kind is required"],
    );
}

#[test]
fn unknown_fields_in_spec_are_refused_like_kubectl_strict() {
    let text = all_v1_with_routes(&route("v1", "      weigth: 80\n"));
    refused(
        &task_store(),
        &text,
        "tcp-echo-bad.yaml",
        &["tcp-echo-bad.yaml: document 3 (VirtualService istio-io-tcp-traffic-shifting/tcp-echo): \
           spec.tcp[0].route[0].weigth: unknown field `weigth`, expected `destination` or `weight` (line 48, column 7)"],
    );
}

#[test]
fn unknown_subset_names_the_referring_document() {
    let text = all_v1_with_routes(&format!(
        "{}{}",
        route("v1", "      weight: 80\n"),
        route("v3", "      weight: 20\n")
    ));
    refused(
        &task_store(),
        &text,
        "tcp-echo-bad.yaml",
        &["tcp-echo-bad.yaml: document 3 (VirtualService istio-io-tcp-traffic-shifting/tcp-echo): \
           spec.tcp[0].route[1].destination.subset: subset \"v3\" is not defined in any DestinationRule \
           for host tcp-echo.istio-io-tcp-traffic-shifting.svc.cluster.local (defined: v1, v2)"],
    );
}

#[test]
fn weights_follow_istio_validation() {
    let store = task_store();
    let two = |a: &str, b: &str| {
        all_v1_with_routes(&format!(
            "{}{}",
            route("v1", &format!("      weight: {a}\n")),
            route("v2", &format!("      weight: {b}\n"))
        ))
    };
    refused(
        &store,
        &two("-20", "120"),
        "w.yaml",
        &["spec.tcp[0].route[0].weight: weight -20 must not be negative"],
    );
    refused(
        &store,
        &two("0", "0"),
        "w.yaml",
        &["spec.tcp[0].route: total destination weight is 0"],
    );

    // Weights are relative: no upper bound, no need to add up to 100.
    let snap = apply(&store, &two("1", "3"), "w.yaml").snapshot;
    assert_eq!(split(&snap), [(v("v1"), 1), (v("v2"), 3)]);
    let snap = apply(&store, &two("250", "0"), "w.yaml").snapshot;
    assert_eq!(split(&snap), [(v("v1"), 250)]);
    // A lone destination takes everything, whatever its weight.
    let snap = apply(
        &store,
        &all_v1_with_routes(&route("v2", "      weight: 0\n")),
        "w.yaml",
    )
    .snapshot;
    assert_eq!(split(&snap), [(v("v2"), 100)]);
    let snap = apply(
        &store,
        &all_v1_with_routes(&route("v2", "      weight: 30\n")),
        "w.yaml",
    )
    .snapshot;
    assert_eq!(split(&snap), [(v("v2"), 100)]);
}

#[test]
fn a_route_to_a_host_without_endpoints_is_refused() {
    let store = task_store();
    // A subset whose labels no endpoint has.
    let text = all_v1_with_routes(&format!(
        "{}{}",
        route("v1", "      weight: 80\n"),
        route("v2", "      weight: 20\n")
    ))
    .replace("      version: v2\n", "      version: v9\n");
    refused(
        &store,
        &text,
        "tcp-echo-bad.yaml",
        &["tcp-echo-bad.yaml: document 3 (VirtualService istio-io-tcp-traffic-shifting/tcp-echo): spec.tcp[0].route[1].destination: \
           no endpoints for host tcp-echo.istio-io-tcp-traffic-shifting.svc.cluster.local port 9000 subset v2: \
           ServiceEntry istio-io-tcp-traffic-shifting/tcp-echo has 2 endpoint(s), none labelled version=v9"],
    );
    // Deleting the endpoints under a live route is refused too.
    let endpoints = parse_ns(ENDPOINTS, "tcp-echo-endpoints.yaml");
    let err = store
        .delete(&endpoints.resources[1..])
        .err()
        .map(|e| e.to_string());
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("no endpoints") && e.contains("selects no WorkloadEntry")),
        "{err:?}"
    );
    assert_eq!(store.resources().count(), 6);
}

#[test]
fn a_missing_gateway_is_a_warning_as_in_istio() {
    let store = task_store();
    let text = V2_20.replace("  - tcp-echo-gateway", "  - tcp-echo-gatewy");
    let snap = apply(&store, &text, "typo.yaml").snapshot;
    assert!(snap.listeners.is_empty());
    assert!(
        has_warning(
            &snap,
            &[
                "typo.yaml: document 1 (VirtualService",
                "spec.gateways[0]: gateway istio-io-tcp-traffic-shifting/tcp-echo-gatewy not found"
            ]
        ),
        "{:#?}",
        snap.warnings
    );
    assert!(has_warning(
        &snap,
        &[
            "spec.servers[0]: no VirtualService binds a TCP route",
            "port 31400 is not served"
        ]
    ));
}

const OTHER_GATEWAY: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: other
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 31400
      name: web
      protocol: PROTOCOL
    hosts:
    - \"*\"
";

#[test]
fn port_clashes_are_refused() {
    let store = task_store();
    for protocol in ["HTTP", "TCP"] {
        refused(
            &store,
            &OTHER_GATEWAY.replace("PROTOCOL", protocol),
            "other.yaml",
            &[&format!(
                "other.yaml: document 1 (Gateway istio-io-tcp-traffic-shifting/other): spec.servers[0].port.number: \
                 port 31400 ({protocol}) is already declared by Gateway istio-io-tcp-traffic-shifting/tcp-echo-gateway \
                 (tcp-echo-all-v1.yaml document 1, spec.servers[0], TCP)"
            )],
        );
    }
    // A gateway for other workloads does not clash.
    let elsewhere = OTHER_GATEWAY
        .replace("PROTOCOL", "TCP")
        .replace("istio: ingressgateway", "istio: egressgateway");
    let snap = apply(&store, &elsewhere, "other.yaml").snapshot;
    assert_eq!(snap.listeners.len(), 1);
    assert!(has_warning(
        &snap,
        &["spec.selector: selects istio=egressgateway"]
    ));

    let agent = Agent {
        reserved_ports: BTreeMap::from([(31400, "the metrics endpoint".to_string())]),
        ..Agent::default()
    };
    let reserved = apply(&Store::new(agent), ENDPOINTS, "e.yaml").store;
    refused(
        &reserved,
        ALL_V1,
        "tcp-echo-all-v1.yaml",
        &["document 1 (Gateway istio-io-tcp-traffic-shifting/tcp-echo-gateway): spec.servers[0].port.number: \
           port 31400 is reserved by this gateway for the metrics endpoint"],
    );
}

#[test]
fn non_tcp_servers_are_skipped_with_a_warning() {
    let text = ALL_V1.replacen(
        "  servers:\n",
        "  servers:\n  - port:\n      number: 80\n      name: http\n      protocol: HTTP\n    hosts:\n    - \"*\"\n",
        1,
    );
    let snap = apply(&task_store(), &text, "gw.yaml").snapshot;
    assert_eq!(split(&snap), [(v("v1"), 100)]);
    assert!(has_warning(
        &snap,
        &[
            "gw.yaml: document 1",
            "spec.servers[0].port.protocol: HTTP servers are not supported"
        ]
    ));
}

#[test]
fn duplicate_names_in_one_apply_are_refused() {
    let text = format!("{ALL_V1}\n---\n{V2_20}");
    refused(
        &task_store(),
        &text,
        "twice.yaml",
        &["twice.yaml: document 4 (VirtualService istio-io-tcp-traffic-shifting/tcp-echo): metadata.name: \
           VirtualService istio-io-tcp-traffic-shifting/tcp-echo is also defined by twice.yaml document 3"],
    );
}

#[test]
fn namespace_and_api_version_checks() {
    let text = V2_20.replace(
        "  name: tcp-echo\n",
        "  name: tcp-echo\n  namespace: default\n",
    );
    refused(
        &task_store(),
        &text,
        "ns.yaml",
        &["ns.yaml: document 1 (VirtualService default/tcp-echo): metadata.namespace: the document's namespace \"default\" does not match the requested namespace \"istio-io-tcp-traffic-shifting\""],
    );
    // Without -n the document's own namespace is used, else "default".
    let batch = parse(&text, "ns.yaml", None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(batch.resources[0].id.namespace, "default");
    let batch = parse(V2_20, "ns.yaml", None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(batch.resources[0].id.namespace, DEFAULT_NAMESPACE);

    let text = V2_20.replace("networking.istio.io/v1alpha3", "networking.istio.io/v2");
    refused(
        &task_store(),
        &text,
        "v.yaml",
        &["v.yaml: document 1: apiVersion: networking.istio.io/v2 is not served"],
    );
    let text = V2_20.replace("kind: VirtualService", "kind: VirtualServce");
    refused(
        &task_store(),
        &text,
        "v.yaml",
        &["kind: unknown kind \"VirtualServce\""],
    );
}

#[test]
fn all_three_api_versions_give_the_same_snapshot() {
    let reference = snapshot(&apply(&task_store(), V2_20, "s.yaml").store);
    for version in ["v1alpha3", "v1beta1", "v1"] {
        let to = format!("networking.istio.io/{version}");
        let endpoints = ENDPOINTS.replace("networking.istio.io/v1\n", &format!("{to}\n"));
        let all = ALL_V1.replace("networking.istio.io/v1alpha3", &to);
        let shift = V2_20.replace("networking.istio.io/v1alpha3", &to);
        let store = Store::new(Agent::default());
        let store = apply(&store, &endpoints, "e.yaml").store;
        // The listener names the Gateway's file: keep the reference's.
        let store = apply(&store, &all, "tcp-echo-all-v1.yaml").store;
        let snap = apply(&store, &shift, "s.yaml").snapshot;
        assert_eq!(snap.listeners, reference.listeners, "{version}");
        assert!(parse_ns(&all, "a.yaml")
            .resources
            .iter()
            .all(|r| r.api_version == to));
    }
}

// ---------------------------------------------------- hosts and services

const SE_INLINE: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: echo
spec:
  hosts:
  - HOST
  ports:
  - number: 9000
    name: tcp
    protocol: TCP
    targetPort: 7000
  - number: 9001
    name: tcp-other
  resolution: RESOLUTION
  endpoints:
  - address: ADDRESS1
    ports:
      tcp: 19000
    labels:
      version: v1
    weight: 3
  - address: ADDRESS2
    labels:
      version: v2
";

fn inline_se(host: &str, resolution: &str, a1: &str, a2: &str) -> String {
    SE_INLINE
        .replace("HOST", host)
        .replace("RESOLUTION", resolution)
        .replace("ADDRESS1", a1)
        .replace("ADDRESS2", a2)
}

fn vs_to(host: &str, port: Option<u16>, subset: Option<&str>) -> String {
    let mut d = format!("    - destination:\n        host: {host}\n");
    if let Some(p) = port {
        d.push_str(&format!("        port:\n          number: {p}\n"));
    }
    if let Some(s) = subset {
        d.push_str(&format!("        subset: {s}\n"));
    }
    let gw = ALL_V1
        .split("---")
        .next()
        .unwrap_or_else(|| panic!("seed layout changed"));
    format!("{gw}---\n{VS_HEAD}{d}")
}

#[test]
fn inline_endpoints_and_port_mapping() {
    let se = inline_se("echo.example.com", "STATIC", "10.0.0.1", "10.0.0.2");
    let store = apply(&Store::new(Agent::default()), &se, "se.yaml").store;

    // Port 9000: endpoint.ports[tcp] for the first, targetPort for the second.
    let snap = apply(
        &store,
        &vs_to("echo.example.com", Some(9000), None),
        "vs.yaml",
    )
    .snapshot;
    let c = &snap.listeners[0].route.destinations[0].cluster;
    assert_eq!(c.name, "outbound|9000||echo.example.com");
    let eps: Vec<(Address, u16, u32)> = c
        .endpoints
        .iter()
        .map(|e| (e.address.clone(), e.port, e.weight))
        .collect();
    assert_eq!(eps, [(ip("10.0.0.1"), 19000, 3), (ip("10.0.0.2"), 7000, 1)]);

    // Port 9001: neither, so the port number itself.
    let snap = apply(
        &store,
        &vs_to("echo.example.com", Some(9001), None),
        "vs.yaml",
    )
    .snapshot;
    let c = &snap.listeners[0].route.destinations[0].cluster;
    assert_eq!(
        c.endpoints.iter().map(|e| e.port).collect::<Vec<_>>(),
        [9001, 9001]
    );

    // No port and two service ports: the gateway port is used, and is not one.
    refused(
        &store,
        &vs_to("echo.example.com", None, None),
        "vs.yaml",
        &["spec.tcp[0].route[0].destination: port 31400 (no port given, so the gateway port is used) is not a port of host echo.example.com in ServiceEntry istio-io-tcp-traffic-shifting/echo (9000 (tcp), 9001 (tcp-other))"],
    );
}

#[test]
fn workload_selector_picks_entries_of_its_namespace() {
    let store = task_store();
    // A matching WorkloadEntry in another namespace is not selected.
    let stray = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: stray
  namespace: elsewhere
spec:
  address: 10.9.9.9
  labels:
    app: tcp-echo
    version: v1
";
    let batch = parse(stray, "stray.yaml", None).unwrap_or_else(|e| panic!("{e}"));
    let snap = store
        .apply(&batch.resources)
        .unwrap_or_else(|e| panic!("{e}"))
        .snapshot;
    let c = &snap.listeners[0].route.destinations[0].cluster;
    assert_eq!(c.endpoints.len(), 1);
    assert_eq!(c.endpoints[0].address, ip("127.0.0.1"));
}

#[test]
fn dns_endpoints_stay_names() {
    let se = inline_se("echo.example.com", "DNS", "echo-1.example.com", "10.0.0.2");
    let store = apply(&Store::new(Agent::default()), &se, "se.yaml").store;
    let snap = apply(
        &store,
        &vs_to("echo.example.com", Some(9000), None),
        "vs.yaml",
    )
    .snapshot;
    let c = &snap.listeners[0].route.destinations[0].cluster;
    assert_eq!(
        c.endpoints[0].address,
        Address::Dns("echo-1.example.com".into())
    );
    assert_eq!(c.endpoints[1].address, ip("10.0.0.2"));

    // A DNS ServiceEntry without endpoints reaches its own host.
    let bare = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: ext
spec:
  hosts:
  - db.example.com
  location: MESH_EXTERNAL
  ports:
  - number: 5432
    name: tcp-pg
    protocol: TCP
  resolution: DNS
";
    let store = apply(&Store::new(Agent::default()), bare, "se.yaml").store;
    let snap = apply(&store, &vs_to("db.example.com", None, None), "vs.yaml").snapshot;
    let c = &snap.listeners[0].route.destinations[0].cluster;
    assert_eq!(c.name, "outbound|5432||db.example.com");
    assert_eq!(
        c.endpoints[0].address,
        Address::Dns("db.example.com".into())
    );
    assert_eq!(c.endpoints[0].port, 5432);

    // STATIC refuses host names outright.
    let bad = inline_se(
        "echo.example.com",
        "STATIC",
        "echo-1.example.com",
        "10.0.0.2",
    );
    refused(
        &Store::new(Agent::default()),
        &bad,
        "se.yaml",
        &["se.yaml: document 1 (ServiceEntry istio-io-tcp-traffic-shifting/echo): spec.endpoints[0].address: endpoint address \"echo-1.example.com\" is not a valid IP address"],
    );
}

#[test]
fn host_resolution_follows_istio() {
    let store = task_store();
    // The FQDN works as the short name does.
    let snap = apply(&store, &vs_to(FQDN, Some(9000), Some("v1")), "vs.yaml").snapshot;
    assert_eq!(split(&snap), [(v("v1"), 100)]);
    // `name.namespace` is taken literally, as Istio does; the error hints.
    refused(
        &store,
        &vs_to("tcp-echo.istio-io-tcp-traffic-shifting", Some(9000), None),
        "vs.yaml",
        &["host tcp-echo.istio-io-tcp-traffic-shifting is not defined by any ServiceEntry; did you mean tcp-echo.istio-io-tcp-traffic-shifting.svc.cluster.local?"],
    );
    // A short name resolves in the VirtualService's namespace, not the service's.
    let elsewhere = VS_HEAD.replace(
        "  - tcp-echo-gateway",
        "  - istio-io-tcp-traffic-shifting/tcp-echo-gateway",
    ) + "    - destination:\n        host: tcp-echo\n";
    let batch = parse(&elsewhere, "vs.yaml", Some("other")).unwrap_or_else(|e| panic!("{e}"));
    let (head, _) = ALL_V1
        .split_once("---\napiVersion: networking.istio.io/v1alpha3\nkind: VirtualService")
        .unwrap_or_else(|| panic!("seed layout changed"));
    let no_route = apply(&Store::new(Agent::default()), ENDPOINTS, "e.yaml").store;
    let no_route = apply(&no_route, head, "gw-dr.yaml").store;
    let err = no_route
        .apply(&batch.resources)
        .err()
        .map(|e| e.to_string());
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("host tcp-echo.other.svc.cluster.local is not defined")),
        "{err:?}"
    );
}

#[test]
fn resolution_none_is_refused_when_routed_to() {
    let se = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: passthrough
spec:
  hosts:
  - p.example.com
  ports:
  - number: 443
    name: tls
    protocol: TLS
";
    let store = apply(&Store::new(Agent::default()), se, "se.yaml").store;
    refused(
        &store,
        &vs_to("p.example.com", None, None),
        "vs.yaml",
        &["spec.tcp[0].route[0].destination.host: ServiceEntry istio-io-tcp-traffic-shifting/passthrough has resolution NONE"],
    );
}

// ------------------------------------------------------------- policies

const DR_POLICY: &str = "apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: tcp-echo-destination
spec:
  host: tcp-echo
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
    connectionPool:
      tcp:
        connectTimeout: 1.5s
        idleTimeout: 1m
    portLevelSettings:
    - port:
        number: 9001
      loadBalancer:
        simple: LEAST_CONN
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
    trafficPolicy:
      loadBalancer:
        simple: RANDOM
      connectionPool:
        tcp:
          idleTimeout: 0s
";

#[test]
fn load_balancing_and_timeouts() {
    let store = apply(&task_store(), DR_POLICY, "dr.yaml").store;
    let snap = apply(&store, V2_20, "s.yaml").snapshot;
    let d = &snap.listeners[0].route.destinations;
    let (v1, v2) = (&d[0].cluster, &d[1].cluster);
    assert_eq!(v1.lb, LbPolicy::RoundRobin);
    assert_eq!(v1.connect_timeout, Duration::from_millis(1500));
    assert_eq!(v1.idle_timeout, Some(Duration::from_secs(60)));
    // The subset's policy overrides field by field: its own balancer and
    // pool, so the rule's connect timeout is gone and 0s disables idling.
    assert_eq!(v2.lb, LbPolicy::Random);
    assert_eq!(v2.connect_timeout, Duration::from_secs(10));
    assert_eq!(v2.idle_timeout, None);

    // Port 9001 has port-level settings, which replace the rule's wholesale.
    let snap = apply(
        &store,
        &vs_to("tcp-echo", Some(9001), Some("v1")),
        "vs.yaml",
    )
    .snapshot;
    let c = &snap.listeners[0].route.destinations[0].cluster;
    assert_eq!(c.name, format!("outbound|9001|v1|{FQDN}"));
    assert_eq!(c.lb, LbPolicy::LeastRequest);
    assert_eq!(c.connect_timeout, Duration::from_secs(10));
    assert_eq!(c.idle_timeout, Some(Duration::from_secs(3600)));

    let unspecified = DR_POLICY.replace("simple: ROUND_ROBIN", "simple: UNSPECIFIED");
    let snap = apply(&task_store(), &unspecified, "dr.yaml").snapshot;
    assert_eq!(
        snap.listeners[0].route.destinations[0].cluster.lb,
        LbPolicy::LeastRequest
    );

    let passthrough = DR_POLICY.replace("simple: ROUND_ROBIN", "simple: PASSTHROUGH");
    refused(
        &task_store(),
        &passthrough,
        "dr.yaml",
        &["tcp-echo-all-v1.yaml: document 3 (VirtualService istio-io-tcp-traffic-shifting/tcp-echo): spec.tcp[0].route[0].destination: DestinationRule istio-io-tcp-traffic-shifting/tcp-echo-destination sets loadBalancer.simple PASSTHROUGH"],
    );
}

#[test]
fn durations_are_checked_like_istio() {
    for (value, message) in [
        ("10", "invalid duration \"10\": missing unit"),
        ("5d", "invalid duration \"5d\": unknown unit \"d\""),
        ("500us", "duration must be at least 1ms"),
        ("1.0005s", "only durations to ms precision are supported"),
    ] {
        let text = DR_POLICY.replace("connectTimeout: 1.5s", &format!("connectTimeout: {value}"));
        refused(
            &task_store(),
            &text,
            "dr.yaml",
            &["dr.yaml: document 1 (DestinationRule istio-io-tcp-traffic-shifting/tcp-echo-destination): \
               spec.trafficPolicy.connectionPool.tcp.connectTimeout: ", message],
        );
    }
}

#[test]
fn unsupported_settings_are_warnings() {
    let dr = DR_POLICY.replace(
        "    loadBalancer:\n      simple: ROUND_ROBIN\n",
        "    loadBalancer:\n      simple: ROUND_ROBIN\n    outlierDetection:\n      consecutive5xxErrors: 7\n    tls:\n      mode: ISTIO_MUTUAL\n",
    );
    let vs = V2_20.replace(
        "  tcp:\n",
        "  http:\n  - route:\n    - destination:\n        host: tcp-echo\n  tcp:\n",
    );
    let vs = vs.replace(
        "    - port: 31400\n",
        "    - port: 31400\n      sourceLabels:\n        app: client\n",
    );
    let store = apply(&task_store(), &dr, "dr.yaml").store;
    let snap = apply(&store, &vs, "vs.yaml").snapshot;
    assert_eq!(split(&snap), [(v("v1"), 80), (v("v2"), 20)]);
    for pieces in [
        &[
            "dr.yaml: document 1",
            "spec.trafficPolicy.outlierDetection: not supported",
        ][..],
        &["spec.trafficPolicy.tls.mode: TLS origination (ISTIO_MUTUAL) is not supported"],
        &[
            "vs.yaml: document 1",
            "spec.http: HTTP routes are not supported",
        ],
        &["spec.tcp[0].match[0].sourceLabels: unsupported at a gateway"],
    ] {
        assert!(
            has_warning(&snap, pieces),
            "{pieces:?} in {:#?}",
            snap.warnings
        );
    }
}

#[test]
fn first_virtual_service_applied_wins_a_port() {
    let store = task_store();
    let other = ALL_V2.replace("  name: tcp-echo\n", "  name: tcp-echo-later\n");
    let snap = apply(&store, &other, "later.yaml").snapshot;
    assert_eq!(split(&snap), [(v("v1"), 100)]);
    assert!(has_warning(
        &snap,
        &["later.yaml: document 1 (VirtualService istio-io-tcp-traffic-shifting/tcp-echo-later): spec.tcp[0]: not used on port 31400",
          "VirtualService istio-io-tcp-traffic-shifting/tcp-echo spec.tcp[0] was applied first"]
    ));
    // Replacing the first one keeps its place.
    let snap = apply(
        &apply(&store, &other, "later.yaml").store,
        ALL_V2,
        "v2.yaml",
    )
    .snapshot;
    assert_eq!(split(&snap), [(v("v2"), 100)]);
}

#[test]
fn match_port_and_gateway_select_the_rule() {
    let routes = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: tcp-echo
spec:
  hosts:
  - \"*\"
  gateways:
  - tcp-echo-gateway
  tcp:
  - match:
    - port: 9999
    route:
    - destination:
        host: tcp-echo
        port:
          number: 9000
        subset: v1
  - match:
    - gateways:
      - istio-io-tcp-traffic-shifting/tcp-echo-gateway
    route:
    - destination:
        host: tcp-echo
        port:
          number: 9000
        subset: v2
";
    let snap = apply(&task_store(), routes, "vs.yaml").snapshot;
    assert_eq!(split(&snap), [(v("v2"), 100)]);
    assert_eq!(snap.listeners[0].route.rule, 1);
}

#[test]
fn shared_clusters_are_one_arc() {
    let mut text = ALL_V1.replace(
        "  - port:\n      number: 31400\n      name: tcp\n      protocol: TCP\n",
        "  - port:\n      number: 31400\n      name: tcp\n      protocol: TCP\n    hosts:\n    - \"*\"\n  - port:\n      number: 31401\n      name: tcp-2\n      protocol: TCP\n",
    );
    text = text.replace("    - port: 31400\n", "");
    let snap = apply(&task_store(), &text, "two-ports.yaml").snapshot;
    assert_eq!(
        snap.listeners.iter().map(|l| l.port).collect::<Vec<_>>(),
        [31400, 31401]
    );
    let a = &snap.listeners[0].route.destinations[0].cluster;
    let b = &snap.listeners[1].route.destinations[0].cluster;
    assert!(Arc::ptr_eq(a, b));
}

#[test]
fn other_kinds_are_skipped_with_notes() {
    let text = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-all
---
apiVersion: networking.istio.io/v1alpha3
kind: Sidecar
metadata:
  name: default
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: web
---
# only a comment
";
    let batch = parse_ns(text, "mixed.yaml");
    assert!(batch.resources.is_empty());
    let notes: Vec<String> = batch.notes.iter().map(|n| n.to_string()).collect();
    assert_eq!(notes.len(), 3, "{notes:#?}");
    assert!(notes[0].starts_with("mixed.yaml: document 1: AuthorizationPolicy deny-all"));
    assert!(notes[0].contains("not enforced by this gateway"));
    assert!(notes[1].contains("Sidecar default is not supported"));
    assert!(
        notes[2].contains("HTTPRoute web") && notes[2].contains("not served by this gateway"),
        "{notes:#?}"
    );
}

#[test]
fn one_destination_rule_per_host() {
    let second = ALL_V1
        .split("---")
        .nth(1)
        .unwrap_or_else(|| panic!("seed layout changed"))
        .replace("name: tcp-echo-destination", "name: tcp-echo-again")
        .replace("host: tcp-echo\n", &format!("host: {FQDN}\n"));
    refused(
        &task_store(),
        &second,
        "dr2.yaml",
        &["dr2.yaml: document 1 (DestinationRule istio-io-tcp-traffic-shifting/tcp-echo-again): spec.host: \
           host tcp-echo.istio-io-tcp-traffic-shifting.svc.cluster.local already has DestinationRule \
           istio-io-tcp-traffic-shifting/tcp-echo-destination"],
    );
}

#[test]
fn empty_or_odd_specs() {
    let gateway = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: empty\n";
    refused(&task_store(), gateway, "g.yaml", &["g.yaml: document 1 (Gateway istio-io-tcp-traffic-shifting/empty): spec.servers: a Gateway must have at least one server"]);
    let dotted = ALL_V1.replacen("name: tcp-echo-gateway", "name: tcp.echo", 1);
    refused(
        &task_store(),
        &dotted,
        "g.yaml",
        &["metadata.name: invalid gateway name"],
    );
    let three = all_v1_with_routes(&format!(
        "{}{}{}",
        route("v1", "      weight: 2147483647\n"),
        route("v2", "      weight: 2147483647\n"),
        route("v2", "      weight: 2147483647\n")
    ));
    refused(
        &task_store(),
        &three,
        "w.yaml",
        &["spec.tcp[0].route: the weights add up to 6442450941"],
    );
    let not_a_map = "- just\n- a list\n";
    refused(
        &task_store(),
        not_a_map,
        "l.yaml",
        &["l.yaml: document 1: a document must be a mapping"],
    );
}

#[test]
fn two_gateway_api_gateways_cannot_share_a_port() {
    let mut text = String::from(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: b
spec:
  hosts: [b.istio-io-tcp-traffic-shifting.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 3000, name: tcp, protocol: TCP}]
  endpoints: [{address: 127.0.0.1}]
",
    );
    for g in ["first", "second"] {
        text.push_str(&format!(
            "---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: {g}
spec:
  gatewayClassName: istio
  listeners: [{{name: tcp, protocol: TCP, port: 9300}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata:
  name: {g}
spec:
  parentRefs: [{{name: {g}}}]
  rules: [{{backendRefs: [{{name: b, port: 3000}}]}}]
"
        ));
    }
    let batch = parse_ns(&text, "two.yaml");
    let err = Store::new(Agent::default())
        .apply(&batch.resources)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains(&format!("(Gateway.gateway.networking.k8s.io {NS}/second): spec.listeners[0].port: port 9300 is already served by Gateway {NS}/first (gateway.networking.k8s.io")),
        "{err}"
    );
}

// ------------------------------------------- Services and EndpointSlices

const GW_API_ALL_V1: &str = include_str!("testdata/gateway-api/tcp-echo-all-v1.yaml");
const GW_API_20_V2: &str = include_str!("testdata/gateway-api/tcp-echo-20-v2.yaml");

/// An EndpointSlice of Service `service`, port `tcp` at `port`, with one
/// endpoint per address; `ready: false` on the ones listed unready.
fn slice(name: &str, service: &str, port: u16, addresses: &[&str], unready: &[&str]) -> String {
    let mut s = format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}
  labels:
    kubernetes.io/service-name: {service}
addressType: IPv4
ports:
- name: tcp
  port: {port}
  protocol: TCP
endpoints:
"
    );
    for a in addresses {
        let ready = !unready.contains(a);
        s.push_str(&format!(
            "- addresses: [\"{a}\"]\n  conditions:\n    ready: {ready}\n  nodeName: node-1\n"
        ));
    }
    s
}

/// The endpoints of each destination of the only listener.
fn endpoints_of(snap: &Snapshot) -> Vec<(String, u32, Vec<String>)> {
    assert_eq!(snap.listeners.len(), 1, "{snap:#?}");
    snap.listeners[0]
        .route
        .destinations
        .iter()
        .map(|d| {
            let eps = d
                .cluster
                .endpoints
                .iter()
                .map(|e| format!("{:?}:{}", e.address, e.port))
                .collect();
            (d.cluster.name.clone(), d.weight, eps)
        })
        .collect()
}

#[test]
fn gateway_api_task_with_endpoint_slices_instead_of_service_entries() {
    let store = Store::new(Agent::default());
    let slices = format!(
        "{}---\n{}",
        slice(
            "tcp-echo-v1-abcde",
            "tcp-echo-v1",
            9000,
            &["10.0.0.1", "10.0.0.2"],
            &["10.0.0.2"]
        ),
        slice("tcp-echo-v2-fghij", "tcp-echo-v2", 9100, &["10.0.0.3"], &[])
    );
    let store = apply(&store, &slices, "slices.yaml").store;
    let step = apply(&store, GW_API_ALL_V1, "tcp-echo-all-v1.yaml");
    // kubectl's words: the Services are created like the rest.
    let created: Vec<String> = step.changes.iter().map(|c| c.to_string()).collect();
    assert!(
        created.contains(&"service/tcp-echo-v1 created".to_string()),
        "{created:#?}"
    );
    let v1 = "outbound|9000||tcp-echo-v1.istio-io-tcp-traffic-shifting.svc.cluster.local";
    let v2 = "outbound|9000||tcp-echo-v2.istio-io-tcp-traffic-shifting.svc.cluster.local";
    // Only the ready endpoint, at the slice's port.
    assert_eq!(
        endpoints_of(&step.snapshot),
        vec![(v1.to_string(), 1, vec!["Ip(10.0.0.1):9000".to_string()])]
    );
    let step = apply(&step.store, GW_API_20_V2, "tcp-echo-20-v2.yaml");
    assert_eq!(
        endpoints_of(&step.snapshot),
        vec![
            (v1.to_string(), 80, vec!["Ip(10.0.0.1):9000".to_string()]),
            (v2.to_string(), 20, vec!["Ip(10.0.0.3):9100".to_string()]),
        ]
    );
    // The endpoints carry the Service's selector, so Istio's subsets by
    // `version` select them too.
    let snap = snapshot(&step.store);
    assert!(snap.warnings.is_empty(), "{:#?}", snap.warnings);
}

#[test]
fn a_service_without_slices_leaves_its_host_to_a_service_entry() {
    // The seed's Service tcp-echo beside the example ServiceEntry of the
    // same host: the ServiceEntry serves, nothing clashes.
    let store = Store::new(Agent::default());
    let store = apply(&store, SERVICES, "tcp-echo-services.yaml").store;
    let store = apply(&store, ENDPOINTS, "tcp-echo-endpoints.yaml").store;
    let snap = apply(&store, ALL_V1, "tcp-echo-all-v1.yaml").snapshot;
    assert_eq!(split(&snap), vec![(v("v1"), 100)]);
    assert!(
        !has_warning(&snap, &["EndpointSlice"]),
        "{:#?}",
        snap.warnings
    );

    // Alone, it is said to have no endpoints.
    let store = Store::new(Agent::default());
    let snap = apply(&store, SERVICES, "tcp-echo-services.yaml").snapshot;
    assert!(
        has_warning(
            &snap,
            &[
                "tcp-echo-services.yaml: document 1 (Service istio-io-tcp-traffic-shifting/tcp-echo)",
                "no EndpointSlice document (label kubernetes.io/service-name: tcp-echo)",
            ]
        ),
        "{:#?}",
        snap.warnings
    );

    // With a slice too, the host has two definitions: refused, naming both.
    let store = apply(
        &Store::new(Agent::default()),
        ENDPOINTS,
        "tcp-echo-endpoints.yaml",
    )
    .store;
    let store = apply(&store, ALL_V1, "tcp-echo-all-v1.yaml").store;
    let both = format!(
        "{SERVICES}---\n{}",
        slice("tcp-echo-1", "tcp-echo", 9000, &["10.0.0.9"], &[])
    );
    refused(
        &store,
        &both,
        "services.yaml",
        &[
            "several ServiceEntries",
            "istio-io-tcp-traffic-shifting/tcp-echo.service",
        ],
    );
}

#[test]
fn bad_services_and_slices_name_file_document_and_field() {
    let store = Store::new(Agent::default());
    let bad_address = slice("s", "tcp-echo", 9000, &["10.0.0.300"], &[]);
    refused(
        &store,
        &bad_address,
        "slice.yaml",
        &[
            "slice.yaml: document 1 (EndpointSlice istio-io-tcp-traffic-shifting/s)",
            "endpoints[0].addresses[0]",
            "not an IPv4 address",
        ],
    );
    let no_type = bad_address.replace("addressType: IPv4\n", "");
    refused(&store, &no_type, "slice.yaml", &["addressType", "required"]);
    let unnamed = "apiVersion: v1
kind: Service
metadata:
  name: two-ports
spec:
  ports:
  - port: 9000
  - port: 9001
";
    refused(
        &store,
        unnamed,
        "svc.yaml",
        &["spec.ports[0].name", "more than one port"],
    );
    refused(
        &store,
        &unnamed
            .replace("- port: 9000", "- name: a\n    port: 9000")
            .replace("- port: 9001", "- name: b\n    port: 90001"),
        "svc.yaml",
        &["spec.ports[1].port", "1..65535"],
    );
    refused(
        &store,
        &unnamed.replace("apiVersion: v1", "apiVersion: v2"),
        "svc.yaml",
        &["apiVersion", "use v1"],
    );
}

// ------------------------------------------------------------ GatewayClass

const GATEWAY_CLASS: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: ebpf
  namespace: ignored-as-the-api-server-does
spec:
  controllerName: ebpf-gateway.dev/gateway-controller
";

#[test]
fn a_gateway_class_naming_this_controller_makes_its_gateways_ours() {
    let store = Store::new(Agent::default());
    let store = apply(&store, ENDPOINTS, "tcp-echo-endpoints.yaml").store;
    let services = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: tcp-echo-v1
spec:
  hosts: [tcp-echo-v1.istio-io-tcp-traffic-shifting.svc.cluster.local]
  ports: [{number: 9000, name: tcp, protocol: TCP}]
  resolution: STATIC
  workloadSelector: {labels: {app: tcp-echo, version: v1}}
";
    let store = apply(&store, services, "services.yaml").store;
    let ebpf_class = GW_API_ALL_V1.replace("gatewayClassName: istio", "gatewayClassName: ebpf");
    let step = apply(&store, &ebpf_class, "all-v1.yaml");
    assert!(step.snapshot.listeners.is_empty());
    assert!(has_warning(
        &step.snapshot,
        &["class \"ebpf\" is not this gateway's", CONTROLLER_NAME]
    ));

    let step = apply(&step.store, GATEWAY_CLASS, "class.yaml");
    assert_eq!(step.snapshot.listeners.len(), 1);
    assert_eq!(step.snapshot.listeners[0].port, 31400);
    let class = step
        .snapshot
        .status
        .iter()
        .find(|s| s.resource.kind == Kind::GatewayClass)
        .unwrap_or_else(|| panic!("{:#?}", step.snapshot.status));
    assert!(
        class
            .to_string()
            .starts_with("GatewayClass ebpf: Accepted=True (Accepted)"),
        "{class}"
    );
    assert_eq!(class.resource.namespace, "");

    // A class of another controller does not.
    let other = GATEWAY_CLASS.replace("ebpf-gateway.dev/", "istio.io/");
    let step = apply(&step.store, &other, "class.yaml");
    assert!(step.snapshot.listeners.is_empty());
    assert!(!step
        .snapshot
        .status
        .iter()
        .any(|s| s.resource.kind == Kind::GatewayClass));

    refused(
        &step.store,
        &GATEWAY_CLASS.replace("ebpf-gateway.dev/gateway-controller", "no-path"),
        "class.yaml",
        &[
            "class.yaml: document 1 (GatewayClass ebpf)",
            "spec.controllerName",
            "domain-prefixed",
        ],
    );
}
