//! What the proxies report (`ambit.telemetry.v1`) and what the controller makes of it: the
//! service graph, per-workload and per-service stats, taps and recent failures, served as JSON
//! on the observation API ([`api`], served by [`http`]).

pub mod api;
pub mod exposition;
mod graph;
pub mod http;
pub mod quantile;
mod records;
pub mod series;
mod service;
mod stats;
pub mod store;
pub mod taps;
mod window;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use graph::workload_node;
pub use records::involves_workload;
pub use service::TelemetryService;
pub use stats::Resource;
pub use store::RETENTION;

use crate::model::MeshModel;
use api::{FlowRecord, Graph, ObservedFlow, StatRow};
use store::Store;
use taps::Taps;

/// Everything the proxies reported that the controller keeps, and the running taps. Cheap to
/// clone: the report service and the observation API share one.
#[derive(Clone, Default)]
pub struct TelemetryStore {
    pub reports: Arc<Store>,
    pub taps: Arc<Taps>,
}

fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl TelemetryStore {
    fn since(window: Duration) -> Instant {
        let now = Instant::now();
        now.checked_sub(window).unwrap_or(now)
    }

    /// The service graph over the last `window` (at most [`RETENTION`]).
    pub fn graph(&self, model: &MeshModel, window: Duration) -> Graph {
        let since = Self::since(window);
        let rates = window::rates(&self.reports.reporters(since));
        let failures: Vec<FlowRecord> = self
            .reports
            .failures(Some(since), usize::MAX, |_| true)
            .into_iter()
            .map(|f| f.record)
            .collect();
        graph::build(
            model,
            &rates,
            &failures,
            window.as_secs_f64(),
            unix_ms_now(),
        )
    }

    pub fn stats(
        &self,
        model: &MeshModel,
        resource: Resource,
        namespace: Option<&str>,
        window: Duration,
    ) -> Vec<StatRow> {
        let rates = window::rates(&self.reports.reporters(Self::since(window)));
        stats::build(model, &rates, resource, namespace)
    }

    /// The most recent failed flows (newest first), of workload `(namespace, name)` if given.
    pub fn failures(&self, workload: Option<(&str, &str)>, limit: usize) -> Vec<FlowRecord> {
        self.reports
            .failures(None, limit, |r| {
                workload.is_none_or(|(ns, name)| involves_workload(r, ns, name))
            })
            .into_iter()
            .map(|f| f.record)
            .collect()
    }

    /// The shapes of all reporters, merged.
    pub fn flows(&self) -> Vec<ObservedFlow> {
        let all = self.reports.shapes();
        records::merge_shapes(all.iter().map(|(kind, shapes)| (*kind, shapes.as_slice())))
    }
}
