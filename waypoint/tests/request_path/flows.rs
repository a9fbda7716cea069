//! What the waypoint reports to the controller's telemetry stream for the requests it served:
//! failed ones with the cause in words, tapped ones tagged, every one counted by shape; and the
//! client named by its workload even though the waypoint's config does not list it.

use std::time::{Duration, Instant};

use ambit_discovery::telemetry::baggage::SourceWorkload;
use ambit_proto::api::route as rt;
use ambit_proto::api::security::Action;
use ambit_proto::api::telemetry::{FlowEvent, Protocol, Tap};
use http::StatusCode;

use crate::support::*;

const CLIENT: &str = "spiffe://cluster.local/ns/demo/sa/client";

/// The baggage the client's ztunnel sends on its tunnels.
fn client_baggage() -> String {
    SourceWorkload {
        namespace: "demo".into(),
        workload: "client".into(),
        app: "client".into(),
        version: "latest".into(),
    }
    .encode()
}

/// The events queued so far, waiting until `n` are (each is queued when its response ends).
async fn events(mesh: &Mesh, n: usize) -> Vec<FlowEvent> {
    let deadline = Instant::now() + PATIENCE;
    let mut got = Vec::new();
    loop {
        got.extend(mesh.reports.lock().queued());
        if got.len() >= n {
            return got;
        }
        assert!(Instant::now() < deadline, "only {got:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_the_config_does_not_list_is_named_by_the_workload_its_ztunnel_sends() {
    // As in the demo: the controller sends the waypoint its destinations, not its clients, so
    // the client's address is nobody in the config. Its metrics said "unknown" then.
    let mesh = Mesh::start(Setup {
        client_unlisted: true,
        ..Setup::default()
    })
    .await;
    let mut conn = mesh.client().naming(client_baggage()).http1(REVIEWS).await;
    assert_eq!(conn.get("/reviews/1").await.status, StatusCode::OK);
    let line = mesh
        .metric_line(
            "istio_requests_total",
            &["reporter=\"waypoint\"", "source_workload=\"client\""],
        )
        .await;
    assert!(
        line.contains(&format!("source_principal=\"{CLIENT}\"")),
        "{line}"
    );
    assert!(
        line.contains("source_workload_namespace=\"demo\""),
        "{line}"
    );
    assert!(line.contains("source_app=\"client\""), "{line}");

    // A claim outside the namespace the certificate proves is not believed.
    let mut liar = mesh
        .client_as("denied-client")
        .naming(client_baggage().replace("demo", "legacy"))
        .http1(REVIEWS)
        .await;
    assert_eq!(liar.get("/reviews/2").await.status, StatusCode::OK);
    let line = mesh
        .metric_line(
            "istio_requests_total",
            &["source_principal=\"spiffe://cluster.local/ns/demo/sa/denied-client\""],
        )
        .await;
    assert!(line.contains("source_workload=\"unknown\""), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_reported_failed_with_their_cause_tapped_with_their_tap_and_by_shape() {
    let mesh = Mesh::start(Setup {
        client_unlisted: true,
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
        policies: vec![policy(
            "deny-denied",
            Action::Deny,
            &["spiffe://cluster.local/ns/demo/sa/denied-client"],
        )],
        ..Setup::default()
    })
    .await;
    mesh.app("reviews-v2")
        .set(Behavior::Delay(Duration::from_secs(2)));
    let mut conn = mesh.client().naming(client_baggage()).http1(REVIEWS).await;

    // Healthy and untapped: counted by shape, no event built.
    assert_eq!(conn.get("/reviews/1").await.status, StatusCode::OK);
    // Timed out: sent untagged, the cause in words.
    assert_eq!(conn.get("/slow").await.status, StatusCode::GATEWAY_TIMEOUT);
    let e = events(&mesh, 1).await.remove(0);
    assert!(e.failed && e.taps.is_empty(), "{e:?}");
    assert_eq!((e.response_flags.as_str(), e.status), ("UT", 504));
    assert!(
        e.reason.starts_with("upstream timed out: ") && e.reason.ends_with("(route demo/reviews)"),
        "{}",
        e.reason
    );
    assert_eq!(e.route, "demo/reviews");
    assert_eq!(e.backend_service, host("reviews-v2"));
    assert_eq!(e.destination_service, host("reviews"));
    assert_eq!(e.destination_port, 9080);
    let src = e.source.as_ref().unwrap();
    assert_eq!(
        (src.workload.as_str(), src.identity.as_str()),
        ("client", CLIENT)
    );

    // Denied: the policy named.
    let mut denied = mesh.client_as("denied-client").http1(REVIEWS).await;
    assert_eq!(denied.get("/reviews/1").await.status, StatusCode::FORBIDDEN);
    let e = events(&mesh, 1).await.remove(0);
    assert_eq!(
        (e.policy.as_str(), e.response_flags.as_str()),
        ("demo/deny-denied", "RBAC")
    );
    assert!(
        e.reason
            .starts_with("denied by authorization policy demo/deny-denied"),
        "{}",
        e.reason
    );

    // A tap on the client's GETs under /reviews/: only those come, tagged.
    mesh.reporter.start_tap(Tap {
        id: 9,
        workload: "client".into(),
        method: "GET".into(),
        path_prefix: "/reviews/".into(),
        ..Default::default()
    });
    assert_eq!(conn.get("/other").await.status, StatusCode::OK);
    assert_eq!(conn.get("/reviews/7").await.status, StatusCode::OK);
    let e = events(&mesh, 1).await.remove(0);
    assert_eq!(e.taps, vec![9]);
    assert_eq!(
        (e.method.as_str(), e.path.as_str(), e.status, e.grpc_status),
        ("GET", "/reviews/7", 200, -1)
    );
    assert_eq!(e.protocol, Protocol::Http1 as i32);
    assert!(!e.failed && e.mutual_tls && e.attempts == 1, "{e:?}");
    assert_eq!(e.destination.as_ref().unwrap().workload, "reviews-v1");
    assert!(
        mesh.reports.lock().queued().is_empty(),
        "/other was not tapped"
    );

    let shapes = mesh.reporter.shapes().snapshot();
    let shape = |prefix: &str, who: &str| {
        shapes
            .iter()
            .find(|s| s.path_prefix == prefix && s.source_identity.ends_with(who))
            .map(|s| (s.count, s.failed, s.method.clone(), s.destination_port))
    };
    assert_eq!(
        shape("/reviews/", "/client"),
        Some((2, 0, "GET".into(), 9080))
    );
    assert_eq!(shape("/slow", "/client"), Some((1, 1, "GET".into(), 9080)));
    assert_eq!(
        shape("/reviews/", "/denied-client"),
        Some((1, 1, "GET".into(), 9080))
    );
    assert!(
        shapes
            .iter()
            .all(|s| s.destination_service == host("reviews"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_a_policy_in_observer_mode_would_deny_goes_through_and_says_so_when_tapped() {
    let mesh = Mesh::start(Setup {
        policies: vec![sec_dry_run(policy("deny-client", Action::Deny, &[CLIENT]))],
        ..Setup::default()
    })
    .await;
    mesh.reporter.start_tap(Tap {
        id: 1,
        ..Default::default()
    });
    let mut conn = mesh.client().http1(REVIEWS).await;
    assert_eq!(conn.get("/reviews/1").await.status, StatusCode::OK);
    let e = events(&mesh, 1).await.remove(0);
    assert!(!e.failed && e.would_deny, "{e:?}");
    assert_eq!(e.policy, "demo/deny-client");
    assert!(e.reason.contains("observer mode"), "{}", e.reason);
}

fn sec_dry_run(
    mut p: ambit_proto::api::security::AuthorizationPolicy,
) -> ambit_proto::api::security::AuthorizationPolicy {
    p.dry_run = true;
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opaque_tcp_connection_is_reported_and_counted_by_shape() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mesh = Mesh::start(Setup::default()).await;
    mesh.reporter.start_tap(Tap {
        id: 4,
        service: "tcp-echo".into(),
        ..Default::default()
    });
    let tunnel = mesh.client().tunnel(TCP_ECHO).await.unwrap();
    let (mut read, mut write) = tokio::io::split(tunnel);
    write.write_all(b"\x00\x01not http\r\n").await.unwrap();
    write.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    tokio::time::timeout(PATIENCE, read.read_to_end(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed, b"\x00\x01not http\r\n");
    let e = events(&mesh, 1).await.remove(0);
    assert_eq!(e.taps, vec![4]);
    assert_eq!(e.protocol, Protocol::Tcp as i32);
    assert_eq!((e.bytes_sent, e.bytes_received), (12, 12));
    assert_eq!(e.destination_service, host("tcp-echo"));
    let shapes = mesh.reporter.shapes().snapshot();
    let s = shapes
        .iter()
        .find(|s| s.destination_service == host("tcp-echo"))
        .unwrap();
    assert_eq!(
        (s.count, s.destination_port, s.method.as_str()),
        (1, 9080, "")
    );
}
