use ambit_proto::api::discovery::{Resource, SubscribeResponse};
use ambit_proto::api::workload as wl;

use super::*;

fn workload(name: &str, ips: &[&str], protocol: wl::Protocol) -> Resource {
    let uid = format!("local//Pod/demo/{name}");
    Resource {
        name: uid.clone(),
        version: "1".into(),
        kind: Some(Kind::Workload(wl::Workload {
            uid,
            name: name.into(),
            namespace: "demo".into(),
            service_account: name.into(),
            node: "node-a".into(),
            addresses: ips.iter().map(|s| s.to_string()).collect(),
            protocol: protocol as i32,
            trust_domain: "cluster.local".into(),
            ..Default::default()
        })),
    }
}

fn service() -> Resource {
    Resource {
        name: "demo/reviews".into(),
        version: "1".into(),
        kind: Some(Kind::Service(wl::Service {
            name: "reviews".into(),
            namespace: "demo".into(),
            hostname: "reviews.demo.svc.cluster.local".into(),
            addresses: vec!["10.96.0.10".into(), "fd00:10:96::10".into()],
            ports: vec![wl::Port {
                service_port: 9080,
                target_port: 8080,
                ..Default::default()
            }],
            endpoints: vec![wl::Endpoint {
                workload_uid: "local//Pod/demo/reviews-v1".into(),
            }],
            waypoint: None,
        })),
    }
}

fn response(full: bool, resources: Vec<Resource>) -> SubscribeResponse {
    SubscribeResponse {
        system_version: "v".into(),
        nonce: "n".into(),
        resources,
        removed: vec![],
        full_state: full,
        more: false,
    }
}

fn client() -> SpiffeId {
    SpiffeId::new("cluster.local", "demo", "client").unwrap()
}

impl ProxyState {
    fn resolve_any(&self, dst: SocketAddr) -> Upstream {
        self.resolve(dst, &client(), |_| false)
    }
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
            service(),
        ],
    ))
    .unwrap();
    s
}

#[test]
fn resolves_vips_workloads_and_the_outside() {
    let s = base();
    match s.resolve_any("10.96.0.10:9080".parse().unwrap()) {
        Upstream::Hbone {
            workload,
            target,
            service,
        } => {
            assert_eq!(&*workload.name, "reviews-v1");
            assert_eq!(target, "10.244.1.4:8080".parse().unwrap());
            assert_eq!(&*service.unwrap().key, "demo/reviews");
        }
        other => panic!("{other:?}"),
    }
    match s.resolve_any("[fd00:10:96::10]:9080".parse().unwrap()) {
        Upstream::Hbone { target, .. } => {
            assert_eq!(target, "[fd00:10:244:1::4]:8080".parse().unwrap())
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.resolve_any("10.244.2.3:8080".parse().unwrap()),
        Upstream::Passthrough {
            workload: Some(_),
            ..
        }
    ));
    assert!(matches!(
        s.resolve_any("192.0.2.1:443".parse().unwrap()),
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
    if let Some(Kind::Workload(w)) = &mut v1.kind
        && !v1_healthy
    {
        w.status = wl::WorkloadStatus::Unhealthy as i32;
    }
    let mut svc = service();
    if let Some(Kind::Service(s)) = &mut svc.kind {
        s.endpoints.push(wl::Endpoint {
            workload_uid: "local//Pod/demo/reviews-v2".into(),
        });
    }
    let mut s = ProxyState::default();
    s.apply(&response(
        true,
        vec![
            v1,
            workload("reviews-v2", &["10.244.2.2"], wl::Protocol::Hbone),
            svc,
        ],
    ))
    .unwrap();
    s
}

/// Which endpoints 200 picks of `dst` land on.
fn picks(s: &ProxyState, dst: &str, ejected: &[&str]) -> std::collections::BTreeSet<String> {
    let ejected: Vec<IpAddr> = ejected.iter().map(|a| a.parse().unwrap()).collect();
    (0..200)
        .map(
            |_| match s.resolve(dst.parse().unwrap(), &client(), |ip| ejected.contains(&ip)) {
                Upstream::Hbone { target, .. } => target.to_string(),
                Upstream::NoHealthyEndpoint { .. } => "none".into(),
                other => panic!("{other:?}"),
            },
        )
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

fn waypoint_resource(addresses: &[&str]) -> Resource {
    Resource {
        name: "demo/waypoint".into(),
        version: "1".into(),
        kind: Some(Kind::Waypoint(wl::Waypoint {
            name: "waypoint".into(),
            namespace: "demo".into(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            service_account: "waypoint".into(),
            trust_domain: "cluster.local".into(),
        })),
    }
}

/// reviews (and reviews-v1 itself) use waypoint demo/waypoint, which the config may or
/// may not hold.
fn behind_waypoint(waypoint: Option<Resource>) -> ProxyState {
    let uses = Some(wl::WaypointRef {
        namespace: "demo".into(),
        name: "waypoint".into(),
    });
    let mut v1 = workload("reviews-v1", &["10.244.1.4"], wl::Protocol::Hbone);
    if let Some(Kind::Workload(w)) = &mut v1.kind {
        w.waypoint = uses.clone();
    }
    let mut svc = service();
    if let Some(Kind::Service(s)) = &mut svc.kind {
        s.waypoint = uses;
    }
    let mut s = ProxyState::default();
    s.apply(&response(
        true,
        [v1, svc].into_iter().chain(waypoint).collect(),
    ))
    .unwrap();
    s
}

#[test]
fn traffic_to_a_service_or_workload_with_a_waypoint_goes_through_it_or_nowhere() {
    let waypoint = SpiffeId::new("cluster.local", "demo", "waypoint").unwrap();
    // (waypoint in the config, destination, source, expected: waypoint address or "direct")
    let table = [
        (true, "10.96.0.10:9080", client(), Some("10.244.2.9")),
        (true, "10.244.1.4:8080", client(), Some("10.244.2.9")),
        (false, "10.96.0.10:9080", client(), None),
        (false, "10.244.1.4:8080", client(), None),
    ];
    for (present, dst, from, expected) in table {
        let s = behind_waypoint(present.then(|| waypoint_resource(&["10.244.2.9"])));
        match s.resolve(dst.parse().unwrap(), &from, |_| false) {
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
    let s = behind_waypoint(Some(waypoint_resource(&["10.244.2.9"])));
    assert!(matches!(
        s.resolve("10.96.0.10:9080".parse().unwrap(), &waypoint, |_| false),
        Upstream::Hbone { .. }
    ));
    // A waypoint's removal takes effect.
    let mut s = s;
    let mut delta = response(false, vec![]);
    delta.removed.push(api::RemovedResource {
        r#type: api::ResourceType::WaypointResource as i32,
        name: "demo/waypoint".into(),
    });
    s.apply(&delta).unwrap();
    assert!(matches!(
        s.resolve("10.96.0.10:9080".parse().unwrap(), &client(), |_| false),
        Upstream::Waypoint { waypoint: None, .. }
    ));
}

#[test]
fn the_destination_side_finds_the_service_of_a_workload() {
    let s = two_endpoints(true);
    let found = |uid: &str, port| s.service_of(uid, port).map(|s| s.key.to_string());
    assert_eq!(
        found("local//Pod/demo/reviews-v2", 8080).as_deref(),
        Some("demo/reviews")
    );
    // Another port of a workload that backs one service: still that service.
    assert_eq!(
        found("local//Pod/demo/reviews-v2", 9999).as_deref(),
        Some("demo/reviews")
    );
    assert_eq!(found("local//Pod/demo/legacy", 8080), None);
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
        s.workload("local//Pod/demo/new-good").is_none(),
        "half of a refused update was applied"
    );
    assert!(s.workload("local//Pod/demo/reviews-v1").is_some());

    let clash = response(
        false,
        vec![workload("impostor", &["10.244.1.4"], wl::Protocol::Hbone)],
    );
    let err = s.apply(&clash).unwrap_err().to_string();
    assert!(err.contains("10.244.1.4"), "{err}");
    assert!(s.workload("local//Pod/demo/impostor").is_none());
}

#[test]
fn deltas_add_and_remove_and_versions_follow() {
    let mut s = base();
    let mut delta = response(
        false,
        vec![workload("reviews-v2", &["10.244.2.2"], wl::Protocol::Hbone)],
    );
    delta.removed.push(api::RemovedResource {
        r#type: api::ResourceType::Workload as i32,
        name: "local//Pod/demo/legacy".into(),
    });
    s.apply(&delta).unwrap();
    assert!(s.workload("local//Pod/demo/reviews-v2").is_some());
    assert!(s.workload("local//Pod/demo/legacy").is_none());
    assert!(
        s.versions()
            .contains_key("workload/local//Pod/demo/reviews-v2")
    );
    assert!(!s.versions().contains_key("workload/local//Pod/demo/legacy"));
    assert!(s.versions().contains_key("service/demo/reviews"));
}
