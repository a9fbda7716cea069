//! The HBONE server: terminates mTLS and HTTP/2, checks each CONNECT, and hands accepted
//! tunnels to the caller with the peer's verified identity. What one peer can make it hold is
//! bounded: the handshake (TLS and the HTTP/2 preface) by a timeout, connections by the shared
//! [`ConnectionLimits`], idle connections by the idle timeout.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::Reason;
use h2::server::Connection;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::error::{HandshakeStage, classify, classify_handshake};
use super::limits::{
    ConnectionLimits, ConnectionPermit, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_HEADER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT, HandshakePermit, IdentityPermit, Limit,
};
use super::linger::LingeringClose;
use super::request::{Activity, send_refusal};
use super::target::tunnel_target;
use super::watch::{FrameStats, FrameWatch, WatchSettings};
use super::{
    CONNECTION_WINDOW, Keepalive, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE, MAX_LOCAL_ERROR_RESETS,
    MAX_PENDING_ACCEPT_RESETS, MAX_SEND_BUFFER, MAX_STREAMS_PER_CONNECTION, REMEMBER_RESETS_FOR,
    REMEMBERED_RESETS, STREAM_WINDOW, TunnelHandler, TunnelRequest, keepalive,
};
use crate::drain::DrainWatch;
use crate::identity::{
    IdentityError, SpiffeId, TrustBundle, WorkloadCertificate, leaf_identity, leaf_serial,
    peer_certificate, server_config,
};

/// How long a connection refused after TLS gets to read our GOAWAY before it is closed.
const GOAWAY_FLUSH: Duration = Duration::from_secs(1);

/// Which `:authority` addresses a server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorityCheck {
    /// Only the address the connection arrived on (a pod's ztunnel listener): a tunnel may
    /// reach the pod it was dialled to, never another host.
    LocalAddress,
    /// Any address (a waypoint, which routes to services by VIP).
    Any,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub authority_check: AuthorityCheck,
    /// Ports a tunnel may never target (the proxy's own: 15001, 15006, 15008), so a tunnel
    /// cannot loop back into the proxy.
    pub reserved_ports: Vec<u16>,
    pub keepalive: Keepalive,
    /// A client that has not finished TLS and the HTTP/2 preface by then is dropped
    /// (slowloris); [`DEFAULT_HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
    /// A header block (a CONNECT's headers) must end within this long of its first frame, else
    /// the connection is closed (slow headers); [`DEFAULT_HEADER_TIMEOUT`].
    pub header_timeout: Duration,
    /// A connection with no tunnel open for this long is closed with GOAWAY;
    /// [`DEFAULT_IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// How long open tunnels get to finish once a drain starts; then they are closed.
    pub drain_grace: Duration,
    /// Bounds on connections, shared by every server given the same `Arc` (a node's pods).
    pub limits: Arc<ConnectionLimits>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            authority_check: AuthorityCheck::LocalAddress,
            reserved_ports: vec![15001, 15006, super::HBONE_PORT],
            keepalive: Keepalive::default(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            drain_grace: Duration::from_secs(30),
            limits: Arc::new(ConnectionLimits::default()),
        }
    }
}

/// Where a server runs each connection it accepts: [`HboneServer::serve`] runs it on the
/// accepting runtime, [`HboneServer::serve_placed`] wherever the placement chooses (ztunnel's
/// data workers: a connection and its tunnels' tasks then share one thread).
pub trait Placement: Send + Sync + 'static {
    /// Runs `serve(tcp)` to completion; `tcp` may be moved to another runtime first.
    fn place(&self, tcp: TcpStream, serve: Box<dyn FnOnce(TcpStream) -> ServeConnection + Send>);
}

/// One accepted connection's work, as handed to a [`Placement`].
pub type ServeConnection = Pin<Box<dyn Future<Output = ()> + Send>>;

pub struct HboneServer {
    acceptor: TlsAcceptor,
    settings: ServerSettings,
}

/// An authenticated connection, ready for tunnels.
struct Established {
    connection: Connection<FrameWatch<LingeringClose<TlsStream<TcpStream>>>, Bytes>,
    frames: Arc<FrameStats>,
    peer: SpiffeId,
    peer_serial: Arc<str>,
    _identity: IdentityPermit,
}

/// Why a handshake ended without a connection; each is logged and counted where it happens.
struct HandshakeEnded;

impl HboneServer {
    /// A server presenting `certs` (renewals are picked up for new connections).
    pub fn new(
        certs: watch::Receiver<Arc<WorkloadCertificate>>,
        bundle: &TrustBundle,
        settings: ServerSettings,
    ) -> Result<Self, IdentityError> {
        let config = server_config(certs, bundle)?;
        Ok(HboneServer {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            settings,
        })
    }

    /// Accepts connections until `drain` fires, then lets open connections finish their
    /// tunnels (GOAWAY, then up to `drain_grace`, then closes them). Each connection and its
    /// tunnels run on the runtime that accepted it.
    pub async fn serve<H: TunnelHandler>(
        self,
        listener: TcpListener,
        handler: Arc<H>,
        drain: DrainWatch,
    ) {
        self.accept(listener, handler, drain, None).await
    }

    /// As [`HboneServer::serve`], but each connection (with its tunnels' tasks, which it
    /// spawns) runs where `placement` puts it.
    pub async fn serve_placed<H: TunnelHandler>(
        self,
        listener: TcpListener,
        handler: Arc<H>,
        drain: DrainWatch,
        placement: Arc<dyn Placement>,
    ) {
        self.accept(listener, handler, drain, Some(placement)).await
    }

    async fn accept<H: TunnelHandler>(
        self,
        listener: TcpListener,
        handler: Arc<H>,
        drain: DrainWatch,
        placement: Option<Arc<dyn Placement>>,
    ) {
        let server = Arc::new(self);
        let limits = server.settings.limits.clone();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = drain.signaled() => return,
            };
            match accepted {
                Ok((tcp, peer_addr)) => match limits.admit() {
                    // An IPv4 client of a dual-stack listener arrives as ::ffff:a.b.c.d;
                    // policies, workload lookups and logs know it by its IPv4 address.
                    Ok(permits) => {
                        let peer_addr =
                            SocketAddr::new(peer_addr.ip().to_canonical(), peer_addr.port());
                        let server = server.clone();
                        let handler = handler.clone();
                        let drain = drain.clone();
                        let serve = move |tcp| async move {
                            server
                                .serve_connection(tcp, peer_addr, handler, drain, permits)
                                .await;
                        };
                        match &placement {
                            Some(p) => p.place(tcp, Box::new(move |tcp| Box::pin(serve(tcp)))),
                            None => drop(tokio::spawn(serve(tcp))),
                        }
                    }
                    // Dropping the socket closes it now: a flood costs the peer its
                    // connections, never the node its file descriptors.
                    Err(limit) => server.log_refusal(limit, peer_addr, None),
                },
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "HBONE accept failed; retrying in 100ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn log_refusal(&self, limit: Limit, peer_addr: SocketAddr, identity: Option<&SpiffeId>) {
        let limits = &self.settings.limits;
        if let Some(suppressed) = limits.refusal_log[limit as usize].check() {
            let max = limits.max(limit);
            let flag = limit.flag();
            tracing::warn!(peer = %peer_addr, identity = identity.map(tracing::field::display), %limit, max, suppressed, "refused HBONE connection: the node holds {max} {limit} already; raise {flag} if this load is legitimate, else find the peer flooding it");
        }
    }

    async fn serve_connection<H: TunnelHandler>(
        &self,
        tcp: TcpStream,
        peer_addr: SocketAddr,
        handler: Arc<H>,
        drain: DrainWatch,
        (_connection_permit, handshake_permit): (ConnectionPermit, HandshakePermit),
    ) {
        let local_addr = match tcp.local_addr() {
            Ok(a) => SocketAddr::new(a.ip().to_canonical(), a.port()),
            Err(e) => {
                tracing::debug!(peer = %peer_addr, error = %e, "HBONE connection lost before it started");
                return;
            }
        };
        let _ = tcp.set_nodelay(true);
        let timeout = self.settings.handshake_timeout;
        let mut stage = HandshakeStage::Tls;
        let established =
            tokio::time::timeout(timeout, self.handshake(tcp, peer_addr, &mut stage)).await;
        drop(handshake_permit);
        let established = match established {
            Ok(Ok(e)) => e,
            Ok(Err(HandshakeEnded)) => return,
            Err(_) => {
                let limits = &self.settings.limits;
                limits.count_handshake_timeout();
                if let Some(suppressed) = limits.timeout_log.check() {
                    tracing::warn!(peer = %peer_addr, ?timeout, %stage, suppressed, "closed HBONE connection: the {stage} handshake did not complete within the handshake timeout (a stalled or overloaded client, or a slowloris)");
                }
                return;
            }
        };
        self.carry(established, peer_addr, local_addr, handler, drain)
            .await;
    }

    /// TLS, the peer's identity and its per-identity slot, then the HTTP/2 preface.
    async fn handshake(
        &self,
        tcp: TcpStream,
        peer_addr: SocketAddr,
        stage: &mut HandshakeStage,
    ) -> Result<Established, HandshakeEnded> {
        let limits = &self.settings.limits;
        let tls = match self.acceptor.accept(tcp).await {
            Ok(tls) => tls,
            Err(e) => {
                limits.count_handshake_failure();
                if let Some(suppressed) = limits.failure_log.check() {
                    tracing::warn!(peer = %peer_addr, reason = %classify_handshake(&e), suppressed, "refused HBONE connection: TLS handshake failed (only mesh workloads with a certificate from the mesh root may connect to port {}; plain HTTP or another protocol is not accepted)", super::HBONE_PORT);
                }
                return Err(HandshakeEnded);
            }
        };
        let identity = peer_certificate(tls.get_ref().1)
            .and_then(|leaf| Ok((leaf_identity(leaf)?, leaf_serial(leaf)?)));
        let (peer, peer_serial): (SpiffeId, Arc<str>) = match identity {
            Ok((id, serial)) => (id, serial.into()),
            Err(e) => {
                limits.count_handshake_failure();
                if let Some(suppressed) = limits.failure_log.check() {
                    tracing::warn!(peer = %peer_addr, reason = %e, suppressed, "refused HBONE connection: no usable peer identity");
                }
                return Err(HandshakeEnded);
            }
        };
        let identity_permit = limits.admit_identity(&peer);
        *stage = HandshakeStage::Http2;
        let (tls, frames) = FrameWatch::new(LingeringClose::new(tls), self.watch_settings());
        let mut connection = match h2::server::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .max_header_list_size(MAX_HEADER_LIST_SIZE)
            // Rapid-reset and stream-stacking floods cost the attacker its connection; h2
            // bounds CONTINUATION frames by the header list size (CVE-2024-27919).
            .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
            .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
            .max_concurrent_reset_streams(REMEMBERED_RESETS)
            .reset_stream_duration(REMEMBER_RESETS_FOR)
            .handshake::<_, Bytes>(tls)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                limits.count_handshake_failure();
                if let Some(suppressed) = limits.failure_log.check() {
                    tracing::warn!(peer = %peer_addr, identity = %peer, reason = %classify(&e), suppressed, "refused HBONE connection: HTTP/2 handshake failed");
                }
                return Err(HandshakeEnded);
            }
        };
        match identity_permit {
            Ok(permit) => Ok(Established {
                connection,
                frames,
                peer,
                peer_serial,
                _identity: permit,
            }),
            Err(limit) => {
                // The client learns why from the GOAWAY code instead of guessing that its
                // certificate was refused.
                self.log_refusal(limit, peer_addr, Some(&peer));
                connection.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                let closed = std::future::poll_fn(|cx| connection.poll_closed(cx));
                let _ = tokio::time::timeout(GOAWAY_FLUSH, closed).await;
                Err(HandshakeEnded)
            }
        }
    }

    async fn carry<H: TunnelHandler>(
        &self,
        established: Established,
        peer_addr: SocketAddr,
        local_addr: SocketAddr,
        handler: Arc<H>,
        drain: DrainWatch,
    ) {
        let Established {
            mut connection,
            frames,
            peer,
            peer_serial,
            _identity,
        } = established;
        let keepalive = {
            let ping_pong = connection.ping_pong();
            let settings = self.settings.keepalive;
            async move {
                match ping_pong {
                    Some(p) => keepalive::run(p, settings).await,
                    None => std::future::pending().await,
                }
            }
        };
        tokio::pin!(keepalive);
        let activity = Activity::new();
        let idle_timeout = self.settings.idle_timeout;
        let idle = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle);
        let mut draining = false;
        let grace = tokio::time::sleep(Duration::MAX);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                next = connection.accept() => match next {
                    Some(Ok((request, respond))) => {
                        let (parts, body) = request.into_parts();
                        match tunnel_target(&parts, local_addr, self.settings.authority_check, &self.settings.reserved_ports) {
                            Ok(authority) => {
                                let request = TunnelRequest {
                                    peer: peer.clone(),
                                    peer_serial: peer_serial.clone(),
                                    peer_addr,
                                    local_addr,
                                    authority,
                                    headers: parts.headers,
                                    respond: Some(respond),
                                    body: Some(body),
                                    activity: Some(activity.enter()),
                                };
                                let handler = handler.clone();
                                tokio::spawn(async move { handler.handle(request).await });
                            }
                            Err((status, reason)) => {
                                tracing::warn!(peer = %peer_addr, identity = %peer, authority = ?parts.uri.authority().map(|a| a.as_str()), %reason, "refused HBONE tunnel");
                                send_refusal(respond, status, &reason);
                            }
                        }
                    }
                    Some(Err(e)) => {
                        let settings = self.watch_settings();
                        match frames.abuse_in(&e, &settings) {
                            Some(abuse) => {
                                let limits = &self.settings.limits;
                                limits.count_abuse(abuse);
                                if let Some(suppressed) = limits.abuse_log.check() {
                                    tracing::warn!(peer = %peer_addr, identity = %peer, limit = %abuse, header_timeout = ?settings.header_timeout, max_header_list_size = settings.max_header_list_size, max_pending_accept_reset_streams = settings.max_pending_accept_reset_streams, suppressed, "closed HBONE connection: its client broke an HTTP/2 abuse limit (its other connections and every other client's go on)");
                                }
                            }
                            None => tracing::debug!(peer = %peer_addr, identity = %peer, reason = %classify(&e), "HBONE connection ended with an error"),
                        }
                        return;
                    }
                    None => return,
                },
                reason = &mut keepalive => {
                    tracing::warn!(peer = %peer_addr, identity = %peer, %reason, "closing HBONE connection");
                    return;
                }
                () = &mut idle, if !draining => {
                    let now = tokio::time::Instant::now();
                    match activity.idle_for() {
                        Some(quiet) if quiet >= idle_timeout => {
                            self.settings.limits.count_idle_closed();
                            tracing::debug!(peer = %peer_addr, identity = %peer, ?idle_timeout, "closing idle HBONE connection with GOAWAY");
                            draining = true;
                            connection.graceful_shutdown();
                            grace.as_mut().reset(now + self.settings.drain_grace);
                        }
                        Some(quiet) => idle.as_mut().reset(now + (idle_timeout - quiet)),
                        None => idle.as_mut().reset(now + idle_timeout),
                    }
                }
                () = drain.signaled(), if !draining => {
                    draining = true;
                    connection.graceful_shutdown();
                    grace.as_mut().reset(tokio::time::Instant::now() + self.settings.drain_grace);
                }
                () = &mut grace => {
                    tracing::info!(peer = %peer_addr, "drain grace period over; closing HBONE connection with tunnels still open");
                    return;
                }
            }
        }
    }

    fn watch_settings(&self) -> WatchSettings {
        WatchSettings {
            header_timeout: self.settings.header_timeout,
            max_header_list_size: MAX_HEADER_LIST_SIZE,
            max_frame_size: MAX_FRAME_SIZE,
            max_pending_accept_reset_streams: MAX_PENDING_ACCEPT_RESETS,
        }
    }
}
