//! Istio's standard request metrics as a waypoint reports them, so that existing dashboards and
//! Kiali read them: `istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes`, `istio_response_bytes`, with Istio's labels and `reporter="waypoint"`.
//! The recorder is owned, not global (as in ztunnel's metrics): each waypoint, and each test,
//! has its own.
//!
//! Cost per recorded request: the labels that do not change from request to request (source,
//! destination, service) are built once into a [`RequestLabels`], which also caches the metric
//! handles of each (protocol, response code, gRPC status, flags) it has seen. A recorded
//! request is then a read lock on that cache, a short linear scan, one counter increment and
//! three histogram pushes (atomics): no allocation, except the histogram storage's, which
//! grows by one 64-sample block per 64 samples of a series until the next [`upkeep`] or
//! [`render`] drains it. The first request of a new (labels, code, status, flags) combination
//! registers four series (a few allocations, the label strings are shared `Arc`s).
//!
//! Call [`RequestMetrics::upkeep`] every few seconds (the Prometheus exporter's own task does
//! every 5 s): histogram samples are kept raw until drained.
//!
//! [`upkeep`]: RequestMetrics::upkeep
//! [`render`]: RequestMetrics::render

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use parking_lot::RwLock;

use super::{NO_FLAGS, Protocol};

pub const REQUESTS_TOTAL: &str = "istio_requests_total";
pub const REQUEST_DURATION: &str = "istio_request_duration_milliseconds";
pub const REQUEST_BYTES: &str = "istio_request_bytes";
pub const RESPONSE_BYTES: &str = "istio_response_bytes";
pub const POLICY_DECISIONS: &str = "ambit_policy_decisions_total";

/// Istio's (Envoy's) default buckets for request durations, in milliseconds.
pub const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Buckets for body sizes in bytes: powers of ten from 1 B to 10 MB, as Istio's request and
/// response size distributions have been documented since Mixer.
pub const BYTES_BUCKETS: [f64; 8] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7];

const UNKNOWN: &str = "unknown";

/// Handle caches kept per label set, at most; past that, requests register each time.
const MAX_CACHED_SERIES: usize = 64;

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One side of a request, in Istio's label values ("unknown" when not known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub workload: Arc<str>,
    pub namespace: Arc<str>,
    /// SPIFFE ID (`spiffe://cluster.local/ns/demo/sa/client`).
    pub principal: Arc<str>,
    /// Canonical service (the `app` label); also `*_canonical_service`.
    pub app: Arc<str>,
    /// Canonical revision (the `version` label); also `*_canonical_revision`.
    pub version: Arc<str>,
    pub cluster: Arc<str>,
}

impl Peer {
    pub fn unknown() -> Self {
        let u: Arc<str> = UNKNOWN.into();
        Peer {
            workload: u.clone(),
            namespace: u.clone(),
            principal: u.clone(),
            app: u.clone(),
            version: u.clone(),
            cluster: u,
        }
    }
}

/// The service a request was addressed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Its host name (`reviews.demo.svc.cluster.local`).
    pub host: Arc<str>,
    pub name: Arc<str>,
    pub namespace: Arc<str>,
}

impl Service {
    pub fn unknown() -> Self {
        let u: Arc<str> = UNKNOWN.into();
        Service {
            host: u.clone(),
            name: u.clone(),
            namespace: u,
        }
    }
}

/// How a request ended, for the labels and values that change per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub protocol: Protocol,
    /// The status sent to the client; 0 when none was (the client went away first).
    pub status: u16,
    /// The gRPC status (from response headers or trailers), for gRPC requests.
    pub grpc_status: Option<u32>,
    /// Envoy's response flags (`UT`, `URX`, `UH`…, comma-separated); "" or "-" for none.
    pub flags: &'static str,
    pub duration: Duration,
    /// Request body bytes received from the client.
    pub request_bytes: u64,
    /// Response body bytes sent to the client.
    pub response_bytes: u64,
}

/// The labels of requests from one source to one destination workload through one service,
/// built once and reused for every request between them (keep it in an `Arc`). It also
/// caches the metric handles of the series it was recorded into.
pub struct RequestLabels {
    base: Box<[Label]>,
    series: RwLock<Vec<Series>>,
}

struct Series {
    metrics: u64,
    protocol: Protocol,
    status: u16,
    grpc_status: Option<u32>,
    flags: &'static str,
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

impl RequestLabels {
    pub fn new(source: &Peer, destination: &Peer, service: &Service) -> Self {
        let l = |key: &'static str, value: &Arc<str>| {
            Label::new(key, SharedString::from_shared(value.clone()))
        };
        let (s, d) = (source, destination);
        let base = vec![
            Label::from_static_parts("reporter", "waypoint"),
            l("source_workload", &s.workload),
            l("source_workload_namespace", &s.namespace),
            l("source_principal", &s.principal),
            l("source_app", &s.app),
            l("source_version", &s.version),
            l("source_canonical_service", &s.app),
            l("source_canonical_revision", &s.version),
            l("source_cluster", &s.cluster),
            l("destination_workload", &d.workload),
            l("destination_workload_namespace", &d.namespace),
            l("destination_principal", &d.principal),
            l("destination_app", &d.app),
            l("destination_version", &d.version),
            l("destination_canonical_service", &d.app),
            l("destination_canonical_revision", &d.version),
            l("destination_service", &service.host),
            l("destination_service_name", &service.name),
            l("destination_service_namespace", &service.namespace),
            l("destination_cluster", &d.cluster),
            // The waypoint is reached over HBONE only.
            Label::from_static_parts("connection_security_policy", "mutual_tls"),
        ];
        RequestLabels {
            base: base.into_boxed_slice(),
            series: RwLock::new(Vec::new()),
        }
    }
}

impl std::fmt::Debug for RequestLabels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestLabels")
            .field("labels", &self.base)
            .field("cached_series", &self.series.read().len())
            .finish()
    }
}

/// What an authorization policy did to a request (`decision` of [`POLICY_DECISIONS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyDecision {
    Allow,
    Deny,
    Audit,
    /// Observer mode: a dry-run policy would have denied a request that went through
    /// (`decision="deny",mode="audit"`).
    WouldDeny,
}

impl PolicyDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyDecision::Allow => "allow",
            PolicyDecision::Deny | PolicyDecision::WouldDeny => "deny",
            PolicyDecision::Audit => "audit",
        }
    }
}

/// Policy counters kept, at most; past that, decisions register each time.
const MAX_CACHED_POLICY_SERIES: usize = 256;

/// The waypoint's request metrics.
pub struct RequestMetrics {
    id: u64,
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    policies: RwLock<Vec<(Box<str>, PolicyDecision, Counter)>>,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for RequestMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMetrics")
            .field("id", &self.id)
            .finish()
    }
}

const DESCRIPTIONS: [(&str, &str); 4] = [
    (REQUESTS_TOTAL, "Requests handled by the waypoint"),
    (
        REQUEST_DURATION,
        "Request durations in milliseconds, from the request's first byte to the response's last",
    ),
    (REQUEST_BYTES, "Request body sizes in bytes"),
    (RESPONSE_BYTES, "Response body sizes in bytes"),
];

impl RequestMetrics {
    pub fn new() -> Self {
        let buckets = |b: PrometheusBuilder, name: &str, values: &[f64]| {
            b.set_buckets_for_metric(Matcher::Full(name.into()), values)
                .expect("bucket lists are not empty")
        };
        let builder = PrometheusBuilder::new();
        let builder = buckets(builder, REQUEST_DURATION, &DURATION_BUCKETS);
        let builder = buckets(builder, REQUEST_BYTES, &BYTES_BUCKETS);
        let builder = buckets(builder, RESPONSE_BYTES, &BYTES_BUCKETS);
        let recorder = builder.build_recorder();
        for (name, help) in DESCRIPTIONS {
            if name == REQUESTS_TOTAL {
                recorder.describe_counter(name.into(), None, help.into());
            } else {
                recorder.describe_histogram(name.into(), None, help.into());
            }
        }
        recorder.describe_counter(
            POLICY_DECISIONS.into(),
            None,
            "Requests an authorization policy allowed, denied or audited, by policy".into(),
        );
        let handle = recorder.handle();
        RequestMetrics {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            recorder,
            handle,
            policies: RwLock::new(Vec::new()),
        }
    }

    /// Counts one decision of `policy` (`<namespace>/<name>`).
    pub fn policy_decision(&self, policy: &str, decision: PolicyDecision) {
        let same =
            |(p, d, _): &&(Box<str>, PolicyDecision, Counter)| **p == *policy && *d == decision;
        if let Some((_, _, counter)) = self.policies.read().iter().find(same) {
            counter.increment(1);
            return;
        }
        let mut labels = vec![
            Label::new("policy", policy.to_string()),
            Label::new("decision", decision.as_str()),
        ];
        if decision == PolicyDecision::WouldDeny {
            labels.push(Label::new("mode", "audit"));
        }
        let counter = self
            .recorder
            .register_counter(&Key::from_parts(POLICY_DECISIONS, labels), &METADATA);
        counter.increment(1);
        let mut cached = self.policies.write();
        if cached.len() < MAX_CACHED_POLICY_SERIES && !cached.iter().any(|c| same(&c)) {
            cached.push((policy.into(), decision, counter));
        }
    }

    /// Records one request (once, when its response ended, retries included).
    pub fn record(&self, labels: &RequestLabels, outcome: &Outcome) {
        let flags = if outcome.flags.is_empty() {
            NO_FLAGS
        } else {
            outcome.flags
        };
        let matches = |s: &Series| {
            s.metrics == self.id
                && s.status == outcome.status
                && s.grpc_status == outcome.grpc_status
                && s.protocol == outcome.protocol
                && s.flags == flags
        };
        {
            let series = labels.series.read();
            if let Some(s) = series.iter().find(|s| matches(s)) {
                Self::observe(s, outcome);
                return;
            }
        }
        let s = self.register(labels, outcome, flags);
        Self::observe(&s, outcome);
        let mut series = labels.series.write();
        if series.len() < MAX_CACHED_SERIES && !series.iter().any(matches) {
            series.push(s);
        }
    }

    fn observe(s: &Series, outcome: &Outcome) {
        s.requests.increment(1);
        s.duration.record(outcome.duration.as_secs_f64() * 1000.0);
        s.request_bytes.record(outcome.request_bytes as f64);
        s.response_bytes.record(outcome.response_bytes as f64);
    }

    fn register(&self, labels: &RequestLabels, outcome: &Outcome, flags: &'static str) -> Series {
        let mut l = Vec::with_capacity(labels.base.len() + 4);
        l.extend_from_slice(&labels.base);
        l.push(Label::new("request_protocol", outcome.protocol.as_str()));
        l.push(Label::new("response_code", outcome.status.to_string()));
        l.push(Label::new(
            "grpc_response_status",
            outcome
                .grpc_status
                .map(|g| g.to_string())
                .unwrap_or_default(),
        ));
        l.push(Label::new("response_flags", flags));
        let key = |name: &'static str| Key::from_parts(name, l.clone());
        Series {
            metrics: self.id,
            protocol: outcome.protocol,
            status: outcome.status,
            grpc_status: outcome.grpc_status,
            flags,
            requests: self
                .recorder
                .register_counter(&key(REQUESTS_TOTAL), &METADATA),
            duration: self
                .recorder
                .register_histogram(&key(REQUEST_DURATION), &METADATA),
            request_bytes: self
                .recorder
                .register_histogram(&key(REQUEST_BYTES), &METADATA),
            response_bytes: self
                .recorder
                .register_histogram(&key(RESPONSE_BYTES), &METADATA),
        }
    }

    /// A counter of the waypoint's own (not Istio's), in the same exposition; register it
    /// once and keep the handle.
    pub fn counter(&self, name: &'static str, help: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder
            .describe_counter(name.into(), None, help.into());
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    /// A gauge of the waypoint's own, as [`RequestMetrics::counter`].
    pub fn gauge(&self, name: &'static str, help: &'static str, labels: Vec<Label>) -> Gauge {
        self.recorder.describe_gauge(name.into(), None, help.into());
        self.recorder
            .register_gauge(&Key::from_parts(name, labels), &METADATA)
    }

    /// Drains histogram samples into their buckets; call every few seconds.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Prometheus text exposition of everything recorded.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(workload: &str, app: &str) -> Peer {
        Peer {
            workload: workload.into(),
            namespace: "demo".into(),
            principal: format!("spiffe://cluster.local/ns/demo/sa/{app}").into(),
            app: app.into(),
            version: "v1".into(),
            cluster: "Kubernetes".into(),
        }
    }

    fn labels() -> RequestLabels {
        RequestLabels::new(
            &peer("client", "client"),
            &peer("reviews-v1", "reviews"),
            &Service {
                host: "reviews.demo.svc.cluster.local".into(),
                name: "reviews".into(),
                namespace: "demo".into(),
            },
        )
    }

    fn ok() -> Outcome {
        Outcome {
            protocol: Protocol::Http,
            status: 200,
            grpc_status: None,
            flags: "",
            duration: Duration::from_millis(7),
            request_bytes: 0,
            response_bytes: 1234,
        }
    }

    fn line<'a>(text: &'a str, prefix: &str, has: &[&str]) -> Option<&'a str> {
        text.lines()
            .find(|l| l.starts_with(prefix) && has.iter().all(|h| l.contains(h)))
    }

    fn value(line: Option<&str>) -> Option<&str> {
        line.and_then(|l| l.rsplit(' ').next())
    }

    #[test]
    fn renders_istio_names_labels_and_help() {
        let m = RequestMetrics::new();
        m.record(&labels(), &ok());
        let text = m.render();
        for expected in [
            "# HELP istio_requests_total ",
            "# TYPE istio_requests_total counter",
            "# HELP istio_request_duration_milliseconds ",
            "# TYPE istio_request_duration_milliseconds histogram",
            "# HELP istio_request_bytes ",
            "# HELP istio_response_bytes ",
            "istio_requests_total{",
            "istio_request_duration_milliseconds_bucket{",
            "istio_request_bytes_bucket{",
            "istio_response_bytes_sum{",
            "reporter=\"waypoint\"",
            "source_workload=\"client\"",
            "source_workload_namespace=\"demo\"",
            "source_principal=\"spiffe://cluster.local/ns/demo/sa/client\"",
            "source_app=\"client\"",
            "source_version=\"v1\"",
            "source_cluster=\"Kubernetes\"",
            "destination_workload=\"reviews-v1\"",
            "destination_workload_namespace=\"demo\"",
            "destination_principal=\"spiffe://cluster.local/ns/demo/sa/reviews\"",
            "destination_app=\"reviews\"",
            "destination_version=\"v1\"",
            "destination_canonical_service=\"reviews\"",
            "destination_service=\"reviews.demo.svc.cluster.local\"",
            "destination_service_name=\"reviews\"",
            "destination_service_namespace=\"demo\"",
            "destination_cluster=\"Kubernetes\"",
            "request_protocol=\"http\"",
            "response_code=\"200\"",
            "grpc_response_status=\"\"",
            "response_flags=\"-\"",
            "connection_security_policy=\"mutual_tls\"",
            // Istio's duration buckets.
            "le=\"0.5\"",
            "le=\"3600000\"",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
        let sum = line(&text, "istio_response_bytes_sum{", &[]);
        assert_eq!(value(sum), Some("1234"), "{text}");
        let bucket = line(
            &text,
            "istio_request_duration_milliseconds_bucket{",
            &["le=\"10\""],
        );
        assert_eq!(value(bucket), Some("1"), "{text}");
        let bucket = line(
            &text,
            "istio_request_duration_milliseconds_bucket{",
            &["le=\"5\""],
        );
        assert_eq!(value(bucket), Some("0"), "{text}");
    }

    #[test]
    fn same_labels_make_one_series() {
        let m = RequestMetrics::new();
        let l = labels();
        m.record(&l, &ok());
        m.record(&l, &ok());
        // Equal labels built separately land in the same series too.
        m.record(&labels(), &ok());
        let text = m.render();
        let totals: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .collect();
        assert_eq!(totals.len(), 1, "{text}");
        assert!(totals[0].ends_with(" 3"), "{text}");
        let count = line(&text, "istio_request_duration_milliseconds_count{", &[]);
        assert_eq!(value(count), Some("3"), "{text}");
    }

    #[test]
    fn outcomes_split_series() {
        let m = RequestMetrics::new();
        let l = labels();
        m.record(&l, &ok());
        let timeout = Outcome {
            status: 504,
            flags: "UT",
            ..ok()
        };
        m.record(&l, &timeout);
        m.record(&l, &timeout);
        let grpc = Outcome {
            protocol: Protocol::Grpc,
            grpc_status: Some(14),
            ..ok()
        };
        m.record(&l, &grpc);
        let text = m.render();
        let total = |has: &[&str]| value(line(&text, "istio_requests_total{", has));
        assert_eq!(
            total(&[
                "response_code=\"200\"",
                "response_flags=\"-\"",
                "request_protocol=\"http\""
            ]),
            Some("1"),
            "{text}"
        );
        assert_eq!(
            total(&["response_code=\"504\"", "response_flags=\"UT\""]),
            Some("2"),
            "{text}"
        );
        assert_eq!(
            total(&["request_protocol=\"grpc\"", "grpc_response_status=\"14\""]),
            Some("1"),
            "{text}"
        );
        assert_eq!(l.series.read().len(), 3);
    }

    #[test]
    fn instances_are_independent() {
        let a = RequestMetrics::new();
        let b = RequestMetrics::new();
        let l = labels();
        a.record(&l, &ok());
        b.record(&l, &ok());
        b.record(&l, &ok());
        let total = |m: &RequestMetrics| {
            let text = m.render();
            value(line(&text, "istio_requests_total{", &[])).map(str::to_string)
        };
        assert_eq!(total(&a).as_deref(), Some("1"));
        assert_eq!(total(&b).as_deref(), Some("2"));
    }
}
