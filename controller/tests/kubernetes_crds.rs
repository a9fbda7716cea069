//! The Kubernetes source's mesh objects beyond pods and services, against the fake API server
//! (tests/support/fake_api.rs) over a socket: waypoints as Gateways, Ambit's AuthorizationPolicy
//! CRD, HTTPRoutes, EndpointSlices, and a cluster without the Gateway API or Ambit CRDs.

use std::sync::Arc;
use std::time::Duration;

use ambit_controller::model::{MeshModel, ObjectKey};
use ambit_controller::source::kubernetes::{self, KubernetesError, Options};
use ambit_proto::api::route as rpb;
use ambit_proto::api::security as spb;
use hyper::Method;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

mod support;
use support::fake_api::{FakeApi, status};

const NAMESPACES: &str = "/api/v1/namespaces";
const PODS: &str = "/api/v1/pods";
const SERVICES: &str = "/api/v1/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const GATEWAYS: &str = "/apis/gateway.networking.k8s.io/v1/gateways";
const ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/httproutes";
const POLICIES: &str = "/apis/ambit.io/v1alpha1/authorizationpolicies";

#[derive(Default)]
struct Cluster {
    namespaces: Vec<Value>,
    pods: Vec<Value>,
    services: Vec<Value>,
    slices: Vec<Value>,
    /// `None`: the kind is not installed (the fake answers 404).
    gateways: Option<Vec<Value>>,
    routes: Option<Vec<Value>>,
    policies: Option<Vec<Value>>,
}

impl Cluster {
    async fn serve(self) -> FakeApi {
        let api = FakeApi::start().await;
        api.collection(NAMESPACES, "NamespaceList", self.namespaces);
        api.collection(PODS, "PodList", self.pods);
        api.collection(SERVICES, "ServiceList", self.services);
        api.collection(SLICES, "EndpointSliceList", self.slices);
        if let Some(items) = self.gateways {
            api.collection(GATEWAYS, "GatewayList", items);
        }
        if let Some(items) = self.routes {
            api.collection(ROUTES, "HTTPRouteList", items);
        }
        if let Some(items) = self.policies {
            api.collection(POLICIES, "AuthorizationPolicyList", items);
        }
        api
    }
}

fn namespace(name: &str, labels: Value) -> Value {
    json!({"metadata": {"name": name, "labels": labels, "resourceVersion": "1"}})
}

fn pod_with(ns: &str, name: &str, ip: &str, labels: Value, sa: &str, node: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels, "resourceVersion": "1"},
        "spec": {"nodeName": node, "serviceAccountName": sa, "containers": [{"name": "app"}]},
        "status": {
            "phase": "Running",
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    })
}

fn pod(ns: &str, name: &str, ip: &str, labels: Value) -> Value {
    pod_with(ns, name, ip, labels, "default", "node-a")
}

fn service(ns: &str, name: &str, vip: &str, selector: Option<Value>) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
        "spec": {
            "clusterIP": vip,
            "clusterIPs": [vip],
            "selector": selector,
            "ports": [{"name": "http", "port": 9080, "targetPort": 8080, "protocol": "TCP"}]
        }
    })
}

fn gateway(ns: &str, name: &str, class: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
        "spec": {
            "gatewayClassName": class,
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]
        }
    })
}

/// A pod of the waypoint Deployment the reconciler makes for Gateway `gateway`.
fn waypoint_pod(ns: &str, gateway: &str, name: &str, ip: &str, node: &str) -> Value {
    let labels = json!({
        "gateway.networking.k8s.io/gateway-name": gateway,
        "ambit.io/dataplane-mode": "none",
    });
    pod_with(ns, name, ip, labels, gateway, node)
}

fn policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "ambit.io/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
        "spec": spec
    })
}

fn options() -> Options {
    Options {
        debounce: Duration::from_millis(50),
        sync_timeout: Duration::from_secs(10),
        ..Options::default()
    }
}

async fn start(api: &FakeApi) -> (kubernetes::Watching, CancellationToken) {
    let shutdown = CancellationToken::new();
    let watching = kubernetes::watch(api.client(), options(), shutdown.clone())
        .await
        .unwrap();
    (watching, shutdown)
}

/// Waits for a published model that passes `check`.
async fn model_where(
    models: &mut watch::Receiver<Arc<MeshModel>>,
    check: impl Fn(&MeshModel) -> bool,
) -> Arc<MeshModel> {
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let model = models.borrow_and_update().clone();
            if check(&model) {
                return model;
            }
            models.changed().await.expect("the source stopped");
        }
    })
    .await
    .expect("no published model passed the check within 15s")
}

fn key(ns: &str, name: &str) -> ObjectKey {
    ObjectKey::new(ns, name)
}

#[tokio::test]
async fn an_ambit_waypoint_gateway_with_its_pods_is_a_waypoint_and_labels_resolve_to_it() {
    let api = Cluster {
        namespaces: vec![
            namespace(
                "demo",
                json!({"ambit.io/dataplane-mode": "ambient", "ambit.io/use-waypoint": "demo-wp"}),
            ),
            namespace(
                "shop",
                json!({"ambit.io/dataplane-mode": "ambient", "ambit.io/use-waypoint": "ingress"}),
            ),
        ],
        pods: vec![
            pod("demo", "reviews-1", "10.244.0.1", json!({"app": "reviews"})),
            // Listed out of name order: the waypoint's node is the first ready pod by name.
            waypoint_pod("demo", "demo-wp", "demo-wp-b", "10.244.1.11", "node-b"),
            waypoint_pod("demo", "demo-wp", "demo-wp-a", "10.244.1.10", "node-c"),
            // A pod of a Gateway of another class is an ordinary pod.
            pod(
                "shop",
                "ingress-1",
                "10.244.2.1",
                json!({"gateway.networking.k8s.io/gateway-name": "ingress"}),
            ),
        ],
        services: vec![
            service(
                "demo",
                "reviews",
                "10.96.0.10",
                Some(json!({"app": "reviews"})),
            ),
            // Its selector matches the waypoint pods' labels, and nothing else.
            service(
                "demo",
                "wp-only",
                "10.96.0.11",
                Some(json!({"ambit.io/dataplane-mode": "none"})),
            ),
            service("shop", "cart", "10.96.0.20", Some(json!({"app": "cart"}))),
        ],
        gateways: Some(vec![
            gateway("demo", "demo-wp", "ambit-waypoint"),
            gateway("shop", "ingress", "istio"),
        ]),
        ..Cluster::default()
    }
    .serve()
    .await;
    let (mut watching, shutdown) = start(&api).await;
    let model = watching.models.borrow_and_update().clone();

    let wp = model
        .waypoint(&key("demo", "demo-wp"))
        .expect("the waypoint");
    assert_eq!(wp.service_account, "demo-wp");
    assert_eq!(wp.node, "node-c");
    let addresses: Vec<String> = wp.addresses.iter().map(ToString::to_string).collect();
    assert_eq!(addresses, vec!["10.244.1.10", "10.244.1.11"]);
    assert!(model.waypoint(&key("shop", "ingress")).is_none());
    assert_eq!(model.waypoints().count(), 1);

    // Waypoint pods are the waypoint, not workloads, and so no service's endpoints.
    assert!(model.workload(&key("demo", "demo-wp-a")).is_none());
    let wp_only = model.service(&key("demo", "wp-only")).unwrap();
    assert!(wp_only.endpoints.is_empty(), "{:?}", wp_only.endpoints);
    assert!(model.workload(&key("shop", "ingress-1")).is_some());

    // demo's label resolves; shop's names a Gateway of another class and is ignored.
    let reviews = model.service(&key("demo", "reviews")).unwrap();
    assert_eq!(reviews.waypoint, Some(key("demo", "demo-wp")));
    assert_eq!(reviews.endpoints, vec![key("demo", "reviews-1")]);
    assert_eq!(model.service(&key("shop", "cart")).unwrap().waypoint, None);

    // The Gateway goes: so do the waypoint and the label's effect.
    api.send(
        GATEWAYS,
        "DELETED",
        gateway("demo", "demo-wp", "ambit-waypoint"),
    );
    let model = model_where(&mut watching.models, |m| m.waypoints().count() == 0).await;
    assert_eq!(
        model.service(&key("demo", "reviews")).unwrap().waypoint,
        None
    );

    shutdown.cancel();
    watching.task.await.unwrap();
}

#[tokio::test]
async fn a_waypoint_gateway_without_a_ready_pod_is_left_out_until_one_is_ready() {
    let mut not_ready = waypoint_pod("demo", "demo-wp", "demo-wp-a", "10.244.1.10", "node-a");
    not_ready["status"]["conditions"][0]["status"] = json!("False");
    let api = Cluster {
        namespaces: vec![namespace(
            "demo",
            json!({"ambit.io/dataplane-mode": "ambient", "ambit.io/use-waypoint": "demo-wp"}),
        )],
        pods: vec![
            pod("demo", "reviews-1", "10.244.0.1", json!({"app": "reviews"})),
            not_ready,
        ],
        services: vec![service(
            "demo",
            "reviews",
            "10.96.0.10",
            Some(json!({"app": "reviews"})),
        )],
        gateways: Some(vec![gateway("demo", "demo-wp", "ambit-waypoint")]),
        ..Cluster::default()
    }
    .serve()
    .await;
    let (mut watching, shutdown) = start(&api).await;
    let model = watching.models.borrow_and_update().clone();
    assert_eq!(model.waypoints().count(), 0);
    assert_eq!(
        model.service(&key("demo", "reviews")).unwrap().waypoint,
        None
    );
    assert!(model.workload(&key("demo", "demo-wp-a")).is_none());

    api.send(
        PODS,
        "MODIFIED",
        waypoint_pod("demo", "demo-wp", "demo-wp-a", "10.244.1.10", "node-a"),
    );
    let model = model_where(&mut watching.models, |m| m.waypoints().count() == 1).await;
    assert_eq!(
        model.service(&key("demo", "reviews")).unwrap().waypoint,
        Some(key("demo", "demo-wp"))
    );
    shutdown.cancel();
    watching.task.await.unwrap();
}

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
        hostnames: vec!["reviews.demo.svc.cluster.local".into()],
        rules: vec![rpb::RouteRule {
            matches: vec![rpb::RouteMatch {
                path: Some(rpb::StringMatch {
                    kind: Some(rpb::string_match::Kind::Prefix("/api".into())),
                }),
                method: "GET".into(),
                headers: vec![rpb::HeaderMatch {
                    name: "x-user".into(),
                    value: Some(rpb::StringMatch {
                        kind: Some(rpb::string_match::Kind::Exact("jason".into())),
                    }),
                }],
            }],
            backends: vec![backend("reviews-v1", 90), backend("reviews-v2", 10)],
            retry: Some(rpb::RetryPolicy {
                attempts: 3,
                per_try_timeout_ms: 0,
                retry_on: vec!["connect-failure".into(), "503".into()],
                backoff_base_ms: 25,
            }),
            timeout_ms: 2000,
        }],
        circuit_breaker: None,
        outlier_detection: None,
    };
    assert_eq!(*routes[0], expected);
    shutdown.cancel();
    watching.task.await.unwrap();
}

fn slice(name: &str, endpoints: Value) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "demo", "resourceVersion": "1",
                     "labels": {"kubernetes.io/service-name": "db"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 5432, "protocol": "TCP"}],
        "endpoints": endpoints
    })
}

#[tokio::test]
async fn a_service_without_selector_follows_its_endpoint_slices() {
    let ready = |ip: &str, ready: bool| json!({"addresses": [ip], "conditions": {"ready": ready}});
    let api = Cluster {
        namespaces: vec![namespace(
            "demo",
            json!({"ambit.io/dataplane-mode": "ambient"}),
        )],
        pods: vec![
            pod("demo", "db-0", "10.244.0.1", json!({})),
            pod("demo", "db-1", "10.244.0.2", json!({})),
            pod("demo", "db-2", "10.244.0.3", json!({})),
        ],
        services: vec![service("demo", "db", "10.96.0.30", None)],
        slices: vec![slice(
            "db-abc",
            json!([
                ready("10.244.0.1", true),
                ready("10.244.0.2", true),
                ready("10.244.0.3", false)
            ]),
        )],
        ..Cluster::default()
    }
    .serve()
    .await;
    let (mut watching, shutdown) = start(&api).await;
    let model = watching.models.borrow_and_update().clone();
    let db = model.service(&key("demo", "db")).unwrap();
    assert_eq!(db.endpoints, vec![key("demo", "db-0"), key("demo", "db-1")]);
    // The slice's port of the same name gives the target port, as kube-proxy takes it.
    assert_eq!(db.service.ports[0].target_port, 5432);

    api.send(
        SLICES,
        "MODIFIED",
        slice(
            "db-abc",
            json!([ready("10.244.0.2", true), ready("10.244.0.3", false)]),
        ),
    );
    let model = model_where(&mut watching.models, |m| {
        m.service(&key("demo", "db")).unwrap().endpoints.len() == 1
    })
    .await;
    assert_eq!(
        model.service(&key("demo", "db")).unwrap().endpoints,
        vec![key("demo", "db-1")]
    );
    shutdown.cancel();
    watching.task.await.unwrap();
}

#[tokio::test]
async fn the_start_needs_no_gateway_api_or_ambit_crds_and_picks_them_up_once_installed() {
    let api = Cluster {
        namespaces: vec![namespace(
            "demo",
            json!({"ambit.io/dataplane-mode": "ambient"}),
        )],
        pods: vec![pod(
            "demo",
            "reviews-1",
            "10.244.0.1",
            json!({"app": "reviews"}),
        )],
        services: vec![service(
            "demo",
            "reviews",
            "10.96.0.10",
            Some(json!({"app": "reviews"})),
        )],
        ..Cluster::default()
    }
    .serve()
    .await;
    let (mut watching, shutdown) = start(&api).await;
    let model = watching.models.borrow_and_update().clone();
    assert!(model.workload(&key("demo", "reviews-1")).is_some());
    assert_eq!(model.policies().count(), 0);
    let asked: Vec<String> = api.requests().into_iter().map(|r| r.path).collect();
    for path in [GATEWAYS, ROUTES, POLICIES] {
        assert!(asked.iter().any(|p| p == path), "{path} was never listed");
    }

    // The CRD is installed later: the retrying watch finds it.
    api.collection(
        POLICIES,
        "AuthorizationPolicyList",
        vec![policy(
            "demo",
            "late",
            json!({"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["legacy"]}}]}]}),
        )],
    );
    model_where(&mut watching.models, |m| m.policies().count() == 1).await;
    shutdown.cancel();
    watching.task.await.unwrap();
}

#[tokio::test]
async fn a_crd_kind_the_controller_may_not_list_holds_the_start_and_is_named() {
    let api = Cluster::default().serve().await;
    api.on(Method::GET, POLICIES, |_| {
        (
            403,
            status(
                403,
                "Forbidden",
                "authorizationpolicies.ambit.io is forbidden",
            ),
        )
    });
    let options = Options {
        sync_timeout: Duration::from_millis(1500),
        ..options()
    };
    let error = kubernetes::watch(api.client(), options, CancellationToken::new())
        .await
        .err()
        .expect("policies that cannot be read must not be silently left out");
    let KubernetesError::NotSynced { kinds, .. } = &error else {
        panic!("{error}");
    };
    assert!(kinds.contains("AuthorizationPolicy"), "{error}");
    assert!(!kinds.contains("Gateway"), "{error}");
}
