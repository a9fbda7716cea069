//! HTTP/1.1: one request at a time per connection, idle ones kept per target; at the
//! service's connection limit a request waits (pending) for one to come back or close.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::client::conn::http1;

use super::lease::{H1Lease, respond1};
use super::{
    Entry, HttpVersion, Pool, READY_WAIT, TRACEPARENT, Terms, UpstreamError, connection_slot,
    failed, origin, pend,
};
use crate::body::Body;
use crate::breaker::{Breaker, Slot};

pub(super) struct Idle {
    pub(super) send: http1::SendRequest<Body>,
    pub(super) since: Instant,
    /// Requests it has carried.
    pub(super) served: u32,
}

/// What a look for an HTTP/1.1 connection came to.
enum Look1<'t> {
    Done(Result<Response<Body>, UpstreamError>),
    /// At the service's connection limit (the request is counted as pending): wait for a
    /// connection to come back or close, then look again with the request.
    Full(Request<Body>, &'t Arc<Breaker>),
}

enum Reserve<'t> {
    Dial(H1Lease, Option<Slot>),
    Full(&'t Arc<Breaker>),
}

impl Pool {
    pub(super) async fn send1(
        &self,
        entry: &Arc<Entry>,
        client: Option<SocketAddr>,
        req: Request<Body>,
        terms: Terms<'_>,
    ) -> Result<Response<Body>, UpstreamError> {
        let mut pending = None;
        let (mut req, breaker) = match self.try1(entry, client, req, terms, &mut pending).await {
            Look1::Done(result) => return result,
            Look1::Full(req, breaker) => (req, breaker),
        };
        let _returned = entry.returned.listen();
        let _freed = breaker.freed().listen();
        loop {
            // Registered before looking: what comes back after the look wakes the request.
            let returned = entry.returned.notified();
            let freed = breaker.freed().notified();
            tokio::pin!(returned, freed);
            returned.as_mut().enable();
            freed.as_mut().enable();
            req = match self.try1(entry, client, req, terms, &mut pending).await {
                Look1::Done(result) => return result,
                Look1::Full(req, _) => req,
            };
            tokio::select! {
                () = returned => {}
                () = freed => {}
            }
        }
    }

    /// One look for an HTTP/1.1 connection: an idle one, else a new one if the service's
    /// connection limit allows.
    async fn try1<'t>(
        &self,
        entry: &Arc<Entry>,
        client: Option<SocketAddr>,
        mut req: Request<Body>,
        terms: Terms<'t>,
        pending: &mut Option<Slot>,
    ) -> Look1<'t> {
        let endpoint = entry.target.endpoint;
        while let Some(mut lease) = entry.idle_http1(terms.pool.max_requests_per_connection) {
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
            // It has its connection: no longer pending.
            *pending = None;
            match send.try_send_request(req).await {
                Ok(response) => return Look1::Done(Ok(respond1(response, lease))),
                Err(mut e) => match e.take_message() {
                    // Closed before it took the request: the next connection gets it.
                    Some(back) => req = back,
                    None => {
                        return Look1::Done(Err(UpstreamError::after_send(
                            endpoint,
                            HttpVersion::Http1,
                            e.into_error(),
                        )));
                    }
                },
            }
        }
        let (mut lease, slot) = match entry.reserve_http1(terms) {
            Reserve::Dial(lease, slot) => (lease, slot),
            Reserve::Full(breaker) => {
                return match pend(pending, terms, endpoint) {
                    Ok(()) => Look1::Full(req, breaker),
                    Err(e) => Look1::Done(Err(e)),
                };
            }
        };
        if let Err(e) = pend(pending, terms, endpoint) {
            return Look1::Done(Err(e));
        }
        let dialed = self
            .connector
            .http1(
                &entry.target,
                origin(client, req.headers().get(TRACEPARENT), &entry.target),
                slot,
            )
            .await;
        *pending = None;
        let send = match dialed {
            Ok(send) => send,
            Err(e) => return Look1::Done(Err(e)),
        };
        Look1::Done(match lease.send.insert(send).try_send_request(req).await {
            Ok(response) => Ok(respond1(response, lease)),
            Err(e) => Err(failed(endpoint, HttpVersion::Http1, e)),
        })
    }
}

impl Entry {
    /// The most recently used idle HTTP/1.1 connection that is still open (and has not
    /// carried `max_served` requests: one that has is closed).
    fn idle_http1(self: &Arc<Self>, max_served: Option<NonZeroU32>) -> Option<H1Lease> {
        let mut state = self.state.lock();
        while let Some(idle) = state.idle.pop_back() {
            let spent = max_served.is_some_and(|m| idle.served >= m.get());
            if !idle.send.is_closed() && !spent {
                state.busy += 1;
                return Some(H1Lease {
                    entry: self.clone(),
                    send: Some(idle.send),
                    reuse: false,
                    served: idle.served.saturating_add(1),
                    max_served,
                });
            }
        }
        None
    }

    /// A new HTTP/1.1 connection, if the service's connection limit allows: counted as busy
    /// meanwhile, so the target is not forgotten.
    fn reserve_http1<'t>(self: &Arc<Self>, terms: Terms<'t>) -> Reserve<'t> {
        let mut state = self.state.lock();
        let has_connection = !state.idle.is_empty() || state.busy > 0;
        let slot = match connection_slot(terms, has_connection) {
            Ok(slot) => slot,
            Err(breaker) => return Reserve::Full(breaker),
        };
        state.busy += 1;
        Reserve::Dial(
            H1Lease {
                entry: self.clone(),
                send: None,
                reuse: false,
                served: 1,
                max_served: terms.pool.max_requests_per_connection,
            },
            slot,
        )
    }
}
