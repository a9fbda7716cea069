use ambit_proto::api::route::{
    self as api, BackendRef, HeaderMatch as ApiHeader, ParentRef, PathMatch as ApiPath,
    QueryParamMatch as ApiQuery, Route, RouteMatch, RouteRule, ValueMatch as ApiValue,
};

use super::*;

const REVIEWS: &str = "reviews.demo.svc.cluster.local";

fn path(kind: api::path_match::Kind) -> Option<ApiPath> {
    Some(ApiPath { kind: Some(kind) })
}

fn prefix(p: &str) -> Option<ApiPath> {
    path(api::path_match::Kind::Prefix(p.into()))
}

fn exact(v: &str) -> Option<ApiValue> {
    Some(ApiValue {
        kind: Some(api::value_match::Kind::Exact(v.into())),
    })
}

fn regex(v: &str) -> Option<ApiValue> {
    Some(ApiValue {
        kind: Some(api::value_match::Kind::Regex(v.into())),
    })
}

fn backend(service: &str, weight: u32) -> BackendRef {
    BackendRef {
        service: format!("{service}.demo.svc.cluster.local"),
        port: 9080,
        weight,
    }
}

/// A rule sending what it matches to `to` (weight 1).
fn rule(matches: Vec<RouteMatch>, to: &str) -> RouteRule {
    RouteRule {
        matches,
        backends: vec![backend(to, 1)],
        ..Default::default()
    }
}

fn route(name: &str, rules: Vec<RouteRule>) -> Route {
    Route {
        name: name.into(),
        namespace: "demo".into(),
        parents: vec![ParentRef {
            service: REVIEWS.into(),
            port: 0,
        }],
        rules,
        ..Default::default()
    }
}

fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> request::Parts {
    let mut b = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

/// Which backend service a request to `port` is routed to ("404" when no rule matches).
fn routed_on(routes: &Routes, port: u16, req: request::Parts) -> String {
    match routes.lookup(REVIEWS, port, &req) {
        Lookup::Matched(m) => m.rule.backends[0]
            .service
            .trim_end_matches(".demo.svc.cluster.local")
            .to_string(),
        Lookup::NoMatch => "404".into(),
        Lookup::NoRoutes => "no routes".into(),
    }
}

fn routed(routes: &Routes, req: request::Parts) -> String {
    routed_on(routes, 9080, req)
}

fn m(p: Option<ApiPath>, method: &str, headers: Vec<ApiHeader>) -> RouteMatch {
    RouteMatch {
        path: p,
        method: method.into(),
        headers,
        query_params: Vec::new(),
    }
}

#[test]
fn precedence_and_matching() {
    use api::path_match::Kind;
    let canary = ApiHeader {
        name: "x-canary".into(),
        value: exact("1"),
    };
    let whale = |name: &str| ApiQuery {
        name: name.into(),
        value: exact("whale"),
    };
    let routes = Routes::from_api(&[
        // Declared least specific first: precedence, not order, decides.
        route("a-catch-all", vec![rule(vec![], "catchall")]),
        route(
            "b-specific",
            vec![
                rule(vec![m(prefix("/api"), "", vec![])], "api"),
                rule(vec![m(prefix("/api/v2/"), "", vec![])], "api-v2"),
                rule(
                    vec![m(path(Kind::Exact("/api/health".into())), "", vec![])],
                    "health",
                ),
                rule(
                    vec![m(path(Kind::Regex("/api/users/[0-9]+".into())), "", vec![])],
                    "user",
                ),
                rule(vec![m(prefix("/api"), "POST", vec![])], "api-post"),
                rule(vec![m(None, "", vec![canary])], "canary"),
                rule(
                    vec![RouteMatch {
                        query_params: vec![whale("animal")],
                        ..m(prefix("/q"), "", vec![])
                    }],
                    "whale",
                ),
                rule(
                    vec![RouteMatch {
                        query_params: vec![ApiQuery {
                            name: "n".into(),
                            value: regex("[0-9]+"),
                        }],
                        ..m(prefix("/q"), "", vec![])
                    }],
                    "number",
                ),
            ],
        ),
    ])
    .unwrap();
    let table = [
        ("GET", "/", vec![], "catchall"),
        ("GET", "/api", vec![], "api"),
        ("GET", "/api/", vec![], "api"),
        ("GET", "/api/list?x=1", vec![], "api"),
        // Prefixes match whole segments.
        ("GET", "/apis", vec![], "catchall"),
        ("GET", "/api/v2/x", vec![], "api-v2"),
        ("GET", "/api/v2", vec![], "api-v2"),
        ("GET", "/api/health", vec![], "health"),
        ("GET", "/api/health/x", vec![], "api"),
        ("GET", "/api/users/42", vec![], "user"),
        ("GET", "/api/users/42/x", vec![], "api"),
        ("POST", "/api/x", vec![], "api-post"),
        // The header match has no path match (prefix "/"), so path prefixes outrank it;
        // elsewhere it wins over the catch-all.
        ("GET", "/x", vec![("x-canary", "1")], "canary"),
        ("GET", "/x", vec![("x-canary", "2")], "catchall"),
        ("GET", "/api/x", vec![("x-canary", "1")], "api"),
        // Query parameters: exact, regex, percent-decoded, first occurrence.
        ("GET", "/q?animal=whale", vec![], "whale"),
        ("GET", "/q?color=blue&animal=whale", vec![], "whale"),
        ("GET", "/q?animal=%77hale", vec![], "whale"),
        ("GET", "/q?animal=whaledolphin", vec![], "catchall"),
        ("GET", "/q?animal=dolphin&animal=whale", vec![], "catchall"),
        ("GET", "/q?n=42", vec![], "number"),
        ("GET", "/q?n=4x", vec![], "catchall"),
        ("GET", "/q", vec![], "catchall"),
    ];
    for (method, uri, headers, expected) in table {
        assert_eq!(
            routed(&routes, request(method, uri, &headers)),
            expected,
            "{method} {uri} {headers:?}"
        );
    }
}

#[test]
fn more_query_params_and_headers_win_ties() {
    let q = |name: &str| ApiQuery {
        name: name.into(),
        value: exact("1"),
    };
    let hd = |name: &str| ApiHeader {
        name: name.into(),
        value: exact("1"),
    };
    let routes = Routes::from_api(&[route(
        "r",
        vec![
            rule(
                vec![RouteMatch {
                    query_params: vec![q("a")],
                    ..Default::default()
                }],
                "one-query",
            ),
            rule(
                vec![RouteMatch {
                    query_params: vec![q("a"), q("b")],
                    ..Default::default()
                }],
                "two-queries",
            ),
            rule(vec![m(None, "", vec![hd("x")])], "header"),
        ],
    )])
    .unwrap();
    let table = [
        ("/?a=1", vec![], "one-query"),
        ("/?a=1&b=1", vec![], "two-queries"),
        // Headers outrank query parameters.
        ("/?a=1&b=1", vec![("x", "1")], "header"),
    ];
    for (uri, headers, expected) in table {
        assert_eq!(
            routed(&routes, request("GET", uri, &headers)),
            expected,
            "{uri}"
        );
    }
}

#[test]
fn hostnames_narrow_a_route_and_the_most_specific_wins() {
    let with_hosts = |name: &str, hosts: &[&str], to: &str| Route {
        hostnames: hosts.iter().map(|h| h.to_string()).collect(),
        ..route(name, vec![rule(vec![], to)])
    };
    let routes = Routes::from_api(&[
        with_hosts("a", &[], "any"),
        with_hosts("b", &["*.example.com"], "wildcard"),
        with_hosts("c", &["api.example.com"], "exact"),
    ])
    .unwrap();
    let table = [
        (vec![("host", "api.example.com")], "exact"),
        (vec![("host", "API.example.com:9080")], "exact"),
        (vec![("host", "www.example.com")], "wildcard"),
        (vec![("host", "a.b.example.com")], "wildcard"),
        (vec![("host", "example.com")], "any"),
        (vec![("host", "reviews")], "any"),
        (vec![], "any"),
    ];
    for (headers, expected) in table {
        assert_eq!(
            routed(&routes, request("GET", "/", &headers)),
            expected,
            "{headers:?}"
        );
    }
    // HTTP/2: the host is the :authority.
    assert_eq!(
        routed(&routes, request("GET", "http://api.example.com:9080/", &[])),
        "exact"
    );
}

#[test]
fn parent_ports_limit_a_route_to_one_service_port() {
    let on_port = |name: &str, port: u32, to: &str| Route {
        parents: vec![ParentRef {
            service: REVIEWS.into(),
            port,
        }],
        ..route(
            name,
            vec![rule(vec![m(prefix(&format!("/{to}")), "", vec![])], to)],
        )
    };
    let routes = Routes::from_api(&[on_port("a", 9080, "web"), on_port("b", 0, "all")]).unwrap();
    assert_eq!(routed_on(&routes, 9080, request("GET", "/web", &[])), "web");
    assert_eq!(routed_on(&routes, 9080, request("GET", "/all", &[])), "all");
    assert_eq!(routed_on(&routes, 8080, request("GET", "/web", &[])), "404");
    assert_eq!(routed_on(&routes, 8080, request("GET", "/all", &[])), "all");
    let only_port = Routes::from_api(&[on_port("a", 9080, "web")]).unwrap();
    assert_eq!(
        routed_on(&only_port, 8080, request("GET", "/web", &[])),
        "no routes",
        "another port of the service has no route: the service itself"
    );
    assert!(only_port.has_routes(REVIEWS));
    let req = request("GET", "/", &[]);
    assert!(matches!(
        routes.lookup("ratings.demo.svc.cluster.local", 9080, &req),
        Lookup::NoRoutes
    ));
}

#[test]
fn services_without_routes_and_requests_no_rule_matches() {
    let routes = Routes::from_api(&[route(
        "only-api",
        vec![rule(
            vec![RouteMatch {
                path: prefix("/api"),
                ..Default::default()
            }],
            "api",
        )],
    )])
    .unwrap();
    assert_eq!(routed(&routes, request("GET", "/other", &[])), "404");
}

#[test]
fn weighted_backends() {
    let routes = Routes::from_api(&[route(
        "split",
        vec![RouteRule {
            backends: vec![backend("v1", 90), backend("v2", 10), backend("off", 0)],
            ..Default::default()
        }],
    )])
    .unwrap();
    let Lookup::Matched(m) = routes.lookup(REVIEWS, 9080, &request("GET", "/", &[])) else {
        panic!("no match");
    };
    let pick = |roll| m.rule.pick_backend(roll).map(|b| b.service.to_string());
    let v1 = Some(backend("v1", 0).service);
    let v2 = Some(backend("v2", 0).service);
    for (roll, expected) in [
        (0, &v1),
        (89, &v1),
        (90, &v2),
        (99, &v2),
        (100, &v1),
        (190, &v2),
    ] {
        assert_eq!(&pick(roll), expected, "{roll}");
    }
    // The split holds over every window of requests, not only on average.
    let mut v2_total = 0;
    for window in 0..20 {
        let v2_here = (0..100)
            .filter(|_| m.rule.next_backend().map(|b| b.service.to_string()) == v2)
            .count();
        assert!(
            (8..=12).contains(&v2_here),
            "window {window}: {v2_here}% to v2"
        );
        v2_total += v2_here;
    }
    assert!((195..=205).contains(&v2_total), "{v2_total} of 2000 to v2");
    for backends in [vec![backend("v1", 0)], vec![]] {
        let zero = Routes::from_api(&[route(
            "zero",
            vec![RouteRule {
                backends,
                ..Default::default()
            }],
        )])
        .unwrap();
        let Lookup::Matched(m) = zero.lookup(REVIEWS, 9080, &request("GET", "/", &[])) else {
            panic!("no match");
        };
        assert_eq!(m.rule.pick_backend(7), None, "500: nothing to send to");
    }
}

#[test]
fn rules_carry_filters_timeouts_retries_and_the_matched_prefix() {
    let routes = Routes::from_api(&[route(
        "r",
        vec![
            RouteRule {
                matches: vec![m(prefix("/old"), "", vec![])],
                url_rewrite: Some(api::UrlRewrite {
                    hostname: String::new(),
                    path: Some(api::PathModifier {
                        kind: Some(api::path_modifier::Kind::ReplacePrefixMatch("/new".into())),
                    }),
                }),
                request_header_modifier: Some(api::HeaderModifier {
                    set: vec![api::Header {
                        name: "x-route".into(),
                        value: "r".into(),
                    }],
                    ..Default::default()
                }),
                backends: vec![backend("v1", 1)],
                request_timeout_ms: 2000,
                backend_request_timeout_ms: 500,
                retry: Some(api::RetryPolicy {
                    attempts: 3,
                    codes: vec![503],
                    grpc_codes: vec![14],
                    backoff_ms: 25,
                }),
                ..Default::default()
            },
            RouteRule {
                matches: vec![m(prefix("/moved"), "", vec![])],
                request_redirect: Some(api::RequestRedirect {
                    hostname: "example.org".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            RouteRule {
                matches: vec![m(prefix("/"), "", vec![])],
                retry: Some(api::RetryPolicy {
                    attempts: 0,
                    codes: vec![503],
                    ..Default::default()
                }),
                ..rule(vec![], "v1")
            },
        ],
    )])
    .unwrap();
    let mut req = request("GET", "/old/x?q=1", &[]);
    let Lookup::Matched(m) = routes.lookup(REVIEWS, 9080, &req) else {
        panic!("no match");
    };
    assert_eq!(m.prefix, Some("/old"));
    assert_eq!(m.rule.route.as_ref(), "demo/r");
    assert_eq!(
        m.rule.timeouts,
        Timeouts {
            request: Some(Duration::from_secs(2)),
            backend_request: Some(Duration::from_millis(500)),
        }
    );
    let retry = m.rule.retry.as_ref().unwrap();
    assert_eq!(retry.attempts, 3);
    assert!(retry.retries_status(StatusCode::SERVICE_UNAVAILABLE));
    assert!(!retry.retries_status(StatusCode::BAD_GATEWAY));
    assert!(retry.retries_grpc_status(14) && !retry.retries_grpc_status(2));
    assert_eq!(retry.backoff, Duration::from_millis(25));
    crate::filters::apply_request(&m.rule.filters, m.prefix, &mut req);
    assert_eq!(req.uri, "/new/x?q=1");
    assert_eq!(req.headers["x-route"], "r");

    let req = request("GET", "/moved/a", &[("host", "reviews:9080")]);
    let Lookup::Matched(m) = routes.lookup(REVIEWS, 9080, &req) else {
        panic!("no match");
    };
    let redirect = m.rule.filters.redirect.as_ref().unwrap();
    let resp = crate::filters::redirect(redirect, m.prefix, 9080, &req);
    assert_eq!(resp.status(), StatusCode::FOUND);
    assert_eq!(
        resp.headers()["location"],
        "http://example.org:9080/moved/a"
    );
    assert_eq!(
        m.rule.pick_backend(0),
        None,
        "a redirect goes to no backend"
    );

    let Lookup::Matched(m) = routes.lookup(REVIEWS, 9080, &request("GET", "/else", &[])) else {
        panic!("no match");
    };
    assert_eq!(m.rule.retry, None, "0 attempts: no retry");
    assert_eq!(m.rule.timeouts, Timeouts::default());
}

#[test]
fn invalid_routes_are_refused_naming_the_field() {
    use api::path_match::Kind;
    let bad_match = |m: RouteMatch| Routes::from_api(&[route("bad", vec![rule(vec![m], "x")])]);
    let bad_rule = |r: RouteRule| Routes::from_api(&[route("bad", vec![r])]);
    let cases = [
        (
            bad_match(RouteMatch {
                path: path(Kind::Regex("(unclosed".into())),
                ..Default::default()
            }),
            "rules[0].matches[0]: regular expression",
        ),
        (
            bad_match(RouteMatch {
                path: prefix("api"),
                ..Default::default()
            }),
            "does not start with '/'",
        ),
        (
            bad_match(RouteMatch {
                method: "GE T".into(),
                ..Default::default()
            }),
            "is not an HTTP method",
        ),
        (
            bad_match(RouteMatch {
                query_params: vec![ApiQuery {
                    name: "a".into(),
                    value: None,
                }],
                ..Default::default()
            }),
            "query parameter \"a\" has no value",
        ),
        (
            bad_rule(RouteRule {
                request_timeout_ms: 100,
                backend_request_timeout_ms: 200,
                ..Default::default()
            }),
            "rules[0]: the backend request timeout",
        ),
        (
            bad_rule(RouteRule {
                retry: Some(api::RetryPolicy {
                    attempts: 1,
                    codes: vec![7000],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            "retry code 7000",
        ),
        (
            bad_rule(RouteRule {
                matches: vec![m(path(Kind::Exact("/a".into())), "", vec![])],
                url_rewrite: Some(api::UrlRewrite {
                    hostname: String::new(),
                    path: Some(api::PathModifier {
                        kind: Some(api::path_modifier::Kind::ReplacePrefixMatch("/b".into())),
                    }),
                }),
                ..Default::default()
            }),
            "replacePrefixMatch needs every match",
        ),
        (
            Routes::from_api(&[Route {
                parents: vec![],
                ..route("bad", vec![])
            }]),
            "no parent service",
        ),
        (
            Routes::from_api(&[Route {
                hostnames: vec!["a.*.com".into()],
                ..route("bad", vec![])
            }]),
            "is not a host name",
        ),
    ];
    for (result, expected) in cases {
        let err = result.unwrap_err();
        assert_eq!(err.route, "demo/bad");
        assert!(err.to_string().contains(expected), "{err}");
    }
}
