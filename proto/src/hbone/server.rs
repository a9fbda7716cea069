//! The HBONE server: terminates mTLS and HTTP/2, checks each CONNECT, and hands accepted
//! tunnels to the caller with the peer's verified identity.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderMap, Method, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::error::describe;
use super::{
    CONNECTION_WINDOW, ERROR_HEADER, Keepalive, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE,
    MAX_SEND_BUFFER, MAX_STREAMS_PER_CONNECTION, STREAM_WINDOW, Tunnel, keepalive,
};
use crate::drain::DrainWatch;
use crate::identity::{
    IdentityError, SpiffeId, TrustBundle, WorkloadCertificate, leaf_identity, leaf_serial,
    peer_certificate, server_config,
};

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
    /// A client that has not finished TLS by then is dropped (slowloris).
    pub handshake_timeout: Duration,
    /// How long open tunnels get to finish once a drain starts.
    pub drain_grace: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            authority_check: AuthorityCheck::LocalAddress,
            reserved_ports: vec![15001, 15006, super::HBONE_PORT],
            keepalive: Keepalive::default(),
            handshake_timeout: Duration::from_secs(10),
            drain_grace: Duration::from_secs(30),
        }
    }
}

/// A CONNECT that passed the server's checks, waiting for the caller's decision.
pub struct TunnelRequest {
    /// The client's identity, proven by its certificate.
    pub peer: SpiffeId,
    /// Serial number of the client's certificate.
    pub peer_serial: Arc<str>,
    /// The TCP address of the client (its pod IP, or its node's).
    pub peer_addr: SocketAddr,
    /// The address the connection arrived on.
    pub local_addr: SocketAddr,
    /// The target: `:authority`.
    pub authority: SocketAddr,
    pub headers: HeaderMap,
    respond: Option<SendResponse<Bytes>>,
    body: Option<RecvStream>,
}

impl TunnelRequest {
    /// Answers 200 and returns the tunnel.
    pub fn accept(mut self) -> Result<Tunnel, h2::Error> {
        let mut respond = self.respond.take().expect("a request is answered once");
        let body = self.body.take().expect("a request is answered once");
        let send = respond.send_response(Response::new(()), false)?;
        Ok(Tunnel::new(send, body, None))
    }

    /// Refuses the tunnel; `reason` reaches the client in the `ambit-error` header.
    pub fn refuse(mut self, status: StatusCode, reason: &str) {
        if let Some(respond) = self.respond.take() {
            send_refusal(respond, status, reason);
        }
    }

    /// The original client address from `forwarded: for="ip:port"`, if sent.
    pub fn forwarded_for(&self) -> Option<SocketAddr> {
        let value = self.headers.get("forwarded")?.to_str().ok()?;
        value.split(';').find_map(|part| {
            let v = part.trim().strip_prefix("for=")?;
            v.trim_matches('"').parse().ok()
        })
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

fn send_refusal(mut respond: SendResponse<Bytes>, status: StatusCode, reason: &str) {
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

pub struct HboneServer {
    acceptor: TlsAcceptor,
    settings: ServerSettings,
}

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
    /// tunnels (GOAWAY, then up to `drain_grace`).
    pub async fn serve<H: TunnelHandler>(
        self,
        listener: TcpListener,
        handler: Arc<H>,
        drain: DrainWatch,
    ) {
        let server = Arc::new(self);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = drain.signaled() => return,
            };
            match accepted {
                Ok((tcp, peer_addr)) => {
                    let server = server.clone();
                    let handler = handler.clone();
                    let drain = drain.clone();
                    tokio::spawn(async move {
                        server
                            .serve_connection(tcp, peer_addr, handler, drain)
                            .await;
                    });
                }
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "HBONE accept failed; retrying in 100ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn serve_connection<H: TunnelHandler>(
        &self,
        tcp: TcpStream,
        peer_addr: SocketAddr,
        handler: Arc<H>,
        drain: DrainWatch,
    ) {
        let local_addr = match tcp.local_addr() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(peer = %peer_addr, error = %e, "HBONE connection lost before it started");
                return;
            }
        };
        let _ = tcp.set_nodelay(true);
        let tls = match tokio::time::timeout(
            self.settings.handshake_timeout,
            self.acceptor.accept(tcp),
        )
        .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::warn!(peer = %peer_addr, reason = %describe(&e), "refused HBONE connection: TLS handshake failed (only mesh workloads with a certificate from the mesh root may connect to port {}; plain HTTP or another protocol is not accepted)", super::HBONE_PORT);
                return;
            }
            Err(_) => {
                tracing::warn!(peer = %peer_addr, timeout = ?self.settings.handshake_timeout, "refused HBONE connection: TLS handshake not completed in time");
                return;
            }
        };
        let identity = peer_certificate(tls.get_ref().1)
            .and_then(|leaf| Ok((leaf_identity(leaf)?, leaf_serial(leaf)?)));
        let (peer, peer_serial): (SpiffeId, Arc<str>) = match identity {
            Ok((id, serial)) => (id, serial.into()),
            Err(e) => {
                tracing::warn!(peer = %peer_addr, reason = %e, "refused HBONE connection: no usable peer identity");
                return;
            }
        };
        let mut connection = match h2::server::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .max_header_list_size(MAX_HEADER_LIST_SIZE)
            // Rapid-reset and stream-stacking floods cost the attacker its connection.
            .max_pending_accept_reset_streams(50)
            .max_local_error_reset_streams(Some(256))
            .handshake::<_, Bytes>(tls)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(peer = %peer_addr, identity = %peer, reason = %describe(&e), "refused HBONE connection: HTTP/2 handshake failed");
                return;
            }
        };
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
        let mut draining = false;
        let grace = tokio::time::sleep(Duration::MAX);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                next = connection.accept() => match next {
                    Some(Ok((request, respond))) => {
                        let (parts, body) = request.into_parts();
                        match self.check(&parts, local_addr) {
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
                        tracing::debug!(peer = %peer_addr, identity = %peer, reason = %describe(&e), "HBONE connection ended with an error");
                        return;
                    }
                    None => return,
                },
                reason = &mut keepalive => {
                    tracing::warn!(peer = %peer_addr, identity = %peer, %reason, "closing HBONE connection");
                    return;
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

    fn check(
        &self,
        parts: &http::request::Parts,
        local: SocketAddr,
    ) -> Result<SocketAddr, (StatusCode, String)> {
        if parts.method != Method::CONNECT {
            return Err((
                StatusCode::METHOD_NOT_ALLOWED,
                format!("HBONE accepts only CONNECT, not {}", parts.method),
            ));
        }
        let authority: SocketAddr = parts
            .uri
            .authority()
            .and_then(|a| a.as_str().parse().ok())
            .ok_or_else(|| {
                (
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the CONNECT authority {:?} is not an ip:port",
                        parts.uri.to_string()
                    ),
                )
            })?;
        if self.settings.authority_check == AuthorityCheck::LocalAddress
            && authority.ip() != local.ip()
        {
            return Err((
                StatusCode::BAD_REQUEST,
                format!(
                    "the CONNECT authority {authority} is not this destination's address {}: a tunnel may only reach the pod it was dialled to",
                    local.ip()
                ),
            ));
        }
        if self.settings.reserved_ports.contains(&authority.port()) {
            return Err((
                StatusCode::BAD_REQUEST,
                format!(
                    "port {} is the proxy's own and cannot be a tunnel target",
                    authority.port()
                ),
            ));
        }
        Ok(authority)
    }
}
