use ambit_proto::api::route as rpb;
use serde_json::{Value, json};

use super::*;
use crate::model::{Labels, ObjectKey, ServicePort, USE_WAYPOINT_LABEL, WAYPOINT_NONE};
use crate::source::routes::{DEFAULT_RETRY_ATTEMPTS, DEFAULT_RETRY_CODES};

fn service(ns: &str, name: &str, waypoint: Option<&str>) -> model::Service {
    let mut labels = Labels::new();
    if let Some(wp) = waypoint {
        labels.insert(USE_WAYPOINT_LABEL.into(), wp.into());
    }
    model::Service {
        name: name.into(),
        namespace: ns.into(),
        vips: Vec::new(),
        ports: [9080, 9090]
            .map(|port| ServicePort {
                name: String::new(),
                port,
                target_port: port,
                app_protocol: model::AppProtocol::Http,
            })
            .into(),
        selector: Labels::new(),
        explicit_endpoints: Vec::new(),
        labels,
    }
}

/// A route as converted, with what was said about it.
type Converted = (Option<model::Route>, Vec<Skip>);

fn object(spec: Value, annotations: Value) -> Value {
    json!({
        "metadata": {"name": "r", "namespace": "demo", "annotations": annotations},
        "spec": spec
    })
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
                egress_scope: None,
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

    fn context(&self) -> RouteContext<'_> {
        RouteContext::new(
            &self.namespaces,
            &self.services,
            &self.gateways,
            "cluster.local",
        )
    }

    fn http(&self, spec: Value) -> Converted {
        self.http_annotated(spec, json!({}))
    }

    fn http_annotated(&self, spec: Value, annotations: Value) -> Converted {
        let r: HttpRoute = serde_json::from_value(object(spec, annotations)).unwrap();
        let mut skips = Vec::new();
        let route = http_route(&Arc::new(r), &self.context(), &mut skips);
        (route, skips)
    }

    fn grpc(&self, spec: Value, annotations: Value) -> Converted {
        let r: GrpcRoute = serde_json::from_value(object(spec, annotations)).unwrap();
        let mut skips = Vec::new();
        let route = grpc_route(&Arc::new(r), &self.context(), &BTreeSet::new(), &mut skips);
        (route, skips)
    }
}

fn host(name: &str) -> String {
    format!("{name}.demo.svc.cluster.local")
}

fn parent() -> Value {
    json!([{"group": "", "kind": "Service", "name": "reviews"}])
}

/// The one rule of a route that must convert without a word.
fn one_rule(world: &World, rule: Value) -> rpb::RouteRule {
    let (route, skips) = world.http(json!({"parentRefs": parent(), "rules": [rule]}));
    assert!(skips.is_empty(), "{skips:?}");
    route.unwrap().rules.remove(0)
}

#[test]
fn matches_become_the_wire_forms() {
    let rule = one_rule(
        &World::new(),
        json!({
            "matches": [
                {"path": {"type": "Exact", "value": "/a"}, "method": "POST"},
                {"path": {"type": "RegularExpression", "value": "/b/.*"},
                 "headers": [{"name": "X-User", "value": "jason"},
                             {"type": "RegularExpression", "name": "x-v", "value": "v[12]"},
                             {"name": "x-user", "value": "second, ignored"}],
                 "queryParams": [{"name": "animal", "value": "whale"},
                                 {"type": "RegularExpression", "name": "n", "value": "[0-9]+"}]},
                {"path": {"value": "/c"}}
            ],
            "backendRefs": [{"name": "reviews", "port": 9080}]
        }),
    );
    use rpb::path_match::Kind;
    use rpb::value_match::Kind as V;
    let m = &rule.matches;
    let kind = |i: usize| m[i].path.as_ref().unwrap().kind.clone().unwrap();
    let value = |v: &Option<rpb::ValueMatch>| v.as_ref().unwrap().kind.clone().unwrap();
    assert_eq!(kind(0), Kind::Exact("/a".into()));
    assert_eq!(m[0].method, "POST");
    assert_eq!(kind(1), Kind::Regex("/b/.*".into()));
    assert_eq!(
        m[1].headers.len(),
        2,
        "of equal names only the first counts"
    );
    assert_eq!(m[1].headers[0].name, "x-user");
    assert_eq!(value(&m[1].headers[0].value), V::Exact("jason".into()));
    assert_eq!(value(&m[1].headers[1].value), V::Regex("v[12]".into()));
    assert_eq!(m[1].query_params[0].name, "animal");
    assert_eq!(value(&m[1].query_params[0].value), V::Exact("whale".into()));
    assert_eq!(
        value(&m[1].query_params[1].value),
        V::Regex("[0-9]+".into())
    );
    assert_eq!(
        kind(2),
        Kind::Prefix("/c".into()),
        "PathPrefix is the default"
    );
    assert_eq!(
        (rule.backends[0].port, rule.backends[0].weight),
        (9080, 1),
        "weight defaults to 1"
    );
}

#[test]
fn parents_are_services_and_optionally_one_port() {
    let world = World::new();
    let (route, skips) = world.http(json!({
        "parentRefs": [
            {"group": "", "kind": "Service", "name": "reviews", "port": 9080},
            {"group": "core", "kind": "Service", "name": "reviews-v1"},
            {"group": "", "kind": "Service", "name": "reviews-v1", "port": 9090}
        ],
        "rules": [{"backendRefs": [{"name": "reviews-v1", "port": 9080}]}]
    }));
    assert!(skips.is_empty(), "{skips:?}");
    let parents: Vec<(String, u32)> = route
        .unwrap()
        .parents
        .into_iter()
        .map(|p| (p.service, p.port))
        .collect();
    assert_eq!(
        parents,
        [(host("reviews-v1"), 0), (host("reviews"), 9080)],
        "a parent for every port covers one for a port"
    );
    // A port the service does not have: that parent is ignored, with a note.
    let (route, skips) = world.http(json!({
        "parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 1234}],
        "rules": [{"backendRefs": [{"name": "reviews", "port": 9080}]}]
    }));
    assert!(route.is_none());
    assert!(
        skips
            .iter()
            .any(|s| s.reason.contains("parentRefs[0].port 1234")),
        "{skips:?}"
    );
}

#[test]
fn routes_for_gateways_are_not_the_mesh_business_and_waypoint_parents_are_told_off() {
    let world = World::new();
    let (route, skips) = world.http(json!({
        "parentRefs": [{"name": "public-ingress"}],
        "rules": [{"backendRefs": [{"name": "reviews", "port": 9080}],
                   "filters": [{"type": "RequestMirror",
                                "requestMirror": {"backendRef": {"name": "x", "port": 1}}}]}]
    }));
    assert!(route.is_none());
    assert!(skips.is_empty(), "{skips:?}");
    let (route, skips) = world.http(json!({
        "parentRefs": [{"name": "wp"}],
        "rules": [{"backendRefs": [{"name": "reviews-v1", "port": 9080}]}]
    }));
    assert!(route.is_none());
    assert!(
        skips
            .iter()
            .any(|s| s.reason.contains("names waypoint demo/wp")
                && s.reason.contains("kind: Service")),
        "{skips:?}"
    );
}

#[test]
fn filters_become_the_wire_forms() {
    let world = World::new();
    let rule = one_rule(
        &world,
        json!({
            "matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
            "filters": [
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                    "set": [{"name": "X-Set", "value": "1"}],
                    "add": [{"name": "x-add", "value": "2"}],
                    "remove": ["X-Gone"]}},
                {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                    "set": [{"name": "x-resp", "value": "3"}]}},
                {"type": "URLRewrite", "urlRewrite": {
                    "hostname": "example.org",
                    "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}}
            ],
            "backendRefs": [{"name": "reviews", "port": 9080}]
        }),
    );
    let req = rule.request_header_modifier.unwrap();
    assert_eq!(
        (
            req.set[0].name.as_str(),
            req.add[0].name.as_str(),
            req.remove[0].as_str()
        ),
        ("x-set", "x-add", "x-gone")
    );
    assert_eq!(rule.response_header_modifier.unwrap().set[0].value, "3");
    let rewrite = rule.url_rewrite.unwrap();
    assert_eq!(rewrite.hostname, "example.org");
    assert_eq!(
        rewrite.path.unwrap().kind,
        Some(rpb::path_modifier::Kind::ReplacePrefixMatch("/new".into()))
    );

    let (route, skips) = world.http(json!({
        "parentRefs": parent(),
        "rules": [{
            "filters": [{"type": "RequestRedirect", "requestRedirect": {
                "scheme": "https", "hostname": "example.org", "port": 8443, "statusCode": 301,
                "path": {"type": "ReplaceFullPath", "replaceFullPath": "/moved"}}}],
            "backendRefs": [{"name": "reviews", "port": 9080}]
        }]
    }));
    let rule = route.unwrap().rules.remove(0);
    assert_eq!(
        rule.request_redirect,
        Some(rpb::RequestRedirect {
            scheme: "https".into(),
            hostname: "example.org".into(),
            path: Some(rpb::PathModifier {
                kind: Some(rpb::path_modifier::Kind::ReplaceFullPath("/moved".into())),
            }),
            port: 8443,
            status_code: 301,
        })
    );
    assert!(
        rule.backends.is_empty(),
        "a redirect sends nothing to a backend"
    );
    assert!(
        skips
            .iter()
            .any(|s| s.reason.contains("backendRefs are never used")),
        "{skips:?}"
    );
    let redirect = one_rule(
        &world,
        json!({"filters": [{"type": "RequestRedirect", "requestRedirect": {}}]}),
    );
    assert_eq!(redirect.request_redirect.unwrap().status_code, 302);
}

#[test]
fn weighted_backends_timeouts_and_retries() {
    let world = World::new();
    let (route, skips) = world.http(json!({
        "parentRefs": parent(),
        "rules": [
            {"backendRefs": [{"name": "reviews-v1", "port": 9080, "weight": 90},
                             {"name": "reviews-v2", "port": 9080, "weight": 10},
                             {"name": "reviews", "port": 9080, "weight": 0}],
             "timeouts": {"request": "2s", "backendRequest": "500ms"},
             "retry": {"attempts": 3, "codes": [502, 503], "backoff": "25ms"}},
            {"backendRefs": [{"name": "reviews", "port": 9080}],
             "retry": {}},
            {"backendRefs": [{"name": "reviews", "port": 9080}],
             "timeouts": {"request": "1h", "backendRequest": "1m"}}
        ]
    }));
    assert!(skips.is_empty(), "{skips:?}");
    let rules = route.unwrap().rules;
    let weights: Vec<(String, u32)> = rules[0]
        .backends
        .iter()
        .map(|b| (b.service.clone(), b.weight))
        .collect();
    assert_eq!(
        weights,
        [
            (host("reviews-v1"), 90),
            (host("reviews-v2"), 10),
            (host("reviews"), 0)
        ]
    );
    assert_eq!(
        (
            rules[0].request_timeout_ms,
            rules[0].backend_request_timeout_ms
        ),
        (2000, 500)
    );
    assert_eq!(
        rules[0].retry,
        Some(rpb::RetryPolicy {
            attempts: 3,
            codes: vec![502, 503],
            grpc_codes: vec![],
            backoff_ms: 25,
        })
    );
    let defaults = rules[1].retry.clone().unwrap();
    assert_eq!(defaults.attempts, DEFAULT_RETRY_ATTEMPTS);
    assert_eq!(defaults.codes, DEFAULT_RETRY_CODES);
    assert_eq!(rules[1].request_timeout_ms, 0, "no timeout unless asked");
    assert_eq!(
        (
            rules[2].request_timeout_ms,
            rules[2].backend_request_timeout_ms
        ),
        (3_600_000, 60_000)
    );
}

#[test]
fn grpc_routes_match_methods_as_paths_and_take_retries_from_annotations() {
    let world = World::new();
    let (route, skips) = world.grpc(
        json!({
            "parentRefs": parent(),
            "rules": [
                {"matches": [
                    {"method": {"service": "demo.Reviews", "method": "Get"}},
                    {"method": {"service": "demo.Reviews"},
                     "headers": [{"name": "X-Canary", "value": "1"}]},
                    {"method": {"method": "Watch"}},
                    {"method": {"type": "RegularExpression", "service": "demo\\..*", "method": "Get.*"}},
                    {"method": {"type": "RegularExpression", "method": "List"}}
                 ],
                 "filters": [{"type": "ResponseHeaderModifier",
                              "responseHeaderModifier": {"set": [{"name": "x-grpc", "value": "1"}]}}],
                 "backendRefs": [{"name": "reviews-v2", "port": 9080}]},
                {"backendRefs": [{"name": "reviews-v1", "port": 9080}]}
            ]
        }),
        json!({
            "retry.ambit.io/grpc-codes": "unavailable, RESOURCE_EXHAUSTED",
            "retry.ambit.io/attempts": "3",
            "retry.ambit.io/backoff": "50ms",
            "timeout.ambit.io/request": "2s",
            "timeout.ambit.io/backend-request": "1s",
            "kubectl.kubernetes.io/last-applied-configuration": "{}"
        }),
    );
    assert!(skips.is_empty(), "{skips:?}");
    let route = route.unwrap();
    use rpb::path_match::Kind;
    let paths: Vec<Kind> = route.rules[0]
        .matches
        .iter()
        .map(|m| m.path.clone().unwrap().kind.unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            Kind::Exact("/demo.Reviews/Get".into()),
            Kind::Prefix("/demo.Reviews".into()),
            Kind::Regex("/[^/]+/Watch".into()),
            Kind::Regex("/(?:demo\\..*)/(?:Get.*)".into()),
            Kind::Regex("/[^/]+/(?:List)".into()),
        ]
    );
    assert_eq!(route.rules[0].matches[1].headers[0].name, "x-canary");
    assert!(route.rules[0].response_header_modifier.is_some());
    for rule in &route.rules {
        assert_eq!(
            rule.retry,
            Some(rpb::RetryPolicy {
                attempts: 3,
                codes: vec![],
                grpc_codes: vec![14, 8],
                backoff_ms: 50,
            })
        );
        assert_eq!(
            (rule.request_timeout_ms, rule.backend_request_timeout_ms),
            (2000, 1000)
        );
    }
    // Without annotations: no retry, no timeout; with only the codes, the default attempts.
    let (route, _) = world.grpc(
        json!({"parentRefs": parent(), "rules": [{"backendRefs": [{"name": "reviews", "port": 9080}]}]}),
        json!({}),
    );
    assert_eq!(route.unwrap().rules[0].retry, None);
    let (route, _) = world.grpc(
        json!({"parentRefs": parent(), "rules": [{"backendRefs": [{"name": "reviews", "port": 9080}]}]}),
        json!({"retry.ambit.io/grpc-codes": "unavailable"}),
    );
    assert_eq!(
        route.unwrap().rules[0].retry.as_ref().unwrap().attempts,
        DEFAULT_RETRY_ATTEMPTS
    );
}

#[test]
fn a_grpc_route_named_as_an_http_route_is_refused() {
    let world = World::new();
    let r: GrpcRoute = serde_json::from_value(object(
        json!({"parentRefs": parent(), "rules": [{"backendRefs": [{"name": "reviews", "port": 9080}]}]}),
        json!({}),
    ))
    .unwrap();
    let taken = [("demo".to_string(), "r".to_string())]
        .into_iter()
        .collect();
    let mut skips = Vec::new();
    assert!(grpc_route(&Arc::new(r), &world.context(), &taken, &mut skips).is_none());
    assert!(skips[0].reason.contains("rename one"), "{skips:?}");
}

#[test]
fn what_cannot_be_honoured_refuses_the_route_naming_the_field() {
    let world = World::new();
    let check = |(route, skips): Converted, field: &str| {
        assert!(route.is_none(), "{field}");
        assert!(
            skips.iter().any(|s| s.reason.contains(field)),
            "{field}: {skips:?}"
        );
        assert!(
            skips
                .iter()
                .all(|s| s.subject == ResourceRef::new(Kind::Route, "demo/r"))
        );
    };
    let http = |rule: Value| world.http(json!({"parentRefs": parent(), "rules": [rule]}));
    let backend = json!([{"name": "reviews", "port": 9080}]);
    let filter = |f: Value| http(json!({"filters": [f], "backendRefs": backend}));
    let cases: Vec<(Converted, &str)> = vec![
        (
            world.http(json!({"parentRefs": parent()})),
            "spec.rules is empty",
        ),
        (
            http(json!({"backendRefs": [{"name": "nope", "port": 80}]})),
            "spec.rules[0].backendRefs[0] names service demo/nope",
        ),
        (
            http(json!({"backendRefs": [{"name": "reviews"}]})),
            "spec.rules[0].backendRefs[0].port",
        ),
        (
            http(json!({"backendRefs": [{"name": "reviews", "port": 9080, "weight": 1000001}]})),
            "weight 1000001 is out of range",
        ),
        (
            http(json!({"backendRefs": [{"group": "x.io", "kind": "Bucket", "name": "b"}]})),
            "Services only",
        ),
        (
            http(json!({"backendRefs": [{"name": "reviews", "port": 9080,
                "filters": [{"type": "RequestHeaderModifier",
                             "requestHeaderModifier": {"set": [{"name": "a", "value": "b"}]}}]}]})),
            "backendRefs[0].filters are not supported",
        ),
        (
            http(json!({"backendRefs": [{"name": "far", "namespace": "other", "port": 80}]})),
            "ReferenceGrant",
        ),
        (
            http(json!({"timeouts": {"request": "2 seconds"}})),
            "spec.rules[0].timeouts.request \"2 seconds\" is not a Gateway API duration",
        ),
        (
            http(json!({"timeouts": {"request": "1s", "backendRequest": "2s"}})),
            "timeouts.backendRequest (2000ms) is longer than the request timeout",
        ),
        (
            http(json!({"retry": {"codes": [200]}})),
            "retry.codes: 200 is not an HTTP error status",
        ),
        (
            http(json!({"retry": {"backoff": "soon"}})),
            "spec.rules[0].retry.backoff",
        ),
        (
            http(json!({"matches": [{"path": {"type": "RegularExpression", "value": "(unclosed"}}]})),
            "spec.rules[0].matches[0].path: regular expression",
        ),
        (
            http(json!({"matches": [{"path": {"type": "PathPrefix", "value": "api"}}]})),
            "is not an absolute path",
        ),
        (
            http(json!({"matches": [{"headers": [{"type": "RegularExpression", "name": "a", "value": "["}]}]})),
            "spec.rules[0].matches[0].headers[0]: regular expression",
        ),
        (
            http(json!({"sessionPersistence": {"sessionName": "s"}})),
            "spec.rules[0].sessionPersistence is not supported",
        ),
        (
            filter(json!({"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "reviews", "port": 9080}}})),
            "spec.rules[0].filters[0]: RequestMirror filters are not supported",
        ),
        (
            filter(json!({"type": "ExtensionRef", "extensionRef": {"group": "x.io", "kind": "K", "name": "n"}})),
            "ExtensionRef filters are not supported",
        ),
        (
            filter(json!({"type": "CORS", "cors": {"allowOrigins": ["*"]}})),
            "CORS filters are not supported",
        ),
        (
            filter(json!({"type": "RequestRedirect", "requestRedirect": {"statusCode": 304}})),
            "statusCode 304",
        ),
        (
            filter(json!({"type": "RequestHeaderModifier", "requestHeaderModifier": {
                "set": [{"name": "a", "value": "1"}, {"name": "A", "value": "2"}]}})),
            "header a is given twice",
        ),
        (
            http(json!({"filters": [
                {"type": "URLRewrite", "urlRewrite": {"hostname": "a.example"}},
                {"type": "RequestRedirect", "requestRedirect": {"hostname": "b.example"}}]})),
            "cannot both rewrite",
        ),
        (
            http(json!({"matches": [{"path": {"type": "Exact", "value": "/a"}}],
                        "filters": [{"type": "URLRewrite", "urlRewrite": {
                            "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/b"}}}],
                        "backendRefs": backend})),
            "replacePrefixMatch needs every match",
        ),
        (
            filter(json!({"type": "URLRewrite", "urlRewrite": {"hostname": "Bad_Host"}})),
            "urlRewrite.hostname \"Bad_Host\" is not a host name",
        ),
        (
            world.http(json!({"parentRefs": [{"group": "", "kind": "Service", "name": "reviews",
                                              "sectionName": "http"}],
                              "rules": [{"backendRefs": backend}]})),
            "sectionName is not supported",
        ),
        (
            world.http(json!({"parentRefs": parent(), "hostnames": ["*.*.example.com"],
                              "rules": [{"backendRefs": backend}]})),
            "spec.hostnames[0]",
        ),
        (
            world.http_annotated(
                json!({"parentRefs": parent(), "rules": [{"backendRefs": backend}]}),
                json!({"retry.ambit.io/attempts": "3"}),
            ),
            "annotation retry.ambit.io/attempts is for GRPCRoutes",
        ),
        (
            world.grpc(
                json!({"parentRefs": parent(), "rules": [{"backendRefs": backend}]}),
                json!({"retry.ambit.io/grpc-code": "unavailable"}),
            ),
            "annotation retry.ambit.io/grpc-code is not one Ambit reads",
        ),
        (
            world.grpc(
                json!({"parentRefs": parent(), "rules": [{"backendRefs": backend}]}),
                json!({"retry.ambit.io/grpc-codes": "unavailable,flaky"}),
            ),
            "\"flaky\" is not a gRPC status",
        ),
        (
            world.grpc(
                json!({"parentRefs": parent(), "rules": [{"backendRefs": backend}]}),
                json!({"timeout.ambit.io/request": "1s", "timeout.ambit.io/backend-request": "3s"}),
            ),
            "timeout.ambit.io/backend-request (3000ms) is longer",
        ),
        (
            world.grpc(
                json!({"parentRefs": parent(), "rules": [{"matches": [{"method": {"service": "a b"}}]}]}),
                json!({}),
            ),
            "spec.rules[0].matches[0].method.service \"a b\" is not a gRPC service name",
        ),
        (
            world.grpc(
                json!({"parentRefs": parent(), "rules": [{"matches": [{"method": {}}]}]}),
                json!({}),
            ),
            "gives neither service nor method",
        ),
        (
            world.grpc(
                json!({"parentRefs": parent(), "rules": [{"filters": [{"type": "RequestMirror",
                    "requestMirror": {"backendRef": {"name": "reviews", "port": 9080}}}]}]}),
                json!({}),
            ),
            "RequestMirror filters are not supported",
        ),
    ];
    for (result, field) in cases {
        check(result, field);
    }
    // The only mesh parent is a service that does not exist: a note on it, then the refusal.
    let (route, skips) = world.http(json!({
        "parentRefs": [{"group": "", "kind": "Service", "name": "gone"}],
        "rules": [{"backendRefs": backend}]
    }));
    assert!(route.is_none());
    assert!(
        skips.iter().any(|s| s.reason.contains("service demo/gone")),
        "{skips:?}"
    );
}

#[test]
fn a_cross_namespace_parent_is_ignored_with_a_note() {
    let (route, skips) = World::new().http(json!({
        "parentRefs": [
            {"group": "", "kind": "Service", "name": "far", "namespace": "other"},
            {"group": "", "kind": "Service", "name": "reviews"}
        ],
        "rules": [{"backendRefs": [{"name": "reviews-v1", "port": 80}]}]
    }));
    let route = route.unwrap();
    assert_eq!(route.parents.len(), 1);
    assert_eq!(route.parents[0].service, host("reviews"));
    assert_eq!(skips.len(), 1, "{skips:?}");
    assert!(skips[0].reason.contains("consumer routes"));
}

#[test]
fn hostnames_are_kept_lowercase_for_host_matching() {
    let (route, skips) = World::new().http(json!({
        "parentRefs": parent(),
        "hostnames": ["reviews.example.com", "*.example.org"],
        "rules": [{"backendRefs": [{"name": "reviews", "port": 9080}]}]
    }));
    assert!(skips.is_empty(), "{skips:?}");
    assert_eq!(
        route.unwrap().hostnames,
        ["reviews.example.com", "*.example.org"]
    );
}

#[test]
fn a_route_on_a_service_without_waypoint_is_kept_with_a_note() {
    let (route, skips) = World::new().http(json!({
        "parentRefs": [{"group": "", "kind": "Service", "name": "direct"}],
        "rules": [{"backendRefs": [{"name": "direct", "port": 80}]}]
    }));
    assert!(route.is_some());
    assert!(
        skips.iter().any(|s| s.reason.contains("uses no waypoint")),
        "{skips:?}"
    );
}
