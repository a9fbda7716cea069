use ambit_proto::api::route::string_match::Kind;
use ambit_proto::api::route::{
    BackendRef, HeaderMatch as ApiHeader, Route, RouteMatch, RouteRule, StringMatch,
};

use super::*;

const REVIEWS: &str = "reviews.demo.svc.cluster.local";

fn path(kind: Kind) -> Option<StringMatch> {
    Some(StringMatch { kind: Some(kind) })
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
        hostnames: vec![REVIEWS.into()],
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

/// Which backend service each request is routed to ("404" when no rule matches).
fn routed(routes: &Routes, req: request::Parts) -> String {
    match routes.lookup(REVIEWS, &req) {
        Lookup::Matched(rule) => rule.backends[0]
            .service
            .trim_end_matches(".demo.svc.cluster.local")
            .to_string(),
        Lookup::NoMatch => "404".into(),
        Lookup::NoRoutes => "no routes".into(),
    }
}

#[test]
fn precedence_and_matching() {
    let m = |p: Option<StringMatch>, method: &str, headers: Vec<ApiHeader>| RouteMatch {
        path: p,
        method: method.into(),
        headers,
    };
    let canary = ApiHeader {
        name: "x-canary".into(),
        value: Some(StringMatch {
            kind: Some(Kind::Exact("1".into())),
        }),
    };
    let routes = Routes::from_api(&[
        // Declared least specific first: precedence, not order, decides.
        route("a-catch-all", vec![rule(vec![], "catchall")]),
        route(
            "b-specific",
            vec![
                rule(
                    vec![m(path(Kind::Prefix("/api".into())), "", vec![])],
                    "api",
                ),
                rule(
                    vec![m(path(Kind::Prefix("/api/v2/".into())), "", vec![])],
                    "api-v2",
                ),
                rule(
                    vec![m(path(Kind::Exact("/api/health".into())), "", vec![])],
                    "health",
                ),
                rule(
                    vec![m(path(Kind::Regex("/api/users/[0-9]+".into())), "", vec![])],
                    "user",
                ),
                rule(
                    vec![m(path(Kind::Prefix("/api".into())), "POST", vec![])],
                    "api-post",
                ),
                rule(vec![m(None, "", vec![canary])], "canary"),
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
fn services_without_routes_and_requests_no_rule_matches() {
    let routes = Routes::from_api(&[route(
        "only-api",
        vec![rule(
            vec![RouteMatch {
                path: path(Kind::Prefix("/api".into())),
                ..Default::default()
            }],
            "api",
        )],
    )])
    .unwrap();
    assert_eq!(routed(&routes, request("GET", "/other", &[])), "404");
    let req = request("GET", "/", &[]);
    assert!(matches!(
        routes.lookup("ratings.demo.svc.cluster.local", &req),
        Lookup::NoRoutes
    ));
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
    let Lookup::Matched(rule) = routes.lookup(REVIEWS, &request("GET", "/", &[])) else {
        panic!("no match");
    };
    let pick = |roll| rule.pick_backend(roll).map(|b| b.service.to_string());
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
    let zero = Routes::from_api(&[route(
        "zero",
        vec![RouteRule {
            backends: vec![backend("v1", 0)],
            ..Default::default()
        }],
    )])
    .unwrap();
    let Lookup::Matched(rule) = zero.lookup(REVIEWS, &request("GET", "/", &[])) else {
        panic!("no match");
    };
    assert_eq!(rule.pick_backend(7), None);
}

#[test]
fn invalid_routes_are_refused_naming_the_field() {
    let bad = |m: RouteMatch| Routes::from_api(&[route("bad", vec![rule(vec![m], "x")])]);
    let cases = [
        (
            RouteMatch {
                path: path(Kind::Regex("(unclosed".into())),
                ..Default::default()
            },
            "rules[0].matches[0]: regular expression",
        ),
        (
            RouteMatch {
                path: path(Kind::Prefix("api".into())),
                ..Default::default()
            },
            "does not start with '/'",
        ),
        (
            RouteMatch {
                method: "GE T".into(),
                ..Default::default()
            },
            "is not an HTTP method",
        ),
    ];
    for (m, expected) in cases {
        let err = bad(m).unwrap_err();
        assert_eq!(err.route, "demo/bad");
        assert!(err.to_string().contains(expected), "{err}");
    }
}
