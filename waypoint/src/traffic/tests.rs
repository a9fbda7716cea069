use ambit_discovery::testing;
use ambit_proto::api::discovery::{Resource, resource::Kind};
use ambit_proto::api::workload as wl;

use super::*;

const REVIEWS: &str = "reviews.demo.svc.cluster.local";

fn policy(name: &str, target: &str) -> api::TrafficPolicy {
    api::TrafficPolicy {
        name: name.into(),
        namespace: "demo".into(),
        target: target.into(),
        connection_pool: None,
        outlier_detection: None,
    }
}

fn outlier(c5xx: u32, percent: u32, base_ms: u64) -> Option<api::OutlierDetection> {
    Some(api::OutlierDetection {
        consecutive_5xx: c5xx,
        consecutive_gateway_errors: 0,
        consecutive_connect_failures: 0,
        base_ejection_time_ms: base_ms,
        max_ejection_percent: percent,
    })
}

fn mesh(policies: &[api::TrafficPolicy]) -> ProxyState {
    let mut resources: Vec<Resource> = vec![
        testing::workload("r1", &["10.0.0.1"], wl::Protocol::Hbone),
        testing::workload("r2", &["10.0.0.2"], wl::Protocol::Hbone),
        testing::workload("r3", &["10.0.0.3"], wl::Protocol::Hbone),
        testing::service("reviews", &["10.96.0.1"], &["r1", "r2", "r3"]),
        testing::service("ratings", &["10.96.0.2"], &["r1"]),
    ];
    for p in policies {
        resources.push(Resource {
            name: format!("{}/{}", p.namespace, p.name),
            version: "1".into(),
            kind: Some(Kind::TrafficPolicy(p.clone())),
        });
    }
    let mut state = ProxyState::default();
    state
        .apply(&testing::response(true, resources))
        .expect("a valid mesh");
    state
}

fn compile(policies: &[api::TrafficPolicy]) -> Result<Traffic, TrafficPolicyError> {
    Traffic::compile(&mesh(policies), &Traffic::default())
}

#[test]
fn every_service_gets_the_defaults_without_a_policy() {
    let t = compile(&[]).unwrap();
    for host in [REVIEWS, "ratings.demo.svc.cluster.local"] {
        let s = t.service(host).unwrap();
        assert_eq!(s.settings(), &Settings::default(), "{host}");
    }
    assert_eq!(DEFAULT_LIMITS.max_requests, 65_536);
    assert!(Settings::default().pool.multiplex);
}

#[test]
fn a_policy_sets_its_fields_and_zeros_take_the_defaults() {
    let mut p = policy("breaker", REVIEWS);
    p.connection_pool = Some(api::ConnectionPool {
        max_connections: 5,
        max_pending_requests: 10,
        max_requests: 0,
        max_retries: 2,
        idle_timeout_ms: 1500,
        max_requests_per_connection: 1,
        http2_multiplexing: api::H2Multiplexing::Off as i32,
    });
    p.outlier_detection = outlier(5, 0, 0);
    let t = compile(&[p]).unwrap();
    let s = t.service(REVIEWS).unwrap().settings();
    assert_eq!(s.policy.as_deref(), Some("demo/breaker"));
    assert_eq!(
        s.limits,
        Limits {
            max_connections: 5,
            max_pending: 10,
            max_requests: DEFAULT_LIMIT,
            max_retries: 2,
        }
    );
    assert!(!s.pool.multiplex);
    assert_eq!(s.pool.max_requests_per_connection, NonZeroU32::new(1));
    assert_eq!(s.pool.idle_timeout, Some(Duration::from_millis(1500)));
    let o = s.outlier.as_ref().unwrap();
    assert_eq!(o.base_ejection_time, DEFAULT_BASE_EJECTION_TIME);
    assert_eq!(o.max_ejection_percent, DEFAULT_MAX_EJECTION_PERCENT);
    // The other service keeps the defaults.
    let other = t.service("ratings.demo.svc.cluster.local").unwrap();
    assert_eq!(other.settings(), &Settings::default());
}

#[test]
fn bad_policies_are_refused_naming_them() {
    let cases: Vec<(api::TrafficPolicy, &str)> = vec![
        (policy("nameless", ""), "no target"),
        (
            api::TrafficPolicy {
                outlier_detection: outlier(0, 10, 0),
                ..policy("counts-nothing", REVIEWS)
            },
            "counts nothing",
        ),
        (
            api::TrafficPolicy {
                outlier_detection: outlier(5, 101, 0),
                ..policy("too-many", REVIEWS)
            },
            "over 100",
        ),
        (
            api::TrafficPolicy {
                outlier_detection: outlier(5, 10, 2 * 24 * 3600 * 1000),
                ..policy("forever", REVIEWS)
            },
            "over a day",
        ),
        (
            api::TrafficPolicy {
                connection_pool: Some(api::ConnectionPool {
                    http2_multiplexing: 7,
                    ..Default::default()
                }),
                ..policy("unknown-enum", REVIEWS)
            },
            "http2_multiplexing 7",
        ),
    ];
    for (p, why) in cases {
        let name = format!("demo/{}", p.name);
        let e = compile(&[p]).err().expect("refused");
        assert_eq!(e.policy, name);
        assert!(e.to_string().contains(why), "{e}");
    }
}

#[test]
fn two_policies_for_one_service_are_refused() {
    let e = compile(&[policy("b", REVIEWS), policy("a", REVIEWS)])
        .err()
        .expect("refused");
    assert_eq!(e.policy, "demo/b");
    assert!(e.reason.contains("traffic policy demo/a"), "{e}");
}

#[test]
fn counts_survive_an_update_and_new_limits_apply_to_new_requests() {
    let mut p = policy("breaker", REVIEWS);
    p.connection_pool = Some(api::ConnectionPool {
        max_requests: 2,
        ..Default::default()
    });
    let first = compile(std::slice::from_ref(&p)).unwrap();
    let s = first.service(REVIEWS).unwrap();
    let held: Vec<_> = (0..2).map(|_| s.admit(None).unwrap()).collect();
    assert_eq!(
        s.admit(None).unwrap_err(),
        Overflow {
            limit: Limit::Requests,
            max: 2
        }
    );
    // The limit raised: the two in flight still count, a third fits, a fifth does not.
    p.connection_pool = Some(api::ConnectionPool {
        max_requests: 4,
        ..Default::default()
    });
    let second = Traffic::compile(&mesh(&[p]), &first).unwrap();
    let s2 = second.service(REVIEWS).unwrap();
    assert_eq!(s2.breaker().in_use(Limit::Requests), 2);
    let more: Vec<_> = (0..2).map(|_| s2.admit(None).unwrap()).collect();
    assert!(s2.admit(None).is_err());
    drop((held, more));
    assert_eq!(s2.breaker().in_use(Limit::Requests), 0);
    // Without the policy, the defaults; the counts are still the service's.
    let third = Traffic::compile(&mesh(&[]), &second).unwrap();
    assert!(Arc::ptr_eq(
        third.service(REVIEWS).unwrap().breaker(),
        s2.breaker()
    ));
}

#[test]
fn ejected_endpoints_are_skipped_unless_all_are() {
    let mut p = policy("outliers", REVIEWS);
    p.outlier_detection = outlier(1, 100, 60_000);
    let t = compile(&[p]).unwrap();
    let s = t.service(REVIEWS).unwrap();
    let state = mesh(&[]);
    let service = state.service_by_hostname(REVIEWS).unwrap().clone();
    let backend = Backend::Service {
        service,
        port: 9080,
    };
    let all = backend.endpoints(&state, "10.0.0.9".parse().unwrap());
    assert_eq!(all.len(), 3);
    let first = all[0].target;
    s.observe(first, Observed::Status(503));
    assert!(s.is_ejected(first));
    assert_eq!(s.ejected(), 1);
    let mut candidates = all.clone();
    s.skip_ejected(&mut candidates);
    assert_eq!(candidates.len(), 2);
    assert!(candidates.iter().all(|e| e.target != first));
    // Every candidate ejected: all are used.
    for e in &all[1..] {
        s.observe(e.target, Observed::ConnectFailure);
    }
    assert_eq!(s.ejected(), 3);
    let mut candidates = all.clone();
    s.skip_ejected(&mut candidates);
    assert_eq!(candidates.len(), 3);
    // Ejections are kept across an update that keeps the endpoint.
    let mut p = policy("outliers", REVIEWS);
    p.outlier_detection = outlier(1, 100, 60_000);
    let next = Traffic::compile(&mesh(&[p]), &t).unwrap();
    assert!(next.service(REVIEWS).unwrap().is_ejected(first));
}

#[test]
fn the_store_refuses_an_update_with_a_bad_policy_and_keeps_the_old_config() {
    use crate::state::Store;
    let store = Store::default();
    let base = || {
        vec![
            testing::workload("r1", &["10.0.0.1"], wl::Protocol::Hbone),
            testing::service("reviews", &["10.96.0.1"], &["r1"]),
        ]
    };
    let with = |p: api::TrafficPolicy| {
        let mut resources = base();
        resources.push(Resource {
            name: format!("demo/{}", p.name),
            version: "2".into(),
            kind: Some(Kind::TrafficPolicy(p)),
        });
        testing::response(true, resources)
    };
    let mut good = policy("good", REVIEWS);
    good.connection_pool = Some(api::ConnectionPool {
        max_requests: 7,
        ..Default::default()
    });
    store.apply(&with(good)).unwrap();
    let bad = api::TrafficPolicy {
        outlier_detection: outlier(5, 150, 0),
        ..policy("bad", REVIEWS)
    };
    let refused = store.apply(&with(bad)).unwrap_err();
    assert!(
        refused.contains("\"demo/bad\"") && refused.contains("150"),
        "{refused}"
    );
    let kept = store.current();
    let s = kept.traffic.service(REVIEWS).unwrap().settings();
    assert_eq!(s.policy.as_deref(), Some("demo/good"));
    assert_eq!(s.limits.max_requests, 7);
}
