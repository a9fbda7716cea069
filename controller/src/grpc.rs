//! The controller's one gRPC port: discovery, the CA and the proxies' telemetry reports side by
//! side, over TLS only.
//!
//! The controller presents a certificate for its own SPIFFE identity, issued by its own CA and
//! renewed half-way through its life; proxies pin that identity (`ambit_proto::control`).
//! Callers authenticate with tokens in the request metadata, checked by each service.

use std::sync::Arc;
use std::time::Duration;

use ambit_proto::control;
use ambit_proto::identity::{CertManager, CertificateAuthority, IdentityError, SpiffeId};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::ca::CaService;
use crate::push::DiscoveryService;
use crate::telemetry::TelemetryService;

/// The controller's own identity and the TLS configuration presenting it. Renewal goes on only
/// while this lives, so keep it for as long as the server runs.
pub struct ServingIdentity {
    identity: SpiffeId,
    _certs: CertManager,
    tls: Arc<ServerConfig>,
}

impl ServingIdentity {
    /// Issues the first certificate for `identity` from `ca`, each lasting `ttl`.
    pub async fn issue(
        ca: Arc<CertificateAuthority>,
        identity: SpiffeId,
        ttl: Duration,
    ) -> Result<Self, IdentityError> {
        let certs = CertManager::with_local_ca(ca, ttl);
        let tls = control::server_config(certs.watch(&identity).await?)?;
        Ok(ServingIdentity {
            identity,
            _certs: certs,
            tls: Arc::new(tls),
        })
    }

    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    pub fn tls(&self) -> Arc<ServerConfig> {
        self.tls.clone()
    }
}

/// Serves discovery and the CA on `listener` until `shutdown`, then stops accepting; open
/// subscriptions end themselves on the same signal.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    discovery: DiscoveryService,
    ca: CaService,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    serve_with_telemetry(listener, tls, discovery, ca, None, shutdown).await
}

/// [`serve`], with the proxies' telemetry reports beside them (the binary always has it).
pub async fn serve_with_telemetry(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    discovery: DiscoveryService,
    ca: CaService,
    telemetry: Option<TelemetryService>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        // Proxies hold one long-lived stream; keepalives find a vanished one (and free its task)
        // without waiting for TCP to give up.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(discovery.into_server())
        .add_service(ca.into_server())
        .add_optional_service(telemetry.map(TelemetryService::into_server))
        .serve_with_incoming_shutdown(control::incoming(listener, tls), shutdown.cancelled_owned())
        .await
}
