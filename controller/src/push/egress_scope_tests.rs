//! Egress scopes in the push: which ztunnels receive a namespace's scope (and, on demand, the
//! services it names), and that a change to either reaches them.

use std::sync::Arc;

use ambit_proto::api::discovery::{ProxyKind, ResourceType, Subscriber};

use super::on_demand::{self, Brought, Lookups};
use super::{ResourceKey, Snapshot, desired_for, desired_since};
use crate::model::{Edit, MeshModel, Pod};
use crate::source::file::parse;

/// `legacy` (pods on a and c) declares its scope as `SCOPE`; `shop` (pods on b) declares none.
const MESH: &str = "
nodes: [{name: a}, {name: b}, {name: c}]
namespaces:
  - name: shop
    labels: {ambit.io/dataplane-mode: ambient}
  - name: legacy
    labels: {ambit.io/dataplane-mode: ambient}
    egressScope: SCOPE
pods:
  - {name: pay-1, namespace: shop, node: b, labels: {app: pay}, ipv4: 10.244.2.2}
  - {name: cart-1, namespace: shop, node: b, labels: {app: cart}, ipv4: 10.244.2.3}
  - {name: old-1, namespace: legacy, node: a, labels: {app: old}, ipv4: 10.244.1.3}
  - {name: old-2, namespace: legacy, node: c, labels: {app: old}, ipv4: 10.244.3.2}
services:
  - {name: cart, namespace: shop, vips: [10.96.0.1], ports: [{port: 80}], selector: {app: cart}}
  - {name: pay, namespace: shop, vips: [10.96.0.2], ports: [{port: 80}], selector: {app: pay}}
  - {name: old, namespace: legacy, vips: [10.96.0.3], ports: [{port: 80}], selector: {app: old}}
";

fn model(scope: &str) -> Arc<MeshModel> {
    let text = MESH.replace("SCOPE", scope);
    Arc::new(parse(&text, "egress scope test").unwrap().model)
}

fn ztunnel(node: &str, on_demand: bool) -> Subscriber {
    Subscriber {
        kind: ProxyKind::Ztunnel.into(),
        name: node.into(),
        on_demand,
        ..Default::default()
    }
}

fn on_demand_keys(snapshot: &Snapshot, node: &str) -> Vec<String> {
    let lookups = Lookups::default();
    let d = on_demand::desired(
        snapshot,
        &ztunnel(node, true),
        &lookups,
        &mut Brought::default(),
        None,
    );
    let mut keys: Vec<String> = d.keys().map(ToString::to_string).collect();
    keys.sort();
    keys
}

fn scope_key(namespace: &str) -> ResourceKey {
    ResourceKey::new(ResourceType::EgressScope, namespace)
}

#[test]
fn the_nodes_running_a_namespaces_pods_get_its_scope() {
    let s = Snapshot::build(model("['./*', 'shop/pay']"), None);
    for node in ["a", "c"] {
        let d = desired_for(&s, &ztunnel(node, false));
        assert!(d.contains_key(&scope_key("legacy")), "node {node}");
    }
    assert!(!desired_for(&s, &ztunnel("b", false)).contains_key(&scope_key("legacy")));
    let wire = s.resource(&scope_key("legacy")).unwrap().decode();
    let Some(ambit_proto::api::discovery::resource::Kind::EgressScope(scope)) = &wire.kind else {
        panic!("an egress scope resource");
    };
    assert_eq!(scope.declared, "./*, shop/pay");
    assert_eq!(scope.hosts.len(), 2);
}

#[test]
fn on_demand_a_node_holds_the_services_its_scopes_name_without_their_endpoints() {
    let s = Snapshot::build(model("['./*', 'shop/pay']"), None);
    assert_eq!(
        on_demand_keys(&s, "c"),
        [
            "egress_scope/legacy",
            "service/legacy/old",
            "service/shop/pay",
            "workload/local//Pod/legacy/old-2",
        ]
    );
    // shop declares nothing: node b holds its own part only.
    assert!(
        !on_demand_keys(&s, "b")
            .iter()
            .any(|k| k.starts_with("egress_scope/"))
    );
}

#[test]
fn a_changed_scope_reaches_the_nodes_of_its_namespace_only() {
    let before = Snapshot::build(model("['./*']"), None);
    let after = Snapshot::build(model("['./*', 'shop/cart']"), Some(&before));
    let touched = after.touched_nodes.as_ref().unwrap();
    assert!(
        touched.contains("a") && touched.contains("c"),
        "{touched:?}"
    );
    assert!(!touched.contains("b"), "{touched:?}");
    let sub = ztunnel("c", false);
    let was = desired_for(&before, &sub);
    let now = desired_since(&after, &sub, &was);
    let version = |d: &super::Desired| d.get(&scope_key("legacy")).unwrap().version;
    assert_ne!(version(&was), version(&now));
    assert!(!desired_for(&after, &ztunnel("b", false)).contains_key(&scope_key("legacy")));
}

#[test]
fn a_change_to_a_named_service_reaches_the_nodes_whose_scopes_name_it() {
    let before = Snapshot::build(model("['./*', 'shop/pay']"), None);
    let pay_2 = Pod {
        name: "pay-2".into(),
        namespace: "shop".into(),
        service_account: "default".into(),
        node: "b".into(),
        addresses: vec!["10.244.2.4".parse().unwrap()],
        labels: [("app".to_string(), "pay".to_string())].into(),
        healthy: true,
    };
    let applied = Arc::new(before.model().apply([Edit::Pod(pay_2)]).unwrap());
    let after = Snapshot::build(applied, Some(&before));
    let touched = after.touched_nodes.as_ref().unwrap();
    // b runs the new endpoint; a and c hold shop/pay for legacy's scope.
    for node in ["a", "b", "c"] {
        assert!(touched.contains(node), "{node}: {touched:?}");
    }
    let sub = ztunnel("c", true);
    let was = on_demand::desired(
        &before,
        &sub,
        &Lookups::default(),
        &mut Brought::default(),
        None,
    );
    let now = on_demand::desired(
        &after,
        &sub,
        &Lookups::default(),
        &mut Brought::default(),
        Some(&was),
    );
    let pay = ResourceKey::new(ResourceType::Service, "shop/pay");
    assert_ne!(
        was.get(&pay).unwrap().version,
        now.get(&pay).unwrap().version
    );
}
