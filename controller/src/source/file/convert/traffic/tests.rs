use crate::source::file::{FileError, parse};

/// Services for the policies below, which start at line 8.
const BASE: &str = "\
namespaces:
  - {name: demo, labels: {ambit.io/dataplane-mode: ambient, ambit.io/use-waypoint: demo-wp}}
nodes: [{name: node-a}]
waypoints: [{name: demo-wp, namespace: demo, node: node-a, ipv4: 10.244.1.100}]
services:
  - {name: reviews, namespace: demo, ports: [{port: 9080, appProtocol: http}]}
  - {name: ratings, namespace: demo, ports: [{port: 9080, appProtocol: http}]}
";

/// The CRD's example, as a mesh file item.
const POLICY: &str = "trafficPolicies:
  - name: reviews
    namespace: demo
    targetRef: {group: \"\", kind: Service, name: reviews}
    connectionPool:
      tcp: {maxConnections: 100}
      http: {http1MaxPendingRequests: 10, http2MaxRequests: 1000, maxRetries: 3}
    outlierDetection:
      consecutive5xxErrors: 5
      baseEjectionTime: 30s
      maxEjectionPercent: 50
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

#[test]
fn a_traffic_policy_item_is_the_crds_spec_with_its_metadata() {
    let file = parse(&format!("{BASE}{POLICY}"), "test.yaml").unwrap();
    let policies: Vec<_> = file.model.traffic_policies().collect();
    assert_eq!(policies.len(), 1);
    let p = policies[0];
    assert_eq!((p.namespace.as_str(), p.name.as_str()), ("demo", "reviews"));
    assert_eq!(p.target, "reviews.demo.svc.cluster.local");
    let pool = p.connection_pool.as_ref().unwrap();
    assert_eq!(
        (
            pool.max_connections,
            pool.max_pending_requests,
            pool.max_requests,
            pool.max_retries
        ),
        (100, 10, 1000, 3)
    );
    let outlier = p.outlier_detection.as_ref().unwrap();
    assert_eq!(
        (
            outlier.consecutive_5xx,
            outlier.base_ejection_time_ms,
            outlier.max_ejection_percent
        ),
        (5, 30_000, 50)
    );
    assert_eq!(
        file.model
            .traffic_policy_for("reviews.demo.svc.cluster.local")
            .map(|p| p.name.as_str()),
        Some("reviews")
    );
}

#[test]
fn traffic_policy_problems_are_reported_at_their_lines() {
    // (replacement in POLICY, expected line, expected text); POLICY starts at line 8.
    let cases = [
        (
            (
                "      maxEjectionPercent: 50\n",
                "      maxEjectionPercent: 50\n      interval: 10s\n",
            ),
            19,
            "outlierDetection.interval is not implemented by Ambit's waypoint",
        ),
        (
            ("tcp: {maxConnections: 100}", "tcp: {maxConnections: 0}"),
            13,
            "connectionPool.tcp.maxConnections 0 is refused",
        ),
        (
            ("maxEjectionPercent: 50", "maxEjectionPercent: 150"),
            16,
            "outlierDetection.maxEjectionPercent 150 is out of range",
        ),
        (
            ("name: reviews}", "name: details}"),
            11,
            "targetRef names service demo/details, which does not exist",
        ),
        (
            (
                "    targetRef:",
                "    loadBalancer: {simple: RANDOM}\n    targetRef:",
            ),
            11,
            "loadBalancer is not implemented by Ambit's waypoint (the waypoint picks endpoints",
        ),
    ];
    for ((from, to), line, text) in cases {
        assert!(POLICY.contains(from), "{from}");
        let found = problems(&format!("{BASE}{}", POLICY.replacen(from, to, 1)));
        assert!(
            found.iter().any(|(l, p)| *l == Some(line)
                && p.contains(text)
                && p.contains("traffic policy demo/reviews cannot be used")),
            "{text} at {line}: {found:?}"
        );
    }
    // An unknown field is the parser's error, at its line.
    let text = format!(
        "{BASE}{}",
        POLICY.replace("      baseEjectionTime", "      baseEjectTime")
    );
    match parse(&text, "test.yaml") {
        Err(FileError::Syntax { line, message, .. }) => {
            assert_eq!(line, Some(17), "{message}");
            assert!(message.contains("baseEjectTime"), "{message}");
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn a_service_takes_one_traffic_policy_and_names_are_unique() {
    let second = "  - name: again
    namespace: demo
    targetRef: {kind: Service, name: reviews}
    connectionPool: {}
";
    let found = problems(&format!("{BASE}{POLICY}{second}"));
    assert!(
        found.iter().any(|(l, p)| *l == Some(19)
            && p.contains("traffic policy demo/again targets service reviews.demo.svc.cluster.local, which traffic policy demo/reviews already targets")),
        "{found:?}"
    );
    let twice = second
        .replace("again", "reviews")
        .replace("name: reviews}", "name: ratings}");
    let found = problems(&format!("{BASE}{POLICY}{twice}"));
    assert!(
        found
            .iter()
            .any(|(l, p)| *l == Some(19)
                && p.contains("traffic policy demo/reviews is declared twice")),
        "{found:?}"
    );
}
