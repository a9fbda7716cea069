//! The Kubernetes source against the fake API server (the ambit-fake-kube-api crate): kube's real
//! client lists and watches over a socket; the fake answers recorded JSON and streams events.

use std::time::Duration;

use ambit_controller::model::{MeshModel, ObjectKey};
use ambit_controller::source::kubernetes::{self, KubernetesError, Options};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::support;
use crate::support::cluster::{Cluster, NAMESPACES, PODS, model_where, namespace, options};

/// The built-in kinds the source lists, holding these objects, and no EndpointSlices. The
/// Gateway API and Ambit CRDs are not installed (404), which the source runs without
/// (kubernetes_waypoints.rs covers them).
async fn cluster(
    namespaces: Vec<Value>,
    pods: Vec<Value>,
    services: Vec<Value>,
) -> support::fake_api::FakeApi {
    Cluster {
        namespaces,
        pods,
        services,
        ..Cluster::default()
    }
    .serve()
    .await
}

fn pod(ns: &str, name: &str, ip: Option<&str>, labels: Value) -> Value {
    let ips: Vec<Value> = ip.iter().map(|ip| json!({"ip": ip})).collect();
    json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels, "resourceVersion": "2"},
        "spec": {"nodeName": "node-a", "containers": [{"name": "app"}]},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": ips,
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    })
}

fn service(ns: &str, name: &str, vip: &str, selector: Value) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
        "spec": {
            "clusterIP": vip,
            "clusterIPs": [vip],
            "selector": selector,
            "ports": [
                {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                {"name": "named", "port": 81, "targetPort": "web", "protocol": "TCP"}
            ]
        }
    })
}

fn meshed(model: &MeshModel, ns: &str, name: &str) -> Option<bool> {
    model.workload(&ObjectKey::new(ns, name)).map(|w| w.meshed)
}

#[tokio::test]
async fn the_cluster_becomes_the_model_and_watch_events_update_it() {
    let api = cluster(
        vec![
            namespace("demo", json!({"ambit.io/dataplane-mode": "ambient"})),
            namespace("plain", json!({})),
        ],
        vec![
            pod(
                "demo",
                "reviews-1",
                Some("10.244.0.1"),
                json!({"app": "reviews"}),
            ),
            pod(
                "demo",
                "opted-out",
                Some("10.244.0.2"),
                json!({"app": "reviews", "ambit.io/dataplane-mode": "none"}),
            ),
            pod(
                "demo",
                "ratings-1",
                Some("10.244.0.3"),
                json!({"app": "ratings"}),
            ),
            pod("plain", "legacy", Some("10.244.0.4"), json!({})),
            pod("demo", "starting", None, json!({"app": "reviews"})),
        ],
        vec![service(
            "demo",
            "reviews",
            "10.96.0.10",
            json!({"app": "reviews"}),
        )],
    )
    .await;
    let shutdown = CancellationToken::new();
    let mut watching = kubernetes::watch(api.client(), options(), shutdown.clone())
        .await
        .unwrap();

    let model = watching.models.borrow_and_update().clone();
    assert_eq!(meshed(&model, "demo", "reviews-1"), Some(true));
    assert_eq!(meshed(&model, "demo", "opted-out"), Some(false));
    assert_eq!(meshed(&model, "plain", "legacy"), Some(false));
    // Scheduled without an IP yet: a workload of its node (whose ztunnel captures it when the
    // CNI plugin runs), but no service's endpoint until it has an address.
    assert_eq!(meshed(&model, "demo", "starting"), Some(true));
    assert!(
        model
            .workload(&ObjectKey::new("demo", "starting"))
            .unwrap()
            .pod
            .addresses
            .is_empty()
    );
    let reviews = model.service(&ObjectKey::new("demo", "reviews")).unwrap();
    assert_eq!(
        reviews.endpoints,
        vec![
            ObjectKey::new("demo", "opted-out"),
            ObjectKey::new("demo", "reviews-1")
        ]
    );
    // The named target port resolves on no pod (none declares "web"): that port is left out.
    let ports: Vec<u16> = reviews.service.ports.iter().map(|p| p.port).collect();
    assert_eq!(ports, vec![80]);

    // A pod added through the watch shows up in the published model, as an endpoint.
    api.send(
        PODS,
        "ADDED",
        pod(
            "demo",
            "reviews-2",
            Some("10.244.0.5"),
            json!({"app": "reviews"}),
        ),
    );
    let first = model;
    let model = model_where(&mut watching.models, |m| {
        meshed(m, "demo", "reviews-2").is_some()
    })
    .await;
    assert!(
        model.changes_since(&first).is_some(),
        "the pod's event is applied to the model in force, not built whole"
    );
    assert_eq!(meshed(&model, "demo", "reviews-2"), Some(true));
    let reviews = model.service(&ObjectKey::new("demo", "reviews")).unwrap();
    assert!(
        reviews
            .endpoints
            .contains(&ObjectKey::new("demo", "reviews-2"))
    );

    // The pending pod gets its IP; the plain namespace opts in.
    api.send(
        PODS,
        "MODIFIED",
        pod(
            "demo",
            "starting",
            Some("10.244.0.6"),
            json!({"app": "reviews"}),
        ),
    );
    api.send(
        NAMESPACES,
        "MODIFIED",
        namespace("plain", json!({"ambit.io/dataplane-mode": "ambient"})),
    );
    let model = model_where(&mut watching.models, |m| {
        m.service(&ObjectKey::new("demo", "reviews"))
            .is_some_and(|s| s.endpoints.contains(&ObjectKey::new("demo", "starting")))
            && meshed(m, "plain", "legacy") == Some(true)
    })
    .await;
    assert_eq!(model.workloads().count(), 6);

    // A deleted pod leaves the model and its service's endpoints.
    api.send(
        PODS,
        "DELETED",
        pod(
            "demo",
            "reviews-1",
            Some("10.244.0.1"),
            json!({"app": "reviews"}),
        ),
    );
    let model = model_where(&mut watching.models, |m| {
        meshed(m, "demo", "reviews-1").is_none()
    })
    .await;
    let reviews = model.service(&ObjectKey::new("demo", "reviews")).unwrap();
    assert!(
        !reviews
            .endpoints
            .contains(&ObjectKey::new("demo", "reviews-1"))
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), watching.task)
        .await
        .expect("the source did not stop on shutdown")
        .unwrap();
}

#[tokio::test]
async fn an_unreachable_api_fails_the_start_with_a_clear_error() {
    // A port nobody listens on: bind, note it, close.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let options = Options {
        sync_timeout: Duration::from_millis(500),
        ..Options::default()
    };
    let error = kubernetes::watch(client, options, CancellationToken::new())
        .await
        .err()
        .expect("the start should fail");
    assert!(
        matches!(error, KubernetesError::NotSynced { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("RBAC"), "{error}");
}
