use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use ambit_proto::api::discovery::Resource;
use ambit_proto::api::route as rpb;
use prost::Message;

use super::*;
use crate::model::{MeshBuilder, Route, TrafficPolicy};
use crate::push::Snapshot;
use crate::push::session::Session;
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
";

/// `<service>.<namespace>` as a service host name.
fn host(short: &str) -> String {
    format!("{short}.svc.cluster.local")
}

/// Route `<ns>/<name>` attached to `parents`, sending to `backends` on `port` (all short host
/// names, see [`host`]). Routes are built here rather than written in the mesh file, so these
/// tests follow the route's wire form, not the file's route syntax.
fn route(ns: &str, name: &str, parents: &[&str], backends: &[&str], port: u32) -> Route {
    Route {
        name: name.into(),
        namespace: ns.into(),
        parents: parents
            .iter()
            .map(|p| rpb::ParentRef {
                service: host(p),
                port: 0,
            })
            .collect(),
        rules: vec![rpb::RouteRule {
            backends: backends
                .iter()
                .map(|b| rpb::BackendRef {
                    service: host(b),
                    port,
                    weight: 1,
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// MESH's one route.
fn mesh_routes(port: u32) -> Vec<Route> {
    vec![route(
        "shop",
        "pay-route",
        &["pay.shop"],
        &["pay.shop"],
        port,
    )]
}

/// The model of a mesh file with `routes` added.
fn model_of(text: &str, routes: Vec<Route>) -> MeshModel {
    model_with(text, routes, Vec::new())
}

/// The model of a mesh file with `routes` and `traffic` policies added.
fn model_with(text: &str, routes: Vec<Route>, traffic: Vec<TrafficPolicy>) -> MeshModel {
    let model = parse(text, "scope test").unwrap().model;
    let mut b = MeshBuilder::new(model.trust_domain(), model.cluster_id());
    for n in model.nodes() {
        b.node(n.clone());
    }
    let namespaces: BTreeSet<&str> = model
        .workloads()
        .map(|w| w.pod.namespace.as_str())
        .chain(model.services().map(|s| s.service.namespace.as_str()))
        .chain(model.waypoints().map(|w| w.namespace.as_str()))
        .collect();
    for ns in namespaces {
        b.namespace(model.namespace(ns).unwrap().clone());
    }
    for w in model.workloads() {
        b.pod(w.pod.clone());
    }
    for s in model.services() {
        b.service(s.service.clone());
    }
    for w in model.waypoints() {
        b.waypoint(w.clone());
    }
    for p in model.policies() {
        b.policy(p.clone());
    }
    for r in routes {
        b.route(r);
    }
    for p in traffic {
        b.traffic_policy(p);
    }
    b.build().unwrap()
}

fn scope_in(model: MeshModel, kind: ProxyKind, namespace: &str, name: &str) -> Vec<String> {
    let snapshot = Snapshot::build(Arc::new(model), None);
    let subscriber = Subscriber {
        kind: kind.into(),
        name: name.into(),
        namespace: namespace.into(),
        ..Default::default()
    };
    let mut keys: Vec<String> = scope_of(&snapshot, &subscriber)
        .iter()
        .map(ToString::to_string)
        .collect();
    keys.sort();
    keys
}

fn scope(kind: ProxyKind, namespace: &str, name: &str) -> Vec<String> {
    scope_in(model_of(MESH, mesh_routes(80)), kind, namespace, name)
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
        ..Default::default()
    }
}

fn snapshot_of(text: &str, previous: Option<&Snapshot>) -> Snapshot {
    snapshot_with(text, mesh_routes(80), previous)
}

fn snapshot_with(text: &str, routes: Vec<Route>, previous: Option<&Snapshot>) -> Snapshot {
    Snapshot::build(Arc::new(model_of(text, routes)), previous)
}

fn versions(d: &Desired) -> Vec<(String, u64)> {
    d.iter().map(|(k, r)| (k.to_string(), r.version)).collect()
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

fn subscriber(kind: ProxyKind, namespace: &str, name: &str) -> Subscriber {
    Subscriber {
        kind: kind.into(),
        name: name.into(),
        namespace: namespace.into(),
        ..Default::default()
    }
}

/// The resources of a response, as keys.
fn sent(response: &ambit_proto::response_parts::EncodedResponse) -> Vec<String> {
    let mut names: Vec<String> = response
        .resources
        .iter()
        .map(|bytes| Resource::decode(bytes.clone()).unwrap().name)
        .collect();
    names.sort();
    names
}

#[test]
fn ztunnels_get_no_routes_in_the_full_state_or_in_deltas_and_waypoints_do() {
    let before = snapshot_with(MESH, mesh_routes(80), None);
    // Only the route changes (its backend port).
    let after = snapshot_with(MESH, mesh_routes(8080), Some(&before));
    let route = ResourceKey::new(ResourceType::Route, "shop/pay-route");
    assert_ne!(
        before.resource(&route).unwrap().version,
        after.resource(&route).unwrap().version
    );
    for node in ["a", "b", "c", "not-a-node"] {
        let sub = ztunnel_of(node);
        let full = desired_for(&before, &sub);
        assert!(
            full.keys().all(|k| k.kind != ResourceType::Route),
            "node {node}"
        );
        let mut session = Session::new(HashMap::new());
        let first = session.next_response(&full).unwrap();
        session.answer(&first.nonce, "");
        let since = desired_since(&after, &sub, &full);
        assert!(
            since.keys().all(|k| k.kind != ResourceType::Route),
            "node {node}"
        );
        assert!(
            session.next_response(&since).is_none(),
            "node {node}: a route change sends a ztunnel nothing"
        );
    }
    let sub = subscriber(ProxyKind::Waypoint, "shop", "shop-wp");
    let full = desired_for(&before, &sub);
    let mut session = Session::new(HashMap::new());
    let first = session.next_response(&full).unwrap();
    assert!(sent(&first).contains(&"shop/pay-route".to_string()));
    session.answer(&first.nonce, "");
    let delta = session
        .next_response(&desired_since(&after, &sub, &full))
        .unwrap();
    assert_eq!(sent(&delta), ["shop/pay-route"]);
}

/// shop-wp serves shop (but not direct, which opted out) and the pod solo-1; a route on cart
/// splits it between backends in namespace pay, which uses no waypoint; namespace other has a
/// waypoint and a route of its own.
const BACKENDS_MESH: &str = "
nodes: [{name: a}, {name: b}]
namespaces:
  - name: shop
    labels: {ambit.io/dataplane-mode: ambient, ambit.io/use-waypoint: shop-wp}
  - name: pay
    labels: {ambit.io/dataplane-mode: ambient}
  - name: other
    labels: {ambit.io/dataplane-mode: ambient, ambit.io/use-waypoint: other-wp}
waypoints:
  - {name: shop-wp, namespace: shop, node: b, ipv4: 10.244.2.100}
  - {name: other-wp, namespace: other, node: b, ipv4: 10.244.2.101}
pods:
  - {name: cart-1, namespace: shop, node: a, labels: {app: cart}, ipv4: 10.244.1.2}
  - {name: direct-1, namespace: shop, node: a, labels: {app: direct}, ipv4: 10.244.1.3}
  - name: solo-1
    namespace: shop
    node: a
    labels: {app: solo, ambit.io/use-waypoint: shop-wp}
    ipv4: 10.244.1.5
  - {name: pay-v1-1, namespace: pay, node: a, labels: {app: pay-v1}, ipv4: 10.244.1.4}
  - {name: pay-v2-1, namespace: pay, node: b, labels: {app: pay-v2}, ipv4: 10.244.2.4}
  - {name: unrelated-1, namespace: pay, node: b, labels: {app: unrelated}, ipv4: 10.244.2.5}
  - {name: o-1, namespace: other, node: b, labels: {app: o}, ipv4: 10.244.2.6}
services:
  - {name: cart, namespace: shop, vips: [10.96.0.1], ports: [{port: 80}], selector: {app: cart}}
  - name: direct
    namespace: shop
    vips: [10.96.0.2]
    ports: [{port: 80}]
    selector: {app: direct}
    labels: {ambit.io/use-waypoint: none}
  - {name: pay-v1, namespace: pay, vips: [10.96.1.1], ports: [{port: 80}], selector: {app: pay-v1}}
  - {name: pay-v2, namespace: pay, vips: [10.96.1.2], ports: [{port: 80}], selector: {app: pay-v2}}
  - {name: unrelated, namespace: pay, vips: [10.96.1.3], ports: [{port: 80}], selector: {app: unrelated}}
  - {name: o, namespace: other, vips: [10.96.2.1], ports: [{port: 80}], selector: {app: o}}
authorizationPolicies:
  - {name: cart-policy, namespace: shop, selector: {matchLabels: {app: cart}}, action: ALLOW}
  - {name: direct-policy, namespace: shop, selector: {matchLabels: {app: direct}}, action: ALLOW}
  - {name: solo-policy, namespace: shop, selector: {matchLabels: {app: solo}}, action: ALLOW}
  - {name: pay-v1-policy, namespace: pay, selector: {matchLabels: {app: pay-v1}}, action: ALLOW}
  - {name: pay-all, namespace: pay, action: DENY}
  - {name: unrelated-policy, namespace: pay, selector: {matchLabels: {app: unrelated}}, action: DENY}
  - {name: o-policy, namespace: other, action: DENY}
";

fn backends_model() -> MeshModel {
    model_of(
        BACKENDS_MESH,
        vec![
            route(
                "shop",
                "cart-split",
                &["cart.shop"],
                &["pay-v1.pay", "pay-v2.pay"],
                80,
            ),
            // Attached to a service shop-wp does not serve.
            route(
                "shop",
                "direct-route",
                &["direct.shop"],
                &["unrelated.pay"],
                80,
            ),
            route("other", "o-route", &["o.other"], &["unrelated.pay"], 80),
        ],
    )
}

#[test]
fn a_waypoint_gets_its_routes_backends_elsewhere_their_endpoints_and_their_policies() {
    assert_eq!(
        scope_in(backends_model(), ProxyKind::Waypoint, "shop", "shop-wp"),
        [
            "authorization_policy/pay/pay-all",
            "authorization_policy/pay/pay-v1-policy",
            "authorization_policy/shop/cart-policy",
            "authorization_policy/shop/solo-policy",
            "route/shop/cart-split",
            "service/pay/pay-v1",
            "service/pay/pay-v2",
            "service/shop/cart",
            "workload/local//Pod/pay/pay-v1-1",
            "workload/local//Pod/pay/pay-v2-1",
            "workload/local//Pod/shop/cart-1",
            // Backs no service, but traffic to its address goes through shop-wp.
            "workload/local//Pod/shop/solo-1",
        ],
        "not: direct (opted out), its pod, policy and route; unrelated and its policy; other"
    );
    assert_eq!(
        scope_in(backends_model(), ProxyKind::Waypoint, "other", "other-wp"),
        [
            "authorization_policy/other/o-policy",
            "authorization_policy/pay/pay-all",
            "authorization_policy/pay/unrelated-policy",
            "route/other/o-route",
            "service/other/o",
            "service/pay/unrelated",
            "workload/local//Pod/other/o-1",
            "workload/local//Pod/pay/unrelated-1",
        ]
    );
}

/// A traffic policy `<ns>/<name>` on service `<name>.<ns>`, its pool allowing `max_connections`.
fn traffic(ns: &str, name: &str, max_connections: u32) -> TrafficPolicy {
    TrafficPolicy {
        name: name.into(),
        namespace: ns.into(),
        target: host(&format!("{name}.{ns}")),
        connection_pool: Some(ambit_proto::api::traffic::ConnectionPool {
            max_connections,
            ..Default::default()
        }),
        outlier_detection: None,
    }
}

/// BACKENDS_MESH's routes, with a traffic policy on every service but `pay-v2`.
fn traffic_model(max_connections: u32) -> MeshModel {
    let routes: Vec<Route> = backends_model().routes().cloned().collect();
    let policies = [
        ("shop", "cart"),
        ("shop", "direct"),
        ("pay", "pay-v1"),
        ("pay", "unrelated"),
        ("other", "o"),
    ];
    model_with(
        BACKENDS_MESH,
        routes,
        policies
            .iter()
            .map(|(ns, name)| traffic(ns, name, max_connections))
            .collect(),
    )
}

fn traffic_keys(model: MeshModel, kind: ProxyKind, namespace: &str, name: &str) -> Vec<String> {
    scope_in(model, kind, namespace, name)
        .into_iter()
        .filter(|k| k.starts_with("traffic_policy/"))
        .collect()
}

#[test]
fn a_waypoint_gets_the_traffic_policies_of_its_services_and_route_backends_only() {
    assert_eq!(
        traffic_keys(traffic_model(100), ProxyKind::Waypoint, "shop", "shop-wp"),
        ["traffic_policy/pay/pay-v1", "traffic_policy/shop/cart"],
        "cart is shop-wp's, pay-v1 a backend of its route; not direct (opted out), unrelated, o"
    );
    assert_eq!(
        traffic_keys(traffic_model(100), ProxyKind::Waypoint, "other", "other-wp"),
        ["traffic_policy/other/o", "traffic_policy/pay/unrelated"]
    );
    for node in ["a", "b"] {
        assert_eq!(
            traffic_keys(traffic_model(100), ProxyKind::Ztunnel, "", node),
            Vec::<String>::new(),
            "node {node}"
        );
    }
}

#[test]
fn a_traffic_policy_change_is_one_waypoint_delta_and_nothing_for_ztunnels() {
    let before = Snapshot::build(Arc::new(traffic_model(100)), None);
    let after = Snapshot::build(Arc::new(traffic_model(200)), Some(&before));
    let key = ResourceKey::new(ResourceType::TrafficPolicy, "shop/cart");
    assert_ne!(
        before.resource(&key).unwrap().version,
        after.resource(&key).unwrap().version
    );
    for node in ["a", "b"] {
        let sub = ztunnel_of(node);
        let full = desired_for(&before, &sub);
        let mut session = Session::new(HashMap::new());
        let first = session.next_response(&full).unwrap();
        session.answer(&first.nonce, "");
        assert!(
            session
                .next_response(&desired_since(&after, &sub, &full))
                .is_none(),
            "node {node}: a traffic policy change sends a ztunnel nothing"
        );
    }
    let sub = subscriber(ProxyKind::Waypoint, "shop", "shop-wp");
    let full = desired_for(&before, &sub);
    let mut session = Session::new(HashMap::new());
    let first = session.next_response(&full).unwrap();
    session.answer(&first.nonce, "");
    let delta = session
        .next_response(&desired_since(&after, &sub, &full))
        .unwrap();
    assert_eq!(sent(&delta), ["pay/pay-v1", "shop/cart"]);
    let decoded: Vec<_> = delta
        .resources
        .iter()
        .map(|bytes| Resource::decode(bytes.clone()).unwrap())
        .collect();
    assert!(decoded.iter().all(|r| matches!(
        &r.kind,
        Some(ambit_proto::api::discovery::resource::Kind::TrafficPolicy(p))
            if p.connection_pool.as_ref().unwrap().max_connections == 200
    )));
}
