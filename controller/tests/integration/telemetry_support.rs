//! A controller with telemetry over real sockets: the gRPC port (TLS, bootstrap tokens) with
//! discovery, the CA and the report service, and the observation API on loopback; fake proxies
//! that report as a ztunnel or a waypoint would, and an HTTP client of the API.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ambit_controller::ca::{Authenticator, CaService};
use ambit_controller::grpc::{ServingIdentity, serve_with_telemetry};
use ambit_controller::model::MeshModel;
use ambit_controller::push::{DiscoveryService, SubscriberAccess, publish_snapshots};
use ambit_controller::source::file::{EMBEDDED_MESH, EMBEDDED_ORIGIN, parse};
use ambit_controller::telemetry::http::ApiState;
use ambit_controller::telemetry::{TelemetryService, TelemetryStore};
use ambit_proto::api::discovery::{ProxyKind, Subscriber};
use ambit_proto::api::telemetry::telemetry_client::TelemetryClient;
use ambit_proto::api::telemetry::{ReportRequest, ReportResponse};
use ambit_proto::control;
use ambit_proto::identity::CertificateAuthority;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::transport::Channel;

pub const NODE_A_TOKEN: &str = "node-a-local-bootstrap-token";
pub const NODE_B_TOKEN: &str = "node-b-local-bootstrap-token";

pub struct Controller {
    pub channel: Channel,
    pub api: SocketAddr,
    _serving: ServingIdentity,
    _models: watch::Sender<Arc<MeshModel>>,
    _shutdown: DropGuard,
}

pub async fn start() -> Controller {
    let model = parse(EMBEDDED_MESH, EMBEDDED_ORIGIN).unwrap().model;
    let (models_tx, models) = watch::channel(Arc::new(model));
    let ca = Arc::new(CertificateAuthority::generate("cluster.local").unwrap());
    let shutdown = CancellationToken::new();
    let (snapshots, _) = publish_snapshots(models.clone(), shutdown.clone());
    let authenticator = Arc::new(Authenticator::BootstrapTokens);
    let access = || SubscriberAccess::new(authenticator.clone(), models.clone());
    let store = TelemetryStore::default();
    let identity = control::default_controller_identity(ca.trust_domain()).unwrap();
    let serving = ServingIdentity::issue(ca.clone(), identity.clone(), Duration::from_secs(3600))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_with_telemetry(
        listener,
        serving.tls(),
        DiscoveryService::new(snapshots, shutdown.clone()).authenticate_with(access()),
        CaService::new(ca.clone(), models.clone(), Duration::from_secs(3600))
            .authenticate_with(authenticator.clone()),
        Some(TelemetryService::new(store.clone(), shutdown.clone()).authenticate_with(access())),
        shutdown.clone(),
    ));
    let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = api_listener.local_addr().unwrap();
    tokio::spawn(
        ApiState {
            models,
            telemetry: store,
            shutdown: shutdown.clone(),
        }
        .serve(api_listener),
    );
    let tls = control::client_config(&ca.trust_bundle(), identity).unwrap();
    Controller {
        channel: control::channel(&format!("https://{addr}"), Arc::new(tls)).unwrap(),
        api,
        _serving: serving,
        _models: models_tx,
        _shutdown: shutdown.drop_guard(),
    }
}

pub fn ztunnel(node: &str) -> Subscriber {
    Subscriber {
        kind: ProxyKind::Ztunnel.into(),
        name: node.into(),
        ..Default::default()
    }
}

pub fn waypoint(namespace: &str, name: &str) -> Subscriber {
    Subscriber {
        kind: ProxyKind::Waypoint.into(),
        name: name.into(),
        namespace: namespace.into(),
        ..Default::default()
    }
}

/// A proxy's open report stream.
pub struct Reporter {
    pub tx: mpsc::Sender<ReportRequest>,
    pub responses: tonic::Streaming<ReportResponse>,
}

impl Reporter {
    pub async fn send(&self, request: ReportRequest) {
        self.tx.send(request).await.unwrap();
    }

    /// The controller's next answer, within 10 s.
    pub async fn next(&mut self) -> ReportResponse {
        tokio::time::timeout(Duration::from_secs(10), self.responses.message())
            .await
            .expect("no answer from the controller within 10s")
            .unwrap()
            .expect("the controller ended the stream")
    }
}

/// Opens a report stream as `reporter` with `token`, its first message naming the reporter.
pub async fn report(
    c: &Controller,
    token: Option<&str>,
    reporter: Subscriber,
) -> Result<Reporter, tonic::Status> {
    let (tx, rx) = mpsc::channel(8);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    tx.send(ReportRequest {
        reporter: Some(reporter),
        unix_ms: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut client = TelemetryClient::new(c.channel.clone());
    let responses = tokio::time::timeout(Duration::from_secs(10), client.report(request))
        .await
        .expect("no answer within 10s")?
        .into_inner();
    Ok(Reporter { tx, responses })
}

/// `GET path` on the API: status and body.
pub async fn get(api: SocketAddr, path: &str) -> (u16, String) {
    let response = open(api, path).await;
    let status = response.status().as_u16();
    let body = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .expect("the API answered within 10s")
        .unwrap()
        .to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// `GET path` on the API, its body left to read (a tap).
pub async fn open(api: SocketAddr, path: &str) -> http::Response<hyper::body::Incoming> {
    let stream = tokio::net::TcpStream::connect(api).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header("host", "ambit")
        .body(Empty::<Bytes>::new())
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("the API answered within 10s")
        .unwrap()
}

/// A recorded metrics text from `controller/tests/fixtures/telemetry`.
pub fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/telemetry/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}
