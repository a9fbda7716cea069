//! The upstream side of the waypoint: sends a request to the one endpoint the balancer chose,
//! over a pooled connection, and says precisely why when it cannot.
//!
//! A meshed endpoint is reached through HBONE (a tunnel to `<pod IP>:15008` whose `:authority`
//! is `<pod IP>:<target port>`, with the waypoint's own identity), an endpoint outside the mesh
//! over plain TCP. HTTP is spoken in the version the backend port uses: HTTP/1.1, or HTTP/2 with
//! prior knowledge (gRPC).
//!
//! Connections are pooled per [`Target`] (endpoint, transport with the identity it must prove,
//! HTTP version) on hyper's low-level `client::conn` API (see `pool`): an HTTP/2 connection
//! carries up to `max_streams_per_connection` requests at once, and concurrent first requests
//! share one dial; HTTP/1.1 connections carry one request at a time and wait in an idle list
//! between requests.
//!
//! Each request brings its service's [`Terms`]: the traffic policy's pool settings (HTTP/2
//! multiplexing, idle timeout, requests per connection) and the service's circuit breaker,
//! which the pool asks before it opens a connection and while a request waits for one.

mod connect;
mod error;
mod pool;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use ambit_proto::hbone::{HBONE_PORT, HboneClient, Keepalive};
use ambit_proto::identity::SpiffeId;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version};

use crate::body::Body;
use crate::breaker::{Breaker, Limits};
use connect::Connector;
use pool::Pool;

pub use error::UpstreamError;
pub use pool::PoolStats;

/// TCP (or HBONE) and the HTTP handshake of a new connection together.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A pooled connection that carried no request for this long is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle HTTP/1.1 connections kept per target; more are closed as they come back.
pub const DEFAULT_MAX_IDLE_PER_TARGET: usize = 64;
/// Requests at once on one HTTP/2 connection before another one is opened (about what servers
/// allow, Istio's HBONE setting too).
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: usize = 100;

#[derive(Debug, Clone, Copy)]
pub struct UpstreamSettings {
    /// [`DEFAULT_CONNECT_TIMEOUT`]
    pub connect_timeout: Duration,
    /// [`DEFAULT_IDLE_TIMEOUT`]
    pub idle_timeout: Duration,
    /// [`DEFAULT_MAX_IDLE_PER_TARGET`]
    pub max_idle_per_target: usize,
    /// [`DEFAULT_MAX_STREAMS_PER_CONNECTION`]
    pub max_streams_per_connection: usize,
    /// Where meshed endpoints accept HBONE: [`HBONE_PORT`] (tests use another).
    pub hbone_port: u16,
    /// HTTP/2 pings while requests are open, so a dead connection fails them instead of
    /// leaving them to the request timeout.
    pub http2_keepalive: Option<Keepalive>,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_idle_per_target: DEFAULT_MAX_IDLE_PER_TARGET,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            hbone_port: HBONE_PORT,
            http2_keepalive: Some(Keepalive::default()),
        }
    }
}

/// The HTTP version spoken to the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpVersion {
    Http1,
    /// With prior knowledge (no upgrade, no ALPN): gRPC and `appProtocol: http2` ports.
    Http2,
}

impl fmt::Display for HttpVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HttpVersion::Http1 => "HTTP/1.1",
            HttpVersion::Http2 => "HTTP/2",
        })
    }
}

/// How the endpoint is reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Through the pod's ztunnel: HBONE to `<pod IP>:15008`, which must prove `identity`.
    Hbone { identity: SpiffeId },
    /// Plain TCP: the endpoint is not in the mesh.
    Plain,
}

/// Where one request goes; also the pool key (cloning it is cheap: the identity is shared).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Pod IP and target port.
    pub endpoint: SocketAddr,
    pub transport: Transport,
    pub version: HttpVersion,
}

/// A service's connection-pool settings (from its traffic policy; see `crate::traffic`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolPolicy {
    /// HTTP/2: requests share a connection, up to `max_streams_per_connection` at once. Off:
    /// one request at a time per connection, so concurrent requests open several.
    pub multiplex: bool,
    /// A connection is closed once it has carried this many requests; `None`: no limit.
    pub max_requests_per_connection: Option<NonZeroU32>,
    /// A connection unused this long is closed; `None`: [`UpstreamSettings::idle_timeout`].
    pub idle_timeout: Option<Duration>,
}

impl PoolPolicy {
    /// Multiplexed, no request limit, the pool's idle timeout.
    pub const DEFAULT: PoolPolicy = PoolPolicy {
        multiplex: true,
        max_requests_per_connection: None,
        idle_timeout: None,
    };
}

impl Default for PoolPolicy {
    fn default() -> Self {
        PoolPolicy::DEFAULT
    }
}

/// What one request brings to the pool from its service: the pool settings and, when the
/// service has one, its circuit breaker with the limits the request started under.
#[derive(Debug, Clone, Copy)]
pub struct Terms<'a> {
    pub pool: &'a PoolPolicy,
    pub breaker: Option<(&'a Arc<Breaker>, &'a Limits)>,
}

impl Default for Terms<'_> {
    fn default() -> Self {
        Terms {
            pool: &PoolPolicy::DEFAULT,
            breaker: None,
        }
    }
}

/// Sends requests to endpoints over pooled connections. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct Upstream {
    pool: Arc<Pool>,
}

impl Upstream {
    /// `hbone` opens tunnels presenting `identity`'s certificate (the waypoint's own).
    pub fn new(hbone: HboneClient, identity: SpiffeId, settings: UpstreamSettings) -> Self {
        Upstream {
            pool: Pool::new(Connector::new(hbone, identity, settings)),
        }
    }

    /// Sends `req` to `target` and returns the response once its headers arrived; the body
    /// streams from the connection. `client` (the original client's address) goes into the
    /// `forwarded` header of a new HBONE tunnel, as does the request's `traceparent`; pooled
    /// connections carry requests of other clients too, as Envoy's do.
    ///
    /// The request is adapted to the target's version: HTTP/1.1 gets origin-form and `Host`,
    /// HTTP/2 gets `:scheme` and `:authority` (from `Host`).
    pub async fn send(
        &self,
        target: &Target,
        client: Option<SocketAddr>,
        req: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        self.send_with(target, client, req, Terms::default()).await
    }

    /// [`Upstream::send`] under a service's [`Terms`]: its pool settings, and its circuit
    /// breaker's connection and pending limits (over them: [`UpstreamError::Overflow`]).
    pub async fn send_with(
        &self,
        target: &Target,
        client: Option<SocketAddr>,
        req: Request<Body>,
        terms: Terms<'_>,
    ) -> Result<Response<Body>, UpstreamError> {
        let req = prepare(req, target.version);
        self.pool.send(target, client, req, terms).await
    }

    /// Closes the pooled connections of targets for which `keep` is false (endpoints gone from
    /// the config). Requests in flight on them finish first.
    pub fn retain(&self, keep: impl FnMut(&Target) -> bool) {
        self.pool.retain(keep);
    }

    /// What the pool holds now.
    pub fn stats(&self) -> PoolStats {
        self.pool.stats()
    }
}

/// Adapts the request line to the version spoken upstream. Allocates only when translating
/// between HTTP/1.1 and HTTP/2 forms (`Host` ↔ `:authority`).
fn prepare(mut req: Request<Body>, version: HttpVersion) -> Request<Body> {
    match version {
        HttpVersion::Http1 => {
            *req.version_mut() = Version::HTTP_11;
            if let Some(authority) = req.uri().authority() {
                // Absolute form from an HTTP/2 client: HTTP/1.1 servers expect origin form.
                if !req.headers().contains_key(HOST)
                    && let Ok(host) = HeaderValue::from_str(authority.as_str())
                {
                    req.headers_mut().insert(HOST, host);
                }
                let path = req
                    .uri()
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/"));
                *req.uri_mut() = Uri::from(path);
            }
        }
        HttpVersion::Http2 => {
            *req.version_mut() = Version::HTTP_2;
            let uri = req.uri();
            if uri.scheme().is_none() || uri.authority().is_none() {
                let authority = match uri.authority() {
                    Some(a) => Some(a.clone()),
                    None => req
                        .headers()
                        .get(HOST)
                        .and_then(|h| Authority::try_from(h.as_bytes()).ok()),
                };
                if let Some(authority) = authority {
                    let mut parts = http::uri::Parts::default();
                    parts.scheme = Some(uri.scheme().cloned().unwrap_or(Scheme::HTTP));
                    parts.path_and_query = Some(
                        uri.path_and_query()
                            .cloned()
                            .unwrap_or_else(|| PathAndQuery::from_static("/")),
                    );
                    parts.authority = Some(authority);
                    if let Ok(absolute) = Uri::from_parts(parts) {
                        *req.uri_mut() = absolute;
                        // `:authority` replaces `Host` in HTTP/2.
                        req.headers_mut().remove(HOST);
                    }
                }
            }
        }
    }
    req
}
