//! The HBONE client: a pool of mTLS HTTP/2 connections, one per (source identity, destination
//! endpoint, expected destination identity), each carrying up to ~100 tunnels.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use parking_lot::Mutex;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::error::describe;
use super::{
    CONNECTION_WINDOW, ERROR_HEADER, HboneError, Keepalive, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE,
    MAX_SEND_BUFFER, MAX_STREAMS_PER_CONNECTION, STREAM_WINDOW, Tunnel, keepalive,
};
use crate::identity::{CertManager, SpiffeId, client_config};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

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

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct PoolKey {
    source: SpiffeId,
    endpoint: SocketAddr,
    destination_identity: SpiffeId,
}

struct PooledConnection {
    send: SendRequest<Bytes>,
    active: Arc<AtomicU32>,
    dead: Arc<AtomicBool>,
    /// Serial of the certificate the connection was made with: after a rotation, new tunnels
    /// go on new connections with the new certificate while old ones finish on the old.
    cert_serial: String,
}

type PoolEntry = Arc<tokio::sync::Mutex<Vec<PooledConnection>>>;

/// Pools HBONE connections and opens tunnels on them.
#[derive(Clone)]
pub struct HboneClient {
    inner: Arc<Inner>,
}

struct Inner {
    certs: CertManager,
    dialer: Arc<dyn Dialer>,
    keepalive: Keepalive,
    pool: Mutex<HashMap<PoolKey, PoolEntry>>,
    connections_opened: AtomicU64,
}

/// Returns a stream slot to its connection when the tunnel is dropped.
struct StreamSlot(Arc<AtomicU32>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl HboneClient {
    pub fn new(certs: CertManager, dialer: Arc<dyn Dialer>, keepalive: Keepalive) -> Self {
        HboneClient {
            inner: Arc::new(Inner {
                certs,
                dialer,
                keepalive,
                pool: Mutex::new(HashMap::new()),
                connections_opened: AtomicU64::new(0),
            }),
        }
    }

    /// How many HBONE connections this client has opened in all.
    pub fn connections_opened(&self) -> u64 {
        self.inner.connections_opened.load(Ordering::Relaxed)
    }

    /// Opens a tunnel to `req.authority` through `req.endpoint`.
    pub async fn connect(&self, req: &ConnectRequest) -> Result<Tunnel, HboneError> {
        let key = PoolKey {
            source: req.source.clone(),
            endpoint: req.endpoint,
            destination_identity: req.destination_identity.clone(),
        };
        // A pooled connection can die between checkout and use: one retry on a new one. A new
        // connection that fails at once was most likely refused (TLS 1.3 clients learn that
        // their certificate was refused only after the handshake): no retry, and say so.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (send, slot, dead, fresh) = self.checkout(&key).await?;
            match self.open_stream(send, slot, req, fresh).await {
                Err(OpenError::ConnectionGone(reason)) => {
                    dead.store(true, Ordering::Relaxed);
                    if fresh {
                        return Err(HboneError::Tls {
                            addr: req.endpoint,
                            expected: req.destination_identity.clone(),
                            reason: refused_after_handshake(&reason),
                        });
                    }
                    if attempt > 1 {
                        return Err(HboneError::Http2 {
                            addr: req.endpoint,
                            reason,
                        });
                    }
                    tracing::debug!(endpoint = %req.endpoint, %reason, "pooled HBONE connection failed; retrying on a new one");
                }
                Err(OpenError::Tunnel(e)) => return Err(e),
                Ok(tunnel) => return Ok(tunnel),
            }
        }
    }

    async fn checkout(
        &self,
        key: &PoolKey,
    ) -> Result<(SendRequest<Bytes>, StreamSlot, Arc<AtomicBool>, bool), HboneError> {
        let entry = self
            .inner
            .pool
            .lock()
            .entry(key.clone())
            .or_default()
            .clone();
        let current_serial = self
            .inner
            .certs
            .get(&key.source)
            .await
            .map_err(|source| HboneError::SourceCertificate {
                identity: key.source.clone(),
                source,
            })?
            .serial()
            .to_string();
        // Holding the entry's lock while dialling means a burst of first tunnels to one
        // destination shares one new connection instead of opening one each.
        let mut conns = entry.lock().await;
        conns.retain(|c| !c.dead.load(Ordering::Relaxed) && c.cert_serial == current_serial);
        for c in conns.iter() {
            let active = c.active.load(Ordering::Relaxed);
            if active < MAX_STREAMS_PER_CONNECTION
                && c.active
                    .compare_exchange(active, active + 1, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                return Ok((
                    c.send.clone(),
                    StreamSlot(c.active.clone()),
                    c.dead.clone(),
                    false,
                ));
            }
        }
        let conn = self.dial(key).await?;
        conn.active.fetch_add(1, Ordering::AcqRel);
        let out = (
            conn.send.clone(),
            StreamSlot(conn.active.clone()),
            conn.dead.clone(),
            true,
        );
        conns.push(conn);
        Ok(out)
    }

    async fn dial(&self, key: &PoolKey) -> Result<PooledConnection, HboneError> {
        let addr = key.endpoint;
        let certs = self
            .inner
            .certs
            .watch(&key.source)
            .await
            .map_err(|source| HboneError::SourceCertificate {
                identity: key.source.clone(),
                source,
            })?;
        let cert_serial = certs.borrow().serial().to_string();
        let tls_config = client_config(
            certs,
            self.inner.certs.trust_bundle(),
            key.destination_identity.clone(),
        )
        .map_err(|e| HboneError::Tls {
            addr,
            expected: key.destination_identity.clone(),
            reason: e.to_string(),
        })?;
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, self.inner.dialer.dial(addr))
            .await
            .map_err(|_| HboneError::ConnectTimeout { addr })?
            .map_err(|source| HboneError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let tls = TlsConnector::from(Arc::new(tls_config))
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .map_err(|e| HboneError::Tls {
                addr,
                expected: key.destination_identity.clone(),
                reason: describe(&e),
            })?;
        let (send, mut connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_header_list_size(MAX_HEADER_LIST_SIZE)
            .enable_push(false)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|e| HboneError::Http2 {
                addr,
                reason: describe(&e),
            })?;
        self.inner
            .connections_opened
            .fetch_add(1, Ordering::Relaxed);
        let dead = Arc::new(AtomicBool::new(false));
        let ping_pong = connection.ping_pong();
        let keepalive_settings = self.inner.keepalive;
        tokio::spawn({
            let dead = dead.clone();
            async move {
                let keepalive = async {
                    match ping_pong {
                        Some(p) => keepalive::run(p, keepalive_settings).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    result = &mut connection => {
                        if let Err(e) = result {
                            tracing::debug!(endpoint = %addr, error = %describe(&e), "HBONE connection closed with an error");
                        }
                    }
                    reason = keepalive => {
                        tracing::warn!(endpoint = %addr, %reason, "closing HBONE connection");
                    }
                }
                dead.store(true, Ordering::Relaxed);
            }
        });
        Ok(PooledConnection {
            send,
            active: Arc::new(AtomicU32::new(0)),
            dead,
            cert_serial,
        })
    }

    async fn open_stream(
        &self,
        send: SendRequest<Bytes>,
        slot: StreamSlot,
        req: &ConnectRequest,
        fresh: bool,
    ) -> Result<Tunnel, OpenError> {
        let addr = req.endpoint;
        let mut send = send
            .ready()
            .await
            .map_err(|e| OpenError::ConnectionGone(describe(&e)))?;
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
                reason: format!("could not build the CONNECT request: {e}"),
            })
        })?;
        let (response, send_stream) = send
            .send_request(request, false)
            .map_err(|e| OpenError::ConnectionGone(describe(&e)))?;
        let response = tokio::time::timeout(RESPONSE_TIMEOUT, response)
            .await
            .map_err(|_| {
                OpenError::Tunnel(HboneError::ResponseTimeout {
                    addr,
                    authority: req.authority,
                })
            })?
            .map_err(|e| {
                // A refusal of our certificate only shows once the server reads our first
                // request: report it as the TLS failure it is.
                let reason = describe(&e);
                if e.is_io() || e.is_go_away() {
                    let reason = if fresh && !reason.contains("refused our certificate") {
                        refused_after_handshake(&reason)
                    } else {
                        reason
                    };
                    OpenError::Tunnel(HboneError::Tls {
                        addr,
                        expected: req.destination_identity.clone(),
                        reason,
                    })
                } else {
                    OpenError::Tunnel(HboneError::Http2 { addr, reason })
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

/// A new connection closed before its first tunnel: the peer accepted the handshake but not
/// us. When its alert was lost in the close, this is the best that can be said.
fn refused_after_handshake(reason: &str) -> String {
    if reason.contains("refused our certificate") {
        return reason.to_string();
    }
    format!(
        "the peer closed the connection right after the TLS handshake: it most likely refused our certificate (untrusted root, expired, or an identity outside its trust domain) [{reason}]"
    )
}

enum OpenError {
    /// The pooled connection is unusable; a new one may work.
    ConnectionGone(String),
    Tunnel(HboneError),
}
