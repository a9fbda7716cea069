use ambit_discovery::testing::{id, response, service, using_waypoint, waypoint, workload};
use ambit_proto::api::discovery::{self as api, Resource};
use ambit_proto::api::workload as wl;

use super::*;

fn client() -> SpiffeId {
    id("client")
}

fn resolve_any(s: &ProxyState, dst: SocketAddr) -> Upstream {
    resolve(s, dst, &client(), |_| false)
}

fn reviews(endpoints: &[&str]) -> Resource {
    service("reviews", &["10.96.0.10", "fd00:10:96::10"], endpoints)
}

fn state(resources: Vec<Resource>) -> ProxyState {
    let mut s = ProxyState::default();
    s.apply(&response(true, resources)).unwrap();
    s
}

#[test]
fn resolves_vips_workloads_and_the_outside() {
    let s = state(vec![
        workload(
            "reviews-v1",
            &["10.244.1.4", "fd00:10:244:1::4"],
            wl::Protocol::Hbone,
        ),
        workload("legacy", &["10.244.2.3"], wl::Protocol::Tcp),
        reviews(&["reviews-v1"]),
    ]);
    match resolve_any(&s, "10.96.0.10:9080".parse().unwrap()) {
        Upstream::Hbone {
            workload,
            target,
            service,
        } => {
            assert_eq!(workload.name(), "reviews-v1");
            assert_eq!(target, "10.244.1.4:8080".parse().unwrap());
            assert_eq!(&*service.unwrap().key, "demo/reviews");
        }
        other => panic!("{other:?}"),
    }
    match resolve_any(&s, "[fd00:10:96::10]:9080".parse().unwrap()) {
        Upstream::Hbone { target, .. } => {
            assert_eq!(target, "[fd00:10:244:1::4]:8080".parse().unwrap())
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        resolve_any(&s, "10.244.2.3:8080".parse().unwrap()),
        Upstream::Passthrough {
            workload: Some(_),
            ..
        }
    ));
    assert!(matches!(
        resolve_any(&s, "192.0.2.1:443".parse().unwrap()),
        Upstream::Passthrough { workload: None, .. }
    ));
}

/// reviews with two endpoints, v1 healthy or not, v2 healthy.
fn two_endpoints(v1_healthy: bool) -> ProxyState {
    let mut v1 = workload(
        "reviews-v1",
        &["10.244.1.4", "fd00:10:244:1::4"],
        wl::Protocol::Hbone,
    );
    if let Some(api::resource::Kind::Workload(w)) = &mut v1.kind
        && !v1_healthy
    {
        w.status = wl::WorkloadStatus::Unhealthy as i32;
    }
    state(vec![
        v1,
        workload("reviews-v2", &["10.244.2.2"], wl::Protocol::Hbone),
        reviews(&["reviews-v1", "reviews-v2"]),
    ])
}

/// Which endpoints 200 picks of `dst` land on.
fn picks(s: &ProxyState, dst: &str, ejected: &[&str]) -> std::collections::BTreeSet<String> {
    let ejected: Vec<IpAddr> = ejected.iter().map(|a| a.parse().unwrap()).collect();
    (0..200)
        .map(|_| {
            match resolve(s, dst.parse().unwrap(), &client(), |ip| {
                ejected.contains(&ip)
            }) {
                Upstream::Hbone { target, .. } => target.to_string(),
                Upstream::NoHealthyEndpoint { .. } => "none".into(),
                other => panic!("{other:?}"),
            }
        })
        .collect()
}

#[test]
fn endpoint_choice() {
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    let vip4 = "10.96.0.10:9080";
    let vip6 = "[fd00:10:96::10]:9080";
    let (v1, v2) = ("10.244.1.4:8080", "10.244.2.2:8080");
    // (v1 healthy in config, ejected by this ztunnel, destination, expected picks)
    let table: [(bool, &[&str], &str, &[&str]); 7] = [
        (true, &[], vip4, &[v1, v2]),
        (false, &[], vip4, &[v2]),
        (true, &["10.244.1.4"], vip4, &[v2]),
        (true, &["10.244.2.2"], vip4, &[v1]),
        // Everything ejected: still try one rather than refuse.
        (true, &["10.244.1.4", "10.244.2.2"], vip4, &[v1, v2]),
        // Only v1 has an IPv6 address.
        (true, &[], vip6, &["[fd00:10:244:1::4]:8080"]),
        (false, &[], vip6, &["none"]),
    ];
    for (healthy, ejected, dst, expected) in table {
        let s = two_endpoints(healthy);
        assert_eq!(
            picks(&s, dst, ejected),
            set(expected),
            "v1 healthy {healthy}, ejected {ejected:?}, to {dst}"
        );
    }
}

/// reviews (and reviews-v1 itself) use waypoint demo/waypoint, which the config may or
/// may not hold.
fn behind_waypoint(waypoint: Option<Resource>) -> ProxyState {
    let v1 = workload("reviews-v1", &["10.244.1.4"], wl::Protocol::Hbone);
    let resources = [
        using_waypoint(v1, "waypoint"),
        using_waypoint(reviews(&["reviews-v1"]), "waypoint"),
    ];
    state(resources.into_iter().chain(waypoint).collect())
}

#[test]
fn traffic_to_a_service_or_workload_with_a_waypoint_goes_through_it_or_nowhere() {
    let waypoint_id = id("waypoint");
    // (waypoint in the config, destination, expected: waypoint address)
    let table = [
        (true, "10.96.0.10:9080", Some("10.244.2.9")),
        (true, "10.244.1.4:8080", Some("10.244.2.9")),
        (false, "10.96.0.10:9080", None),
        (false, "10.244.1.4:8080", None),
    ];
    for (present, dst, expected) in table {
        let s = behind_waypoint(present.then(|| waypoint("waypoint", &["10.244.2.9"])));
        match resolve_any(&s, dst.parse().unwrap()) {
            Upstream::Waypoint {
                key,
                waypoint,
                target,
                ..
            } => {
                assert_eq!(&*key, "demo/waypoint");
                assert_eq!(
                    target,
                    dst.parse().unwrap(),
                    "the tunnel names the original destination"
                );
                let addr = waypoint.map(|w| w.addresses[0].to_string());
                assert_eq!(addr.as_deref(), expected, "{dst}");
            }
            other => panic!("{dst}: {other:?}"),
        }
    }
    // The waypoint's own calls to the service go to its endpoints, not back to itself.
    let mut s = behind_waypoint(Some(waypoint("waypoint", &["10.244.2.9"])));
    assert!(matches!(
        resolve(&s, "10.96.0.10:9080".parse().unwrap(), &waypoint_id, |_| {
            false
        }),
        Upstream::Hbone { .. }
    ));
    // A waypoint's removal takes effect.
    let mut delta = response(false, vec![]);
    delta.removed.push(api::RemovedResource {
        r#type: api::ResourceType::WaypointResource as i32,
        name: "demo/waypoint".into(),
    });
    s.apply(&delta).unwrap();
    assert!(matches!(
        resolve_any(&s, "10.96.0.10:9080".parse().unwrap()),
        Upstream::Waypoint { waypoint: None, .. }
    ));
}

#[test]
fn picks_are_uniform_among_the_preferred_else_among_all() {
    // Endpoints 0 and 6 are not usable (unhealthy, or no address of the family).
    let usable = |i: &u32| (!i.is_multiple_of(6)).then_some(*i);
    let count = |items: &[u32], preferred: &[u32]| {
        let mut hits = std::collections::BTreeMap::new();
        for _ in 0..3000 {
            let p = super::pick(
                items.len(),
                |i| usable(&items[i]),
                |i| preferred.contains(i),
            );
            let p = p.unwrap();
            *hits.entry(p).or_insert(0u32) += 1;
        }
        hits
    };
    // Three of five usable ones preferred: only they are picked, each about a third of the
    // time (the bounds are over seven standard deviations out: a fair pick never misses them).
    let hits = count(&[0, 1, 2, 3, 4, 5, 6], &[2, 4, 5, 6]);
    assert_eq!(hits.keys().copied().collect::<Vec<_>>(), [2, 4, 5]);
    assert!(hits.values().all(|&n| (800..1200).contains(&n)), "{hits:?}");
    // One preferred among many that are not: the random tries mostly miss, the pass finds it.
    let many: Vec<u32> = (1..100u32).filter(|i| !i.is_multiple_of(6)).collect();
    assert_eq!(count(&many, &[7]).into_keys().collect::<Vec<_>>(), [7]);
    // None preferred: any usable one.
    let hits = count(&[0, 1, 2, 3], &[]);
    assert_eq!(hits.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
    assert!(hits.values().all(|&n| (800..1200).contains(&n)), "{hits:?}");
    assert_eq!(super::pick(0, |_| usable(&1), |_| true), None);
    let items = [0, 6];
    assert_eq!(super::pick(2, |i| usable(&items[i]), |_| true), None);
}

/// A connection to a big service whose endpoints are all usable looks up one of them, not
/// every one (the pick is per connection).
#[test]
fn a_pick_among_usable_endpoints_looks_up_one() {
    let endpoints: Vec<u32> = (0..1000).collect();
    let lookups = std::cell::Cell::new(0);
    for _ in 0..100 {
        let usable = |i: usize| {
            lookups.set(lookups.get() + 1);
            Some(endpoints[i])
        };
        assert!(super::pick(endpoints.len(), usable, |_| true).is_some());
    }
    assert_eq!(lookups.get(), 100);
}
