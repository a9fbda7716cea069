//! The controller's gRPC port as the binary serves it (TLS, presenting the controller's own
//! identity) on 127.0.0.1, and a channel to it as a proxy would dial.

use std::sync::Arc;
use std::time::Duration;

use ambit_controller::ca::{Authenticator, CaService};
use ambit_controller::grpc::{self, ServingIdentity};
use ambit_controller::model::MeshModel;
use ambit_controller::push::{DiscoveryService, publish_snapshots};
use ambit_proto::api::security::certificate_service_client::CertificateServiceClient;
use ambit_proto::control;
use ambit_proto::identity::CertificateAuthority;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::transport::Channel;

pub struct GrpcServer {
    /// `https://<address>`, for clients that make their own channel.
    pub url: String,
    /// A lazily connecting TLS channel that pins the controller's identity.
    pub channel: Channel,
    _serving: ServingIdentity,
}

/// Serves `discovery` and `ca_service` until `shutdown`.
pub async fn serve(
    ca: Arc<CertificateAuthority>,
    discovery: DiscoveryService,
    ca_service: CaService,
    shutdown: CancellationToken,
) -> GrpcServer {
    let identity = control::default_controller_identity(ca.trust_domain()).unwrap();
    let serving = ServingIdentity::issue(ca.clone(), identity.clone(), Duration::from_secs(3600))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(grpc::serve(
        listener,
        serving.tls(),
        discovery,
        ca_service,
        shutdown,
    ));
    let tls = control::client_config(&ca.trust_bundle(), identity).unwrap();
    let channel = control::channel(&format!("https://{addr}"), Arc::new(tls)).unwrap();
    GrpcServer {
        url: format!("https://{addr}"),
        channel,
        _serving: serving,
    }
}

/// A CA on the controller's port, serving `model` with `authenticator`, and a client of it.
pub struct Ca {
    pub client: CertificateServiceClient<Channel>,
    pub root_pem: String,
    _server: GrpcServer,
    _models: watch::Sender<Arc<MeshModel>>,
    _shutdown: DropGuard,
}

pub async fn start_ca(model: MeshModel, ttl: Duration, authenticator: Authenticator) -> Ca {
    let (models_tx, models) = watch::channel(Arc::new(model));
    let ca = Arc::new(CertificateAuthority::generate("cluster.local").unwrap());
    let root_pem = ca.root_pem().to_string();
    let shutdown = CancellationToken::new();
    let (snapshots, _) = publish_snapshots(models.clone(), shutdown.clone());
    let server = serve(
        ca.clone(),
        DiscoveryService::new(snapshots, shutdown.clone()),
        CaService::new(ca.clone(), models, ttl)
            .authenticate_with(authenticator)
            .serving_as(control::default_controller_identity(ca.trust_domain()).unwrap()),
        shutdown.clone(),
    )
    .await;
    Ca {
        client: CertificateServiceClient::new(server.channel.clone()),
        root_pem,
        _server: server,
        _models: models_tx,
        _shutdown: shutdown.drop_guard(),
    }
}
