//! Rates over a window: per reporter, the counts of its newest report in the window minus
//! those of its oldest one there, per second of the proxy's own clock between the two.

use std::sync::Arc;

use super::series::{Flow, FlowCounts};
use super::store::{ReporterKind, ReporterView};
use crate::model::{MeshModel, ObjectKey};

/// What happened in a window, by flow.
#[derive(Debug, Default)]
pub struct WindowRates {
    /// Per-second rates of every flow of every reporter with two reports in the window.
    pub flows: Vec<(ReporterKind, Arc<Flow>, FlowCounts)>,
    /// Connections open now (opened minus closed) by flow, from connected ztunnels' newest
    /// reports.
    pub open: Vec<(Arc<Flow>, f64)>,
}

pub fn rates(views: &[ReporterView]) -> WindowRates {
    let mut out = WindowRates::default();
    for view in views {
        let (Some(newest), Some(oldest)) = (view.reports.last(), view.reports.first()) else {
            continue;
        };
        if view.connected && view.id.kind == ReporterKind::Ztunnel {
            for (flow, counts) in &newest.metrics.flows {
                let open = counts.opened - counts.closed;
                if open > 0.0 {
                    out.open.push((Arc::new(flow.clone()), open));
                }
            }
        }
        if view.reports.len() < 2 {
            continue;
        }
        // The proxy's clock, unless it went backwards: then the controller's.
        let by_proxy = (newest.unix_ms - oldest.unix_ms) as f64 / 1000.0;
        let seconds = if by_proxy > 0.0 {
            by_proxy
        } else {
            newest
                .received
                .duration_since(oldest.received)
                .as_secs_f64()
        };
        if seconds <= 0.0 {
            continue;
        }
        for (flow, counts) in &newest.metrics.flows {
            let grew = counts.since(oldest.metrics.flows.get(flow));
            out.flows.push((
                view.id.kind,
                Arc::new(flow.clone()),
                grew.scaled(1.0 / seconds),
            ));
        }
    }
    out
}

/// Whether a ztunnel-reported flow counts, so that a connection seen by both ends counts once:
/// the destination's report when the destination is meshed (its ztunnel sees every inbound
/// connection, from meshed clients or not), else the source's.
pub fn l4_counts(flow: &Flow, model: &MeshModel) -> bool {
    match &*flow.reporter {
        "destination" => true,
        "source" => !destination_meshed(flow, model),
        _ => false,
    }
}

fn destination_meshed(flow: &Flow, model: &MeshModel) -> bool {
    let key = ObjectKey::new(&*flow.destination_namespace, &*flow.destination_workload);
    model.workload(&key).is_some_and(|w| w.meshed)
}
