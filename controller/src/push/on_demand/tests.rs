use std::sync::Arc;

use ambit_proto::api::discovery::ProxyKind;

use super::*;
use crate::model::{Edit, MeshModel, ObjectKey};
use crate::source::file::parse;

/// Three nodes; `shop` uses a waypoint, `legacy` does not; `lonely` backs no service.
const MESH: &str = "
nodes: [{name: a}, {name: b}, {name: c}]
namespaces:
  - name: shop
    labels: {ambit.io/dataplane-mode: ambient, ambit.io/use-waypoint: shop-wp}
  - name: legacy
    labels: {ambit.io/dataplane-mode: ambient}
waypoints:
  - {name: shop-wp, namespace: shop, node: b, ipv4: 10.244.2.100}
pods:
  - {name: cart-1, namespace: shop, node: a, labels: {app: cart}, ipv4: 10.244.1.2}
  - {name: pay-1, namespace: shop, node: b, labels: {app: pay}, ipv4: 10.244.2.2}
  - {name: old-1, namespace: legacy, node: a, labels: {app: old}, ipv4: 10.244.1.3}
  - {name: old-2, namespace: legacy, node: c, labels: {app: old}, ipv4: 10.244.3.2}
  - {name: lonely, namespace: legacy, node: c, ipv4: 10.244.3.3}
services:
  - {name: cart, namespace: shop, vips: [10.96.0.1], ports: [{port: 80}], selector: {app: cart}}
  - {name: pay, namespace: shop, vips: [10.96.0.2], ports: [{port: 80}], selector: {app: pay}}
  - {name: old, namespace: legacy, vips: [10.96.0.3], ports: [{port: 80}], selector: {app: old}}
authorizationPolicies:
  - {name: pay-policy, namespace: shop, selector: {matchLabels: {app: pay}}, action: ALLOW}
  - {name: old-policy, namespace: legacy, selector: {matchLabels: {app: old}}, action: DENY}
";

fn snapshot(text: &str) -> Snapshot {
    Snapshot::build(Arc::new(parse(text, "on-demand test").unwrap().model), None)
}

fn on_demand(node: &str) -> Subscriber {
    Subscriber {
        kind: ProxyKind::Ztunnel.into(),
        name: node.into(),
        on_demand: true,
        ..Default::default()
    }
}

fn keys(snapshot: &Snapshot, node: &str, addresses: &[&str]) -> Vec<String> {
    let mut lookups = Lookups::default();
    let addresses: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
    lookups.request(&addresses, &[]).unwrap();
    let d = desired(
        snapshot,
        &on_demand(node),
        &lookups,
        &mut Brought::default(),
        None,
    );
    let mut keys: Vec<String> = d.keys().map(ToString::to_string).collect();
    keys.sort();
    keys
}

#[test]
fn a_node_gets_its_own_part_with_the_services_and_waypoints_its_pods_are_behind() {
    let s = snapshot(MESH);
    assert_eq!(
        keys(&s, "b", &[]),
        [
            "authorization_policy/shop/pay-policy",
            "service/shop/pay",
            "waypoint/shop/shop-wp",
            "workload/local//Pod/shop/pay-1",
        ]
    );
    // Nothing of the mesh beyond: no other service, no other node's workload.
    // The services without their endpoints elsewhere (old-1 is on a).
    assert_eq!(
        keys(&s, "c", &[]),
        [
            "authorization_policy/legacy/old-policy",
            "service/legacy/old",
            "workload/local//Pod/legacy/lonely",
            "workload/local//Pod/legacy/old-2",
        ]
    );
}

#[test]
fn a_looked_up_service_brings_its_endpoints_and_waypoint_a_pod_address_its_workload() {
    let s = snapshot(MESH);
    let own = keys(&s, "c", &[]);
    let added = |addresses: &[&str]| -> Vec<String> {
        keys(&s, "c", addresses)
            .into_iter()
            .filter(|k| !own.contains(k))
            .collect()
    };
    assert_eq!(
        added(&["10.96.0.2"]),
        [
            "service/shop/pay",
            "waypoint/shop/shop-wp",
            "workload/local//Pod/shop/pay-1"
        ]
    );
    assert_eq!(
        added(&["10.244.1.2"]),
        ["workload/local//Pod/shop/cart-1"],
        "a pod address brings its workload"
    );
    assert_eq!(
        added(&["10.96.0.3"]),
        ["workload/local//Pod/legacy/old-1"],
        "looking up its own service brings the endpoints elsewhere"
    );
    // (The namespace's waypoint is for its services, Istio's default, not for its pods.)
    assert!(added(&["192.0.2.1"]).is_empty(), "nothing there");
}

#[test]
fn lookups_are_answered_once_known_or_not_and_held_until_released() {
    let s = snapshot(MESH);
    let mut l = Lookups::default();
    l.request(&["10.96.0.3".into(), "192.0.2.1".into()], &[])
        .unwrap();
    assert!(l.has_unanswered());
    let (answered, unknown) = l.answer(|ip| s.model().at_address(ip).is_some());
    assert_eq!(answered, ["10.96.0.3", "192.0.2.1"]);
    assert_eq!(unknown, ["192.0.2.1"]);
    assert!(!l.has_unanswered());
    assert_eq!(l.len(), 2, "an unknown address stays subscribed");
    l.request(&[], &["10.96.0.3".into()]).unwrap();
    assert_eq!(
        l.held().collect::<Vec<_>>(),
        ["192.0.2.1".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        l.request(&["not-an-ip".into()], &[]),
        Err(LookupError::NotAnAddress("not-an-ip".into()))
    );
}

#[test]
fn a_change_reaches_the_subscriptions_that_looked_it_up_only() {
    let before = snapshot(MESH);
    let moved = MESH.replace(
        "{name: pay-1, namespace: shop, node: b, labels: {app: pay}, ipv4: 10.244.2.2}",
        "{name: pay-1, namespace: shop, node: b, labels: {app: pay}, ipv4: 10.244.2.9}",
    );
    let after = Snapshot::build(
        Arc::new(parse(&moved, "on-demand test").unwrap().model),
        Some(&before),
    );
    let version_of = |s: &Snapshot, addresses: &[&str]| {
        let mut l = Lookups::default();
        let a: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
        l.request(&a, &[]).unwrap();
        desired(s, &on_demand("c"), &l, &mut Brought::default(), None).system_version()
    };
    assert_ne!(
        version_of(&before, &["10.96.0.2"]),
        version_of(&after, &["10.96.0.2"]),
        "the pay endpoint's new address reaches c, which uses pay"
    );
    assert_eq!(
        version_of(&before, &["10.96.0.3"]),
        version_of(&after, &["10.96.0.3"]),
        "c without pay gets nothing"
    );
}

/// Every key and version of `d`, and its system version.
fn contents(d: &Desired) -> (Vec<(String, u64)>, String) {
    let entries = d.iter().map(|(k, r)| (k.to_string(), r.version)).collect();
    (entries, d.system_version())
}

#[test]
fn lookups_and_releases_applied_in_place_equal_a_full_recompute() {
    // Services with endpoints here and elsewhere, pod addresses (one also a service's
    // endpoint), the waypoint's, and one the mesh does not have.
    let pool = [
        "10.96.0.1",
        "10.96.0.2",
        "10.96.0.3",
        "10.244.1.2",
        "10.244.2.2",
        "10.244.3.2",
        "10.244.3.3",
        "10.244.2.100",
        "192.0.2.1",
    ];
    let moved = MESH.replace("ipv4: 10.244.2.2}", "ipv4: 10.244.2.9}");
    let first = snapshot(MESH);
    let second = Snapshot::build(
        Arc::new(parse(&moved, "on-demand test").unwrap().model),
        Some(&first),
    );
    // A small xorshift: the same sequence of requests every run.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for node in ["a", "b", "c"] {
        let sub = on_demand(node);
        let mut lookups = Lookups::default();
        let mut brought = Brought::default();
        let mut s = &first;
        let mut d = desired(s, &sub, &lookups, &mut brought, None);
        for step in 0..200 {
            if step == 100 {
                // A new snapshot in the middle: counted again, then in place again.
                s = &second;
                d = desired(s, &sub, &lookups, &mut brought, Some(&d));
            }
            let pick = |bits: u64| -> Vec<String> {
                (0..pool.len())
                    .filter(|i| bits & (1 << i) != 0 && bits & (1 << (i + 20)) != 0)
                    .map(|i| pool[i].to_string())
                    .collect()
            };
            let (lookup, release) = (pick(next()), pick(next()));
            let change = lookups.request(&lookup, &release).unwrap();
            let changed = apply(s, &change, &mut brought, &mut d);
            let mut fresh_brought = Brought::default();
            let fresh = desired(s, &sub, &lookups, &mut fresh_brought, None);
            assert_eq!(
                contents(&d),
                contents(&fresh),
                "node {node}, step {step}: looked up {lookup:?}, released {release:?}"
            );
            assert_eq!(brought, fresh_brought, "node {node}, step {step}");
            // Every key reported changed is one the request's addresses bring.
            let touched: Vec<ResourceKey> = change
                .released
                .iter()
                .chain(&change.added)
                .flat_map(|ip| keys_for(s.model(), *ip).into_iter().flatten())
                .collect();
            assert!(changed.iter().all(|k| touched.contains(k)), "step {step}");
        }
    }
}

#[test]
fn a_release_keeps_what_the_node_part_or_another_address_still_brings() {
    let s = snapshot(MESH);
    let mut lookups = Lookups::default();
    let mut brought = Brought::default();
    let mut d = desired(&s, &on_demand("c"), &lookups, &mut brought, None);
    let up_front = contents(&d);
    // old's VIP brings old-1 (on a) and old-2 (c's own); old-1's address brings old-1 again.
    let change = lookups
        .request(&["10.96.0.3".into(), "10.244.1.3".into()], &[])
        .unwrap();
    let added = apply(&s, &change, &mut brought, &mut d);
    let old_1 = "workload/local//Pod/legacy/old-1";
    assert_eq!(
        added.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [old_1],
        "the service and old-2 are c's own already"
    );
    let change = lookups.request(&[], &["10.96.0.3".into()]).unwrap();
    assert!(apply(&s, &change, &mut brought, &mut d).is_empty());
    assert!(
        d.keys().any(|k| k.to_string() == old_1),
        "its address still holds old-1"
    );
    let change = lookups.request(&[], &["10.244.1.3".into()]).unwrap();
    let removed = apply(&s, &change, &mut brought, &mut d);
    assert_eq!(
        removed.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [old_1]
    );
    assert_eq!(contents(&d), up_front, "back to the node's own part");
}

/// Each edit applied to the model before it (so each snapshot is built incrementally).
fn edits(model: &MeshModel) -> Vec<(&'static str, Edit)> {
    let key = ObjectKey::new;
    let pod = |ns, name| model.workload(&key(ns, name)).unwrap().pod.clone();
    let service = |ns, name| model.service(&key(ns, name)).unwrap().service.clone();
    let mut moved = pod("shop", "pay-1");
    moved.addresses = vec!["10.244.2.9".parse().unwrap()];
    let mut replica = pod("shop", "pay-1");
    replica.name = "pay-2".into();
    replica.node = "c".into();
    replica.addresses = vec!["10.244.3.7".parse().unwrap()];
    let mut lonely = pod("legacy", "lonely");
    lonely.addresses = vec!["10.244.3.8".parse().unwrap()];
    let mut vip = service("legacy", "old");
    vip.vips = vec!["10.96.0.33".parse().unwrap()];
    let mut policy = model
        .policy(&ObjectKey::new("shop", "pay-policy"))
        .unwrap()
        .clone();
    let mut denying = policy.clone();
    denying.action = ambit_proto::api::security::Action::Deny;
    policy.selector = [("app".to_string(), "cart".to_string())].into();
    vec![
        ("pay-1 moves to a new address", Edit::Pod(moved)),
        ("a replica of pay on c", Edit::Pod(replica)),
        ("lonely, which nobody looks up, moves", Edit::Pod(lonely)),
        ("old gets a new VIP", Edit::Service(vip)),
        ("the shop policy denies instead", Edit::Policy(denying)),
        ("the shop policy selects cart instead", Edit::Policy(policy)),
        (
            "old-1 goes",
            Edit::RemovePod(ObjectKey::new("legacy", "old-1")),
        ),
        (
            "pay goes",
            Edit::RemoveService(ObjectKey::new("shop", "pay")),
        ),
    ]
}

#[test]
fn a_new_snapshot_followed_in_place_equals_a_full_recompute() {
    let lookup_sets: [&[&str]; 4] = [
        &[],
        &["10.96.0.2"],
        &["10.96.0.1", "10.96.0.3", "10.244.1.3"],
        &[
            "10.96.0.2",
            "10.244.2.2",
            "10.244.2.9",
            "10.96.0.33",
            "192.0.2.1",
        ],
    ];
    for node in ["a", "b", "c"] {
        for addresses in lookup_sets {
            let sub = on_demand(node);
            let mut lookups = Lookups::default();
            let a: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
            lookups.request(&a, &[]).unwrap();
            let mut previous = snapshot(MESH);
            let mut brought = Brought::default();
            let mut d = desired(&previous, &sub, &lookups, &mut brought, None);
            for (what, edit) in edits(previous.model()) {
                let model = previous.model().apply([edit]).unwrap();
                let next = Snapshot::build(Arc::new(model), Some(&previous));
                assert!(follows(&d, &previous, &next), "{what}");
                let before = contents(&d);
                let changed = update(&previous, &next, &sub, &lookups, &mut brought, &mut d);
                let mut fresh_brought = Brought::default();
                let fresh = desired(&next, &sub, &lookups, &mut fresh_brought, None);
                let context = format!("node {node}, lookups {addresses:?}: {what}");
                assert_eq!(contents(&d), contents(&fresh), "{context}");
                assert_eq!(brought, fresh_brought, "{context}");
                // Whatever differs is among the keys reported, which the session diffs.
                let now = contents(&d);
                let differ = now.0.iter().filter(|e| !before.0.contains(e));
                let gone = before.0.iter().filter(|e| !now.0.contains(e));
                for (key, _) in differ.chain(gone) {
                    assert!(
                        changed.iter().any(|k| k.to_string() == *key),
                        "{context}: {key} changed unreported"
                    );
                }
                previous = next;
            }
        }
    }
}

#[test]
fn a_change_a_subscription_does_not_hold_costs_it_nothing() {
    // a holds pay's VIP; lonely (on c, looked up by nobody) moves.
    let previous = snapshot(MESH);
    let sub = on_demand("a");
    let mut lookups = Lookups::default();
    lookups.request(&["10.96.0.2".into()], &[]).unwrap();
    let mut brought = Brought::default();
    let mut d = desired(&previous, &sub, &lookups, &mut brought, None);
    let (_, edit) = edits(previous.model()).swap_remove(2);
    let model = previous.model().apply([edit]).unwrap();
    let next = Snapshot::build(Arc::new(model), Some(&previous));
    assert!(follows(&d, &previous, &next));
    let changed = update(&previous, &next, &sub, &lookups, &mut brought, &mut d);
    assert!(changed.is_empty(), "{changed:?}");
    assert_eq!(d.generation, next.generation);
    // One that skipped a snapshot is resolved whole instead.
    let model = next
        .model()
        .apply([edits(next.model()).swap_remove(0).1])
        .unwrap();
    let after = Snapshot::build(Arc::new(model), Some(&next));
    assert!(!follows(&d, &previous, &after));
}

#[test]
fn a_policy_edit_on_the_node_reports_only_what_it_changed_of_the_nodes_part() {
    // b runs pay-1, which pay-policy selects: the edit reaches b's node part, which keeps its
    // keys (the policy selects the same pods). Of the whole part (pay-1, pay, the waypoint,
    // the policy) only what the snapshot rebuilt is handed to the session to diff: the policy,
    // and pay-1, whose wire form lists it (rebuilt at the same version).
    let previous = snapshot(MESH);
    let sub = on_demand("b");
    let lookups = Lookups::default();
    let mut brought = Brought::default();
    let mut d = desired(&previous, &sub, &lookups, &mut brought, None);
    assert!(d.len() >= 4, "b's part: {:?}", contents(&d).0);
    let key = ObjectKey::new("shop", "pay-policy");
    let mut policy = previous.model().policy(&key).unwrap().clone();
    policy.action = ambit_proto::api::security::Action::Deny;
    let model = previous.model().apply([Edit::Policy(policy)]).unwrap();
    let next = Snapshot::build(Arc::new(model), Some(&previous));
    assert!(next.touched_nodes.as_ref().unwrap().contains("b"));
    assert!(follows(&d, &previous, &next));
    let changed = update(&previous, &next, &sub, &lookups, &mut brought, &mut d);
    let changed: Vec<String> = changed.iter().map(ToString::to_string).collect();
    assert_eq!(
        changed,
        [
            "workload/local//Pod/shop/pay-1",
            "authorization_policy/shop/pay-policy"
        ]
    );
    assert!(
        d.len() >= 4
            && d.contains_key(&named_key(
                ResourceType::WaypointResource,
                &ObjectKey::new("shop", "shop-wp")
            ))
    );
}
