//! The observation API: HTTP/1.1 on a loopback port (`--api-addr`), JSON per [`super::api`].
//! Routes are one match in [`ApiState::respond`]; each connection serves one request and must
//! send it within [`HEADER_TIMEOUT`], so only a tap stream (which lasts until its client goes)
//! holds a connection open.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use ambit_proto::api::telemetry::Tap;
use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::{RETENTION, Resource, TelemetryStore};
use crate::model::MeshModel;

/// How long a client has to send its request.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_WINDOW: Duration = Duration::from_secs(30);
/// Reports are kept five seconds apart (see `store`): a shorter window may hold only one.
const MIN_WINDOW: Duration = Duration::from_secs(10);
const DEFAULT_FAILURES: usize = 50;

pub type ApiBody = BoxBody<Bytes, Infallible>;

/// What the routes answer from. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    pub models: watch::Receiver<Arc<MeshModel>>,
    pub telemetry: TelemetryStore,
    /// Ends tap streams when the controller stops.
    pub shutdown: CancellationToken,
}

/// A 4xx answer, said as a sentence that names the parameter and what it takes.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

/// A request's query parameters, each route saying which it takes.
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(query: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// Refuses a parameter the route does not take (a typo would otherwise go unnoticed).
    pub fn only(&self, route: &str, allowed: &[&str]) -> Result<(), ApiError> {
        match self.0.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            Some((k, _)) => Err(ApiError::bad_request(format!(
                "{route} takes no parameter {k:?}; it takes {}",
                if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed.join(", ")
                }
            ))),
            None => Ok(()),
        }
    }

    /// The parameter's value; an empty one counts as absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    pub fn window(&self) -> Result<Duration, ApiError> {
        let Some(text) = self.get("window") else {
            return Ok(DEFAULT_WINDOW);
        };
        let window = humantime::parse_duration(text)
            .or_else(|_| text.parse::<u64>().map(Duration::from_secs))
            .map_err(|_| {
                ApiError::bad_request(format!(
                    "window={text:?} is not a duration: give one like 30s, 2m or 90 (seconds)"
                ))
            })?;
        if window < MIN_WINDOW || window > RETENTION {
            return Err(ApiError::bad_request(format!(
                "window={text:?} is out of range: from {}s (two reports apart) to {}s (what the controller keeps)",
                MIN_WINDOW.as_secs(),
                RETENTION.as_secs()
            )));
        }
        Ok(window)
    }

    pub fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        self.get(name)
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::bad_request(format!("{name}={v:?} is not a whole number"))
                })
            })
            .transpose()
    }

    pub fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(v) => Err(ApiError::bad_request(format!(
                "{name}={v:?} is neither true nor false"
            ))),
        }
    }

    /// A `<namespace>/<name>` parameter.
    pub fn namespaced(&self, name: &str) -> Result<Option<(&str, &str)>, ApiError> {
        self.get(name)
            .map(|v| match v.split_once('/') {
                Some((ns, n)) if !ns.is_empty() && !n.is_empty() && !n.contains('/') => Ok((ns, n)),
                _ => Err(ApiError::bad_request(format!(
                    "{name}={v:?} is not <namespace>/<name>"
                ))),
            })
            .transpose()
    }
}

pub fn json(value: &impl Serialize) -> Response<ApiBody> {
    let body = serde_json::to_vec(value).expect("API types serialize");
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("static response parts are valid")
}

pub fn text(status: StatusCode, message: impl Into<String>) -> Response<ApiBody> {
    let mut message = message.into();
    message.push('\n');
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(message)).boxed())
        .expect("static response parts are valid")
}

impl ApiState {
    fn model(&self) -> Arc<MeshModel> {
        self.models.borrow().clone()
    }

    /// Every route, by path.
    pub fn respond(&self, request: &Request<Incoming>) -> Response<ApiBody> {
        if request.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here");
        }
        let query = Query::parse(request.uri().query());
        let path = request.uri().path();
        let answered = match path {
            "/api/graph" => self.graph(&query),
            "/api/stat" => self.stat(&query),
            "/api/tap" => self.tap(&query),
            "/api/failures" => self.failures(&query),
            "/api/flows" => query
                .only(path, &[])
                .map(|()| json(&self.telemetry.flows())),
            "/api/explain" => self.explain(&query),
            "/api/policy/suggest" => self.suggest(&query),
            _ => Ok(match crate::dashboard::asset(path) {
                Some((content_type, body)) => Response::builder()
                    .header(header::CONTENT_TYPE, content_type)
                    .body(Full::new(Bytes::from_static(body)).boxed())
                    .expect("static response parts are valid"),
                None => text(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no {path} here: the API is /api/graph, /api/stat, /api/tap, /api/failures, /api/flows, /api/explain and /api/policy/suggest"
                    ),
                ),
            }),
        };
        answered.unwrap_or_else(|e| text(e.status, e.message))
    }

    fn graph(&self, q: &Query) -> Result<Response<ApiBody>, ApiError> {
        q.only("/api/graph", &["window"])?;
        let window = q.window()?;
        Ok(json(&self.telemetry.graph(&self.model(), window)))
    }

    fn stat(&self, q: &Query) -> Result<Response<ApiBody>, ApiError> {
        q.only("/api/stat", &["resource", "namespace", "window"])?;
        let resource = match q.get("resource") {
            None | Some("workload") | Some("workloads") => Resource::Workload,
            Some("service") | Some("services") => Resource::Service,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "resource={other:?} is neither workload nor service"
                )));
            }
        };
        let window = q.window()?;
        let rows = self
            .telemetry
            .stats(&self.model(), resource, q.get("namespace"), window);
        Ok(json(&rows))
    }

    fn explain(&self, q: &Query) -> Result<Response<ApiBody>, ApiError> {
        q.only("/api/explain", &["from", "to"])?;
        let required = |name: &str| {
            q.get(name).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{name}= is missing: /api/explain?from=<namespace>/<workload>&to=<service or address>[:port]"
                ))
            })
        };
        let (from, to) = (required("from")?, required("to")?);
        Ok(match crate::explain::explain(&self.model(), from, to) {
            Ok(explanation) => json(&explanation),
            Err(e) => text(e.status(), e.to_string()),
        })
    }

    fn suggest(&self, q: &Query) -> Result<Response<ApiBody>, ApiError> {
        q.only("/api/policy/suggest", &["namespace"])?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Ok(json(&crate::suggest::suggest(
            &self.model(),
            &self.telemetry.flows(),
            q.get("namespace"),
            now,
        )))
    }

    fn failures(&self, q: &Query) -> Result<Response<ApiBody>, ApiError> {
        q.only("/api/failures", &["workload", "limit"])?;
        let workload = q.namespaced("workload")?;
        let limit = q.number::<usize>("limit")?.unwrap_or(DEFAULT_FAILURES);
        Ok(json(&self.telemetry.failures(workload, limit)))
    }

    fn tap(&self, q: &Query) -> Result<Response<ApiBody>, ApiError> {
        q.only(
            "/api/tap",
            &[
                "namespace",
                "workload",
                "service",
                "method",
                "path_prefix",
                "failed_only",
                "max_per_second",
            ],
        )?;
        let s = |name| q.get(name).unwrap_or_default().to_string();
        let tap = Tap {
            id: 0,
            namespace: s("namespace"),
            workload: s("workload"),
            service: s("service"),
            method: s("method"),
            path_prefix: s("path_prefix"),
            failed_only: q.flag("failed_only")?,
            max_per_second: q.number("max_per_second")?.unwrap_or(0),
        };
        let subscription = self.telemetry.taps.start(tap).map_err(|e| ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: e.to_string(),
        })?;
        let id = subscription.id;
        let running = subscription.running;
        // The running tap lives in the body: when hyper drops the body (the client went), the
        // tap stops on every proxy.
        let lines = ReceiverStream::new(subscription.records)
            .map(move |record| {
                let _running = &running;
                let mut line = serde_json::to_vec(&record).expect("records serialize");
                line.push(b'\n');
                Ok::<_, Infallible>(Frame::data(Bytes::from(line)))
            })
            .take_until(self.shutdown.clone().cancelled_owned());
        tracing::debug!(tap = id, "streaming a tap");
        Ok(Response::builder()
            .header(header::CONTENT_TYPE, "application/x-ndjson")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(BodyExt::boxed(StreamBody::new(lines)))
            .expect("static response parts are valid"))
    }

    /// Serves HTTP/1.1 on `listener` until `shutdown`.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "the observation API could not accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = self.shutdown.cancelled() => return,
            };
            let state = self.clone();
            let service = service_fn(move |request| {
                let response = state.respond(&request);
                async move { Ok::<_, Infallible>(response) }
            });
            tokio::spawn(async move {
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = connection.await {
                    tracing::debug!(%peer, error = %e, "observation API connection ended with an error");
                }
            });
        }
    }
}
