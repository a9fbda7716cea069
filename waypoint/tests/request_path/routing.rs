//! Route matching and weighted backends; services without routes; HTTP/2 end to end; tunnels
//! for services that are not the waypoint's.

use ambit_proto::hbone::HboneError;
use http::StatusCode;
use tokio::task::JoinSet;

use crate::support::*;

/// A 90/10 split, with a rule that sends `x-canary: 1` to v2 only.
fn canary_route() -> Setup {
    Setup {
        routes: vec![route(
            "reviews",
            "reviews",
            vec![
                rule(
                    vec![header_match("x-canary", "1")],
                    vec![backend("reviews-v2", 1)],
                ),
                rule(
                    vec![],
                    vec![backend("reviews-v1", 90), backend("reviews-v2", 10)],
                ),
            ],
        )],
        ..Setup::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weighted_split_sends_about_a_tenth_to_v2_and_the_canary_header_all() {
    let mesh = Mesh::start(canary_route()).await;
    let client = mesh.client();
    const REQUESTS: usize = 2000;
    const CONNECTIONS: usize = 8;
    let mut tasks = JoinSet::new();
    for _ in 0..CONNECTIONS {
        let mut conn = client.http1(REVIEWS).await;
        tasks.spawn(async move {
            let mut by_pod = (0usize, 0usize);
            for _ in 0..REQUESTS / CONNECTIONS {
                let reply = conn.get("/reviews/1").await;
                assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
                match reply.pod() {
                    Some("reviews-v1") => by_pod.0 += 1,
                    Some("reviews-v2") => by_pod.1 += 1,
                    other => panic!("answered by {other:?}"),
                }
            }
            by_pod
        });
    }
    let (mut v1, mut v2) = (0, 0);
    while let Some(done) = tasks.join_next().await {
        let (a, b) = done.unwrap();
        v1 += a;
        v2 += b;
    }
    assert_eq!(v1 + v2, REQUESTS);
    let share = v2 as f64 / REQUESTS as f64;
    assert!(
        (0.08..=0.12).contains(&share),
        "v2 got {v2} of {REQUESTS} ({:.1}%), not 8–12%",
        share * 100.0
    );
    // The pods saw exactly what the client was told, from the waypoint only.
    assert_eq!(mesh.app("reviews-v1").requests(), v1);
    assert_eq!(mesh.app("reviews-v2").requests(), v2);
    for pod in ["reviews-v1", "reviews-v2"] {
        let peers = mesh.app(pod).peers.lock().clone();
        assert_eq!(
            peers.into_iter().collect::<Vec<_>>(),
            vec![id("waypoint").to_string()],
            "{pod} must see the waypoint's identity only"
        );
    }

    // The canary rule wins over the split: every request goes to v2.
    let mut conn = client.http1(REVIEWS).await;
    for _ in 0..100 {
        let reply = conn
            .call(Call::get("/reviews/1").header("x-canary", "1"))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(reply.pod(), Some("reviews-v2"));
    }
    assert_eq!(mesh.app("reviews-v1").requests(), v1);
    assert_eq!(mesh.app("reviews-v2").requests(), v2 + 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_matching_rule_is_404_nr_and_a_service_without_routes_goes_to_its_endpoints() {
    let mesh = Mesh::start(Setup {
        routes: vec![route(
            "reviews",
            "reviews",
            vec![rule(
                vec![prefix_match("/reviews")],
                vec![backend("reviews-v1", 1)],
            )],
        )],
        ..Setup::default()
    })
    .await;
    let client = mesh.client();

    let mut conn = client.http1(REVIEWS).await;
    let reply = conn.get("/ratings/1").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");
    assert_eq!(reply.flags(), Some("NR"), "{reply:?}");
    assert!(reply.text().contains("no route"), "{}", reply.text());
    // "/reviewsX" is not under the "/reviews" prefix (whole segments).
    let reply = conn.get("/reviewsX").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");
    assert_eq!(reply.flags(), Some("NR"));
    assert_eq!(mesh.app("reviews-v1").requests(), 0);
    assert_eq!(mesh.app("reviews-v2").requests(), 0);

    let reply = conn.get("/reviews/1").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.pod(), Some("reviews-v1"));
    assert_eq!(reply.flags(), None);

    // reviews-v2 has no route: its requests go to its own endpoint, whatever the path.
    let mut conn = client.http1(REVIEWS_V2).await;
    for path in ["/", "/ratings/1", "/anything"] {
        let reply = conn.get(path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {reply:?}");
        assert_eq!(reply.pod(), Some("reviews-v2"), "{path}");
    }
    assert_eq!(mesh.app("reviews-v2").requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_works_end_to_end() {
    let mesh = Mesh::start(canary_route()).await;
    let conn = mesh.client().http2(REVIEWS).await;
    // Concurrent streams on the one connection.
    let mut tasks = JoinSet::new();
    for i in 0..40 {
        let mut conn = conn.clone();
        tasks.spawn(async move {
            let call = if i % 2 == 0 {
                Call::get("/reviews/1").header("x-canary", "1")
            } else {
                Call::get("/reviews/1")
            };
            (i, conn.call(call).await)
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (i, reply) = done.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        if i % 2 == 0 {
            assert_eq!(reply.pod(), Some("reviews-v2"));
        }
        // An HTTP/2 client's requests go upstream in HTTP/2.
        assert_eq!(
            reply.headers.get("x-version").map(|v| v.to_str().unwrap()),
            Some("HTTP/2.0"),
            "{reply:?}"
        );
    }
    let total = mesh.app("reviews-v1").requests() + mesh.app("reviews-v2").requests();
    assert_eq!(total, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_for_a_service_that_does_not_use_this_waypoint_is_refused_403() {
    let mesh = Mesh::start(Setup::default()).await;
    match mesh.client().tunnel(RATINGS).await {
        Err(HboneError::Refused { status, reason, .. }) => {
            assert_eq!(status, StatusCode::FORBIDDEN, "{reason}");
            assert!(reason.contains("ratings"), "{reason}");
        }
        Err(e) => panic!("refused otherwise: {e}"),
        Ok(_) => panic!("the waypoint accepted a tunnel for a service that is not its"),
    }
    assert_eq!(
        mesh.app("reviews-v1")
            .tunnels
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}
