//! Fake pods: each a distinct loopback address running a real HBONE server (its ztunnel's
//! inbound side) that hands tunnels for port 8080 to a hyper HTTP/1.1 + HTTP/2 server (the
//! app) and tunnels for port 9000 to a TCP echo. The app counts what it sees, for the tests to
//! assert on.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use ambit_proto::hbone::{TunnelHandler, TunnelRequest};
use ambit_waypoint::detect::{self, Protocol};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;

/// The app's HTTP port (the services' target port).
pub const HTTP_PORT: u16 = 8080;
/// The echo's port (the opaque TCP service's target port).
pub const ECHO_PORT: u16 = 9000;

/// How the app answers.
#[derive(Clone, Default)]
pub enum Behavior {
    /// 200 at once.
    #[default]
    Ok,
    /// 200 after this long.
    Delay(Duration),
    /// Always this status.
    Status(StatusCode),
    /// Half of the requests it has not seen before (by `x-request-id`, shared between the pods
    /// given the same `Flaky`) fail with 503; a request seen before succeeds.
    FailHalfOfNew(Arc<Flaky>),
    /// Each request fails with 503 with this probability, independently.
    FailRandomly(f64),
    /// 200 once the gate is opened (requests arriving after that answer at once).
    Hold(Arc<Gate>),
    /// 503 for a request id not seen before (by `x-request-id`); a retry of it is held as
    /// `Hold`, then 200.
    FailThenHold(Arc<Flaky>, Arc<Gate>),
}

/// Holds requests (`Behavior::Hold`) until opened: slow answers whose end the test decides.
pub struct Gate(tokio::sync::watch::Sender<bool>);

impl Gate {
    pub fn new() -> Arc<Self> {
        Arc::new(Gate(tokio::sync::watch::channel(false).0))
    }

    pub fn open(&self) {
        self.0.send_replace(true);
    }

    async fn passed(&self) {
        let _ = self.0.subscribe().wait_for(|open| *open).await;
    }
}

/// Request ids already seen, shared by the pods of one backend.
#[derive(Default)]
pub struct Flaky {
    seen: Mutex<HashSet<String>>,
    new: AtomicUsize,
}

impl Flaky {
    /// Whether this request fails: every second new request id does.
    fn fails(&self, request_id: Option<&str>) -> bool {
        let Some(id) = request_id else {
            return true;
        };
        if !self.seen.lock().insert(id.to_string()) {
            return false;
        }
        self.new.fetch_add(1, Ordering::SeqCst) % 2 == 1
    }
}

/// One fake pod's app: what it answers and what it counted.
pub struct App {
    pub name: String,
    behavior: Mutex<Behavior>,
    /// HTTP requests received (every attempt counts).
    pub requests: AtomicUsize,
    /// Of those, answered 503.
    pub failed: AtomicUsize,
    /// Request body bytes read.
    pub body_bytes: AtomicU64,
    /// Tunnels the pod's HBONE server accepted.
    pub tunnels: AtomicUsize,
    /// Identities that opened tunnels to the pod (the waypoint's only, behind a waypoint).
    pub peers: Mutex<HashSet<String>>,
    /// HTTP versions the app was spoken to in ("HTTP/1.1", "HTTP/2.0").
    pub versions: Mutex<HashSet<String>>,
    /// Request targets (path and query) as received, in order.
    pub paths: Mutex<Vec<String>>,
}

impl App {
    pub fn new(name: &str) -> Arc<Self> {
        Arc::new(App {
            name: name.into(),
            behavior: Mutex::new(Behavior::Ok),
            requests: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            body_bytes: AtomicU64::new(0),
            tunnels: AtomicUsize::new(0),
            peers: Mutex::new(HashSet::new()),
            versions: Mutex::new(HashSet::new()),
            paths: Mutex::new(Vec::new()),
        })
    }

    pub fn set(&self, behavior: Behavior) {
        *self.behavior.lock() = behavior;
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn failed(&self) -> usize {
        self.failed.load(Ordering::SeqCst)
    }

    pub fn body_bytes(&self) -> u64 {
        self.body_bytes.load(Ordering::SeqCst)
    }

    /// Reads the body fully, then answers as its behavior says: the pod's name as the body,
    /// `x-pod`, and the HTTP version and `x-request-id` it saw.
    async fn answer(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let version = format!("{:?}", req.version());
        self.versions.lock().insert(version.clone());
        if let Some(pq) = req.uri().path_and_query() {
            self.paths.lock().push(pq.to_string());
        }
        let request_id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let read = req.into_body().collect().await.map(|b| b.to_bytes().len());
        self.body_bytes
            .fetch_add(read.unwrap_or(0) as u64, Ordering::SeqCst);
        let behavior = self.behavior.lock().clone();
        let status = match behavior {
            Behavior::Ok => StatusCode::OK,
            Behavior::Delay(d) => {
                tokio::time::sleep(d).await;
                StatusCode::OK
            }
            Behavior::Status(s) => s,
            Behavior::FailHalfOfNew(flaky) => {
                if flaky.fails(request_id.as_deref()) {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                }
            }
            Behavior::Hold(gate) => {
                gate.passed().await;
                StatusCode::OK
            }
            Behavior::FailThenHold(flaky, gate) => {
                let new = request_id
                    .as_ref()
                    .is_none_or(|id| flaky.seen.lock().insert(id.clone()));
                if new {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    gate.passed().await;
                    StatusCode::OK
                }
            }
            Behavior::FailRandomly(p) => {
                if fastrand::f64() < p {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                }
            }
        };
        if status == StatusCode::SERVICE_UNAVAILABLE {
            self.failed.fetch_add(1, Ordering::SeqCst);
        }
        let mut response = Response::new(Full::new(Bytes::from(self.name.clone())));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert("x-pod", self.name.parse().unwrap());
        headers.insert("x-version", version.parse().unwrap());
        if let Some(id) = request_id.and_then(|id| id.parse().ok()) {
            headers.insert("x-request-id", id);
        }
        Ok(response)
    }
}

/// The pod's ztunnel, inbound: accepts every tunnel its HBONE server checked and carries it to
/// the app (8080) or the echo (9000).
pub struct PodHandler {
    pub app: Arc<App>,
}

impl TunnelHandler for PodHandler {
    async fn handle(&self, request: TunnelRequest) {
        let port = request.authority.port();
        if port != HTTP_PORT && port != ECHO_PORT {
            request.refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "nothing listens on that port",
            );
            return;
        }
        self.app.peers.lock().insert(request.peer.to_string());
        let Ok(tunnel) = request.accept() else {
            return;
        };
        self.app.tunnels.fetch_add(1, Ordering::SeqCst);
        if port == ECHO_PORT {
            let (mut read, mut write) = tokio::io::split(tunnel);
            let _ = tokio::io::copy(&mut read, &mut write).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut write).await;
            return;
        }
        let Ok((protocol, stream)) = detect::detect(tunnel, Duration::from_secs(5)).await else {
            return;
        };
        let app = self.app.clone();
        let service = service_fn(move |req| app.clone().answer(req));
        let io = TokioIo::new(stream);
        let _ = match protocol {
            Protocol::Http2 => {
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service)
                    .await
            }
            _ => {
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await
            }
        };
    }
}

/// A pod: its app, and where its HBONE server listens (or would, when not running).
pub struct Pod {
    pub app: Arc<App>,
    /// `<pod IP>:<test HBONE port>`.
    pub hbone: SocketAddr,
    pub running: bool,
}
