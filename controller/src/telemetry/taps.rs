//! Running taps: what API clients asked to see, sent to every reporting proxy, and the tapped
//! flows routed back to the client whose tap selected them.
//!
//! The set of running taps is a watch channel: each reporter's stream compares it with what it
//! told its proxy and sends the difference, so a reporter that connects late gets every
//! running tap, and a busy one never misses a `stop` (it only sees the newest set).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ambit_proto::api::telemetry::{ReportResponse, Tap};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use super::api::FlowRecord;

/// Taps running at once, at most (each costs every proxy a filter per flow).
pub const MAX_TAPS: usize = 32;
/// Tapped flows queued per client; past it, flows are dropped until the client reads.
const TAP_QUEUE: usize = 1024;

pub type RunningTaps = Arc<BTreeMap<u64, Tap>>;

pub struct Taps {
    running: watch::Sender<RunningTaps>,
    sinks: Mutex<Sinks>,
}

#[derive(Default)]
struct Sinks {
    next_id: u64,
    by_id: HashMap<u64, mpsc::Sender<FlowRecord>>,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "{MAX_TAPS} taps are running already: stop one (end its `ambit tap` or `ambit top`) and try again"
)]
pub struct TooManyTaps;

/// One client's tap: its flows arrive on `records`; dropping `running` stops the tap on
/// every proxy.
pub struct TapSubscription {
    pub id: u64,
    pub records: mpsc::Receiver<FlowRecord>,
    pub running: RunningTap,
}

pub struct RunningTap {
    id: u64,
    taps: Arc<Taps>,
}

impl Drop for RunningTap {
    fn drop(&mut self) {
        self.taps.stop(self.id);
    }
}

impl Default for Taps {
    fn default() -> Self {
        Taps {
            running: watch::Sender::new(Arc::new(BTreeMap::new())),
            sinks: Mutex::new(Sinks {
                next_id: 1,
                by_id: HashMap::new(),
            }),
        }
    }
}

impl Taps {
    /// Starts `tap` (its id is assigned here) on every proxy, now and as they connect.
    pub fn start(self: &Arc<Self>, mut tap: Tap) -> Result<TapSubscription, TooManyTaps> {
        let (tx, rx) = mpsc::channel(TAP_QUEUE);
        let id = {
            let mut sinks = self.sinks.lock();
            if sinks.by_id.len() >= MAX_TAPS {
                return Err(TooManyTaps);
            }
            let id = sinks.next_id;
            sinks.next_id += 1;
            sinks.by_id.insert(id, tx);
            id
        };
        tap.id = id;
        self.running.send_modify(|running| {
            Arc::make_mut(running).insert(id, tap);
        });
        tracing::info!(tap = id, "tap started");
        Ok(TapSubscription {
            id,
            records: rx,
            running: RunningTap {
                id,
                taps: self.clone(),
            },
        })
    }

    fn stop(&self, id: u64) {
        self.sinks.lock().by_id.remove(&id);
        self.running.send_modify(|running| {
            Arc::make_mut(running).remove(&id);
        });
        tracing::info!(tap = id, "tap stopped: its client went away");
    }

    /// The running taps, for a reporter's stream to follow.
    pub fn watch(&self) -> watch::Receiver<RunningTaps> {
        self.running.subscribe()
    }

    /// Hands a tapped flow to tap `id`'s client; dropped when the tap has ended (the proxy has
    /// not heard yet) or its client is not keeping up.
    pub fn deliver(&self, id: u64, record: &FlowRecord) {
        let sink = self.sinks.lock().by_id.get(&id).cloned();
        if let Some(sink) = sink
            && sink.try_send(record.clone()).is_err()
        {
            metrics::counter!("ambit_controller_tap_records_dropped_total").increment(1);
        }
    }

    pub fn running(&self) -> usize {
        self.running.borrow().len()
    }
}

/// What one reporter has been told to run.
#[derive(Default)]
pub struct TapsSent(BTreeMap<u64, Tap>);

impl TapsSent {
    /// The starts and stops that bring the proxy from what it was told to `running`; `None` when
    /// nothing changed.
    pub fn update(&mut self, running: &BTreeMap<u64, Tap>) -> Option<ReportResponse> {
        let start: Vec<Tap> = running
            .iter()
            .filter(|(id, tap)| self.0.get(id) != Some(tap))
            .map(|(_, tap)| tap.clone())
            .collect();
        let stop: Vec<u64> = self
            .0
            .keys()
            .filter(|id| !running.contains_key(id))
            .copied()
            .collect();
        if start.is_empty() && stop.is_empty() {
            return None;
        }
        self.0 = running.clone();
        Some(ReportResponse {
            start,
            stop,
            report_interval_seconds: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reporter_is_told_the_difference_and_a_dropped_tap_stops() {
        let taps = Arc::new(Taps::default());
        let mut watching = taps.watch();
        let mut sent = TapsSent::default();
        assert_eq!(sent.update(&watching.borrow_and_update()), None);
        let a = taps
            .start(Tap {
                workload: "client".into(),
                ..Default::default()
            })
            .unwrap();
        let b = taps.start(Tap::default()).unwrap();
        assert_ne!(a.id, b.id);
        let r = sent.update(&watching.borrow_and_update()).unwrap();
        assert_eq!(
            r.start.iter().map(|t| t.id).collect::<Vec<_>>(),
            [a.id, b.id]
        );
        assert_eq!(r.start[0].workload, "client");
        assert!(r.stop.is_empty());
        let a_id = a.id;
        drop(a);
        assert!(watching.has_changed().unwrap());
        let r = sent.update(&watching.borrow_and_update()).unwrap();
        assert_eq!((r.start.len(), r.stop.clone()), (0, vec![a_id]));
        assert_eq!(taps.running(), 1);
        // Flows for a stopped tap go nowhere; a running one's reach its client.
        taps.deliver(a_id, &FlowRecord::default());
        let record = FlowRecord {
            method: "GET".into(),
            ..Default::default()
        };
        taps.deliver(b.id, &record);
        let mut b = b;
        assert_eq!(b.records.recv().await.unwrap(), record);
    }

    #[test]
    fn taps_are_bounded() {
        let taps = Arc::new(Taps::default());
        let held: Vec<_> = (0..MAX_TAPS)
            .map(|_| taps.start(Tap::default()).unwrap())
            .collect();
        assert!(taps.start(Tap::default()).is_err());
        drop(held);
        assert!(taps.start(Tap::default()).is_ok());
    }
}
