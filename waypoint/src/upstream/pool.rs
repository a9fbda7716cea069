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
//!   wait on that same dial.
//! - A reaper task (one per pool, started with the first target) closes connections idle for
//!   the idle timeout and forgets targets with nothing left.
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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared};
use http::{Request, Response};
use hyper::client::conn::{http1, http2};
use parking_lot::{Mutex, RwLock};

mod lease;

use super::connect::{Connector, Origin};
use super::{HttpVersion, Target, UpstreamError};
use crate::body::Body;
use lease::{H1Lease, H2Lease, Lease, respond1, wrap};

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
}

/// How long a pooled HTTP/1.1 connection may take to become ready for its next request.
const READY_WAIT: Duration = Duration::from_millis(100);

type Dial = Shared<BoxFuture<'static, Result<Arc<H2Conn>, UpstreamError>>>;

/// One target's connections.
struct Entry {
    target: Target,
    max_idle: usize,
    max_streams: usize,
    idle_timeout: Duration,
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
}

struct Idle {
    send: http1::SendRequest<Body>,
    since: Instant,
}

struct H2Conn {
    send: http2::SendRequest<Body>,
    streams: AtomicUsize,
    /// A request was handed back unsent: the connection is closing.
    dead: AtomicBool,
    born: Instant,
    /// Milliseconds from `born` to when a stream last ended.
    last_used_ms: AtomicU64,
}

impl Pool {
    pub(super) fn new(connector: Connector) -> Arc<Self> {
        Arc::new(Pool {
            connector: Arc::new(connector),
            targets: RwLock::new(HashMap::new()),
            reaper_started: AtomicBool::new(false),
        })
    }

    pub(super) async fn send(
        self: &Arc<Self>,
        target: &Target,
        client: Option<SocketAddr>,
        req: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        let entry = self.entry(target);
        match target.version {
            HttpVersion::Http1 => self.send1(&entry, client, req).await,
            HttpVersion::Http2 => self.send2(&entry, client, req).await,
        }
    }

    fn entry(self: &Arc<Self>, target: &Target) -> Arc<Entry> {
        if let Some(entry) = self.targets.read().get(target) {
            return entry.clone();
        }
        let settings = &self.connector.settings;
        let entry = self
            .targets
            .write()
            .entry(target.clone())
            .or_insert_with(|| {
                Arc::new(Entry {
                    target: target.clone(),
                    max_idle: settings.max_idle_per_target,
                    max_streams: settings.max_streams_per_connection.max(1),
                    idle_timeout: settings.idle_timeout,
                    state: Mutex::default(),
                })
            })
            .clone();
        if !self.reaper_started.swap(true, Ordering::Relaxed) {
            let period = (settings.idle_timeout / 2)
                .clamp(Duration::from_millis(10), Duration::from_secs(3600));
            tokio::spawn(reap(Arc::downgrade(self), period));
        }
        entry
    }

    async fn send1(
        &self,
        entry: &Arc<Entry>,
        client: Option<SocketAddr>,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        let endpoint = entry.target.endpoint;
        while let Some(mut lease) = entry.idle_http1() {
            let send = lease.send.as_mut().expect("an idle connection");
            // A connection put back the moment its response ended can still be finishing the
            // exchange (its task has not run yet); one busy longer (still writing a request
            // body the server answered early) is given up.
            if !send.is_ready()
                && !matches!(
                    tokio::time::timeout(READY_WAIT, send.ready()).await,
                    Ok(Ok(()))
                )
            {
                continue;
            }
            match send.try_send_request(req).await {
                Ok(response) => return Ok(respond1(response, lease)),
                Err(mut e) => match e.take_message() {
                    // Closed before it took the request: the next connection gets it.
                    Some(back) => req = back,
                    None => {
                        return Err(UpstreamError::after_send(
                            endpoint,
                            HttpVersion::Http1,
                            e.into_error(),
                        ));
                    }
                },
            }
        }
        let mut lease = entry.reserve_http1();
        let send = self
            .connector
            .http1(&entry.target, origin(client, &req, &entry.target))
            .await?;
        match lease.send.insert(send).try_send_request(req).await {
            Ok(response) => Ok(respond1(response, lease)),
            Err(e) => Err(failed(endpoint, HttpVersion::Http1, e)),
        }
    }

    async fn send2(
        &self,
        entry: &Arc<Entry>,
        client: Option<SocketAddr>,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        let endpoint = entry.target.endpoint;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let lease = match entry.checkout_http2(|| self.dial2(entry, client, &req)) {
                Checkout::Ready(lease) => lease,
                Checkout::Wait(dial) => H2Lease::new(dial.await?),
            };
            let mut send = lease.conn.send.clone();
            match send.try_send_request(req).await {
                Ok(response) => return Ok(wrap(response, Lease::Http2(lease))),
                Err(mut e) => match e.take_message() {
                    // The connection is closing (GOAWAY, reset) and did not take the request:
                    // once more, on another.
                    Some(back) => {
                        lease.conn.dead.store(true, Ordering::Relaxed);
                        if attempt > 1 {
                            return Err(UpstreamError::ClosedBeforeSend {
                                endpoint,
                                version: HttpVersion::Http2,
                                source: Arc::new(e.into_error()),
                            });
                        }
                        req = back;
                    }
                    None => {
                        return Err(UpstreamError::after_send(
                            endpoint,
                            HttpVersion::Http2,
                            e.into_error(),
                        ));
                    }
                },
            }
        }
    }

    /// A dial every request finding no room on the target's HTTP/2 connections can wait on.
    fn dial2(&self, entry: &Arc<Entry>, client: Option<SocketAddr>, req: &Request<Body>) -> Dial {
        let connector = self.connector.clone();
        let weak = Arc::downgrade(entry);
        let target = entry.target.clone();
        let origin = origin(client, req, &target);
        async move {
            let result = connector
                .http2(&target, origin)
                .await
                .map(|send| Arc::new(H2Conn::new(send)));
            if let Some(entry) = weak.upgrade() {
                let mut state = entry.state.lock();
                state.dialing = None;
                if let Ok(conn) = &result {
                    state.http2.push(conn.clone());
                }
            }
            result
        }
        .boxed()
        .shared()
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

    fn sweep(&self) {
        let now = Instant::now();
        let entries: Vec<Arc<Entry>> = self.targets.read().values().cloned().collect();
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

/// Closes idle connections and forgets empty targets until the pool is dropped.
async fn reap(pool: Weak<Pool>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.sweep(),
            None => return,
        }
    }
}

fn origin(client: Option<SocketAddr>, req: &Request<Body>, target: &Target) -> Origin {
    // Only a tunnel carries the trace context; a plain connection has nowhere to put it.
    let traceparent = match target.transport {
        super::Transport::Hbone { .. } => req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
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

enum Checkout {
    Ready(H2Lease),
    Wait(Dial),
}

impl Entry {
    /// The most recently used idle HTTP/1.1 connection that is still open.
    fn idle_http1(self: &Arc<Self>) -> Option<H1Lease> {
        let mut state = self.state.lock();
        while let Some(idle) = state.idle.pop_back() {
            if !idle.send.is_closed() {
                state.busy += 1;
                return Some(H1Lease {
                    entry: self.clone(),
                    send: Some(idle.send),
                    reuse: false,
                });
            }
        }
        None
    }

    /// Counts a connection about to be dialled as busy, so the target is not forgotten
    /// meanwhile.
    fn reserve_http1(self: &Arc<Self>) -> H1Lease {
        self.state.lock().busy += 1;
        H1Lease {
            entry: self.clone(),
            send: None,
            reuse: false,
        }
    }

    /// The first HTTP/2 connection with room for a stream, or the dial to wait on (`dial`
    /// starts one when none is under way).
    fn checkout_http2(&self, dial: impl FnOnce() -> Dial) -> Checkout {
        let mut state = self.state.lock();
        state.http2.retain(|c| c.is_open());
        if let Some(conn) = state
            .http2
            .iter()
            .find(|c| c.streams.load(Ordering::Relaxed) < self.max_streams)
        {
            return Checkout::Ready(H2Lease::new(conn.clone()));
        }
        Checkout::Wait(state.dialing.get_or_insert_with(dial).clone())
    }

    /// Closes what has been idle for the idle timeout; true when nothing is left.
    fn sweep(&self, now: Instant) -> bool {
        let mut state = self.state.lock();
        let timeout = self.idle_timeout;
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
        self.idle.is_empty() && self.busy == 0 && self.http2.is_empty() && self.dialing.is_none()
    }
}

impl H2Conn {
    fn new(send: http2::SendRequest<Body>) -> Self {
        H2Conn {
            send,
            streams: AtomicUsize::new(0),
            dead: AtomicBool::new(false),
            born: Instant::now(),
            last_used_ms: AtomicU64::new(0),
        }
    }

    fn is_open(&self) -> bool {
        !self.dead.load(Ordering::Relaxed) && !self.send.is_closed()
    }

    fn idle_for(&self, now: Instant, timeout: Duration) -> bool {
        if self.streams.load(Ordering::Acquire) > 0 {
            return false;
        }
        let last = self.born + Duration::from_millis(self.last_used_ms.load(Ordering::Acquire));
        now.saturating_duration_since(last) >= timeout
    }
}
