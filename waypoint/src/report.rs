//! What the request path reports when a request ends: the Istio request metrics and one
//! access-log line, recorded when the response body has been sent (or abandoned), so durations
//! and byte counts cover the whole exchange. The label set of a (source, destination workload,
//! backend service) is built once and reused.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use ambit_discovery::state::{Service, Workload};
use ambit_discovery::telemetry::Reporter;
use ambit_discovery::telemetry::baggage::SourceWorkload;
use bytes::Bytes;
use http::header::{HOST, USER_AGENT};
use http::{HeaderValue, Method, Response, Uri, Version, request};
use http_body::{Frame, SizeHint};
use parking_lot::RwLock;

use crate::balance::InFlight;
use crate::body::{Body, BoxError};
use crate::endpoints::Endpoint;
use crate::forward::Downstream;
use crate::local_reply::Flag;
use crate::retry::policy::grpc_status;
use crate::route::Rule;
use crate::telemetry::access_log::{self, X_REQUEST_ID};
use crate::telemetry::trace::{self, TRACEPARENT, TRACESTATE, TraceId};
use crate::telemetry::{
    self as t, AccessLog, Entry, Outcome, Protocol, RequestLabels, RequestMetrics,
};

/// Label sets kept at most; past it the cache starts over (series already registered stay).
const MAX_LABEL_SETS: usize = 10_000;

/// What one request did, filled in along the path.
pub struct Report {
    start: Instant,
    pub(crate) start_time: SystemTime,
    pub protocol: Protocol,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) version: Version,
    pub(crate) authority: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
    trace_id: TraceId,
    pub route: Option<Arc<Rule>>,
    pub backend: Option<Arc<Service>>,
    pub endpoint: Option<Endpoint>,
    pub attempts: u32,
    pub upstream_time: Option<Duration>,
    pub flag: Option<Flag>,
    /// Keeps the request counted against its endpoint until the response ends.
    pub in_flight: Option<InFlight>,
    pub request_bytes: Option<Arc<AtomicU64>>,
    /// Why the waypoint answered itself, in words (a local reply).
    pub detail: Option<String>,
    /// The authorization policy that denied it.
    pub policy: Option<Box<str>>,
    /// What a policy in observer mode would have denied (the request went through).
    pub would_deny: Option<crate::authz::Denied>,
}

impl Report {
    /// Starts the report of a request, and its hop of the trace: `traceparent` continued (or
    /// begun) for the upstream, and an `x-request-id` when the client sent none.
    pub fn start(head: &mut request::Parts) -> Report {
        let hop = trace::hop(&head.headers);
        head.headers.insert(TRACEPARENT, hop.header.clone());
        if hop.restarted {
            head.headers.remove(TRACESTATE);
        }
        if !head.headers.contains_key(X_REQUEST_ID) {
            head.headers
                .insert(X_REQUEST_ID, access_log::new_request_id());
        }
        Report {
            start: Instant::now(),
            start_time: SystemTime::now(),
            protocol: Protocol::of_request(&head.headers),
            method: head.method.clone(),
            uri: head.uri.clone(),
            version: head.version,
            authority: head
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                .or_else(|| head.headers.get(HOST).cloned()),
            user_agent: head.headers.get(USER_AGENT).cloned(),
            request_id: head.headers.get(X_REQUEST_ID).cloned(),
            trace_id: hop.trace_id,
            route: None,
            backend: None,
            endpoint: None,
            attempts: 0,
            upstream_time: None,
            flag: None,
            in_flight: None,
            request_bytes: None,
            detail: None,
            policy: None,
            would_deny: None,
        }
    }
}

/// The waypoint's request metrics and access log.
pub struct Telemetry {
    metrics: RequestMetrics,
    log: Option<AccessLog>,
    labels: RwLock<HashMap<u64, Arc<Labelled>>>,
    /// Failed and tapped requests, and request shapes, for the controller.
    reporter: Reporter,
}

/// A cached label set and the key it was built for (checked on every hit).
struct Labelled {
    key: (String, String, String, String),
    labels: RequestLabels,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new(Some(AccessLog::stdout()))
    }
}

impl Telemetry {
    /// `log`: where access-log lines go (`None`: no access log).
    pub fn new(log: Option<AccessLog>) -> Self {
        Telemetry {
            metrics: RequestMetrics::new(),
            log,
            labels: RwLock::new(HashMap::new()),
            reporter: Reporter::detached(),
        }
    }

    /// Reports each request to `reporter` too (the controller's telemetry stream).
    pub fn with_reporter(mut self, reporter: Reporter) -> Self {
        self.reporter = reporter;
        self
    }

    pub fn reporter(&self) -> &Reporter {
        &self.reporter
    }

    pub fn render(&self) -> String {
        self.metrics.render()
    }

    /// The recorder, for the waypoint's own metrics beside Istio's (`crate::traffic`).
    pub fn metrics(&self) -> &RequestMetrics {
        &self.metrics
    }

    /// Counts a decision of an authorization policy ([`crate::authz`]).
    pub fn policy_decision(
        &self,
        policy: &str,
        decision: crate::telemetry::metrics::PolicyDecision,
    ) {
        self.metrics.policy_decision(policy, decision);
    }

    /// Folds recorded samples into the histograms; call every few seconds so that memory does
    /// not grow between scrapes.
    pub fn upkeep(&self) {
        self.metrics.upkeep();
    }

    /// Wraps the response so that the request is recorded when its body ends.
    pub fn finish(
        self: &Arc<Self>,
        down: &Arc<Downstream>,
        report: Report,
        response: Response<Body>,
    ) -> Response<Body> {
        let (parts, body) = response.into_parts();
        let labels = self.labels(down, &report);
        let finish = Finish {
            telemetry: self.clone(),
            labels,
            status: parts.status.as_u16(),
            grpc_status: grpc_status(&parts.headers),
            down: down.clone(),
            report,
        };
        let body = Recorded {
            inner: body,
            bytes: 0,
            finish: Some(finish),
        };
        Response::from_parts(parts, crate::body::boxed(body))
    }

    fn labels(&self, down: &Downstream, report: &Report) -> Arc<Labelled> {
        let source = down.source.as_ref();
        let claimed = down.claimed.as_ref();
        let destination = report.endpoint.as_ref().map(|e| &e.workload);
        let service = report.backend.as_deref();
        let key = (
            source.map_or(down.peer.as_str(), |w| w.uid()),
            claimed.map_or("", |c| &c.workload),
            destination.map_or("", |w| w.uid()),
            service.map_or("", |s| &s.key),
        );
        let hash = self.labels_hasher().hash_one(key);
        if let Some(hit) = self.labels.read().get(&hash)
            && (
                hit.key.0.as_str(),
                hit.key.1.as_str(),
                hit.key.2.as_str(),
                hit.key.3.as_str(),
            ) == key
        {
            return hit.clone();
        }
        let source_peer = match (source, claimed) {
            (Some(w), _) => peer(w),
            (None, Some(c)) => peer_of_claim(c, &down.peer),
            (None, None) => peer_of_identity(&down.peer),
        };
        let built = Arc::new(Labelled {
            key: (key.0.into(), key.1.into(), key.2.into(), key.3.into()),
            labels: RequestLabels::new(
                &source_peer,
                &destination.map_or_else(t::Peer::unknown, peer),
                &service.map_or_else(t::Service::unknown, |s| t::Service {
                    host: s.hostname.as_ref().into(),
                    name: s.name.as_ref().into(),
                    namespace: s.namespace.as_ref().into(),
                }),
            ),
        });
        let mut cache = self.labels.write();
        if cache.len() >= MAX_LABEL_SETS {
            cache.clear();
        }
        cache.insert(hash, built.clone());
        built
    }

    fn labels_hasher(
        &self,
    ) -> std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher> {
        std::hash::BuildHasherDefault::default()
    }
}

fn peer(w: &Workload) -> t::Peer {
    t::Peer {
        workload: w.name().into(),
        namespace: w.shared.namespace.as_ref().into(),
        principal: w.shared.identity.as_str().into(),
        app: w.canonical_or_name().into(),
        version: if w.shared.canonical_revision.is_empty() {
            "latest".into()
        } else {
            w.shared.canonical_revision.as_ref().into()
        },
        cluster: "Kubernetes".into(),
    }
}

/// A client the config does not list (yet): what its certificate says.
fn peer_of_identity(id: &ambit_proto::identity::SpiffeId) -> t::Peer {
    t::Peer {
        namespace: id.namespace().into(),
        principal: id.as_str().into(),
        ..t::Peer::unknown()
    }
}

/// A client the config does not list, named by its ztunnel (`baggage`) within the namespace
/// its certificate proves.
fn peer_of_claim(c: &SourceWorkload, id: &ambit_proto::identity::SpiffeId) -> t::Peer {
    t::Peer {
        workload: c.workload.as_ref().into(),
        namespace: c.namespace.as_ref().into(),
        principal: id.as_str().into(),
        app: c.app.as_ref().into(),
        version: c.version.as_ref().into(),
        cluster: "Kubernetes".into(),
    }
}

/// Everything needed to record a request once its response ends.
struct Finish {
    telemetry: Arc<Telemetry>,
    labels: Arc<Labelled>,
    status: u16,
    grpc_status: Option<u32>,
    down: Arc<Downstream>,
    report: Report,
}

impl Finish {
    fn record(self, response_bytes: u64) {
        let r = &self.report;
        let duration = r.start.elapsed();
        let flags = r.flag.map_or(t::NO_FLAGS, Flag::letters);
        let request_bytes = r
            .request_bytes
            .as_ref()
            .map_or(0, |b| b.load(Ordering::Relaxed));
        self.telemetry.metrics.record(
            &self.labels.labels,
            &Outcome {
                protocol: r.protocol,
                status: self.status,
                grpc_status: self.grpc_status,
                flags,
                duration,
                request_bytes,
                response_bytes,
            },
        );
        crate::flows::observe(
            &self.telemetry.reporter,
            &self.down,
            r,
            &crate::flows::Ending {
                status: self.status,
                grpc_status: self.grpc_status,
                flags,
                duration,
                request_bytes,
                response_bytes,
            },
        );
        let Some(log) = &self.telemetry.log else {
            return;
        };
        fn text(v: &Option<HeaderValue>) -> Option<&str> {
            v.as_ref().and_then(|v| v.to_str().ok())
        }
        let path = r.uri.path_and_query().map_or("/", |p| p.as_str());
        log.log(&Entry {
            start_time: r.start_time,
            method: r.method.as_str(),
            path,
            authority: text(&r.authority).unwrap_or("-"),
            protocol: access_log::protocol(r.version),
            response_code: self.status,
            grpc_status: self.grpc_status,
            response_flags: flags,
            duration,
            upstream_service_time: r.upstream_time,
            attempts: r.attempts,
            bytes_received: request_bytes,
            bytes_sent: response_bytes,
            upstream_host: r.endpoint.as_ref().map(|e| e.target),
            upstream_cluster: r.backend.as_ref().map(|s| &*s.hostname),
            route_name: r.route.as_ref().map(|rule| &*rule.route),
            source_principal: Some(self.down.peer.as_str()),
            source_address: Some(self.down.client_addr),
            destination_service: r.backend.as_ref().map(|s| &*s.hostname),
            trace_id: Some(r.trace_id),
            user_agent: text(&r.user_agent),
            request_id: text(&r.request_id),
        });
    }
}

/// The response body on its way to the client: counts bytes, notes a `grpc-status` trailer,
/// and records the request when it ends or is dropped (the client went away).
struct Recorded {
    inner: Body,
    bytes: u64,
    finish: Option<Finish>,
}

impl http_body::Body for Recorded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                } else if let Some(trailers) = frame.trailers_ref() {
                    let status = grpc_status(trailers);
                    if let (Some(finish), Some(status)) = (self.finish.as_mut(), status) {
                        finish.grpc_status = Some(status);
                    }
                    // Trailers end a body: record now, before the client can read them, so a
                    // client that scrapes the metrics after its call sees the call counted.
                    self.end();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.end(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Recorded {
    fn end(&mut self) {
        if let Some(finish) = self.finish.take() {
            finish.record(self.bytes);
        }
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        self.end();
    }
}

/// Counts the bytes of a request body as they pass.
pub fn count(body: Body) -> (Body, Arc<AtomicU64>) {
    let bytes = Arc::new(AtomicU64::new(0));
    let counted = Counted {
        inner: body,
        bytes: bytes.clone(),
    };
    (crate::body::boxed(counted), bytes)
}

struct Counted {
    inner: Body,
    bytes: Arc<AtomicU64>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
