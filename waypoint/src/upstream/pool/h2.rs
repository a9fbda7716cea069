//! HTTP/2: a target's connections, each with its open streams; a request takes the first with
//! room, or waits on the dial under way, or (multiplexing off) dials its own; at the service's
//! connection limit it waits (pending) for a stream to end or a connection to close.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::future::FutureExt;
use http::{HeaderValue, Request, Response};
use hyper::client::conn::http2;

use super::lease::{H2Lease, Lease, wrap};
use super::{
    Dial, Entry, HttpVersion, Pool, State, TRACEPARENT, Terms, UpstreamError, connection_slot,
    origin, pend,
};
use crate::body::Body;
use crate::breaker::{Breaker, Signal, Slot};

pub(super) struct H2Conn {
    pub(super) send: http2::SendRequest<Body>,
    pub(super) streams: AtomicUsize,
    /// Requests it has been given (for `max_requests_per_connection`).
    pub(super) served: AtomicU32,
    /// A request was handed back unsent: the connection is closing.
    pub(super) dead: AtomicBool,
    pub(super) born: Instant,
    /// Milliseconds from `born` to when a stream last ended.
    pub(super) last_used_ms: AtomicU64,
    /// Its entry's: raised when a stream ends.
    pub(super) returned: Arc<Signal>,
}

/// What a look for an HTTP/2 stream came to.
enum Look2<'t> {
    Done(H2Lease),
    /// As [`Look1::Full`].
    Full(&'t Arc<Breaker>),
}

enum Checkout<'t> {
    Ready(H2Lease),
    Wait(Dial),
    Own(Option<Slot>, OwnDial),
    Full(&'t Arc<Breaker>),
}

/// Counts an own HTTP/2 dial under way in its entry (so that the target is not forgotten
/// meanwhile, and counts as having a connection); uncounted when dropped, or by `done`.
struct OwnDial {
    entry: Arc<Entry>,
    counted: bool,
}

impl OwnDial {
    fn done(&mut self, state: &mut State) {
        if std::mem::take(&mut self.counted) {
            state.dialing_own -= 1;
        }
    }
}

impl Drop for OwnDial {
    fn drop(&mut self) {
        if self.counted {
            self.entry.state.lock().dialing_own -= 1;
        }
    }
}

impl Pool {
    pub(super) async fn send2(
        &self,
        entry: &Arc<Entry>,
        client: Option<SocketAddr>,
        mut req: Request<Body>,
        terms: Terms<'_>,
    ) -> Result<Response<Body>, UpstreamError> {
        let endpoint = entry.target.endpoint;
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Cloned (a reference count): the request itself is not `Sync`, so it cannot be
            // borrowed across the waits for a connection.
            let trace = req.headers().get(TRACEPARENT).cloned();
            let lease = self.lease2(entry, client, trace.as_ref(), terms).await?;
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

    /// A stream on one of the target's HTTP/2 connections: one with room, a new one, or, at
    /// the service's connection limit, the first to have room again.
    async fn lease2(
        &self,
        entry: &Arc<Entry>,
        client: Option<SocketAddr>,
        trace: Option<&HeaderValue>,
        terms: Terms<'_>,
    ) -> Result<H2Lease, UpstreamError> {
        let mut pending = None;
        let breaker = match self.try2(entry, client, trace, terms, &mut pending).await? {
            Look2::Done(lease) => return Ok(lease),
            Look2::Full(breaker) => breaker,
        };
        let _returned = entry.returned.listen();
        let _freed = breaker.freed().listen();
        loop {
            let returned = entry.returned.notified();
            let freed = breaker.freed().notified();
            tokio::pin!(returned, freed);
            returned.as_mut().enable();
            freed.as_mut().enable();
            if let Look2::Done(lease) = self.try2(entry, client, trace, terms, &mut pending).await?
            {
                return Ok(lease);
            }
            tokio::select! {
                () = returned => {}
                () = freed => {}
            }
        }
    }

    /// One look for an HTTP/2 stream (waiting on a dial under way is part of the look).
    async fn try2<'t>(
        &self,
        entry: &Arc<Entry>,
        client: Option<SocketAddr>,
        trace: Option<&HeaderValue>,
        terms: Terms<'t>,
        pending: &mut Option<Slot>,
    ) -> Result<Look2<'t>, UpstreamError> {
        let endpoint = entry.target.endpoint;
        loop {
            match entry.checkout_http2(terms, |slot| self.dial2(entry, client, trace, slot)) {
                Checkout::Ready(lease) => {
                    *pending = None;
                    return Ok(Look2::Done(lease));
                }
                Checkout::Wait(dial) => {
                    pend(pending, terms, endpoint)?;
                    let conn = dial.await?;
                    if !conn.is_open() {
                        // Closed at once: the send fails with hyper's reason (and is tried
                        // once more on another connection).
                        *pending = None;
                        return Ok(Look2::Done(H2Lease::new(conn)));
                    }
                    // Look again: the new connection has room for some of those that waited
                    // (up to its stream and request limits); the others dial again.
                }
                Checkout::Own(slot, dialing) => {
                    pend(pending, terms, endpoint)?;
                    let lease = self
                        .dial_own(entry, client, trace, slot, dialing, terms)
                        .await?;
                    *pending = None;
                    return Ok(Look2::Done(lease));
                }
                Checkout::Full(breaker) => {
                    pend(pending, terms, endpoint)?;
                    return Ok(Look2::Full(breaker));
                }
            }
        }
    }

    /// A dial every request finding no room on the target's HTTP/2 connections can wait on.
    fn dial2(
        &self,
        entry: &Arc<Entry>,
        client: Option<SocketAddr>,
        trace: Option<&HeaderValue>,
        slot: Option<Slot>,
    ) -> Dial {
        let connector = self.connector.clone();
        let weak = Arc::downgrade(entry);
        let target = entry.target.clone();
        let returned = entry.returned.clone();
        let origin = origin(client, trace, &target);
        async move {
            let result = connector
                .http2(&target, origin, slot)
                .await
                .map(|send| Arc::new(H2Conn::new(send, returned)));
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

    /// A connection of this request's own (multiplexing off): dialled, then its one stream
    /// taken before anyone else can see it.
    async fn dial_own(
        &self,
        entry: &Arc<Entry>,
        client: Option<SocketAddr>,
        trace: Option<&HeaderValue>,
        slot: Option<Slot>,
        mut dialing: OwnDial,
        terms: Terms<'_>,
    ) -> Result<H2Lease, UpstreamError> {
        let origin = origin(client, trace, &entry.target);
        let send = self.connector.http2(&entry.target, origin, slot).await?;
        let conn = Arc::new(H2Conn::new(send, entry.returned.clone()));
        let lease = H2Lease::new(conn.clone());
        let mut state = entry.state.lock();
        dialing.done(&mut state);
        if !conn.retired(terms.pool.max_requests_per_connection) {
            state.http2.push(conn);
        }
        Ok(lease)
    }
}

impl Entry {
    /// The first HTTP/2 connection with room for a stream, or the dial to wait on (`dial`
    /// starts one when none is under way), or a dial of the request's own (multiplexing off),
    /// or the breaker to wait on (at the service's connection limit).
    fn checkout_http2<'t>(
        self: &Arc<Self>,
        terms: Terms<'t>,
        dial: impl FnOnce(Option<Slot>) -> Dial,
    ) -> Checkout<'t> {
        let max_streams = if terms.pool.multiplex {
            self.max_streams
        } else {
            1
        };
        let max_served = terms.pool.max_requests_per_connection;
        let mut state = self.state.lock();
        state
            .http2
            .retain(|c| c.is_open() && !c.retired(max_served));
        if let Some(i) = state
            .http2
            .iter()
            .position(|c| c.streams.load(Ordering::SeqCst) < max_streams)
        {
            let lease = H2Lease::new(state.http2[i].clone());
            if lease.conn.retired(max_served) {
                // Its last request: it closes when that ends.
                state.http2.remove(i);
            }
            return Checkout::Ready(lease);
        }
        if terms.pool.multiplex
            && let Some(dial) = &state.dialing
        {
            return Checkout::Wait(dial.clone());
        }
        let has_connection =
            !state.http2.is_empty() || state.dialing.is_some() || state.dialing_own > 0;
        let slot = match connection_slot(terms, has_connection) {
            Ok(slot) => slot,
            Err(breaker) => return Checkout::Full(breaker),
        };
        if terms.pool.multiplex {
            Checkout::Wait(state.dialing.insert(dial(slot)).clone())
        } else {
            state.dialing_own += 1;
            Checkout::Own(
                slot,
                OwnDial {
                    entry: self.clone(),
                    counted: true,
                },
            )
        }
    }
}

impl H2Conn {
    fn new(send: http2::SendRequest<Body>, returned: Arc<Signal>) -> Self {
        H2Conn {
            send,
            streams: AtomicUsize::new(0),
            served: AtomicU32::new(0),
            dead: AtomicBool::new(false),
            born: Instant::now(),
            last_used_ms: AtomicU64::new(0),
            returned,
        }
    }

    pub(super) fn is_open(&self) -> bool {
        !self.dead.load(Ordering::Relaxed) && !self.send.is_closed()
    }

    /// It has been given `max` requests: it takes no more.
    fn retired(&self, max: Option<NonZeroU32>) -> bool {
        max.is_some_and(|m| self.served.load(Ordering::Relaxed) >= m.get())
    }

    pub(super) fn idle_for(&self, now: Instant, timeout: Duration) -> bool {
        if self.streams.load(Ordering::Acquire) > 0 {
            return false;
        }
        let last = self.born + Duration::from_millis(self.last_used_ms.load(Ordering::Acquire));
        now.saturating_duration_since(last) >= timeout
    }
}
