//! One tunnel request on an HBONE server connection, and how the server knows whether its
//! connection is carrying any tunnel (for the idle timeout).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderMap, Response, StatusCode};

use super::{ERROR_HEADER, Tunnel};
use crate::identity::SpiffeId;

/// A CONNECT that passed the server's checks, waiting for the caller's decision.
pub struct TunnelRequest {
    /// The client's identity, proven by its certificate.
    pub peer: SpiffeId,
    /// Serial number of the client's certificate.
    pub peer_serial: Arc<str>,
    /// The TCP address of the client (its pod IP, or its node's); an IPv4 address even when
    /// a dual-stack listener saw it as IPv4-mapped IPv6.
    pub peer_addr: SocketAddr,
    /// The address the connection arrived on (IPv4 as above).
    pub local_addr: SocketAddr,
    /// The target: `:authority`.
    pub authority: SocketAddr,
    pub headers: HeaderMap,
    pub(super) respond: Option<SendResponse<Bytes>>,
    pub(super) body: Option<RecvStream>,
    /// Keeps the connection from counting as idle while the request waits, then while the
    /// tunnel it became is open.
    pub(super) activity: Option<ActivityGuard>,
}

impl TunnelRequest {
    /// Answers 200 and returns the tunnel.
    pub fn accept(mut self) -> Result<Tunnel, h2::Error> {
        let mut respond = self.respond.take().expect("a request is answered once");
        let body = self.body.take().expect("a request is answered once");
        let send = respond.send_response(Response::new(()), false)?;
        let activity = self
            .activity
            .take()
            .map(|a| Box::new(a) as Box<dyn Send + Sync>);
        Ok(Tunnel::new(send, body, activity))
    }

    /// Refuses the tunnel; `reason` reaches the client in the `ambit-error` header.
    pub fn refuse(mut self, status: StatusCode, reason: &str) {
        if let Some(respond) = self.respond.take() {
            send_refusal(respond, status, reason);
        }
    }

    /// The original client address from `forwarded: for="ip:port"`, if sent: a claim by the
    /// peer, proven by nothing (see the waypoint's `client_address` for when to believe it).
    pub fn forwarded_for(&self) -> Option<SocketAddr> {
        super::target::forwarded_for(&self.headers)
    }
}

impl Drop for TunnelRequest {
    fn drop(&mut self) {
        // No request goes unanswered: a handler that returns without deciding refuses.
        if let Some(respond) = self.respond.take() {
            send_refusal(
                respond,
                StatusCode::SERVICE_UNAVAILABLE,
                "the tunnel was not handled",
            );
        }
    }
}

pub(crate) fn send_refusal(mut respond: SendResponse<Bytes>, status: StatusCode, reason: &str) {
    let mut response = Response::new(());
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(reason) {
        response.headers_mut().insert(ERROR_HEADER, value);
    }
    let _ = respond.send_response(response, true);
}

/// What the server does with each accepted tunnel request.
pub trait TunnelHandler: Send + Sync + 'static {
    fn handle(&self, request: TunnelRequest) -> impl Future<Output = ()> + Send;
}

/// How many requests and tunnels a connection has open, and since when it has had none.
pub(crate) struct Activity {
    open: AtomicUsize,
    start: Instant,
    /// Milliseconds from `start` to when `open` last fell to zero.
    idle_since_ms: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Activity {
            open: AtomicUsize::new(0),
            start: Instant::now(),
            idle_since_ms: AtomicU64::new(0),
        })
    }

    pub(crate) fn enter(self: &Arc<Self>) -> ActivityGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        ActivityGuard(self.clone())
    }

    /// How long the connection has carried nothing; `None` while something is open.
    pub(crate) fn idle_for(&self) -> Option<Duration> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(self.start.elapsed().saturating_sub(since))
    }
}

pub(crate) struct ActivityGuard(Arc<Activity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        let a = &self.0;
        let now = u64::try_from(a.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Stamped before the count drops, so an idle check that sees zero sees this time.
        a.idle_since_ms.fetch_max(now, Ordering::AcqRel);
        a.open.fetch_sub(1, Ordering::AcqRel);
    }
}
