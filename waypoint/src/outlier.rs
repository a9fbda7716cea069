//! Outlier ejection (passive health checking): the waypoint counts, per endpoint of a service,
//! the answers that came back in a row as failures, and an endpoint that reaches a threshold
//! receives no request (the balancer skips it) for a while, then returns on its own. There is
//! no active health check: the requests are the probes.
//!
//! The rules (defaults in `crate::traffic`):
//! - Counted per endpoint (pod address and target port) of a service, each answer as it comes:
//!   `consecutive_5xx` counts 5xx answers and failures of the waypoint's own to get one
//!   (connect failure, reset, per-try timeout: the client gets a 5xx for those too, as with
//!   Envoy's default of not splitting local-origin errors); `consecutive_gateway_errors`
//!   counts 502, 503, 504 and those failures; `consecutive_connect_failures` counts failures to
//!   connect. Any answer below 500 resets all three; a 5xx other than 502–504 resets the
//!   gateway count; any answer resets the connect count. Failures that are not the endpoint's
//!   doing (our own request body breaking, an HBONE refusal by policy, the breaker) are not
//!   counted either way.
//! - At a threshold the endpoint is ejected for `base × n`, n the times it has been ejected
//!   (this one included), at most [`MAX_EJECTION_TIME`] (or `base`, when that is longer).
//!   n falls by one for every `base` the endpoint then stays in service without an ejection,
//!   so a pod that failed once long ago starts again from `base`.
//! - An endpoint is ejected only while the service's ejected endpoints are below
//!   `max_ejection_percent` of its endpoints: with 3 endpoints and 10 %, 0 of 3 is below, so
//!   one is ejected, and then 1 of 3 (33 %) is not, so no second one. Any percentage above 0
//!   thus allows at least one (Envoy and gRPC count the same way).
//! - When every candidate of a request is ejected, they are all used anyway: sending to a pod
//!   that may answer beats failing every request (Envoy's panic mode, at 0 % healthy).
//! - An ejected endpoint returns when its time is up: a timer returns it (and logs it), and
//!   a request that finds it past its time returns it first if the timer has not run yet.
//!
//! Hot path: atomics of the endpoint; the service's lock is taken only to eject or return.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge};
use parking_lot::Mutex;

use crate::upstream::UpstreamError;

/// The longest an endpoint stays ejected, unless `base` alone is longer (Envoy's
/// `max_ejection_time` default).
pub const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

/// Ejections counted per endpoint at most (the time is capped long before).
const MAX_MULTIPLIER: u32 = 1000;

/// A service's outlier detection, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// 0: not counted.
    pub consecutive_5xx: u32,
    pub consecutive_gateway: u32,
    pub consecutive_connect: u32,
    pub base_ejection_time: Duration,
    /// 1..=100.
    pub max_ejection_percent: u32,
}

/// How one try to an endpoint ended, as outlier detection counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// The endpoint answered with this status.
    Status(u16),
    /// No connection: refused, unreachable, handshake failed or timed out.
    ConnectFailure,
    /// The connection or stream broke, or the answer was not HTTP.
    Reset,
    /// The try's timeout (`backendRequest`) ran out.
    Timeout,
}

impl Observed {
    /// What an upstream error says about the endpoint; `None` when it says nothing (the
    /// failure was ours, the request's or policy's, or the breaker refused the request).
    pub fn of_error(e: &UpstreamError) -> Option<Observed> {
        if e.overflow().is_some() || !e.endpoint_unreachable() {
            return None;
        }
        Some(if e.connect_failure() {
            Observed::ConnectFailure
        } else {
            Observed::Reset
        })
    }

    fn counts(self) -> (bool, bool, bool) {
        // (5xx, gateway error, connect failure)
        match self {
            Observed::Status(s) if s < 500 => (false, false, false),
            Observed::Status(s) => (true, (502..=504).contains(&s), false),
            Observed::ConnectFailure => (true, true, true),
            Observed::Reset | Observed::Timeout => (true, true, false),
        }
    }
}

/// The time of an ejection: `base × n`, capped at [`MAX_EJECTION_TIME`] or `base` if longer.
pub fn ejection_time(base: Duration, n: u32) -> Duration {
    let cap = MAX_EJECTION_TIME.max(base);
    base.saturating_mul(n.max(1)).min(cap)
}

/// Whether one more endpoint may be ejected when `ejected` of `total` already are.
pub fn may_eject(ejected: usize, total: usize, max_percent: u32) -> bool {
    // ejected / total < percent / 100, in integers.
    (ejected as u128) * 100 < u128::from(max_percent) * (total as u128)
}

/// The ejection count `n` after `in_service` without an ejection: one less per `base`.
pub fn decayed(n: u32, in_service: Duration, base: Duration) -> u32 {
    if base.is_zero() {
        return 0;
    }
    let steps = (in_service.as_nanos() / base.as_nanos()).min(u128::from(u32::MAX)) as u32;
    n.saturating_sub(steps)
}

/// Time as stored in atomics: nanoseconds since the first use, plus one (0 means "none").
fn stamp(at: Instant) -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(at.saturating_duration_since(origin).as_nanos())
        .unwrap_or(u64::MAX - 1)
        .saturating_add(1)
}

/// One endpoint's record; lives as long as the endpoint is in the service's config (carried
/// across config versions), and longer while a return timer holds it.
#[derive(Debug, Default)]
pub struct Health {
    consecutive_5xx: AtomicU32,
    gateway: AtomicU32,
    connect: AtomicU32,
    /// [`stamp`] of the end of its ejection; 0 while in service.
    ejected_until: AtomicU64,
    /// Times ejected, for the next ejection's length (see [`decayed`]).
    ejections: AtomicU32,
    /// [`stamp`] of its last return, 0 if never ejected.
    returned_at: AtomicU64,
}

impl Health {
    pub fn new() -> Arc<Self> {
        Arc::new(Health::default())
    }

    /// Ejected at `now` (its time not yet up).
    pub fn is_ejected(&self, now: Instant) -> bool {
        let until = self.ejected_until.load(Ordering::Acquire);
        until != 0 && stamp(now) < until
    }

    fn reset(&self) {
        for c in [&self.consecutive_5xx, &self.gateway, &self.connect] {
            // A load first: a success on a healthy endpoint writes nothing (no cache-line
            // ping-pong between cores).
            if c.load(Ordering::Relaxed) != 0 {
                c.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Counts `observed`; the reason to eject, when a threshold is reached.
    fn count(&self, policy: &Policy, observed: Observed) -> Option<&'static str> {
        let (is_5xx, gateway, connect) = observed.counts();
        let bump = |c: &AtomicU32, yes: bool| {
            if yes {
                c.fetch_add(1, Ordering::Relaxed).saturating_add(1)
            } else {
                if c.load(Ordering::Relaxed) != 0 {
                    c.store(0, Ordering::Relaxed);
                }
                0
            }
        };
        let n5xx = bump(&self.consecutive_5xx, is_5xx);
        let ngw = bump(&self.gateway, gateway);
        let nconn = bump(&self.connect, connect);
        let reached = |n: u32, threshold: u32| threshold > 0 && n >= threshold;
        if reached(nconn, policy.consecutive_connect) {
            Some("consecutive connect failures")
        } else if reached(ngw, policy.consecutive_gateway) {
            Some("consecutive gateway errors")
        } else if reached(n5xx, policy.consecutive_5xx) {
            Some("consecutive 5xx")
        } else {
            None
        }
    }
}

/// A service's ejections: how many of its endpoints are out, serialised changes to that, and
/// its metrics. Lives as long as the service is in the config (carried across versions).
pub struct Ejections {
    host: Arc<str>,
    ejected: AtomicUsize,
    /// Held to eject or return (rare), so that the count and the gauge move together.
    change: Mutex<()>,
    metrics: OnceLock<(Counter, Gauge)>,
}

impl Ejections {
    pub fn new(host: Arc<str>) -> Arc<Self> {
        Arc::new(Ejections {
            host,
            ejected: AtomicUsize::new(0),
            change: Mutex::new(()),
            metrics: OnceLock::new(),
        })
    }

    /// The ejections counter and the ejected gauge, given once (by the first request).
    pub fn bind_metrics(&self, make: impl FnOnce() -> (Counter, Gauge)) {
        self.metrics.get_or_init(make);
    }

    /// Endpoints ejected now (returned lazily: one past its time counts until looked at).
    pub fn ejected(&self) -> usize {
        self.ejected.load(Ordering::Acquire)
    }

    /// Whether `health`'s endpoint is out at `now`; one whose time is up is returned here.
    pub fn is_ejected(&self, endpoint: SocketAddr, health: &Health, now: Instant) -> bool {
        let until = health.ejected_until.load(Ordering::Acquire);
        if until == 0 {
            return false;
        }
        if stamp(now) < until {
            return true;
        }
        self.give_back(endpoint, health, until, now);
        false
    }

    /// Counts how a try to `endpoint` ended; ejects it when that makes a threshold, and the
    /// service's `total` endpoints allow it. True when it was ejected now.
    pub fn observe(
        self: &Arc<Self>,
        policy: &Policy,
        endpoint: SocketAddr,
        health: &Arc<Health>,
        observed: Observed,
        total: usize,
        now: Instant,
    ) -> bool {
        match health.count(policy, observed) {
            Some(reason) => self.eject(policy, endpoint, health, reason, total, now),
            None => false,
        }
    }

    fn eject(
        self: &Arc<Self>,
        policy: &Policy,
        endpoint: SocketAddr,
        health: &Arc<Health>,
        reason: &'static str,
        total: usize,
        now: Instant,
    ) -> bool {
        let guard = self.change.lock();
        if health.ejected_until.load(Ordering::Acquire) != 0 {
            // Ejected by a try that ended beside this one (or not returned yet).
            return false;
        }
        let ejected = self.ejected.load(Ordering::Acquire);
        if !may_eject(ejected, total, policy.max_ejection_percent) {
            tracing::debug!(%endpoint, service = %self.host, ejected, total, max_percent = policy.max_ejection_percent, reason, "not ejected: max_ejection_percent reached");
            return false;
        }
        let base = policy.base_ejection_time;
        let returned_at = health.returned_at.load(Ordering::Acquire);
        let previous = health.ejections.load(Ordering::Acquire);
        let in_service = if returned_at == 0 {
            Duration::ZERO
        } else {
            Duration::from_nanos(stamp(now).saturating_sub(returned_at))
        };
        let n = (decayed(previous, in_service, base) + 1).min(MAX_MULTIPLIER);
        let time = ejection_time(base, n);
        let until = now.checked_add(time).map_or(u64::MAX, stamp);
        health.ejections.store(n, Ordering::Release);
        health.ejected_until.store(until, Ordering::Release);
        health.reset();
        let now_ejected = ejected + 1;
        self.ejected.store(now_ejected, Ordering::Release);
        if let Some((ejections, gauge)) = self.metrics.get() {
            ejections.increment(1);
            gauge.set(now_ejected as f64);
        }
        drop(guard);
        tracing::info!(%endpoint, service = %self.host, reason, ejection = n, duration = ?time, ejected = now_ejected, total, "endpoint ejected");
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (this, health) = (self.clone(), health.clone());
            runtime.spawn(async move {
                tokio::time::sleep(time).await;
                this.give_back(endpoint, &health, until, Instant::now());
            });
        }
        true
    }

    /// Returns the endpoint ejected until `until`, unless that ejection has already ended.
    fn give_back(&self, endpoint: SocketAddr, health: &Health, until: u64, now: Instant) {
        let guard = self.change.lock();
        if health
            .ejected_until
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        health.returned_at.store(stamp(now), Ordering::Release);
        let left = self.ejected.load(Ordering::Acquire).saturating_sub(1);
        self.ejected.store(left, Ordering::Release);
        if let Some((_, gauge)) = self.metrics.get() {
            gauge.set(left as f64);
        }
        drop(guard);
        tracing::info!(%endpoint, service = %self.host, ejected = left, "endpoint returned after its ejection");
    }
}

impl Drop for Ejections {
    fn drop(&mut self) {
        // The service left the config: nothing of it is ejected any more.
        if let Some((_, gauge)) = self.metrics.get() {
            gauge.set(0.0);
        }
    }
}

impl std::fmt::Debug for Ejections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ejections")
            .field("host", &self.host)
            .field("ejected", &self.ejected())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn policy(c5xx: u32, gateway: u32, connect: u32, percent: u32) -> Policy {
        Policy {
            consecutive_5xx: c5xx,
            consecutive_gateway: gateway,
            consecutive_connect: connect,
            base_ejection_time: S(30),
            max_ejection_percent: percent,
        }
    }

    fn ep(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 8080))
    }

    #[test]
    fn ejection_time_grows_with_each_ejection_and_is_capped() {
        assert_eq!(ejection_time(S(30), 1), S(30));
        assert_eq!(ejection_time(S(30), 2), S(60));
        assert_eq!(ejection_time(S(30), 10), S(300));
        assert_eq!(ejection_time(S(30), 11), S(300));
        assert_eq!(ejection_time(S(30), u32::MAX), S(300));
        // A base longer than the cap is its own cap.
        assert_eq!(ejection_time(S(600), 3), S(600));
        assert_eq!(ejection_time(Duration::from_millis(1500), 2), S(3));
    }

    #[test]
    fn max_percent_allows_at_least_one_and_rounds_down_after() {
        // 3 endpoints, 10 %: the first may go, a second may not.
        assert!(may_eject(0, 3, 10));
        assert!(!may_eject(1, 3, 10));
        // 50 % of 4: two.
        assert!(may_eject(1, 4, 50));
        assert!(!may_eject(2, 4, 50));
        // 50 % of 3: 1 of 3 is below half, 2 of 3 is not.
        assert!(may_eject(1, 3, 50));
        assert!(!may_eject(2, 3, 50));
        // 100 %: all of them.
        assert!(may_eject(2, 3, 100));
        assert!(!may_eject(3, 3, 100));
        // No endpoint: nothing to eject.
        assert!(!may_eject(0, 0, 100));
    }

    #[test]
    fn the_multiplier_decays_while_in_service() {
        assert_eq!(decayed(3, Duration::ZERO, S(30)), 3);
        assert_eq!(decayed(3, S(29), S(30)), 3);
        assert_eq!(decayed(3, S(30), S(30)), 2);
        assert_eq!(decayed(3, S(95), S(30)), 0);
        assert_eq!(decayed(3, S(1), Duration::ZERO), 0);
    }

    #[test]
    fn counts_follow_the_rules() {
        let p = policy(5, 0, 0, 100);
        let h = Health::default();
        // A 500 and a reset count as 5xx; a 404 resets.
        for _ in 0..4 {
            assert_eq!(h.count(&p, Observed::Status(500)), None);
        }
        assert_eq!(h.count(&p, Observed::Status(404)), None);
        for _ in 0..4 {
            assert_eq!(h.count(&p, Observed::Reset), None);
        }
        assert_eq!(
            h.count(&p, Observed::Timeout),
            Some("consecutive 5xx"),
            "the fifth in a row"
        );

        // Gateway errors: 502-504 and local failures; a 500 breaks the run.
        let p = policy(0, 3, 0, 100);
        let h = Health::default();
        h.count(&p, Observed::Status(503));
        h.count(&p, Observed::ConnectFailure);
        assert_eq!(h.count(&p, Observed::Status(500)), None);
        h.count(&p, Observed::Status(502));
        h.count(&p, Observed::Status(504));
        assert_eq!(
            h.count(&p, Observed::Reset),
            Some("consecutive gateway errors")
        );

        // Connect failures: any answer breaks the run, even a 503.
        let p = policy(0, 0, 2, 100);
        let h = Health::default();
        h.count(&p, Observed::ConnectFailure);
        h.count(&p, Observed::Status(503));
        h.count(&p, Observed::ConnectFailure);
        assert_eq!(
            h.count(&p, Observed::ConnectFailure),
            Some("consecutive connect failures")
        );
    }

    #[test]
    fn an_endpoint_is_ejected_at_the_threshold_and_returns_after_its_time() {
        let p = Policy {
            base_ejection_time: S(10),
            ..policy(5, 0, 0, 100)
        };
        let service = Ejections::new("reviews".into());
        let h = Health::new();
        let t0 = Instant::now();
        for i in 0..4 {
            assert!(
                !service.observe(&p, ep(1), &h, Observed::Status(500), 3, t0),
                "{i}"
            );
        }
        assert!(service.observe(&p, ep(1), &h, Observed::Status(500), 3, t0));
        assert_eq!(service.ejected(), 1);
        assert!(service.is_ejected(ep(1), &h, t0 + S(9)));
        // Past its time it is returned by the first look.
        assert!(!service.is_ejected(ep(1), &h, t0 + S(10)));
        assert_eq!(service.ejected(), 0);

        // Failing again at once: twice the base.
        let t1 = t0 + S(10);
        for _ in 0..5 {
            service.observe(&p, ep(1), &h, Observed::Status(503), 3, t1);
        }
        assert!(service.is_ejected(ep(1), &h, t1 + S(19)));
        assert!(!service.is_ejected(ep(1), &h, t1 + S(20)));
        // Long in service afterwards: back to the base.
        let t2 = t1 + S(20) + S(100);
        for _ in 0..5 {
            service.observe(&p, ep(1), &h, Observed::Status(503), 3, t2);
        }
        assert!(service.is_ejected(ep(1), &h, t2 + S(9)));
        assert!(!service.is_ejected(ep(1), &h, t2 + S(10)));
    }

    #[test]
    fn a_success_resets_the_run() {
        let p = policy(5, 0, 0, 100);
        let service = Ejections::new("reviews".into());
        let h = Health::new();
        let now = Instant::now();
        for _ in 0..20 {
            for _ in 0..4 {
                service.observe(&p, ep(1), &h, Observed::Status(500), 3, now);
            }
            service.observe(&p, ep(1), &h, Observed::Status(200), 3, now);
        }
        assert_eq!(service.ejected(), 0);
        assert!(!h.is_ejected(now));
    }

    #[test]
    fn at_most_max_percent_of_the_endpoints_are_out() {
        let p = policy(1, 0, 0, 10);
        let service = Ejections::new("reviews".into());
        let hs: Vec<_> = (0..3).map(|_| Health::new()).collect();
        let now = Instant::now();
        let ejected: Vec<bool> = hs
            .iter()
            .enumerate()
            .map(|(i, h)| service.observe(&p, ep(i as u8), h, Observed::Status(500), 3, now))
            .collect();
        assert_eq!(ejected, [true, false, false]);
        assert_eq!(service.ejected(), 1);
        // The second keeps failing and stays in: its count goes on, ready for when the first
        // returns.
        assert!(!service.observe(&p, ep(1), &hs[1], Observed::Status(500), 3, now));
        assert!(!service.is_ejected(ep(0), &hs[0], now + S(30)));
        assert!(service.observe(&p, ep(1), &hs[1], Observed::Status(500), 3, now + S(30)));
    }

    #[test]
    fn errors_that_are_not_the_endpoints_doing_are_not_counted() {
        let overflow = UpstreamError::Overflow {
            endpoint: ep(1),
            overflow: crate::breaker::Overflow {
                limit: crate::breaker::Limit::Pending,
                max: 1,
            },
        };
        assert_eq!(Observed::of_error(&overflow), None);
        let refused = UpstreamError::Connect {
            endpoint: ep(1),
            source: Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        };
        assert_eq!(Observed::of_error(&refused), Some(Observed::ConnectFailure));
    }
}
