//! The CA over real gRPC on loopback: who may get which certificate.

use std::time::{Duration, SystemTime};

use ambit_controller::ca::Authenticator;
use ambit_controller::source::file::{EMBEDDED_MESH, EMBEDDED_ORIGIN, parse};
use ambit_proto::api::security::CreateCertificateRequest;
use ambit_proto::identity::{SpiffeId, WorkloadKey};
use tonic::Code;

const TTL: Duration = Duration::from_secs(2 * 3600);

use crate::support::grpc::{Ca, start_ca};

async fn start() -> Ca {
    let model = parse(EMBEDDED_MESH, EMBEDDED_ORIGIN).unwrap().model;
    start_ca(model, TTL, Authenticator::BootstrapTokens).await
}

fn request(
    token: Option<&str>,
    node: Option<&str>,
    identity: &str,
    csr: String,
    validity_seconds: u64,
) -> tonic::Request<CreateCertificateRequest> {
    let mut r = tonic::Request::new(CreateCertificateRequest {
        csr,
        validity_seconds,
        identity: identity.into(),
    });
    if let Some(token) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    if let Some(node) = node {
        r.metadata_mut().insert("ambit-node", node.parse().unwrap());
    }
    r
}

fn csr_for(identity: &str) -> String {
    let id: SpiffeId = identity.parse().unwrap();
    WorkloadKey::generate().unwrap().csr_pem(&id).unwrap()
}

const NODE_A: &str = "node-a-local-bootstrap-token";
const NODE_B: &str = "node-b-local-bootstrap-token";
const CLIENT: &str = "spiffe://cluster.local/ns/demo/sa/client";

#[tokio::test]
async fn a_node_gets_a_certificate_for_a_pod_it_runs() {
    let mut ca = start().await;
    let chain = ca
        .client
        .create_certificate(request(
            Some(NODE_A),
            Some("node-a"),
            CLIENT,
            csr_for(CLIENT),
            0,
        ))
        .await
        .unwrap()
        .into_inner()
        .cert_chain;
    assert_eq!(chain.len(), 2, "leaf, then the root");
    assert_eq!(chain[1], ca.root_pem);
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain[0].as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    let uris: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => u.to_string(),
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect();
    assert_eq!(uris, [CLIENT]);
    let lifetime = cert.validity().not_after.timestamp() - now();
    assert!(
        (TTL.as_secs() as i64 - lifetime).abs() < 120,
        "default TTL, got {lifetime}s"
    );
}

#[tokio::test]
async fn nobody_obtains_the_controllers_own_identity() {
    let mut ca = start().await;
    let controller = "spiffe://cluster.local/ns/ambit-system/sa/ambit-controller";
    let err = ca
        .client
        .create_certificate(request(
            Some(NODE_A),
            Some("node-a"),
            controller,
            csr_for(controller),
            0,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.message().contains("controller's own identity"), "{err}");
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn a_shorter_lifetime_may_be_asked_but_not_a_longer_one() {
    let mut ca = start().await;
    for (asked, expected) in [(600, 600), (10 * 24 * 3600, TTL.as_secs())] {
        let chain = ca
            .client
            .create_certificate(request(Some(NODE_A), None, CLIENT, csr_for(CLIENT), asked))
            .await
            .unwrap()
            .into_inner()
            .cert_chain;
        let (_, pem) = x509_parser::pem::parse_x509_pem(chain[0].as_bytes()).unwrap();
        let lifetime = pem.parse_x509().unwrap().validity().not_after.timestamp() - now();
        assert!(
            (expected as i64 - lifetime).abs() < 120,
            "asked {asked}s, got {lifetime}s"
        );
    }
}

#[tokio::test]
async fn a_node_is_refused_an_identity_that_does_not_run_on_it() {
    let mut ca = start().await;
    // client runs on node-a only.
    let status = ca
        .client
        .create_certificate(request(
            Some(NODE_B),
            Some("node-b"),
            CLIENT,
            csr_for(CLIENT),
            0,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains(CLIENT), "{}", status.message());
    assert!(
        status.message().contains("node node-b"),
        "{}",
        status.message()
    );
    // legacy runs on node-b, but is not meshed: it needs no mesh identity.
    let legacy = "spiffe://cluster.local/ns/legacy/sa/legacy";
    let status = ca
        .client
        .create_certificate(request(Some(NODE_B), None, legacy, csr_for(legacy), 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // Another trust domain.
    let foreign = "spiffe://other.local/ns/demo/sa/client";
    let status = ca
        .client
        .create_certificate(request(Some(NODE_A), None, foreign, csr_for(foreign), 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}

#[tokio::test]
async fn callers_without_a_valid_token_for_their_node_are_refused() {
    let mut ca = start().await;
    for (token, node, code) in [
        (None, None, Code::Unauthenticated),
        (Some("guess"), None, Code::Unauthenticated),
        (Some(NODE_A), Some("node-b"), Code::PermissionDenied),
    ] {
        let status = ca
            .client
            .create_certificate(request(token, node, CLIENT, csr_for(CLIENT), 0))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{token:?} {node:?}: {status:?}");
    }
}

#[tokio::test]
async fn a_garbage_or_mismatched_csr_is_an_invalid_argument() {
    let mut ca = start().await;
    let status = ca
        .client
        .create_certificate(request(Some(NODE_A), None, CLIENT, "not a CSR".into(), 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("signing request"),
        "{}",
        status.message()
    );
    // A valid CSR, but for another identity than the one asked for.
    let other = "spiffe://cluster.local/ns/demo/sa/reviews";
    let status = ca
        .client
        .create_certificate(request(Some(NODE_A), None, CLIENT, csr_for(other), 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = ca
        .client
        .create_certificate(request(Some(NODE_A), None, "client", csr_for(CLIENT), 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}
