use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use serde_json::{Value, json};

use super::*;
use crate::model::{AppProtocol, Kind, MtlsMode, ObjectKey, ResourceRef};

fn ns(name: &str, labels: Value) -> core::Namespace {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
}

fn pod(ns: &str, name: &str, ip: Option<&str>, labels: Value) -> core::Pod {
    let ips: Vec<Value> = ip.iter().map(|ip| json!({"ip": ip})).collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "nodeName": "node-a",
            "serviceAccountName": "sa-".to_string() + name,
            "containers": [{"name": "app", "ports": [{"name": "web", "containerPort": 8080}]}]
        },
        "status": {
            "phase": "Running",
            "podIPs": ips,
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    }))
    .unwrap()
}

fn service(ns: &str, name: &str, vip: &str, selector: Value, ports: Value) -> core::Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": vip, "clusterIPs": [vip], "selector": selector, "ports": ports}
    }))
    .unwrap()
}

fn build(
    namespaces: &[core::Namespace],
    pods: &[core::Pod],
    services: &[core::Service],
) -> (MeshModel, Vec<Skip>) {
    let objects = Objects {
        namespaces: namespaces.iter().cloned().map(Arc::new).collect(),
        pods: pods.iter().cloned().map(Arc::new).collect(),
        services: services.iter().cloned().map(Arc::new).collect(),
        ..Objects::default()
    };
    build_objects(&objects)
}

fn build_objects(objects: &Objects) -> (MeshModel, Vec<Skip>) {
    build_with(objects, MtlsMode::Permissive)
}

fn build_with(objects: &Objects, mtls_mode: MtlsMode) -> (MeshModel, Vec<Skip>) {
    let input = convert(objects, DEFAULT_TRUST_DOMAIN);
    let options = Options {
        mtls_mode,
        ..Options::default()
    };
    let a = assemble(&input, &options.mesh_settings()).unwrap();
    (a.model, a.skips)
}

fn meshed(model: &MeshModel, ns: &str, name: &str) -> bool {
    model.workload(&ObjectKey::new(ns, name)).unwrap().meshed
}

#[test]
fn namespace_opt_in_and_pod_opt_out() {
    let (model, skips) = build(
        &[
            ns("in", json!({"ambit.io/dataplane-mode": "ambient"})),
            ns("out", json!({})),
        ],
        &[
            pod("in", "a", Some("10.0.0.1"), json!({})),
            pod(
                "in",
                "b",
                Some("10.0.0.2"),
                json!({"ambit.io/dataplane-mode": "none"}),
            ),
            pod("out", "c", Some("10.0.0.3"), json!({})),
        ],
        &[],
    );
    assert!(skips.is_empty(), "{skips:?}");
    assert!(meshed(&model, "in", "a"));
    assert!(!meshed(&model, "in", "b"));
    assert!(!meshed(&model, "out", "c"));
    let a = model.workload(&ObjectKey::new("in", "a")).unwrap();
    assert_eq!(a.uid, "Kubernetes//Pod/in/a");
    assert_eq!(
        a.identity.to_string(),
        "spiffe://cluster.local/ns/in/sa/sa-a"
    );
    assert!(a.pod.healthy);
    assert_eq!(a.pod.node, "node-a");
    assert!(model.node("node-a").is_some());
}

#[test]
fn service_selects_its_pods_and_resolves_ports() {
    let (model, skips) = build(
        &[ns("demo", json!({}))],
        &[
            pod("demo", "r1", Some("10.0.0.1"), json!({"app": "reviews"})),
            pod("demo", "r2", Some("10.0.0.2"), json!({"app": "reviews"})),
            pod("demo", "other", Some("10.0.0.3"), json!({"app": "ratings"})),
        ],
        &[service(
            "demo",
            "reviews",
            "10.96.0.10",
            json!({"app": "reviews"}),
            json!([
                {"name": "http", "port": 80, "targetPort": 8080},
                {"name": "named", "port": 81, "targetPort": "web", "appProtocol": "grpc"},
                {"name": "grpc-x", "port": 82},
                {"name": "missing", "port": 83, "targetPort": "nope"},
                {"name": "dns", "port": 53, "protocol": "UDP"}
            ]),
        )],
    );
    let svc = model.service(&ObjectKey::new("demo", "reviews")).unwrap();
    assert_eq!(
        svc.endpoints,
        vec![ObjectKey::new("demo", "r1"), ObjectKey::new("demo", "r2")]
    );
    assert_eq!(
        svc.service.vips,
        vec!["10.96.0.10".parse::<IpAddr>().unwrap()]
    );
    let ports: Vec<(u16, u16, AppProtocol)> = svc
        .service
        .ports
        .iter()
        .map(|p| (p.port, p.target_port, p.app_protocol))
        .collect();
    assert_eq!(
        ports,
        vec![
            (80, 8080, AppProtocol::Http),
            (81, 8080, AppProtocol::Grpc),
            (82, 82, AppProtocol::Grpc),
        ]
    );
    let subject = ResourceRef::new(Kind::Service, "demo/reviews");
    assert_eq!(skips.len(), 2, "{skips:?}");
    assert!(skips.iter().all(|s| s.subject == subject));
    assert!(
        skips.iter().any(|s| s.reason.contains("\"nope\"")),
        "{skips:?}"
    );
    assert!(skips.iter().any(|s| s.reason.contains("UDP")), "{skips:?}");
}

#[test]
fn bad_objects_are_skipped_with_a_reason_not_fatal() {
    let mut pending = pod("demo", "pending", None, json!({}));
    pending.spec.as_mut().unwrap().node_name = None;
    let mut host = pod("demo", "host", Some("192.168.0.1"), json!({}));
    host.spec.as_mut().unwrap().host_network = Some(true);
    let (model, skips) = build(
        &[ns("demo", json!({"ambit.io/dataplane-mode": "sideways"}))],
        &[
            pod("demo", "no-ip", None, json!({})),
            pending,
            host,
            pod("demo", "first", Some("10.0.0.9"), json!({})),
            // Same IP as `first`: the model rejects the later one, the rest is served.
            pod(
                "demo",
                "second",
                Some("10.0.0.9"),
                json!({"ambit.io/use-waypoint": "wp"}),
            ),
        ],
        &[],
    );
    let names: Vec<String> = model.workloads().map(|w| w.pod.name.clone()).collect();
    // A scheduled pod without an IP yet is in: the CNI plugin hands it to ztunnel before the
    // API learns its IP.
    assert_eq!(names, vec!["first", "no-ip"]);
    let no_ip = model.workloads().find(|w| w.pod.name == "no-ip").unwrap();
    assert!(no_ip.pod.addresses.is_empty());
    assert!(!meshed(&model, "demo", "first"));
    let reason = |name: &str| {
        skips
            .iter()
            .filter(|s| s.subject.name == name)
            .map(|s| s.reason.clone())
            .collect::<Vec<_>>()
            .join("; ")
    };
    assert_eq!(reason("demo/no-ip"), "", "{skips:?}");
    assert!(
        reason("demo/pending").contains("not scheduled"),
        "{skips:?}"
    );
    assert!(reason("demo/host").contains("host network"), "{skips:?}");
    assert!(reason("demo/second").contains("10.0.0.9"), "{skips:?}");
    assert!(reason("demo/second").contains("waypoint"), "{skips:?}");
    assert!(reason("demo").contains("sideways"), "{skips:?}");
}

#[test]
fn the_mtls_mode_label_overrides_the_flag_and_a_bad_value_fails_closed() {
    let meshed_ns = |name: &str, mode: Option<&str>| {
        let mut labels = json!({"ambit.io/dataplane-mode": "ambient"});
        if let Some(mode) = mode {
            labels["ambit.io/mtls-mode"] = json!(mode);
        }
        ns(name, labels)
    };
    let objects = Objects {
        namespaces: [
            meshed_ns("plain", None),
            meshed_ns("strict", Some("strict")),
            meshed_ns("permissive", Some("permissive")),
            meshed_ns("typo", Some("strcit")),
        ]
        .into_iter()
        .map(Arc::new)
        .collect(),
        pods: ["plain", "strict", "permissive", "typo"]
            .iter()
            .enumerate()
            .map(|(i, n)| Arc::new(pod(n, "p", Some(&format!("10.0.0.{}", i + 1)), json!({}))))
            .collect(),
        ..Objects::default()
    };
    let modes = |flag: MtlsMode| {
        let (model, skips) = build_with(&objects, flag);
        let mode = |n: &str| model.workload(&ObjectKey::new(n, "p")).unwrap().mtls_mode;
        let modes = ["plain", "strict", "permissive", "typo"].map(mode);
        (modes, skips)
    };
    use MtlsMode::{Permissive, Strict};
    let (by_default, skips) = modes(Permissive);
    assert_eq!(by_default, [Permissive, Strict, Permissive, Strict]);
    let (mesh_strict, _) = modes(Strict);
    assert_eq!(mesh_strict, [Strict, Strict, Permissive, Strict]);
    assert_eq!(skips.len(), 1, "{skips:?}");
    assert_eq!(skips[0].subject, ResourceRef::new(Kind::Namespace, "typo"));
    assert!(
        skips[0].reason.contains("\"strcit\"")
            && skips[0].reason.contains("treating the namespace as strict"),
        "{}",
        skips[0].reason
    );
}

#[test]
fn the_policy_mode_label_puts_a_namespaces_policies_in_observer_mode_and_a_bad_value_enforces() {
    let names = ["plain", "audit", "typo"];
    let objects = Objects {
        namespaces: [
            ns("plain", json!({})),
            ns("audit", json!({"ambit.io/policy-mode": "audit"})),
            ns("typo", json!({"ambit.io/policy-mode": "audti"})),
        ]
        .into_iter()
        .map(Arc::new)
        .collect(),
        policies: names
            .iter()
            .map(|n| {
                Arc::new(
                    serde_json::from_value(json!({
                        "apiVersion": "ambit.io/v1alpha1", "kind": "AuthorizationPolicy",
                        "metadata": {"name": "deny-all", "namespace": n},
                        "spec": {"action": "DENY", "rules": [{}]}
                    }))
                    .unwrap(),
                )
            })
            .collect(),
        ..Objects::default()
    };
    let (model, skips) = build_objects(&objects);
    let dry_run = |n: &str| {
        let p = model.policies().find(|p| p.namespace == n).unwrap();
        model.policy_proto(p).dry_run
    };
    assert_eq!(names.map(dry_run), [false, true, false]);
    let typo: Vec<_> = skips
        .iter()
        .filter(|s| s.subject == ResourceRef::new(Kind::Namespace, "typo"))
        .collect();
    assert_eq!(typo.len(), 1, "{skips:?}");
    assert!(
        typo[0].reason.contains("\"audti\"") && typo[0].reason.contains("enforced"),
        "{}",
        typo[0].reason
    );
}

#[test]
fn the_egress_scope_annotation_declares_a_scope_and_a_bad_one_fails_closed() {
    let scoped = |name: &str, value: &str| {
        serde_json::from_value::<core::Namespace>(json!({"metadata": {
            "name": name,
            "labels": {"ambit.io/dataplane-mode": "ambient"},
            "annotations": {"ambit.io/egress-scope": value},
        }}))
        .unwrap()
    };
    let (model, skips) = build(
        &[
            scoped("shop", "./*, payments/api"),
            scoped("typo", "payments"),
        ],
        &[],
        &[],
    );
    let shop = model.egress_scope("shop").unwrap();
    assert_eq!(shop.declared, "./*, payments/api");
    assert_eq!(shop.hosts.len(), 2);
    assert_eq!(shop.invalid, None);
    let typo = model.egress_scope("typo").unwrap();
    assert!(typo.hosts.is_empty());
    assert!(
        typo.invalid
            .as_deref()
            .unwrap()
            .contains("is not <namespace>/<service>")
    );
    assert_eq!(skips.len(), 1, "{skips:?}");
    assert_eq!(skips[0].subject, ResourceRef::new(Kind::Namespace, "typo"));
    assert!(
        skips[0].reason.contains("refused until it is fixed"),
        "{}",
        skips[0].reason
    );
}

mod update;
