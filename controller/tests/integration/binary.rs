//! The `controller` binary end to end: flags, readiness, serving, and a clean SIGTERM.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_proto::api::discovery::discovery_client::DiscoveryClient;
use ambit_proto::api::discovery::{ProxyKind, SubscribeRequest, Subscriber};
use ambit_proto::control;
use ambit_proto::identity::TrustBundle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::wrappers::ReceiverStream;

const BIN: &str = env!("CARGO_BIN_EXE_controller");

#[test]
fn the_kubernetes_source_without_a_cluster_says_how_to_give_one() {
    let out = Command::new(BIN)
        .args(["--source", "kubernetes", "--log", "error"])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("could not connect to the Kubernetes API") && stderr.contains("KUBECONFIG"),
        "{stderr}"
    );
}

#[test]
fn a_bad_mesh_file_stops_the_start_with_its_line() {
    let dir = tempdir("bad");
    let mesh = dir.join("mesh.yaml");
    std::fs::write(&mesh, "nodes:\n  - name: a\n    colour: blue\n").unwrap();
    let out = Command::new(BIN)
        .args(["--log", "error", "--source"])
        .arg(format!("file:{}", mesh.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 3") && stderr.contains("colour"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ambit-bin-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).await.ok()?;
    Some(response)
}

type Subscription = tonic::Request<ReceiverStream<SubscribeRequest>>;

/// A subscription for `node`'s ztunnel, and the sender that keeps its request stream open.
fn subscription(node: &str) -> (Subscription, tokio::sync::mpsc::Sender<SubscribeRequest>) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.try_send(SubscribeRequest {
        subscriber: Some(Subscriber {
            kind: ProxyKind::Ztunnel.into(),
            name: node.into(),
            ..Default::default()
        }),
        known_versions: HashMap::new(),
        ..Default::default()
    })
    .unwrap();
    (tonic::Request::new(ReceiverStream::new(rx)), tx)
}

fn bearer(request: &mut Subscription, token: &str) {
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
}

#[tokio::test]
async fn serves_the_embedded_mesh_and_drains_on_sigterm() {
    let dir = tempdir("run");
    let (grpc, metrics) = (free_port(), free_port());
    let mut child = Command::new(BIN)
        .args(["--log", "warn", "--listen"])
        .arg(format!("127.0.0.1:{grpc}"))
        .arg("--metrics")
        .arg(format!("127.0.0.1:{metrics}"))
        .arg("--ca-cert")
        .arg(dir.join("ca/root-cert.pem"))
        .arg("--ca-key")
        .arg(dir.join("ca/root-key.pem"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(r) = http_get(metrics, "/healthz/ready").await
            && r.starts_with("HTTP/1.1 200")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the controller never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let key_mode = std::fs::metadata(dir.join("ca/root-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600, "the generated root key is private");

    // A plain-TCP gRPC client with a valid token gets nowhere: the port speaks TLS only, so the
    // call fails in transport, before any token is looked at.
    if let Ok(mut client) = DiscoveryClient::connect(format!("http://127.0.0.1:{grpc}")).await {
        let (mut request, _tx) = subscription("node-b");
        bearer(&mut request, "node-b-local-bootstrap-token");
        let err = client.subscribe(request).await.unwrap_err();
        assert!(
            !matches!(
                err.code(),
                tonic::Code::Ok | tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
            ),
            "plaintext gRPC must fail in transport, not reach the services: {err}"
        );
    }

    // Over TLS, pinned to the controller's identity and chained to the generated root.
    let root = std::fs::read_to_string(dir.join("ca/root-cert.pem")).unwrap();
    let bundle = TrustBundle::from_pem("cluster.local", &root).unwrap();
    let identity = control::default_controller_identity("cluster.local").unwrap();
    let tls = Arc::new(control::client_config(&bundle, identity).unwrap());
    let channel = control::channel(&format!("https://127.0.0.1:{grpc}"), tls).unwrap();
    let mut client = DiscoveryClient::new(channel);

    // Without a token, or with node-a's token for node-b, the subscription is refused.
    let (request, _tx) = subscription("node-b");
    let err = client.subscribe(request).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    let (mut request, _tx) = subscription("node-b");
    bearer(&mut request, "node-a-local-bootstrap-token");
    let err = client.subscribe(request).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert!(err.message().contains("its own node only"), "{err}");

    let (mut request, _tx) = subscription("node-b");
    bearer(&mut request, "node-b-local-bootstrap-token");
    let mut stream = client.subscribe(request).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(first.full_state && !first.resources.is_empty());
    let metrics_text = http_get(metrics, "/metrics").await.unwrap();
    assert!(
        metrics_text.contains("ambit_controller_pushes_total"),
        "{metrics_text}"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the controller did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    let end = stream.message().await;
    assert!(
        matches!(&end, Err(s) if s.code() == tonic::Code::Unavailable),
        "the subscription ends with UNAVAILABLE: {end:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
