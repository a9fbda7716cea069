//! Who may talk to whom: bad certificates on either side are refused with the reason named,
//! junk on the HBONE port harms no one else, and certificate rotation keeps tunnels alive.

use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use ambit_proto::identity::{CertManager, CertificateAuthority};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn expired_manager(ca: CertificateAuthority) -> CertManager {
    let bundle = ca.trust_bundle();
    CertManager::new(
        Arc::new(FixedValidityCa {
            ca,
            validity: expired(),
        }),
        bundle,
    )
}

/// The same root key, but signing for another trust domain.
fn foreign_domain_ca(ca: &CertificateAuthority, key_pem: &str) -> CertificateAuthority {
    CertificateAuthority::from_pem("other.mesh", ca.root_pem(), key_pem).unwrap()
}

async fn connect_err(
    client_certs: CertManager,
    server_certs: &CertManager,
    expected: &str,
) -> String {
    let server = serve(
        server_certs,
        &id("demo", "server"),
        Arc::new(Echo::default()),
        "127.0.0.1:0",
    )
    .await;
    let client = client(client_certs);
    let expected = expected.parse().unwrap();
    let result = client
        .connect(&request(&id("demo", "client"), server.addr, &expected))
        .await;
    match result {
        Ok(mut tunnel) => panic!(
            "tunnel opened; echo says {:?}",
            echo_once(&mut tunnel, b"x").await
        ),
        Err(e) => e.to_string(),
    }
}

const SERVER_ID: &str = "spiffe://cluster.local/ns/demo/sa/server";

#[tokio::test]
async fn client_refuses_a_server_from_another_root() {
    let ours = manager(CertificateAuthority::generate(TD).unwrap());
    let theirs = manager(CertificateAuthority::generate(TD).unwrap());
    let err = connect_err(ours, &theirs, SERVER_ID).await;
    // Both roots carry the same name, so the chain is rejected on its signature.
    assert!(
        err.contains("does not verify against the mesh root"),
        "{err}"
    );
}

#[tokio::test]
async fn client_refuses_an_expired_server_certificate() {
    let ca = CertificateAuthority::generate(TD).unwrap();
    let server_certs =
        expired_manager(CertificateAuthority::from_pem(TD, ca.root_pem(), &ca_key(&ca)).unwrap());
    let err = connect_err(manager(ca), &server_certs, SERVER_ID).await;
    assert!(err.contains("expired"), "{err}");
}

#[tokio::test]
async fn client_refuses_a_server_with_the_wrong_identity() {
    let certs = manager(CertificateAuthority::generate(TD).unwrap());
    let err = connect_err(
        certs.clone(),
        &certs,
        "spiffe://cluster.local/ns/demo/sa/reviews",
    )
    .await;
    assert!(
        err.contains("peer identity spiffe://cluster.local/ns/demo/sa/server is not the expected spiffe://cluster.local/ns/demo/sa/reviews"),
        "{err}"
    );
}

#[tokio::test]
async fn server_refuses_a_client_from_another_root() {
    let ours = CertificateAuthority::generate(TD).unwrap();
    let server_certs =
        manager(CertificateAuthority::from_pem(TD, ours.root_pem(), &ca_key(&ours)).unwrap());
    // The client trusts the server's root but holds a certificate from a root of its own.
    let client_certs = CertManager::new(
        Arc::new(ambit_proto::identity::LocalCa {
            ca: Arc::new(CertificateAuthority::generate(TD).unwrap()),
            ttl: Duration::from_secs(3600),
        }),
        ours.trust_bundle(),
    );
    let err = connect_err(client_certs, &server_certs, SERVER_ID).await;
    assert!(err.contains("refused our certificate"), "{err}");
}

#[tokio::test]
async fn server_refuses_an_expired_client_certificate() {
    let ca = CertificateAuthority::generate(TD).unwrap();
    let client_certs =
        expired_manager(CertificateAuthority::from_pem(TD, ca.root_pem(), &ca_key(&ca)).unwrap());
    let err = connect_err(client_certs, &manager(ca), SERVER_ID).await;
    assert!(err.contains("refused our certificate"), "{err}");
}

#[tokio::test]
async fn server_refuses_a_client_identity_outside_its_trust_domain() {
    let ca = CertificateAuthority::generate(TD).unwrap();
    let key = ca_key(&ca);
    let foreign = foreign_domain_ca(&ca, &key);
    // The foreign client trusts our root (same key) and presents spiffe://other.mesh/...
    let foreign_certs = CertManager::new(
        Arc::new(ambit_proto::identity::LocalCa {
            ca: Arc::new(foreign),
            ttl: Duration::from_secs(3600),
        }),
        ca.trust_bundle(),
    );
    let server_certs = manager(ca);
    let server = serve(
        &server_certs,
        &id("demo", "server"),
        Arc::new(Echo::default()),
        "127.0.0.1:0",
    )
    .await;
    let client = client(foreign_certs);
    let source = "spiffe://other.mesh/ns/demo/sa/client".parse().unwrap();
    let err = client
        .connect(&request(&source, server.addr, &id("demo", "server")))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("refused our certificate"), "{err}");
}

fn ca_key(ca: &CertificateAuthority) -> String {
    ca.root_key_pem()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_on_the_hbone_port_harms_no_other_tunnel() {
    let certs = manager(CertificateAuthority::generate(TD).unwrap());
    let echo = Arc::new(Echo::default());
    let server = serve(&certs, &id("demo", "server"), echo.clone(), "127.0.0.1:0").await;
    let client = client(certs.clone());
    let req = request(&id("demo", "client"), server.addr, &id("demo", "server"));
    let mut open = client.connect(&req).await.unwrap();
    assert_eq!(echo_once(&mut open, b"before").await.unwrap(), b"before");

    for junk in [
        &b"\x16\x03\x01\x00\x05garbage garbage garbage"[..],
        b"GET / HTTP/1.1\r\nHost: reviews\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    ] {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(junk).await.unwrap();
        let mut buf = [0u8; 256];
        // The server answers with at most a TLS alert, then closes.
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "server kept a junk connection open: {junk:?}"
        );
    }

    // Garbage inside an authenticated connection: valid TLS, then bytes that are not HTTP/2.
    let watch = certs.watch(&id("demo", "client")).await.unwrap();
    let config =
        ambit_proto::identity::client_config(watch, certs.trust_bundle(), id("demo", "server"))
            .unwrap();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::IpAddress(server.addr.ip().into()),
            tcp,
        )
        .await
        .unwrap();
    tls.write_all(b"this is not an HTTP/2 preface at all\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut buf)).await;
    assert!(
        ended.is_ok(),
        "server kept a garbage HTTP/2 connection open"
    );

    assert_eq!(echo_once(&mut open, b"after").await.unwrap(), b"after");
    let mut fresh = client.connect(&req).await.unwrap();
    assert_eq!(echo_once(&mut fresh, b"fresh").await.unwrap(), b"fresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_open_tunnels_and_new_tunnels_use_the_new_certificate() {
    let certs = manager(CertificateAuthority::generate(TD).unwrap());
    let echo = Arc::new(Echo::default());
    let server = serve(&certs, &id("demo", "server"), echo.clone(), "127.0.0.1:0").await;
    let client = client(certs.clone());
    let source = id("demo", "client");
    let req = request(&source, server.addr, &id("demo", "server"));

    let mut old = client.connect(&req).await.unwrap();
    assert_eq!(echo_once(&mut old, b"one").await.unwrap(), b"one");
    let first_serial = echo.peers.lock()[0].1.clone();

    // Both sides renew mid-stream.
    let renewed = certs.rotate(&source).await.unwrap();
    certs.rotate(&id("demo", "server")).await.unwrap();
    assert_ne!(renewed.serial(), first_serial);

    assert_eq!(
        echo_once(&mut old, b"two").await.unwrap(),
        b"two",
        "open tunnel survives rotation"
    );
    let mut new = client.connect(&req).await.unwrap();
    assert_eq!(echo_once(&mut new, b"three").await.unwrap(), b"three");
    let peers = echo.peers.lock();
    assert_eq!(
        peers[1].1,
        renewed.serial(),
        "the new tunnel presents the renewed certificate"
    );
    assert_ne!(
        peers[0].2, peers[1].2,
        "the new tunnel runs on a new connection"
    );
    assert_eq!(client.connections_opened(), 2);
}
