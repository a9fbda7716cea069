//! Outlier ejection over real sockets: of a service's 3 endpoints, one answering 500 is ejected
//! after 5 consecutive errors, receives nothing while ejected, and is back after its time.
//! No route retry is configured: the only failures clients see are the 5 that eject it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ambit_proto::api::traffic as tp;
use http::StatusCode;
use tokio::task::JoinSet;

use crate::breaker::{metric_reaches, until};
use crate::support::*;

/// A service through the waypoint in front of all three pods.
const TRIO: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 13)), 9080);
const TRIO_HOST: &str = "destination_service=\"trio.demo.svc.cluster.local\"";

fn setup(base_ejection_time_ms: u64) -> Setup {
    Setup {
        services: vec![("trio", TRIO, vec!["reviews-v1", "reviews-v2", "echo"])],
        traffic: vec![tp::TrafficPolicy {
            outlier_detection: Some(tp::OutlierDetection {
                consecutive_5xx: 5,
                consecutive_gateway_errors: 0,
                consecutive_connect_failures: 0,
                base_ejection_time_ms,
                // 10 %: one of three (the first ejection is always allowed).
                max_ejection_percent: 10,
            }),
            ..traffic_policy("outliers", "trio")
        }],
        ..Setup::default()
    }
}

/// `count` GETs over `connections` HTTP/1.1 connections to the trio.
async fn load(client: &Client, count: usize, connections: usize) -> Vec<Reply> {
    let mut tasks = JoinSet::new();
    for c in 0..connections {
        let mut conn = client.http1(TRIO).await;
        let n = count / connections + usize::from(c < count % connections);
        tasks.spawn(async move {
            let mut replies = Vec::with_capacity(n);
            for _ in 0..n {
                replies.push(conn.get("/").await);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_endpoint_answering_500_is_ejected_then_returns() {
    // Long enough for the few hundred requests below, even on a slow machine; the test checks
    // that the ejection did last through them rather than trusting the clock.
    let mesh = Mesh::start(setup(3000)).await;
    let bad = mesh.app("echo").clone();
    bad.set(Behavior::Status(StatusCode::INTERNAL_SERVER_ERROR));
    let bad_endpoint = SocketAddr::new(mesh.pods["echo"].hbone.ip(), 8080);
    let traffic = mesh
        .store
        .current()
        .traffic
        .service(&host("trio"))
        .unwrap()
        .clone();

    // One request at a time until the bad pod has answered five: each of its answers is
    // counted before the client gets it, so the fifth ejects it.
    let client = mesh.client();
    let mut conn = client.http1(TRIO).await;
    let mut sent = 0;
    while bad.requests() < 5 {
        sent += 1;
        assert!(sent <= 500, "the bad pod got {} of 500", bad.requests());
        let reply = conn.get("/").await;
        if reply.pod() == Some("echo") {
            assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        } else {
            assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        }
    }
    assert_eq!(traffic.ejected(), 1);
    assert!(traffic.is_ejected(bad_endpoint));
    metric_reaches(&mesh, "ambit_outlier_ejections_total", &[TRIO_HOST], 1.0).await;
    metric_reaches(&mesh, "ambit_outlier_ejected", &[TRIO_HOST], 1.0).await;

    // While it is out: nothing reaches it, everything succeeds.
    const DURING: usize = 300;
    let replies = load(&client, DURING, 4).await;
    assert_eq!(
        traffic.ejected(),
        1,
        "the ejection ended before the {DURING} requests did (a very slow run?): the test cannot tell what it should"
    );
    assert_eq!(bad.requests(), 5, "a request reached the ejected endpoint");
    let ok = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    assert!(ok * 100 > DURING * 99, "{ok} of {DURING} succeeded");
    assert_eq!(ok, DURING);
    let pods: std::collections::HashSet<_> = replies.iter().filter_map(|r| r.pod()).collect();
    assert_eq!(
        pods,
        ["reviews-v1", "reviews-v2"].into_iter().collect(),
        "both healthy endpoints share the load"
    );

    // After its time it is back, and gets requests again.
    bad.set(Behavior::Ok);
    until("the endpoint is returned", || traffic.ejected() == 0).await;
    metric_reaches(&mesh, "ambit_outlier_ejected", &[TRIO_HOST], 0.0).await;
    let mut sent = 0;
    while bad.requests() == 5 {
        sent += 1;
        assert!(sent <= 200, "the returned endpoint got no request of 200");
        let reply = conn.get("/").await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    }
    assert_eq!(
        value_of(&mesh, "ambit_outlier_ejections_total").await,
        1.0,
        "ejected once"
    );
}

/// Connect failures count as 5xx (the client gets a 503 for them): an endpoint whose pod is
/// down is ejected, and the service's requests go to the others without any failing (the
/// waypoint retries a failed connect on another endpoint by itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_refuses_connections_is_ejected() {
    let mesh = Mesh::start(Setup {
        down: vec!["echo"],
        ..setup(60_000)
    })
    .await;
    let traffic = mesh
        .store
        .current()
        .traffic
        .service(&host("trio"))
        .unwrap()
        .clone();
    let down = SocketAddr::new(mesh.pods["echo"].hbone.ip(), 8080);
    let mut conn = mesh.client().http1(TRIO).await;
    let mut sent = 0;
    while !traffic.is_ejected(down) {
        sent += 1;
        assert!(sent <= 1000, "not ejected after {sent} requests");
        let reply = conn.get("/").await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    }
    metric_reaches(&mesh, "ambit_outlier_ejections_total", &[TRIO_HOST], 1.0).await;
}

async fn value_of(mesh: &Mesh, metric: &str) -> f64 {
    let line = mesh.metric_line(metric, &[TRIO_HOST]).await;
    crate::breaker::value(&line)
}
