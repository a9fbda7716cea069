//! The service graph of a window: L7 edges (source workload to destination service) from the
//! waypoints' request metrics, L4 edges (source workload to destination workload) from the
//! ztunnels' connection metrics, each connection counted once; denials from the failures.

use std::collections::BTreeMap;

use super::api::{Edge, FlowRecord, Graph, GraphNode, NodeKind, PartyRecord};
use super::quantile::histogram_quantile;
use super::series::{Flow, FlowCounts, UNKNOWN};
use super::store::ReporterKind;
use super::window::{WindowRates, l4_counts};
use crate::model::{MeshModel, ObjectKey, Workload};

/// Where a pod's app and version come from, in Istio's order (as the model gives the proxies).
const APP_LABELS: [&str; 3] = [
    "service.istio.io/canonical-name",
    "app.kubernetes.io/name",
    "app",
];
const VERSION_LABELS: [&str; 3] = [
    "service.istio.io/canonical-revision",
    "app.kubernetes.io/version",
    "version",
];

pub fn app_version(w: &Workload) -> (String, String) {
    let first = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| w.pod.labels.get(*k))
            .cloned()
            .unwrap_or_default()
    };
    (first(&APP_LABELS), first(&VERSION_LABELS))
}

fn known(s: &str) -> bool {
    !s.is_empty() && s != UNKNOWN
}

pub fn workload_node(namespace: &str, name: &str) -> String {
    format!("workload:{namespace}/{name}")
}

fn source_node(flow: &Flow) -> String {
    if known(&flow.source_workload) {
        workload_node(&flow.source_namespace, &flow.source_workload)
    } else {
        format!("unknown:{}", flow.source_principal)
    }
}

fn l4_destination_node(flow: &Flow) -> String {
    if known(&flow.destination_workload) {
        workload_node(&flow.destination_namespace, &flow.destination_workload)
    } else if known(&flow.destination_service) {
        format!("unknown:{}", flow.destination_service)
    } else {
        format!("unknown:{}", flow.destination_principal)
    }
}

fn party_node(p: &PartyRecord) -> String {
    if !p.workload.is_empty() {
        workload_node(&p.namespace, &p.workload)
    } else if !p.identity.is_empty() {
        format!("unknown:{}", p.identity)
    } else if !p.address.is_empty() {
        format!("unknown:{}", p.address)
    } else {
        format!("unknown:{UNKNOWN}")
    }
}

/// An edge's key: source, destination, reporter kind.
type EdgeKey = (String, String, &'static str);

#[derive(Default)]
struct Acc {
    protocol: String,
    all: FlowCounts,
    failed: FlowCounts,
    plaintext: bool,
    denied: u64,
    would_deny: u64,
    policies: Vec<String>,
}

/// The key of the edge a failure belongs to.
fn failure_edge(r: &FlowRecord) -> EdgeKey {
    let destination = if r.reporter_kind == "waypoint" && !r.destination_service.is_empty() {
        format!("service:{}", r.destination_service)
    } else {
        party_node(&r.destination)
    };
    let kind = if r.reporter_kind == "waypoint" {
        ReporterKind::Waypoint
    } else {
        ReporterKind::Ztunnel
    };
    (party_node(&r.source), destination, kind.as_str())
}

pub fn build(
    model: &MeshModel,
    rates: &WindowRates,
    failures: &[FlowRecord],
    window_seconds: f64,
    now_unix_ms: i64,
) -> Graph {
    let mut edges: BTreeMap<EdgeKey, Acc> = BTreeMap::new();
    for (kind, flow, counts) in &rates.flows {
        let carried = counts.requests > 0.0 || counts.opened > 0.0 || counts.bytes > 0.0;
        if !carried {
            continue;
        }
        let key = match kind {
            ReporterKind::Waypoint => (
                source_node(flow),
                format!("service:{}", flow.destination_service),
                kind.as_str(),
            ),
            ReporterKind::Ztunnel if l4_counts(flow, model) => {
                (source_node(flow), l4_destination_node(flow), kind.as_str())
            }
            _ => continue,
        };
        let acc = edges.entry(key).or_default();
        if acc.protocol.is_empty() || acc.protocol == "http" {
            acc.protocol = flow.protocol.to_string();
        }
        acc.all.add(counts);
        if flow.failed {
            acc.failed.add(counts);
        }
        acc.plaintext |= !flow.mutual_tls;
    }
    for r in failures {
        if r.policy.is_empty() {
            continue;
        }
        let acc = edges.entry(failure_edge(r)).or_insert_with(|| Acc {
            protocol: if r.protocol == "tcp" { "tcp" } else { "http" }.into(),
            ..Acc::default()
        });
        if r.would_deny {
            acc.would_deny += 1;
        } else {
            acc.denied += 1;
        }
        if !acc.policies.contains(&r.policy) {
            acc.policies.push(r.policy.clone());
        }
    }
    let mut nodes: BTreeMap<String, GraphNode> = BTreeMap::new();
    let edges = edges
        .into_iter()
        .map(|((source, destination, reporter), acc)| {
            for id in [&source, &destination] {
                nodes
                    .entry(id.clone())
                    .or_insert_with(|| describe_node(model, id));
            }
            edge(source, destination, reporter, acc)
        })
        .collect();
    Graph {
        generated_unix_ms: now_unix_ms,
        window_seconds,
        nodes: nodes.into_values().collect(),
        edges,
    }
}

fn edge(source: String, destination: String, reporter: &'static str, mut acc: Acc) -> Edge {
    let l7 = reporter == "waypoint";
    let (total, failed) = if l7 {
        (acc.all.requests, acc.failed.requests)
    } else {
        (acc.all.opened, acc.failed.opened)
    };
    let quantile = |q| {
        l7.then(|| histogram_quantile(q, &acc.all.duration_buckets))
            .flatten()
    };
    acc.policies.sort();
    Edge {
        source,
        destination,
        protocol: if l7 {
            acc.protocol.clone()
        } else {
            "tcp".into()
        },
        reporter: reporter.into(),
        requests_per_second: if l7 { total } else { 0.0 },
        success_rate: (total > 0.0).then(|| 1.0 - failed / total),
        p50_ms: quantile(0.5),
        p99_ms: quantile(0.99),
        connections_per_second: if l7 { 0.0 } else { total },
        bytes_per_second: acc.all.bytes,
        mutual_tls: !acc.plaintext,
        denied: acc.denied,
        would_deny: acc.would_deny,
        policies: acc.policies,
    }
}

fn describe_node(model: &MeshModel, id: &str) -> GraphNode {
    let node = |kind, namespace: &str, name: &str| GraphNode {
        id: id.to_string(),
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
        app: String::new(),
        version: String::new(),
        meshed: false,
    };
    if let Some(rest) = id.strip_prefix("workload:") {
        let (namespace, name) = rest.split_once('/').unwrap_or(("", rest));
        let key = ObjectKey::new(namespace, name);
        let mut n = node(NodeKind::Workload, namespace, name);
        if let Some(w) = model.workload(&key) {
            (n.app, n.version) = app_version(w);
            n.meshed = w.meshed;
        } else if model.waypoint(&key).is_some() {
            // A waypoint is the mesh's own proxy.
            n.meshed = true;
        }
        n
    } else if let Some(host) = id.strip_prefix("service:") {
        let trust_domain = model.trust_domain();
        match model.services().find(|s| s.hostname(trust_domain) == host) {
            Some(s) => {
                let mut n = node(NodeKind::Service, &s.service.namespace, &s.service.name);
                n.meshed = s
                    .endpoints
                    .iter()
                    .any(|e| model.workload(e).is_some_and(|w| w.meshed));
                n
            }
            None => node(NodeKind::Service, "", host),
        }
    } else {
        let name = id.strip_prefix("unknown:").unwrap_or(id);
        node(NodeKind::Unknown, "", name)
    }
}
