//! What a request holds while it runs: its HTTP/1.1 connection or its HTTP/2 stream, handed
//! on to the response body, which gives it back when the body ends.

use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::CONNECTION;
use http::{HeaderMap, Response, Version};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;

use super::Entry;
use super::h1::Idle;
use super::h2::H2Conn;
use crate::body::{self, Body};

/// An HTTP/1.1 connection out with one request. Dropped, it goes back to the idle list if
/// `reuse` was set (the response ended cleanly on a keep-alive connection) and it has carried
/// fewer than `max_served` requests, else it closes.
pub(super) struct H1Lease {
    pub(super) entry: Arc<Entry>,
    pub(super) send: Option<http1::SendRequest<Body>>,
    pub(super) reuse: bool,
    /// Requests it has carried, this one included.
    pub(super) served: u32,
    pub(super) max_served: Option<NonZeroU32>,
}

impl Drop for H1Lease {
    fn drop(&mut self) {
        let spent = self.max_served.is_some_and(|m| self.served >= m.get());
        let back = self
            .send
            .take()
            .filter(|s| self.reuse && !spent && !s.is_closed())
            .map(|send| Idle {
                send,
                since: Instant::now(),
                served: self.served,
            });
        let (refused, returned) = {
            let mut state = self.entry.state.lock();
            state.busy -= 1;
            match back {
                Some(idle) if state.idle.len() < self.entry.max_idle => {
                    state.idle.push_back(idle);
                    (None, true)
                }
                other => (other, false),
            }
        };
        // Closing a connection wakes its task: outside the lock. (Its breaker slot is given
        // back, and waiters woken, when that task ends.)
        drop(refused);
        if returned {
            self.entry.returned.raise();
        }
    }
}

/// One stream on an HTTP/2 connection, counted until dropped.
pub(super) struct H2Lease {
    pub(super) conn: Arc<H2Conn>,
}

impl H2Lease {
    pub(super) fn new(conn: Arc<H2Conn>) -> Self {
        conn.streams.fetch_add(1, Ordering::AcqRel);
        conn.served.fetch_add(1, Ordering::Relaxed);
        H2Lease { conn }
    }
}

impl Drop for H2Lease {
    fn drop(&mut self) {
        let c = &self.conn;
        let now = u64::try_from(c.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Stamped before the count drops, so a sweep that sees no stream sees this time.
        c.last_used_ms.fetch_max(now, Ordering::AcqRel);
        // SeqCst, as the waiter's look: a request that saw no room is then seen waiting.
        c.streams.fetch_sub(1, Ordering::SeqCst);
        c.returned.raise();
    }
}

pub(super) enum Lease {
    Http1 { lease: H1Lease, keep_alive: bool },
    Http2(H2Lease),
}

pub(super) fn respond1(response: Response<Incoming>, lease: H1Lease) -> Response<Body> {
    let keep_alive = response.version() == Version::HTTP_11 && !closes(response.headers());
    wrap(response, Lease::Http1 { lease, keep_alive })
}

/// `Connection: close` from the server: the connection ends with this response.
fn closes(headers: &HeaderMap) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

pub(super) fn wrap(response: Response<Incoming>, lease: Lease) -> Response<Body> {
    response.map(|inner| {
        body::boxed(PooledBody {
            inner,
            lease: Some(lease),
        })
    })
}

/// A response body that holds its connection (HTTP/1.1) or stream (HTTP/2) until it ends.
struct PooledBody {
    inner: Incoming,
    lease: Option<Lease>,
}

impl PooledBody {
    fn release(&mut self, complete: bool) {
        match self.lease.take() {
            Some(Lease::Http1 {
                mut lease,
                keep_alive,
            }) => lease.reuse = complete && keep_alive,
            // Ends the stream's count.
            Some(Lease::Http2(stream)) => drop(stream),
            None => {}
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(true),
            // The last frame: the connection can go back before the caller polls again
            // (servers stop polling once `is_end_stream`).
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.release(true),
            Poll::Ready(Some(Err(_))) => this.release(false),
            Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // An empty body (204, HEAD) or one read to its end leaves the connection reusable.
        let complete = self.inner.is_end_stream();
        self.release(complete);
    }
}
