//! The Istio request metrics the waypoint reports for what went through it.

use std::time::Duration;

use ambit_proto::api::route as rt;
use http::StatusCode;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_with_istio_labels_and_local_replies_with_their_flag() {
    let mesh = Mesh::start(Setup {
        routes: vec![route(
            "reviews",
            "reviews",
            vec![
                rt::RouteRule {
                    request_timeout_ms: 200,
                    ..rule(vec![prefix_match("/slow")], vec![backend("reviews-v2", 1)])
                },
                rule(vec![], vec![backend("reviews-v1", 1)]),
            ],
        )],
        ..Setup::default()
    })
    .await;
    mesh.app("reviews-v2")
        .set(Behavior::Delay(Duration::from_secs(2)));
    let mut conn = mesh.client().http1(REVIEWS).await;
    for _ in 0..5 {
        let reply = conn.get("/reviews/1").await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    }
    let reply = conn.get("/slow").await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{reply:?}");

    let ok = mesh
        .metric_line(
            "istio_requests_total",
            &[
                "reporter=\"waypoint\"",
                "destination_service=\"reviews-v1.demo.svc.cluster.local\"",
                "response_code=\"200\"",
                "response_flags=\"-\"",
            ],
        )
        .await;
    assert_eq!(value(&ok), 5.0, "{ok}");
    assert!(
        ok.contains("source_principal=\"spiffe://cluster.local/ns/demo/sa/client\""),
        "{ok}"
    );
    assert!(ok.contains("destination_workload=\"reviews-v1\""), "{ok}");

    let timed_out = mesh
        .metric_line(
            "istio_requests_total",
            &[
                "reporter=\"waypoint\"",
                "response_flags=\"UT\"",
                "response_code=\"504\"",
            ],
        )
        .await;
    assert_eq!(value(&timed_out), 1.0, "{timed_out}");
    assert!(
        timed_out.contains("destination_service=\"reviews-v2.demo.svc.cluster.local\""),
        "{timed_out}"
    );
}

/// The sample value at the end of an exposition line.
fn value(line: &str) -> f64 {
    line.rsplit(' ').next().unwrap().parse().unwrap()
}
