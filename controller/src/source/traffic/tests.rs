use ambit_proto::api::traffic as tpb;

use super::*;
use crate::model::{Labels, ServicePort, WAYPOINT_NONE};

fn service(ns: &str, name: &str, waypoint: Option<&str>) -> model::Service {
    let mut labels = Labels::new();
    if let Some(wp) = waypoint {
        labels.insert(USE_WAYPOINT_LABEL.into(), wp.into());
    }
    model::Service {
        name: name.into(),
        namespace: ns.into(),
        vips: Vec::new(),
        ports: vec![ServicePort {
            name: String::new(),
            port: 9080,
            target_port: 9080,
            app_protocol: model::AppProtocol::Http,
        }],
        selector: Labels::new(),
        explicit_endpoints: Vec::new(),
        labels,
    }
}

/// demo uses waypoint `wp`; `direct` opts out; `far` is in another namespace.
fn convert(yaml: &str) -> Outcome {
    let mut ns_labels = Labels::new();
    ns_labels.insert(USE_WAYPOINT_LABEL.into(), "wp".into());
    let namespaces = vec![model::Namespace {
        name: "demo".into(),
        labels: ns_labels,
        egress_scope: None,
    }];
    let services = vec![
        service("demo", "reviews", None),
        service("demo", "direct", Some(WAYPOINT_NONE)),
        service("other", "far", None),
    ];
    let ctx = TrafficContext::new(&namespaces, &services, "cluster.local");
    let spec: spec::TrafficPolicySpec = serde_saphyr::from_str(yaml).unwrap();
    let meta = Meta {
        namespace: "demo",
        name: "p",
        spec_path: "spec.",
    };
    traffic_policy(&meta, &spec, &ctx)
}

fn accepted(yaml: &str) -> tpb::TrafficPolicy {
    let outcome = convert(yaml);
    outcome.policy.unwrap_or_else(|r| panic!("refused: {r:?}"))
}

/// Every reason, with its line.
fn refused(yaml: &str) -> Vec<(Option<u64>, String)> {
    match convert(yaml).policy {
        Ok(p) => panic!("accepted: {p:?}"),
        Err(refusals) => refusals.into_iter().map(|r| (r.line, r.reason)).collect(),
    }
}

const TARGET: &str = "targetRef: {kind: Service, name: reviews}\n";

#[test]
fn every_field_accepted_is_carried() {
    let policy = accepted(
        "targetRef: {group: \"\", kind: Service, name: reviews}
connectionPool:
  tcp: {maxConnections: 100}
  http:
    http1MaxPendingRequests: 10
    http2MaxRequests: 1000
    maxRetries: 3
    maxRequestsPerConnection: 50
    idleTimeout: 1h
    maxConcurrentStreams: 1
outlierDetection:
  consecutive5xxErrors: 7
  consecutiveGatewayErrors: 3
  consecutiveLocalOriginFailures: 2
  baseEjectionTime: 45s
  maxEjectionPercent: 50
",
    );
    assert_eq!(
        policy,
        tpb::TrafficPolicy {
            name: "p".into(),
            namespace: "demo".into(),
            target: "reviews.demo.svc.cluster.local".into(),
            connection_pool: Some(tpb::ConnectionPool {
                max_connections: 100,
                max_pending_requests: 10,
                max_requests: 1000,
                max_retries: 3,
                idle_timeout_ms: 3_600_000,
                max_requests_per_connection: 50,
                http2_multiplexing: tpb::H2Multiplexing::Off.into(),
            }),
            outlier_detection: Some(tpb::OutlierDetection {
                consecutive_5xx: 7,
                consecutive_gateway_errors: 3,
                consecutive_connect_failures: 2,
                base_ejection_time_ms: 45_000,
                max_ejection_percent: 50,
            }),
        }
    );
}

#[test]
fn what_is_left_out_is_the_waypoints_default_or_istios_for_outlier_detection() {
    let policy = accepted(&format!("{TARGET}connectionPool: {{}}\n"));
    assert_eq!(policy.connection_pool, Some(tpb::ConnectionPool::default()));
    assert_eq!(policy.outlier_detection, None, "no ejection unless asked");
    let policy = accepted(&format!(
        "{TARGET}connectionPool: {{http: {{maxRequestsPerConnection: 0}}}}\noutlierDetection: {{}}\n"
    ));
    let pool = policy.connection_pool.unwrap();
    assert_eq!(pool.max_requests_per_connection, 0, "Istio's \"no limit\"");
    assert_eq!(
        pool.http2_multiplexing,
        i32::from(tpb::H2Multiplexing::Default)
    );
    assert_eq!(
        policy.outlier_detection,
        Some(tpb::OutlierDetection {
            consecutive_5xx: DEFAULT_CONSECUTIVE_5XX,
            consecutive_gateway_errors: 0,
            consecutive_connect_failures: 0,
            base_ejection_time_ms: DEFAULT_BASE_EJECTION_MS,
            max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
        })
    );
    // 5xx counting off, gateway errors on: accepted as written.
    let policy = accepted(&format!(
        "{TARGET}outlierDetection: {{consecutive5xxErrors: 0, consecutiveGatewayErrors: 4}}\n"
    ));
    let o = policy.outlier_detection.unwrap();
    assert_eq!((o.consecutive_5xx, o.consecutive_gateway_errors), (0, 4));
}

#[test]
fn each_unsupported_istio_field_refuses_the_policy_naming_it() {
    let cases = [
        ("loadBalancer: {simple: ROUND_ROBIN}\n", "spec.loadBalancer"),
        ("tls: {mode: DISABLE}\n", "spec.tls"),
        ("portLevelSettings: []\n", "spec.portLevelSettings"),
        ("tunnel: {protocol: CONNECT}\n", "spec.tunnel"),
        ("proxyProtocol: {version: V1}\n", "spec.proxyProtocol"),
        ("retryBudget: {percent: 20}\n", "spec.retryBudget"),
        (
            "connectionPool: {tcp: {connectTimeout: 1s}}\n",
            "spec.connectionPool.tcp.connectTimeout",
        ),
        (
            "connectionPool: {tcp: {tcpKeepalive: {time: 1s}}}\n",
            "spec.connectionPool.tcp.tcpKeepalive",
        ),
        (
            "connectionPool: {tcp: {maxConnectionDuration: 1h}}\n",
            "spec.connectionPool.tcp.maxConnectionDuration",
        ),
        (
            "connectionPool: {tcp: {idleTimeout: 1h}}\n",
            "spec.connectionPool.tcp.idleTimeout",
        ),
        (
            "connectionPool: {http: {h2UpgradePolicy: UPGRADE}}\n",
            "spec.connectionPool.http.h2UpgradePolicy",
        ),
        (
            "connectionPool: {http: {useClientProtocol: true}}\n",
            "spec.connectionPool.http.useClientProtocol",
        ),
        (
            "outlierDetection: {interval: 10s}\n",
            "spec.outlierDetection.interval",
        ),
        (
            "outlierDetection: {minHealthPercent: 50}\n",
            "spec.outlierDetection.minHealthPercent",
        ),
        (
            "outlierDetection: {splitExternalLocalOriginErrors: true}\n",
            "spec.outlierDetection.splitExternalLocalOriginErrors",
        ),
        (
            "outlierDetection: {consecutiveErrors: 5}\n",
            "spec.outlierDetection.consecutiveErrors",
        ),
    ];
    assert_eq!(
        cases.len() + 1,
        UNSUPPORTED.len(),
        "targetRef.sectionName below"
    );
    for (field, path) in cases {
        // With something accepted beside it, so only the field itself refuses the policy.
        let yaml = if field.starts_with("connectionPool") || field.starts_with("outlier") {
            format!("{TARGET}{field}")
        } else {
            format!("{TARGET}connectionPool: {{}}\n{field}")
        };
        let reasons = refused(&yaml);
        assert_eq!(reasons.len(), 1, "{field}: {reasons:?}");
        let (line, reason) = &reasons[0];
        assert!(
            reason.starts_with(&format!("{path} is not implemented by Ambit's waypoint"))
                && reason.ends_with("remove it"),
            "{reason}"
        );
        assert!(UNSUPPORTED.iter().any(|(f, _)| path.ends_with(f)), "{path}");
        assert!(line.is_some_and(|l| l >= 2), "{field}: line {line:?}");
    }
    let reasons = refused(
        "targetRef: {kind: Service, name: reviews, sectionName: http}\nconnectionPool: {}\n",
    );
    assert!(
        reasons[0]
            .1
            .starts_with("spec.targetRef.sectionName is not implemented"),
        "{reasons:?}"
    );
}

#[test]
fn out_of_range_values_are_refused_all_at_once() {
    let reasons = refused(&format!(
        "{TARGET}connectionPool:
  tcp: {{maxConnections: 0}}
  http:
    http1MaxPendingRequests: -1
    http2MaxRequests: 4294967296
    maxRetries: 0
    idleTimeout: 0s
    maxConcurrentStreams: 100
outlierDetection: {{maxEjectionPercent: 0, baseEjectionTime: soon}}
"
    ));
    let texts: Vec<&str> = reasons.iter().map(|(_, r)| r.as_str()).collect();
    let expected = [
        "spec.connectionPool.tcp.maxConnections 0 is refused: it would refuse every request",
        "spec.connectionPool.http.http1MaxPendingRequests -1 is out of range; give 1 to 4294967295",
        "spec.connectionPool.http.http2MaxRequests 4294967296 is out of range",
        "spec.connectionPool.http.maxRetries 0 is refused: it would mean the waypoint's default",
        "spec.connectionPool.http.idleTimeout \"0s\" is zero",
        "spec.connectionPool.http.maxConcurrentStreams 100 is not supported",
        "spec.outlierDetection.baseEjectionTime \"soon\" is not a Gateway API duration",
        "spec.outlierDetection.maxEjectionPercent 0 is out of range; give 1 to 100",
    ];
    for e in expected {
        assert!(texts.iter().any(|t| t.starts_with(e)), "{e}\n{texts:#?}");
    }
    assert_eq!(texts.len(), expected.len(), "{texts:#?}");
    // Each at the line of the object it is in.
    let line_of = |prefix: &str| {
        reasons
            .iter()
            .find(|(_, r)| r.starts_with(prefix))
            .unwrap()
            .0
    };
    assert_eq!(line_of("spec.connectionPool.tcp."), Some(3));
    assert_eq!(line_of("spec.connectionPool.http."), Some(5));
    assert_eq!(line_of("spec.outlierDetection."), Some(10));
    let reasons = refused(&format!(
        "{TARGET}outlierDetection: {{maxEjectionPercent: 101}}\n"
    ));
    assert!(reasons[0].1.contains("101 is out of range"), "{reasons:?}");
}

#[test]
fn a_policy_that_would_change_nothing_is_refused() {
    let reasons = refused(TARGET);
    assert!(
        reasons[0]
            .1
            .contains("neither spec.connectionPool nor spec.outlierDetection"),
        "{reasons:?}"
    );
    let reasons = refused(&format!(
        "{TARGET}outlierDetection: {{consecutive5xxErrors: 0, consecutiveGatewayErrors: 0}}\n"
    ));
    assert!(reasons[0].1.contains("counts no error"), "{reasons:?}");
}

#[test]
fn the_target_is_an_existing_service_of_the_policys_namespace() {
    let reasons = refused("targetRef: {kind: Service, name: ratings}\nconnectionPool: {}\n");
    assert!(
        reasons[0]
            .1
            .starts_with("spec.targetRef names service demo/ratings, which does not exist"),
        "{reasons:?}"
    );
    // `far` exists, but in another namespace: a policy has no namespace field to reach it.
    let reasons = refused("targetRef: {kind: Service, name: far}\nconnectionPool: {}\n");
    assert!(reasons[0].1.contains("demo/far"), "{reasons:?}");
    let reasons = refused(
        "targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: wp}\nconnectionPool: {}\n",
    );
    assert!(
        reasons[0].1.contains("a TrafficPolicy targets a Service"),
        "{reasons:?}"
    );
    assert_eq!(reasons[0].0, Some(1));
    // An unknown field is the parser's error, before any conversion.
    let error = serde_saphyr::from_str::<spec::TrafficPolicySpec>(
        "targetRef: {kind: Service, name: reviews, namespace: other}\n",
    )
    .unwrap_err();
    assert!(error.to_string().contains("namespace"), "{error}");
}

#[test]
fn a_service_without_waypoint_is_noted_but_its_policy_kept() {
    let outcome = convert("targetRef: {kind: Service, name: direct}\nconnectionPool: {}\n");
    assert!(outcome.policy.is_ok());
    assert_eq!(outcome.notes.len(), 1);
    assert!(
        outcome.notes[0].contains("service demo/direct uses no waypoint"),
        "{:?}",
        outcome.notes
    );
    assert!(
        convert(&format!("{TARGET}connectionPool: {{}}\n"))
            .notes
            .is_empty()
    );
}
