use std::sync::Arc;

use super::*;
use crate::push::DownNodes;
use crate::source::file::parse;

const MESH: &str = "
trustDomain: TD
nodes: [{name: a}, {name: b}]
namespaces:
  - {name: shop, labels: {ambit.io/dataplane-mode: ambient, ambit.io/use-waypoint: shop-wp}}
  - {name: bank, labels: {ambit.io/dataplane-mode: ambient}}
waypoints:
  - {name: shop-wp, namespace: shop, node: b, ipv4: 10.244.2.100}
pods:
  - {name: cart-1, namespace: shop, node: a, labels: {app: cart}, ipv4: 10.244.1.2}
  - {name: cart-2, namespace: shop, node: b, labels: {app: CART2}, ipv4: 10.244.2.2}
  - {name: pay-1, namespace: shop, node: b, labels: {app: pay}, ipv4: 10.244.2.3}
  - {name: vault-1, namespace: bank, node: a, labels: {app: vault}, ipv4: 10.244.1.3}
services:
  - {name: cart, namespace: shop, vips: [10.96.0.1], ports: [{port: 80}], selector: {app: cart}}
  - {name: pay, namespace: shop, vips: [10.96.0.2], ports: [{port: 80}], selector: {app: pay}}
  - {name: vault, namespace: bank, vips: [10.96.0.3], ports: [{port: 80}], selector: {app: vault}}
authorizationPolicies:
  - {name: cart-policy, namespace: shop, selector: {matchLabels: {app: SELECTED}}, action: ALLOW}
httpRoutes:
  - name: pay-route
    namespace: shop
    parentRefs: [{group: \"\", kind: Service, name: pay}]
    rules: [{backendRefs: [{name: pay, port: 80}]}]
";

/// The mesh above with `edits` made, `TD` being `trust_domain`.
fn snapshot_in(
    trust_domain: &str,
    edits: &[(&str, &str)],
    previous: Option<&Snapshot>,
) -> Snapshot {
    let mut text = MESH.to_string();
    for (from, to) in edits {
        assert!(text.contains(from), "the test's mesh has no {from:?}");
        text = text.replace(from, to);
    }
    let text = text
        .replace("TD", trust_domain)
        .replace("CART2", "cart")
        .replace("SELECTED", "cart");
    let model = parse(&text, "snapshot test").unwrap().model;
    Snapshot::build(Arc::new(model), previous)
}

fn snapshot(edits: &[Edit], previous: Option<&Snapshot>) -> Snapshot {
    snapshot_in("cluster.local", edits, previous)
}

/// Keys whose resource the new snapshot took over from `old` (the same allocation).
fn reused(old: &Snapshot, new: &Snapshot) -> Vec<String> {
    let mut keys: Vec<String> = new
        .resources
        .iter()
        .filter(|(k, r)| old.resources.get(*k).is_some_and(|o| Arc::ptr_eq(o, r)))
        .map(|(k, _)| k.to_string())
        .collect();
    keys.sort();
    keys
}

/// Every key with its version and content, to compare snapshots built either way.
fn contents(s: &Snapshot) -> BTreeMap<String, Resource> {
    s.resources
        .iter()
        .map(|(k, r)| (k.to_string(), r.decode()))
        .collect()
}

/// What an edit does, the edits to the mesh above, and the keys it must rebuild.
type Case = (&'static str, &'static [Edit], &'static [&'static str]);
type Edit = (&'static str, &'static str);

#[test]
fn an_edit_rebuilds_exactly_the_resources_whose_wire_form_it_changes() {
    let base = snapshot(&[], None);
    let cases: [Case; 6] = [
        (
            "a pod leaves a service: it and the service change, nothing in bank",
            &[("labels: {app: CART2}", "labels: {app: other}")],
            &["service/shop/cart", "workload/local//Pod/shop/cart-2"],
        ),
        (
            "a policy selects other pods: every workload of its namespace is rechecked",
            &[("matchLabels: {app: SELECTED}", "matchLabels: {app: pay}")],
            &[
                "authorization_policy/shop/cart-policy",
                "workload/local//Pod/shop/cart-1",
                "workload/local//Pod/shop/cart-2",
                "workload/local//Pod/shop/pay-1",
            ],
        ),
        (
            "a namespace turns strict: its workloads change, though no workload object did",
            &[(
                "{name: bank, labels: {ambit.io/dataplane-mode: ambient}}",
                "{name: bank, labels: {ambit.io/dataplane-mode: ambient, ambit.io/mtls-mode: strict}}",
            )],
            &["workload/local//Pod/bank/vault-1"],
        ),
        (
            "a waypoint moves",
            &[("ipv4: 10.244.2.100", "ipv4: 10.244.2.101")],
            &["waypoint/shop/shop-wp"],
        ),
        (
            "a service gains a port",
            &[(
                "10.96.0.3], ports: [{port: 80}]",
                "10.96.0.3], ports: [{port: 81}]",
            )],
            &["service/bank/vault"],
        ),
        (
            "a route sends its traffic elsewhere",
            &[("backendRefs: [{name: pay", "backendRefs: [{name: cart")],
            &["route/shop/pay-route"],
        ),
    ];
    for (what, edits, rebuilt) in cases {
        let fresh = snapshot(edits, None);
        let incremental = snapshot(edits, Some(&base));
        assert_eq!(contents(&incremental), contents(&fresh), "{what}");
        let mut expected: Vec<String> = fresh
            .resources
            .keys()
            .map(ToString::to_string)
            .filter(|k| !rebuilt.contains(&k.as_str()))
            .collect();
        expected.sort();
        assert_eq!(reused(&base, &incremental), expected, "{what}");
    }
}

#[test]
fn a_new_trust_domain_rebuilds_everything() {
    let base = snapshot(&[], None);
    let moved = snapshot_in("moved.example", &[], Some(&base));
    let fresh = snapshot_in("moved.example", &[], None);
    assert_eq!(contents(&moved), contents(&fresh));
    assert!(reused(&base, &moved).is_empty());
}

#[test]
fn a_node_going_down_rebuilds_only_its_meshed_workloads_and_touches_only_it() {
    use ambit_proto::api::workload::WorkloadStatus;
    let base = snapshot(&[], None);
    let model = base.model().clone();
    let down: DownNodes = Arc::new(["b".to_string()].into());
    let gone = Snapshot::build_with(model.clone(), down.clone(), Some(&base));
    let on_b = [
        "workload/local//Pod/shop/cart-2",
        "workload/local//Pod/shop/pay-1",
    ];
    let mut expected: Vec<String> = base
        .resources
        .keys()
        .map(ToString::to_string)
        .filter(|k| !on_b.contains(&k.as_str()))
        .collect();
    expected.sort();
    assert_eq!(reused(&base, &gone), expected);
    let status = |s: &Snapshot, key: &str| match &contents(s)[key].kind {
        Some(Kind::Workload(w)) => w.status(),
        other => panic!("{key} is {other:?}"),
    };
    for key in on_b {
        assert_eq!(status(&gone, key), WorkloadStatus::Unhealthy, "{key}");
        assert_eq!(status(&base, key), WorkloadStatus::Healthy, "{key}");
    }
    assert_eq!(gone.touched_nodes, Some(["b".to_string()].into()));
    let fresh = Snapshot::build_with(model.clone(), down, None);
    assert_eq!(contents(&gone), contents(&fresh));
    let back = Snapshot::build_with(model, DownNodes::default(), Some(&gone));
    assert_eq!(
        contents(&back),
        contents(&base),
        "the same versions as before"
    );
    assert_eq!(back.touched_nodes, Some(["b".to_string()].into()));
}

#[test]
fn the_mesh_wide_part_is_kept_only_while_a_subscription_uses_it() {
    use crate::push::{desired_for, scope_of};
    use ambit_proto::api::discovery::{ProxyKind, Subscriber};
    // pay-1 moves to another address: an incremental snapshot.
    let moved = |previous: &Snapshot, n: u8| {
        let key = ObjectKey::new("shop", "pay-1");
        let mut pod = previous.model().workload(&key).unwrap().pod.clone();
        pod.addresses = vec![std::net::IpAddr::from([10, 244, 2, 200 + n])];
        let model = previous.model().apply([crate::model::Edit::Pod(pod)]);
        Snapshot::build(Arc::new(model.unwrap()), Some(previous))
    };
    let first = snapshot(&[], None);
    assert!(first.mesh_wide.get().is_none(), "nobody asked");
    let second = moved(&first, 1);
    assert!(second.mesh_wide.get().is_none(), "nobody asked since");
    let sub = Subscriber {
        kind: ProxyKind::Ztunnel.into(),
        name: "a".into(),
        ..Default::default()
    };
    // The first to ask after none did gets it resolved whole, and right.
    let user = second.use_mesh_wide();
    let lazily = scope_of(&second, &sub);
    let fresh = Snapshot::build(second.model().clone(), None);
    assert_eq!(lazily, scope_of(&fresh, &sub));
    assert!(
        second.mesh_wide().changes.is_none(),
        "nothing to compare with"
    );
    // While it is used, each new snapshot brings it up to date as it is built.
    let third = moved(&second, 2);
    let part = third.mesh_wide.get().expect("resolved with the snapshot");
    assert!(part.changes.is_some());
    let fresh = Snapshot::build(third.model().clone(), None);
    assert_eq!(
        desired_for(&third, &sub).system_version(),
        desired_for(&fresh, &sub).system_version()
    );
    drop(user);
    let fourth = moved(&third, 3);
    assert!(
        fourth.mesh_wide.get().is_none(),
        "dropped once nobody uses it"
    );
}
