use std::net::IpAddr;

use ambit_proto::api::{security, workload as pb};

use super::*;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn pod(ns: &str, name: &str, node: &str, addr: &str, l: &[(&str, &str)]) -> Pod {
    Pod {
        name: name.into(),
        namespace: ns.into(),
        service_account: name.into(),
        node: node.into(),
        addresses: vec![ip(addr)],
        labels: labels(l),
        healthy: true,
    }
}

fn service(ns: &str, name: &str, vip: &str, selector: &[(&str, &str)]) -> Service {
    Service {
        name: name.into(),
        namespace: ns.into(),
        vips: vec![ip(vip)],
        ports: vec![ServicePort {
            name: "http".into(),
            port: 9080,
            target_port: 8080,
            app_protocol: AppProtocol::Http,
        }],
        selector: labels(selector),
        explicit_endpoints: Vec::new(),
        labels: Labels::new(),
    }
}

/// Two namespaces, `demo` meshed and `legacy` not, on one node.
fn base() -> MeshBuilder {
    let mut b = MeshBuilder::new("cluster.local", "test");
    b.node(Node {
        name: "node-a".into(),
        bootstrap_token: Some("token-a".into()),
    })
    .namespace(Namespace {
        name: "demo".into(),
        labels: labels(&[(DATAPLANE_MODE_LABEL, DATAPLANE_MODE_AMBIENT)]),
        egress_scope: None,
    })
    .namespace(Namespace {
        name: "legacy".into(),
        labels: Labels::new(),
        egress_scope: None,
    });
    b
}

#[test]
fn namespace_opts_in_and_a_pod_can_opt_out() {
    let mut b = base();
    b.pod(pod("demo", "in", "node-a", "10.244.0.1", &[]))
        .pod(pod(
            "demo",
            "out",
            "node-a",
            "10.244.0.2",
            &[(DATAPLANE_MODE_LABEL, "none")],
        ))
        .pod(pod("legacy", "old", "node-a", "10.244.0.3", &[]));
    let m = b.build().unwrap();
    let proto = |name: &str, ns: &str| {
        let w = m.workload(&ObjectKey::new(ns, name)).unwrap();
        pb::Protocol::try_from(m.workload_proto(w).protocol).unwrap()
    };
    assert_eq!(proto("in", "demo"), pb::Protocol::Hbone);
    assert_eq!(proto("out", "demo"), pb::Protocol::Tcp);
    assert_eq!(proto("old", "legacy"), pb::Protocol::Tcp);
    let w = m.workload(&ObjectKey::new("demo", "in")).unwrap();
    assert_eq!(w.uid, "test//Pod/demo/in");
    assert_eq!(
        w.identity.to_string(),
        "spiffe://cluster.local/ns/demo/sa/in"
    );
}

#[test]
fn a_misspelt_dataplane_mode_is_refused_not_ignored() {
    let mut b = base();
    b.namespace(Namespace {
        name: "typo".into(),
        labels: labels(&[(DATAPLANE_MODE_LABEL, "ambeint")]),
        egress_scope: None,
    })
    .pod(pod(
        "demo",
        "p",
        "node-a",
        "10.244.0.1",
        &[(DATAPLANE_MODE_LABEL, "ambient")],
    ));
    let errors = b.build().unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].to_string().contains("namespace typo"),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].to_string().contains("a pod can only opt out"),
        "{}",
        errors[1]
    );
}

#[test]
fn endpoints_follow_the_selector_within_the_namespace() {
    let svc = service("demo", "reviews", "10.96.0.10", &[("app", "reviews")]);
    let mut b = base();
    b.pod(pod(
        "demo",
        "reviews-v1",
        "node-a",
        "10.244.0.1",
        &[("app", "reviews")],
    ))
    .pod(pod(
        "demo",
        "other",
        "node-a",
        "10.244.0.2",
        &[("app", "ratings")],
    ))
    // Same labels in another namespace: not an endpoint.
    .pod(pod(
        "legacy",
        "reviews-x",
        "node-a",
        "10.244.0.3",
        &[("app", "reviews")],
    ))
    .service(svc.clone());
    let before = b.clone().build().unwrap();
    let key = ObjectKey::new("demo", "reviews");
    assert_eq!(
        before.service(&key).unwrap().endpoints,
        vec![ObjectKey::new("demo", "reviews-v1")]
    );
    b.pod(pod(
        "demo",
        "reviews-v2",
        "node-a",
        "10.244.0.4",
        &[("app", "reviews")],
    ));
    let after = b.build().unwrap();
    let proto = after.service_proto(after.service(&key).unwrap());
    let uids: Vec<_> = proto
        .endpoints
        .iter()
        .map(|e| e.workload_uid.as_str())
        .collect();
    assert_eq!(
        uids,
        ["test//Pod/demo/reviews-v1", "test//Pod/demo/reviews-v2"]
    );
    assert_eq!(proto.hostname, "reviews.demo.svc.cluster.local");
    assert_eq!(proto.ports[0].target_port, 8080);
}

#[test]
fn a_service_without_selector_has_no_endpoints() {
    let mut b = base();
    b.pod(pod("demo", "p", "node-a", "10.244.0.1", &[]))
        .service(service("demo", "external", "10.96.0.11", &[]));
    let m = b.build().unwrap();
    assert!(
        m.service(&ObjectKey::new("demo", "external"))
            .unwrap()
            .endpoints
            .is_empty()
    );
}

#[test]
fn explicit_endpoints_serve_a_service_without_selector_only() {
    let mut b = base();
    let mut listed = service("demo", "listed", "10.96.0.11", &[]);
    listed.explicit_endpoints = vec![
        ObjectKey::new("demo", "q"),
        ObjectKey::new("demo", "p"),
        // Not in the model (a source listed a pod the model rejected): left out, not an error.
        ObjectKey::new("demo", "gone"),
    ];
    let mut selected = service("demo", "selected", "10.96.0.12", &[("app", "p")]);
    selected.explicit_endpoints = vec![ObjectKey::new("demo", "q")];
    b.pod(pod("demo", "p", "node-a", "10.244.0.1", &[("app", "p")]))
        .pod(pod("demo", "q", "node-a", "10.244.0.2", &[]))
        .service(listed)
        .service(selected);
    let m = b.build().unwrap();
    let endpoints = |name: &str| {
        m.service(&ObjectKey::new("demo", name))
            .unwrap()
            .endpoints
            .clone()
    };
    assert_eq!(
        endpoints("listed"),
        vec![ObjectKey::new("demo", "p"), ObjectKey::new("demo", "q")]
    );
    assert_eq!(endpoints("selected"), vec![ObjectKey::new("demo", "p")]);
}

fn waypoint(ns: &str, name: &str, addr: &str) -> Waypoint {
    Waypoint {
        name: name.into(),
        namespace: ns.into(),
        node: "node-a".into(),
        service_account: format!("{name}-sa"),
        addresses: vec![ip(addr)],
    }
}

#[test]
fn waypoints_come_from_the_namespace_label_unless_the_service_overrides_it() {
    let mut b = base();
    b.namespace(Namespace {
        name: "shop".into(),
        labels: labels(&[
            (DATAPLANE_MODE_LABEL, DATAPLANE_MODE_AMBIENT),
            (USE_WAYPOINT_LABEL, "shared"),
        ]),
        egress_scope: None,
    })
    .waypoint(waypoint("shop", "shared", "10.244.0.100"))
    .waypoint(waypoint("shop", "special", "10.244.0.101"))
    .service(service("shop", "cart", "10.96.0.1", &[]))
    .service({
        let mut s = service("shop", "pay", "10.96.0.2", &[]);
        s.labels = labels(&[(USE_WAYPOINT_LABEL, "special")]);
        s
    })
    .service({
        let mut s = service("shop", "direct", "10.96.0.3", &[]);
        s.labels = labels(&[(USE_WAYPOINT_LABEL, WAYPOINT_NONE)]);
        s
    })
    .service(service("demo", "plain", "10.96.0.4", &[]))
    .pod(pod(
        "shop",
        "p",
        "node-a",
        "10.244.0.1",
        &[(USE_WAYPOINT_LABEL, "special")],
    ))
    .pod(pod("shop", "q", "node-a", "10.244.0.2", &[]));
    let m = b.build().unwrap();
    let wp = |name: &str, ns: &str| {
        let s = m.service(&ObjectKey::new(ns, name)).unwrap();
        m.service_proto(s)
            .waypoint
            .map(|w| format!("{}/{}", w.namespace, w.name))
    };
    assert_eq!(wp("cart", "shop").as_deref(), Some("shop/shared"));
    assert_eq!(wp("pay", "shop").as_deref(), Some("shop/special"));
    assert_eq!(wp("direct", "shop"), None);
    assert_eq!(wp("plain", "demo"), None);
    // The namespace label steers service traffic; a pod only gets a waypoint by its own label.
    let pod_wp = |name: &str| {
        m.workload(&ObjectKey::new("shop", name))
            .unwrap()
            .waypoint
            .clone()
    };
    assert_eq!(pod_wp("p"), Some(ObjectKey::new("shop", "special")));
    assert_eq!(pod_wp("q"), None);
}

#[test]
fn a_pod_without_an_ip_yet_is_a_workload_of_its_node_only_where_allowed() {
    let unaddressed = || {
        let mut b = base();
        b.pod(Pod {
            addresses: Vec::new(),
            ..pod(
                "demo",
                "starting",
                "node-a",
                "10.244.0.50",
                &[("app", "web")],
            )
        })
        .service(service("demo", "web", "10.96.0.9", &[("app", "web")]));
        b
    };
    // A mesh file's pod without addresses is a mistake.
    let errors = unaddressed().build().unwrap_err();
    assert!(
        matches!(errors[..], [ModelError::NoAddress { .. }]),
        "{errors:?}"
    );
    let mut b = unaddressed();
    b.allow_unaddressed_pods();
    let m = b.build().unwrap();
    let w = m.workloads_on_node("node-a").next().unwrap();
    assert!(
        w.meshed,
        "its namespace is meshed, so its node may hold its identity"
    );
    assert!(m.workload_proto(w).addresses.is_empty());
    let web = m.service(&ObjectKey::new("demo", "web")).unwrap();
    assert!(web.endpoints.is_empty(), "nothing can reach it yet");
    // Still one address per object among those that have one.
    let mut b = unaddressed();
    b.allow_unaddressed_pods()
        .pod(pod("demo", "a", "node-a", "10.244.0.7", &[]))
        .pod(pod("demo", "b", "node-a", "10.244.0.7", &[]));
    let errors = b.build().unwrap_err();
    assert!(
        matches!(errors[..], [ModelError::DuplicateAddress { .. }]),
        "{errors:?}"
    );
}

#[test]
fn a_pending_waypoint_has_no_address_or_node_and_still_takes_its_traffic() {
    let pending = || {
        let mut b = base();
        b.namespace(Namespace {
            name: "shop".into(),
            labels: labels(&[(USE_WAYPOINT_LABEL, "wp")]),
            egress_scope: None,
        })
        .waypoint(Waypoint {
            node: String::new(),
            addresses: Vec::new(),
            ..waypoint("shop", "wp", "10.244.0.100")
        })
        .service(service("shop", "cart", "10.96.0.1", &[]));
        b
    };
    // A mesh file's waypoint needs both: there, leaving them out is a mistake.
    let errors = pending().build().unwrap_err();
    assert!(
        matches!(
            errors[..],
            [ModelError::UnknownNode { .. }, ModelError::NoAddress { .. }]
        ),
        "{errors:?}"
    );
    let mut b = pending();
    b.allow_pending_waypoints();
    let m = b.build().unwrap();
    let wp = m.waypoint(&ObjectKey::new("shop", "wp")).unwrap();
    assert!(m.waypoint_proto(wp).addresses.is_empty());
    let cart = m.service(&ObjectKey::new("shop", "cart")).unwrap();
    assert_eq!(cart.waypoint, Some(ObjectKey::new("shop", "wp")));
    // A node it does name must still be declared.
    let mut b = pending();
    b.allow_pending_waypoints().waypoint(Waypoint {
        node: "node-z".into(),
        addresses: Vec::new(),
        ..waypoint("shop", "other", "10.244.0.101")
    });
    let errors = b.build().unwrap_err();
    assert!(
        matches!(errors[..], [ModelError::UnknownNode { .. }]),
        "{errors:?}"
    );
}

#[test]
fn an_unknown_waypoint_is_reported_against_who_asked_for_it() {
    let mut b = base();
    b.namespace(Namespace {
        name: "shop".into(),
        labels: labels(&[(USE_WAYPOINT_LABEL, "missing")]),
        egress_scope: None,
    })
    .service(service("shop", "cart", "10.96.0.1", &[]));
    let errors = b.build().unwrap_err();
    assert_eq!(
        errors.len(),
        1,
        "only the namespace, not each service: {errors:?}"
    );
    assert_eq!(
        errors[0].subject(),
        Some(&ResourceRef::new(Kind::Namespace, "shop"))
    );
}

fn policy(name: &str, selector: &[(&str, &str)], principal: &str) -> AuthorizationPolicy {
    AuthorizationPolicy {
        name: name.into(),
        namespace: "demo".into(),
        selector: labels(selector),
        action: security::Action::Deny,
        dry_run: false,
        rules: vec![security::Rule {
            from: vec![security::Source {
                principals: vec![principal.into()],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[test]
fn policies_select_pods_by_label_within_their_namespace() {
    let mut b = base();
    b.pod(pod(
        "demo",
        "reviews",
        "node-a",
        "10.244.0.1",
        &[("app", "reviews")],
    ))
    .pod(pod(
        "demo",
        "client",
        "node-a",
        "10.244.0.2",
        &[("app", "client")],
    ))
    .pod(pod(
        "legacy",
        "reviews",
        "node-a",
        "10.244.0.3",
        &[("app", "reviews")],
    ))
    .policy(policy(
        "reviews-only",
        &[("app", "reviews")],
        "spiffe://cluster.local/ns/demo/sa/x",
    ))
    .policy(policy("whole-ns", &[], "spiffe://cluster.local/ns/demo/*"));
    let m = b.build().unwrap();
    let selected = |policy: &str| -> Vec<String> {
        let p = m.policies().find(|p| p.name == policy).unwrap();
        m.workloads()
            .filter(|w| MeshModel::policy_selects(p, w))
            .map(|w| w.key().to_string())
            .collect()
    };
    assert_eq!(selected("reviews-only"), ["demo/reviews"]);
    assert_eq!(selected("whole-ns"), ["demo/client", "demo/reviews"]);
}

#[test]
fn a_malformed_principal_or_ip_block_is_refused() {
    let mut b = base();
    let mut p = policy("bad", &[], "cluster.local/ns/demo/sa/x");
    p.rules[0].from[0].ip_blocks = vec!["10.0.0.0/33".into(), "10.1.0.0/16".into()];
    b.policy(p);
    let errors = b.build().unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        matches!(&errors[0], ModelError::InvalidPrincipal { principal, .. } if principal == "cluster.local/ns/demo/sa/x")
    );
    assert!(
        matches!(&errors[1], ModelError::InvalidIpBlock { block, .. } if block == "10.0.0.0/33")
    );
}

#[test]
fn duplicates_and_dangling_references_are_all_reported() {
    let mut b = base();
    b.pod(pod("demo", "a", "node-a", "10.244.0.1", &[]))
        .pod(pod("demo", "a", "node-a", "10.244.0.2", &[]))
        .pod(pod("demo", "b", "node-z", "10.244.0.1", &[]))
        .pod(pod("nowhere", "c", "node-a", "10.244.0.3", &[]))
        .service(service("demo", "s", "10.244.0.3", &[]));
    let errors = b.build().unwrap_err();
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 5, "{text:#?}");
    assert!(
        text[0].starts_with("pod demo/a is declared twice"),
        "{}",
        text[0]
    );
    assert!(text[1].contains("node \"node-z\""), "{}", text[1]);
    assert!(
        text[2].contains("address 10.244.0.1, which pod demo/a already has"),
        "{}",
        text[2]
    );
    assert!(text[3].contains("namespace \"nowhere\""), "{}", text[3]);
    assert!(
        text[4].starts_with("service demo/s uses address 10.244.0.3, which pod nowhere/c"),
        "{}",
        text[4]
    );
}

#[test]
fn nodes_are_found_by_token_and_tokens_must_differ() {
    let m = base().build().unwrap();
    assert_eq!(
        m.node_by_token("token-a").map(|n| n.name.as_str()),
        Some("node-a")
    );
    assert!(m.node_by_token("token-b").is_none());
    assert!(m.node_by_token("").is_none());
    let mut b = base();
    b.node(Node {
        name: "node-b".into(),
        bootstrap_token: Some("token-a".into()),
    });
    let errors = b.build().unwrap_err();
    assert!(
        matches!(&errors[0], ModelError::DuplicateToken { subject, .. } if subject.name == "node-b")
    );
    assert!(
        !errors[0].to_string().contains("token-a"),
        "errors never show a token"
    );
}

#[test]
fn route_backends_must_be_declared_services() {
    let mut b = base();
    b.service(service("demo", "reviews", "10.96.0.10", &[]))
        .route(Route {
            name: "r".into(),
            namespace: "demo".into(),
            parents: vec![ambit_proto::api::route::ParentRef {
                service: "reviews.demo.svc.cluster.local".into(),
                port: 0,
            }],
            rules: vec![ambit_proto::api::route::RouteRule {
                backends: vec![ambit_proto::api::route::BackendRef {
                    service: "reviews-v9.demo.svc.cluster.local".into(),
                    port: 9080,
                    weight: 1,
                }],
                ..Default::default()
            }],
            ..Default::default()
        });
    let errors = b.build().unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].to_string().contains("reviews-v9.demo"),
        "{}",
        errors[0]
    );
}
