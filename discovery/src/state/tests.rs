use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ambit_proto::api::discovery::{self as api, resource::Kind};
use ambit_proto::api::workload as wl;

use super::reindex::Touched;
use super::*;
use crate::testing::{id, response, route, service, uid, using_waypoint, waypoint, workload};

fn reviews() -> api::Resource {
    service(
        "reviews",
        &["10.96.0.10", "fd00:10:96::10"],
        &["reviews-v1"],
    )
}

fn base() -> ProxyState {
    let mut s = ProxyState::default();
    s.apply(&response(
        true,
        vec![
            workload(
                "reviews-v1",
                &["10.244.1.4", "fd00:10:244:1::4"],
                wl::Protocol::Hbone,
            ),
            workload("legacy", &["10.244.2.3"], wl::Protocol::Tcp),
            reviews(),
        ],
    ))
    .unwrap();
    s
}

fn removal(t: api::ResourceType, name: &str) -> api::RemovedResource {
    api::RemovedResource {
        r#type: t as i32,
        name: name.into(),
    }
}

#[test]
fn services_are_found_by_key_vip_and_host_name() {
    let s = base();
    let key = |svc: Option<&Arc<Service>>| svc.map(|s| s.key.to_string());
    let want = Some("demo/reviews".to_string());
    assert_eq!(key(s.service("demo/reviews")), want);
    assert_eq!(key(s.service_by_vip("10.96.0.10".parse().unwrap())), want);
    assert_eq!(
        key(s.service_by_vip("fd00:10:96::10".parse().unwrap())),
        want
    );
    assert_eq!(
        key(s.service_by_hostname("reviews.demo.svc.cluster.local")),
        want
    );
    assert_eq!(key(s.service_by_vip("10.244.1.4".parse().unwrap())), None);
    assert_eq!(key(s.service_by_hostname("reviews")), None);
    assert_eq!(key(s.service("reviews")), None);
}

/// The base with reviews-v2 added behind the reviews service, and `more`.
fn with_reviews_v2(more: Vec<api::Resource>) -> ProxyState {
    let mut s = base();
    let mut resources = vec![
        workload("reviews-v2", &["10.244.2.2"], wl::Protocol::Hbone),
        service("reviews", &["10.96.0.10"], &["reviews-v1", "reviews-v2"]),
    ];
    resources.extend(more);
    s.apply(&response(false, resources)).unwrap();
    s
}

#[test]
fn the_destination_side_finds_the_service_of_a_workload() {
    let s = with_reviews_v2(vec![]);
    let found = |name: &str, port| s.service_of(&uid(name), port).map(|s| s.key.to_string());
    assert_eq!(found("reviews-v2", 8080).as_deref(), Some("demo/reviews"));
    // Another port of a workload that backs one service: still that service.
    assert_eq!(found("reviews-v2", 9999).as_deref(), Some("demo/reviews"));
    assert_eq!(found("legacy", 8080), None);
}

#[test]
fn a_workload_backs_every_service_that_lists_it_until_one_lets_it_go() {
    let mut s = with_reviews_v2(vec![service(
        "all-reviews",
        &["10.96.0.12"],
        &["reviews-v2", "reviews-v2"],
    )]);
    let backs = |s: &ProxyState, name: &str| -> Vec<String> {
        s.services_of(&uid(name))
            .map(|s| s.key.to_string())
            .collect()
    };
    // Listed twice by one service, it backs it once.
    assert_eq!(
        backs(&s, "reviews-v2"),
        ["demo/all-reviews", "demo/reviews"]
    );
    assert_eq!(backs(&s, "reviews-v1"), ["demo/reviews"]);
    let mut delta = response(
        false,
        vec![service("all-reviews", &["10.96.0.12"], &["reviews-v1"])],
    );
    delta
        .removed
        .push(removal(api::ResourceType::Service, "demo/reviews"));
    s.apply(&delta).unwrap();
    assert!(backs(&s, "reviews-v2").is_empty());
    assert_eq!(backs(&s, "reviews-v1"), ["demo/all-reviews"]);
}

#[test]
fn a_bad_update_is_refused_whole_and_the_old_state_stays() {
    let mut s = base();
    let bad = response(
        false,
        vec![
            workload("new-good", &["10.244.1.9"], wl::Protocol::Hbone),
            workload("new-bad", &["10.244.1.300"], wl::Protocol::Hbone),
        ],
    );
    let err = s.apply(&bad).unwrap_err().to_string();
    assert!(
        err.contains("new-bad") && err.contains("10.244.1.300"),
        "{err}"
    );
    assert!(
        s.workload(&uid("new-good")).is_none(),
        "half of a refused update was applied"
    );
    assert!(s.workload(&uid("reviews-v1")).is_some());

    let clash = response(
        false,
        vec![workload("impostor", &["10.244.1.4"], wl::Protocol::Hbone)],
    );
    let err = s.apply(&clash).unwrap_err().to_string();
    assert!(err.contains("10.244.1.4"), "{err}");
    assert!(s.workload(&uid("impostor")).is_none());

    let mut twin = service("twin", &["10.96.0.11"], &[]);
    if let Some(Kind::Service(t)) = &mut twin.kind {
        t.hostname = "reviews.demo.svc.cluster.local".into();
    }
    let err = s
        .apply(&response(false, vec![twin]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("reviews.demo.svc.cluster.local") && err.contains("demo/twin"),
        "{err}"
    );
    assert!(s.service("demo/twin").is_none());
}

#[test]
fn deltas_add_and_remove_and_versions_follow() {
    let mut s = base();
    let mut delta = response(
        false,
        vec![workload("reviews-v2", &["10.244.2.2"], wl::Protocol::Hbone)],
    );
    delta
        .removed
        .push(removal(api::ResourceType::Workload, &uid("legacy")));
    s.apply(&delta).unwrap();
    assert!(s.workload(&uid("reviews-v2")).is_some());
    assert!(s.workload(&uid("legacy")).is_none());
    assert_eq!(
        s.version("workload/local//Pod/demo/reviews-v2"),
        Some("1".into())
    );
    assert_eq!(s.version("workload/local//Pod/demo/legacy"), None);
    let known = s.known_versions();
    assert!(known.contains_key("service/demo/reviews"));
    assert_eq!(known.len(), 3, "{known:?}");
}

#[test]
fn routes_are_held_by_name_until_removed() {
    let mut s = base();
    let r = route(
        "reviews-split",
        &["reviews.demo.svc.cluster.local"],
        "reviews-v2.demo.svc.cluster.local",
    );
    s.apply(&response(false, vec![r])).unwrap();
    let routes: Vec<_> = s.routes().map(|(name, r)| (name, &*r.name)).collect();
    assert_eq!(routes, [("demo/reviews-split", "reviews-split")]);
    assert_eq!(s.version("route/demo/reviews-split"), Some("1".into()));
    let mut delta = response(false, vec![]);
    delta
        .removed
        .push(removal(api::ResourceType::Route, "demo/reviews-split"));
    s.apply(&delta).unwrap();
    assert_eq!(s.routes().count(), 0);
    assert_eq!(s.version("route/demo/reviews-split"), None);
}

#[test]
fn service_ports_carry_their_app_protocol_and_an_unknown_one_is_refused() {
    // (app_protocol on the wire, expected)
    let table = [
        ("", Some(AppProtocol::Unspecified)),
        ("tcp", Some(AppProtocol::Tcp)),
        ("http", Some(AppProtocol::Http)),
        ("HTTP2", Some(AppProtocol::Http2)),
        ("grpc", Some(AppProtocol::Grpc)),
        ("mongo", None),
    ];
    for (text, expected) in table {
        let mut svc = reviews();
        if let Some(Kind::Service(s)) = &mut svc.kind {
            s.ports[0].app_protocol = text.into();
            s.ports[0].name = "web".into();
        }
        let mut s = base();
        match (s.apply(&response(false, vec![svc])), expected) {
            (Ok(()), Some(p)) => {
                let port = s
                    .service("demo/reviews")
                    .unwrap()
                    .port(9080)
                    .unwrap()
                    .clone();
                assert_eq!((port.app_protocol, &*port.name), (p, "web"), "{text:?}");
                assert_eq!(port.target_port, 8080);
            }
            (Err(e), None) => {
                let e = e.to_string();
                assert!(
                    e.contains("demo/reviews") && e.contains("\"mongo\"") && e.contains("9080"),
                    "{e}"
                );
            }
            (outcome, _) => panic!("{text:?}: {outcome:?}"),
        }
    }
}

#[test]
fn a_clone_shares_entries_and_the_next_state_leaves_the_old_one_alone() {
    let s = base();
    let copy = s.clone();
    let (a, b) = (
        s.workload(&uid("reviews-v1")),
        copy.workload(&uid("reviews-v1")),
    );
    assert!(
        Workload::ptr_eq(a.unwrap(), b.unwrap()),
        "entries are shared"
    );
    let mut delta = response(false, vec![]);
    delta
        .removed
        .push(removal(api::ResourceType::Service, "demo/reviews"));
    let next = s.applied(&delta).unwrap();
    assert!(next.service("demo/reviews").is_none());
    assert!(next.service_by_vip("10.96.0.10".parse().unwrap()).is_none());
    assert!(
        s.service("demo/reviews").is_some(),
        "the old state is as it was"
    );
    assert!(s.service_by_vip("10.96.0.10".parse().unwrap()).is_some());
}

/// reviews-v1 behind reviews; `own` and `via_service` name the waypoint each uses, if any.
fn behind(own: Option<&str>, via_service: Option<&str>) -> ProxyState {
    let mut v1 = workload("reviews-v1", &["10.244.1.4"], wl::Protocol::Hbone);
    if let Some(w) = own {
        v1 = using_waypoint(v1, w);
    }
    let mut svc = reviews();
    if let Some(w) = via_service {
        svc = using_waypoint(svc, w);
    }
    let mut s = ProxyState::default();
    let waypoints = [
        waypoint("waypoint", &["10.244.2.9"]),
        waypoint("other-waypoint", &["10.244.2.10"]),
    ];
    s.apply(&response(
        true,
        [v1, svc].into_iter().chain(waypoints).collect(),
    ))
    .unwrap();
    s
}

#[test]
fn a_peer_is_the_enforcing_waypoint_only_of_workloads_that_use_it() {
    // (workload's own waypoint, its service's, peer's service account, expected waypoint)
    let table = [
        (Some("waypoint"), None, "waypoint", Some("demo/waypoint")),
        (None, Some("waypoint"), "waypoint", Some("demo/waypoint")),
        (
            Some("other-waypoint"),
            Some("waypoint"),
            "waypoint",
            Some("demo/waypoint"),
        ),
        // Another waypoint, the client, or no waypoint at all: judged as any peer.
        (Some("waypoint"), None, "other-waypoint", None),
        (Some("waypoint"), Some("waypoint"), "client", None),
        (None, None, "waypoint", None),
        // A waypoint the state does not hold proves nothing.
        (Some("gone"), None, "gone", None),
    ];
    for (own, via_service, peer, expected) in table {
        let s = behind(own, via_service);
        let w = s.workload(&uid("reviews-v1")).unwrap();
        let found = s
            .enforcing_waypoint(w, &id(peer))
            .map(|w| w.key.to_string());
        assert_eq!(
            found.as_deref(),
            expected,
            "own {own:?}, via service {via_service:?}, peer {peer}"
        );
    }
}

/// The indexes as plain values, each entry checked to be the very resource the state holds
/// under its key (an index left pointing at a replaced one would serve stale config).
type Plain = (
    BTreeMap<IpAddr, String>,
    BTreeMap<IpAddr, String>,
    BTreeMap<String, String>,
    BTreeMap<String, BTreeSet<String>>,
);

fn plain(s: &ProxyState) -> Plain {
    let i = &s.indexes;
    let current_w = |w: &Workload| {
        let held = s.workload(w.uid()).expect("held");
        assert!(Workload::ptr_eq(w, held), "stale {}", w.uid());
        w.uid().to_string()
    };
    let current_s = |v: &Arc<Service>| {
        assert!(Arc::ptr_eq(v, &s.services[&v.key]), "stale {}", v.key);
        v.key.to_string()
    };
    (
        i.by_ip.iter().map(|(ip, w)| (*ip, current_w(w))).collect(),
        i.by_vip.iter().map(|(ip, v)| (*ip, current_s(v))).collect(),
        i.by_hostname
            .iter()
            .map(|(h, v)| (h.to_string(), current_s(v)))
            .collect(),
        i.by_endpoint.iter().fold(BTreeMap::new(), |mut by_uid, b| {
            let services: &mut BTreeSet<String> = by_uid.entry(b.uid().to_string()).or_default();
            services.insert(current_s(&b.service));
            assert!(
                s.services_of(b.uid())
                    .any(|found| Arc::ptr_eq(found, &b.service)),
                "{} is not found among the services of {}",
                b.service.key,
                b.uid()
            );
            by_uid
        }),
    )
}

#[test]
fn a_delta_changes_the_indexes_in_place_as_a_full_index_would_build_them() {
    // A small xorshift: the same deltas every run.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below
    };
    let mut state = ProxyState::default();
    let (mut applied, mut refused) = (0, 0);
    for step in 0..400 {
        let mut resources = Vec::new();
        let mut removed = Vec::new();
        for _ in 0..next(4) {
            let name = format!("w{}", next(8));
            match next(3) {
                0 => removed.push(removal(api::ResourceType::Workload, &uid(&name))),
                // Addresses from a small pool, so some deltas claim a taken one.
                _ => resources.push(workload(
                    &name,
                    &[&format!("10.244.0.{}", next(24))],
                    wl::Protocol::Hbone,
                )),
            }
        }
        for _ in 0..next(3) {
            let n = next(5);
            let name = format!("s{n}");
            match next(3) {
                0 => removed.push(removal(api::ResourceType::Service, &format!("demo/{name}"))),
                _ => {
                    let endpoints: Vec<String> =
                        (0..next(4)).map(|_| format!("w{}", next(8))).collect();
                    let endpoints: Vec<&str> = endpoints.iter().map(String::as_str).collect();
                    resources.push(service(&name, &[&format!("10.96.0.{n}")], &endpoints));
                }
            }
        }
        let mut delta = response(step % 50 == 0, resources);
        delta.removed = removed;
        let incremental = state.applied(&delta);
        // The same resources, indexed from scratch.
        let full = {
            let mut f = if delta.full_state {
                ProxyState::default()
            } else {
                state.clone()
            };
            f.remove(&delta.removed, &mut Touched::default());
            f.add(&delta.resources, &mut Touched::default())
                .and_then(|()| f.index())
                .map(|indexes| {
                    f.indexes = indexes;
                    f
                })
        };
        match (incremental, full) {
            (Ok(i), Ok(f)) => {
                assert_eq!(plain(&i), plain(&f), "step {step}");
                state = i;
                applied += 1;
            }
            (Err(_), Err(_)) => refused += 1,
            (i, f) => panic!("step {step}: in place {:?}, full {:?}", i.err(), f.err()),
        }
    }
    assert!(
        applied > 100 && refused > 10,
        "{applied} applied, {refused} refused"
    );
}

#[test]
fn a_workload_listing_one_address_twice_is_refused_in_a_delta_as_in_a_full_state() {
    let twice = workload("twice", &["10.244.9.9", "10.244.9.9"], wl::Protocol::Hbone);
    let full = ProxyState::default().applied(&response(true, vec![twice.clone()]));
    let delta = base().applied(&response(false, vec![twice]));
    for refused in [full, delta] {
        assert!(
            matches!(refused, Err(StateError::DuplicateAddress { .. })),
            "{refused:?}"
        );
    }
}

#[test]
fn values_no_workload_holds_any_more_are_let_go_of_on_deltas_alone() {
    let mut state = base();
    let held = state.interned.len();
    // A pod that comes and goes again and again, each time in a namespace of its own and at a
    // new revision: 6,000 values interned in all, with only the base's workloads left.
    for round in 0..2_000 {
        let mut pod = workload("churn", &["10.244.9.9"], wl::Protocol::Hbone);
        if let Some(Kind::Workload(w)) = &mut pod.kind {
            w.namespace = format!("ns-{round}");
            w.canonical_revision = format!("rev-{round}");
        }
        state.apply(&response(false, vec![pod])).unwrap();
        let mut gone = response(false, vec![]);
        gone.removed = vec![removal(api::ResourceType::Workload, &uid("churn"))];
        state.apply(&gone).unwrap();
        // Twice what the held workloads use (the churning pod's four values counted in,
        // as it may be held at a rebuild) plus the floor, and one pod's values over that.
        assert!(
            state.interned.len() <= 2 * (held + 4) + 1_024 + 4,
            "round {round}: {} values interned",
            state.interned.len()
        );
    }
    // What the base's workloads use is still shared, not copied again.
    let before = state.workload(&uid("reviews-v1")).unwrap().shared.clone();
    state
        .apply(&response(
            false,
            vec![workload("reviews-v1", &["10.244.1.4"], wl::Protocol::Hbone)],
        ))
        .unwrap();
    let after = &state.workload(&uid("reviews-v1")).unwrap().shared;
    assert!(Arc::ptr_eq(&before, after), "{before:?} was copied");
}
