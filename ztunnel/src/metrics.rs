//! TCP metrics with Istio's names and labels, so existing dashboards and Kiali read them.
//! The recorder is owned, not global: each ztunnel (and each test) has its own.

use std::fmt;

use ambit_proto::hbone::ConnectionLimits;
use metrics::{Counter, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// Which side of the connection reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reporter {
    Source,
    Destination,
}

impl Reporter {
    fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// mutual_tls for HBONE, none for plaintext and passthrough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    MutualTls,
    None,
}

impl Security {
    pub fn as_str(self) -> &'static str {
        match self {
            Security::MutualTls => "mutual_tls",
            Security::None => "none",
        }
    }
}

/// Why a connection failed; the `reason` label of `ambit_connection_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// An authorization policy refused it.
    PolicyDenied,
    /// Plaintext to a workload whose namespace (or the mesh) requires mTLS.
    StrictMtls,
    /// A connection aimed at one of ztunnel's own ports (a loop, or a probe from outside).
    ProxyPort,
    /// The HBONE tunnel could not be opened (TLS, identity, refusal by the peer).
    Hbone,
    /// The destination (app, or passthrough target) refused or did not answer.
    UpstreamConnect,
    /// A service VIP had no healthy endpoint.
    NoHealthyEndpoint,
    /// The destination uses a waypoint that is unknown, has no address or cannot be reached.
    WaypointUnavailable,
    /// The redirected connection's original destination could not be read.
    OriginalDestination,
    /// The source pod is not (or no longer) in ztunnel's config.
    UnknownSource,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::PolicyDenied => "policy_denied",
            FailureReason::StrictMtls => "strict_mtls",
            FailureReason::ProxyPort => "proxy_port",
            FailureReason::Hbone => "hbone",
            FailureReason::UpstreamConnect => "upstream_connect",
            FailureReason::NoHealthyEndpoint => "no_healthy_endpoint",
            FailureReason::WaypointUnavailable => "waypoint_unavailable",
            FailureReason::OriginalDestination => "original_destination",
            FailureReason::UnknownSource => "unknown_source",
        }
    }

    /// Envoy's response flag for this failure, as Istio's dashboards read `response_flags`:
    /// RBAC refused by access policy, UF upstream connection failure, UH no healthy upstream,
    /// NR no route (nowhere it may go).
    pub fn response_flag(self) -> &'static str {
        match self {
            FailureReason::PolicyDenied | FailureReason::StrictMtls => "RBAC",
            FailureReason::Hbone | FailureReason::UpstreamConnect => "UF",
            FailureReason::NoHealthyEndpoint | FailureReason::WaypointUnavailable => "UH",
            FailureReason::ProxyPort
            | FailureReason::OriginalDestination
            | FailureReason::UnknownSource => "NR",
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is known of one side of a connection, in Istio's label values ("unknown" if not).
#[derive(Debug, Clone)]
pub struct PeerLabels {
    pub workload: String,
    pub namespace: String,
    pub principal: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub cluster: String,
}

impl PeerLabels {
    pub fn unknown() -> Self {
        PeerLabels {
            workload: UNKNOWN.into(),
            namespace: UNKNOWN.into(),
            principal: UNKNOWN.into(),
            canonical_service: UNKNOWN.into(),
            canonical_revision: UNKNOWN.into(),
            cluster: UNKNOWN.into(),
        }
    }
}

/// The service a connection was addressed to.
#[derive(Debug, Clone)]
pub struct ServiceLabels {
    /// Its host name (`reviews.demo.svc.cluster.local`).
    pub host: String,
    pub name: String,
    pub namespace: String,
}

impl ServiceLabels {
    pub fn unknown() -> Self {
        ServiceLabels {
            host: UNKNOWN.into(),
            name: UNKNOWN.into(),
            namespace: UNKNOWN.into(),
        }
    }
}

pub const UNKNOWN: &str = "unknown";

/// The labels of one connection, as Istio names them.
#[derive(Debug, Clone)]
pub struct ConnectionLabels {
    pub reporter: Reporter,
    pub source: PeerLabels,
    pub destination: PeerLabels,
    pub service: ServiceLabels,
    pub security: Security,
}

impl ConnectionLabels {
    fn labels(&self, response_flags: &'static str) -> Vec<Label> {
        let (s, d) = (&self.source, &self.destination);
        vec![
            Label::new("reporter", self.reporter.as_str()),
            Label::new("source_workload", s.workload.clone()),
            Label::new("source_workload_namespace", s.namespace.clone()),
            Label::new("source_principal", s.principal.clone()),
            Label::new("source_canonical_service", s.canonical_service.clone()),
            Label::new("source_canonical_revision", s.canonical_revision.clone()),
            // Istio fills app/version from the canonical service labels, as do we.
            Label::new("source_app", s.canonical_service.clone()),
            Label::new("source_version", s.canonical_revision.clone()),
            Label::new("source_cluster", s.cluster.clone()),
            Label::new("destination_workload", d.workload.clone()),
            Label::new("destination_workload_namespace", d.namespace.clone()),
            Label::new("destination_principal", d.principal.clone()),
            Label::new("destination_canonical_service", d.canonical_service.clone()),
            Label::new(
                "destination_canonical_revision",
                d.canonical_revision.clone(),
            ),
            Label::new("destination_app", d.canonical_service.clone()),
            Label::new("destination_version", d.canonical_revision.clone()),
            Label::new("destination_cluster", d.cluster.clone()),
            Label::new("destination_service", self.service.host.clone()),
            Label::new("destination_service_name", self.service.name.clone()),
            Label::new(
                "destination_service_namespace",
                self.service.namespace.clone(),
            ),
            Label::new("request_protocol", "tcp"),
            Label::new("response_flags", response_flags),
            Label::new("connection_security_policy", self.security.as_str()),
        ]
    }
}

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

/// The counters of one open connection, resolved once when it opens; its bytes are added as
/// they move (an atomic add per chunk).
pub struct ConnectionCounters {
    closed: Counter,
    sent: Counter,
    received: Counter,
}

impl ConnectionCounters {
    /// Bytes went towards the destination.
    pub fn sent(&self, n: u64) {
        self.sent.increment(n);
    }

    /// Bytes came back from the destination.
    pub fn received(&self, n: u64) {
        self.received.increment(n);
    }

    /// The connection has ended.
    pub fn closed(&self) {
        self.closed.increment(1);
    }
}

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// Every counter ztunnel records, with its HELP text.
const DESCRIPTIONS: [(&str, &str); 7] = [
    (
        "istio_tcp_connections_opened_total",
        "TCP connections opened (response_flags says how a refused one ended)",
    ),
    (
        "istio_tcp_connections_closed_total",
        "TCP connections closed (response_flags says how a refused one ended)",
    ),
    (
        "istio_tcp_sent_bytes_total",
        "Bytes sent towards the destination, counted as they move",
    ),
    (
        "istio_tcp_received_bytes_total",
        "Bytes received from the destination, counted as they move",
    ),
    (
        "ambit_connection_failures_total",
        "Connections ztunnel refused or could not carry, by reason",
    ),
    (
        "ambit_policy_decisions_total",
        "Connections an authorization policy decided or audited, by policy and decision (ztunnel counts AUDIT matches; its denials are in ambit_connection_failures_total)",
    ),
    (
        "ambit_inbound_enforced_by_waypoint_total",
        "Inbound tunnels from the destination's waypoint, whose authorization policies that waypoint enforced upstream, by waypoint",
    ),
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        for (name, help) in DESCRIPTIONS {
            if help.ends_with("(gauge)") {
                recorder.describe_gauge(name.into(), None, help.into());
            } else {
                recorder.describe_counter(name.into(), None, help.into());
            }
        }
        let handle = recorder.handle();
        Metrics { recorder, handle }
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    pub fn connection_opened(&self, labels: &ConnectionLabels) -> ConnectionCounters {
        let l = labels.labels("-");
        self.counter("istio_tcp_connections_opened_total", l.clone())
            .increment(1);
        ConnectionCounters {
            closed: self.counter("istio_tcp_connections_closed_total", l.clone()),
            sent: self.counter("istio_tcp_sent_bytes_total", l.clone()),
            received: self.counter("istio_tcp_received_bytes_total", l),
        }
    }

    /// A connection refused or not carried: opened and closed at once with the failure's
    /// response flag (as Istio records it), and counted by reason.
    pub fn connection_failed(&self, labels: &ConnectionLabels, reason: FailureReason) {
        let mut l = labels.labels(reason.response_flag());
        self.counter("istio_tcp_connections_opened_total", l.clone())
            .increment(1);
        self.counter("istio_tcp_connections_closed_total", l.clone())
            .increment(1);
        l.push(Label::new("reason", reason.as_str()));
        self.counter("ambit_connection_failures_total", l)
            .increment(1);
    }

    /// One attempt of a connection failed and another is being tried: counted by reason
    /// only, since the connection itself is yet to succeed or fail.
    pub fn attempt_failed(&self, labels: &ConnectionLabels, reason: FailureReason) {
        let mut l = labels.labels(reason.response_flag());
        l.push(Label::new("reason", reason.as_str()));
        self.counter("ambit_connection_failures_total", l)
            .increment(1);
    }

    /// An inbound tunnel from `waypoint` (`<namespace>/<name>`), the waypoint the destination
    /// uses: the destination's authorization policies were enforced there, on the original
    /// client's identity, so this side allowed it without judging the waypoint's identity.
    pub fn enforced_by_waypoint(&self, labels: &ConnectionLabels, waypoint: &str) {
        let d = &labels.destination;
        let l = vec![
            Label::new("waypoint", waypoint.to_string()),
            Label::new("destination_workload", d.workload.clone()),
            Label::new("destination_workload_namespace", d.namespace.clone()),
        ];
        self.counter("ambit_inbound_enforced_by_waypoint_total", l)
            .increment(1);
    }

    /// An AUDIT policy (`<namespace>/<name>`) matched a connection.
    pub fn policy_audited(&self, policy: &str) {
        let l = vec![
            Label::new("policy", policy.to_string()),
            Label::from_static_parts("decision", "audit"),
        ];
        self.counter("ambit_policy_decisions_total", l).increment(1);
    }

    /// Prometheus text exposition of everything recorded, with the HBONE servers' limit
    /// counters as they are now.
    pub fn render(&self, limits: &ConnectionLimits) -> String {
        let mut out = self.handle.render();
        ambit_proto::exposition::hbone_limits(&mut out, limits);
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn peer(workload: &str, sa: &str) -> PeerLabels {
        PeerLabels {
            workload: workload.into(),
            namespace: "demo".into(),
            principal: format!("spiffe://cluster.local/ns/demo/sa/{sa}"),
            canonical_service: sa.into(),
            canonical_revision: "v1".into(),
            cluster: "Kubernetes".into(),
        }
    }

    pub(crate) fn labels() -> ConnectionLabels {
        ConnectionLabels {
            reporter: Reporter::Destination,
            source: peer("client", "client"),
            destination: peer("reviews-v1", "reviews"),
            service: ServiceLabels {
                host: "reviews.demo.svc.cluster.local".into(),
                name: "reviews".into(),
                namespace: "demo".into(),
            },
            security: Security::MutualTls,
        }
    }

    #[test]
    fn renders_istio_names_and_labels() {
        let m = Metrics::new();
        let c = m.connection_opened(&labels());
        c.sent(100);
        c.received(42);
        c.closed();
        m.connection_failed(&labels(), FailureReason::PolicyDenied);
        m.enforced_by_waypoint(&labels(), "demo/waypoint");
        m.policy_audited("demo/audit-all");
        let text = m.render(&ConnectionLimits::default());
        for expected in [
            "ambit_policy_decisions_total{policy=\"demo/audit-all\",decision=\"audit\"} 1",
            "istio_tcp_connections_opened_total{",
            "istio_tcp_connections_closed_total{",
            "istio_tcp_sent_bytes_total{",
            "istio_tcp_received_bytes_total{",
            "source_principal=\"spiffe://cluster.local/ns/demo/sa/client\"",
            "connection_security_policy=\"mutual_tls\"",
            "reason=\"policy_denied\"",
            "destination_service_name=\"reviews\"",
            "source_canonical_revision=\"v1\"",
            "destination_cluster=\"Kubernetes\"",
            "# HELP istio_tcp_connections_opened_total",
            "# HELP ambit_connection_failures_total",
            "ambit_hbone_connections_refused_total{limit=\"connections_per_identity\"} 0",
            "ambit_hbone_connections 0",
            "# HELP ambit_inbound_enforced_by_waypoint_total",
            "ambit_inbound_enforced_by_waypoint_total{waypoint=\"demo/waypoint\",destination_workload=\"reviews-v1\",destination_workload_namespace=\"demo\"} 1",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
        let sent = text
            .lines()
            .find(|l| l.starts_with("istio_tcp_sent_bytes_total{"))
            .unwrap();
        assert!(sent.ends_with(" 100"), "{sent}");
        // The refusal is an opened-and-closed connection flagged RBAC; the carried one "-".
        let closed = |flag: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("istio_tcp_connections_closed_total{")
                        && l.contains(&format!("response_flags=\"{flag}\""))
                })
                .map(|l| l.rsplit(' ').next().unwrap().to_string())
        };
        assert_eq!(closed("-").as_deref(), Some("1"), "{text}");
        assert_eq!(closed("RBAC").as_deref(), Some("1"), "{text}");
    }
}
