//! Endpoint health as this ztunnel sees it: an endpoint whose HBONE connects fail (its node's
//! ztunnel is gone, its pod is gone, its app does not listen) is left out of its services'
//! choice for a while, so new connections go to live endpoints before the controller learns
//! of the outage. Passive, like Envoy's outlier detection on connect failures: no probes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The first ejection; each further failure in a row doubles it, up to `MAX_EJECTION`.
pub const BASE_EJECTION: Duration = Duration::from_secs(5);
pub const MAX_EJECTION: Duration = Duration::from_secs(60);
/// An endpoint that has not failed for this long after its ejection ended starts afresh.
const FORGET_AFTER: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy)]
struct Ejection {
    until: Instant,
    /// Failures in a row; reset by a success.
    failures: u32,
}

/// Endpoints (by the address dialled) that failed recently.
#[derive(Debug, Default)]
pub struct EndpointHealth {
    ejected: Mutex<HashMap<IpAddr, Ejection>>,
    /// How many entries the map holds: the data path reads this and takes no lock while no
    /// endpoint has failed, which is nearly always.
    entries: AtomicUsize,
}

impl EndpointHealth {
    /// Records a failed connect to `endpoint`; returns how long it is now left out.
    pub fn failed(&self, endpoint: IpAddr) -> Duration {
        self.failed_at(endpoint, Instant::now())
    }

    fn failed_at(&self, endpoint: IpAddr, now: Instant) -> Duration {
        let mut map = self.ejected.lock();
        // Endpoints whose ejection ended long ago are forgotten, so the map holds only those
        // that failed in the last few minutes (pods that left the mesh go with them).
        map.retain(|_, e| e.until + FORGET_AFTER > now);
        let failures = map.get(&endpoint).map_or(0, |e| e.failures) + 1;
        let ejection = BASE_EJECTION
            .saturating_mul(1 << (failures - 1).min(16))
            .min(MAX_EJECTION);
        map.insert(
            endpoint,
            Ejection {
                until: now + ejection,
                failures,
            },
        );
        self.entries.store(map.len(), Ordering::Relaxed);
        ejection
    }

    /// Records a successful connect: the endpoint is healthy again.
    pub fn succeeded(&self, endpoint: IpAddr) {
        if self.entries.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut map = self.ejected.lock();
        if map.remove(&endpoint).is_some() {
            self.entries.store(map.len(), Ordering::Relaxed);
        }
    }

    /// Whether `endpoint` is left out of the choice now.
    pub fn is_ejected(&self, endpoint: IpAddr) -> bool {
        self.is_ejected_at(endpoint, Instant::now())
    }

    fn is_ejected_at(&self, endpoint: IpAddr, now: Instant) -> bool {
        if self.entries.load(Ordering::Relaxed) == 0 {
            return false;
        }
        // An expired ejection stays in the map (its failure count makes the next ejection
        // longer) until the endpoint succeeds or is forgotten with the map growing too large.
        self.ejected
            .lock()
            .get(&endpoint)
            .is_some_and(|e| e.until > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn failures_eject_for_longer_each_time_and_a_success_forgives() {
        let h = EndpointHealth::default();
        let t0 = Instant::now();
        let a = ip("10.244.2.2");
        assert!(!h.is_ejected_at(a, t0));
        assert_eq!(h.failed_at(a, t0), BASE_EJECTION);
        assert!(h.is_ejected_at(a, t0 + Duration::from_secs(4)));
        assert!(!h.is_ejected_at(a, t0 + Duration::from_secs(6)));
        assert!(
            !h.is_ejected_at(ip("10.244.2.3"), t0),
            "only the failed one"
        );
        // Failing again on its trial doubles the ejection, up to the cap.
        assert_eq!(h.failed_at(a, t0), BASE_EJECTION * 2);
        for _ in 0..10 {
            h.failed_at(a, t0);
        }
        assert_eq!(h.failed_at(a, t0), MAX_EJECTION);
        h.succeeded(a);
        assert!(!h.is_ejected_at(a, t0));
        assert_eq!(
            h.failed_at(a, t0),
            BASE_EJECTION,
            "a success resets the count"
        );
    }

    #[test]
    fn forgets_endpoints_that_have_not_failed_for_a_while() {
        let h = EndpointHealth::default();
        let t0 = Instant::now();
        let (a, b) = (ip("10.244.2.2"), ip("fd00:10:244:2::2"));
        h.failed_at(a, t0);
        h.failed_at(a, t0);
        let later = t0 + BASE_EJECTION * 2 + FORGET_AFTER + Duration::from_secs(1);
        h.failed_at(b, later);
        assert_eq!(h.entries.load(Ordering::Relaxed), 1, "a was forgotten");
        assert_eq!(h.failed_at(a, later), BASE_EJECTION, "a starts afresh");
    }
}
