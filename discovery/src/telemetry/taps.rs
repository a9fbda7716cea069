//! The taps the controller started: which ended flows each selects, and how many a second.
//! Whether any runs is an atomic the data path reads before it builds an event at all.

use std::sync::atomic::{AtomicBool, Ordering};

use ambit_proto::api::telemetry::{FlowEvent, Tap};
use parking_lot::RwLock;

use super::rate::RateLimit;

/// A tap's rate when the controller leaves it to the proxy.
pub(super) const DEFAULT_TAP_PER_SECOND: u32 = 100;

#[derive(Default)]
pub(super) struct Taps {
    any: AtomicBool,
    running: RwLock<Vec<Running>>,
}

struct Running {
    tap: Tap,
    limit: RateLimit,
}

impl Taps {
    #[inline]
    pub(super) fn any(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    /// Starts a tap, replacing one with the same id.
    pub(super) fn start(&self, tap: Tap) {
        let per_second = match tap.max_per_second {
            0 => DEFAULT_TAP_PER_SECOND,
            n => n,
        };
        let mut running = self.running.write();
        running.retain(|r| r.tap.id != tap.id);
        running.push(Running {
            tap,
            limit: RateLimit::new(per_second),
        });
        self.any.store(true, Ordering::Relaxed);
    }

    pub(super) fn stop(&self, id: u64) {
        let mut running = self.running.write();
        running.retain(|r| r.tap.id != id);
        self.any.store(!running.is_empty(), Ordering::Relaxed);
    }

    /// Every tap stops: they were the stream's, and a new stream gets its own.
    pub(super) fn clear(&self) {
        let mut running = self.running.write();
        running.clear();
        self.any.store(false, Ordering::Relaxed);
    }

    pub(super) fn ids(&self) -> Vec<u64> {
        self.running.read().iter().map(|r| r.tap.id).collect()
    }

    /// The ids of the taps that select `event` and have room for it this second.
    pub(super) fn matching(&self, event: &FlowEvent) -> Vec<u64> {
        if !self.any() {
            return Vec::new();
        }
        self.running
            .read()
            .iter()
            .filter(|r| selects(&r.tap, event) && r.limit.allow())
            .map(|r| r.tap.id)
            .collect()
    }
}

/// Every field the tap sets must match; empty ones match all.
fn selects(tap: &Tap, e: &FlowEvent) -> bool {
    let sides = [e.source.as_ref(), e.destination.as_ref()];
    if !tap.namespace.is_empty() && !sides.iter().flatten().any(|p| p.namespace == tap.namespace) {
        return false;
    }
    if !tap.workload.is_empty() {
        // "name", or "namespace/name" to be exact about which.
        let (namespace, name) = match tap.workload.split_once('/') {
            Some((ns, name)) => (Some(ns), name),
            None => (None, tap.workload.as_str()),
        };
        let is = |p: &&ambit_proto::api::telemetry::Party| {
            p.workload == name && namespace.is_none_or(|ns| p.namespace == ns)
        };
        if !sides.iter().flatten().any(is) {
            return false;
        }
    }
    if !tap.service.is_empty() {
        let host = e.destination_service.as_str();
        let short = host.split('.').next().unwrap_or_default();
        if host.is_empty() || (host != tap.service && short != tap.service) {
            return false;
        }
    }
    if !tap.method.is_empty() && !e.method.eq_ignore_ascii_case(&tap.method) {
        return false;
    }
    if !tap.path_prefix.is_empty() && !e.path.starts_with(&tap.path_prefix) {
        return false;
    }
    !tap.failed_only || e.failed
}

#[cfg(test)]
mod tests {
    use ambit_proto::api::telemetry::Party;

    use super::*;

    fn event() -> FlowEvent {
        FlowEvent {
            source: Some(Party {
                workload: "client".into(),
                namespace: "demo".into(),
                ..Default::default()
            }),
            destination: Some(Party {
                workload: "reviews-v1".into(),
                namespace: "shop".into(),
                ..Default::default()
            }),
            destination_service: "reviews.shop.svc.cluster.local".into(),
            method: "GET".into(),
            path: "/api/v1/reviews/7".into(),
            ..Default::default()
        }
    }

    #[test]
    fn every_field_set_must_match() {
        let tap = |f: fn(&mut Tap)| {
            let mut t = Tap::default();
            f(&mut t);
            t
        };
        let table: [(Tap, bool); 16] = [
            (Tap::default(), true),
            (tap(|t| t.namespace = "demo".into()), true),
            (tap(|t| t.namespace = "shop".into()), true),
            (tap(|t| t.namespace = "other".into()), false),
            (tap(|t| t.workload = "client".into()), true),
            (tap(|t| t.workload = "shop/reviews-v1".into()), true),
            (tap(|t| t.workload = "demo/reviews-v1".into()), false),
            (tap(|t| t.service = "reviews".into()), true),
            (
                tap(|t| t.service = "reviews.shop.svc.cluster.local".into()),
                true,
            ),
            (tap(|t| t.service = "ratings".into()), false),
            (tap(|t| t.method = "get".into()), true),
            (tap(|t| t.method = "POST".into()), false),
            (tap(|t| t.path_prefix = "/api/".into()), true),
            (tap(|t| t.path_prefix = "/health".into()), false),
            (tap(|t| t.failed_only = true), false),
            (
                tap(|t| {
                    t.namespace = "demo".into();
                    t.method = "POST".into();
                }),
                false,
            ),
        ];
        for (tap, expected) in table {
            assert_eq!(selects(&tap, &event()), expected, "{tap:?}");
        }
        let mut failed = event();
        failed.failed = true;
        assert!(selects(
            &Tap {
                failed_only: true,
                ..Default::default()
            },
            &failed
        ));
    }

    #[test]
    fn taps_start_replace_and_stop() {
        let taps = Taps::default();
        assert!(!taps.any());
        taps.start(Tap {
            id: 1,
            namespace: "other".into(),
            ..Default::default()
        });
        taps.start(Tap {
            id: 2,
            ..Default::default()
        });
        assert!(taps.any());
        assert_eq!(taps.matching(&event()), vec![2]);
        // Same id: replaced, now matching.
        taps.start(Tap {
            id: 1,
            namespace: "demo".into(),
            ..Default::default()
        });
        assert_eq!(taps.ids(), vec![2, 1]);
        taps.stop(2);
        assert_eq!(taps.matching(&event()), vec![1]);
        taps.stop(1);
        assert!(!taps.any());
        assert!(taps.matching(&event()).is_empty());
    }
}
