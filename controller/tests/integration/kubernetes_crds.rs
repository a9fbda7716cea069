//! The Kubernetes source's policies and routes, against the fake API server over a socket:
//! Ambit's AuthorizationPolicy CRD and Gateway API HTTPRoutes.

use ambit_proto::api::route as rpb;
use ambit_proto::api::security as spb;
use serde_json::json;

use crate::support::cluster::*;

#[tokio::test]
async fn authorization_policies_select_workloads_and_a_malformed_one_fails_closed() {
    let api = Cluster {
        namespaces: vec![namespace("demo", json!({"ambit.io/dataplane-mode": "ambient"}))],
        pods: vec![
            pod("demo", "reviews-1", "10.244.0.1", json!({"app": "reviews"})),
            pod("demo", "ratings-1", "10.244.0.2", json!({"app": "ratings"})),
        ],
        services: vec![service("demo", "reviews", "10.96.0.10", Some(json!({"app": "reviews"})))],
        policies: Some(vec![
            policy(
                "demo",
                "reviews-from-frontend",
                json!({
                    "selector": {"matchLabels": {"app": "reviews"}},
                    "action": "ALLOW",
                    "rules": [{
                        "from": [{"source": {"namespaces": ["frontend"],
                                              "ipBlocks": ["10.244.0.0/16"]}}],
                        "to": [{"operation": {"ports": ["8080"], "methods": ["GET"]}}]
                    }]
                }),
            ),
            // Whole namespace, DENY.
            policy(
                "demo",
                "deny-legacy",
                json!({"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["legacy"]}}]}]}),
            ),
            // Malformed: the port is a name. Its rule is left out, so the policy allows less.
            policy(
                "demo",
                "ratings-typo",
                json!({
                    "selector": {"matchLabels": {"app": "ratings"}},
                    "rules": [{"to": [{"operation": {"ports": ["http"]}}]}]
                }),
            ),
        ]),
        ..Cluster::default()
    }
    .serve()
    .await;
    let (mut watching, shutdown) = start(&api).await;
    let model = watching.models.borrow_and_update().clone();
    assert_eq!(model.policies().count(), 3);

    let selected = |name: &str| {
        let w = model.workload(&key("demo", name)).unwrap();
        model.workload_proto(w).authorization_policies
    };
    assert_eq!(
        selected("reviews-1"),
        vec!["demo/deny-legacy", "demo/reviews-from-frontend"]
    );
    assert_eq!(
        selected("ratings-1"),
        vec!["demo/deny-legacy", "demo/ratings-typo"]
    );

    let by_name = |name: &str| {
        model
            .policies_in("demo")
            .find(|p| p.name == name)
            .map(|p| model.policy_proto(p))
            .unwrap()
    };
    let allow = by_name("reviews-from-frontend");
    assert_eq!(allow.action, spb::Action::Allow as i32);
    assert_eq!(
        allow.rules,
        vec![spb::Rule {
            from: vec![spb::Source {
                namespaces: vec!["frontend".into()],
                ip_blocks: vec!["10.244.0.0/16".into()],
                ..Default::default()
            }],
            to: vec![spb::Destination {
                ports: vec![8080],
                methods: vec!["GET".into()],
                ..Default::default()
            }],
            when: vec![],
        }]
    );
    assert_eq!(by_name("deny-legacy").action, spb::Action::Deny as i32);
    // Fails closed: an ALLOW policy without rules allows nothing, rather than the policy
    // vanishing and leaving ratings open to everyone.
    let typo = by_name("ratings-typo");
    assert_eq!(typo.action, spb::Action::Allow as i32);
    assert!(typo.rules.is_empty());
    // The rest of the cluster is served.
    assert!(model.service(&key("demo", "reviews")).is_some());

    // Fixed through the watch: the rule comes back.
    api.send(
        POLICIES,
        "MODIFIED",
        policy(
            "demo",
            "ratings-typo",
            json!({
                "selector": {"matchLabels": {"app": "ratings"}},
                "rules": [{"to": [{"operation": {"ports": ["9080"]}}]}]
            }),
        ),
    );
    let model = model_where(&mut watching.models, |m| {
        m.policies()
            .any(|p| p.name == "ratings-typo" && !p.rules.is_empty())
    })
    .await;
    let fixed = model.policies().find(|p| p.name == "ratings-typo").unwrap();
    assert_eq!(fixed.rules[0].to[0].ports, vec![9080]);
    shutdown.cancel();
    watching.task.await.unwrap();
}

#[tokio::test]
async fn an_http_route_becomes_the_route_proto_with_weighted_backends_timeout_and_retry() {
    let route = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "reviews-split", "namespace": "demo", "resourceVersion": "1"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "reviews"}],
            "rules": [{
                "matches": [{
                    "path": {"type": "PathPrefix", "value": "/api"},
                    "method": "GET",
                    "headers": [{"name": "x-user", "value": "jason"}]
                }],
                "backendRefs": [
                    {"name": "reviews-v1", "port": 9080, "weight": 90},
                    {"name": "reviews-v2", "port": 9080, "weight": 10}
                ],
                "timeouts": {"request": "2s"},
                "retry": {"attempts": 3, "codes": [503], "backoff": "25ms"}
            }]
        }
    });
    // Its backend does not exist: skipped, while the other route is served.
    let dangling = json!({
        "metadata": {"name": "to-nowhere", "namespace": "demo", "resourceVersion": "1"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "reviews"}],
            "rules": [{"backendRefs": [{"name": "reviews-v3", "port": 9080}]}]
        }
    });
    let api = Cluster {
        namespaces: vec![namespace(
            "demo",
            json!({"ambit.io/dataplane-mode": "ambient"}),
        )],
        services: vec![
            service(
                "demo",
                "reviews",
                "10.96.0.10",
                Some(json!({"app": "reviews"})),
            ),
            service(
                "demo",
                "reviews-v1",
                "10.96.0.11",
                Some(json!({"version": "v1"})),
            ),
            service(
                "demo",
                "reviews-v2",
                "10.96.0.12",
                Some(json!({"version": "v2"})),
            ),
        ],
        routes: Some(vec![route, dangling]),
        ..Cluster::default()
    }
    .serve()
    .await;
    let (watching, shutdown) = start(&api).await;
    let model = watching.models.borrow().clone();
    let routes: Vec<&rpb::Route> = model.routes_in("demo").collect();
    assert_eq!(routes.len(), 1, "{routes:?}");
    let backend = |name: &str, weight| rpb::BackendRef {
        service: format!("{name}.demo.svc.cluster.local"),
        port: 9080,
        weight,
    };
    let expected = rpb::Route {
        name: "reviews-split".into(),
        namespace: "demo".into(),
        parents: vec![rpb::ParentRef {
            service: "reviews.demo.svc.cluster.local".into(),
            port: 0,
        }],
        hostnames: vec![],
        rules: vec![rpb::RouteRule {
            matches: vec![rpb::RouteMatch {
                path: Some(rpb::PathMatch {
                    kind: Some(rpb::path_match::Kind::Prefix("/api".into())),
                }),
                method: "GET".into(),
                headers: vec![rpb::HeaderMatch {
                    name: "x-user".into(),
                    value: Some(rpb::ValueMatch {
                        kind: Some(rpb::value_match::Kind::Exact("jason".into())),
                    }),
                }],
                query_params: vec![],
            }],
            backends: vec![backend("reviews-v1", 90), backend("reviews-v2", 10)],
            retry: Some(rpb::RetryPolicy {
                attempts: 3,
                codes: vec![503],
                grpc_codes: vec![],
                backoff_ms: 25,
            }),
            request_timeout_ms: 2000,
            ..Default::default()
        }],
    };
    assert_eq!(*routes[0], expected);
    shutdown.cancel();
    watching.task.await.unwrap();
}
