use serde_json::{Value, json};

use super::*;
use crate::model::Labels;

fn service(ns: &str, name: &str, waypoint: Option<&str>) -> model::Service {
    let mut labels = Labels::new();
    if let Some(wp) = waypoint {
        labels.insert(USE_WAYPOINT_LABEL.into(), wp.into());
    }
    model::Service {
        name: name.into(),
        namespace: ns.into(),
        vips: Vec::new(),
        ports: Vec::new(),
        selector: Labels::new(),
        explicit_endpoints: Vec::new(),
        labels,
    }
}

fn http_route(spec: Value) -> Arc<HttpRoute> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": "r", "namespace": "demo"},
            "spec": spec
        }))
        .unwrap(),
    )
}

struct World {
    namespaces: Vec<model::Namespace>,
    services: Vec<model::Service>,
    gateways: BTreeSet<ObjectKey>,
}

impl World {
    fn new() -> World {
        let mut ns_labels = Labels::new();
        ns_labels.insert(USE_WAYPOINT_LABEL.into(), "wp".into());
        World {
            namespaces: vec![model::Namespace {
                name: "demo".into(),
                labels: ns_labels,
            }],
            services: vec![
                service("demo", "reviews", None),
                service("demo", "reviews-v1", None),
                service("demo", "reviews-v2", None),
                service("demo", "direct", Some(WAYPOINT_NONE)),
                service("other", "far", None),
            ],
            gateways: [ObjectKey::new("demo", "wp")].into_iter().collect(),
        }
    }

    fn convert(&self, spec: Value) -> (Option<model::Route>, Vec<Skip>) {
        let context = RouteContext::new(
            &self.namespaces,
            &self.services,
            &self.gateways,
            "cluster.local",
        );
        let mut skips = Vec::new();
        let route = route(&http_route(spec), &context, &mut skips);
        (route, skips)
    }
}

fn host(name: &str) -> String {
    format!("{name}.demo.svc.cluster.local")
}

#[test]
fn matches_become_the_wire_forms() {
    let (route, skips) = World::new().convert(json!({
        "parentRefs": [{"group": "", "kind": "Service", "name": "reviews"}],
        "rules": [{
            "matches": [
                {"path": {"type": "Exact", "value": "/a"}, "method": "POST"},
                {"path": {"type": "RegularExpression", "value": "/b/.*"},
                 "headers": [{"name": "X-User", "value": "jason"},
                             {"type": "RegularExpression", "name": "x-v", "value": "v[12]"}]},
                {"path": {"value": "/c"}}
            ],
            "backendRefs": [{"name": "reviews", "port": 9080}]
        }]
    }));
    assert!(skips.is_empty(), "{skips:?}");
    let route = route.unwrap();
    assert_eq!(route.hostnames, vec![host("reviews")]);
    let m = &route.rules[0].matches;
    use rpb::string_match::Kind;
    let kind = |i: usize| m[i].path.as_ref().unwrap().kind.clone().unwrap();
    assert_eq!(kind(0), Kind::Exact("/a".into()));
    assert_eq!(m[0].method, "POST");
    assert_eq!(kind(1), Kind::Regex("/b/.*".into()));
    assert_eq!(m[1].headers[0].name, "x-user");
    assert_eq!(
        m[1].headers[0].value.as_ref().unwrap().kind,
        Some(Kind::Exact("jason".into()))
    );
    assert_eq!(
        m[1].headers[1].value.as_ref().unwrap().kind,
        Some(Kind::Regex("v[12]".into()))
    );
    assert_eq!(
        kind(2),
        Kind::Prefix("/c".into()),
        "PathPrefix is the default"
    );
    let backend = &route.rules[0].backends[0];
    assert_eq!(
        (backend.port, backend.weight),
        (9080, 1),
        "weight defaults to 1"
    );
    assert!(route.circuit_breaker.is_none() && route.outlier_detection.is_none());
}

#[test]
fn a_waypoint_parent_covers_the_services_that_use_it() {
    let world = World::new();
    let (route, skips) = world.convert(json!({
        "parentRefs": [{"name": "wp"}],
        "rules": [{"backendRefs": [{"name": "reviews-v1", "port": 9080}]}]
    }));
    assert!(skips.is_empty(), "{skips:?}");
    // Every service of demo but `direct`, which opted out of the namespace's waypoint (sorted as
    // strings: '-' sorts before '.').
    assert_eq!(
        route.unwrap().hostnames,
        vec![host("reviews-v1"), host("reviews-v2"), host("reviews")]
    );
    let (route, _) = world.convert(json!({
        "parentRefs": [{"name": "wp"}],
        "hostnames": [host("reviews-v2"), host("direct")],
        "rules": [{"backendRefs": [{"name": "reviews-v1", "port": 9080}]}]
    }));
    assert_eq!(route.unwrap().hostnames, vec![host("reviews-v2")]);
}

#[test]
fn a_route_for_another_gateway_is_not_the_mesh_business() {
    let (route, skips) = World::new().convert(json!({
        "parentRefs": [{"name": "public-ingress"}],
        "rules": [{"backendRefs": [{"name": "reviews", "port": 9080}]}]
    }));
    assert!(route.is_none());
    assert!(skips.is_empty(), "{skips:?}");
}

#[test]
fn timeouts_and_retries() {
    let (route, skips) = World::new().convert(json!({
        "parentRefs": [{"group": "", "kind": "Service", "name": "reviews"}],
        "rules": [
            {"backendRefs": [{"name": "reviews", "port": 9080}],
             "timeouts": {"request": "2s", "backendRequest": "500ms"},
             "retry": {"attempts": 3, "codes": [502, 503], "backoff": "25ms"}},
            {"backendRefs": [{"name": "reviews", "port": 9080}],
             "retry": {}},
            {"backendRefs": [{"name": "reviews", "port": 9080}],
             "timeouts": {"backendRequest": "1s"}}
        ]
    }));
    assert!(skips.is_empty(), "{skips:?}");
    let rules = route.unwrap().rules;
    assert_eq!(rules[0].timeout_ms, 2000);
    assert_eq!(
        rules[0].retry,
        Some(rpb::RetryPolicy {
            attempts: 3,
            per_try_timeout_ms: 500,
            retry_on: vec!["connect-failure".into(), "502".into(), "503".into()],
            backoff_base_ms: 25,
        })
    );
    let defaults = rules[1].retry.clone().unwrap();
    assert_eq!(defaults.attempts, DEFAULT_RETRY_ATTEMPTS);
    assert_eq!(defaults.retry_on, vec!["connect-failure", "503"]);
    assert_eq!(rules[1].timeout_ms, 0, "no timeout unless asked");
    let one_try = rules[2].retry.clone().unwrap();
    assert_eq!((one_try.attempts, one_try.per_try_timeout_ms), (0, 1000));
}

#[test]
fn what_cannot_be_honoured_skips_the_route_naming_the_field() {
    let world = World::new();
    let skipped = |spec: Value, field: &str| {
        let (route, skips) = world.convert(spec);
        assert!(route.is_none(), "{field}");
        assert_eq!(skips.len(), 1, "{skips:?}");
        assert!(skips[0].reason.contains(field), "{field}: {skips:?}");
        assert_eq!(skips[0].subject, ResourceRef::new(Kind::Route, "demo/r"));
    };
    let parent = json!([{"group": "", "kind": "Service", "name": "reviews"}]);
    skipped(
        json!({"parentRefs": parent, "rules": [{"backendRefs": [{"name": "nope", "port": 80}]}]}),
        "spec.rules[0].backendRefs[0] names service demo/nope",
    );
    skipped(
        json!({"parentRefs": parent, "rules": [{"backendRefs": [{"name": "reviews"}]}]}),
        "spec.rules[0].backendRefs[0].port",
    );
    skipped(
        json!({"parentRefs": parent, "rules": [{"timeouts": {"request": "2 seconds"}}]}),
        "spec.rules[0].timeouts.request",
    );
    skipped(
        json!({"parentRefs": parent, "rules": [{"matches": [{"queryParams": [{"name": "a", "value": "b"}]}]}]}),
        "spec.rules[0].matches[0].queryParams",
    );
    skipped(
        json!({"parentRefs": parent, "rules": [{"filters": [{"type": "RequestHeaderModifier",
            "requestHeaderModifier": {"set": [{"name": "a", "value": "b"}]}}]}]}),
        "spec.rules[0].filters",
    );
    skipped(
        json!({"parentRefs": parent, "rules": [{"backendRefs": [{"group": "x.io", "kind": "Bucket", "name": "b"}]}]}),
        "only",
    );
    // The only mesh parent is a service that does not exist: a note on it, then the skip.
    let (route, skips) = world.convert(json!({
        "parentRefs": [{"group": "", "kind": "Service", "name": "gone"}],
        "rules": [{"backendRefs": [{"name": "reviews", "port": 9080}]}]
    }));
    assert!(route.is_none());
    assert!(
        skips.iter().any(|s| s.reason.contains("service demo/gone")),
        "{skips:?}"
    );
}

#[test]
fn a_cross_namespace_parent_is_ignored_with_a_note() {
    let (route, skips) = World::new().convert(json!({
        "parentRefs": [
            {"group": "", "kind": "Service", "name": "far", "namespace": "other"},
            {"group": "", "kind": "Service", "name": "reviews", "port": 9080}
        ],
        "rules": [{"backendRefs": [{"name": "reviews-v1", "port": 80}]}]
    }));
    let route = route.unwrap();
    assert_eq!(route.hostnames, vec![host("reviews")]);
    assert_eq!(skips.len(), 2, "{skips:?}");
    assert!(skips.iter().any(|s| s.reason.contains("consumer routes")));
    assert!(
        skips
            .iter()
            .any(|s| s.reason.contains("parentRefs[1].port"))
    );
}

#[test]
fn a_backend_in_another_namespace_needs_a_reference_grant_so_the_route_is_skipped() {
    let (route, skips) = World::new().convert(json!({
        "parentRefs": [{"group": "", "kind": "Service", "name": "reviews"}],
        "rules": [{"backendRefs": [{"name": "far", "namespace": "other", "port": 80}]}]
    }));
    assert!(route.is_none());
    assert!(
        skips
            .iter()
            .any(|s| s.reason.contains("ReferenceGrant") && s.reason.contains("backendRefs[0]")),
        "{skips:?}"
    );
}

#[test]
fn a_route_on_a_service_without_waypoint_is_kept_with_a_note() {
    let (route, skips) = World::new().convert(json!({
        "parentRefs": [{"group": "", "kind": "Service", "name": "direct"}],
        "rules": [{"backendRefs": [{"name": "direct", "port": 80}]}]
    }));
    assert!(route.is_some());
    assert!(
        skips.iter().any(|s| s.reason.contains("uses no waypoint")),
        "{skips:?}"
    );
}
