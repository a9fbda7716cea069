//! TLS between the proxies and the controller (discovery and the CA share one gRPC port).
//!
//! Unlike HBONE, only the controller presents a certificate. Callers prove who they are with a
//! token in the request metadata (a node's bootstrap token, or a Kubernetes service-account
//! token), because a client certificate would have to come from the very CA they are calling.
//! TLS is what keeps those tokens, and the mesh's topology, off the wire in clear; the client
//! pins the controller's SPIFFE identity, so a pod that grabs the controller's address cannot
//! collect tokens.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::identity::tls::{ALPN_H2, CertResolver, client_builder, provider};
use crate::identity::{IdentityError, SpiffeId, TrustBundle, WorkloadCertificate};

/// Namespace and service account the controller's identity names unless configured otherwise.
pub const DEFAULT_CONTROLLER_NAMESPACE: &str = "ambit-system";
pub const DEFAULT_CONTROLLER_SERVICE_ACCOUNT: &str = "ambit-controller";

/// How long a caller gets to finish its TLS handshake before the connection is closed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `spiffe://<trust domain>/ns/ambit-system/sa/ambit-controller`: who proxies expect to find on
/// the controller's port.
pub fn default_controller_identity(trust_domain: &str) -> Result<SpiffeId, IdentityError> {
    Ok(SpiffeId::new(
        trust_domain,
        DEFAULT_CONTROLLER_NAMESPACE,
        DEFAULT_CONTROLLER_SERVICE_ACCOUNT,
    )?)
}

/// The controller's side: its current certificate (renewals reach new handshakes at once), TLS
/// 1.3, ALPN h2, no client certificate asked for, no session tickets.
pub fn server_config(
    certs: watch::Receiver<Arc<WorkloadCertificate>>,
) -> Result<ServerConfig, IdentityError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| IdentityError::TlsConfig {
            what: "the controller's gRPC server".into(),
            reason: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(CertResolver::new(certs)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// A proxy's side: the controller must chain to `bundle` and be exactly `controller`.
pub fn client_config(
    bundle: &TrustBundle,
    controller: SpiffeId,
) -> Result<ClientConfig, IdentityError> {
    let mut config =
        client_builder(bundle, controller, "the controller client")?.with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.enable_sni = false;
    Ok(config)
}

/// Why a controller address cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ControlAddressError {
    #[error("the controller address {address:?} is not a URI: {reason}")]
    Invalid { address: String, reason: String },
    #[error(
        "the controller address {address:?} must start with https:// (the controller serves TLS only), e.g. https://ambit-controller.ambit-system:15010"
    )]
    NotHttps { address: String },
}

/// A lazily connecting gRPC channel to the controller at `address` (`https://host:port`) over
/// TLS with `tls`. Nothing is dialled until the first call, so a controller that is not up yet
/// is no reason to fail at start.
pub fn channel(address: &str, tls: Arc<ClientConfig>) -> Result<Channel, ControlAddressError> {
    let uri: Uri =
        address
            .parse()
            .map_err(|e: http::uri::InvalidUri| ControlAddressError::Invalid {
                address: address.into(),
                reason: e.to_string(),
            })?;
    if uri.scheme_str() != Some("https") || uri.host().is_none() {
        return Err(ControlAddressError::NotHttps {
            address: address.into(),
        });
    }
    let connector = TlsConnector::from(tls);
    let connect = tower::service_fn(move |uri: Uri| {
        let connector = connector.clone();
        async move {
            let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            // No SNI is sent (the identity, not a host name, is checked); rustls still wants a
            // name for its API.
            let name = ServerName::try_from(host.to_string())
                .unwrap_or_else(|_| ServerName::try_from("controller").expect("a valid DNS name"));
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, io::Error>(TokioIo::new(tls))
        }
    });
    Ok(Endpoint::from(uri)
        .connect_timeout(Duration::from_secs(3))
        // Proxies hold one long-lived config stream; pings find a vanished controller without
        // waiting for TCP to give up.
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect_with_connector_lazy(connect))
}

/// An accepted, handshaken TLS connection, as tonic's server wants it (its peer address stays
/// available to handlers as with plain TCP).
pub struct ControlStream {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: TcpConnectInfo,
}

impl Connected for ControlStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for ControlStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ControlStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The connections accepted on `listener`, each handshaken in a task of its own so a slow or
/// silent caller holds up nobody. A failed handshake (a plain-TCP caller, a scanner, a client
/// that does not trust this root) is logged with the peer and dropped; it never ends the stream.
/// Accepting stops when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
) -> impl Stream<Item = io::Result<ControlStream>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<io::Result<ControlStream>>(16);
    let acceptor = TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: pause rather than spin.
                        tracing::warn!(%error, "could not accept a connection on the controller port");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                if let Some(stream) = handshake(&acceptor, tcp, peer).await {
                    let _ = tx.send(Ok(stream)).await;
                }
            });
        }
    });
    tokio_stream_from(rx)
}

async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<ControlStream> {
    let _ = tcp.set_nodelay(true);
    let info = TcpConnectInfo {
        local_addr: tcp.local_addr().ok(),
        remote_addr: Some(peer),
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(inner)) => Some(ControlStream { inner, info }),
        Ok(Err(error)) => {
            tracing::warn!(%peer, %error, "TLS handshake with a caller of the controller failed (a proxy must dial https:// and trust this mesh's root certificate)");
            None
        }
        Err(_) => {
            tracing::warn!(%peer, timeout = ?HANDSHAKE_TIMEOUT, "a caller of the controller did not finish its TLS handshake in time; closed");
            None
        }
    }
}

fn tokio_stream_from<T>(mut rx: mpsc::Receiver<T>) -> impl Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
