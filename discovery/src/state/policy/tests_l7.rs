//! Policies judged with the request (a waypoint's view), AUDIT, and `when` conditions.

use std::sync::Arc;

use ambit_proto::api::security as api;
use http::{HeaderMap, HeaderValue};

use super::*;

fn policy(name: &str, action: api::Action, rules: Vec<api::Rule>) -> Arc<Policy> {
    Arc::new(Policy::from_api(&wire(name, action, rules)).unwrap())
}

fn wire(name: &str, action: api::Action, rules: Vec<api::Rule>) -> api::AuthorizationPolicy {
    api::AuthorizationPolicy {
        name: name.into(),
        namespace: "demo".into(),
        selector: None,
        action: action as i32,
        rules,
        dry_run: false,
    }
}

fn to(d: api::Destination) -> api::Rule {
    api::Rule {
        to: vec![d],
        ..Default::default()
    }
}

fn paths(p: &[&str]) -> api::Rule {
    to(api::Destination {
        paths: p.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "demo", sa).unwrap()
}

fn src(identity: &SpiffeId) -> Source<'_> {
    Source {
        identity: Some(identity),
        ip: "10.244.1.7".parse().unwrap(),
    }
}

/// A request to build: method, path, authority, headers.
struct Req {
    method: &'static str,
    path: &'static str,
    authority: Option<&'static str>,
    headers: HeaderMap,
}

fn get(path: &'static str) -> Req {
    Req {
        method: "GET",
        path,
        authority: None,
        headers: HeaderMap::new(),
    }
}

impl Req {
    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.append(name, HeaderValue::from_static(value));
        self
    }

    fn request(&self) -> Request<'_> {
        Request {
            method: self.method,
            path: self.path,
            authority: self.authority,
            headers: &self.headers,
        }
    }
}

fn judge(policies: &[Arc<Policy>], who: &SpiffeId, req: &Req) -> Verdict {
    decide_request(policies.iter(), &src(who), 8080, &req.request())
}

fn denied(policies: &[Arc<Policy>], who: &SpiffeId, req: &Req) -> bool {
    !judge(policies, who, req).is_allowed()
}

#[test]
fn path_patterns_exact_prefix_suffix_any_and_not() {
    let c = id("client");
    let deny = [policy(
        "deny",
        api::Action::Deny,
        vec![paths(&["/admin", "/internal/*", "*.php"])],
    )];
    for (path, want) in [
        ("/admin", true),
        ("/admin/", false),
        ("/administrator", false),
        ("/internal/x", true),
        ("/internal", false),
        ("/a/b.php", true),
        ("/ADMIN", false), // paths are case-sensitive
        ("/", false),
    ] {
        assert_eq!(denied(&deny, &c, &get(path)), want, "{path}");
    }
    let any = [policy("any", api::Action::Deny, vec![paths(&["*"])])];
    assert!(denied(&any, &c, &get("/whatever")));
    let not = [policy(
        "not",
        api::Action::Deny,
        vec![to(api::Destination {
            not_paths: vec!["/public/*".into()],
            ..Default::default()
        })],
    )];
    assert!(!denied(&not, &c, &get("/public/x")));
    assert!(denied(&not, &c, &get("/private")));
}

#[test]
fn methods_and_not_methods() {
    let c = id("client");
    let allow = [policy(
        "allow",
        api::Action::Allow,
        vec![to(api::Destination {
            methods: vec!["GET".into(), "HEAD".into()],
            ..Default::default()
        })],
    )];
    assert!(!denied(&allow, &c, &get("/x")));
    let post = Req {
        method: "POST",
        ..get("/x")
    };
    assert!(denied(&allow, &c, &post));
    let deny = [policy(
        "deny",
        api::Action::Deny,
        vec![to(api::Destination {
            not_methods: vec!["GET".into()],
            ..Default::default()
        })],
    )];
    assert!(denied(&deny, &c, &post));
    assert!(!denied(&deny, &c, &get("/x")));
}

#[test]
fn hosts_are_case_insensitive_and_without_port() {
    let c = id("client");
    let deny = [policy(
        "deny-reviews",
        api::Action::Deny,
        vec![to(api::Destination {
            hosts: vec!["reviews".into(), "*.example.COM".into()],
            ..Default::default()
        })],
    )];
    let with_host = |h: &'static str| get("/").header("host", h);
    for host in [
        "reviews",
        "REVIEWS",
        "reviews:9080",
        "ReViEwS:80",
        "reviews.",
        "api.Example.com",
        "api.example.com:443",
    ] {
        assert!(denied(&deny, &c, &with_host(host)), "{host}");
    }
    for host in ["ratings", "reviews.demo", "reviewsx:9080", "example.com"] {
        assert!(!denied(&deny, &c, &with_host(host)), "{host}");
    }
    // The URI's authority (HTTP/2) counts as much as a Host header.
    let h2 = Req {
        authority: Some("Reviews:9080"),
        ..get("/")
    };
    assert!(denied(&deny, &c, &h2));
}

#[test]
fn several_hosts_or_header_values_never_turn_a_deny_into_an_allow() {
    let c = id("client");
    // The authority says one host and the Host header another: a DENY on either holds.
    let split = Req {
        authority: Some("ratings"),
        ..get("/").header("host", "reviews")
    };
    let deny = [policy(
        "deny",
        api::Action::Deny,
        vec![to(api::Destination {
            hosts: vec!["reviews".into()],
            ..Default::default()
        })],
    )];
    assert!(denied(&deny, &c, &split));
    // An ALLOW on one of them does not allow the other.
    let allow = [policy(
        "allow",
        api::Action::Allow,
        vec![to(api::Destination {
            hosts: vec!["ratings".into()],
            ..Default::default()
        })],
    )];
    assert!(denied(&allow, &c, &split));
    assert!(!denied(
        &allow,
        &c,
        &get("/").header("host", "ratings:9080")
    ));

    // The same for a repeated header.
    let when = |action, values: &[&str], not_values: &[&str]| {
        policy(
            "p",
            action,
            vec![api::Rule {
                when: vec![api::Condition {
                    key: "request.headers[X-User]".into(),
                    values: values.iter().map(|s| s.to_string()).collect(),
                    not_values: not_values.iter().map(|s| s.to_string()).collect(),
                }],
                ..Default::default()
            }],
        )
    };
    let twice = get("/")
        .header("x-user", "mallory")
        .header("x-user", "alice");
    assert!(denied(
        &[when(api::Action::Deny, &["mallory"], &[])],
        &c,
        &twice
    ));
    assert!(denied(
        &[when(api::Action::Deny, &[], &["alice"])],
        &c,
        &twice
    ));
    assert!(denied(
        &[when(api::Action::Allow, &["alice"], &[])],
        &c,
        &twice
    ));
    let once = get("/").header("x-user", "alice");
    assert!(!denied(
        &[when(api::Action::Allow, &["alice"], &[])],
        &c,
        &once
    ));
    assert!(!denied(
        &[when(api::Action::Deny, &[], &["alice"])],
        &c,
        &once
    ));
    // Absent: no value matches `values`; it is none of `not_values`.
    assert!(denied(
        &[when(api::Action::Allow, &["alice"], &[])],
        &c,
        &get("/")
    ));
    assert!(denied(
        &[when(api::Action::Deny, &[], &["alice"])],
        &c,
        &get("/")
    ));
}

#[test]
fn destination_headers_need_the_header_and_match_its_values() {
    let c = id("client");
    let rule = |values: &[&str]| {
        to(api::Destination {
            headers: vec![api::HeaderMatch {
                name: "X-Canary".into(),
                values: values.iter().map(|s| s.to_string()).collect(),
            }],
            ..Default::default()
        })
    };
    let present = [policy("present", api::Action::Deny, vec![rule(&[])])];
    assert!(denied(&present, &c, &get("/").header("x-canary", "")));
    assert!(!denied(&present, &c, &get("/")));
    let prefixed = [policy("prefix", api::Action::Deny, vec![rule(&["v2*"])])];
    assert!(denied(
        &prefixed,
        &c,
        &get("/").header("x-canary", "v2-beta")
    ));
    assert!(!denied(&prefixed, &c, &get("/").header("x-canary", "v1")));
}

#[test]
fn when_source_conditions_and_with_from_at_l4_and_l7() {
    let rule = api::Rule {
        from: vec![api::Source {
            namespaces: vec!["demo".into()],
            ..Default::default()
        }],
        when: vec![
            api::Condition {
                key: "source.principal".into(),
                values: vec!["spiffe://cluster.local/ns/demo/sa/client*".into()],
                not_values: vec!["spiffe://cluster.local/ns/demo/sa/client-test".into()],
            },
            api::Condition {
                key: "source.namespace".into(),
                values: vec!["demo".into()],
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let allow = [policy("allow", api::Action::Allow, vec![rule])];
    // Checked at L4 too: these are no L7 conditions.
    let l4 = |sa: &str| decide(allow.iter(), &src(&id(sa)), 8080).is_allowed();
    assert!(l4("client"));
    assert!(l4("client-v2"));
    assert!(!l4("client-test"), "not_values");
    assert!(!l4("other"), "values");
    let elsewhere = SpiffeId::new("cluster.local", "prod", "client").unwrap();
    assert!(!decide(allow.iter(), &src(&elsewhere), 8080).is_allowed());
    assert!(!denied(&allow, &id("client"), &get("/")));
    assert!(denied(&allow, &id("other"), &get("/")));
}

#[test]
fn deny_comes_first_then_allow_and_the_deciding_policy_is_named() {
    let c = id("client");
    let policies = [
        policy("allow-all", api::Action::Allow, vec![api::Rule::default()]),
        policy("deny-admin", api::Action::Deny, vec![paths(&["/admin*"])]),
    ];
    let v = judge(&policies, &c, &get("/admin/x"));
    match v.decision {
        Decision::Deny { policy, reason } => {
            assert_eq!(&*policy, "demo/deny-admin");
            assert!(reason.contains("GET /admin/x"), "{reason}");
            assert!(reason.contains("sa/client"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        judge(&policies, &c, &get("/")).decision,
        Decision::Allow {
            policy: Some("demo/allow-all".into())
        }
    );
}

#[test]
fn audit_reports_its_match_and_never_decides() {
    let c = id("client");
    let audit = policy("audit-admin", api::Action::Audit, vec![paths(&["/admin*"])]);
    // Alone, it neither allows (no ALLOW policy: allowed by default) nor denies.
    let v = judge(std::slice::from_ref(&audit), &c, &get("/admin"));
    assert_eq!(v.decision, Decision::Allow { policy: None });
    assert_eq!(v.audited, vec![Arc::<str>::from("demo/audit-admin")]);
    assert!(
        judge(std::slice::from_ref(&audit), &c, &get("/"))
            .audited
            .is_empty()
    );
    // Beside a deny, the request is still denied, and still audited.
    let with_deny = [
        audit.clone(),
        policy("deny", api::Action::Deny, vec![paths(&["/admin"])]),
    ];
    let v = judge(&with_deny, &c, &get("/admin"));
    assert!(!v.is_allowed());
    assert_eq!(v.audited.len(), 1);
    // It is no ALLOW policy: an ALLOW beside it still decides alone.
    let with_allow = [
        audit.clone(),
        policy("allow-other", api::Action::Allow, vec![paths(&["/other"])]),
    ];
    let v = judge(&with_allow, &c, &get("/admin"));
    assert!(!v.is_allowed());
    assert_eq!(v.audited.len(), 1);
    // At L4 its L7 conditions are unknown: it reports on its L4 part, as a DENY would match.
    let v = decide([audit].iter(), &src(&c), 8080);
    assert!(v.is_allowed());
    assert_eq!(v.audited.len(), 1);
}

#[test]
fn what_cannot_be_evaluated_is_refused() {
    let bad = |action: i32, rule: api::Rule| {
        let mut p = wire("p", api::Action::Allow, vec![rule]);
        p.action = action;
        Policy::from_api(&p).unwrap_err().to_string()
    };
    let host_with_port = bad(
        0,
        to(api::Destination {
            hosts: vec!["reviews:9080".into()],
            ..Default::default()
        }),
    );
    assert!(host_with_port.contains("reviews:9080"), "{host_with_port}");
    let key = bad(
        1,
        api::Rule {
            when: vec![api::Condition {
                key: "source.ip".into(),
                values: vec!["10.0.0.1".into()],
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    assert!(key.contains("source.ip"), "{key}");
    let empty = bad(
        1,
        api::Rule {
            when: vec![api::Condition {
                key: "source.principal".into(),
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    assert!(empty.contains("neither values"), "{empty}");
    let header = bad(
        2,
        api::Rule {
            when: vec![api::Condition {
                key: "request.headers[bad header]".into(),
                values: vec!["x".into()],
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    assert!(header.contains("bad header"), "{header}");
    let action = bad(7, api::Rule::default());
    assert!(action.contains("AUDIT"), "{action}");
}

#[test]
fn bare_hosts() {
    for (authority, want) in [
        ("reviews", "reviews"),
        ("reviews:9080", "reviews"),
        ("reviews.:9080", "reviews"),
        ("user@reviews:80", "reviews"),
        ("[::1]:8080", "[::1]"),
        ("[::1]", "[::1]"),
        ("::1", "::1"),
        ("reviews:", "reviews"),
    ] {
        assert_eq!(
            request::bare_host(authority.as_bytes()),
            want.as_bytes(),
            "{authority}"
        );
    }
}
