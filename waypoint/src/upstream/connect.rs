//! New connections: plain TCP or an HBONE tunnel, then the HTTP/1.1 or HTTP/2 handshake, all
//! within the connect timeout. The connection itself runs in its own task, which holds the
//! connection's slot in its service's circuit breaker: the slot is given back the moment the
//! connection ends, whoever closed it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use ambit_proto::hbone::{ConnectRequest, HboneClient, REMEMBER_RESETS_FOR, REMEMBERED_RESETS};
use ambit_proto::identity::SpiffeId;
use hyper::client::conn::{http1, http2};
use hyper::rt::{Read, Write};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::{HttpVersion, Target, Transport, UpstreamError, UpstreamSettings};
use crate::body::Body;
use crate::breaker::Slot;

pub(super) struct Connector {
    hbone: HboneClient,
    /// The waypoint's own identity, presented on HBONE.
    identity: SpiffeId,
    pub(super) settings: UpstreamSettings,
}

/// What a new tunnel carries besides its target (used only when one is opened).
pub(super) struct Origin {
    pub(super) client: Option<SocketAddr>,
    pub(super) traceparent: Option<String>,
}

impl Connector {
    pub(super) fn new(hbone: HboneClient, identity: SpiffeId, settings: UpstreamSettings) -> Self {
        Connector {
            hbone,
            identity,
            settings,
        }
    }

    pub(super) async fn http1(
        &self,
        target: &Target,
        origin: Origin,
        slot: Option<Slot>,
    ) -> Result<http1::SendRequest<Body>, UpstreamError> {
        self.timed(target, async {
            let endpoint = target.endpoint;
            match self.transport(target, origin).await? {
                Stream::Tcp(tcp) => handshake1(endpoint, TokioIo::new(tcp), slot).await,
                Stream::Tunnel(t) => handshake1(endpoint, TokioIo::new(t), slot).await,
            }
        })
        .await
    }

    pub(super) async fn http2(
        &self,
        target: &Target,
        origin: Origin,
        slot: Option<Slot>,
    ) -> Result<http2::SendRequest<Body>, UpstreamError> {
        self.timed(target, async {
            let endpoint = target.endpoint;
            match self.transport(target, origin).await? {
                Stream::Tcp(tcp) => self.handshake2(endpoint, TokioIo::new(tcp), slot).await,
                Stream::Tunnel(t) => self.handshake2(endpoint, TokioIo::new(t), slot).await,
            }
        })
        .await
    }

    async fn timed<T>(
        &self,
        target: &Target,
        connect: impl Future<Output = Result<T, UpstreamError>>,
    ) -> Result<T, UpstreamError> {
        let timeout = self.settings.connect_timeout;
        tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| UpstreamError::ConnectTimeout {
                endpoint: target.endpoint,
                timeout,
            })?
    }

    async fn transport(&self, target: &Target, origin: Origin) -> Result<Stream, UpstreamError> {
        let endpoint = target.endpoint;
        match &target.transport {
            Transport::Plain => {
                let tcp =
                    TcpStream::connect(endpoint)
                        .await
                        .map_err(|e| UpstreamError::Connect {
                            endpoint,
                            source: Arc::new(e),
                        })?;
                let _ = tcp.set_nodelay(true);
                Ok(Stream::Tcp(tcp))
            }
            Transport::Hbone { identity } => {
                let request = ConnectRequest {
                    source: self.identity.clone(),
                    endpoint: SocketAddr::new(endpoint.ip(), self.settings.hbone_port),
                    destination_identity: identity.clone(),
                    authority: endpoint,
                    forwarded_for: origin.client,
                    baggage: None,
                    traceparent: origin.traceparent,
                };
                let tunnel =
                    self.hbone
                        .connect(&request)
                        .await
                        .map_err(|e| UpstreamError::Hbone {
                            endpoint,
                            source: Arc::new(e),
                        })?;
                Ok(Stream::Tunnel(tunnel))
            }
        }
    }

    async fn handshake2<T>(
        &self,
        endpoint: SocketAddr,
        io: T,
        slot: Option<Slot>,
    ) -> Result<http2::SendRequest<Body>, UpstreamError>
    where
        T: Read + Write + Unpin + Send + 'static,
    {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            // A response given up on (a cancelled gRPC call, a timeout) resets its stream with
            // the pod's frames in flight; forgotten too soon, they close the whole connection.
            .max_concurrent_reset_streams(REMEMBERED_RESETS)
            .reset_stream_duration(REMEMBER_RESETS_FOR);
        if let Some(keepalive) = self.settings.http2_keepalive {
            builder
                .keep_alive_interval(keepalive.interval)
                .keep_alive_timeout(keepalive.timeout);
        }
        let (send, connection) =
            builder
                .handshake(io)
                .await
                .map_err(|e| UpstreamError::Handshake {
                    endpoint,
                    version: HttpVersion::Http2,
                    source: Arc::new(e),
                })?;
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = connection.await {
                tracing::debug!(%endpoint, error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        Ok(send)
    }
}

async fn handshake1<T>(
    endpoint: SocketAddr,
    io: T,
    slot: Option<Slot>,
) -> Result<http1::SendRequest<Body>, UpstreamError>
where
    T: Read + Write + Unpin + Send + 'static,
{
    let (send, connection) = http1::handshake(io)
        .await
        .map_err(|e| UpstreamError::Handshake {
            endpoint,
            version: HttpVersion::Http1,
            source: Arc::new(e),
        })?;
    tokio::spawn(async move {
        let _slot = slot;
        if let Err(e) = connection.await {
            tracing::debug!(%endpoint, error = %e, "upstream HTTP/1.1 connection ended with an error");
        }
    });
    Ok(send)
}

enum Stream {
    Tcp(TcpStream),
    Tunnel(ambit_proto::hbone::Tunnel),
}
