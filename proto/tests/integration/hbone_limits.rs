//! What peers can make an HBONE server hold, over real sockets on loopback: stalled handshakes
//! are closed at the handshake timeout (TLS and the HTTP/2 preface alike) without hurting
//! tunnels on established connections, and connections over a limit are refused at once and
//! counted by the limit that refused them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;
use ambit_proto::hbone::{
    ConnectionLimits, HboneError, Http2Failure, Limit, LimitSettings, ServerSettings,
};
use ambit_proto::identity::{CertManager, CertificateAuthority, client_config};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const FLOOD: usize = 2_000;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest an attacking connection may stay open, as its client sees it (see below).
const HELD_AT_MOST: Duration = Duration::from_secs(12);

/// Reads until the peer closes (EOF or an error); returns when it did.
async fn closed_by_peer(mut conn: impl AsyncRead + Unpin) -> Instant {
    let mut buf = [0u8; 512];
    loop {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return Instant::now(),
            Ok(_) => {}
        }
    }
}

/// The first bytes of a TLS ClientHello record, then nothing: a handshake left half-way.
async fn half_tls(addr: SocketAddr) -> (Instant, Instant) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let opened = Instant::now();
    let _ = tcp
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .await;
    (opened, closed_by_peer(tcp).await)
}

/// A full mutual-TLS handshake, then no HTTP/2 preface.
async fn tls_without_preface(addr: SocketAddr, connector: TlsConnector) -> (Instant, Instant) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let opened = Instant::now();
    match connector
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
    {
        Ok(tls) => (opened, closed_by_peer(tls).await),
        // The server's timeout can end a handshake the loaded machine had not finished.
        Err(_) => (opened, Instant::now()),
    }
}

/// The soft limit on open files, from /proc/self/limits.
fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse().ok())
        .unwrap_or(u64::MAX)
}

fn wide_limits() -> Arc<ConnectionLimits> {
    Arc::new(ConnectionLimits::new(LimitSettings {
        max_handshakes: 3 * FLOOD,
        max_connections: 3 * FLOOD,
        max_connections_per_identity: 3 * FLOOD,
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_are_closed_at_the_timeout_while_tunnels_go_on() {
    // Both ends of every attacking connection live in this process.
    let needed = 4 * FLOOD as u64 + 1_000;
    assert!(
        open_files_limit() >= needed,
        "this test holds {needed} fds at its peak but the open-files limit is {}: raise it (`ulimit -n {needed}`)",
        open_files_limit()
    );
    let certs = manager(CertificateAuthority::generate(TD).unwrap());
    let limits = wide_limits();
    let server = serve_with(
        &certs,
        &id("demo", "server"),
        Arc::new(Echo::default()),
        "127.0.0.1:0",
        ServerSettings {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            limits: limits.clone(),
            ..ServerSettings::default()
        },
    )
    .await;
    let addr = server.addr;

    // A steady client, connected before the flood, opening tunnels all through it.
    let steady = client(certs.clone());
    let req = request(&id("demo", "client"), addr, &id("demo", "server"));
    let mut first = steady.connect(&req).await.unwrap();
    assert_eq!(echo_once(&mut first, b"warm").await.unwrap(), b"warm");
    drop(first);
    let baseline = open_fds();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let steady_task = tokio::spawn({
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                let outcome = match steady.connect(&req).await {
                    Ok(mut t) => echo_once(&mut t, b"steady")
                        .await
                        .is_ok_and(|b| b == b"steady"),
                    Err(_) => false,
                };
                let counter = if outcome { &ok } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });

    let connector = {
        let watch = certs.watch(&id("demo", "attacker")).await.unwrap();
        let config = client_config(watch, certs.trust_bundle(), id("demo", "server")).unwrap();
        TlsConnector::from(Arc::new(config))
    };
    let started = Instant::now();
    let mut flood = Vec::with_capacity(2 * FLOOD);
    for _ in 0..FLOOD {
        flood.push(tokio::spawn(half_tls(addr)));
        flood.push(tokio::spawn(tls_without_preface(addr, connector.clone())));
    }
    // Every attacking connection is open at once at some point.
    let mut peak = 0;
    let all_open = eventually(Duration::from_secs(10), || {
        peak = peak.max(open_fds());
        peak >= baseline + 2 * FLOOD
    })
    .await;
    let mut worst = Duration::ZERO;
    for task in flood {
        // Bounded, so a server that holds stalled handshakes fails the test instead of hanging it.
        let (opened, closed) = tokio::time::timeout(2 * HELD_AT_MOST, task)
            .await
            .expect("an attacking connection was still held long after the flood")
            .unwrap();
        worst = worst.max(closed - opened);
    }
    let flood_over = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    steady_task.await.unwrap();

    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "flood of {}: peak {peak} fds (baseline {baseline}), longest held {worst:?}, over in {flood_over:?}; steady tunnels {ok} ok, {failed} failed",
        2 * FLOOD
    );
    assert!(
        all_open,
        "the flood never held {} connections at once (peak {peak} fds, baseline {baseline})",
        2 * FLOOD
    );
    // Measured from the attacker's side, the hold includes the wait to be accepted: the
    // attackers' own TLS work saturates the cores the server runs on, so alone this test sees
    // ~1.5 s and beside the rest of the suite on 2 cores up to ~5.5 s. Without a timeout on
    // the HTTP/2 preface the TLS-only half would be held until the guard above gives up; the
    // counters below say that the timeout is what closed them.
    assert!(
        worst <= HELD_AT_MOST,
        "a stalled handshake was held {worst:?} (timeout {HANDSHAKE_TIMEOUT:?})"
    );
    assert!(
        ok >= 5 && failed == 0,
        "steady tunnels: {ok} ok, {failed} failed"
    );
    assert_eq!(
        limits.handshake_timeouts() + limits.handshake_failures(),
        2 * FLOOD as u64,
        "every attacking connection ended in its handshake"
    );
    assert!(
        limits.handshake_timeouts() >= FLOOD as u64,
        "{} timeouts",
        limits.handshake_timeouts()
    );
    assert!(Limit::ALL.iter().all(|l| limits.refused(*l) == 0));
    // At most the steady client's connection is left (it closes with its client), and the
    // fds went with the rest. Other tests of this binary run alongside, hence the slack.
    let settled = eventually(Duration::from_secs(5), || {
        limits.handshakes() == 0 && limits.connections() <= 1 && open_fds() <= baseline + 150
    })
    .await;
    assert!(
        settled,
        "after the flood ({flood_over:?}): {} handshakes, {} connections, {} fds (baseline {baseline}, peak {peak})",
        limits.handshakes(),
        limits.connections(),
        open_fds()
    );
}

async fn stalled(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

/// Whether the server closed `conn` within `within` (it sends nothing before a ClientHello).
async fn closed_within(conn: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(within, conn.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

async fn tunnel_from(
    certs: &CertManager,
    source: &str,
    addr: SocketAddr,
) -> Result<ambit_proto::hbone::Tunnel, HboneError> {
    let c = client(certs.clone());
    let mut t = c
        .connect(&request(&id("demo", source), addr, &id("demo", "server")))
        .await?;
    assert_eq!(echo_once(&mut t, b"x").await.unwrap(), b"x");
    Ok(t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_a_limit_are_refused_at_once_and_counted() {
    let certs = manager(CertificateAuthority::generate(TD).unwrap());
    let limits = Arc::new(ConnectionLimits::new(LimitSettings {
        max_handshakes: 4,
        max_connections: 8,
        max_connections_per_identity: 2,
    }));
    // Long, so a connection closed within a second was refused, not timed out.
    let timeout = Duration::from_secs(10);
    let server = serve_with(
        &certs,
        &id("demo", "server"),
        Arc::new(Echo::default()),
        "127.0.0.1:0",
        ServerSettings {
            handshake_timeout: timeout,
            limits: limits.clone(),
            ..ServerSettings::default()
        },
    )
    .await;
    let addr = server.addr;

    // Per identity: a third connection from demo/client is refused with GOAWAY, which the
    // client reports as such; another identity still gets in.
    let c1 = tunnel_from(&certs, "client", addr).await.unwrap();
    let c2 = tunnel_from(&certs, "client", addr).await.unwrap();
    let err = tunnel_from(&certs, "client", addr).await.err().unwrap();
    assert!(
        matches!(
            &err,
            HboneError::Http2 { cause: Http2Failure::GoAway { code }, .. }
                if h2::Reason::from(*code) == h2::Reason::ENHANCE_YOUR_CALM
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("connection limits"), "{err}");
    assert_eq!(limits.refused(Limit::ConnectionsPerIdentity), 1);
    let d1 = tunnel_from(&certs, "other", addr).await.unwrap();
    let d2 = tunnel_from(&certs, "other", addr).await.unwrap();
    assert!(eventually(Duration::from_secs(5), || limits.connections() == 4).await);

    // Node-wide handshakes: four stall, the fifth is closed at once.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(stalled(addr).await);
    }
    assert!(eventually(Duration::from_secs(5), || limits.handshakes() == 4).await);
    assert_eq!(limits.connections(), 8);
    // Node-wide connections: 4 established + 4 handshaking; the ninth is closed at once.
    let mut over = stalled(addr).await;
    assert!(closed_within(&mut over, Duration::from_secs(1)).await);
    assert_eq!(limits.refused(Limit::Connections), 1);

    // With a connection slot free but every handshake slot taken, the handshake limit refuses.
    drop((c2, d2));
    assert!(eventually(Duration::from_secs(5), || limits.connections() < 8).await);
    let mut over = stalled(addr).await;
    assert!(closed_within(&mut over, Duration::from_secs(1)).await);
    assert_eq!(limits.refused(Limit::Handshakes), 1);
    // The admitted ones are still held (until the timeout).
    for conn in &mut held {
        assert!(!closed_within(conn, Duration::from_millis(100)).await);
    }
    drop(held);
    assert!(eventually(Duration::from_secs(5), || limits.handshakes() == 0).await);
    drop((c1, d1));
    assert!(eventually(Duration::from_secs(5), || limits.connections() == 0).await);
    assert_eq!(limits.handshake_timeouts(), 0);
}
