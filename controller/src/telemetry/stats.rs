//! `ambit stat`'s rows: per workload or per service of the mesh, what came in during the
//! window (requests as the waypoints saw them, connections as the ztunnels did).

use super::api::StatRow;
use super::quantile::histogram_quantile;
use super::series::{Flow, FlowCounts};
use super::store::ReporterKind;
use super::window::{WindowRates, l4_counts};
use crate::model::MeshModel;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Workload,
    Service,
}

impl Resource {
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Workload => "workload",
            Resource::Service => "service",
        }
    }
}

/// What one row gathers.
#[derive(Default)]
struct Inbound {
    requests: FlowCounts,
    failed_requests: f64,
    connections: FlowCounts,
    failed_connections: f64,
    open: f64,
}

pub fn build(
    model: &MeshModel,
    rates: &WindowRates,
    resource: Resource,
    namespace: Option<&str>,
) -> Vec<StatRow> {
    let in_scope = |ns: &str| namespace.is_none_or(|n| n == ns);
    let mut rows = Vec::new();
    match resource {
        Resource::Workload => {
            for w in model.workloads().filter(|w| in_scope(&w.pod.namespace)) {
                let (ns, name) = (&w.pod.namespace, &w.pod.name);
                let to_it =
                    |f: &Flow| &*f.destination_namespace == ns && &*f.destination_workload == name;
                rows.push(row(
                    resource,
                    ns,
                    name,
                    w.meshed,
                    gather(model, rates, to_it),
                ));
            }
        }
        Resource::Service => {
            let trust_domain = model.trust_domain();
            for s in model.services().filter(|s| in_scope(&s.service.namespace)) {
                let host = s.hostname(trust_domain);
                let to_it = |f: &Flow| *f.destination_service == *host;
                let meshed = s
                    .endpoints
                    .iter()
                    .any(|e| model.workload(e).is_some_and(|w| w.meshed));
                let inbound = gather(model, rates, to_it);
                rows.push(row(
                    resource,
                    &s.service.namespace,
                    &s.service.name,
                    meshed,
                    inbound,
                ));
            }
        }
    }
    rows
}

fn gather(model: &MeshModel, rates: &WindowRates, to_it: impl Fn(&Flow) -> bool) -> Inbound {
    let mut inbound = Inbound::default();
    for (kind, flow, counts) in &rates.flows {
        if !to_it(flow) {
            continue;
        }
        match kind {
            ReporterKind::Waypoint => {
                inbound.requests.add(counts);
                if flow.failed {
                    inbound.failed_requests += counts.requests;
                }
            }
            ReporterKind::Ztunnel if l4_counts(flow, model) => {
                inbound.connections.add(counts);
                if flow.failed {
                    inbound.failed_connections += counts.opened;
                }
            }
            ReporterKind::Ztunnel => {}
        }
    }
    for (flow, open) in &rates.open {
        if to_it(flow) && l4_counts(flow, model) {
            inbound.open += open;
        }
    }
    inbound
}

fn row(resource: Resource, namespace: &str, name: &str, meshed: bool, i: Inbound) -> StatRow {
    let rps = i.requests.requests;
    let quantile = |q| histogram_quantile(q, &i.requests.duration_buckets);
    let bytes = if i.connections.bytes > 0.0 {
        i.connections.bytes
    } else {
        i.requests.bytes
    };
    StatRow {
        resource: resource.as_str().into(),
        namespace: namespace.into(),
        name: name.into(),
        meshed,
        requests_per_second: rps,
        // Requests when a waypoint saw them, else connections.
        success_rate: if rps > 0.0 {
            Some(1.0 - i.failed_requests / rps)
        } else {
            let opened = i.connections.opened;
            (opened > 0.0).then(|| 1.0 - i.failed_connections / opened)
        },
        p50_ms: quantile(0.5),
        p95_ms: quantile(0.95),
        p99_ms: quantile(0.99),
        tcp_open_connections: i.open.max(0.0).round() as u64,
        tcp_connections_per_second: i.connections.opened,
        bytes_per_second: bytes,
    }
}
