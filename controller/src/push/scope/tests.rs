use std::sync::Arc;

use super::*;
use crate::push::Snapshot;
use crate::source::file::parse;

const MESH: &str = "
nodes: [{name: a}, {name: b}, {name: c}]
namespaces:
  - name: shop
    labels: {ambit.io/dataplane-mode: ambient, ambit.io/use-waypoint: shop-wp}
  - name: legacy
waypoints:
  - {name: shop-wp, namespace: shop, node: b, ipv4: 10.244.2.100}
pods:
  - {name: cart-1, namespace: shop, node: a, labels: {app: cart}, ipv4: 10.244.1.2}
  - {name: pay-1, namespace: shop, node: b, labels: {app: pay}, ipv4: 10.244.2.2}
  - {name: old-1, namespace: legacy, node: a, labels: {app: old}, ipv4: 10.244.1.3}
  - {name: old-2, namespace: legacy, node: c, labels: {app: old}, ipv4: 10.244.3.2}
  - {name: lonely, namespace: legacy, node: b, ipv4: 10.244.2.3}
services:
  - {name: cart, namespace: shop, vips: [10.96.0.1], ports: [{port: 80}], selector: {app: cart}}
  - {name: pay, namespace: shop, vips: [10.96.0.2], ports: [{port: 80}], selector: {app: pay}}
  - {name: old, namespace: legacy, vips: [10.96.0.3], ports: [{port: 80}], selector: {app: old}}
authorizationPolicies:
  - {name: cart-policy, namespace: shop, selector: {matchLabels: {app: cart}}, action: ALLOW}
  - {name: all, namespace: shop, action: DENY}
  - {name: old-policy, namespace: legacy, selector: {matchLabels: {app: old}}, action: DENY}
routes:
  - name: pay-route
    namespace: shop
    hostnames: [pay.shop.svc.cluster.local]
    rules: [{backends: [{service: pay.shop.svc.cluster.local, port: 80}]}]
";

fn scope(kind: ProxyKind, namespace: &str, name: &str) -> Vec<String> {
    let model = parse(MESH, "scope test").unwrap().model;
    let snapshot = Snapshot::build(Arc::new(model), None);
    let subscriber = Subscriber {
        kind: kind.into(),
        name: name.into(),
        namespace: namespace.into(),
        version: String::new(),
    };
    let mut keys: Vec<String> = scope_of(&snapshot, &subscriber)
        .iter()
        .map(ToString::to_string)
        .collect();
    keys.sort();
    keys
}

#[test]
fn a_ztunnel_gets_its_pods_what_they_can_reach_and_the_policies_it_enforces() {
    assert_eq!(
        scope(ProxyKind::Ztunnel, "", "a"),
        [
            "authorization_policy/shop/all",
            "authorization_policy/shop/cart-policy",
            "service/legacy/old",
            "service/shop/cart",
            "service/shop/pay",
            "waypoint/shop/shop-wp",
            "workload/local//Pod/legacy/old-1",
            "workload/local//Pod/legacy/old-2",
            "workload/local//Pod/shop/cart-1",
            "workload/local//Pod/shop/pay-1",
        ],
        "old-policy selects only unmeshed pods, lonely backs no service and is on another node"
    );
    assert_eq!(
        scope(ProxyKind::Ztunnel, "", "b"),
        [
            "authorization_policy/shop/all",
            "service/legacy/old",
            "service/shop/cart",
            "service/shop/pay",
            "waypoint/shop/shop-wp",
            "workload/local//Pod/legacy/lonely",
            "workload/local//Pod/legacy/old-1",
            "workload/local//Pod/legacy/old-2",
            "workload/local//Pod/shop/cart-1",
            "workload/local//Pod/shop/pay-1",
        ]
    );
}

#[test]
fn a_node_without_meshed_pods_gets_only_its_own_workloads() {
    assert_eq!(
        scope(ProxyKind::Ztunnel, "", "c"),
        ["workload/local//Pod/legacy/old-2"]
    );
    assert!(scope(ProxyKind::Ztunnel, "", "not-a-node").is_empty());
}

#[test]
fn a_waypoint_gets_its_namespace_services_endpoints_routes_and_policies() {
    assert_eq!(
        scope(ProxyKind::Waypoint, "shop", "shop-wp"),
        [
            "authorization_policy/shop/all",
            "authorization_policy/shop/cart-policy",
            "route/shop/pay-route",
            "service/shop/cart",
            "service/shop/pay",
            "workload/local//Pod/shop/cart-1",
            "workload/local//Pod/shop/pay-1",
        ]
    );
    assert!(scope(ProxyKind::Waypoint, "legacy", "shop-wp").is_empty());
    assert!(scope(ProxyKind::Unspecified, "shop", "shop-wp").is_empty());
}

#[test]
fn resource_keys_read_back_what_they_print() {
    let key = ResourceKey::new(ResourceType::Workload, "local//Pod/shop/cart-1");
    assert_eq!(key.to_string(), "workload/local//Pod/shop/cart-1");
    assert_eq!(ResourceKey::parse(&key.to_string()), Some(key));
    let key = ResourceKey::new(ResourceType::AuthorizationPolicy, "shop/all");
    assert_eq!(
        ResourceKey::parse("authorization_policy/shop/all"),
        Some(key)
    );
    assert_eq!(ResourceKey::parse("gadget/shop/all"), None);
    assert_eq!(ResourceKey::parse("service/"), None);
}

fn ztunnel_of(node: &str) -> Subscriber {
    Subscriber {
        kind: ProxyKind::Ztunnel.into(),
        name: node.into(),
        namespace: String::new(),
        version: String::new(),
    }
}

fn snapshot_of(text: &str, previous: Option<&Snapshot>) -> Snapshot {
    Snapshot::build(Arc::new(parse(text, "scope test").unwrap().model), previous)
}

fn versions(d: &Desired) -> Vec<(String, String)> {
    d.iter()
        .map(|(k, r)| (k.to_string(), r.version.clone()))
        .collect()
}

#[test]
fn a_change_elsewhere_reuses_a_nodes_part_and_a_change_on_it_does_not() {
    let before = snapshot_of(MESH, None);
    // cart-1 (node a) gets a new label; node c runs nothing of shop.
    let edited = MESH.replace(
        "labels: {app: cart}, ipv4",
        "labels: {app: cart, v: 2}, ipv4",
    );
    let after = snapshot_of(&edited, Some(&before));
    for node in ["a", "b", "c"] {
        let sub = ztunnel_of(node);
        let previous = desired_for(&before, &sub);
        let since = desired_since(&after, &sub, &previous);
        let fresh = desired_for(&after, &sub);
        assert_eq!(versions(&since), versions(&fresh), "node {node}");
        assert_eq!(
            since.system_version(),
            fresh.system_version(),
            "node {node}"
        );
        let reused = Arc::ptr_eq(
            since.node_part.as_ref().unwrap(),
            previous.node_part.as_ref().unwrap(),
        );
        assert_eq!(reused, node != "a", "node {node}");
    }
    // A policy edit touches the nodes with a workload in its namespace (a and b run shop).
    let edited = MESH.replace(
        "{name: all, namespace: shop, action: DENY}",
        "{name: all, namespace: shop, action: ALLOW}",
    );
    let after = snapshot_of(&edited, Some(&before));
    let mut touched: Vec<_> = after.touched_nodes.clone().unwrap().into_iter().collect();
    touched.sort();
    assert_eq!(touched, ["a", "b"]);
    // A subscription that missed a snapshot cannot rely on what the last one touched.
    let later = snapshot_of(MESH, Some(&after));
    let sub = ztunnel_of("c");
    let stale = desired_for(&before, &sub);
    let since = desired_since(&later, &sub, &stale);
    assert!(!Arc::ptr_eq(
        since.node_part.as_ref().unwrap(),
        stale.node_part.as_ref().unwrap()
    ));
}
