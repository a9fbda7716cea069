//! The JSON of the controller's observation API (`--api-addr`, loopback only): what the
//! `ambit stat/top/tap/explain/policy` commands, the dashboard and the tests read. Field names
//! are the wire format: add fields, do not rename them.

use serde::{Deserialize, Serialize};

/// `GET /api/graph?window=30s`: the service graph over the last `window` (default 30 s).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    pub generated_unix_ms: i64,
    pub window_seconds: f64,
    pub nodes: Vec<GraphNode>,
    pub edges: Vec<Edge>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// A workload the mesh knows.
    Workload,
    /// A service (the destination of L7 edges reported by a waypoint).
    Service,
    /// A peer the mesh does not know: an unmeshed client or an outside address.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphNode {
    /// `workload:<namespace>/<name>`, `service:<host>`, `unknown:<identity or address>`.
    pub id: String,
    pub kind: NodeKind,
    pub namespace: String,
    pub name: String,
    /// Canonical service and revision (app and version labels); empty when unknown.
    pub app: String,
    pub version: String,
    /// Its traffic is captured by the mesh.
    pub meshed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    /// Node ids.
    pub source: String,
    pub destination: String,
    /// `http`, `grpc` or `tcp`.
    pub protocol: String,
    /// Who measured it: `waypoint` (L7, per request) or `ztunnel` (L4, per connection).
    pub reporter: String,
    /// L7 only; 0 for tcp edges.
    pub requests_per_second: f64,
    /// Share of requests (L7) or connections (L4) that succeeded; `None` when there were none
    /// in the window.
    pub success_rate: Option<f64>,
    /// L7 only: request latency quantiles from the histograms.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub connections_per_second: f64,
    /// Both directions.
    pub bytes_per_second: f64,
    /// All of its traffic was mutual TLS.
    pub mutual_tls: bool,
    /// Flows on this edge denied by an authorization policy in the window.
    pub denied: u64,
    /// Flows an observer-mode policy would have denied in the window.
    pub would_deny: u64,
    /// The policies that denied or would have denied them.
    pub policies: Vec<String>,
}

/// `GET /api/stat?resource=workload|service[&namespace=N][&window=30s]`: one row each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatRow {
    /// `workload` or `service`.
    pub resource: String,
    pub namespace: String,
    pub name: String,
    pub meshed: bool,
    /// Inbound requests (L7) answered in the window, per second.
    pub requests_per_second: f64,
    pub success_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Inbound TCP connections open now (L4).
    pub tcp_open_connections: u64,
    pub tcp_connections_per_second: f64,
    pub bytes_per_second: f64,
}

/// One side of a flow in [`FlowRecord`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartyRecord {
    pub workload: String,
    pub namespace: String,
    pub identity: String,
    pub address: String,
    pub app: String,
    pub version: String,
}

/// A flow event as the API shows it: `GET /api/tap?...` streams them (one JSON object per
/// line), `GET /api/failures?workload=<ns>/<name>` lists the most recent failed ones.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// `ztunnel` or `waypoint`.
    pub reporter_kind: String,
    /// The node (ztunnel) or `<namespace>/<name>` (waypoint).
    pub reporter: String,
    pub start_unix_ms: i64,
    pub duration_ms: f64,
    /// `tcp`, `http1`, `http2`, `grpc`.
    pub protocol: String,
    pub source: PartyRecord,
    pub destination: PartyRecord,
    pub destination_service: String,
    pub destination_port: u32,
    pub mutual_tls: bool,
    pub method: String,
    pub authority: String,
    pub path: String,
    pub status: u32,
    pub grpc_status: Option<i32>,
    pub response_flags: String,
    pub route: String,
    pub backend_service: String,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub attempts: u32,
    pub failed: bool,
    pub reason: String,
    pub policy: String,
    pub would_deny: bool,
}

/// Flows of one shape seen by a proxy ([`ambit_proto::api::telemetry::FlowShape`]), merged
/// over all proxies: what `ambit policy suggest` works from. `GET /api/flows`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedFlow {
    /// `ztunnel` (L4: by destination workload and port) or `waypoint` (L7: by service, port,
    /// method and path prefix).
    pub reporter_kind: String,
    pub source_identity: String,
    pub destination_workload: String,
    pub destination_namespace: String,
    pub destination_service: String,
    pub destination_port: u32,
    pub method: String,
    pub path_prefix: String,
    pub count: u64,
    pub failed: u64,
    pub first_seen_unix_ms: i64,
    pub last_seen_unix_ms: i64,
}
