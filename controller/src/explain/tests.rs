//! `explain` over mesh files: the default demo and variations of it, each written the way a
//! user would write the mesh.

use ambit_discovery::state::{Policy, PolicyRequest, PolicySource, decide_request};
use ambit_proto::identity::SpiffeId;

use super::*;
use crate::model::{MeshModel, ObjectKey};
use crate::source::file::{EMBEDDED_MESH, parse};

fn model(yaml: &str) -> MeshModel {
    match parse(yaml, "test") {
        Ok(file) => file.model,
        Err(e) => panic!("mesh file refused: {e}"),
    }
}

fn demo() -> MeshModel {
    model(EMBEDDED_MESH)
}

/// The demo with `from` replaced by `to` (which must occur).
fn demo_with(edits: &[(&str, &str)]) -> MeshModel {
    let mut yaml = EMBEDDED_MESH.to_string();
    for (from, to) in edits {
        assert!(yaml.contains(from), "{from:?} is not in the demo");
        yaml = yaml.replacen(from, to, 1);
    }
    model(&yaml)
}

const DEMO_NAMESPACE: &str =
    "  - name: demo\n    labels:\n      ambit.io/dataplane-mode: ambient\n";
const CATCH_ALL_RULE: &str =
    "      - backendRefs:\n          - {name: reviews-v1, port: 8080, weight: 90}\n";

fn ok(m: &MeshModel, from: &str, to: &str) -> Explanation {
    explain(m, from, to).unwrap_or_else(|e| panic!("explain {from} {to}: {e}"))
}

fn policy<'a>(e: &'a Explanation, name: &str) -> &'a PolicyInfo {
    e.policies
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("{name} not among {:?}", e.policies))
}

const DENY: &str = "demo/deny-denied-client";

#[test]
fn the_demo_client_reaches_reviews_through_the_waypoint_split_90_10() {
    let e = ok(&demo(), "demo/client", "demo/reviews");
    assert!(e.source.captured);
    assert_eq!(
        e.source.capture,
        Capture::Enrolled {
            namespace: "demo".into()
        }
    );
    assert_eq!(
        e.source.identity,
        "spiffe://cluster.local/ns/demo/sa/client"
    );
    assert_eq!(e.source.node, "node-a");
    assert_eq!(
        (e.destination.port, e.destination.target_port),
        (9080, 8080)
    );
    assert_eq!(e.destination.hostname, "reviews.demo.svc.cluster.local");
    let w = e.waypoint.as_ref().expect("reviews uses the waypoint");
    assert_eq!(w.name, "demo/waypoint");
    assert_eq!(
        w.chosen_by,
        WaypointChoice::ServiceLabel {
            service: "demo/reviews".into()
        }
    );
    assert_eq!((w.protocol.as_str(), w.l7, w.on_path), ("http", true, true));
    assert!(e.mutual_tls);

    let [route] = e.routes.as_slice() else {
        panic!("one route: {:?}", e.routes)
    };
    assert_eq!(route.name, "demo/reviews");
    let canary = &route.rules[0];
    assert_eq!(canary.matches[0].headers, ["x-canary = 1"]);
    assert_eq!(canary.backends[0].service, "demo/reviews-v2");
    assert_eq!(canary.backends[0].percent, 100.0);
    // The demo's slow request: its own rule, with the 100 ms timeout that cuts it off.
    let slow = &route.rules[1];
    assert_eq!(slow.matches[0].headers, ["x-echo-delay-ms = 300"]);
    assert_eq!(slow.request_timeout_ms, Some(100));
    let catch_all = route
        .rules
        .iter()
        .find(|r| r.matches.is_empty())
        .expect("the catch-all rule");
    let split: Vec<(&str, u32, f64)> = catch_all
        .backends
        .iter()
        .map(|b| (b.service.as_str(), b.weight, b.percent))
        .collect();
    assert_eq!(
        split,
        [("demo/reviews-v1", 90, 90.0), ("demo/reviews-v2", 10, 10.0)]
    );

    let endpoints: Vec<(&str, &str, &str)> = e
        .backends
        .iter()
        .flat_map(|b| &b.endpoints)
        .map(|ep| (ep.workload.as_str(), ep.node.as_str(), ep.address.as_str()))
        .collect();
    assert_eq!(
        endpoints,
        [
            ("demo/reviews-v2", "node-b", "10.244.2.2:8080"),
            ("demo/reviews-v1", "node-a", "10.244.1.4:8080")
        ]
    );

    let deny = policy(&e, DENY);
    assert_eq!(deny.action, "DENY");
    assert_eq!(deny.outcome, PolicyOutcome::NoRuleMatches);
    assert_eq!(deny.rules[0].clauses[0].part, "from");
    assert_eq!(deny.rules[0].clauses[0].result, ClauseResult::DoesNotMatch);
    assert_eq!(
        deny.enforced_at,
        [Enforcer::Waypoint {
            name: "demo/waypoint".into(),
            l7: true
        }]
    );
    assert_eq!(
        e.verdict,
        Verdict::Allowed {
            policy: None,
            audited: vec![]
        }
    );
}

#[test]
fn denied_client_is_denied_at_the_waypoint_by_the_rule_that_names_it() {
    let e = ok(&demo(), "demo/denied-client", "demo/reviews:9080");
    let deny = policy(&e, DENY);
    assert_eq!(deny.outcome, PolicyOutcome::Matches { rule: 0 });
    let clauses: Vec<(&str, &str, ClauseResult)> = deny.rules[0]
        .clauses
        .iter()
        .map(|c| (c.part.as_str(), c.text.as_str(), c.result))
        .collect();
    assert_eq!(
        clauses,
        [
            (
                "from",
                "principals [spiffe://cluster.local/ns/demo/sa/denied-client]",
                ClauseResult::Matches
            ),
            ("to", "ports [8080]", ClauseResult::Matches)
        ]
    );
    let Verdict::Denied { policy, reason } = &e.verdict else {
        panic!("not denied: {:?}", e.verdict)
    };
    assert_eq!(policy, DENY);
    assert!(reason.contains("denied-client"), "{reason}");
    // Both versions are behind the waypoint, which decides for them.
    assert_eq!(e.endpoint_verdicts.len(), 2);
    assert!(e.endpoint_verdicts.iter().all(
        |v| matches!(&v.enforced_at, Enforcer::Waypoint { name, .. } if name == "demo/waypoint")
    ));
}

#[test]
fn the_destination_can_be_named_by_host_name_vip_or_pod_address() {
    let m = demo();
    for to in [
        "reviews-v1.demo.svc.cluster.local",
        "reviews-v1.demo",
        "10.96.0.11",
        "10.96.0.11:8080",
        "[fd00:10:96::11]:8080",
        "demo/reviews-v1:8080",
    ] {
        let e = ok(&m, "demo/denied-client", to);
        assert_eq!(e.destination.name, "demo/reviews-v1", "{to}");
        assert_eq!(e.destination.kind, DestinationKind::Service, "{to}");
        // No waypoint for reviews-v1: its pod's ztunnel decides, at L4.
        assert!(e.waypoint.is_none(), "{to}");
        assert!(e.routes.is_empty(), "{to}");
        assert_eq!(
            e.endpoint_verdicts[0].enforced_at,
            Enforcer::Ztunnel {
                node: "node-a".into()
            },
            "{to}"
        );
        assert!(
            matches!(&e.verdict, Verdict::Denied { policy, .. } if policy == DENY),
            "{to}: {:?}",
            e.verdict
        );
    }
    let e = ok(&m, "demo/client", "10.244.2.2:8080");
    assert_eq!(e.destination.kind, DestinationKind::Workload);
    assert_eq!(e.destination.name, "demo/reviews-v2");
    assert_eq!(
        e.endpoint_verdicts[0].enforced_at,
        Enforcer::Ztunnel {
            node: "node-b".into()
        }
    );
    // A pod address without port: the port of the services it serves.
    let e = ok(&m, "demo/client", "10.244.2.2");
    assert_eq!(e.destination.kind, DestinationKind::Workload);
    assert_eq!(e.destination.port, 8080);
    // A name that is both a service and a pod is the service; a pod's name alone, the pod.
    assert_eq!(
        ok(&m, "demo/client", "demo/reviews-v2").destination.kind,
        DestinationKind::Service
    );
    let e = ok(&m, "demo/client", "demo/denied-client:8080");
    assert_eq!(e.destination.kind, DestinationKind::Workload);
}

#[test]
fn an_unmeshed_source_is_not_captured_and_skips_the_waypoint() {
    let e = ok(&demo(), "legacy/legacy", "demo/reviews");
    assert!(!e.source.captured);
    assert_eq!(
        e.source.capture,
        Capture::NamespaceNotEnrolled {
            namespace: "legacy".into(),
            value: None
        }
    );
    assert!(!e.mutual_tls);
    let w = e.waypoint.as_ref().expect("reviews asks for the waypoint");
    assert!(!w.on_path, "plain text never reaches the waypoint");
    assert!(e.routes.is_empty(), "routes are the waypoint's");
    assert_eq!(e.backends.len(), 1);
    assert_eq!(e.backends[0].service, "demo/reviews");
    // The pods' ztunnels receive plain text: no identity, so the principal rule cannot match.
    assert_eq!(policy(&e, DENY).outcome, PolicyOutcome::NoRuleMatches);
    assert!(
        matches!(e.verdict, Verdict::Allowed { .. }),
        "{:?}",
        e.verdict
    );

    // A pod opting out of an enrolled namespace.
    let m = demo_with(&[(
        "    labels: {app: denied-client}\n",
        "    labels: {app: denied-client, ambit.io/dataplane-mode: none}\n",
    )]);
    let e = ok(&m, "demo/denied-client", "demo/reviews");
    assert_eq!(
        e.source.capture,
        Capture::PodOptedOut {
            namespace: "demo".into()
        }
    );
    // Without its identity, the DENY by principal no longer applies.
    assert!(
        matches!(e.verdict, Verdict::Allowed { .. }),
        "{:?}",
        e.verdict
    );
}

#[test]
fn a_strict_destination_refuses_plain_text_and_accepts_the_mesh() {
    let m = demo_with(&[(
        DEMO_NAMESPACE,
        "  - name: demo\n    labels:\n      ambit.io/dataplane-mode: ambient\n      ambit.io/mtls-mode: strict\n",
    )]);
    let e = ok(&m, "legacy/legacy", "demo/reviews");
    assert!(
        e.backends[0]
            .endpoints
            .iter()
            .all(|ep| ep.mtls_mode == "strict"),
        "{:?}",
        e.backends
    );
    assert!(
        matches!(&e.verdict, Verdict::PlaintextRefused { .. }),
        "{:?}",
        e.verdict
    );
    let e = ok(&m, "demo/client", "demo/reviews");
    assert!(
        matches!(e.verdict, Verdict::Allowed { .. }),
        "{:?}",
        e.verdict
    );
}

#[test]
fn observer_mode_lets_it_through_and_says_the_policy_would_deny_it() {
    let m = model(&format!("policyMode: audit\n{EMBEDDED_MESH}"));
    let e = ok(&m, "demo/denied-client", "demo/reviews");
    assert!(policy(&e, DENY).dry_run);
    assert_eq!(policy(&e, DENY).outcome, PolicyOutcome::Matches { rule: 0 });
    assert!(
        matches!(&e.verdict, Verdict::WouldBeDenied { policy, .. } if policy == DENY),
        "{:?}",
        e.verdict
    );
    assert!(e.verdict.may_pass());
}

#[test]
fn route_timeouts_retries_and_the_backends_circuit_breaker_are_shown() {
    let m = model(&format!(
        "{}\ntrafficPolicies:\n  - name: reviews-v1\n    namespace: demo\n    targetRef: {{group: \"\", kind: Service, name: reviews-v1}}\n    connectionPool:\n      tcp: {{maxConnections: 4}}\n      http: {{http1MaxPendingRequests: 10, http2MaxRequests: 100, maxRetries: 2}}\n    outlierDetection: {{consecutive5xxErrors: 5, baseEjectionTime: 30s, maxEjectionPercent: 50}}\n",
        EMBEDDED_MESH.replacen(
            CATCH_ALL_RULE,
            "      - timeouts: {request: 2s, backendRequest: 500ms}\n        retry: {attempts: 3, codes: [503, 504], backoff: 100ms}\n        backendRefs:\n          - {name: reviews-v1, port: 8080, weight: 90}\n",
            1
        )
    ));
    let e = ok(&m, "demo/client", "demo/reviews");
    let rule = e.routes[0]
        .rules
        .iter()
        .find(|r| r.matches.is_empty())
        .expect("the catch-all rule");
    assert_eq!(rule.request_timeout_ms, Some(2000));
    assert_eq!(rule.backend_request_timeout_ms, Some(500));
    assert_eq!(
        rule.retry,
        Some(RetryInfo {
            attempts: 3,
            codes: vec![503, 504],
            grpc_codes: vec![],
            backoff_ms: 100
        })
    );
    assert_eq!(e.routes[0].rules[0].request_timeout_ms, None);
    let v1 = e
        .backends
        .iter()
        .find(|b| b.service == "demo/reviews-v1")
        .expect("reviews-v1 is a backend");
    let tp = v1
        .traffic_policy
        .as_ref()
        .expect("reviews-v1 has a breaker");
    assert_eq!(tp.name, "demo/reviews-v1");
    assert_eq!(tp.max_connections, Some(4));
    assert_eq!(tp.max_pending_requests, Some(10));
    assert_eq!(tp.max_requests, Some(100));
    assert_eq!(tp.max_retries, Some(2));
    let outlier = tp.outlier_detection.as_ref().expect("outlier detection");
    assert_eq!(
        (
            outlier.consecutive_5xx,
            outlier.base_ejection_time_ms,
            outlier.max_ejection_percent
        ),
        (5, 30_000, 50)
    );
    let v2 = e.backends.iter().find(|b| b.service == "demo/reviews-v2");
    assert!(v2.is_some_and(|b| b.traffic_policy.is_none()));
}

const GET_ONLY: &str = "  - name: reviews-get-only\n    namespace: demo\n    selector:\n      matchLabels: {app: reviews}\n    action: ALLOW\n    rules:\n      - from:\n          - principals: [spiffe://cluster.local/ns/demo/sa/client]\n        to:\n          - methods: [GET]\n";

fn with_get_only() -> MeshModel {
    demo_with(&[(
        "authorizationPolicies:\n",
        &format!("authorizationPolicies:\n{GET_ONLY}"),
    )])
}

#[test]
fn an_l7_policy_depends_on_the_request_at_the_waypoint_and_fails_closed_at_ztunnel() {
    let m = with_get_only();
    let e = ok(&m, "demo/client", "demo/reviews");
    let p = policy(&e, "demo/reviews-get-only");
    assert_eq!(
        p.outcome,
        PolicyOutcome::DependsOnRequest { rules: vec![0] }
    );
    assert_eq!(p.rules[0].clauses[1].text, "methods [GET]");
    assert_eq!(p.rules[0].clauses[1].result, ClauseResult::NeedsRequest);
    let Verdict::DependsOnRequest {
        policies,
        fields,
        best_case,
        worst_case,
    } = &e.verdict
    else {
        panic!("{:?}", e.verdict)
    };
    assert_eq!(policies, &["demo/reviews-get-only"]);
    assert_eq!(fields, &["methods"]);
    assert!(matches!(**best_case, Verdict::Allowed { .. }));
    assert!(matches!(**worst_case, Verdict::Denied { .. }));

    // Requests decided by the waypoint's own code fall between the two cases.
    let w = m
        .workload(&ObjectKey::new("demo", "reviews-v1"))
        .expect("reviews-v1");
    let compiled: Vec<_> = m
        .policies_in("demo")
        .filter(|p| MeshModel::policy_selects(p, w))
        .map(|p| std::sync::Arc::new(Policy::from_api(&m.policy_proto(p)).expect("compiles")))
        .collect();
    let client: SpiffeId = "spiffe://cluster.local/ns/demo/sa/client"
        .parse()
        .expect("id");
    let headers = http::HeaderMap::new();
    let source = PolicySource {
        identity: Some(&client),
        ip: "10.244.1.2".parse().expect("ip"),
    };
    let ask = |method| {
        let request = PolicyRequest {
            method,
            path: "/",
            authority: None,
            headers: &headers,
        };
        decide_request(compiled.iter(), &source, 8080, &request).is_allowed()
    };
    assert!(ask("GET"));
    assert!(!ask("POST"));

    // Straight to reviews-v1 no waypoint sees the method: ztunnel's ALLOW rule cannot match.
    let e = ok(&m, "demo/client", "demo/reviews-v1");
    let p = policy(&e, "demo/reviews-get-only");
    assert_eq!(p.rules[0].clauses[1].result, ClauseResult::NotCheckedAtL4);
    assert_eq!(p.outcome, PolicyOutcome::NoRuleMatches);
    assert!(
        matches!(&e.verdict, Verdict::Denied { policy, .. } if policy == "demo/reviews-get-only"),
        "{:?}",
        e.verdict
    );

    // A caller the ALLOW does not name is denied whatever it asks.
    let e = ok(&m, "demo/denied-client", "demo/reviews");
    assert!(
        matches!(e.verdict, Verdict::Denied { .. }),
        "{:?}",
        e.verdict
    );
}

#[test]
fn endpoints_selected_by_different_policies_are_told_apart() {
    let only_v2 = "  - name: deny-client-v2\n    namespace: demo\n    selector:\n      matchLabels: {app: reviews, version: v2}\n    action: DENY\n    rules:\n      - from:\n          - principals: [spiffe://cluster.local/ns/demo/sa/client]\n";
    let m = demo_with(&[(
        "authorizationPolicies:\n",
        &format!("authorizationPolicies:\n{only_v2}"),
    )]);
    let e = ok(&m, "demo/client", "demo/reviews");
    assert_eq!(e.verdict, Verdict::DependsOnEndpoint);
    let by_endpoint: Vec<(&str, bool)> = e
        .endpoint_verdicts
        .iter()
        .map(|v| (v.endpoint.as_str(), v.verdict.may_pass()))
        .collect();
    assert_eq!(
        by_endpoint,
        [("demo/reviews-v2", false), ("demo/reviews-v1", true)]
    );
    assert_eq!(
        policy(&e, "demo/deny-client-v2").workloads,
        ["demo/reviews-v2"]
    );
}

#[test]
fn unknown_names_are_errors_that_say_what_exists() {
    let m = demo();
    let cases: &[(&str, &str, &[&str])] = &[
        ("client", "demo/reviews", &["<namespace>/<workload>"]),
        (
            "demo/nobody",
            "demo/reviews",
            &["demo/nobody", "demo/client", "demo/reviews-v1"],
        ),
        (
            "nowhere/x",
            "demo/reviews",
            &["nowhere/x", "no workloads", "demo, legacy"],
        ),
        (
            "demo/client",
            "demo/ratings",
            &["demo/ratings", "demo/reviews-v2", "demo/denied-client"],
        ),
        (
            "demo/client",
            "ratings.demo.svc.cluster.local",
            &["ratings.demo.svc.cluster.local", "demo/reviews"],
        ),
        (
            "demo/client",
            "demo/reviews:80",
            &["no port 80", "9080 (http)"],
        ),
        ("demo/client", "demo/reviews:http", &["no valid port"]),
        ("demo/client", "10.9.9.9", &["10.9.9.9"]),
        (
            "demo/client",
            "demo/client",
            &["add one as demo/client:<port>", "none declared"],
        ),
    ];
    for (from, to, parts) in cases {
        let err = explain(&m, from, to).expect_err(&format!("{from} -> {to}"));
        let client_error = err.status().is_client_error();
        assert!(client_error, "{from} -> {to}: {}", err.status());
        let text = err.to_string();
        for part in *parts {
            assert!(
                text.contains(part),
                "{from} -> {to}: {part:?} missing in {text}"
            );
        }
    }
}

#[test]
fn a_service_with_several_ports_needs_one_named() {
    let m = demo_with(&[(
        "      - {name: http, port: 9080, targetPort: 8080, appProtocol: http}\n",
        "      - {name: http, port: 9080, targetPort: 8080, appProtocol: http}\n      - {name: raw, port: 9000, targetPort: 9000}\n",
    )]);
    let err = explain(&m, "demo/client", "demo/reviews").expect_err("two ports");
    assert!(err.to_string().contains("9080 (http), 9000 (raw)"), "{err}");
    // Opaque TCP: the waypoint carries it with L4 policy only, and no route applies.
    let e = ok(&m, "demo/client", "demo/reviews:9000");
    let w = e.waypoint.as_ref().expect("waypoint");
    assert_eq!((w.protocol.as_str(), w.l7), ("tcp", false));
    assert!(e.routes.is_empty());
    assert_eq!(e.destination.target_port, 9000);
}

#[test]
fn the_explanation_round_trips_as_json() {
    let e = ok(&with_get_only(), "demo/client", "demo/reviews");
    let json = serde_json::to_string(&e).expect("serialise");
    assert!(json.contains("\"kind\":\"depends_on_request\""), "{json}");
    let back: Explanation = serde_json::from_str(&json).expect("deserialise");
    assert_eq!(back, e);
}

#[test]
fn a_policy_is_checked_on_each_backends_target_port() {
    let m = demo_with(&[(
        "    vips: [10.96.0.12, \"fd00:10:96::12\"]\n    ports:\n      - {name: http, port: 8080, targetPort: 8080, appProtocol: http}\n",
        "    vips: [10.96.0.12, \"fd00:10:96::12\"]\n    ports:\n      - {name: http, port: 8080, targetPort: 9090, appProtocol: http}\n",
    )]);
    let e = ok(&m, "demo/denied-client", "demo/reviews");
    let checks: Vec<(u16, &PolicyOutcome)> = e
        .policies
        .iter()
        .filter(|p| p.name == DENY)
        .map(|p| (p.port, &p.outcome))
        .collect();
    assert_eq!(
        checks,
        [
            (8080, &PolicyOutcome::Matches { rule: 0 }),
            (9090, &PolicyOutcome::NoRuleMatches)
        ]
    );
    assert_eq!(e.verdict, Verdict::DependsOnEndpoint);
    let v2 = e
        .endpoint_verdicts
        .iter()
        .find(|v| v.endpoint == "demo/reviews-v2")
        .expect("reviews-v2");
    assert!(v2.verdict.may_pass(), "{:?}", v2.verdict);
}

#[test]
fn a_destination_outside_the_callers_egress_scope_is_refused_at_its_ztunnel() {
    let scoped = |scope: &str| {
        demo_with(&[(
            DEMO_NAMESPACE,
            &format!("{DEMO_NAMESPACE}    egressScope: {scope}\n"),
        )])
    };
    let m = scoped("['./reviews']");
    let e = ok(&m, "demo/client", "legacy/legacy");
    assert_eq!(
        e.verdict,
        Verdict::OutsideEgressScope {
            namespace: "demo".into(),
            declared: "./reviews".into(),
            invalid: None,
        }
    );
    assert!(!e.verdict.may_pass());
    // Inside it, the rest of the path decides as without a scope; a pod behind the named
    // service is inside too, one behind another service of the same namespace is not.
    let within = ok(&m, "demo/client", "demo/reviews");
    assert_eq!(
        within.verdict,
        ok(&demo(), "demo/client", "demo/reviews").verdict
    );
    let pod = ok(&m, "demo/client", "10.244.1.4:8080");
    assert_eq!(pod.destination.kind, DestinationKind::Workload);
    assert!(
        !matches!(pod.verdict, Verdict::OutsideEgressScope { .. }),
        "{:?}",
        pod.verdict
    );
    let other = ok(&m, "demo/client", "demo/reviews-v1");
    assert!(matches!(other.verdict, Verdict::OutsideEgressScope { .. }));
    let m = scoped("['legacy/*']");
    assert!(matches!(
        ok(&m, "demo/client", "demo/reviews").verdict,
        Verdict::OutsideEgressScope { .. }
    ));
    assert!(!matches!(
        ok(&m, "demo/client", "legacy/legacy").verdict,
        Verdict::OutsideEgressScope { .. }
    ));
}
