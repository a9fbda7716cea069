use std::sync::Arc;
use std::time::Duration;

use ambit_proto::api::workload as pb;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::model::ObjectKey;

#[test]
fn the_embedded_mesh_is_the_documented_demo() {
    let file = parse(EMBEDDED_MESH, EMBEDDED_ORIGIN).unwrap();
    let m = &file.model;
    assert_eq!(m.trust_domain(), "cluster.local");
    assert_eq!(file.topology.nodes, ["node-a", "node-b"]);
    let protocol = |ns: &str, name: &str| {
        let w = m.workload(&ObjectKey::new(ns, name)).unwrap();
        pb::Protocol::try_from(m.workload_proto(w).protocol).unwrap()
    };
    assert_eq!(protocol("demo", "client"), pb::Protocol::Hbone);
    assert_eq!(protocol("demo", "denied-client"), pb::Protocol::Hbone);
    assert_eq!(protocol("legacy", "legacy"), pb::Protocol::Tcp);
    let reviews = m.service(&ObjectKey::new("demo", "reviews")).unwrap();
    assert_eq!(
        reviews.endpoints,
        [
            ObjectKey::new("demo", "reviews-v1"),
            ObjectKey::new("demo", "reviews-v2")
        ]
    );
    let nodes: Vec<_> = reviews
        .endpoints
        .iter()
        .map(|k| m.workload(k).unwrap().pod.node.as_str())
        .collect();
    assert_eq!(
        nodes,
        ["node-a", "node-b"],
        "reviews pods are on different nodes"
    );
    let proto = m.service_proto(reviews);
    assert_eq!(proto.addresses, ["10.96.0.10", "fd00:10:96::10"]);
    assert_eq!(
        (proto.ports[0].service_port, proto.ports[0].target_port),
        (9080, 8080)
    );
    let policy = m.policies().next().unwrap();
    assert_eq!(policy.action, ambit_proto::api::security::Action::Deny);
    assert_eq!(
        policy.rules[0].from[0].principals,
        ["spiffe://cluster.local/ns/demo/sa/denied-client"]
    );
    let pod = file
        .topology
        .pods
        .iter()
        .find(|p| p.name == "reviews-v2")
        .unwrap();
    assert_eq!(
        pod.addresses,
        [
            "10.244.2.2".parse::<IpAddr>().unwrap(),
            "fd00:10:244:2::2".parse().unwrap()
        ]
    );
    assert_eq!(
        (pod.ports.as_slice(), pod.app),
        ([8080u16].as_slice(), Some(PodApp::HttpEcho))
    );
}

const BASE: &str = "\
nodes:
  - name: node-a
namespaces:
  - name: demo
    labels: {ambit.io/dataplane-mode: ambient}
pods:
  - name: a
    namespace: demo
    node: node-a
    ipv4: 10.244.1.2
";

fn problems(text: &str) -> Vec<(Option<u64>, String)> {
    match parse(text, "test.yaml") {
        Err(FileError::Invalid { problems, .. }) => problems
            .into_iter()
            .map(|p| (p.line, p.error.to_string()))
            .collect(),
        other => panic!("expected problems, got {other:?}"),
    }
}

fn syntax(text: &str) -> (Option<u64>, String) {
    match parse(text, "test.yaml") {
        Err(e @ FileError::Syntax { .. }) => {
            let FileError::Syntax { line, .. } = &e else {
                unreachable!()
            };
            (*line, e.to_string())
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn the_base_file_is_valid() {
    parse(BASE, "test.yaml").unwrap();
}

#[test]
fn an_unknown_field_is_refused_at_its_line() {
    let (line, text) = syntax(&format!("{BASE}    serviceAcount: a\n"));
    assert_eq!(line, Some(11), "{text}");
    assert!(text.contains("serviceAcount"), "{text}");
    assert!(text.starts_with("test.yaml: "), "{text}");
    assert!(text.contains("line 11 column 5"), "{text}");
}

#[test]
fn a_malformed_address_is_refused_at_its_line() {
    let (line, text) = syntax(&BASE.replace("10.244.1.2", "10.244.1.300"));
    assert_eq!(line, Some(10), "{text}");
    let (line, text) = syntax(&format!("{BASE}    ipv6: 10.244.1.9\n"));
    assert_eq!(line, Some(11), "an IPv4 address in ipv6: {text}");
}

#[test]
fn a_duplicate_address_is_reported_at_the_second_use() {
    let text =
        format!("{BASE}  - name: b\n    namespace: demo\n    node: node-a\n    ipv4: 10.244.1.2\n");
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, Some(14));
    assert!(
        found[0]
            .1
            .contains("pod demo/b uses address 10.244.1.2, which pod demo/a already has"),
        "{}",
        found[0].1
    );
}

#[test]
fn a_pod_on_an_unknown_node_or_namespace_is_reported_at_that_field() {
    let found = problems(&BASE.replace("node: node-a", "node: node-z"));
    assert_eq!(found[0].0, Some(9), "{found:?}");
    assert!(found[0].1.contains("\"node-z\""));
    let found = problems(&BASE.replace("namespace: demo", "namespace: prod"));
    assert_eq!(found[0].0, Some(8), "{found:?}");
    assert!(found[0].1.contains("\"prod\""));
}

#[test]
fn a_duplicate_name_is_reported_at_the_second_declaration() {
    let text =
        format!("{BASE}  - name: a\n    namespace: demo\n    node: node-a\n    ipv4: 10.244.1.3\n");
    let found = problems(&text);
    assert_eq!(
        found,
        [(
            Some(11),
            "pod demo/a is declared twice: names are unique per kind (and per namespace)"
                .to_string()
        )]
    );
    let found = problems(&BASE.replace(
        "nodes:\n  - name: node-a\n",
        "nodes:\n  - name: node-a\n  - name: node-a\n",
    ));
    assert_eq!(found[0].0, Some(3), "{found:?}");
}

#[test]
fn every_problem_is_reported_in_line_order() {
    let text =
        format!("{BASE}  - name: b\n    namespace: nope\n    node: node-q\n    ipv4: 10.244.1.2\n");
    let found = problems(&text);
    let lines: Vec<_> = found.iter().map(|p| p.0).collect();
    assert_eq!(lines, [Some(12), Some(13), Some(14)], "{found:?}");
}

#[test]
fn the_mtls_mode_is_mesh_wide_unless_a_namespace_label_says_otherwise() {
    use crate::model::MtlsMode;
    let mode = |text: &str, ns: &str, name: &str| {
        let m = parse(text, "test.yaml").unwrap().model;
        let w = m.workload(&ObjectKey::new(ns, name)).unwrap();
        (w.mtls_mode, m.workload_proto(w).mtls_mode())
    };
    let strict = (MtlsMode::Strict, pb::MtlsMode::Strict);
    let permissive = (MtlsMode::Permissive, pb::MtlsMode::Permissive);
    assert_eq!(mode(BASE, "demo", "a"), permissive, "Istio's default");
    let mesh_strict = format!("mtlsMode: strict\n{BASE}");
    assert_eq!(mode(&mesh_strict, "demo", "a"), strict);
    let ns_permissive = mesh_strict.replace(
        "{ambit.io/dataplane-mode: ambient}",
        "{ambit.io/dataplane-mode: ambient, ambit.io/mtls-mode: permissive}",
    );
    assert_eq!(mode(&ns_permissive, "demo", "a"), permissive);
    let ns_strict = BASE.replace(
        "{ambit.io/dataplane-mode: ambient}",
        "{ambit.io/dataplane-mode: ambient, ambit.io/mtls-mode: strict}",
    );
    assert_eq!(mode(&ns_strict, "demo", "a"), strict);
    // Outside the mesh no ztunnel serves the pod, so it carries no mode.
    let unmeshed = mesh_strict.replace("{ambit.io/dataplane-mode: ambient}", "{}");
    assert_eq!(mode(&unmeshed, "demo", "a"), permissive);
}

#[test]
fn a_bad_mtls_mode_is_refused_at_its_line() {
    let found = problems(&BASE.replace(
        "{ambit.io/dataplane-mode: ambient}",
        "{ambit.io/dataplane-mode: ambient, ambit.io/mtls-mode: STRICT}",
    ));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, Some(4), "{found:?}");
    assert!(
        found[0].1.contains("ambit.io/mtls-mode=\"STRICT\"") && found[0].1.contains("\"strict\""),
        "{}",
        found[0].1
    );
    let (line, text) = syntax(&format!("{BASE}mtlsMode: enforce\n"));
    assert_eq!(line, Some(11), "{text}");
    assert!(text.contains("enforce"), "{text}");
}

#[test]
fn observer_mode_is_mesh_wide_unless_a_namespace_label_says_otherwise() {
    let with_policy = format!(
        "{BASE}authorizationPolicies:\n  - {{name: deny-all, namespace: demo, action: DENY, rules: [{{}}]}}\n"
    );
    let dry_run = |text: &str| {
        let m = parse(text, "test.yaml").unwrap().model;
        let p = m.policies().next().unwrap();
        (p.dry_run, m.policy_proto(p).dry_run)
    };
    assert_eq!(dry_run(&with_policy), (false, false), "enforced by default");
    let mesh_audit = format!("policyMode: audit\n{with_policy}");
    assert_eq!(dry_run(&mesh_audit), (true, true));
    let ns_enforce = mesh_audit.replace(
        "{ambit.io/dataplane-mode: ambient}",
        "{ambit.io/dataplane-mode: ambient, ambit.io/policy-mode: enforce}",
    );
    assert_eq!(dry_run(&ns_enforce), (false, false));
    let ns_audit = with_policy.replace(
        "{ambit.io/dataplane-mode: ambient}",
        "{ambit.io/dataplane-mode: ambient, ambit.io/policy-mode: audit}",
    );
    assert_eq!(dry_run(&ns_audit), (true, true));
    // A mistyped mode is refused, not taken for either.
    let found = problems(&with_policy.replace(
        "{ambit.io/dataplane-mode: ambient}",
        "{ambit.io/dataplane-mode: ambient, ambit.io/policy-mode: dry-run}",
    ));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].1.contains("ambit.io/policy-mode=\"dry-run\""),
        "{}",
        found[0].1
    );
    let (_, text) = syntax(&format!("policyMode: observe\n{with_policy}"));
    assert!(text.contains("observe"), "{text}");
}

fn write(path: &std::path::Path, text: &str) {
    // Write-then-rename, as editors do, so the watcher never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn next_model(rx: &mut tokio::sync::watch::Receiver<Arc<MeshModel>>) -> Arc<MeshModel> {
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("the watcher published no new model")
        .unwrap();
    rx.borrow_and_update().clone()
}

#[tokio::test]
async fn the_watcher_reloads_good_edits_and_keeps_the_model_on_bad_ones() {
    let dir = std::env::temp_dir().join(format!("ambit-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mesh.yaml");
    write(&path, BASE);
    let shutdown = CancellationToken::new();
    let Watching {
        file,
        models: mut rx,
        task,
    } = watch(path.clone(), Duration::from_millis(20), shutdown.clone()).unwrap();
    assert_eq!(file.model.workloads().count(), 1);

    let two =
        format!("{BASE}  - name: b\n    namespace: demo\n    node: node-a\n    ipv4: 10.244.1.3\n");
    write(&path, &two);
    let added = next_model(&mut rx).await;
    assert_eq!(added.workloads().count(), 2);
    assert!(
        added.changes_since(&file.model).is_some(),
        "applied to the model in force, so the push re-resolves only the new pod"
    );
    assert_eq!(*added, parse(&two, "mesh.yaml").unwrap().model);

    // A bad edit (duplicate address), then a good one: only the good one is published.
    write(&path, &two.replace("10.244.1.3", "10.244.1.2"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !rx.has_changed().unwrap(),
        "a bad edit must not replace the model"
    );
    assert_eq!(rx.borrow().workloads().count(), 2);
    write(&path, &two.replace("10.244.1.3", "10.244.1.4"));
    let m = next_model(&mut rx).await;
    let b = m.workload(&ObjectKey::new("demo", "b")).unwrap();
    assert_eq!(b.pod.addresses, ["10.244.1.4".parse::<IpAddr>().unwrap()]);

    // Changing the trust domain under a running CA is refused.
    write(&path, &format!("trustDomain: other.local\n{two}"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!rx.has_changed().unwrap());

    shutdown.cancel();
    task.await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_readme_example_is_a_valid_mesh() {
    let readme = include_str!("../../../README.md");
    let start = readme.find("```yaml\n").expect("README has a yaml example") + 8;
    let end = start + readme[start..].find("```").unwrap();
    let file = parse(&readme[start..end], "README.md").unwrap();
    let m = &file.model;
    let reviews = m.service(&ObjectKey::new("demo", "reviews")).unwrap();
    assert_eq!(reviews.endpoints, [ObjectKey::new("demo", "reviews-v1")]);
    assert_eq!(
        reviews.waypoint,
        Some(ObjectKey::new("demo", "demo-wp")),
        "the service uses its namespace's waypoint"
    );
    let route = m.routes().next().unwrap();
    assert_eq!(m.routes().count(), 1);
    assert_eq!(route.rules.len(), 2);
    assert_eq!(route.rules[1].retry.as_ref().unwrap().codes, [503]);
    assert_eq!(m.waypoints().count(), 1);
}

/// Services for the routes below, which start at line 11.
const ROUTED: &str = "\
namespaces:
  - name: demo
    labels: {ambit.io/dataplane-mode: ambient, ambit.io/use-waypoint: demo-wp}
nodes: [{name: node-a}]
waypoints: [{name: demo-wp, namespace: demo, node: node-a, ipv4: 10.244.1.100}]
services:
  - {name: reviews, namespace: demo, ports: [{port: 9080, appProtocol: http}]}
  - {name: reviews-v1, namespace: demo, ports: [{port: 9080, appProtocol: http}]}
  - {name: reviews-v2, namespace: demo, ports: [{port: 9080, appProtocol: http}]}
  - {name: grpc, namespace: demo, ports: [{port: 50051, appProtocol: grpc}]}
";

/// The canary of the issue and of the report: 90/10 between the versions, `x-canary: 1`
/// pinned to v2.
const CANARY: &str = r#"httpRoutes:
  - name: reviews
    namespace: demo
    parentRefs:
      - {group: "", kind: Service, name: reviews}
    rules:
      - matches:
          - headers: [{name: x-canary, value: "1"}]
        backendRefs:
          - {name: reviews-v2, port: 9080}
      - backendRefs:
          - {name: reviews-v1, port: 9080, weight: 90}
          - {name: reviews-v2, port: 9080, weight: 10}
"#;

fn one_route(text: &str) -> ambit_proto::api::route::Route {
    let file = parse(text, "test.yaml").unwrap();
    let routes: Vec<_> = file.model.routes().cloned().collect();
    assert_eq!(routes.len(), 1);
    routes.into_iter().next().unwrap()
}

#[test]
fn the_canary_route_splits_90_10_and_pins_the_header() {
    use ambit_proto::api::route::value_match::Kind;
    let route = one_route(&format!("{ROUTED}{CANARY}"));
    let host = |s: &str| format!("{s}.demo.svc.cluster.local");
    assert_eq!(
        (route.namespace.as_str(), route.name.as_str()),
        ("demo", "reviews")
    );
    assert_eq!(route.parents.len(), 1);
    assert_eq!(
        (route.parents[0].service.clone(), route.parents[0].port),
        (host("reviews"), 0)
    );
    let pin = &route.rules[0];
    assert_eq!(pin.matches[0].headers[0].name, "x-canary");
    assert_eq!(
        pin.matches[0].headers[0].value.as_ref().unwrap().kind,
        Some(Kind::Exact("1".into()))
    );
    assert_eq!(
        (pin.backends[0].service.clone(), pin.backends[0].weight),
        (host("reviews-v2"), 1)
    );
    let split: Vec<(String, u32, u32)> = route.rules[1]
        .backends
        .iter()
        .map(|b| (b.service.clone(), b.port, b.weight))
        .collect();
    assert_eq!(
        split,
        [
            (host("reviews-v1"), 9080, 90),
            (host("reviews-v2"), 9080, 10)
        ]
    );
    assert!(
        route.rules[1].matches.is_empty(),
        "no matches: every request"
    );
}

#[test]
fn grpc_routes_read_the_same_shape_with_annotations_for_retries() {
    let route = one_route(&format!(
        "{ROUTED}{}",
        r#"grpcRoutes:
  - name: grpc
    namespace: demo
    annotations:
      retry.ambit.io/grpc-codes: unavailable,deadline-exceeded
      retry.ambit.io/attempts: "3"
      timeout.ambit.io/request: 2s
    parentRefs: [{group: "", kind: Service, name: grpc, port: 50051}]
    rules:
      - matches: [{method: {service: demo.Health, method: Check}}]
        filters:
          - {type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: x-via, value: waypoint}]}}
        backendRefs: [{name: grpc, port: 50051}]
"#
    ));
    assert_eq!(route.parents[0].port, 50051);
    let rule = &route.rules[0];
    assert_eq!(
        rule.matches[0].path.as_ref().unwrap().kind,
        Some(ambit_proto::api::route::path_match::Kind::Exact(
            "/demo.Health/Check".into()
        ))
    );
    let retry = rule.retry.as_ref().unwrap();
    assert_eq!(
        (retry.attempts, retry.grpc_codes.as_slice()),
        (3, [14, 4].as_slice())
    );
    assert_eq!(rule.request_timeout_ms, 2000);
    assert_eq!(
        rule.request_header_modifier.as_ref().unwrap().add[0].value,
        "waypoint"
    );
}

#[test]
fn route_problems_are_reported_at_their_lines() {
    // (replacement of part of CANARY, expected line, expected text); CANARY starts at line 11.
    let cases = [
        (
            (
                "{name: reviews-v1, port: 9080, weight: 90}",
                "{name: reviews-v9, port: 9080, weight: 90}",
            ),
            22,
            "rules[1].backendRefs[0] names service demo/reviews-v9",
        ),
        (
            (
                "      - backendRefs:\n",
                "      - timeouts: {request: soon}\n        backendRefs:\n",
            ),
            21,
            "rules[1].timeouts.request \"soon\" is not a Gateway API duration",
        ),
        (
            (
                "          - headers:",
                "          - path: {type: RegularExpression, value: \"(\"}\n            headers:",
            ),
            17,
            "rules[0].matches[0].path: regular expression",
        ),
        (
            (
                "      - backendRefs:\n",
                "      - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: reviews, port: 9080}}}]\n        backendRefs:\n",
            ),
            21,
            "rules[1].filters[0]: RequestMirror filters are not supported",
        ),
        (
            (
                "{group: \"\", kind: Service, name: reviews}",
                "{name: some-gateway}",
            ),
            15,
            "parentRefs[0] is not a Service",
        ),
        (
            (
                "{group: \"\", kind: Service, name: reviews}",
                "{group: \"\", kind: Service, name: ratings}",
            ),
            15,
            "parentRefs[0] names service demo/ratings, which does not exist",
        ),
        (
            (
                "    parentRefs:\n      - {group: \"\", kind: Service, name: reviews}\n",
                "",
            ),
            12,
            "it has no parentRefs",
        ),
    ];
    for ((from, to), line, text) in cases {
        assert!(CANARY.contains(from), "{from}");
        let found = problems(&format!("{ROUTED}{}", CANARY.replace(from, to)));
        assert!(
            found.iter().any(|(l, p)| *l == Some(line)
                && p.contains(text)
                && p.contains("route demo/reviews")),
            "{text} at {line}: {found:?}"
        );
    }
    // Unknown fields are refused by the parser, at their line.
    let (line, text) = syntax(&format!(
        "{ROUTED}{}",
        CANARY.replace(
            "      - backendRefs:\n",
            "      - mirror: {}\n        backendRefs:\n"
        )
    ));
    assert_eq!(line, Some(21), "{text}");
    assert!(text.contains("mirror"), "{text}");
    // An HTTPRoute and a GRPCRoute share one name space.
    let twice = format!(
        "{ROUTED}{CANARY}grpcRoutes:\n  - name: reviews\n    namespace: demo\n    parentRefs: [{{group: \"\", kind: Service, name: grpc}}]\n"
    );
    let found = problems(&twice);
    assert!(
        found
            .iter()
            .any(|(l, p)| *l == Some(25) && p.contains("declared twice")),
        "{found:?}"
    );
}

/// The embedded mesh plus policies (YAML list items under `authorizationPolicies`).
fn with_policies(items: &str) -> String {
    let list = "authorizationPolicies:\n";
    assert!(EMBEDDED_MESH.contains(list));
    EMBEDDED_MESH.replacen(list, &format!("{list}{items}"), 1)
}

#[test]
fn l7_audit_and_when_policies_on_waypoint_fronted_pods_are_accepted() {
    let text = with_policies(
        "  - name: audit-admin
    namespace: demo
    selector:
      matchLabels: {app: reviews}
    action: AUDIT
    rules:
      - to:
          - paths: [/admin*]
            hosts: [reviews]
        when:
          - key: source.principal
            values: [spiffe://cluster.local/ns/demo/sa/client]
          - key: request.headers[x-user]
            notValues: [jason]
",
    );
    let file = parse(&text, "test.yaml").unwrap();
    let key = ObjectKey::new("demo", "audit-admin");
    let policy = file.model.policies().find(|p| p.name == key.name).unwrap();
    assert_eq!(policy.action, ambit_proto::api::security::Action::Audit);
    assert_eq!(policy.rules[0].when.len(), 2);
    assert_eq!(policy.rules[0].when[1].not_values, ["jason"]);
}

#[test]
fn l7_fields_where_no_waypoint_fronts_the_pods_are_refused_with_the_fix() {
    let text = with_policies(
        "  - name: client-admin
    namespace: demo
    selector:
      matchLabels: {app: client}
    action: DENY
    rules:
      - to:
          - methods: [POST]
",
    );
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    let (line, text) = &found[0];
    assert!(line.is_some(), "reported at the policy: {found:?}");
    for part in [
        "demo/client-admin",
        "methods",
        "demo/client",
        "ambit.io/use-waypoint",
    ] {
        assert!(text.contains(part), "{part:?} missing in {text}");
    }
}

#[test]
fn bad_when_keys_and_hosts_with_ports_are_refused() {
    let text = with_policies(
        "  - name: bad
    namespace: demo
    selector:
      matchLabels: {app: reviews}
    action: ALLOW
    rules:
      - to:
          - hosts: [\"reviews:9080\"]
        when:
          - key: source.ip
            values: [10.0.0.1]
",
    );
    let found = problems(&text);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].1.contains("reviews:9080"), "{found:?}");
    assert!(found[1].1.contains("source.ip"), "{found:?}");
}

#[test]
fn a_namespace_declares_its_egress_scope_and_a_bad_entry_is_refused_at_its_line() {
    let scoped = BASE.replace(
        "    labels: {ambit.io/dataplane-mode: ambient}\n",
        "    labels: {ambit.io/dataplane-mode: ambient}\n    egressScope: ['./*', shared/*]\n",
    );
    let model = parse(&scoped, "test.yaml").unwrap().model;
    let scope = model.egress_scope("demo").unwrap();
    assert_eq!(scope.declared, "./*, shared/*");
    assert_eq!(
        scope
            .hosts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["demo/*", "shared/*"]
    );
    let bad = BASE.replace(
        "    labels: {ambit.io/dataplane-mode: ambient}\n",
        "    labels: {ambit.io/dataplane-mode: ambient}\n    egressScope:\n      - ./*\n      - shared\n",
    );
    let found = problems(&bad);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, Some(8), "{found:?}");
    assert!(
        found[0]
            .1
            .contains("namespace demo declares an egress scope that cannot be read")
            && found[0]
                .1
                .contains("\"shared\" is not <namespace>/<service>"),
        "{}",
        found[0].1
    );
}

#[test]
fn a_file_past_the_parsers_bounds_is_refused_saying_so() {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = 10;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    let e = serde_saphyr::from_str_with_options::<schema::MeshFile>(BASE, options).unwrap_err();
    let words = super::syntax_error("big.yaml", &e).to_string();
    assert!(
        words.contains("larger than a mesh file may be") && words.contains("Kubernetes source"),
        "{words}"
    );
}
