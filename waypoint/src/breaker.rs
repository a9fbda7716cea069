//! The circuit breaker of one upstream service: counts of what the waypoint has open towards it
//! (connections, requests waiting for a connection, requests, retries), each checked against
//! its limit when one more is wanted. Over a limit the request is refused at once (503 `UO`):
//! nothing queues past a limit, so a slow service cannot pile up the waypoint's memory nor make
//! the requests of other services wait.
//!
//! The counts live as long as the service's config (they are carried from one config version
//! to the next), the limits come with each request from the config it started under: a limit
//! changed by an update applies to the requests that start after it.
//!
//! Hot path: one compare-and-swap per count taken and one decrement when its [`Slot`] drops; no
//! lock, no allocation. A compare-and-swap instead of add-then-check, so that a refused request
//! never counts, even for a moment, against one that arrives beside it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// The limits of one service (see `crate::traffic` for the defaults and where they come from).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open to all its endpoints together.
    pub max_connections: u32,
    /// Requests waiting for a connection (being dialled, or free again).
    pub max_pending: u32,
    /// Requests in flight, each try counted, from the breaker until the response has ended.
    pub max_requests: u32,
    /// Retries in flight.
    pub max_retries: u32,
}

impl Limits {
    pub fn max(&self, limit: Limit) -> u32 {
        match limit {
            Limit::Connections => self.max_connections,
            Limit::Pending => self.max_pending,
            Limit::Requests => self.max_requests,
            Limit::Retries => self.max_retries,
        }
    }
}

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    Connections,
    Pending,
    Requests,
    Retries,
}

impl Limit {
    pub const ALL: [Limit; 4] = [
        Limit::Connections,
        Limit::Pending,
        Limit::Requests,
        Limit::Retries,
    ];

    /// The `limit` label of `ambit_upstream_overflow_total`.
    pub fn label(self) -> &'static str {
        match self {
            Limit::Connections => "connections",
            Limit::Pending => "pending",
            Limit::Requests => "requests",
            Limit::Retries => "retries",
        }
    }

    /// The field of the traffic policy that sets it.
    pub fn field(self) -> &'static str {
        match self {
            Limit::Connections => "max_connections",
            Limit::Pending => "max_pending_requests",
            Limit::Requests => "max_requests",
            Limit::Retries => "max_retries",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A limit was reached: what the refused request is told (and the log line says).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow {
    pub limit: Limit,
    pub max: u32,
}

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.limit {
            Limit::Connections => "connections are open to it",
            Limit::Pending => "requests already wait for a connection to it",
            Limit::Requests => "requests are already in flight to it",
            Limit::Retries => "retries are already in flight to it",
        };
        write!(
            f,
            "{} {what} ({} {})",
            self.max,
            self.limit.field(),
            self.max
        )
    }
}

impl std::error::Error for Overflow {}

/// A wake-up for tasks waiting for something to be given back, that costs the giver a load
/// when nobody waits (a `Notify` alone takes its lock on every notification).
#[derive(Default)]
pub struct Signal {
    waiting: AtomicUsize,
    notify: Notify,
}

impl Signal {
    /// Wakes every task that waits now.
    pub fn raise(&self) {
        // SeqCst, as the waiter's increment: a waiter that checked before the change being
        // signalled is then seen here (see `listen`).
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }

    /// Counts the caller as waiting until the guard drops. Order: `listen`, then for each round
    /// `notified()` + `enable()`, check the condition, await; a change made after the check is
    /// then always signalled.
    pub fn listen(&self) -> Listening<'_> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        Listening(self)
    }

    pub fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }
}

pub struct Listening<'a>(&'a Signal);

impl Drop for Listening<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The counts of one service. Shared (`Arc`) by every request to it and every connection.
#[derive(Default)]
pub struct Breaker {
    counts: [AtomicU32; 4],
    /// Raised when a connection closes (requests at the connection limit wait for it).
    freed: Signal,
}

impl Breaker {
    pub fn new() -> Arc<Self> {
        Arc::new(Breaker::default())
    }

    /// One more of `limit`, unless `max` are already taken.
    pub fn acquire(self: &Arc<Self>, limit: Limit, max: u32) -> Result<Slot, Overflow> {
        self.counts[limit.index()]
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then(|| n + 1)
            })
            .map(|_| Slot {
                breaker: self.clone(),
                limit,
            })
            .map_err(|_| Overflow { limit, max })
    }

    /// One more of `limit` whatever the count: for the one connection an endpoint with none
    /// may always open (see `upstream::pool`), so that it is counted as well.
    pub fn acquire_over(self: &Arc<Self>, limit: Limit) -> Slot {
        self.counts[limit.index()].fetch_add(1, Ordering::SeqCst);
        Slot {
            breaker: self.clone(),
            limit,
        }
    }

    /// How many of `limit` are taken now.
    pub fn in_use(&self, limit: Limit) -> u32 {
        self.counts[limit.index()].load(Ordering::SeqCst)
    }

    /// Raised whenever one of the service's connections closes.
    pub fn freed(&self) -> &Signal {
        &self.freed
    }
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Breaker");
        for limit in Limit::ALL {
            d.field(limit.label(), &self.in_use(limit));
        }
        d.finish()
    }
}

/// One counted connection, pending request, request or retry; given back when dropped.
#[must_use = "the slot counts only while it lives"]
pub struct Slot {
    breaker: Arc<Breaker>,
    limit: Limit,
}

impl Slot {
    pub fn limit(&self) -> Limit {
        self.limit
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.breaker.counts[self.limit.index()].fetch_sub(1, Ordering::SeqCst);
        if self.limit == Limit::Connections {
            self.breaker.freed.raise();
        }
    }
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Slot").field(&self.limit).finish()
    }
}

/// What one try holds from the breaker until its response has ended: its request and, for a
/// retry, its retry.
#[derive(Debug)]
pub struct Admission {
    _request: Slot,
    _retry: Option<Slot>,
}

impl Admission {
    pub fn new(request: Slot, retry: Option<Slot>) -> Self {
        Admission {
            _request: request,
            _retry: retry,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn each_count_stops_at_its_limit_and_frees_on_drop() {
        let b = Breaker::new();
        let held: Vec<Slot> = (0..3)
            .map(|_| b.acquire(Limit::Pending, 3).unwrap())
            .collect();
        assert_eq!(b.in_use(Limit::Pending), 3);
        let refused = b.acquire(Limit::Pending, 3).unwrap_err();
        assert_eq!(
            refused,
            Overflow {
                limit: Limit::Pending,
                max: 3
            }
        );
        // A refusal leaves no trace, and the other counts are independent.
        assert_eq!(b.in_use(Limit::Pending), 3);
        let request = b.acquire(Limit::Requests, 1).unwrap();
        assert!(b.acquire(Limit::Requests, 1).is_err());
        drop(held);
        assert_eq!(b.in_use(Limit::Pending), 0);
        assert!(b.acquire(Limit::Pending, 3).is_ok());
        drop(request);
        assert_eq!(b.in_use(Limit::Requests), 0);
    }

    #[test]
    fn a_lowered_limit_applies_to_the_next_acquire() {
        let b = Breaker::new();
        let held: Vec<Slot> = (0..5)
            .map(|_| b.acquire(Limit::Requests, 10).unwrap())
            .collect();
        // The limit comes with each request: one started under a lower one is refused.
        assert!(b.acquire(Limit::Requests, 5).is_err());
        assert!(b.acquire(Limit::Requests, 6).is_ok());
        drop(held);
    }

    #[test]
    fn acquire_over_counts_past_the_limit() {
        let b = Breaker::new();
        let a = b.acquire(Limit::Connections, 1).unwrap();
        let over = b.acquire_over(Limit::Connections);
        assert_eq!(b.in_use(Limit::Connections), 2);
        drop((a, over));
        assert_eq!(b.in_use(Limit::Connections), 0);
    }

    #[test]
    fn concurrent_acquires_never_exceed_the_limit() {
        let b = Breaker::new();
        let peak = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (b, peak) = (b.clone(), peak.clone());
                std::thread::spawn(move || {
                    let mut admitted = 0;
                    for _ in 0..10_000 {
                        if let Ok(slot) = b.acquire(Limit::Requests, 8) {
                            peak.fetch_max(b.in_use(Limit::Requests), Ordering::SeqCst);
                            admitted += 1;
                            drop(slot);
                        }
                    }
                    admitted
                })
            })
            .collect();
        let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(admitted > 0);
        assert!(peak.load(Ordering::SeqCst) <= 8);
        assert_eq!(b.in_use(Limit::Requests), 0);
    }

    #[tokio::test]
    async fn a_closed_connection_wakes_a_waiter() {
        let b = Breaker::new();
        let conn = b.acquire(Limit::Connections, 1).unwrap();
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move {
                let _listening = b.freed().listen();
                loop {
                    let notified = b.freed().notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    if let Ok(slot) = b.acquire(Limit::Connections, 1) {
                        return slot;
                    }
                    notified.await;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(conn);
        let slot = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter is woken")
            .unwrap();
        assert_eq!(slot.limit(), Limit::Connections);
    }

    #[test]
    fn overflow_names_the_field() {
        let o = Overflow {
            limit: Limit::Pending,
            max: 10,
        };
        assert_eq!(
            o.to_string(),
            "10 requests already wait for a connection to it (max_pending_requests 10)"
        );
    }
}
