//! Request timeouts, retries (configured, budgeted, and safe by default) and connection
//! failures.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_proto::api::route as rt;
use ambit_waypoint::body;
use bytes::Bytes;
use futures::StreamExt;
use http::StatusCode;
use http_body::Frame;
use http_body_util::StreamBody;
use tokio::task::JoinSet;

use crate::support::*;

/// Route `reviews` → reviews-v1 only, with `retry` and a request timeout (0: none).
fn to_v1(retry: Option<rt::RetryPolicy>, request_timeout_ms: u64) -> Setup {
    Setup {
        routes: vec![route(
            "reviews",
            "reviews",
            vec![rt::RouteRule {
                retry,
                request_timeout_ms,
                ..rule(vec![], vec![backend("reviews-v1", 1)])
            }],
        )],
        ..Setup::default()
    }
}

/// Retries after the first try (GEP-1731 `attempts`), on these statuses, without backoff.
fn retry(attempts: u32, codes: &[u32]) -> Option<rt::RetryPolicy> {
    Some(rt::RetryPolicy {
        attempts,
        codes: codes.to_vec(),
        grpc_codes: vec![],
        backoff_ms: 0,
    })
}

/// `count` GETs over `connections` HTTP/1.1 connections; the replies.
async fn load(client: &Client, count: usize, connections: usize) -> Vec<Reply> {
    let mut tasks = JoinSet::new();
    for c in 0..connections {
        let mut conn = client.http1(REVIEWS).await;
        let n = count / connections + usize::from(c < count % connections);
        tasks.spawn(async move {
            let mut replies = Vec::with_capacity(n);
            for _ in 0..n {
                replies.push(conn.get("/reviews/1").await);
            }
            replies
        });
    }
    let mut all = Vec::with_capacity(count);
    while let Some(done) = tasks.join_next().await {
        all.extend(done.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_behind_a_request_timeout_is_504_ut_in_time() {
    let mesh = Mesh::start(to_v1(None, 200)).await;
    mesh.app("reviews-v1")
        .set(Behavior::Delay(Duration::from_secs(2)));
    let mut conn = mesh.client().http1(REVIEWS).await;
    let started = Instant::now();
    let reply = conn.get("/reviews/1").await;
    let took = started.elapsed();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{reply:?}");
    assert_eq!(reply.flags(), Some("UT"), "{reply:?}");
    assert!(took < Duration::from_secs(1), "the 504 took {took:?}");
    assert!(
        took >= Duration::from_millis(200),
        "the 504 came before the timeout: {took:?}"
    );
    assert_eq!(mesh.app("reviews-v1").requests(), 1);
    // The connection is still usable after a local reply.
    mesh.app("reviews-v1").set(Behavior::Ok);
    let reply = conn.get("/reviews/1").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
}

/// Without a route timeout the waypoint's default bounds the wait for a backend that never
/// answers (no wait on a peer is unbounded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_a_route_timeout_gets_the_default_one() {
    let mesh = Mesh::start(Setup {
        default_timeout: Some(Duration::from_millis(300)),
        ..to_v1(None, 0)
    })
    .await;
    mesh.app("reviews-v1")
        .set(Behavior::Delay(Duration::from_secs(5)));
    let started = Instant::now();
    let reply = mesh.client().http1(REVIEWS).await.get("/reviews/1").await;
    let took = started.elapsed();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{reply:?}");
    assert_eq!(reply.flags(), Some("UT"), "{reply:?}");
    assert!(took < Duration::from_secs(2), "the 504 took {took:?}");
}

/// Half of the requests fail their first try with 503 (a retry of the same request succeeds):
/// with 3 retries on 503, nearly all of them succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_on_503_hide_a_backend_failing_half_of_the_requests() {
    let mesh = Mesh::start(to_v1(retry(3, &[503]), 0)).await;
    let app = mesh.app("reviews-v1");
    app.set(Behavior::FailHalfOfNew(Arc::new(Flaky::default())));
    // Half failing needs a retry for every other request: 250 requests need ~125, within what
    // the default budget (Linkerd's) affords a burst (20% of 250 + 10/s over 10 s = 150).
    const REQUESTS: usize = 250;
    let replies = load(&mesh.client(), REQUESTS, 4).await;
    let ok = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    let urx = replies.iter().filter(|r| r.flags() == Some("URX")).count();
    assert!(
        ok * 100 > REQUESTS * 99,
        "{ok} of {REQUESTS} succeeded (>99% expected); {urx} flagged URX; the pod saw {} tries, {} of them 503 \
         (the retry budget, 20% of requests + 10/s over 10 s, affords about {} retries here)",
        app.requests(),
        app.failed(),
        REQUESTS / 5 + 100
    );
    // Each try the pod answered either succeeded, once per request, or failed.
    assert_eq!(app.requests(), ok + app.failed());
}

/// Retries may add at most the budget (Linkerd's: 20% of the requests plus 10 per second over
/// a 10 s window) to the load of a failing backend, whatever the route allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_stay_within_the_budget() {
    let mesh = Mesh::start(to_v1(retry(3, &[503]), 0)).await;
    let app = mesh.app("reviews-v1");
    app.set(Behavior::FailRandomly(0.5));
    const REQUESTS: usize = 400;
    let started = Instant::now();
    let replies = load(&mesh.client(), REQUESTS, 4).await;
    let took = started.elapsed().as_secs_f64();
    let retries = app.requests() - REQUESTS;
    // The floor counts per second of the window: allow for the whole run, plus racing tries.
    let budget = REQUESTS / 5 + (10.0 * took.max(10.0)) as usize + 8;
    assert!(
        retries <= budget,
        "{retries} retries for {REQUESTS} requests in {took:.1}s; the budget allows about {budget}"
    );
    let ok = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    let failed = replies.len() - ok;
    // What failed is the pod's own 503, passed on.
    assert!(
        replies
            .iter()
            .filter(|r| r.status != StatusCode::OK)
            .all(|r| r.status == StatusCode::SERVICE_UNAVAILABLE && r.pod() == Some("reviews-v1"))
    );
    assert!(
        retries > 0 && failed > 0,
        "{retries} retries, {failed} failures"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_streamed_post_is_sent_once_and_never_retried() {
    let mesh = Mesh::start(to_v1(retry(3, &[503]), 0)).await;
    let app = mesh.app("reviews-v1");
    app.set(Behavior::Status(StatusCode::SERVICE_UNAVAILABLE));
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 16;
    let chunks = futures::stream::iter(0..CHUNKS).then(|i| async move {
        tokio::task::yield_now().await;
        Ok::<_, Infallible>(Frame::data(Bytes::from(vec![i as u8; CHUNK])))
    });
    let upload = body::boxed(StreamBody::new(chunks));
    let mut conn = mesh.client().http1(REVIEWS).await;
    let reply = conn.call(Call::post("/reviews/1", upload)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert_eq!(
        reply.pod(),
        Some("reviews-v1"),
        "the pod's own 503: {reply:?}"
    );
    assert_eq!(
        app.requests(),
        1,
        "a body past the replay cap cannot be sent again"
    );
    assert_eq!(app.body_bytes(), (CHUNK * CHUNKS) as u64);

    // A small body is replayed: the same POST is tried 1 + 3 times.
    let reply = conn
        .call(Call::post("/reviews/1", body::full(vec![7u8; 1024])))
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert_eq!(reply.flags(), Some("URX"), "{reply:?}");
    assert_eq!(app.requests(), 1 + 4);
    assert_eq!(app.body_bytes(), (CHUNK * CHUNKS + 4 * 1024) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_failure_is_retried_on_another_endpoint_without_retry_config() {
    // No route: reviews' own endpoints, one of which has no HBONE server.
    let mesh = Mesh::start(Setup {
        down: vec!["reviews-v2"],
        ..Setup::default()
    })
    .await;
    let mut conn = mesh.client().http1(REVIEWS).await;
    for i in 0..50 {
        let reply = conn.get("/reviews/1").await;
        assert_eq!(reply.status, StatusCode::OK, "request {i}: {reply:?}");
        assert_eq!(reply.pod(), Some("reviews-v1"));
    }
    assert_eq!(mesh.app("reviews-v1").requests(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_down_is_503_uf() {
    let mesh = Mesh::start(Setup {
        down: vec!["reviews-v1", "reviews-v2"],
        ..Setup::default()
    })
    .await;
    let mut conn = mesh.client().http1(REVIEWS).await;
    let started = Instant::now();
    let reply = conn.get("/reviews/1").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert_eq!(reply.flags(), Some("UF"), "{reply:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    // The connection to the waypoint is still usable.
    let reply = conn.get("/reviews/1").await;
    assert_eq!(reply.flags(), Some("UF"), "{reply:?}");
}
