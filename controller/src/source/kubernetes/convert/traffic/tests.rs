use std::sync::Arc;

use serde_json::{Value, json};

use super::super::{Objects, convert};
use crate::model::{Kind, MeshModel, ObjectKey, ResourceRef};
use crate::source::kubernetes::{Options, Skip, assemble};

fn object<T: serde::de::DeserializeOwned>(value: Value) -> Arc<T> {
    Arc::new(serde_json::from_value(value).unwrap())
}

fn service(name: &str, vip: &str, labels: Value) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "demo", "labels": labels},
        "spec": {"clusterIP": vip, "clusterIPs": [vip], "selector": {"app": name},
                 "ports": [{"name": "http", "port": 9080}]}
    })
}

fn policy(name: &str, created: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "ambit.io/v1alpha1", "kind": "TrafficPolicy",
        "metadata": {"name": name, "namespace": "demo", "creationTimestamp": created},
        "spec": spec
    })
}

const EARLY: &str = "2026-01-01T00:00:00Z";
const LATE: &str = "2026-06-01T00:00:00Z";

/// Namespace demo uses waypoint `wp`; `direct` opts out of it.
fn build(policies: Vec<Value>, extra_services: Vec<Value>) -> (MeshModel, Vec<Skip>) {
    let mut services = vec![
        service("reviews", "10.96.0.10", json!({})),
        service(
            "direct",
            "10.96.0.11",
            json!({"ambit.io/use-waypoint": "none"}),
        ),
    ];
    services.extend(extra_services);
    let objects = Objects {
        namespaces: vec![object(json!({"metadata": {
            "name": "demo",
            "labels": {"ambit.io/dataplane-mode": "ambient", "ambit.io/use-waypoint": "wp"}
        }}))],
        gateways: vec![object(json!({
            "metadata": {"name": "wp", "namespace": "demo"},
            "spec": {"gatewayClassName": "ambit-waypoint",
                     "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}
        }))],
        services: services.into_iter().map(object).collect(),
        traffic_policies: policies.into_iter().map(object).collect(),
        ..Objects::default()
    };
    let input = convert(&objects, "cluster.local");
    let a = assemble(&input, &Options::default().mesh_settings()).unwrap();
    (a.model, a.skips)
}

fn about<'a>(skips: &'a [Skip], name: &str) -> Vec<&'a str> {
    skips
        .iter()
        .filter(|s| s.subject == ResourceRef::new(Kind::TrafficPolicy, format!("demo/{name}")))
        .map(|s| s.reason.as_str())
        .collect()
}

#[test]
fn a_policy_is_checked_converted_and_in_the_model() {
    let (model, skips) = build(
        vec![policy(
            "reviews",
            EARLY,
            json!({
                "targetRef": {"group": "", "kind": "Service", "name": "reviews"},
                "connectionPool": {"http": {"http1MaxPendingRequests": 10}},
                "outlierDetection": {"consecutive5xxErrors": 5, "maxEjectionPercent": 50}
            }),
        )],
        vec![],
    );
    assert!(about(&skips, "reviews").is_empty(), "{skips:?}");
    let p = model
        .traffic_policy_for("reviews.demo.svc.cluster.local")
        .unwrap();
    assert_eq!(p.name, "reviews");
    assert_eq!(p.connection_pool.as_ref().unwrap().max_pending_requests, 10);
    assert_eq!(
        p.outlier_detection.as_ref().unwrap().max_ejection_percent,
        50
    );
}

#[test]
fn an_unsupported_field_kept_by_the_crd_refuses_the_whole_policy_with_every_reason() {
    let (model, skips) = build(
        vec![policy(
            "reviews",
            EARLY,
            json!({
                "targetRef": {"kind": "Service", "name": "reviews"},
                "connectionPool": {"tcp": {"maxConnections": 100}},
                "outlierDetection": {"maxEjectionPercent": 200},
                "loadBalancer": {"simple": "LEAST_REQUEST"}
            }),
        )],
        vec![],
    );
    assert_eq!(model.traffic_policies().count(), 0);
    let reasons = about(&skips, "reviews");
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    for part in [
        "spec.loadBalancer is not implemented by Ambit's waypoint",
        "spec.outlierDetection.maxEjectionPercent 200 is out of range",
        "the policy is not used until it is fixed (the service runs with the waypoint's defaults)",
    ] {
        assert!(reasons[0].contains(part), "{part}: {}", reasons[0]);
    }
}

#[test]
fn of_two_policies_for_one_service_the_older_keeps_it() {
    let spec = json!({
        "targetRef": {"kind": "Service", "name": "reviews"},
        "connectionPool": {"tcp": {"maxConnections": 100}}
    });
    // `b-old` sorts after `a-new` by name: only its age makes it the one in force.
    let (model, skips) = build(
        vec![
            policy("a-new", LATE, spec.clone()),
            policy("b-old", EARLY, spec),
        ],
        vec![],
    );
    let kept: Vec<&str> = model.traffic_policies().map(|p| p.name.as_str()).collect();
    assert_eq!(kept, ["b-old"]);
    let reasons = about(&skips, "a-new");
    assert!(
        reasons.iter().any(|r| r.contains("rejected by the model")
            && r.contains("traffic policy demo/b-old already targets")),
        "{skips:?}"
    );
}

#[test]
fn a_missing_or_rejected_target_leaves_the_policy_out() {
    let spec = |service: &str| {
        json!({
            "targetRef": {"kind": "Service", "name": service},
            "connectionPool": {}
        })
    };
    // `twin` claims reviews' VIP: the model rejects it, then the policy on it.
    let (model, skips) = build(
        vec![
            policy("ghost", EARLY, spec("ratings")),
            policy("twin", EARLY, spec("twin")),
        ],
        vec![service("twin", "10.96.0.10", json!({}))],
    );
    assert!(model.service(&ObjectKey::new("demo", "twin")).is_none());
    assert_eq!(model.traffic_policies().count(), 0);
    assert!(
        about(&skips, "ghost")[0]
            .contains("spec.targetRef names service demo/ratings, which does not exist"),
        "{skips:?}"
    );
    assert!(
        about(&skips, "twin")
            .iter()
            .any(|r| r.contains("rejected by the model")),
        "{skips:?}"
    );
}

#[test]
fn a_policy_on_a_service_without_waypoint_is_kept_and_noted() {
    let (model, skips) = build(
        vec![policy(
            "direct",
            EARLY,
            json!({"targetRef": {"kind": "Service", "name": "direct"}, "connectionPool": {}}),
        )],
        vec![],
    );
    assert_eq!(model.traffic_policies().count(), 1);
    assert!(
        about(&skips, "direct")[0].contains("service demo/direct uses no waypoint"),
        "{skips:?}"
    );
}
