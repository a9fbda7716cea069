//! Ambit's TrafficPolicy CRD through the Kubernetes source, against the fake API server over a
//! socket: listed, checked, refused whole when it asks for what the waypoint cannot do, and
//! followed through the watch.

use serde_json::json;

use crate::support::cluster::*;

#[tokio::test]
async fn traffic_policies_are_read_refused_whole_when_unsupported_and_followed() {
    let api = Cluster {
        namespaces: vec![namespace(
            "demo",
            json!({"ambit.io/dataplane-mode": "ambient", "ambit.io/use-waypoint": "wp"}),
        )],
        gateways: Some(vec![gateway("demo", "wp", "ambit-waypoint")]),
        pods: vec![pod(
            "demo",
            "reviews-1",
            "10.244.0.1",
            json!({"app": "reviews"}),
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
                "ratings",
                "10.96.0.11",
                Some(json!({"app": "ratings"})),
            ),
        ],
        traffic_policies: Some(vec![
            traffic_policy(
                "demo",
                "reviews",
                json!({
                    "targetRef": {"group": "", "kind": "Service", "name": "reviews"},
                    "connectionPool": {"http": {"http1MaxPendingRequests": 10}},
                    "outlierDetection": {"consecutive5xxErrors": 5}
                }),
            ),
            // Istio's load balancer setting: kept by the CRD's schema, refused here.
            traffic_policy(
                "demo",
                "ratings",
                json!({
                    "targetRef": {"kind": "Service", "name": "ratings"},
                    "connectionPool": {"tcp": {"maxConnections": 5}},
                    "loadBalancer": {"simple": "ROUND_ROBIN"}
                }),
            ),
        ]),
        ..Cluster::default()
    }
    .serve()
    .await;
    let (mut watching, shutdown) = start(&api).await;
    let model = watching.models.borrow_and_update().clone();
    let names: Vec<&str> = model.traffic_policies().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["reviews"]);
    let reviews = model
        .traffic_policy_for("reviews.demo.svc.cluster.local")
        .unwrap();
    assert_eq!(
        reviews
            .connection_pool
            .as_ref()
            .unwrap()
            .max_pending_requests,
        10
    );
    assert!(
        model
            .traffic_policy_for("ratings.demo.svc.cluster.local")
            .is_none()
    );

    // Fixed through the watch: the policy is taken.
    api.send(
        TRAFFIC_POLICIES,
        "MODIFIED",
        traffic_policy(
            "demo",
            "ratings",
            json!({
                "targetRef": {"kind": "Service", "name": "ratings"},
                "connectionPool": {"tcp": {"maxConnections": 5}}
            }),
        ),
    );
    let model = model_where(&mut watching.models, |m| {
        m.traffic_policy_for("ratings.demo.svc.cluster.local")
            .is_some()
    })
    .await;
    let ratings = model
        .traffic_policy_for("ratings.demo.svc.cluster.local")
        .unwrap();
    assert_eq!(ratings.connection_pool.as_ref().unwrap().max_connections, 5);
    shutdown.cancel();
    watching.task.await.unwrap();
}
