//! The HBONE client: opens tunnels on pooled mTLS HTTP/2 connections (see `pool`). Every
//! step of a new connection has a timeout, so a peer that stalls delays tunnels to itself by
//! at most that long, and tunnels to other peers not at all.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

use super::error::{Cause, HandshakeStage, Http2Failure, TlsFailure, classify, classify_handshake};
use super::linger::LingeringClose;
use super::pool::{Checkout, Dialed, DriveSettings, Pool, PoolKey, StreamSlot};
use super::{
    CONNECTION_WINDOW, ERROR_HEADER, HboneError, Keepalive, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE,
    MAX_SEND_BUFFER, REMEMBER_RESETS_FOR, REMEMBERED_RESETS, STREAM_WINDOW, Tunnel,
};
use crate::identity::{CertManager, SpiffeId, WorkloadCertificate, client_config};

/// TCP connect to an endpoint.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// TLS and HTTP/2 handshakes together, once TCP is up: a healthy peer needs milliseconds, so
/// this only bounds how long a stalled one delays the tunnels waiting for it.
pub const DEFAULT_CLIENT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The answer to a CONNECT.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// A pooled connection that carried no tunnel for this long is closed (Istio's ztunnel
/// releases unused pooled connections after 5 minutes too); shorter than the server's idle
/// timeout, so the client normally closes first.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, Clone, Copy)]
pub struct ClientSettings {
    pub keepalive: Keepalive,
    /// [`DEFAULT_CONNECT_TIMEOUT`]
    pub connect_timeout: Duration,
    /// [`DEFAULT_CLIENT_HANDSHAKE_TIMEOUT`]
    pub handshake_timeout: Duration,
    /// [`DEFAULT_RESPONSE_TIMEOUT`]
    pub response_timeout: Duration,
    /// [`DEFAULT_POOL_IDLE_TIMEOUT`]
    pub idle_timeout: Duration,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            keepalive: Keepalive::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            handshake_timeout: DEFAULT_CLIENT_HANDSHAKE_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
        }
    }
}

/// Opens the TCP connection under an HBONE connection. ztunnel dials from inside the source
/// pod's network namespace, so the dialer is the caller's to choose.
pub trait Dialer: Send + Sync + 'static {
    fn dial(&self, addr: SocketAddr)
    -> Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>;
}

/// Dials from the current network namespace.
#[derive(Debug, Default, Clone, Copy)]
pub struct TcpDialer;

impl Dialer for TcpDialer {
    fn dial(
        &self,
        addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>> {
        Box::pin(TcpStream::connect(addr))
    }
}

/// One tunnel to open.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// The workload the traffic comes from; its certificate is presented.
    pub source: SpiffeId,
    /// Where HBONE is accepted: the destination pod's (or waypoint's) IP, port 15008.
    pub endpoint: SocketAddr,
    /// The identity the endpoint must prove.
    pub destination_identity: SpiffeId,
    /// The target inside the destination: `:authority` of the CONNECT.
    pub authority: SocketAddr,
    /// `forwarded: for="<addr>"`: the original client address, for the destination's logs.
    pub forwarded_for: Option<SocketAddr>,
    pub baggage: Option<String>,
    pub traceparent: Option<String>,
}

/// Pools HBONE connections and opens tunnels on them.
#[derive(Clone)]
pub struct HboneClient {
    inner: Arc<Inner>,
}

struct Inner {
    certs: CertManager,
    dialer: Arc<dyn Dialer>,
    settings: ClientSettings,
    pool: Pool,
    connections_opened: AtomicU64,
}

impl HboneClient {
    /// A client with the default timeouts and `keepalive`.
    pub fn new(certs: CertManager, dialer: Arc<dyn Dialer>, keepalive: Keepalive) -> Self {
        Self::with_settings(
            certs,
            dialer,
            ClientSettings {
                keepalive,
                ..ClientSettings::default()
            },
        )
    }

    pub fn with_settings(
        certs: CertManager,
        dialer: Arc<dyn Dialer>,
        settings: ClientSettings,
    ) -> Self {
        HboneClient {
            inner: Arc::new(Inner {
                certs,
                dialer,
                settings,
                pool: Pool::new(DriveSettings {
                    keepalive: settings.keepalive,
                    idle_timeout: settings.idle_timeout,
                }),
                connections_opened: AtomicU64::new(0),
            }),
        }
    }

    /// How many HBONE connections this client has opened in all.
    pub fn connections_opened(&self) -> u64 {
        self.inner.connections_opened.load(Ordering::Relaxed)
    }

    /// How many of them are open now.
    pub fn open_connections(&self) -> usize {
        self.inner.pool.open_connections()
    }

    /// Destinations (source, endpoint, identity) the pool holds connections for now.
    pub fn pooled_destinations(&self) -> usize {
        self.inner.pool.keys()
    }

    /// Opens a tunnel to `req.authority` through `req.endpoint`.
    pub async fn connect(&self, req: &ConnectRequest) -> Result<Tunnel, HboneError> {
        let key = PoolKey {
            source: req.source.clone(),
            endpoint: req.endpoint,
            destination_identity: req.destination_identity.clone(),
        };
        // A pooled connection can die between checkout and use (or be closed by the server as
        // idle): one retry on a new one. A new connection that fails at once was most likely
        // refused (TLS 1.3 clients learn that their certificate was refused only after the
        // handshake, and the server's GOAWAY says when we are over its limits): no retry.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let certs = self
                .inner
                .certs
                .watch(&key.source)
                .await
                .map_err(|source| HboneError::SourceCertificate {
                    identity: key.source.clone(),
                    source,
                })?;
            let serial = certs.borrow().serial().to_string();
            let Checkout {
                send,
                slot,
                state,
                fresh,
            } = self
                .inner
                .pool
                .checkout(&key, &serial, self.dial(&key, certs))
                .await?;
            match self.open_stream(send, slot, req).await {
                Err(OpenError::ConnectionGone(cause)) => {
                    state.mark_dead();
                    if fresh {
                        return Err(fresh_failure(req, cause));
                    }
                    if attempt > 1 {
                        return Err(gone_failure(req, cause));
                    }
                    tracing::debug!(endpoint = %req.endpoint, %cause, "pooled HBONE connection failed; retrying on a new one");
                }
                Err(OpenError::Tunnel(e)) => return Err(e),
                Ok(tunnel) => return Ok(tunnel),
            }
        }
    }

    /// TCP, then TLS and HTTP/2 within one handshake timeout.
    async fn dial(
        &self,
        key: &PoolKey,
        certs: watch::Receiver<Arc<WorkloadCertificate>>,
    ) -> Result<Dialed, HboneError> {
        let addr = key.endpoint;
        let settings = &self.inner.settings;
        let tls_error = |cause| HboneError::Tls {
            addr,
            expected: key.destination_identity.clone(),
            cause,
        };
        let cert_serial = certs.borrow().serial().to_string();
        let tls_config = client_config(
            certs,
            self.inner.certs.trust_bundle(),
            key.destination_identity.clone(),
        )
        .map_err(|e| tls_error(TlsFailure::LocalConfig(e.to_string())))?;
        let tcp = tokio::time::timeout(settings.connect_timeout, self.inner.dialer.dial(addr))
            .await
            .map_err(|_| HboneError::ConnectTimeout { addr })?
            .map_err(|source| HboneError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let deadline = Instant::now() + settings.handshake_timeout;
        let timed_out = |stage| HboneError::HandshakeTimeout {
            addr,
            stage,
            timeout: settings.handshake_timeout,
        };
        let tls = TlsConnector::from(Arc::new(tls_config))
            .connect(ServerName::IpAddress(addr.ip().into()), tcp);
        let tls = tokio::time::timeout(settings.handshake_timeout, tls)
            .await
            .map_err(|_| timed_out(HandshakeStage::Tls))?
            .map_err(|e| tls_error(classify_handshake(&e)))?;
        let h2 = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_header_list_size(MAX_HEADER_LIST_SIZE)
            .enable_push(false)
            .max_concurrent_reset_streams(REMEMBERED_RESETS)
            .reset_stream_duration(REMEMBER_RESETS_FOR)
            .handshake::<_, Bytes>(LingeringClose::new(tls));
        let left = deadline.saturating_duration_since(Instant::now());
        let (send, connection) = tokio::time::timeout(left, h2)
            .await
            .map_err(|_| timed_out(HandshakeStage::Http2))?
            .map_err(|e| match classify(&e) {
                Cause::Tls(t) => tls_error(t),
                other => HboneError::Http2 {
                    addr,
                    cause: Http2Failure::Handshake(other.to_string()),
                },
            })?;
        self.inner
            .connections_opened
            .fetch_add(1, Ordering::Relaxed);
        Ok(Dialed {
            send,
            connection,
            cert_serial,
        })
    }

    async fn open_stream(
        &self,
        send: SendRequest<Bytes>,
        slot: StreamSlot,
        req: &ConnectRequest,
    ) -> Result<Tunnel, OpenError> {
        let addr = req.endpoint;
        let mut send = send
            .ready()
            .await
            .map_err(|e| OpenError::ConnectionGone(classify(&e)))?;
        let mut builder = Request::builder()
            .method(Method::CONNECT)
            .uri(req.authority.to_string())
            .version(http::Version::HTTP_2);
        if let Some(for_addr) = req.forwarded_for {
            builder = builder.header("forwarded", format!("for=\"{for_addr}\""));
        }
        if let Some(baggage) = &req.baggage {
            builder = builder.header("baggage", baggage);
        }
        if let Some(traceparent) = &req.traceparent {
            builder = builder.header("traceparent", traceparent);
        }
        let request = builder.body(()).map_err(|e| {
            OpenError::Tunnel(HboneError::Http2 {
                addr,
                cause: Http2Failure::Request(e.to_string()),
            })
        })?;
        let (response, send_stream) = send
            .send_request(request, false)
            .map_err(|e| OpenError::ConnectionGone(classify(&e)))?;
        let response = tokio::time::timeout(self.inner.settings.response_timeout, response)
            .await
            .map_err(|_| {
                OpenError::Tunnel(HboneError::ResponseTimeout {
                    addr,
                    authority: req.authority,
                })
            })?
            .map_err(|e| {
                // The connection failing under our first request (a refusal of our certificate
                // shows only once the server reads it; a GOAWAY) is about the connection, not
                // this tunnel; a reset of our stream alone is about the tunnel.
                if e.is_io() || e.is_go_away() {
                    OpenError::ConnectionGone(classify(&e))
                } else {
                    OpenError::Tunnel(HboneError::Http2 {
                        addr,
                        cause: Http2Failure::Connection(classify(&e).to_string()),
                    })
                }
            })?;
        let status = response.status();
        if status != StatusCode::OK {
            let reason = response
                .headers()
                .get(ERROR_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("no reason given")
                .to_string();
            return Err(OpenError::Tunnel(HboneError::Refused {
                addr,
                authority: req.authority,
                status,
                reason,
            }));
        }
        let recv = response.into_body();
        Ok(Tunnel::new(send_stream, recv, Some(Box::new(slot))))
    }
}

/// A new connection failed before its first tunnel: the peer accepted the handshake but not
/// us (its alert, or a bare close when the alert was lost), or sent GOAWAY (over its limits).
fn fresh_failure(req: &ConnectRequest, cause: Cause) -> HboneError {
    let addr = req.endpoint;
    match cause {
        Cause::GoAway(code) => HboneError::Http2 {
            addr,
            cause: Http2Failure::GoAway { code },
        },
        cause => HboneError::Tls {
            addr,
            expected: req.destination_identity.clone(),
            cause: cause.tls_or(|detail| TlsFailure::ClosedAfterHandshake { detail }),
        },
    }
}

/// The retry on a new connection failed too.
fn gone_failure(req: &ConnectRequest, cause: Cause) -> HboneError {
    let addr = req.endpoint;
    match cause {
        Cause::Tls(cause) => HboneError::Tls {
            addr,
            expected: req.destination_identity.clone(),
            cause,
        },
        Cause::GoAway(code) => HboneError::Http2 {
            addr,
            cause: Http2Failure::GoAway { code },
        },
        Cause::Other(detail) => HboneError::Http2 {
            addr,
            cause: Http2Failure::Connection(detail),
        },
    }
}

enum OpenError {
    /// The connection is unusable; a new one may work.
    ConnectionGone(Cause),
    Tunnel(HboneError),
}
