//! The controller's TLS (ambit_proto::control) over loopback: a real tonic server on
//! `control::incoming`, real clients on `control::channel`.

use std::sync::Arc;
use std::time::Duration;

use ambit_proto::api::security::certificate_service_client::CertificateServiceClient;
use ambit_proto::api::security::certificate_service_server::{
    CertificateService, CertificateServiceServer,
};
use ambit_proto::api::security::{CreateCertificateRequest, CreateCertificateResponse};
use ambit_proto::control::{self, ControlAddressError};
use ambit_proto::identity::{CertManager, CertificateAuthority, SpiffeId};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

const TD: &str = "cluster.local";

/// Answers with the caller's address and bearer token, so a test sees both arrived intact.
struct Echo;

#[tonic::async_trait]
impl CertificateService for Echo {
    async fn create_certificate(
        &self,
        request: Request<CreateCertificateRequest>,
    ) -> Result<Response<CreateCertificateResponse>, Status> {
        let peer = request
            .remote_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        Ok(Response::new(CreateCertificateResponse {
            cert_chain: vec![peer, token],
        }))
    }
}

struct Controller {
    ca: CertificateAuthority,
    address: String,
    _certs: CertManager,
    stop: CancellationToken,
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn controller() -> Controller {
    let ca = CertificateAuthority::generate(TD).unwrap();
    let certs = CertManager::with_local_ca(
        CertificateAuthority::from_pem(TD, ca.root_pem(), &ca.root_key_pem()).unwrap(),
        Duration::from_secs(3600),
    );
    let identity = control::default_controller_identity(TD).unwrap();
    let tls = control::server_config(certs.watch(&identity).await.unwrap()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("https://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let incoming = control::incoming(listener, Arc::new(tls));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CertificateServiceServer::new(Echo))
            .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned()),
    );
    Controller {
        ca,
        address,
        _certs: certs,
        stop,
    }
}

async fn call(
    address: &str,
    ca: &CertificateAuthority,
    expected: SpiffeId,
) -> Result<Vec<String>, Status> {
    let tls = control::client_config(&ca.trust_bundle(), expected).unwrap();
    let channel = control::channel(address, Arc::new(tls)).unwrap();
    let mut request = Request::new(CreateCertificateRequest::default());
    request
        .metadata_mut()
        .insert("authorization", "Bearer secret".parse().unwrap());
    let response = CertificateServiceClient::new(channel)
        .create_certificate(request)
        .await?;
    Ok(response.into_inner().cert_chain)
}

/// An error and all its causes on one line, as a proxy logs them.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[tokio::test]
async fn a_proxy_reaches_the_controller_over_tls_with_its_token_and_address() {
    let c = controller().await;
    let expected = control::default_controller_identity(TD).unwrap();
    let answer = call(&c.address, &c.ca, expected).await.unwrap();
    assert_eq!(
        answer,
        vec!["127.0.0.1".to_string(), "Bearer secret".into()]
    );
}

#[tokio::test]
async fn a_proxy_refuses_a_controller_with_another_identity_or_root() {
    let c = controller().await;
    let impostor = SpiffeId::new(TD, "default", "pretender").unwrap();
    let err = call(&c.address, &c.ca, impostor).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    let chain = error_chain(&err);
    assert!(
        chain.contains("pretender"),
        "the cause names the identity expected: {chain}"
    );

    let other_root = CertificateAuthority::generate(TD).unwrap();
    let expected = control::default_controller_identity(TD).unwrap();
    let err = call(&c.address, &other_root, expected).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
}

#[tokio::test]
async fn garbage_and_silent_callers_do_not_stop_the_controller() {
    let c = controller().await;
    let addr = c.address.trim_start_matches("https://").to_string();
    // A plain gRPC (h2c) caller, a scanner writing junk, and one that connects and says nothing.
    let mut junk = TcpStream::connect(&addr).await.unwrap();
    junk.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00garbage")
        .await
        .unwrap();
    let _silent = TcpStream::connect(&addr).await.unwrap();
    let expected = control::default_controller_identity(TD).unwrap();
    let answer = call(&c.address, &c.ca, expected).await.unwrap();
    assert_eq!(answer[1], "Bearer secret");
}

#[tokio::test]
async fn a_plain_http_controller_address_is_refused_with_the_fix() {
    let ca = CertificateAuthority::generate(TD).unwrap();
    let expected = control::default_controller_identity(TD).unwrap();
    let tls = Arc::new(control::client_config(&ca.trust_bundle(), expected).unwrap());
    let err = control::channel("http://127.0.0.1:15010", tls.clone()).unwrap_err();
    assert!(matches!(err, ControlAddressError::NotHttps { .. }));
    assert!(err.to_string().contains("https://"), "{err}");
    assert!(matches!(
        control::channel("not a uri", tls).unwrap_err(),
        ControlAddressError::Invalid { .. }
    ));
}
