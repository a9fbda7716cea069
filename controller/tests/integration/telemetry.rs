//! The telemetry path end to end over real sockets: fake proxies report recorded metrics text
//! and flow events on `Telemetry/Report`, and the observation API answers the graph, stats,
//! failures and taps made of them.

use std::time::Duration;

use ambit_controller::telemetry::api::{FlowRecord, Graph, ObservedFlow, StatRow};
use ambit_proto::api::telemetry::{FlowEvent, FlowShape, Party, Protocol, ReportRequest};
use http_body_util::BodyExt;
use tonic::Code;

use crate::telemetry_support::{
    NODE_A_TOKEN, NODE_B_TOKEN, fixture, get, open, report, start, waypoint, ztunnel,
};

const T0: i64 = 1_700_000_000_000;

fn party(workload: &str, sa: &str) -> Option<Party> {
    Some(Party {
        workload: workload.into(),
        namespace: "demo".into(),
        identity: format!("spiffe://cluster.local/ns/demo/sa/{sa}"),
        ..Default::default()
    })
}

fn denied_connection(would_deny: bool) -> FlowEvent {
    FlowEvent {
        protocol: Protocol::Tcp.into(),
        source: party("denied-client", "denied-client"),
        destination: party("reviews-v1", "reviews"),
        destination_port: 8080,
        mutual_tls: true,
        grpc_status: -1,
        response_flags: if would_deny { "-" } else { "RBAC" }.into(),
        failed: !would_deny,
        would_deny,
        reason: "authorization policy demo/deny-denied-client denied it".into(),
        policy: "demo/deny-denied-client".into(),
        ..Default::default()
    }
}

fn close(got: Option<f64>, want: f64, what: &str) {
    let got = got.unwrap_or_else(|| panic!("{what}: none"));
    assert!((got - want).abs() < 1e-6, "{what}: {got} != {want}");
}

async fn graph(api: std::net::SocketAddr) -> Graph {
    let (status, body) = get(api, "/api/graph?window=30s").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn two_reports_make_rates_a_graph_and_stats() {
    let c = start().await;
    let node_a = report(&c, Some(NODE_A_TOKEN), ztunnel("node-a"))
        .await
        .unwrap();
    // The mesh file's waypoints speak with their node's token.
    let wp = report(&c, Some(NODE_A_TOKEN), waypoint("demo", "waypoint"))
        .await
        .unwrap();
    // Garbage is logged and skipped; the stream goes on.
    node_a
        .send(ReportRequest {
            unix_ms: T0 - 1000,
            metrics: "<html>not metrics</html>\n".into(),
            ..Default::default()
        })
        .await;
    for (reporter, text) in [
        (&node_a, "ztunnel-node-a-1.prom"),
        (&wp, "waypoint-demo-1.prom"),
    ] {
        reporter
            .send(ReportRequest {
                unix_ms: T0,
                metrics: fixture(text),
                ..Default::default()
            })
            .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let shape = FlowShape {
        source_identity: "spiffe://cluster.local/ns/demo/sa/client".into(),
        destination_workload: "reviews-v1".into(),
        destination_namespace: "demo".into(),
        destination_port: 8080,
        count: 40,
        failed: 0,
        first_seen_unix_ms: T0 - 60_000,
        last_seen_unix_ms: T0 + 2000,
        ..Default::default()
    };
    node_a
        .send(ReportRequest {
            unix_ms: T0 + 2000,
            metrics: fixture("ztunnel-node-a-2.prom"),
            events: vec![denied_connection(false), denied_connection(true)],
            shapes: vec![shape.clone()],
            ..Default::default()
        })
        .await;
    wp.send(ReportRequest {
        unix_ms: T0 + 2000,
        metrics: fixture("waypoint-demo-2.prom"),
        ..Default::default()
    })
    .await;

    // The reports are filed as they arrive: wait for the second ones.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let g = loop {
        let g = graph(c.api).await;
        if g.edges.len() >= 4 {
            break g;
        }
        assert!(tokio::time::Instant::now() < deadline, "{g:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let edge = |s: &str, d: &str| {
        g.edges
            .iter()
            .find(|e| e.source == s && e.destination == d)
            .unwrap_or_else(|| panic!("no edge {s} -> {d} in {g:#?}"))
    };
    // L7 through the waypoint: 50 requests in 2 s, 10 of them 503.
    let l7 = edge(
        "workload:demo/client",
        "service:reviews.demo.svc.cluster.local",
    );
    assert_eq!(
        (l7.reporter.as_str(), l7.protocol.as_str()),
        ("waypoint", "http")
    );
    close(Some(l7.requests_per_second), 25.0, "rps");
    close(l7.success_rate, 0.8, "success");
    close(l7.p50_ms, 1.0 + 4.0 * 25.0 / 30.0, "p50");
    close(l7.p99_ms, 5.0 + 5.0 * 19.5 / 20.0, "p99");
    close(Some(l7.bytes_per_second), 1000.0, "L7 bytes");
    assert!(l7.mutual_tls);
    // L4, reported by the destination: 30 connections in 2 s; the source's report of the same
    // connections is not counted again.
    let l4 = edge("workload:demo/client", "workload:demo/reviews-v1");
    assert_eq!(
        (l4.reporter.as_str(), l4.protocol.as_str()),
        ("ztunnel", "tcp")
    );
    close(Some(l4.connections_per_second), 15.0, "cps");
    close(l4.success_rate, 1.0, "L4 success");
    assert_eq!((l4.requests_per_second, l4.p50_ms), (0.0, None));
    let denied = edge("workload:demo/denied-client", "workload:demo/reviews-v1");
    close(Some(denied.connections_per_second), 5.0, "denied cps");
    close(denied.success_rate, 0.0, "denied success");
    assert_eq!((denied.denied, denied.would_deny), (1, 1));
    assert_eq!(denied.policies, ["demo/deny-denied-client"]);
    // To an unmeshed destination only the source reports: plain text.
    let legacy = edge("workload:demo/client", "workload:legacy/legacy");
    close(Some(legacy.connections_per_second), 10.0, "legacy cps");
    close(Some(legacy.bytes_per_second), 3000.0, "legacy bytes");
    assert!(!legacy.mutual_tls);
    assert_eq!(g.edges.len(), 4, "{g:#?}");
    let node = |id: &str| g.nodes.iter().find(|n| n.id == id).unwrap();
    let client = node("workload:demo/client");
    assert!(client.meshed);
    assert_eq!(client.app, "client");
    let v1 = node("workload:demo/reviews-v1");
    assert_eq!((v1.app.as_str(), v1.version.as_str()), ("reviews", "v1"));
    assert!(!node("workload:legacy/legacy").meshed);
    let reviews = node("service:reviews.demo.svc.cluster.local");
    assert_eq!(
        (reviews.namespace.as_str(), reviews.name.as_str()),
        ("demo", "reviews")
    );

    let (status, body) = get(c.api, "/api/stat?resource=workload&namespace=demo").await;
    assert_eq!(status, 200, "{body}");
    let rows: Vec<StatRow> = serde_json::from_str(&body).unwrap();
    assert!(
        rows.iter()
            .all(|r| r.namespace == "demo" && r.resource == "workload")
    );
    let row = |name: &str| rows.iter().find(|r| r.name == name).unwrap();
    let v2 = row("reviews-v2");
    close(Some(v2.requests_per_second), 25.0, "v2 rps");
    close(v2.p95_ms, 5.0 + 5.0 * 17.5 / 20.0, "v2 p95");
    let v1 = row("reviews-v1");
    close(Some(v1.tcp_connections_per_second), 20.0, "v1 cps");
    close(v1.success_rate, 0.75, "v1 success (connections)");
    assert_eq!(v1.tcp_open_connections, 3);
    assert!(v1.meshed);
    let (_, body) = get(c.api, "/api/stat?resource=service").await;
    let rows: Vec<StatRow> = serde_json::from_str(&body).unwrap();
    let svc = |name: &str| rows.iter().find(|r| r.name == name).unwrap();
    close(svc("reviews").success_rate, 0.8, "service success");
    close(
        Some(svc("legacy").tcp_connections_per_second),
        10.0,
        "legacy svc cps",
    );
    assert!(!svc("legacy").meshed);

    let (status, body) = get(c.api, "/api/failures?workload=demo/denied-client&limit=5").await;
    assert_eq!(status, 200, "{body}");
    let failures: Vec<FlowRecord> = serde_json::from_str(&body).unwrap();
    assert_eq!(failures.len(), 2);
    assert!(
        failures[0].would_deny && !failures[1].would_deny,
        "newest first"
    );
    assert_eq!(failures[1].reporter, "node-a");
    assert_eq!(failures[1].response_flags, "RBAC");
    let (_, body) = get(c.api, "/api/failures?workload=demo/client").await;
    assert_eq!(body, "[]");

    let (_, body) = get(c.api, "/api/flows").await;
    let flows: Vec<ObservedFlow> = serde_json::from_str(&body).unwrap();
    assert_eq!(flows.len(), 1);
    assert_eq!(
        (flows[0].count, flows[0].reporter_kind.as_str()),
        (40, "ztunnel")
    );
}

#[tokio::test]
async fn bad_parameters_are_refused_naming_them() {
    let c = start().await;
    for (path, names) in [
        ("/api/graph?window=soon", "window"),
        ("/api/graph?window=1h", "window"),
        ("/api/graph?window=2s", "window"),
        ("/api/graph?windw=30s", "windw"),
        ("/api/stat?resource=pods", "resource"),
        ("/api/failures?workload=client", "workload"),
        ("/api/failures?limit=-1", "limit"),
        ("/api/tap?failed_only=yes", "failed_only"),
        ("/api/tap?max_per_second=lots", "max_per_second"),
    ] {
        let (status, body) = get(c.api, path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(names), "{path}: {body}");
    }
    let (status, _) = get(c.api, "/nothing-here").await;
    assert_eq!(status, 404);
    let (status, body) = get(c.api, "/api/graph").await;
    assert_eq!(status, 200, "{body}");
    let g: Graph = serde_json::from_str(&body).unwrap();
    assert!(g.edges.is_empty());
    assert_eq!(g.window_seconds, 30.0);
}

#[tokio::test]
async fn reporters_are_authenticated_as_subscribers_are() {
    let c = start().await;
    for token in [None, Some("not-a-node-token")] {
        let err = report(&c, token, ztunnel("node-a")).await.err().unwrap();
        assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    }
    let err = report(&c, Some(NODE_A_TOKEN), ztunnel("node-b"))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    // The waypoint is placed on node-a: node-b's token does not speak for it.
    let err = report(&c, Some(NODE_B_TOKEN), waypoint("demo", "waypoint"))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(
        report(&c, Some(NODE_B_TOKEN), ztunnel("node-b"))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_tap_reaches_every_reporter_and_brings_their_flows_back_until_its_client_goes() {
    let c = start().await;
    let mut node_a = report(&c, Some(NODE_A_TOKEN), ztunnel("node-a"))
        .await
        .unwrap();
    let response = open(c.api, "/api/tap?workload=denied-client&failed_only=true").await;
    assert_eq!(response.status(), 200);
    let started = node_a.next().await;
    assert_eq!(started.start.len(), 1, "{started:?}");
    let tap = &started.start[0];
    assert_eq!(
        (tap.workload.as_str(), tap.failed_only),
        ("denied-client", true)
    );
    // A proxy that connects while the tap runs is told too.
    let mut node_b = report(&c, Some(NODE_B_TOKEN), ztunnel("node-b"))
        .await
        .unwrap();
    let late = node_b.next().await;
    assert_eq!(
        late.start.iter().map(|t| t.id).collect::<Vec<_>>(),
        [tap.id]
    );

    let mut event = denied_connection(false);
    event.taps = vec![tap.id];
    node_a
        .send(ReportRequest {
            events: vec![event],
            ..Default::default()
        })
        .await;
    let mut body = response.into_body();
    let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the tapped flow came within 10s")
        .unwrap()
        .unwrap();
    let line = String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap();
    assert!(line.ends_with('\n'), "{line:?}");
    let record: FlowRecord = serde_json::from_str(line.trim_end()).unwrap();
    assert_eq!(record.source.workload, "denied-client");
    assert_eq!(
        (record.reporter_kind.as_str(), record.reporter.as_str()),
        ("ztunnel", "node-a")
    );
    assert_eq!(record.policy, "demo/deny-denied-client");

    // The client goes: both proxies are told to stop.
    drop(body);
    for reporter in [&mut node_a, &mut node_b] {
        let stopped = reporter.next().await;
        assert_eq!(stopped.stop, [tap.id], "{stopped:?}");
    }
}
