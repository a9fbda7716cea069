//! Who may subscribe: the discovery server with the binary's authentication, over TLS on
//! loopback, driven like a ztunnel.

use std::sync::Arc;
use std::time::Duration;

use ambit_controller::ca::{Authenticator, CaService};
use ambit_controller::model::MeshModel;
use ambit_controller::push::{DiscoveryService, SubscriberAccess, publish_snapshots};
use ambit_controller::source::file::{EMBEDDED_MESH, EMBEDDED_ORIGIN, parse};
use ambit_proto::api::discovery::discovery_client::DiscoveryClient;
use ambit_proto::api::discovery::{ProxyKind, SubscribeRequest, Subscriber};
use ambit_proto::identity::CertificateAuthority;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::Code;

use crate::support;
use crate::support::grpc::GrpcServer;

const NODE_A_TOKEN: &str = "node-a-local-bootstrap-token";

fn embedded() -> MeshModel {
    parse(EMBEDDED_MESH, EMBEDDED_ORIGIN).unwrap().model
}

struct Controller {
    server: GrpcServer,
    models: watch::Sender<Arc<MeshModel>>,
    _shutdown: DropGuard,
}

async fn start() -> Controller {
    let (models_tx, models) = watch::channel(Arc::new(embedded()));
    let ca = Arc::new(CertificateAuthority::generate("cluster.local").unwrap());
    let shutdown = CancellationToken::new();
    let (snapshots, _) = publish_snapshots(models.clone(), shutdown.clone());
    let authenticator = Arc::new(Authenticator::BootstrapTokens);
    let discovery = DiscoveryService::new(snapshots, shutdown.clone())
        .authenticate_with(SubscriberAccess::new(authenticator.clone(), models.clone()));
    let server = support::grpc::serve(
        ca.clone(),
        discovery,
        CaService::new(ca, models, Duration::from_secs(3600)).authenticate_with(authenticator),
        shutdown.clone(),
    )
    .await;
    Controller {
        server,
        models: models_tx,
        _shutdown: shutdown.drop_guard(),
    }
}

type Request = tonic::Request<ReceiverStream<SubscribeRequest>>;

/// A subscription request with `token`; the stream yields nothing until `first` is sent.
fn subscription(token: Option<&str>) -> (Request, mpsc::Sender<SubscribeRequest>) {
    let (tx, rx) = mpsc::channel(4);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    (request, tx)
}

fn first(node: &str) -> SubscribeRequest {
    SubscribeRequest {
        subscriber: Some(Subscriber {
            kind: ProxyKind::Ztunnel.into(),
            name: node.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_caller_without_a_valid_token_is_refused_before_it_sends_anything() {
    let c = start().await;
    let mut client = DiscoveryClient::new(c.server.channel.clone());
    for token in [None, Some("not-a-node-token")] {
        // The request stream never yields: the refusal cannot depend on reading it.
        let (request, _tx) = subscription(token);
        let err = tokio::time::timeout(Duration::from_secs(5), client.subscribe(request))
            .await
            .expect("refused without waiting for the first message")
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    }
}

#[tokio::test]
async fn a_node_subscribes_for_itself_and_is_cut_off_when_its_token_is_withdrawn() {
    let c = start().await;
    let mut client = DiscoveryClient::new(c.server.channel.clone());

    let (request, tx) = subscription(Some(NODE_A_TOKEN));
    tx.send(first("node-b")).await.unwrap();
    let err = client.subscribe(request).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");

    let (request, tx) = subscription(Some(NODE_A_TOKEN));
    tx.send(first("node-a")).await.unwrap();
    let mut stream = client.subscribe(request).await.unwrap().into_inner();
    let full = stream.message().await.unwrap().unwrap();
    assert!(full.full_state && !full.resources.is_empty());
    tx.send(SubscribeRequest {
        response_nonce: full.nonce,
        ..Default::default()
    })
    .await
    .unwrap();

    // The mesh file's next edit gives node-a a new token: the open subscription ends.
    let rotated = EMBEDDED_MESH.replace(NODE_A_TOKEN, "node-a-rotated-token");
    c.models
        .send_replace(Arc::new(parse(&rotated, "rotated").unwrap().model));
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the subscription was not ended");
    let status = ended.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status}");
}
