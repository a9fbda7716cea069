//! What the controller keeps of the reports: per reporter its recent metrics (for rates over
//! any window up to [`RETENTION`]) and its latest flow shapes, and a ring of recent failures.
//! Everything is bounded; a reporter that went away is forgotten once its data has aged out.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_proto::api::telemetry::FlowShape;
use parking_lot::Mutex;

use super::api::FlowRecord;
use super::series::ReportMetrics;

/// The longest window a query may ask for; older reports are let go.
pub const RETENTION: Duration = Duration::from_secs(300);
/// Reports kept per reporter are at least this far apart (but for the newest), so that a
/// reporter costs a bounded number of reports whatever its interval: a busy node's report holds
/// thousands of series.
pub const REPORT_SPACING: Duration = Duration::from_secs(5);
/// Metrics reports kept per reporter: the retention at that spacing, and the newest.
const MAX_REPORTS: usize = (RETENTION.as_secs() / REPORT_SPACING.as_secs()) as usize + 2;
/// Reporters tracked at once: a mesh of this many nodes and waypoints.
pub const MAX_REPORTERS: usize = 10_000;
/// Flow shapes kept per reporter (the proxies bound theirs too).
pub const MAX_SHAPES: usize = 10_000;
/// Recent failures kept, all reporters together.
pub const MAX_FAILURES: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReporterKind {
    Ztunnel,
    Waypoint,
}

impl ReporterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReporterKind::Ztunnel => "ztunnel",
            ReporterKind::Waypoint => "waypoint",
        }
    }
}

/// A reporting proxy: a node's ztunnel (by node name) or a waypoint (`<namespace>/<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReporterId {
    pub kind: ReporterKind,
    pub name: String,
}

/// One metrics report as received.
#[derive(Debug, Clone)]
pub struct Report {
    pub received: Instant,
    /// The proxy's clock; differences between its own reports time its rates.
    pub unix_ms: i64,
    pub metrics: Arc<ReportMetrics>,
}

#[derive(Default)]
struct Reporter {
    reports: VecDeque<Report>,
    shapes: Arc<Vec<FlowShape>>,
    /// Streams open now (a reconnecting proxy may briefly have two).
    streams: usize,
    last_seen: Option<Instant>,
}

/// A failed (or would-be-denied) flow and when it arrived.
#[derive(Debug, Clone)]
pub struct Failure {
    pub received: Instant,
    pub record: FlowRecord,
}

#[derive(Default)]
pub struct Store {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    reporters: HashMap<ReporterId, Reporter>,
    failures: VecDeque<Failure>,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "the controller tracks {MAX_REPORTERS} reporting proxies already; this one's telemetry is refused until others go away"
)]
pub struct TooManyReporters;

/// What a query sees of one reporter.
#[derive(Debug, Clone)]
pub struct ReporterView {
    pub id: ReporterId,
    pub connected: bool,
    pub reports: Vec<Report>,
}

impl Store {
    /// A stream of `id` opened; pair with [`Store::closed`].
    pub fn opened(&self, id: &ReporterId, now: Instant) -> Result<(), TooManyReporters> {
        let mut inner = self.inner.lock();
        inner.forget_stale(now);
        if !inner.reporters.contains_key(id) && inner.reporters.len() >= MAX_REPORTERS {
            return Err(TooManyReporters);
        }
        let r = inner.reporters.entry(id.clone()).or_default();
        r.streams += 1;
        r.last_seen = Some(now);
        Ok(())
    }

    pub fn closed(&self, id: &ReporterId, now: Instant) {
        if let Some(r) = self.inner.lock().reporters.get_mut(id) {
            r.streams = r.streams.saturating_sub(1);
            r.last_seen = Some(now);
        }
    }

    pub fn add_report(&self, id: &ReporterId, report: Report) {
        let mut inner = self.inner.lock();
        let Some(r) = inner.reporters.get_mut(id) else {
            return;
        };
        r.last_seen = Some(report.received);
        let now = report.received;
        // The newest report replaces the previous one when that one is closer than the spacing
        // to the one before it: every gap stays at least the spacing but the last.
        let n = r.reports.len();
        if n >= 2
            && r.reports[n - 1]
                .received
                .duration_since(r.reports[n - 2].received)
                < REPORT_SPACING
        {
            r.reports[n - 1] = report;
        } else {
            r.reports.push_back(report);
        }
        while r.reports.len() > MAX_REPORTS
            || r.reports
                .front()
                .is_some_and(|o| now.duration_since(o.received) > RETENTION)
        {
            r.reports.pop_front();
        }
    }

    pub fn set_shapes(&self, id: &ReporterId, mut shapes: Vec<FlowShape>) {
        if shapes.len() > MAX_SHAPES {
            // The most recently seen are worth keeping.
            shapes.sort_by_key(|s| std::cmp::Reverse(s.last_seen_unix_ms));
            shapes.truncate(MAX_SHAPES);
        }
        if let Some(r) = self.inner.lock().reporters.get_mut(id) {
            r.shapes = Arc::new(shapes);
        }
    }

    pub fn add_failure(&self, failure: Failure) {
        let mut inner = self.inner.lock();
        if inner.failures.len() == MAX_FAILURES {
            inner.failures.pop_front();
        }
        inner.failures.push_back(failure);
    }

    /// Every reporter's reports received since `since` (oldest first).
    pub fn reporters(&self, since: Instant) -> Vec<ReporterView> {
        let mut inner = self.inner.lock();
        inner.forget_stale(Instant::now());
        let mut views: Vec<ReporterView> = inner
            .reporters
            .iter()
            .map(|(id, r)| ReporterView {
                id: id.clone(),
                connected: r.streams > 0,
                reports: r
                    .reports
                    .iter()
                    .filter(|rep| rep.received >= since)
                    .cloned()
                    .collect(),
            })
            .collect();
        views.sort_by(|a, b| a.id.cmp(&b.id));
        views
    }

    /// Every reporter's latest shapes.
    pub fn shapes(&self) -> Vec<(ReporterKind, Arc<Vec<FlowShape>>)> {
        let inner = self.inner.lock();
        let mut all: Vec<_> = inner
            .reporters
            .iter()
            .map(|(id, r)| (id.clone(), r.shapes.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all.into_iter().map(|(id, s)| (id.kind, s)).collect()
    }

    /// Failures received since `since` that `keep` selects, newest first, at most `limit`.
    pub fn failures(
        &self,
        since: Option<Instant>,
        limit: usize,
        keep: impl Fn(&FlowRecord) -> bool,
    ) -> Vec<Failure> {
        let inner = self.inner.lock();
        inner
            .failures
            .iter()
            .rev()
            .filter(|f| since.is_none_or(|s| f.received >= s))
            .filter(|f| keep(&f.record))
            .take(limit)
            .cloned()
            .collect()
    }
}

impl Inner {
    /// Drops reporters with no stream whose last report is older than the retention.
    fn forget_stale(&mut self, now: Instant) {
        self.reporters.retain(|_, r| {
            r.streams > 0
                || r.last_seen
                    .is_some_and(|seen| now.duration_since(seen) <= RETENTION)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> ReporterId {
        ReporterId {
            kind: ReporterKind::Ztunnel,
            name: name.into(),
        }
    }

    fn report(at: Instant) -> Report {
        Report {
            received: at,
            unix_ms: 0,
            metrics: Arc::default(),
        }
    }

    #[test]
    fn reports_age_out_and_gone_reporters_are_forgotten() {
        let store = Store::default();
        let t0 = Instant::now();
        store.opened(&id("node-a"), t0).unwrap();
        for s in [0, 50, 200, 400] {
            store.add_report(&id("node-a"), report(t0 + Duration::from_secs(s)));
        }
        let views = store.reporters(t0);
        // The reports 0 s and 50 s were more than the retention older than the one at 400 s.
        assert_eq!(views[0].reports.len(), 2);
        assert!(views[0].connected);
        store.closed(&id("node-a"), t0 + Duration::from_secs(400));
        let mut inner = store.inner.lock();
        inner.forget_stale(t0 + Duration::from_secs(500));
        assert_eq!(inner.reporters.len(), 1, "its data still counts");
        inner.forget_stale(t0 + Duration::from_secs(701));
        assert!(inner.reporters.is_empty());
    }

    #[test]
    fn reports_are_thinned_to_the_spacing_but_the_newest_is_kept() {
        let store = Store::default();
        let t0 = Instant::now();
        store.opened(&id("node-a"), t0).unwrap();
        for ms in [0, 1000, 2000, 5500, 6000, 12000] {
            store.add_report(&id("node-a"), report(t0 + Duration::from_millis(ms)));
        }
        let kept: Vec<u128> = store.reporters(t0)[0]
            .reports
            .iter()
            .map(|r| r.received.duration_since(t0).as_millis())
            .collect();
        assert_eq!(kept, [0, 5500, 12000]);
    }

    #[test]
    fn the_failure_ring_is_bounded_and_newest_first() {
        let store = Store::default();
        let now = Instant::now();
        for i in 0..(MAX_FAILURES + 5) {
            store.add_failure(Failure {
                received: now,
                record: FlowRecord {
                    status: i as u32,
                    ..Default::default()
                },
            });
        }
        let all = store.failures(None, usize::MAX, |_| true);
        assert_eq!(all.len(), MAX_FAILURES);
        assert_eq!(all[0].record.status as usize, MAX_FAILURES + 4);
        let odd = store.failures(None, 3, |r| r.status % 2 == 1);
        assert_eq!(
            odd.iter().map(|f| f.record.status).collect::<Vec<_>>(),
            [1003, 1001, 999]
        );
    }
}
