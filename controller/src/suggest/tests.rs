//! `suggest` on the demo mesh (examples/mesh.yaml: client -> reviews through the waypoint on
//! 9080, pods on 8080; denied-client refused by demo/deny-denied-client), with hand-written
//! observed flows. Whether a flow is allowed is decided by the proxies' policy code through the
//! controller's push ([`Evaluator`]), never by comparing strings.

use std::sync::Arc;

use super::evaluate::{Evaluator, Judgement};
use super::*;
use crate::source::file::{EMBEDDED_MESH, parse};
use crate::source::kubernetes::{Objects, convert, crd};

const CLIENT: &str = "spiffe://cluster.local/ns/demo/sa/client";
const DENIED_CLIENT: &str = "spiffe://cluster.local/ns/demo/sa/denied-client";
const WAYPOINT_ID: &str = "spiffe://cluster.local/ns/demo/sa/waypoint";
const REVIEWS: &str = "reviews.demo.svc.cluster.local";
const NOW: i64 = 1_764_633_600_000;

fn demo() -> MeshModel {
    parse(EMBEDDED_MESH, "examples/mesh.yaml").unwrap().model
}

/// A request shape a waypoint reports for a request to a service (which names no namespace).
fn request(source: &str, service: &str, port: u32, method: &str, path: &str) -> ObservedFlow {
    ObservedFlow {
        reporter_kind: WAYPOINT.into(),
        source_identity: source.into(),
        destination_service: service.into(),
        destination_port: port,
        method: method.into(),
        path_prefix: path.into(),
        count: 120,
        failed: 0,
        first_seen_unix_ms: NOW - 60_000,
        last_seen_unix_ms: NOW - 1_000,
        ..Default::default()
    }
}

/// A connection shape a ztunnel reports.
fn connection(source: &str, namespace: &str, workload: &str, port: u32) -> ObservedFlow {
    ObservedFlow {
        reporter_kind: ZTUNNEL.into(),
        source_identity: source.into(),
        destination_namespace: namespace.into(),
        destination_workload: workload.into(),
        destination_port: port,
        count: 40,
        failed: 0,
        first_seen_unix_ms: NOW - 60_000,
        last_seen_unix_ms: NOW - 1_000,
        ..Default::default()
    }
}

fn denied(mut f: ObservedFlow) -> ObservedFlow {
    f.failed = f.count;
    f
}

/// What the demo's traffic looks like to the proxies after a minute.
fn demo_flows() -> Vec<ObservedFlow> {
    vec![
        request(CLIENT, REVIEWS, 9080, "GET", "/"),
        request(CLIENT, REVIEWS, 9080, "GET", "/api/"),
        request(CLIENT, REVIEWS, 9080, "POST", "/api/"),
        request(CLIENT, REVIEWS, 9080, "GET", "/health"),
        denied(request(DENIED_CLIENT, REVIEWS, 9080, "GET", "/")),
        // The waypoint's own connections to the pods, as their ztunnels see them.
        connection(WAYPOINT_ID, "demo", "reviews-v1", 8080),
        connection(WAYPOINT_ID, "demo", "reviews-v2", 8080),
        // A plaintext client straight to a pod.
        connection("", "demo", "reviews-v1", 8080),
    ]
}

/// Whether every proxy in front of `flow`'s destinations lets it through in `model`.
fn allowed(model: &MeshModel, flow: &ObservedFlow) -> bool {
    let resolved = targets::resolve(model, flow).unwrap();
    let mut evaluator = Evaluator::new(model.clone());
    resolved.targets.iter().all(|t| {
        matches!(
            evaluator.judge(flow, &resolved, t).unwrap(),
            Judgement::Allowed | Judgement::FromWaypoint(_)
        )
    })
}

fn applied(model: &MeshModel, s: &Suggestion) -> MeshModel {
    with_policies(model, &model_policies(&s.policies)).expect("the mesh with the suggestion builds")
}

#[test]
fn the_demo_gets_one_l7_policy_for_reviews_enforced_at_the_waypoint() {
    let s = suggest(&demo(), &demo_flows(), None, NOW);
    assert!(!s.is_faulty(), "{:?} {:?}", s.would_deny, s.problems);
    assert_eq!(s.policies.len(), 1, "{:#?}", s.policies);
    let p = &s.policies[0];
    assert_eq!(
        (p.namespace.as_str(), p.name.as_str()),
        ("demo", "allow-observed-reviews")
    );
    assert_eq!(p.selector, Labels::from([("app".into(), "reviews".into())]));
    assert_eq!(p.workloads, ["demo/reviews-v1", "demo/reviews-v2"]);
    assert_eq!(p.enforced_by, ["waypoint demo/waypoint"]);
    assert_eq!(
        p.rules,
        [SuggestedRule {
            principals: vec![CLIENT.into()],
            // The pods' port: the waypoint judges the endpoint it sends to; GET and POST were
            // seen on /api/, only GET elsewhere.
            to: vec![
                SuggestedOperation {
                    ports: vec![8080],
                    methods: vec!["GET".into()],
                    paths: vec!["/".into(), "/health".into()],
                },
                SuggestedOperation {
                    ports: vec![8080],
                    methods: vec!["GET".into(), "POST".into()],
                    paths: vec!["/api/*".into()],
                },
            ],
        }]
    );
    assert_eq!(p.evidence.len(), 4);
    assert_eq!(
        p.refuses_plaintext,
        [connection("", "demo", "reviews-v1", 8080)]
    );
    let kinds: Vec<LeftOutKind> = s.left_out.iter().map(|l| l.kind).collect();
    assert_eq!(
        kinds,
        [
            LeftOutKind::DeniedNow,
            LeftOutKind::DeniedNow,
            LeftOutKind::FromWaypoint,
            LeftOutKind::FromWaypoint,
            LeftOutKind::Plaintext,
        ],
        "{:#?}",
        s.left_out
    );
    assert!(s.left_out[0].reason.contains("demo/deny-denied-client"));
    assert!(
        s.left_out[4]
            .reason
            .contains("demo/allow-observed-reviews will refuse it")
    );
}

#[test]
fn applied_the_policies_allow_every_observed_flow_and_deny_the_unobserved() {
    let model = demo();
    let flows = demo_flows();
    let s = suggest(&model, &flows, None, NOW);
    let after = applied(&model, &s);
    for flow in s.policies.iter().flat_map(|p| &p.evidence) {
        assert!(allowed(&after, flow), "observed {flow:?} is denied");
    }
    let unobserved = [
        // Another method, another path, another port's worth of path, another client.
        request(CLIENT, REVIEWS, 9080, "DELETE", "/"),
        request(CLIENT, REVIEWS, 9080, "GET", "/admin/"),
        request(CLIENT, REVIEWS, 9080, "GET", "/healthz"),
        request(
            "spiffe://cluster.local/ns/legacy/sa/legacy",
            REVIEWS,
            9080,
            "GET",
            "/",
        ),
        // Straight to a pod, past the waypoint: ztunnel cannot check the L7 rule, so it fails.
        connection(CLIENT, "demo", "reviews-v1", 8080),
        // Plaintext, as the legacy pod (not in the mesh) would come.
        connection("", "demo", "reviews-v2", 8080),
    ];
    for flow in &unobserved {
        assert!(
            allowed(&model, flow),
            "the test needs {flow:?} allowed before"
        );
        assert!(!allowed(&after, flow), "unobserved {flow:?} is allowed");
    }
    // The DENY still decides.
    assert!(!allowed(
        &after,
        &request(DENIED_CLIENT, REVIEWS, 9080, "GET", "/")
    ));
}

#[test]
fn l4_flows_get_port_rules_and_principals_with_the_same_access_share_one() {
    let model = demo();
    let other = "spiffe://cluster.local/ns/demo/sa/reviews";
    let flows = [
        connection(CLIENT, "demo", "client", 8080),
        connection(other, "demo", "client", 8080),
        connection(CLIENT, "demo", "denied-client", 9000),
        connection(CLIENT, "demo", "denied-client", 9001),
    ];
    let s = suggest(&model, &flows, Some("demo"), NOW);
    assert!(!s.is_faulty(), "{:?} {:?}", s.would_deny, s.problems);
    let names: Vec<&str> = s.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["allow-observed-client", "allow-observed-denied-client"]
    );
    assert_eq!(
        s.policies[0].rules,
        [SuggestedRule {
            principals: vec![CLIENT.into(), other.into()],
            to: vec![SuggestedOperation {
                ports: vec![8080],
                ..Default::default()
            }],
        }]
    );
    assert_eq!(s.policies[1].rules[0].to[0].ports, [9000, 9001]);
    assert_eq!(s.policies[0].enforced_by, ["ztunnel"]);
    let after = applied(&model, &s);
    for flow in &flows {
        assert!(allowed(&after, flow), "{flow:?}");
    }
    assert!(!allowed(
        &after,
        &connection(CLIENT, "demo", "client", 8081)
    ));
    assert!(!allowed(
        &after,
        &connection(DENIED_CLIENT, "demo", "client", 8080)
    ));
}

#[test]
fn a_request_a_waypoint_saw_addressed_to_a_pod_is_judged_on_the_pods_port() {
    let model = demo();
    // What a waypoint reports for a workload-addressed request: no service.
    let mut flow = request(CLIENT, "", 8080, "GET", "/api/");
    flow.destination_workload = "reviews-v1".into();
    flow.destination_namespace = "demo".into();
    let resolved = targets::resolve(&model, &flow).unwrap();
    assert_eq!(
        resolved.targets,
        [targets::Target {
            workload: ObjectKey::new("demo", "reviews-v1"),
            port: 8080
        }]
    );
    assert_eq!(resolved.waypoint, Some(ObjectKey::new("demo", "waypoint")));
    let s = suggest(&model, std::slice::from_ref(&flow), None, NOW);
    assert!(!s.is_faulty(), "{:?} {:?}", s.would_deny, s.problems);
    assert_eq!(s.policies[0].rules[0].to[0].paths, ["/api/*"]);
    assert!(allowed(&applied(&model, &s), &flow));
}

#[test]
fn a_flow_no_rule_can_say_exactly_is_owned_up_to_as_would_deny() {
    // A single-segment path ending in `*` would read as a prefix: it is left out, and the
    // policy its group gets anyway denies it, which the suggestion says.
    let flows = [
        request(CLIENT, REVIEWS, 9080, "GET", "/"),
        request(CLIENT, REVIEWS, 9080, "GET", "/star*"),
    ];
    let s = suggest(&demo(), &flows, None, NOW);
    assert_eq!(s.left_out.len(), 2, "{:?}", s.left_out);
    assert!(
        s.left_out
            .iter()
            .all(|l| l.kind == LeftOutKind::Inexpressible)
    );
    assert!(s.is_faulty());
    assert!(
        s.would_deny
            .iter()
            .all(|w| w.flow.path_prefix == "/star*" && w.policy == "demo/allow-observed-reviews"),
        "{:#?}",
        s.would_deny
    );
    assert_eq!(s.would_deny.len(), 2);
    // Alone, it gives its principal no rule (an empty `to` would allow everything), and its
    // group no policy (one without rules would refuse everything).
    let s = suggest(&demo(), &flows[1..], None, NOW);
    assert!(s.policies.is_empty(), "{:#?}", s.policies);
    assert!(!s.is_faulty());
}

#[test]
fn the_namespace_filter_keeps_other_namespaces_out() {
    let mut flows = demo_flows();
    flows.push(request(
        CLIENT,
        "gone.demo.svc.cluster.local",
        80,
        "GET",
        "/",
    ));
    let s = suggest(&demo(), &flows, Some("legacy"), NOW);
    assert!(s.policies.is_empty());
    assert!(s.left_out.is_empty(), "{:?}", s.left_out);
    assert_eq!(s.namespace.as_deref(), Some("legacy"));
}

#[test]
fn observer_mode_denials_count_as_denied() {
    let text = EMBEDDED_MESH.replace(
        "trustDomain: cluster.local",
        "trustDomain: cluster.local\npolicyMode: audit",
    );
    let model = parse(&text, "audit").unwrap().model;
    let s = suggest(&model, &demo_flows(), None, NOW);
    assert!(!s.is_faulty(), "{:?} {:?}", s.would_deny, s.problems);
    assert!(
        s.left_out
            .iter()
            .any(|l| l.kind == LeftOutKind::DeniedNow && l.reason.contains("observer mode")),
        "{:#?}",
        s.left_out
    );
    assert!(s.policies[0].rules.iter().all(|r| r.principals == [CLIENT]));
}

#[test]
fn a_suggestion_that_would_deny_observed_traffic_says_so() {
    // A rule that cannot match what it means to allow: the check must catch it.
    let model = demo();
    let flow = request(CLIENT, REVIEWS, 9080, "GET", "/api/");
    let resolved = targets::resolve(&model, &flow).unwrap();
    let allowed_flows = [Allowed {
        flow: &flow,
        resolved: resolved.clone(),
        targets: resolved.targets.clone(),
    }];
    let mut s = Suggestion {
        policies: suggest(&model, std::slice::from_ref(&flow), None, NOW).policies,
        ..Default::default()
    };
    s.policies[0].rules[0].to[0].paths = vec!["/apx/*".into()];
    check(&model, &allowed_flows, &mut s);
    assert_eq!(s.would_deny.len(), 2, "{:?}", s.would_deny);
    assert!(s.is_faulty());
    assert!(s.would_deny[0].policy.contains("allow-observed-reviews"));
    assert!(mesh_yaml(&s).contains("WARNING: this suggestion is faulty"));
}

#[test]
fn plaintext_and_unknown_destinations_are_named_not_dropped() {
    let flows = [
        connection("", "demo", "client", 8080),
        connection(CLIENT, "demo", "gone", 8080),
        request(CLIENT, "nothing.demo.svc.cluster.local", 80, "GET", "/"),
    ];
    let s = suggest(&demo(), &flows, None, NOW);
    assert!(s.policies.is_empty());
    let kinds: Vec<LeftOutKind> = s.left_out.iter().map(|l| l.kind).collect();
    assert_eq!(
        kinds,
        [
            LeftOutKind::UnknownDestination,
            LeftOutKind::UnknownDestination,
            LeftOutKind::Plaintext
        ]
    );
    assert!(s.left_out[2].reason.contains("nothing changes for it"));
    for text in [&s.mesh_yaml, &s.kubernetes_yaml] {
        assert!(
            text.contains("not allowed (plaintext): plaintext client -> demo/client:8080"),
            "{text}"
        );
    }
}

/// The items of a suggestion's mesh YAML added to a mesh file's `authorizationPolicies:` list.
fn add_to_mesh_file(file: &str, suggestion_yaml: &str) -> String {
    let (_, items) = suggestion_yaml
        .split_once("authorizationPolicies:\n")
        .unwrap();
    file.replacen(
        "authorizationPolicies:\n",
        &format!("authorizationPolicies:\n{items}"),
        1,
    )
}

#[test]
fn the_mesh_yaml_parses_back_through_the_mesh_file_loader() {
    let s = suggest(&demo(), &demo_flows(), None, NOW);
    assert!(
        s.mesh_yaml.contains("first seen 2025-12-01T23:59:00Z"),
        "{}",
        s.mesh_yaml
    );
    let text = add_to_mesh_file(EMBEDDED_MESH, &s.mesh_yaml);
    let file = parse(&text, "demo with the suggestion").unwrap_or_else(|e| panic!("{e}\n{text}"));
    let mut expected = model_policies(&s.policies);
    let key = |p: &AuthorizationPolicy| (p.namespace.clone(), p.name.clone());
    let mut loaded: Vec<AuthorizationPolicy> = file
        .model
        .policies()
        .filter(|p| p.name.starts_with("allow-observed"))
        .cloned()
        .collect();
    loaded.sort_by_key(key);
    expected.sort_by_key(key);
    assert_eq!(loaded, expected);
    // The file's own policy is still there.
    assert!(
        file.model
            .policies()
            .any(|p| p.name == "deny-denied-client")
    );
}

#[test]
fn the_kubernetes_yaml_parses_back_through_the_crd_types_and_converter() {
    let s = suggest(&demo(), &demo_flows(), None, NOW);
    let docs: Vec<&str> = s.kubernetes_yaml.split("\n---\n").collect();
    assert_eq!(docs.len(), s.policies.len());
    let mut objects = Objects::default();
    for (doc, p) in docs.iter().zip(&s.policies) {
        let object: crd::AuthorizationPolicy =
            serde_saphyr::from_str(doc).unwrap_or_else(|e| panic!("{e}\n{doc}"));
        assert_eq!(object, render::crd_policy(p));
        assert_eq!(object.metadata.namespace.as_deref(), Some("demo"));
        assert!(doc.contains("apiVersion: ambit.io/v1alpha1"), "{doc}");
        assert!(doc.contains("cluster.local/ns/demo/sa/client"), "{doc}");
        objects.policies.push(Arc::new(object));
    }
    let input = convert(&objects, "cluster.local");
    assert!(input.skips.is_empty(), "{:?}", input.skips);
    assert_eq!(input.policies, model_policies(&s.policies));
}

#[test]
fn json_round_trip() {
    let s = suggest(&demo(), &demo_flows(), None, NOW);
    let json = serde_json::to_string(&s).unwrap();
    let back: Suggestion = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
}
