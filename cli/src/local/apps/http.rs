//! The sample HTTP server: HTTP/1.1 and HTTP/2 with prior knowledge (h2c) on the same port,
//! gRPC (content-type `application/grpc`) handed to the health service (`grpc`), everything
//! else answered `hello from <pod>`. A test shapes an answer with the query string, so one
//! server covers what a proxy's tests need:
//!
//! - `delay_ms=N`: answer after N ms (a slow backend, for timeouts); also the request header
//!   `x-echo-delay-ms: N` (the query wins), which a route can match on, so that the demo has
//!   a slow request the route's timeout cuts off;
//! - `fail=F` (0 to 1): answer 503 to that fraction of the requests carrying it, spread evenly
//!   and deterministically (`fail=0.5` fails every other one; `fail=1` every one);
//! - `fail_first=F`: a transient failure: answer 503 to the first try of that fraction of the
//!   distinct requests (by path and query: give each an `id=`), and 200 when the same one comes
//!   again, as a retry does;
//! - `status=N`: answer with that status.
//!
//! The request body is read to its end and its size said in the answer and the access log.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tonic::codegen::Service;
use tonic_health::pb::health_server::HealthServer;

/// A request header asking for a slow answer (as `delay_ms=` does).
pub const DELAY_HEADER: &str = "x-echo-delay-ms";

use super::AccessLine;
use super::grpc::Health;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(super) type Body = UnsyncBoxBody<Bytes, BoxError>;

/// One server process's state, shared by its connections.
pub(super) struct Echo {
    name: String,
    access_log: bool,
    /// Requests so far that carried `fail=`, which picks the ones that fail.
    failing: AtomicU64,
    /// Distinct requests so far that carried `fail_first=`: their count, and themselves.
    first_tries: AtomicU64,
    tried: parking_lot::Mutex<std::collections::HashSet<String>>,
    grpc: HealthServer<Health>,
}

impl Echo {
    pub(super) fn new(name: String, access_log: bool) -> Self {
        Echo {
            grpc: HealthServer::new(Health::new(name.clone(), access_log)),
            name,
            access_log,
            failing: AtomicU64::new(0),
            first_tries: AtomicU64::new(0),
            tried: parking_lot::Mutex::new(std::collections::HashSet::new()),
        }
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Body> {
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if grpc {
            let mut service = self.grpc.clone();
            return match service.call(req).await {
                Ok(response) => response.map(|b| b.map_err(BoxError::from).boxed_unsync()),
                Err(never) => match never {},
            };
        }
        let uri = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let mut query = Query::parse(req.uri().query());
        if query.delay_ms.is_none() {
            query.delay_ms = req
                .headers()
                .get(DELAY_HEADER)
                .and_then(|v| v.to_str().ok()?.parse().ok());
        }
        let method = req.method().to_string();
        let version = format!("{:?}", req.version());
        let mut body = req.into_body();
        let mut body_bytes = 0u64;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => body_bytes += frame.data_ref().map_or(0, |d| d.len() as u64),
                // The client went away mid-body: nothing to answer.
                Err(_) => break,
            }
        }
        if let Some(ms) = query.delay_ms {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let name = &self.name;
        let fail = match (query.fail, query.fail_first) {
            (Some(fraction), _) => self.fails(fraction).then_some(fraction),
            (None, Some(fraction)) => self.fails_first(&uri, fraction).then_some(fraction),
            (None, None) => None,
        };
        let (status, mut text) = match fail {
            Some(fraction) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{name} fails this request on purpose (fail={fraction})\n"),
            ),
            _ => (
                query.status.unwrap_or(StatusCode::OK),
                format!("hello from {name}\n"),
            ),
        };
        if body_bytes > 0 {
            text.push_str(&format!("received {body_bytes} bytes\n"));
        }
        if self.access_log {
            AccessLine {
                pod: name.clone(),
                method,
                uri,
                version,
                body_bytes,
                status: status.as_u16(),
                ..Default::default()
            }
            .emit();
        }
        let mut response = Response::new(
            Full::new(Bytes::from(text))
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *response.status_mut() = status;
        response
    }

    /// Whether the next request carrying `fail=fraction` fails.
    fn fails(&self, fraction: f64) -> bool {
        spread(&self.failing, fraction)
    }

    /// Whether this try of request `uri` (carrying `fail_first=fraction`) fails: a request seen
    /// before (a retry) never does; a new one does as [`spread`] picks it.
    fn fails_first(&self, uri: &str, fraction: f64) -> bool {
        let mut tried = self.tried.lock();
        if tried.contains(uri) {
            return false;
        }
        // Bounded: a test's requests, not a leak in a server left running.
        if tried.len() >= 100_000 {
            tried.clear();
        }
        tried.insert(uri.to_string());
        spread(&self.first_tries, fraction)
    }
}

/// Whether the next of the requests counted by `counter` is one of the `fraction` picked:
/// request `n` is when `floor((n+1)·f)` passes `floor(n·f)`, which spreads them evenly.
fn spread(counter: &AtomicU64, fraction: f64) -> bool {
    let f = fraction.clamp(0.0, 1.0);
    let n = counter.fetch_add(1, Ordering::Relaxed) as f64;
    ((n + 1.0) * f).floor() > (n * f).floor()
}

/// Serves one connection, HTTP/1.1 or HTTP/2 (told apart by the HTTP/2 preface).
pub(super) async fn serve_connection(echo: Arc<Echo>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let echo = echo.clone();
        async move { Ok::<_, Infallible>(echo.answer(req).await) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// The query parameters the server understands; others are ignored.
#[derive(Debug, Default, PartialEq)]
struct Query {
    delay_ms: Option<u64>,
    fail: Option<f64>,
    fail_first: Option<f64>,
    status: Option<StatusCode>,
}

impl Query {
    fn parse(query: Option<&str>) -> Self {
        let mut q = Query::default();
        for pair in query.unwrap_or_default().split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "delay_ms" => q.delay_ms = value.parse().ok(),
                "fail" => q.fail = value.parse().ok(),
                "fail_first" => q.fail_first = value.parse().ok(),
                "status" => {
                    q.status = value
                        .parse()
                        .ok()
                        .and_then(|s| StatusCode::from_u16(s).ok())
                }
                _ => {}
            }
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_shapes_the_answer() {
        assert_eq!(
            Query::parse(Some(
                "delay_ms=2000&fail=0.5&id=7&status=418&fail_first=0.25"
            )),
            Query {
                delay_ms: Some(2000),
                fail: Some(0.5),
                fail_first: Some(0.25),
                status: Some(StatusCode::IM_A_TEAPOT),
            }
        );
        assert_eq!(Query::parse(None), Query::default());
        assert_eq!(Query::parse(Some("fail=x&delay_ms")), Query::default());
    }

    #[test]
    fn failures_are_spread_evenly() {
        let echo = Echo::new("t".into(), false);
        let half: Vec<bool> = (0..6).map(|_| echo.fails(0.5)).collect();
        assert_eq!(half, [false, true, false, true, false, true]);
        let echo = Echo::new("t".into(), false);
        assert_eq!((0..100).filter(|_| echo.fails(0.1)).count(), 10);
        assert!((0..10).all(|_| echo.fails(1.0)));
        assert!((0..10).all(|_| !echo.fails(0.0)));
    }

    #[test]
    fn a_first_try_fails_and_its_retry_succeeds() {
        let echo = Echo::new("t".into(), false);
        let tries: Vec<bool> = ["a", "a", "b", "c", "c", "d", "a"]
            .iter()
            .map(|uri| echo.fails_first(uri, 0.5))
            .collect();
        // a: picked? n=0 no; b: n=1 yes; c: n=2 no; d: n=3 yes. Retries never fail.
        assert_eq!(tries, [false, false, true, false, false, true, false]);
        assert!(
            !echo.fails_first("b", 0.5),
            "a retry of a failed request succeeds"
        );
    }
}
