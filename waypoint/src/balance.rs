//! Endpoint choice: power of two choices on least outstanding requests, Linkerd's balancer
//! without its latency (EWMA) term. Of a request's candidate endpoints (the caller has already
//! left out unhealthy ones, and ejected ones with `ServiceTraffic::skip_ejected`), two are
//! picked at random and the one with fewer requests in flight wins; the returned [`InFlight`]
//! guard counts the request until it is dropped, and holds its circuit breaker admission
//! ([`InFlight::hold`]) as long.
//!
//! Two random samples instead of a scan of every endpoint keep a pick O(1) and avoid the herd
//! effect of "always the least loaded" when many pickers act on the same stale counts.
//!
//! Hot path: one shared (read) lock on the endpoint map and atomic counters; the exclusive lock
//! is taken only the first time an endpoint is picked and by [`Balancer::retain`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::RwLock;

use crate::breaker::Admission;

/// Requests in flight per endpoint, shared by every request to one backend.
#[derive(Default)]
pub struct Balancer {
    endpoints: RwLock<HashMap<SocketAddr, Arc<Load>>>,
}

#[derive(Default)]
struct Load {
    in_flight: AtomicUsize,
}

/// One request counted against the endpoint it was sent to, until dropped.
#[must_use = "the request counts as in flight only while the guard lives"]
pub struct InFlight {
    endpoint: SocketAddr,
    load: Arc<Load>,
    admission: Option<Admission>,
}

impl InFlight {
    pub fn endpoint(&self) -> SocketAddr {
        self.endpoint
    }

    /// Keeps the try's breaker admission (its request, and retry) counted as long as this.
    pub fn hold(&mut self, admission: Option<Admission>) {
        self.admission = admission;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Balancer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Picks one of `candidates` (power of two choices on requests in flight) and counts the
    /// request against it. `None` when there is no candidate.
    pub fn pick(&self, candidates: &[SocketAddr]) -> Option<InFlight> {
        let endpoint = match candidates.len() {
            0 => return None,
            1 => candidates[0],
            n => {
                // Two distinct indices, uniformly.
                let a = fastrand::usize(..n);
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (candidates[a], candidates[b]);
                let map = self.endpoints.read();
                let load = |e: &SocketAddr| {
                    map.get(e)
                        .map_or(0, |l| l.in_flight.load(Ordering::Relaxed))
                };
                // `a` is already a random one of the two, so a tie goes to a random endpoint.
                let chosen = if load(&b) < load(&a) { b } else { a };
                if let Some(l) = map.get(&chosen) {
                    return Some(Self::count(chosen, l.clone()));
                }
                chosen
            }
        };
        let known = self.endpoints.read().get(&endpoint).cloned();
        let load = match known {
            Some(l) => l,
            None => self.endpoints.write().entry(endpoint).or_default().clone(),
        };
        Some(Self::count(endpoint, load))
    }

    fn count(endpoint: SocketAddr, load: Arc<Load>) -> InFlight {
        load.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint,
            load,
            admission: None,
        }
    }

    /// Forgets endpoints for which `keep` is false: call it with each new endpoint set, so
    /// memory stays bounded by the endpoints configured now. Requests in flight to a forgotten
    /// endpoint finish normally (their guard holds its counter).
    pub fn retain(&self, mut keep: impl FnMut(SocketAddr) -> bool) {
        self.endpoints.write().retain(|e, _| keep(*e));
    }

    /// Requests in flight to `endpoint` (0 for one never picked or forgotten).
    pub fn in_flight(&self, endpoint: SocketAddr) -> usize {
        self.endpoints
            .read()
            .get(&endpoint)
            .map_or(0, |l| l.in_flight.load(Ordering::Relaxed))
    }

    /// How many endpoints the balancer holds state for.
    pub fn tracked(&self) -> usize {
        self.endpoints.read().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 8080)))
            .collect()
    }

    #[test]
    fn no_candidate_no_pick() {
        let b = Balancer::new();
        assert!(b.pick(&[]).is_none());
        assert_eq!(b.tracked(), 0);
    }

    #[test]
    fn a_single_candidate_is_always_picked() {
        let b = Balancer::new();
        let one = addrs(1);
        let guards: Vec<_> = (0..5).map(|_| b.pick(&one).unwrap()).collect();
        assert!(guards.iter().all(|g| g.endpoint() == one[0]));
        assert_eq!(b.in_flight(one[0]), 5);
        drop(guards);
        assert_eq!(b.in_flight(one[0]), 0);
    }

    #[test]
    fn requests_held_open_spread_evenly() {
        let b = Balancer::new();
        let eps = addrs(4);
        let guards: Vec<_> = (0..400).map(|_| b.pick(&eps).unwrap()).collect();
        let loads: Vec<usize> = eps.iter().map(|e| b.in_flight(*e)).collect();
        assert_eq!(loads.iter().sum::<usize>(), 400);
        let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
        // Two choices keep the spread tight (random choice alone would be ~±20 here).
        assert!(max - min <= 8, "loads {loads:?}");
        drop(guards);
        assert!(eps.iter().all(|e| b.in_flight(*e) == 0));
    }

    #[test]
    fn short_requests_spread_evenly() {
        let b = Balancer::new();
        let eps = addrs(4);
        let mut picks = HashMap::new();
        for _ in 0..8000 {
            let g = b.pick(&eps).unwrap();
            *picks.entry(g.endpoint()).or_insert(0usize) += 1;
        }
        for e in &eps {
            let n = picks[e];
            assert!((1700..=2300).contains(&n), "{e}: {n} of 8000 ({picks:?})");
        }
    }

    #[test]
    fn a_busy_endpoint_is_avoided() {
        let b = Balancer::new();
        let eps = addrs(3);
        // Ten slow requests on the first endpoint.
        let busy: Vec<_> = (0..10).map(|_| b.pick(&eps[..1]).unwrap()).collect();
        // The busy one loses every comparison, and it is never both samples.
        for _ in 0..200 {
            let g = b.pick(&eps).unwrap();
            assert_ne!(g.endpoint(), eps[0]);
        }
        // With two candidates it is always compared, so it is never chosen either.
        let held: Vec<_> = (0..5).map(|_| b.pick(&eps[..2]).unwrap()).collect();
        assert!(held.iter().all(|g| g.endpoint() == eps[1]));
        assert_eq!(b.in_flight(eps[0]), busy.len());
    }

    #[test]
    fn forgotten_endpoints_are_dropped_and_guards_stay_valid() {
        let b = Balancer::new();
        let eps = addrs(3);
        let guards: Vec<_> = (0..30).map(|_| b.pick(&eps).unwrap()).collect();
        assert_eq!(b.tracked(), 3);
        b.retain(|e| e == eps[2]);
        assert_eq!(b.tracked(), 1);
        assert_eq!(b.in_flight(eps[0]), 0);
        drop(guards);
        assert_eq!(b.in_flight(eps[2]), 0);
    }
}
