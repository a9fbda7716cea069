//! The connection pool, on hyper's low-level `client::conn` API rather than
//! `hyper_util::client::legacy::Client`: the legacy client keys its pool by the URI's scheme and
//! authority, which for HTTP/2 is also the `:authority` sent upstream (the waypoint must pass the
//! client's own), cannot key on the identity an HBONE endpoint must prove, and would need one
//! client per HTTP version. Here the key is the [`Target`] itself and the pool is small:
//!
//! - HTTP/1.1: an idle list per target (most recently used first out, capped, closed after the
//!   idle timeout). A connection goes back once its response body has been read to the end;
//!   a body dropped before its end closes the connection (hyper cannot reuse it).
//! - HTTP/2: the target's connections, each with a count of its open streams; a request takes
//!   the first with room, and when none has any, the first such request dials and the others
//!   wait on that same dial, then look again. Multiplexing off (the service's traffic policy):
//!   room is one stream, and each request without a free connection dials its own.
//! - A connection that has carried the policy's `max_requests_per_connection` is retired: it
//!   takes no more requests and closes when its last one ends.
//! - A reaper task (one per pool, started with the first target) closes connections idle for
//!   their service's idle timeout and forgets targets with nothing left.
//!
//! The service's circuit breaker (`crate::breaker`) counts connections across all its
//! endpoints: a new connection takes a slot (held by the connection's task, given back when it
//! ends), and a request that finds none free waits, counted as pending, until one of its
//! target's connections has room again or one of the service's connections closes; past the
//! pending limit it is refused at once ([`UpstreamError::Overflow`]). A request whose
//! connection is being dialled is pending too. A target with no connection at all may always
//! open one, even over the limit (as Envoy does), so idle connections to other endpoints never
//! starve an endpoint: the count can exceed `max_connections` by at most the number of
//! endpoints.
//!
//! A request whose pooled connection turns out closed before hyper took the request (the
//! server closed a keep-alive connection at the same moment) is sent on another one: hyper hands
//! such a request back untouched.
//!
//! Locks: the target map (`RwLock`, read per request, written when a target first appears and
//! by the reaper and `retain`) and one `Mutex` per target (checkout, return, dial completion,
//! reaping); neither is held across an await.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, Shared};
use http::{HeaderValue, Request, Response};
use parking_lot::{Mutex, RwLock};

mod h1;
mod h2;
mod lease;

use super::connect::{Connector, Origin};
use super::{HttpVersion, Target, Terms, UpstreamError};
use crate::body::Body;
use crate::breaker::{Breaker, Limit, Signal, Slot};
use h1::Idle;
use h2::H2Conn;

/// What the pool holds at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Targets with pool state.
    pub targets: usize,
    /// HTTP/1.1 connections waiting for a request.
    pub idle_http1: usize,
    /// HTTP/1.1 connections carrying a request (or being opened for one).
    pub busy_http1: usize,
    /// Open HTTP/2 connections.
    pub http2: usize,
    /// Requests open on them.
    pub http2_streams: usize,
}

pub(super) struct Pool {
    connector: Arc<Connector>,
    targets: RwLock<HashMap<Target, Arc<Entry>>>,
    reaper_started: AtomicBool,
    /// The shortest idle timeout of the targets, in milliseconds: the reaper runs at half that.
    min_idle_ms: AtomicU64,
}

/// How long a pooled HTTP/1.1 connection may take to become ready for its next request.
const READY_WAIT: Duration = Duration::from_millis(100);

/// The reaper's period stays within these: an idle timeout is kept to within half of it or
/// this much, whichever is shorter.
const MIN_REAP_PERIOD: Duration = Duration::from_millis(10);
const MAX_REAP_PERIOD: Duration = Duration::from_secs(5);

type Dial = Shared<BoxFuture<'static, Result<Arc<H2Conn>, UpstreamError>>>;

/// One target's connections.
struct Entry {
    target: Target,
    max_idle: usize,
    max_streams: usize,
    /// Its service's idle timeout (ms), as the latest request brought it.
    idle_ms: AtomicU64,
    /// Raised when one of its connections goes back idle or an HTTP/2 stream on one ends.
    returned: Arc<Signal>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Oldest first; checkout takes from the back.
    idle: VecDeque<Idle>,
    /// HTTP/1.1 connections out with a request, or being dialled.
    busy: usize,
    http2: Vec<Arc<H2Conn>>,
    /// The HTTP/2 dial that requests finding no room wait on.
    dialing: Option<Dial>,
    /// HTTP/2 connections each being dialled for one request (multiplexing off).
    dialing_own: usize,
}

impl Pool {
    pub(super) fn new(connector: Connector) -> Arc<Self> {
        let idle = millis(connector.settings.idle_timeout);
        Arc::new(Pool {
            connector: Arc::new(connector),
            targets: RwLock::new(HashMap::new()),
            reaper_started: AtomicBool::new(false),
            min_idle_ms: AtomicU64::new(idle),
        })
    }

    pub(super) async fn send(
        self: &Arc<Self>,
        target: &Target,
        client: Option<SocketAddr>,
        req: Request<Body>,
        terms: Terms<'_>,
    ) -> Result<Response<Body>, UpstreamError> {
        let entry = self.entry(target, terms);
        match target.version {
            HttpVersion::Http1 => self.send1(&entry, client, req, terms).await,
            HttpVersion::Http2 => self.send2(&entry, client, req, terms).await,
        }
    }

    fn entry(self: &Arc<Self>, target: &Target, terms: Terms<'_>) -> Arc<Entry> {
        let settings = &self.connector.settings;
        let idle_ms = millis(terms.pool.idle_timeout.unwrap_or(settings.idle_timeout));
        let known = self.targets.read().get(target).cloned();
        let entry = match known {
            Some(entry) => entry,
            None => {
                let entry = self
                    .targets
                    .write()
                    .entry(target.clone())
                    .or_insert_with(|| {
                        Arc::new(Entry {
                            target: target.clone(),
                            max_idle: settings.max_idle_per_target,
                            max_streams: settings.max_streams_per_connection.max(1),
                            idle_ms: AtomicU64::new(idle_ms),
                            returned: Arc::new(Signal::default()),
                            state: Mutex::default(),
                        })
                    })
                    .clone();
                self.min_idle_ms.fetch_min(idle_ms, Ordering::Relaxed);
                if !self.reaper_started.swap(true, Ordering::Relaxed) {
                    tokio::spawn(reap(Arc::downgrade(self)));
                }
                entry
            }
        };
        // A load first: the same timeout as before (the usual case) writes nothing.
        if entry.idle_ms.load(Ordering::Relaxed) != idle_ms {
            entry.idle_ms.store(idle_ms, Ordering::Relaxed);
            self.min_idle_ms.fetch_min(idle_ms, Ordering::Relaxed);
        }
        entry
    }

    pub(super) fn retain(&self, mut keep: impl FnMut(&Target) -> bool) {
        self.targets.write().retain(|target, _| keep(target));
    }

    pub(super) fn stats(&self) -> PoolStats {
        let entries: Vec<Arc<Entry>> = self.targets.read().values().cloned().collect();
        let mut stats = PoolStats {
            targets: entries.len(),
            ..PoolStats::default()
        };
        for entry in entries {
            let state = entry.state.lock();
            stats.idle_http1 += state.idle.len();
            stats.busy_http1 += state.busy;
            stats.http2 += state.http2.len();
            stats.http2_streams += state
                .http2
                .iter()
                .map(|c| c.streams.load(Ordering::Relaxed))
                .sum::<usize>();
        }
        stats
    }

    fn reap_period(&self) -> Duration {
        (Duration::from_millis(self.min_idle_ms.load(Ordering::Relaxed)) / 2)
            .clamp(MIN_REAP_PERIOD, MAX_REAP_PERIOD)
    }

    fn sweep(&self) {
        let now = Instant::now();
        let entries: Vec<Arc<Entry>> = self.targets.read().values().cloned().collect();
        let shortest = entries
            .iter()
            .map(|e| e.idle_ms.load(Ordering::Relaxed))
            .min()
            .unwrap_or_else(|| millis(self.connector.settings.idle_timeout));
        self.min_idle_ms.store(shortest, Ordering::Relaxed);
        let empty: Vec<Target> = entries
            .into_iter()
            .filter(|e| e.sweep(now))
            .map(|e| e.target.clone())
            .collect();
        if empty.is_empty() {
            return;
        }
        let mut targets = self.targets.write();
        for target in empty {
            // Re-checked under the map's lock: a request may have used it since.
            if targets.get(&target).is_some_and(|e| e.is_empty()) {
                targets.remove(&target);
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Counts the request as pending (once), unless its service's pending limit is reached.
fn pend(
    pending: &mut Option<Slot>,
    terms: Terms<'_>,
    endpoint: SocketAddr,
) -> Result<(), UpstreamError> {
    if pending.is_some() {
        return Ok(());
    }
    if let Some((breaker, limits)) = terms.breaker {
        let slot = breaker
            .acquire(Limit::Pending, limits.max_pending)
            .map_err(|overflow| UpstreamError::Overflow { endpoint, overflow })?;
        *pending = Some(slot);
    }
    Ok(())
}

/// Closes idle connections and forgets empty targets until the pool is dropped.
async fn reap(pool: Weak<Pool>) {
    loop {
        let Some(period) = pool.upgrade().map(|p| p.reap_period()) else {
            return;
        };
        tokio::time::sleep(period).await;
        match pool.upgrade() {
            Some(pool) => pool.sweep(),
            None => return,
        }
    }
}

const TRACEPARENT: &str = "traceparent";

fn origin(client: Option<SocketAddr>, trace: Option<&HeaderValue>, target: &Target) -> Origin {
    // Only a tunnel carries the trace context; a plain connection has nowhere to put it.
    let traceparent = match target.transport {
        super::Transport::Hbone { .. } => trace.and_then(|v| v.to_str().ok()).map(str::to_owned),
        super::Transport::Plain => None,
    };
    Origin {
        client,
        traceparent,
    }
}

/// A failed send with no other connection left to try: `ClosedBeforeSend` when hyper handed
/// the request back (nothing of it was written), else classified as failed after sending.
fn failed(
    endpoint: SocketAddr,
    version: HttpVersion,
    mut e: hyper::client::conn::TrySendError<Request<Body>>,
) -> UpstreamError {
    if e.take_message().is_some() {
        UpstreamError::ClosedBeforeSend {
            endpoint,
            version,
            source: Arc::new(e.into_error()),
        }
    } else {
        UpstreamError::after_send(endpoint, version, e.into_error())
    }
}

/// The connection limit of `terms`' breaker, for a new connection to an entry whose state is
/// `state`: a slot, or `Err` at the limit. An entry with no connection at all gets one anyway.
fn connection_slot<'t>(
    terms: Terms<'t>,
    has_connection: bool,
) -> Result<Option<Slot>, &'t Arc<Breaker>> {
    let Some((breaker, limits)) = terms.breaker else {
        return Ok(None);
    };
    match breaker.acquire(Limit::Connections, limits.max_connections) {
        Ok(slot) => Ok(Some(slot)),
        Err(_) if !has_connection => Ok(Some(breaker.acquire_over(Limit::Connections))),
        Err(_) => Err(breaker),
    }
}

impl Entry {
    /// Closes what has been idle for the idle timeout; true when nothing is left.
    fn sweep(&self, now: Instant) -> bool {
        let mut state = self.state.lock();
        let timeout = Duration::from_millis(self.idle_ms.load(Ordering::Relaxed));
        state
            .idle
            .retain(|i| !i.send.is_closed() && now.saturating_duration_since(i.since) < timeout);
        state
            .http2
            .retain(|c| c.is_open() && !c.idle_for(now, timeout));
        // A dial every waiter gave up on (their requests were cancelled) is abandoned.
        if state
            .dialing
            .as_ref()
            .is_some_and(|d| d.strong_count().is_none_or(|n| n <= 1))
        {
            state.dialing = None;
        }
        state.is_empty()
    }

    fn is_empty(&self) -> bool {
        self.state.lock().is_empty()
    }
}

impl State {
    fn is_empty(&self) -> bool {
        self.idle.is_empty()
            && self.busy == 0
            && self.http2.is_empty()
            && self.dialing.is_none()
            && self.dialing_own == 0
    }
}
