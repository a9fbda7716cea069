//! The client's pool over real sockets: a peer that stalls its handshake delays only tunnels to
//! itself, and only up to the handshake timeout; idle connections are closed by either side.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;
use ambit_proto::hbone::{
    ClientSettings, ConnectionLimits, HandshakeStage, HboneClient, HboneError, ServerSettings,
    TcpDialer,
};
use ambit_proto::identity::CertificateAuthority;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// Accepts TCP connections and never says a word; counts them.
async fn stalling_peer() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    tokio::spawn({
        let accepted = accepted.clone();
        async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::Relaxed);
                held.push(tcp);
            }
        }
    });
    (addr, accepted)
}

fn client_with(certs: ambit_proto::identity::CertManager, settings: ClientSettings) -> HboneClient {
    HboneClient::with_settings(certs, Arc::new(TcpDialer), settings)
}

fn assert_handshake_timeout(result: Result<ambit_proto::hbone::Tunnel, HboneError>) {
    match result {
        Err(
            e @ HboneError::HandshakeTimeout {
                stage: HandshakeStage::Tls,
                ..
            },
        ) => {
            assert!(e.endpoint_unreachable(), "{e}");
        }
        Err(e) => panic!("expected a TLS handshake timeout, got {e:?}"),
        Ok(_) => panic!("a tunnel through a peer that never answers opened"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_peer_delays_only_its_own_tunnels_and_only_up_to_the_timeout() {
    let certs = manager(CertificateAuthority::generate(TD).unwrap());
    let good = serve(
        &certs,
        &id("demo", "server"),
        Arc::new(Echo::default()),
        "127.0.0.1:0",
    )
    .await;
    let (stalled_addr, accepted) = stalling_peer().await;
    let client = client_with(
        certs,
        ClientSettings {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            ..ClientSettings::default()
        },
    );
    let source = id("demo", "client");
    let to_stalled = request(&source, stalled_addr, &id("demo", "server"));

    // Two tunnels to the stalled peer at once: they share one dial, and its failure.
    let started = Instant::now();
    let first = tokio::spawn({
        let (client, req) = (client.clone(), to_stalled.clone());
        async move { (client.connect(&req).await, started.elapsed()) }
    });
    let second = tokio::spawn({
        let (client, req) = (client.clone(), to_stalled.clone());
        async move { (client.connect(&req).await, started.elapsed()) }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Meanwhile a tunnel to another peer opens without waiting for them.
    let other = Instant::now();
    let mut tunnel = client
        .connect(&request(&source, good.addr, &id("demo", "server")))
        .await
        .unwrap();
    assert_eq!(
        echo_once(&mut tunnel, b"not blocked").await.unwrap(),
        b"not blocked"
    );
    let other = other.elapsed();
    assert!(
        other < HANDSHAKE_TIMEOUT / 2,
        "a tunnel to a healthy peer took {other:?} while another peer stalled"
    );

    for task in [first, second] {
        let (result, took) = task.await.unwrap();
        assert_handshake_timeout(result);
        assert!(took <= 2 * HANDSHAKE_TIMEOUT, "failed after {took:?}");
    }
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        1,
        "the burst shared one dial"
    );

    // A later tunnel to the stalled peer dials again and fails within the timeout too.
    let again = Instant::now();
    assert_handshake_timeout(client.connect(&to_stalled).await);
    assert!(
        again.elapsed() <= 2 * HANDSHAKE_TIMEOUT,
        "{:?}",
        again.elapsed()
    );
    assert_eq!(accepted.load(Ordering::Relaxed), 2);
    // The failed destination left nothing in the pool.
    assert_eq!(client.pooled_destinations(), 1);
    assert_eq!(client.open_connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pooled_connections_are_closed_and_leave_the_pool() {
    let certs = manager(CertificateAuthority::generate(TD).unwrap());
    let server = serve(
        &certs,
        &id("demo", "server"),
        Arc::new(Echo::default()),
        "127.0.0.1:0",
    )
    .await;
    let idle = Duration::from_millis(500);
    let client = client_with(
        certs,
        ClientSettings {
            idle_timeout: idle,
            ..ClientSettings::default()
        },
    );
    let req = request(&id("demo", "client"), server.addr, &id("demo", "server"));

    // An open tunnel keeps its connection, however long it is quiet.
    let mut tunnel = client.connect(&req).await.unwrap();
    tokio::time::sleep(3 * idle).await;
    assert_eq!(
        echo_once(&mut tunnel, b"still here").await.unwrap(),
        b"still here"
    );
    assert_eq!(client.open_connections(), 1);
    drop(tunnel);

    assert!(
        eventually(Duration::from_secs(10), || client.open_connections() == 0
            && client.pooled_destinations() == 0)
        .await,
        "{} connections, {} destinations pooled",
        client.open_connections(),
        client.pooled_destinations()
    );
    // The next tunnel dials afresh.
    let mut tunnel = client.connect(&req).await.unwrap();
    assert_eq!(echo_once(&mut tunnel, b"again").await.unwrap(), b"again");
    assert_eq!(client.connections_opened(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_closes_idle_connections_with_goaway() {
    let certs = manager(CertificateAuthority::generate(TD).unwrap());
    let limits = Arc::new(ConnectionLimits::default());
    let idle = Duration::from_millis(500);
    let server = serve_with(
        &certs,
        &id("demo", "server"),
        Arc::new(Echo::default()),
        "127.0.0.1:0",
        ServerSettings {
            idle_timeout: idle,
            limits: limits.clone(),
            ..ServerSettings::default()
        },
    )
    .await;
    let client = client(certs);
    let req = request(&id("demo", "client"), server.addr, &id("demo", "server"));

    let mut tunnel = client.connect(&req).await.unwrap();
    tokio::time::sleep(3 * idle).await;
    assert_eq!(echo_once(&mut tunnel, b"busy").await.unwrap(), b"busy");
    assert_eq!(limits.idle_closed(), 0);
    drop(tunnel);

    assert!(
        eventually(Duration::from_secs(10), || limits.connections() == 0
            && client.open_connections() == 0)
        .await,
        "server holds {}, client {}",
        limits.connections(),
        client.open_connections()
    );
    assert_eq!(limits.idle_closed(), 1);
    let mut tunnel = client.connect(&req).await.unwrap();
    assert_eq!(echo_once(&mut tunnel, b"again").await.unwrap(), b"again");
}
