//! Connection-pool settings of a traffic policy over real sockets, counted on the pod side (each
//! upstream connection of the waypoint is one HBONE tunnel to the pod).

use std::sync::atomic::Ordering;

use ambit_proto::api::traffic as tp;
use http::StatusCode;
use tokio::task::JoinSet;

use crate::breaker::until;
use crate::support::*;

/// reviews-v1 gets `pool`; reviews-v2 has no policy (the defaults), for comparison.
fn setup(pool: tp::ConnectionPool) -> Setup {
    Setup {
        traffic: vec![tp::TrafficPolicy {
            connection_pool: Some(pool),
            ..traffic_policy("pool", "reviews-v1")
        }],
        ..Setup::default()
    }
}

fn tunnels(mesh: &Mesh, pod: &str) -> usize {
    mesh.app(pod).tunnels.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_connection_1_opens_a_connection_per_request() {
    let mesh = Mesh::start(setup(tp::ConnectionPool {
        max_requests_per_connection: 1,
        ..Default::default()
    }))
    .await;
    let client = mesh.client();
    for (vip, pod) in [(REVIEWS_V1, "reviews-v1"), (REVIEWS_V2, "reviews-v2")] {
        let mut conn = client.http1(vip).await;
        for _ in 0..10 {
            let reply = conn.get("/reviews/1").await;
            assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
            assert_eq!(reply.pod(), Some(pod));
        }
    }
    assert_eq!(
        tunnels(&mesh, "reviews-v1"),
        10,
        "one connection per request"
    );
    assert_eq!(tunnels(&mesh, "reviews-v2"), 1, "the default reuses one");

    // HTTP/2 upstream too: each connection is retired after its one request.
    let mut conn = client.http2(REVIEWS_V1).await;
    for _ in 0..5 {
        let reply = conn.get("/reviews/1").await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(reply.headers["x-version"], "HTTP/2.0");
    }
    assert_eq!(tunnels(&mesh, "reviews-v1"), 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_multiplexing_off_sends_concurrent_requests_on_several_connections() {
    const CONCURRENT: usize = 8;
    let mesh = Mesh::start(setup(tp::ConnectionPool {
        http2_multiplexing: tp::H2Multiplexing::Off as i32,
        ..Default::default()
    }))
    .await;
    let gate = Gate::new();
    let client = mesh.client();
    let mut tasks = JoinSet::new();
    for pod in ["reviews-v1", "reviews-v2"] {
        mesh.app(pod).set(Behavior::Hold(gate.clone()));
    }
    for vip in [REVIEWS_V1, REVIEWS_V2] {
        // One HTTP/2 client connection each: the client multiplexes, the waypoint decides.
        let conn = client.http2(vip).await;
        for _ in 0..CONCURRENT {
            let mut conn = conn.clone();
            tasks.spawn(async move { conn.get("/reviews/1").await });
        }
    }
    until("every request is at its pod", || {
        mesh.app("reviews-v1").requests() == CONCURRENT
            && mesh.app("reviews-v2").requests() == CONCURRENT
    })
    .await;
    assert_eq!(
        tunnels(&mesh, "reviews-v1"),
        CONCURRENT,
        "one request at a time per connection"
    );
    assert_eq!(tunnels(&mesh, "reviews-v2"), 1, "multiplexed by default");
    gate.open();
    while let Some(reply) = tasks.join_next().await {
        let reply = reply.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(reply.headers["x-version"], "HTTP/2.0");
    }
    // Idle again, the connections are reused: no new tunnel for sequential requests.
    let mut conn = client.http2(REVIEWS_V1).await;
    for _ in 0..5 {
        assert_eq!(conn.get("/reviews/1").await.status, StatusCode::OK);
    }
    assert_eq!(tunnels(&mesh, "reviews-v1"), CONCURRENT);
}
