//! Over real sockets on loopback: an HBONE server (the destination's ztunnel) forwarding
//! tunnels to hyper HTTP/1.1 and HTTP/2 servers (the pods), and raw TCP servers that misbehave.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ambit_proto::drain::{self, DrainTrigger};
use ambit_proto::hbone::{
    HboneClient, HboneError, HboneServer, Keepalive, ServerSettings, TcpDialer, TlsFailure,
    TunnelHandler, TunnelRequest,
};
use ambit_proto::identity::{CertManager, CertificateAuthority, SpiffeId};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::body;

const TD: &str = "cluster.local";
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new(TD, "demo", sa).unwrap()
}

// ---------------------------------------------------------------------------------------------
// The pods: hyper servers that count their connections.

#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    open: AtomicUsize,
}

struct Backend {
    addr: SocketAddr,
    counts: Arc<Counts>,
}

/// `/empty` answers 204; anything else 200 with "<version> <authority or Host> <path>".
async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/empty" {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NO_CONTENT;
        return Ok(r);
    }
    let host = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .map(|h| h.to_str().unwrap().to_string())
        })
        .unwrap_or_default();
    let text = format!("{:?} {host} {}", req.version(), req.uri().path());
    Ok(Response::new(Full::new(Bytes::from(text))))
}

async fn backend(version: HttpVersion) -> Backend {
    pod(move |io| async move {
        let _ = match version {
            HttpVersion::Http1 => {
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service_fn(answer))
                    .await
            }
            HttpVersion::Http2 => {
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service_fn(answer))
                    .await
            }
        };
    })
    .await
}

/// A pod on loopback serving each connection it accepts with `serve`, counting them.
async fn pod<F, Fut>(serve: F) -> Backend
where
    F: Fn(TokioIo<TcpStream>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            c.accepted.fetch_add(1, Ordering::SeqCst);
            c.open.fetch_add(1, Ordering::SeqCst);
            let (c, served) = (c.clone(), serve(TokioIo::new(tcp)));
            tokio::spawn(async move {
                served.await;
                c.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Backend { addr, counts }
}

/// A port nothing listens on.
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

// ---------------------------------------------------------------------------------------------
// The destination's ztunnel: HBONE in, TCP to the tunnel's authority.

#[derive(Default)]
struct Forward {
    /// `forwarded` and `traceparent` of each tunnel.
    seen: Mutex<Vec<(Option<SocketAddr>, Option<String>)>>,
}

impl TunnelHandler for Forward {
    async fn handle(&self, request: TunnelRequest) {
        let traceparent = request
            .headers
            .get("traceparent")
            .map(|v| v.to_str().unwrap().to_string());
        self.seen
            .lock()
            .push((request.forwarded_for(), traceparent));
        let mut tcp = match TcpStream::connect(request.authority).await {
            Ok(tcp) => tcp,
            Err(e) => {
                request.refuse(StatusCode::SERVICE_UNAVAILABLE, &format!("target: {e}"));
                return;
            }
        };
        let Ok(mut tunnel) = request.accept() else {
            return;
        };
        let _ = tokio::io::copy_bidirectional(&mut tunnel, &mut tcp).await;
    }
}

struct Mesh {
    certs: CertManager,
    hbone_addr: SocketAddr,
    forward: Arc<Forward>,
    _drain: DrainTrigger,
}

/// An HBONE server on loopback presenting the identity `pod`.
async fn mesh() -> Mesh {
    let ca = CertificateAuthority::generate(TD).unwrap();
    let certs = CertManager::with_local_ca(ca, Duration::from_secs(3600));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hbone_addr = listener.local_addr().unwrap();
    let server = HboneServer::new(
        certs.watch(&id("pod")).await.unwrap(),
        certs.trust_bundle(),
        ServerSettings::default(),
    )
    .unwrap();
    let forward = Arc::new(Forward::default());
    let (trigger, watch) = drain::channel();
    tokio::spawn(server.serve(listener, forward.clone(), watch));
    Mesh {
        certs,
        hbone_addr,
        forward,
        _drain: trigger,
    }
}

impl Mesh {
    fn upstream(&self, settings: UpstreamSettings) -> (Upstream, HboneClient) {
        let hbone = HboneClient::new(
            self.certs.clone(),
            Arc::new(TcpDialer),
            Keepalive::default(),
        );
        let settings = UpstreamSettings {
            hbone_port: self.hbone_addr.port(),
            ..settings
        };
        (
            Upstream::new(hbone.clone(), id("waypoint"), settings),
            hbone,
        )
    }
}

fn hbone_target(endpoint: SocketAddr, version: HttpVersion, identity: &str) -> Target {
    Target {
        endpoint,
        transport: Transport::Hbone {
            identity: id(identity),
        },
        version,
    }
}

fn plain_target(endpoint: SocketAddr, version: HttpVersion) -> Target {
    Target {
        endpoint,
        transport: Transport::Plain,
        version,
    }
}

/// A request as an HTTP/1.1 client sends it: origin form and `Host`.
fn get(path: &str) -> Request<body::Body> {
    Request::builder()
        .uri(path)
        .header(http::header::HOST, "reviews.demo:9080")
        .header("traceparent", TRACEPARENT)
        .body(body::empty())
        .unwrap()
}

async fn text(response: Response<body::Body>) -> String {
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

const CLIENT: &str = "10.1.2.3:45678";

fn client() -> Option<SocketAddr> {
    Some(CLIENT.parse().unwrap())
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn http1_over_hbone_reuses_the_connection() {
    let mesh = mesh().await;
    let pod = backend(HttpVersion::Http1).await;
    let (upstream, hbone) = mesh.upstream(UpstreamSettings::default());
    let target = hbone_target(pod.addr, HttpVersion::Http1, "pod");

    for path in ["/one", "/two"] {
        let response = upstream.send(&target, client(), get(path)).await.unwrap();
        assert_eq!(
            text(response).await,
            format!("HTTP/1.1 reviews.demo:9080 {path}")
        );
    }
    // A body-less response, dropped unread, leaves the connection reusable too.
    let response = upstream
        .send(&target, client(), get("/empty"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    drop(response);
    let response = upstream
        .send(&target, client(), get("/three"))
        .await
        .unwrap();
    text(response).await;

    assert_eq!(hbone.connections_opened(), 1);
    assert_eq!(pod.counts.accepted.load(Ordering::SeqCst), 1, "one tunnel");
    let stats = upstream.stats();
    assert_eq!((stats.idle_http1, stats.busy_http1), (1, 0), "{stats:?}");
    // The tunnel said who the original client was, and carried the trace context.
    let seen = mesh.forward.seen.lock().clone();
    assert_eq!(
        seen,
        vec![(Some(CLIENT.parse().unwrap()), Some(TRACEPARENT.to_string()))]
    );
}

#[tokio::test]
async fn http2_over_hbone_multiplexes_one_connection() {
    let mesh = mesh().await;
    let pod = backend(HttpVersion::Http2).await;
    let (upstream, hbone) = mesh.upstream(UpstreamSettings::default());
    let target = hbone_target(pod.addr, HttpVersion::Http2, "pod");

    // Concurrent first requests share one dial.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (upstream, target) = (upstream.clone(), target.clone());
        tasks.spawn(async move {
            let response = upstream
                .send(&target, None, get(&format!("/r{i}")))
                .await
                .unwrap();
            // `Host` became `:authority`.
            assert_eq!(
                text(response).await,
                format!("HTTP/2.0 reviews.demo:9080 /r{i}")
            );
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let response = upstream.send(&target, None, get("/last")).await.unwrap();
    text(response).await;

    assert_eq!(hbone.connections_opened(), 1);
    assert_eq!(pod.counts.accepted.load(Ordering::SeqCst), 1);
    let stats = upstream.stats();
    assert_eq!((stats.http2, stats.http2_streams), (1, 0), "{stats:?}");
}

#[tokio::test]
async fn http2_opens_another_connection_at_the_stream_limit() {
    let pod = backend(HttpVersion::Http2).await;
    let mesh = mesh().await;
    let (upstream, _) = mesh.upstream(UpstreamSettings {
        max_streams_per_connection: 2,
        ..UpstreamSettings::default()
    });
    let target = plain_target(pod.addr, HttpVersion::Http2);
    // Responses held open (bodies unread) keep their streams counted.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(upstream.send(&target, None, get("/")).await.unwrap());
    }
    assert_eq!(pod.counts.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(upstream.stats().http2_streams, 4);
    drop(held);
    assert_eq!(upstream.stats().http2_streams, 0);
    text(upstream.send(&target, None, get("/")).await.unwrap()).await;
    assert_eq!(pod.counts.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_wrong_identity_is_a_connect_failure() {
    let mesh = mesh().await;
    let pod = backend(HttpVersion::Http1).await;
    let (upstream, _) = mesh.upstream(UpstreamSettings::default());
    let target = hbone_target(pod.addr, HttpVersion::Http1, "reviews");

    let err = upstream.send(&target, None, get("/")).await.unwrap_err();
    let UpstreamError::Hbone { source, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(
        matches!(
            &**source,
            HboneError::Tls {
                cause: TlsFailure::WrongIdentity { .. },
                ..
            }
        ),
        "{source:?}"
    );
    assert!(err.request_not_sent());
    assert_eq!(err.response_flag(), "UF");
    assert!(err.endpoint_unreachable());
    assert!(err.to_string().contains(&pod.addr.to_string()), "{err}");
    assert_eq!(pod.counts.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_closed_port_is_a_connect_failure() {
    let port = closed_port();

    // Plain TCP: refused.
    let mesh = mesh().await;
    let (upstream, _) = mesh.upstream(UpstreamSettings::default());
    let err = upstream
        .send(&plain_target(port, HttpVersion::Http1), None, get("/"))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Connect { .. }), "{err:?}");
    assert!(err.request_not_sent());
    assert_eq!(err.response_flag(), "UF");
    assert!(err.to_string().contains(&port.to_string()), "{err}");

    // Behind HBONE: the destination refuses the tunnel with 503 and says why.
    let target = hbone_target(port, HttpVersion::Http2, "pod");
    let err = upstream.send(&target, None, get("/")).await.unwrap_err();
    let UpstreamError::Hbone { source, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(
        matches!(&**source, HboneError::Refused { status, reason, .. }
            if *status == StatusCode::SERVICE_UNAVAILABLE && reason.starts_with("target: ")),
        "{source:?}"
    );
    assert!(err.request_not_sent());
    assert_eq!(err.response_flag(), "UF");
    assert!(err.endpoint_unreachable());
    assert!(err.to_string().contains(&port.to_string()), "{err}");
    // The failed dial is not kept: the next request dials again.
    let err = upstream.send(&target, None, get("/")).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Hbone { .. }), "{err:?}");
}

#[tokio::test]
async fn a_stalled_handshake_times_out() {
    // Accepts TCP, never speaks TLS.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
        }
    });
    let mesh = mesh().await;
    let hbone = HboneClient::new(
        mesh.certs.clone(),
        Arc::new(TcpDialer),
        Keepalive::default(),
    );
    let upstream = Upstream::new(
        hbone,
        id("waypoint"),
        UpstreamSettings {
            connect_timeout: Duration::from_millis(200),
            hbone_port: silent_addr.port(),
            ..UpstreamSettings::default()
        },
    );
    let target = hbone_target(
        SocketAddr::new(silent_addr.ip(), 8080),
        HttpVersion::Http1,
        "pod",
    );
    let started = std::time::Instant::now();
    let err = upstream.send(&target, None, get("/")).await.unwrap_err();
    assert!(
        matches!(err, UpstreamError::ConnectTimeout { timeout, .. } if timeout == Duration::from_millis(200)),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(err.request_not_sent());
    assert_eq!(err.response_flag(), "UF");
}

#[tokio::test]
async fn plain_tcp_targets_work_and_reuse_connections() {
    let mesh = mesh().await;
    let (upstream, hbone) = mesh.upstream(UpstreamSettings::default());
    for version in [HttpVersion::Http1, HttpVersion::Http2] {
        let pod = backend(version).await;
        let target = plain_target(pod.addr, version);
        for _ in 0..3 {
            let response = upstream.send(&target, None, get("/x")).await.unwrap();
            assert!(text(response).await.ends_with("reviews.demo:9080 /x"));
        }
        assert_eq!(pod.counts.accepted.load(Ordering::SeqCst), 1, "{version}");
    }
    assert_eq!(hbone.connections_opened(), 0);
}

/// An HTTP/2 pod whose every response body never ends: its DATA frames are always in flight
/// when the waypoint gives up on a response.
async fn endless_backend() -> Backend {
    pod(|io| async move {
        let endless = service_fn(|_req: Request<Incoming>| async {
            let frames = futures::stream::repeat_with(|| {
                Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from_static(&[0x2a; 1024])))
            });
            Ok::<_, Infallible>(Response::new(http_body_util::StreamBody::new(frames)))
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, endless)
            .await;
    })
    .await
}

/// Responses given up on while the pod is still sending: more than h2's budget of error resets
/// (1,024), so late frames counted as errors would close the connection and show here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_http2_responses_keep_their_connection() {
    const REQUESTS: usize = 2_000;
    const CONCURRENCY: usize = 32;
    let pod = endless_backend().await;
    let mesh = mesh().await;
    let (upstream, _) = mesh.upstream(UpstreamSettings::default());
    let target = plain_target(pod.addr, HttpVersion::Http2);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (upstream, target, next) = (upstream.clone(), target.clone(), next.clone());
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < REQUESTS {
                let response = upstream.send(&target, None, get("/")).await.unwrap();
                let mut body = response.into_body();
                let first = body.frame().await.expect("a first frame").unwrap();
                assert!(first.is_data());
                // Dropped with the pod still sending: the stream is reset (CANCEL).
            }
        });
    }
    let all = async {
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("the requests finish");
    assert_eq!(
        pod.counts.accepted.load(Ordering::SeqCst),
        1,
        "one connection carried every request: late frames of abandoned responses did not close it"
    );
}

/// A raw HTTP/1.1 server: reads each request head, then does `then` with the socket.
async fn raw_server(response: Option<&'static [u8]>) -> (SocketAddr, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            c.accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if let Some(response) = response {
                    tcp.write_all(response).await.unwrap();
                }
                // Then closes, without having said so.
            });
        }
    });
    (addr, counts)
}

#[tokio::test]
async fn a_server_closing_after_the_request_is_not_retry_safe() {
    let (addr, counts) = raw_server(None).await;
    let mesh = mesh().await;
    let (upstream, _) = mesh.upstream(UpstreamSettings::default());
    let err = upstream
        .send(&plain_target(addr, HttpVersion::Http1), None, get("/"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, UpstreamError::ConnectionTerminated { .. }),
        "{err:?}"
    );
    assert!(!err.request_not_sent());
    assert_eq!(err.response_flag(), "UC");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 1, "no retry");
}

#[tokio::test]
async fn a_keep_alive_connection_the_server_closed_is_replaced() {
    let (addr, counts) = raw_server(Some(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")).await;
    let mesh = mesh().await;
    let (upstream, _) = mesh.upstream(UpstreamSettings::default());
    let target = plain_target(addr, HttpVersion::Http1);
    for _ in 0..3 {
        let response = upstream.send(&target, None, get("/")).await.unwrap();
        assert_eq!(text(response).await, "ok");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn an_unread_body_closes_the_http1_connection() {
    let pod = backend(HttpVersion::Http1).await;
    let mesh = mesh().await;
    let (upstream, _) = mesh.upstream(UpstreamSettings::default());
    let target = plain_target(pod.addr, HttpVersion::Http1);
    let response = upstream.send(&target, None, get("/unread")).await.unwrap();
    drop(response);
    assert_eq!(upstream.stats().idle_http1, 0);
    text(upstream.send(&target, None, get("/")).await.unwrap()).await;
    assert_eq!(pod.counts.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn idle_connections_close_and_targets_are_forgotten() {
    let h1 = backend(HttpVersion::Http1).await;
    let h2 = backend(HttpVersion::Http2).await;
    let mesh = mesh().await;
    let (upstream, _) = mesh.upstream(UpstreamSettings {
        idle_timeout: Duration::from_millis(100),
        ..UpstreamSettings::default()
    });
    for (pod, version) in [(&h1, HttpVersion::Http1), (&h2, HttpVersion::Http2)] {
        let target = plain_target(pod.addr, version);
        text(upstream.send(&target, None, get("/")).await.unwrap()).await;
    }
    assert_eq!(upstream.stats().targets, 2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while upstream.stats() != PoolStats::default()
        || h1.counts.open.load(Ordering::SeqCst) + h2.counts.open.load(Ordering::SeqCst) > 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            upstream.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn retain_drops_targets_no_longer_configured() {
    let pod = backend(HttpVersion::Http1).await;
    let mesh = mesh().await;
    let (upstream, _) = mesh.upstream(UpstreamSettings::default());
    let target = plain_target(pod.addr, HttpVersion::Http1);
    text(upstream.send(&target, None, get("/")).await.unwrap()).await;
    assert_eq!(upstream.stats().targets, 1);
    upstream.retain(|t| t != &target);
    assert_eq!(upstream.stats(), PoolStats::default());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while pod.counts.open.load(Ordering::SeqCst) > 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn requests_are_adapted_to_the_upstream_version() {
    // HTTP/2 client to an HTTP/1.1 server: origin form, `Host` from `:authority`.
    let req = Request::builder()
        .uri("http://reviews.demo:9080/a?b=c")
        .version(http::Version::HTTP_2)
        .body(body::empty())
        .unwrap();
    let req = prepare(req, HttpVersion::Http1);
    assert_eq!(req.version(), http::Version::HTTP_11);
    assert_eq!(req.uri(), "/a?b=c");
    assert_eq!(req.headers()[http::header::HOST], "reviews.demo:9080");

    // HTTP/1.1 client to an HTTP/2 server: `:scheme` and `:authority` from `Host`.
    let req = prepare(get("/a?b=c"), HttpVersion::Http2);
    assert_eq!(req.version(), http::Version::HTTP_2);
    assert_eq!(req.uri(), "http://reviews.demo:9080/a?b=c");
    assert!(!req.headers().contains_key(http::header::HOST));

    // Already in the right form: untouched.
    let req = prepare(get("/x"), HttpVersion::Http1);
    assert_eq!(req.uri(), "/x");
    assert_eq!(req.headers()[http::header::HOST], "reviews.demo:9080");
}

// ---------------------------------------------------------------------------------------------
// A service's terms: its pool policy and circuit breaker.

mod terms {
    use std::num::NonZeroU32;

    use super::*;
    use crate::breaker::{Breaker, Limit, Limits, Overflow};

    fn limits(max_connections: u32, max_pending: u32) -> Limits {
        Limits {
            max_connections,
            max_pending,
            max_requests: 1000,
            max_retries: 1000,
        }
    }

    fn accepted(pod: &Backend) -> usize {
        pod.counts.accepted.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn a_policys_idle_timeout_closes_its_connections() {
        let pod = backend(HttpVersion::Http1).await;
        let mesh = mesh().await;
        // The pool's own default (60 s) would keep it far longer than this test waits.
        let (upstream, _) = mesh.upstream(UpstreamSettings::default());
        let pool = PoolPolicy {
            idle_timeout: Some(Duration::from_millis(100)),
            ..PoolPolicy::DEFAULT
        };
        let terms = Terms {
            pool: &pool,
            breaker: None,
        };
        let target = plain_target(pod.addr, HttpVersion::Http1);
        text(
            upstream
                .send_with(&target, None, get("/"), terms)
                .await
                .unwrap(),
        )
        .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while pod.counts.open.load(Ordering::SeqCst) > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}",
                upstream.stats()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn connections_are_retired_after_max_requests_per_connection() {
        for version in [HttpVersion::Http1, HttpVersion::Http2] {
            let pod = backend(version).await;
            let mesh = mesh().await;
            let (upstream, _) = mesh.upstream(UpstreamSettings::default());
            let pool = PoolPolicy {
                max_requests_per_connection: NonZeroU32::new(2),
                ..PoolPolicy::DEFAULT
            };
            let terms = Terms {
                pool: &pool,
                breaker: None,
            };
            let target = plain_target(pod.addr, version);
            for _ in 0..6 {
                text(
                    upstream
                        .send_with(&target, None, get("/"), terms)
                        .await
                        .unwrap(),
                )
                .await;
            }
            assert_eq!(accepted(&pod), 3, "{version}: two requests per connection");
        }
    }

    #[tokio::test]
    async fn without_multiplexing_each_http2_request_in_flight_has_its_connection() {
        let pod = backend(HttpVersion::Http2).await;
        let mesh = mesh().await;
        let (upstream, _) = mesh.upstream(UpstreamSettings::default());
        let pool = PoolPolicy {
            multiplex: false,
            ..PoolPolicy::DEFAULT
        };
        let terms = Terms {
            pool: &pool,
            breaker: None,
        };
        let target = plain_target(pod.addr, HttpVersion::Http2);
        // Unread bodies keep their streams open.
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(
                upstream
                    .send_with(&target, None, get("/"), terms)
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(accepted(&pod), 3);
        drop(held);
        // Free again: reused one request at a time.
        for _ in 0..3 {
            text(
                upstream
                    .send_with(&target, None, get("/"), terms)
                    .await
                    .unwrap(),
            )
            .await;
        }
        assert_eq!(accepted(&pod), 3);
    }

    /// At max_connections a request waits (pending) for a connection to close; past
    /// max_pending it is refused at once.
    #[tokio::test]
    async fn at_the_connection_limit_requests_wait_and_past_max_pending_are_refused() {
        for version in [HttpVersion::Http1, HttpVersion::Http2] {
            let pod = backend(version).await;
            let mesh = mesh().await;
            let (upstream, _) = mesh.upstream(UpstreamSettings::default());
            let breaker = Breaker::new();
            let limits = limits(2, 1);
            let pool = PoolPolicy {
                multiplex: false,
                ..PoolPolicy::DEFAULT
            };
            let target = plain_target(pod.addr, version);
            let send = |path: &'static str| {
                let (upstream, target, breaker, pool, limits) = (
                    upstream.clone(),
                    target.clone(),
                    breaker.clone(),
                    pool.clone(),
                    limits,
                );
                async move {
                    let terms = Terms {
                        pool: &pool,
                        breaker: Some((&breaker, &limits)),
                    };
                    upstream.send_with(&target, None, get(path), terms).await
                }
            };
            let mut held = vec![send("/a").await.unwrap(), send("/b").await.unwrap()];
            assert_eq!(breaker.in_use(Limit::Connections), 2);
            let waiting = tokio::spawn(send("/c"));
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while breaker.in_use(Limit::Pending) == 0 {
                assert!(tokio::time::Instant::now() < deadline);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // The one pending place is taken: the next is refused without waiting.
            let refused = send("/d").await.unwrap_err();
            assert_eq!(
                refused.overflow(),
                Some(Overflow {
                    limit: Limit::Pending,
                    max: 1
                }),
                "{version}: {refused}"
            );
            assert_eq!(refused.response_flag(), "UO");
            assert!(!waiting.is_finished());
            // A response read to its end: HTTP/1.1 gives its connection back, HTTP/2 its
            // stream; either way the waiting request gets it.
            text(held.pop().unwrap()).await;
            let response = tokio::time::timeout(Duration::from_secs(5), waiting)
                .await
                .expect("the pending request is served")
                .unwrap()
                .unwrap();
            assert_eq!(
                text(response).await,
                format!(
                    "{} reviews.demo:9080 /c",
                    match version {
                        HttpVersion::Http1 => "HTTP/1.1",
                        HttpVersion::Http2 => "HTTP/2.0",
                    }
                )
            );
            assert_eq!(accepted(&pod), 2, "{version}: no third connection");
            assert_eq!(breaker.in_use(Limit::Pending), 0);
            // A connection closed (a body dropped unread closes HTTP/1.1's; HTTP/2's stream
            // ends) frees room too.
            drop(held);
            text(send("/e").await.unwrap()).await;
        }
    }

    /// An endpoint with no connection may open one even when the service's other endpoints
    /// hold every connection the limit allows (idle ones would otherwise starve it).
    #[tokio::test]
    async fn an_endpoint_without_a_connection_always_gets_one() {
        let a = backend(HttpVersion::Http1).await;
        let b = backend(HttpVersion::Http1).await;
        let mesh = mesh().await;
        let (upstream, _) = mesh.upstream(UpstreamSettings::default());
        let breaker = Breaker::new();
        let limits = limits(1, 10);
        let terms = Terms {
            pool: &PoolPolicy::DEFAULT,
            breaker: Some((&breaker, &limits)),
        };
        let ta = plain_target(a.addr, HttpVersion::Http1);
        let tb = plain_target(b.addr, HttpVersion::Http1);
        text(
            upstream
                .send_with(&ta, None, get("/"), terms)
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(breaker.in_use(Limit::Connections), 1, "idle, still open");
        let response = tokio::time::timeout(
            Duration::from_secs(5),
            upstream.send_with(&tb, None, get("/"), terms),
        )
        .await
        .expect("not left waiting")
        .unwrap();
        text(response).await;
        assert_eq!(breaker.in_use(Limit::Connections), 2);
        upstream.retain(|_| false);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while breaker.in_use(Limit::Connections) > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "closed connections give their slots back"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
