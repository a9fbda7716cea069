//! The CA in Kubernetes, over real sockets: callers authenticate with service-account tokens
//! that the (fake) API server reviews, and the root lives in a Secret of that API server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ambit_controller::ca::root_secret::{self, RootSecretError};
use ambit_controller::ca::{Authenticator, NamespacedName, TokenReviewer};
use ambit_controller::source::file::parse;
use ambit_proto::api::security::CreateCertificateRequest;
use ambit_proto::identity::{CertificateAuthority, SpiffeId, Validity, WorkloadKey};
use hyper::Method;
use serde_json::{Value, json};
use tonic::Code;

use crate::support::fake_api::{FakeApi, status};
use crate::support::grpc::{Ca, start_ca};

const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const AUDIENCE: &str = "mesh-ca";
const CLIENT: &str = "spiffe://cluster.local/ns/demo/sa/client";
const REVIEWS: &str = "spiffe://cluster.local/ns/demo/sa/reviews";
const WAYPOINT: &str = "spiffe://cluster.local/ns/demo/sa/demo-wp";

/// client runs on node-a, reviews and the waypoint on node-b. No bootstrap tokens.
const MESH: &str = r#"
nodes: [{name: node-a}, {name: node-b}]
namespaces:
  - name: demo
    labels: {ambit.io/dataplane-mode: ambient}
waypoints:
  - {name: demo-wp, namespace: demo, node: node-b, ipv4: 10.244.2.100}
pods:
  - {name: client, namespace: demo, node: node-a, serviceAccount: client, ipv4: 10.244.1.2}
  - {name: reviews, namespace: demo, node: node-b, serviceAccount: reviews, ipv4: 10.244.2.2}
"#;

/// The CA, reviewing tokens through `api` (no caching unless `cache_for` says so).
async fn start(api: kube::Client, cache_for: Duration) -> Ca {
    let authenticator = Authenticator::TokenReview {
        reviewer: TokenReviewer::new(api, AUDIENCE)
            .cache_for(cache_for)
            .timeout(Duration::from_secs(2)),
        ztunnel: NamespacedName::new("ambit-system", "ztunnel"),
    };
    let model = parse(MESH, "test mesh").unwrap().model;
    start_ca(model, Duration::from_secs(3600), authenticator).await
}

/// A review that authenticates `user` for our audience, bound to a pod on `node` if given.
fn authenticated(user: &str, node: Option<&str>) -> Value {
    let extra = node.map_or_else(
        || json!({}),
        |n| json!({"authentication.kubernetes.io/node-name": [n]}),
    );
    json!({
        "authenticated": true,
        "audiences": [AUDIENCE],
        "user": {"username": user, "uid": "1", "groups": ["system:serviceaccounts"], "extra": extra},
    })
}

const ZTUNNEL: &str = "system:serviceaccount:ambit-system:ztunnel";

/// Answers TokenReviews from a table of token → review status; unknown tokens are refused as
/// the API server refuses them.
fn review_tokens(api: &FakeApi, table: Vec<(&'static str, Value)>) {
    api.on(Method::POST, TOKEN_REVIEWS, move |req| {
        let token = req.body["spec"]["token"].as_str().unwrap_or_default();
        let status = table
            .iter()
            .find(|(t, _)| *t == token)
            .map_or_else(
                || json!({"authenticated": false, "error": "[invalid bearer token, token has expired]"}),
                |(_, s)| s.clone(),
            );
        let review = json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "metadata": {}, "spec": req.body["spec"], "status": status,
        });
        (201, review)
    });
}

fn request(
    token: Option<&str>,
    node: Option<&str>,
    identity: &str,
) -> tonic::Request<CreateCertificateRequest> {
    let csr = WorkloadKey::generate()
        .unwrap()
        .csr_pem(&identity.parse::<SpiffeId>().unwrap())
        .unwrap();
    let mut r = tonic::Request::new(CreateCertificateRequest {
        csr,
        validity_seconds: 0,
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

impl Ca {
    async fn ask(
        &mut self,
        token: Option<&str>,
        node: Option<&str>,
        identity: &str,
    ) -> Result<Vec<String>, tonic::Status> {
        let response = self
            .client
            .create_certificate(request(token, node, identity))
            .await?;
        Ok(response.into_inner().cert_chain)
    }

    async fn refused(
        &mut self,
        token: Option<&str>,
        node: Option<&str>,
        identity: &str,
        code: Code,
    ) -> String {
        let status = self.ask(token, node, identity).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        status.message().to_string()
    }
}

fn uri_sans(leaf_pem: &str) -> Vec<String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(leaf_pem.as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => u.to_string(),
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn a_ztunnel_token_gets_the_certificates_of_its_nodes_meshed_pods_only() {
    let api = FakeApi::start().await;
    review_tokens(
        &api,
        vec![("ztunnel-a", authenticated(ZTUNNEL, Some("node-a")))],
    );
    let mut ca = start(api.client(), Duration::ZERO).await;

    let chain = ca
        .ask(Some("ztunnel-a"), Some("node-a"), CLIENT)
        .await
        .unwrap();
    assert_eq!(uri_sans(&chain[0]), [CLIENT]);
    assert_eq!(chain[1], ca.root_pem);

    // reviews runs on node-b only.
    let message = ca
        .refused(Some("ztunnel-a"), None, REVIEWS, Code::PermissionDenied)
        .await;
    assert!(
        message.contains(REVIEWS) && message.contains("node node-a"),
        "{message}"
    );
    // The token's node wins over a header that claims another.
    let message = ca
        .refused(
            Some("ztunnel-a"),
            Some("node-b"),
            REVIEWS,
            Code::PermissionDenied,
        )
        .await;
    assert!(
        message.contains("node-a") && message.contains("\"node-b\""),
        "{message}"
    );
}

#[tokio::test]
async fn the_review_asks_for_the_configured_audience() {
    let api = FakeApi::start().await;
    review_tokens(
        &api,
        vec![("ztunnel-a", authenticated(ZTUNNEL, Some("node-a")))],
    );
    let mut ca = start(api.client(), Duration::ZERO).await;
    ca.ask(Some("ztunnel-a"), None, CLIENT).await.unwrap();
    let reviews: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.path == TOKEN_REVIEWS)
        .collect();
    assert_eq!(reviews.len(), 1, "{reviews:?}");
    assert_eq!(reviews[0].method, Method::POST);
    assert_eq!(reviews[0].body["spec"]["token"], "ztunnel-a");
    assert_eq!(reviews[0].body["spec"]["audiences"], json!([AUDIENCE]));
}

#[tokio::test]
async fn tokens_the_api_server_does_not_vouch_for_are_unauthenticated() {
    let api = FakeApi::start().await;
    // Valid for the API server itself, not for us: the review confirms no audience of ours.
    let mut api_audience = authenticated(ZTUNNEL, Some("node-a"));
    api_audience["audiences"] = json!(["https://kubernetes.default.svc"]);
    review_tokens(
        &api,
        vec![
            ("api-token", api_audience),
            ("unbound", authenticated(ZTUNNEL, None)),
        ],
    );
    let mut ca = start(api.client(), Duration::ZERO).await;

    let message = ca
        .refused(Some("expired"), None, CLIENT, Code::Unauthenticated)
        .await;
    assert!(
        message.contains(AUDIENCE) && message.contains("token has expired"),
        "{message}"
    );
    let message = ca
        .refused(Some("api-token"), None, CLIENT, Code::Unauthenticated)
        .await;
    assert!(message.contains("not ours"), "{message}");
    let message = ca.refused(None, None, CLIENT, Code::Unauthenticated).await;
    assert!(message.contains(AUDIENCE), "{message}");
    // A ztunnel token that is not bound to a pod says nothing about a node.
    let message = ca
        .refused(
            Some("unbound"),
            Some("node-a"),
            CLIENT,
            Code::Unauthenticated,
        )
        .await;
    assert!(
        message.contains("authentication.kubernetes.io/node-name"),
        "{message}"
    );
}

#[tokio::test]
async fn an_unreachable_api_is_unavailable_and_the_ca_serves_on_once_it_is_back() {
    // A port where nothing listens (yet).
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let mut ca = start(kube::Client::try_from(config).unwrap(), Duration::ZERO).await;
    for _ in 0..2 {
        let message = ca
            .refused(Some("ztunnel-a"), None, CLIENT, Code::Unavailable)
            .await;
        assert!(message.contains("TokenReview"), "{message}");
    }

    let api = FakeApi::start_on(addr).await;
    review_tokens(
        &api,
        vec![("ztunnel-a", authenticated(ZTUNNEL, Some("node-a")))],
    );
    let chain = ca.ask(Some("ztunnel-a"), None, CLIENT).await.unwrap();
    assert_eq!(uri_sans(&chain[0]), [CLIENT]);
}

#[tokio::test]
async fn an_api_error_is_unavailable_with_the_apis_reason() {
    let api = FakeApi::start().await;
    api.on(Method::POST, TOKEN_REVIEWS, |_| {
        let forbidden = "tokenreviews.authentication.k8s.io is forbidden: User \"system:serviceaccount:ambit-system:controller\" cannot create resource \"tokenreviews\"";
        (403, status(403, "Forbidden", forbidden))
    });
    let mut ca = start(api.client(), Duration::ZERO).await;
    let message = ca
        .refused(Some("ztunnel-a"), None, CLIENT, Code::Unavailable)
        .await;
    assert!(
        message.contains("cannot create resource") && message.contains("system:auth-delegator"),
        "{message}"
    );
}

#[tokio::test]
async fn a_waypoint_token_gets_its_own_identity_and_nothing_else() {
    let api = FakeApi::start().await;
    let waypoint = "system:serviceaccount:demo:demo-wp";
    // Bound to a pod on node-b, where reviews runs: that makes it no node agent.
    review_tokens(&api, vec![("wp", authenticated(waypoint, Some("node-b")))]);
    let mut ca = start(api.client(), Duration::ZERO).await;

    let chain = ca.ask(Some("wp"), Some("node-b"), WAYPOINT).await.unwrap();
    assert_eq!(uri_sans(&chain[0]), [WAYPOINT]);
    for other in [REVIEWS, CLIENT] {
        let message = ca
            .refused(Some("wp"), None, other, Code::PermissionDenied)
            .await;
        assert!(
            message.contains("demo/demo-wp") && message.contains("only its own identity"),
            "{message}"
        );
    }
}

#[tokio::test]
async fn a_service_account_that_runs_no_waypoint_gets_nothing() {
    let api = FakeApi::start().await;
    review_tokens(
        &api,
        vec![
            (
                "pod",
                authenticated("system:serviceaccount:demo:client", Some("node-a")),
            ),
            ("admin", authenticated("kubernetes-admin", None)),
        ],
    );
    let mut ca = start(api.client(), Duration::ZERO).await;
    // A meshed pod's own token: its certificate comes through its node's ztunnel instead.
    let message = ca
        .refused(Some("pod"), None, CLIENT, Code::PermissionDenied)
        .await;
    assert!(
        message.contains("runs no waypoint") && message.contains("ztunnel"),
        "{message}"
    );
    let message = ca
        .refused(Some("admin"), None, CLIENT, Code::PermissionDenied)
        .await;
    assert!(message.contains("kubernetes-admin"), "{message}");
}

#[tokio::test]
async fn a_successful_review_is_reused_until_the_token_would_expire() {
    let api = FakeApi::start().await;
    // A JWT whose payload is {"exp":4000000000}; and one whose expiry cannot be read.
    let jwt = "e30.eyJleHAiOjQwMDAwMDAwMDB9.sig";
    review_tokens(
        &api,
        vec![
            (jwt, authenticated(ZTUNNEL, Some("node-a"))),
            ("opaque", authenticated(ZTUNNEL, Some("node-a"))),
        ],
    );
    let mut ca = start(api.client(), Duration::from_secs(60)).await;
    let reviews = || {
        api.requests()
            .iter()
            .filter(|r| r.path == TOKEN_REVIEWS)
            .count()
    };
    for _ in 0..3 {
        ca.ask(Some(jwt), None, CLIENT).await.unwrap();
    }
    assert_eq!(reviews(), 1);
    for _ in 0..2 {
        ca.ask(Some("opaque"), None, CLIENT).await.unwrap();
    }
    assert_eq!(
        reviews(),
        3,
        "a token without a readable expiry is not cached"
    );
}

#[tokio::test]
async fn a_refused_token_is_refused_again_without_another_review() {
    let api = FakeApi::start().await;
    review_tokens(&api, vec![]);
    let mut ca = start(api.client(), Duration::from_secs(60)).await;
    for _ in 0..3 {
        let status = ca
            .refused(Some("garbage"), None, CLIENT, Code::Unauthenticated)
            .await;
        assert!(status.contains("token has expired"), "{status}");
    }
    let reviews = api
        .requests()
        .iter()
        .filter(|r| r.path == TOKEN_REVIEWS)
        .count();
    assert_eq!(reviews, 1, "the API server is asked once per refused token");
}

// The root in a Secret.

const SECRET_PATH: &str = "/api/v1/namespaces/ambit-system/secrets/ambit-ca";
const SECRETS: &str = "/api/v1/namespaces/ambit-system/secrets";

fn secret_name() -> NamespacedName {
    NamespacedName::new("ambit-system", "ambit-ca")
}

fn base64(text: &str) -> Value {
    serde_json::to_value(k8s_openapi::ByteString(text.as_bytes().to_vec())).unwrap()
}

fn unbase64(value: &Value) -> String {
    let bytes: k8s_openapi::ByteString = serde_json::from_value(value.clone()).unwrap();
    String::from_utf8(bytes.0).unwrap()
}

fn secret(data: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "ambit-ca", "namespace": "ambit-system", "resourceVersion": "7"},
        "type": "Opaque", "data": data,
    })
}

fn secret_of(ca: &CertificateAuthority) -> Value {
    secret(json!({
        "ca-cert.pem": base64(ca.root_pem()),
        "ca-key.pem": base64(&ca.root_key_pem()),
    }))
}

/// Does `ca` sign certificates that chain to `root_pem`?
fn signs_under(ca: &CertificateAuthority, root_pem: &str) -> bool {
    let id: SpiffeId = CLIENT.parse().unwrap();
    let csr = WorkloadKey::generate().unwrap().csr_pem(&id).unwrap();
    let chain = ca
        .sign_csr(&csr, &id, Validity::for_ttl(Duration::from_secs(60)))
        .unwrap();
    let (_, leaf) = x509_parser::pem::parse_x509_pem(chain[0].as_bytes()).unwrap();
    let (_, root) = x509_parser::pem::parse_x509_pem(root_pem.as_bytes()).unwrap();
    let root = root.parse_x509().unwrap();
    leaf.parse_x509()
        .unwrap()
        .verify_signature(Some(root.public_key()))
        .is_ok()
}

#[tokio::test]
async fn an_absent_root_secret_is_generated_and_created() {
    let api = FakeApi::start().await;
    api.on(Method::POST, SECRETS, |req| (201, req.body.clone()));
    let ca = root_secret::load_or_create(api.client(), &secret_name(), "cluster.local")
        .await
        .unwrap();
    let created: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.method == Method::POST)
        .collect();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].path, SECRETS);
    let body = &created[0].body;
    assert_eq!(body["metadata"]["name"], "ambit-ca");
    assert_eq!(unbase64(&body["data"]["ca-cert.pem"]), ca.root_pem());
    assert_eq!(unbase64(&body["data"]["ca-key.pem"]), ca.root_key_pem());
    assert!(signs_under(&ca, ca.root_pem()));
}

#[tokio::test]
async fn a_present_root_secret_is_loaded_and_signs_under_its_root() {
    let api = FakeApi::start().await;
    let stored = CertificateAuthority::generate("cluster.local").unwrap();
    let body = secret_of(&stored);
    api.on(Method::GET, SECRET_PATH, move |_| (200, body.clone()));
    let ca = root_secret::load_or_create(api.client(), &secret_name(), "cluster.local")
        .await
        .unwrap();
    assert_eq!(ca.root_pem(), stored.root_pem());
    assert!(signs_under(&ca, stored.root_pem()));
    assert!(api.requests().iter().all(|r| r.method == Method::GET));
}

#[tokio::test]
async fn a_malformed_root_secret_is_an_error_naming_the_secret_the_key_and_the_fix() {
    let good = CertificateAuthority::generate("cluster.local").unwrap();
    let cases = [
        (
            json!({"ca-cert.pem": base64(good.root_pem())}),
            "ca-key.pem",
        ),
        (
            json!({"ca-cert.pem": base64("not a PEM"), "ca-key.pem": base64(&good.root_key_pem())}),
            "ca-cert.pem",
        ),
        (
            json!({"ca-cert.pem": base64(good.root_pem()), "ca-key.pem": base64("-----BEGIN nonsense")}),
            "ca-key.pem",
        ),
    ];
    for (data, key) in cases {
        let api = FakeApi::start().await;
        let body = secret(data);
        api.on(Method::GET, SECRET_PATH, move |_| (200, body.clone()));
        let error = root_secret::load_or_create(api.client(), &secret_name(), "cluster.local")
            .await
            .err()
            .expect("a half-valid root is refused");
        let message = error.to_string();
        assert!(
            message.contains("ambit-system/ambit-ca")
                && message.contains(key)
                && message.contains("delete the Secret"),
            "{message}"
        );
        assert!(
            matches!(
                error,
                RootSecretError::MissingKey { .. } | RootSecretError::BadPem { .. }
            ),
            "{error:?}"
        );
        assert!(
            api.requests().iter().all(|r| r.method == Method::GET),
            "a bad Secret is never overwritten"
        );
    }
}

#[tokio::test]
async fn losing_the_creation_race_loads_the_winners_root() {
    let api = FakeApi::start().await;
    let winner = CertificateAuthority::generate("cluster.local").unwrap();
    let body = secret_of(&winner);
    let reads = AtomicUsize::new(0);
    // Absent when first read; another replica's by the time it is read again.
    api.on(Method::GET, SECRET_PATH, move |_| {
        if reads.fetch_add(1, Ordering::SeqCst) == 0 {
            (
                404,
                status(404, "NotFound", "secrets \"ambit-ca\" not found"),
            )
        } else {
            (200, body.clone())
        }
    });
    api.on(Method::POST, SECRETS, |_| {
        (
            409,
            status(409, "AlreadyExists", "secrets \"ambit-ca\" already exists"),
        )
    });
    let ca = root_secret::load_or_create(api.client(), &secret_name(), "cluster.local")
        .await
        .unwrap();
    assert_eq!(ca.root_pem(), winner.root_pem());
    assert!(signs_under(&ca, winner.root_pem()));
}
