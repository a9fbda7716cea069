//! Our HBONE server against a client we did not write: `tests/interop/hbone_client.py`, on
//! Python's `ssl` (OpenSSL) and the `h2` package, over loopback. Checked: what Istio's ztunnel
//! expects of a server (TLS 1.3 with AES-GCM, ALPN h2, a SPIFFE URI SAN, no session tickets, the
//! HTTP/2 settings, one CONNECT per tunnel, half-close as END_STREAM) and the refusals, of bad
//! authorities and of clients that are not mesh workloads.
//!
//! Needs `python3` with `h2` (`pip install h2`). Without it the tests are skipped with a note,
//! except under CI (`CI` set), where they fail.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::support::interop::*;
use crate::support::*;
use ambit_proto::hbone::{TunnelHandler, TunnelRequest};
use ambit_proto::identity::{CertManager, CertificateAuthority, SpiffeId};
use http::HeaderMap;
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;

/// Echoes each tunnel, recording what the server saw of the request.
#[derive(Default)]
struct Recording {
    seen: Mutex<Vec<Seen>>,
}

struct Seen {
    peer: SpiffeId,
    authority: SocketAddr,
    headers: HeaderMap,
    forwarded_for: Option<SocketAddr>,
}

impl TunnelHandler for Recording {
    async fn handle(&self, request: TunnelRequest) {
        self.seen.lock().push(Seen {
            peer: request.peer.clone(),
            authority: request.authority,
            headers: request.headers.clone(),
            forwarded_for: request.forwarded_for(),
        });
        let Ok(tunnel) = request.accept() else { return };
        let (mut rd, mut wr) = tokio::io::split(tunnel);
        let _ = tokio::io::copy(&mut rd, &mut wr).await;
        let _ = wr.shutdown().await;
    }
}

/// Our server as `demo/server` of a fresh mesh, recording what it sees, with PEM files for a
/// Python client `py/client` of the same mesh.
struct OurServer {
    pki: Pki,
    root: String,
    cert: String,
    key: String,
    recording: Arc<Recording>,
    server: RunningServer,
    _certs: CertManager,
}

impl OurServer {
    async fn start(bind: &str) -> OurServer {
        let ca = CertificateAuthority::generate(TD).unwrap();
        let pki = Pki::new();
        let root = pki.root(&ca, "root");
        let (cert, key) = pki.issue(&ca, &id("py", "client"), "client");
        let certs = manager(ca);
        let recording = Arc::new(Recording::default());
        let server = serve(&certs, &id("demo", "server"), recording.clone(), bind).await;
        OurServer {
            pki,
            root,
            cert,
            key,
            recording,
            server,
            _certs: certs,
        }
    }

    /// `hbone_client.py`'s arguments to dial our server with `cert` and `key`, trusting our
    /// root and expecting the server to be `expect`.
    fn client_args_as(&self, cert: &str, key: &str, expect: &SpiffeId) -> Vec<String> {
        args(&[
            "--addr",
            &self.server.addr.to_string(),
            "--root",
            &self.root,
            "--cert",
            cert,
            "--key",
            key,
            "--expect-id",
            expect.as_str(),
        ])
    }

    /// Runs `hbone_client.py` as `py/client`, expecting `expect`, with `more` arguments.
    async fn run_client_expecting(&self, expect: &SpiffeId, more: &[&str]) -> Finished {
        let a = [
            self.client_args_as(&self.cert, &self.key, expect),
            args(more),
        ]
        .concat();
        run("hbone_client.py", a).await
    }

    /// Runs `hbone_client.py` as `py/client`, expecting `demo/server`, with `more` arguments.
    async fn run_client(&self, more: &[&str]) -> Finished {
        self.run_client_expecting(&id("demo", "server"), more).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_tunnels_one_mib_through_our_server() {
    require_python_h2!();
    let ours = OurServer::start("127.0.0.1:0").await;
    let py = ours
        .run_client(&[
            "--authority",
            "127.0.0.1:8080",
            "--payload-bytes",
            &MIB.to_string(),
            "--header",
            "baggage=k8s.namespace.name=py,k8s.deployment.name=client",
            "--header",
            "forwarded=for=\"10.9.8.7:4321\"",
            "--header",
            &format!("traceparent={TRACEPARENT}"),
        ])
        .await;
    py.assert_ok();

    // Python's view of the wire.
    assert_mesh_tls(&py);
    assert_only_san(&py, "server", "spiffe://cluster.local/ns/demo/sa/server");
    assert_eq!(py.value("status"), "200", "{py}");
    assert_eq!(py.value("sent"), MIB.to_string(), "{py}");
    assert_eq!(py.value("echoed"), MIB.to_string(), "{py}");
    assert_eq!(py.value("echo_end_stream"), "yes", "{py}");
    assert_eq!(
        py.value("session_ticket"),
        "no",
        "no resumption: no TLS 1.3 tickets\n{py}"
    );
    let settings = assert_our_flow_control(&py, "server");
    let setting = |name: &str| settings.get(name).map(String::as_str);
    assert_eq!(setting("MAX_CONCURRENT_STREAMS"), Some("100"), "{py}");
    assert_eq!(setting("MAX_HEADER_LIST_SIZE"), Some("16384"), "{py}");

    // Our server's view of the request.
    let seen = ours.recording.seen.lock();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(
        s.peer,
        id("py", "client"),
        "the identity Python's certificate proves"
    );
    assert_eq!(s.authority, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(s.forwarded_for, Some("10.9.8.7:4321".parse().unwrap()));
    assert_eq!(
        s.headers["baggage"],
        "k8s.namespace.name=py,k8s.deployment.name=client"
    );
    assert_eq!(s.headers["traceparent"], TRACEPARENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_server_refuses_bad_authorities_from_python_and_keeps_the_connection() {
    require_python_h2!();
    let ours = OurServer::start("127.0.0.1:0").await;
    let py = ours
        .run_client(&[
            // Another host than the one dialled.
            "--refuse",
            "400,10.1.2.3:8080",
            // The proxy's own HBONE port.
            "--refuse",
            "400,127.0.0.1:15008",
            // Not an ip:port.
            "--refuse",
            "400,example.com:80",
            // After the refusals, the same connection still carries a tunnel.
            "--authority",
            "127.0.0.1:8080",
            "--payload-bytes",
            "1000",
        ])
        .await;
    py.assert_ok();
    let refused = py.values("refused");
    assert_eq!(refused.len(), 3, "{py}");
    for r in &refused {
        assert!(r.contains("status=400 end_stream=yes reason="), "{r}\n{py}");
    }
    assert!(
        refused[0].contains("is not this destination's address"),
        "{py}"
    );
    assert!(refused[1].contains("port 15008 is the proxy's own"), "{py}");
    assert!(refused[2].contains("is not an ip:port"), "{py}");
    assert_eq!(py.value("echoed"), "1000", "{py}");
    assert_eq!(py.value("echo_end_stream"), "yes", "{py}");
    // Only the good CONNECT reached the handler.
    assert_eq!(ours.recording.seen.lock().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_tunnels_through_our_server_over_ipv6() {
    require_python_h2!();
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipping HBONE interop IPv6 test: this host has no IPv6 loopback ([::1])");
        return;
    }
    let ours = OurServer::start("[::1]:0").await;
    let py = ours
        .run_client(&[
            "--refuse",
            "400,[::2]:8080",
            "--authority",
            "[::1]:8080",
            "--payload-bytes",
            "65536",
        ])
        .await;
    py.assert_ok();
    assert_eq!(py.value("echoed"), "65536", "{py}");
    assert_eq!(
        ours.recording.seen.lock()[0].authority,
        "[::1]:8080".parse().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_server_refuses_python_clients_that_are_not_mesh_workloads() {
    require_python_h2!();
    let ours = OurServer::start("127.0.0.1:0").await;
    // Another mesh's root under the same name as ours, and one under another name.
    let twin = CertificateAuthority::generate(TD).unwrap();
    let stranger = root_named("Some other mesh");
    let (twin_cert, twin_key) = ours.pki.issue(&twin, &id("py", "client"), "twin");
    let (stranger_cert, stranger_key) = ours.pki.issue(&stranger, &id("py", "client"), "stranger");
    let server_id = id("demo", "server");
    let good = ours.client_args_as(&ours.cert, &ours.key, &server_id);
    let tunnel = args(&["--authority", "127.0.0.1:8080", "--payload-bytes", "10"]);

    // (what, the client's arguments, the alert OpenSSL reports, in words)
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "TLS 1.2",
            [good.clone(), args(&["--tls-version", "1.2"])].concat(),
            "protocol version",
        ),
        (
            "ALPN http/1.1 only",
            [good.clone(), args(&["--alpn", "http/1.1"])].concat(),
            "no application protocol",
        ),
        (
            "no client certificate",
            args(&[
                "--addr",
                &ours.server.addr.to_string(),
                "--root",
                &ours.root,
                "--expect-id",
                server_id.as_str(),
            ]),
            "certificate required",
        ),
        (
            "a certificate from another root with another name",
            ours.client_args_as(&stranger_cert, &stranger_key, &server_id),
            "unknown ca",
        ),
        (
            // The issuer name matches, the signature does not: rustls answers a bad signature
            // with decrypt_error.
            "a certificate from another root with our root's name",
            ours.client_args_as(&twin_cert, &twin_key, &server_id),
            "decrypt error",
        ),
    ];
    for (what, mut a, alert) in cases {
        a.extend(tunnel.iter().cloned());
        let py = run("hbone_client.py", a).await;
        assert_eq!(py.code, Some(1), "{what}: Python's client must fail\n{py}");
        let err = py
            .get("tls_error")
            .unwrap_or_else(|| panic!("{what}: no TLS error\n{py}"));
        // OpenSSL names alerts as reason codes or as text, depending on the version.
        let words = err.to_lowercase().replace('_', " ");
        assert!(
            words.contains(alert),
            "{what}: expected {alert} from TLS, got {err}\n{py}"
        );
    }
    assert!(
        ours.recording.seen.lock().is_empty(),
        "no refused client reached the handler"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_checks_our_server_identity() {
    require_python_h2!();
    let ours = OurServer::start("127.0.0.1:0").await;
    let py = ours
        .run_client_expecting(&id("demo", "other"), &["--authority", "127.0.0.1:8080"])
        .await;
    assert_eq!(py.code, Some(1), "{py}");
    assert!(
        py.value("error")
            .contains("spiffe://cluster.local/ns/demo/sa/server"),
        "{py}"
    );
}
