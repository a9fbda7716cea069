//! The circuit breaker over real sockets: requests past a service's limits are refused at once
//! with 503 `UO`, counted, while the service's admitted requests and other services carry on.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ambit_proto::api::route as rt;
use ambit_proto::api::traffic as tp;
use ambit_waypoint::breaker::{Breaker, Limit};
use http::StatusCode;
use tokio::task::JoinSet;

use crate::support::*;

/// A breaker on service reviews-v1 (pod reviews-v1); 0 leaves a limit at the default.
fn breaker(max_connections: u32, max_pending: u32, max_requests: u32) -> Setup {
    Setup {
        traffic: vec![tp::TrafficPolicy {
            connection_pool: Some(tp::ConnectionPool {
                max_connections,
                max_pending_requests: max_pending,
                max_requests,
                ..Default::default()
            }),
            ..traffic_policy("breaker", "reviews-v1")
        }],
        ..Setup::default()
    }
}

fn breaker_of(mesh: &Mesh, service: &str) -> Arc<Breaker> {
    mesh.store
        .current()
        .traffic
        .service(&host(service))
        .expect("the service has traffic settings")
        .breaker()
        .clone()
}

/// Polls `done` until true; panics after a generous deadline (hang detection only).
pub(crate) async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(crate) fn value(line: &str) -> f64 {
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Waits until the series of `metric` with `labels` reads `want` (requests are recorded when
/// their response body has ended, which can be just after the client read it).
pub(crate) async fn metric_reaches(mesh: &Mesh, metric: &str, labels: &[&str], want: f64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let line = mesh.metric_line(metric, labels).await;
        if value(&line) == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{metric} {labels:?} stays at {line}, {want} expected"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The must-show: max 10 pending (5 connections, HTTP/1.1 upstream, so requests pend), a burst
/// of 100 slow requests: the overflow is refused with 503 `UO` before any slow answer comes
/// back, the admitted ones succeed, another service answers meanwhile, the metric counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_past_max_pending_gets_503_uo_at_once_and_the_rest_succeed() {
    const BURST: usize = 100;
    let mesh = Mesh::start(breaker(5, 10, 0)).await;
    let gate = Gate::new();
    let app = mesh.app("reviews-v1").clone();
    app.set(Behavior::Hold(gate.clone()));
    let breaker = breaker_of(&mesh, "reviews-v1");
    let client = mesh.client();
    // Connections first, so that the burst is of requests only.
    let mut conns = Vec::with_capacity(BURST);
    for _ in 0..BURST {
        conns.push(client.http1(REVIEWS_V1).await);
    }
    let refused = Arc::new(AtomicUsize::new(0));
    let mut burst = JoinSet::new();
    for mut conn in conns {
        let refused = refused.clone();
        burst.spawn(async move {
            let reply = conn.get("/reviews/1").await;
            if reply.flags() == Some("UO") {
                refused.fetch_add(1, Ordering::SeqCst);
            }
            reply
        });
    }
    // Settled: the 5 connections' requests are at the pod (held), and every other request is
    // accounted for, refused (its answer is back) or waiting for a connection. (While the 5
    // are being dialled they count as pending too, so the sum alone is not enough.)
    until("the burst has settled", || {
        app.requests() == 5
            && refused.load(Ordering::SeqCst)
                + app.requests()
                + breaker.in_use(Limit::Pending) as usize
                == BURST
    })
    .await;
    let refused_before_release = refused.load(Ordering::SeqCst);
    let pending = breaker.in_use(Limit::Pending) as usize;
    assert_eq!(
        app.requests(),
        5,
        "one request per connection, 5 connections"
    );
    assert_eq!(breaker.in_use(Limit::Connections), 5);
    // Requests whose connection was being dialled were pending too, so at least 5 and at
    // most 10 wait now, depending on how many arrived while the 5 were dialled.
    assert!((5..=10).contains(&pending), "{pending} pending");
    assert_eq!(refused_before_release, BURST - 5 - pending);

    // The waypoint answers another service normally meanwhile.
    let mut other = client.http1(REVIEWS_V2).await;
    for _ in 0..5 {
        let reply = other.get("/reviews/1").await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(reply.pod(), Some("reviews-v2"));
    }

    gate.open();
    let mut ok = 0;
    let mut uo = 0;
    while let Some(reply) = burst.join_next().await {
        let reply = reply.unwrap();
        if reply.flags() == Some("UO") {
            uo += 1;
            assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
            assert!(
                reply.text().contains("max_pending_requests 10")
                    && reply.text().contains("traffic policy demo/breaker"),
                "{}",
                reply.text()
            );
        } else {
            assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
            assert_eq!(reply.pod(), Some("reviews-v1"));
            ok += 1;
        }
    }
    // Every refusal had come back before any slow answer was let go.
    assert_eq!(uo, refused_before_release);
    assert_eq!(ok, 5 + pending);
    assert_eq!(app.requests(), ok, "nothing refused reached the pod");

    metric_reaches(
        &mesh,
        "ambit_upstream_overflow_total",
        &[
            "destination_service=\"reviews-v1.demo.svc.cluster.local\"",
            "limit=\"pending\"",
        ],
        uo as f64,
    )
    .await;
    metric_reaches(
        &mesh,
        "istio_requests_total",
        &["response_flags=\"UO\"", "response_code=\"503\""],
        uo as f64,
    )
    .await;

    // Healthy afterwards: the counts are back to 0 and a request goes through.
    until("the breaker's counts are back to 0", || {
        breaker.in_use(Limit::Pending) == 0 && breaker.in_use(Limit::Requests) == 0
    })
    .await;
    let reply = client.http1(REVIEWS_V1).await.get("/reviews/1").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
}

/// max_requests counts requests in flight whatever the connections: over HTTP/2 (one
/// multiplexed connection) the fourth of ten concurrent requests is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_max_requests_are_refused_over_one_http2_connection() {
    let mesh = Mesh::start(breaker(0, 0, 3)).await;
    let gate = Gate::new();
    let app = mesh.app("reviews-v1").clone();
    app.set(Behavior::Hold(gate.clone()));
    let conn = mesh.client().http2(REVIEWS_V1).await;
    let mut tasks = JoinSet::new();
    for _ in 0..10 {
        let mut conn = conn.clone();
        tasks.spawn(async move { conn.get("/reviews/1").await });
    }
    let mut refused = Vec::new();
    while refused.len() < 7 {
        let reply = tasks.join_next().await.unwrap().unwrap();
        assert_eq!(reply.flags(), Some("UO"), "{reply:?}");
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(reply.text().contains("max_requests 3"), "{}", reply.text());
        refused.push(reply);
    }
    until("the 3 admitted requests are at the pod", || {
        app.requests() == 3
    })
    .await;
    gate.open();
    while let Some(reply) = tasks.join_next().await {
        let reply = reply.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    }
    assert_eq!(app.requests(), 3);
    metric_reaches(
        &mesh,
        "ambit_upstream_overflow_total",
        &[
            "destination_service=\"reviews-v1.demo.svc.cluster.local\"",
            "limit=\"requests\"",
        ],
        7.0,
    )
    .await;
}

/// Past max_retries a retry is not made: the answer that wanted it is passed on, flagged `UO`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_past_max_retries_is_not_made_and_the_answer_is_flagged_uo() {
    let mut setup = Setup {
        routes: vec![route(
            "reviews-v1",
            "reviews-v1",
            vec![rt::RouteRule {
                retry: Some(rt::RetryPolicy {
                    attempts: 1,
                    codes: vec![503],
                    grpc_codes: vec![],
                    backoff_ms: 0,
                }),
                ..rule(vec![], vec![backend("reviews-v1", 1)])
            }],
        )],
        ..breaker(0, 0, 0)
    };
    setup.traffic[0]
        .connection_pool
        .as_mut()
        .unwrap()
        .max_retries = 1;
    let mesh = Mesh::start(setup).await;
    let gate = Gate::new();
    let app = mesh.app("reviews-v1").clone();
    app.set(Behavior::FailThenHold(
        Arc::new(Flaky::default()),
        gate.clone(),
    ));
    let client = mesh.client();
    // The first request's retry is held at the pod: the one retry allowed is in flight.
    let mut first = client.http1(REVIEWS_V1).await;
    let held = tokio::spawn(async move { first.get("/reviews/1").await });
    until("the first request's retry is at the pod", || {
        app.requests() == 2
    })
    .await;
    // The second's first try fails too; its retry is refused: the pod's 503, flagged.
    let reply = client.http1(REVIEWS_V1).await.get("/reviews/1").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert_eq!(reply.pod(), Some("reviews-v1"), "the pod's own answer");
    assert_eq!(reply.flags(), Some("UO"), "{reply:?}");
    assert_eq!(app.requests(), 3, "no retry was sent");
    gate.open();
    let reply = held.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.flags(), None);
    metric_reaches(
        &mesh,
        "ambit_upstream_overflow_total",
        &[
            "destination_service=\"reviews-v1.demo.svc.cluster.local\"",
            "limit=\"retries\"",
        ],
        1.0,
    )
    .await;
    // The retry's slot was given back: the next request may retry again.
    let gate = Gate::new();
    app.set(Behavior::FailThenHold(
        Arc::new(Flaky::default()),
        gate.clone(),
    ));
    gate.open();
    let reply = client.http1(REVIEWS_V1).await.get("/reviews/1").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(app.requests(), 5);
}

/// A service without a policy has the default limits, high enough for any burst a test makes,
/// and its overflow counters are exposed (at 0) once it has had traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_without_a_policy_get_the_defaults() {
    let mesh = Mesh::start(Setup::default()).await;
    let gate = Gate::new();
    let app = mesh.app("reviews-v2").clone();
    app.set(Behavior::Hold(gate.clone()));
    let conn = mesh.client().http2(REVIEWS_V2).await;
    let mut tasks = JoinSet::new();
    for _ in 0..50 {
        let mut conn = conn.clone();
        tasks.spawn(async move { conn.get("/reviews/1").await });
    }
    until("50 requests at the pod", || app.requests() == 50).await;
    gate.open();
    while let Some(reply) = tasks.join_next().await {
        assert_eq!(reply.unwrap().status, StatusCode::OK);
    }
    let line = mesh
        .metric_line(
            "ambit_upstream_overflow_total",
            &[
                "destination_service=\"reviews-v2.demo.svc.cluster.local\"",
                "limit=\"requests\"",
            ],
        )
        .await;
    assert_eq!(value(&line), 0.0, "{line}");
}

/// The config dump shows each service's traffic policy as applied, defaults filled in, so an
/// operator sees which limits a 503 `UO` came from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_dump_shows_each_services_limits() {
    let mesh = Mesh::start(breaker(0, 10, 0)).await;
    let dump = mesh.config_dump().await;
    assert_eq!(
        dump["traffic_policies"],
        serde_json::json!(["demo/breaker"])
    );
    let traffic = |service: &str| {
        dump["services"]
            .as_array()
            .expect("a list of services")
            .iter()
            .find(|s| s["service"] == format!("demo/{service}"))
            .unwrap_or_else(|| panic!("{service} is in the dump: {dump:#}"))["traffic"]
            .clone()
    };
    let with_policy = traffic("reviews-v1");
    assert_eq!(with_policy["policy"], "demo/breaker", "{with_policy:#}");
    assert_eq!(with_policy["max_pending_requests"], 10, "{with_policy:#}");
    assert_eq!(
        with_policy["max_requests"],
        ambit_waypoint::traffic::DEFAULT_LIMIT,
        "{with_policy:#}"
    );
    let without = traffic("reviews-v2");
    assert_eq!(without["policy"], serde_json::Value::Null, "{without:#}");
    assert_eq!(
        without["max_pending_requests"],
        ambit_waypoint::traffic::DEFAULT_LIMIT,
        "{without:#}"
    );
}
