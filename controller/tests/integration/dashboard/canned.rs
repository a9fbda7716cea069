//! A loopback server for the page tests: the dashboard's files (`dashboard::asset`, as the
//! controller serves them) and canned answers of the observation API, built from its types.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use ambit_controller::dashboard::asset;
use ambit_controller::telemetry::api::{Edge, FlowRecord, Graph, GraphNode, NodeKind, PartyRecord};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;

pub const REVIEWS: &str = "service:reviews.demo.svc.cluster.local";
pub const CLIENT_EDGE: &str = "workload:demo/client->service:reviews.demo.svc.cluster.local";
pub const DENIED_EDGE: &str = "workload:demo/denied-client->service:reviews.demo.svc.cluster.local";

fn node(id: &str, kind: NodeKind, name: &str) -> GraphNode {
    GraphNode {
        id: id.into(),
        kind,
        namespace: "demo".into(),
        name: name.into(),
        app: name.into(),
        version: String::new(),
        meshed: true,
    }
}

/// Three nodes and two edges: client's requests to reviews (a would-deny in observer mode) and
/// denied-client's connections, which a policy denies.
pub fn demo_graph() -> Graph {
    Graph {
        generated_unix_ms: 1_764_633_600_000,
        window_seconds: 30.0,
        nodes: vec![
            node("workload:demo/client", NodeKind::Workload, "client"),
            node(
                "workload:demo/denied-client",
                NodeKind::Workload,
                "denied-client",
            ),
            node(REVIEWS, NodeKind::Service, "reviews"),
        ],
        edges: vec![
            Edge {
                source: "workload:demo/client".into(),
                destination: REVIEWS.into(),
                protocol: "http".into(),
                reporter: "waypoint".into(),
                requests_per_second: 12.5,
                success_rate: Some(0.96),
                p50_ms: Some(3.25),
                p99_ms: Some(41.0),
                connections_per_second: 0.5,
                bytes_per_second: 2048.0,
                mutual_tls: true,
                denied: 0,
                would_deny: 2,
                policies: vec!["demo/observe-reviews".into()],
            },
            Edge {
                source: "workload:demo/denied-client".into(),
                destination: REVIEWS.into(),
                protocol: "tcp".into(),
                reporter: "ztunnel".into(),
                requests_per_second: 0.0,
                success_rate: Some(0.0),
                p50_ms: None,
                p99_ms: None,
                connections_per_second: 4.25,
                bytes_per_second: 0.0,
                mutual_tls: true,
                denied: 17,
                would_deny: 0,
                policies: vec!["demo/deny-denied-client".into()],
            },
        ],
    }
}

fn flow(path: &str, service: &str, status: u32, failed: bool) -> FlowRecord {
    FlowRecord {
        reporter_kind: "waypoint".into(),
        reporter: "demo/waypoint".into(),
        start_unix_ms: 1_764_633_599_000,
        duration_ms: 12.0,
        protocol: "http1".into(),
        source: PartyRecord {
            workload: "client".into(),
            namespace: "demo".into(),
            identity: "spiffe://cluster.local/ns/demo/sa/client".into(),
            ..PartyRecord::default()
        },
        destination: PartyRecord {
            workload: "reviews-v1".into(),
            namespace: "demo".into(),
            ..PartyRecord::default()
        },
        destination_service: service.into(),
        destination_port: 9080,
        mutual_tls: true,
        method: "GET".into(),
        authority: "reviews:9080".into(),
        path: path.into(),
        status,
        response_flags: if failed { "UT".into() } else { String::new() },
        failed,
        reason: if failed {
            "timeout".into()
        } else {
            String::new()
        },
        ..FlowRecord::default()
    }
}

#[derive(Clone)]
pub struct Canned {
    /// `None`: drop the connection, as a controller that is gone.
    pub graph: Option<Graph>,
    pub failures: Vec<FlowRecord>,
    pub tap: Vec<FlowRecord>,
    /// Every API request's path and query, in order.
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl Canned {
    pub fn new(graph: Option<Graph>) -> Self {
        Canned {
            graph,
            failures: vec![
                flow("/reviews/1", "reviews.demo.svc.cluster.local", 504, true),
                // Another edge's failure: the panel must leave it out.
                flow("/ratings", "ratings.demo.svc.cluster.local", 503, true),
            ],
            tap: vec![
                flow("/reviews/1", "reviews.demo.svc.cluster.local", 200, false),
                flow("/reviews/2", "reviews.demo.svc.cluster.local", 504, true),
                // Markup from the API is shown as text, never parsed.
                flow(
                    "/<img src=x onerror=alert(1)>",
                    "reviews.demo.svc.cluster.local",
                    404,
                    false,
                ),
            ],
            requests: Arc::default(),
        }
    }

    pub fn requested(&self) -> Vec<String> {
        self.requests.lock().clone()
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()).boxed())
        .unwrap()
}

fn json(value: &impl serde::Serialize) -> Response<Body> {
    reply(
        StatusCode::OK,
        "application/json",
        serde_json::to_vec(value).unwrap(),
    )
}

/// The tap's lines in chunks that split lines, then the end of the stream. (No pauses between
/// them: Chromium's virtual time does not wait for a response's body, only for its start.)
fn tap_stream(records: &[FlowRecord]) -> Response<Body> {
    let text: String = records
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect();
    let chunks: Vec<Bytes> = text
        .as_bytes()
        .chunks(text.len() / 3 + 1)
        .map(Bytes::copy_from_slice)
        .collect();
    let stream = futures::stream::unfold(chunks.into_iter(), |mut chunks| async move {
        let chunk = chunks.next()?;
        Some((Ok::<_, Infallible>(Frame::data(chunk)), chunks))
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap()
}

fn respond(canned: &Canned, request: &Request<hyper::body::Incoming>) -> Option<Response<Body>> {
    let path = request.uri().path();
    if !path.starts_with("/api/") {
        return Some(match asset(path) {
            Some((content_type, body)) => reply(StatusCode::OK, content_type, body),
            None => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        });
    }
    let query = request.uri().path_and_query().map_or(path, |p| p.as_str());
    canned.requests.lock().push(query.to_string());
    match path {
        "/api/graph" => canned.graph.as_ref().map(json),
        "/api/failures" => Some(json(&canned.failures)),
        "/api/tap" => Some(tap_stream(&canned.tap)),
        _ => Some(reply(StatusCode::NOT_FOUND, "text/plain", "no such API\n")),
    }
}

/// Serves `canned` on a loopback port until the test ends.
pub async fn serve(canned: Canned) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let canned = canned.clone();
            let service = service_fn(move |request| {
                let response = respond(&canned, &request);
                async move { response.ok_or("the controller is gone") }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}
