//! The Kubernetes source's waypoints (Gateways of class ambit-waypoint and their pods),
//! EndpointSlices, and a cluster without the Gateway API or Ambit CRDs, against the fake API
//! server over a socket.

use std::net::IpAddr;
use std::time::Duration;

use ambit_controller::source::kubernetes::{self, KubernetesError, Options};
use hyper::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::cluster::*;
use crate::support::fake_api::status;

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
            // Listed out of name order: the waypoint's node is its first pod by name.
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
async fn a_waypoint_gateway_is_a_waypoint_before_its_pods_are_ready_and_its_traffic_waits() {
    let not_ready = not_ready_pod(waypoint_pod(
        "demo",
        "demo-wp",
        "demo-wp-a",
        "10.244.1.10",
        "node-a",
    ));
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
    // In the model already, so its pod can get its certificate (the CA asks for a waypoint of
    // this namespace and service account) and its config, and then become Ready.
    let wp = model
        .waypoint(&key("demo", "demo-wp"))
        .expect("a waypoint before any ready pod");
    assert_eq!(
        (wp.service_account.as_str(), wp.node.as_str()),
        ("demo-wp", "node-a")
    );
    assert!(wp.addresses.is_empty(), "{:?}", wp.addresses);
    // The label still resolves: the traffic fails closed rather than going direct.
    assert_eq!(
        model.service(&key("demo", "reviews")).unwrap().waypoint,
        Some(key("demo", "demo-wp"))
    );
    assert!(model.workload(&key("demo", "demo-wp-a")).is_none());

    api.send(
        PODS,
        "MODIFIED",
        waypoint_pod("demo", "demo-wp", "demo-wp-a", "10.244.1.10", "node-a"),
    );
    let model = model_where(&mut watching.models, |m| {
        m.waypoint(&key("demo", "demo-wp"))
            .is_some_and(|wp| !wp.addresses.is_empty())
    })
    .await;
    let wp = model.waypoint(&key("demo", "demo-wp")).unwrap();
    assert_eq!(wp.addresses, vec!["10.244.1.10".parse::<IpAddr>().unwrap()]);
    shutdown.cancel();
    watching.task.await.unwrap();
}

#[tokio::test]
async fn a_waypoint_gateway_without_pods_has_no_node_and_a_labelled_impostor_does_not_join() {
    // Labelled like a waypoint pod, ready, and first by name, but runs as another account.
    let impostor = pod_with(
        "demo",
        "demo-wp-0",
        "10.244.1.9",
        json!({"gateway.networking.k8s.io/gateway-name": "demo-wp", "app": "reviews"}),
        "reviews",
        "node-b",
    );
    let api = Cluster {
        namespaces: vec![namespace(
            "demo",
            json!({"ambit.io/dataplane-mode": "ambient", "ambit.io/use-waypoint": "demo-wp"}),
        )],
        pods: vec![impostor],
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
    let wp = model.waypoint(&key("demo", "demo-wp")).unwrap();
    assert_eq!(wp.service_account, "demo-wp");
    assert_eq!(
        wp.node, "",
        "no pod of the waypoint, so no node speaks for it"
    );
    assert!(wp.addresses.is_empty(), "{:?}", wp.addresses);
    // An ordinary workload: its own identity, an endpoint of the service its labels select.
    let impostor = model.workload(&key("demo", "demo-wp-0")).unwrap();
    assert_eq!(impostor.pod.service_account, "reviews");
    assert!(impostor.meshed);
    let reviews = model.service(&key("demo", "reviews")).unwrap();
    assert_eq!(reviews.endpoints, vec![key("demo", "demo-wp-0")]);
    assert_eq!(reviews.waypoint, Some(key("demo", "demo-wp")));
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
