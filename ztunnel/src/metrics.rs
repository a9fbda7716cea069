//! TCP metrics with Istio's names and labels, so existing dashboards and Kiali read them.
//! The recorder is owned, not global: each ztunnel (and each test) has its own.

use std::fmt;

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
    /// The HBONE tunnel could not be opened (TLS, identity, refusal by the peer).
    Hbone,
    /// The destination (app, or passthrough target) refused or did not answer.
    UpstreamConnect,
    /// A service VIP had no healthy endpoint.
    NoHealthyEndpoint,
    /// The redirected connection's original destination could not be read.
    OriginalDestination,
    /// The source pod is not (or no longer) in ztunnel's config.
    UnknownSource,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::PolicyDenied => "policy_denied",
            FailureReason::Hbone => "hbone",
            FailureReason::UpstreamConnect => "upstream_connect",
            FailureReason::NoHealthyEndpoint => "no_healthy_endpoint",
            FailureReason::OriginalDestination => "original_destination",
            FailureReason::UnknownSource => "unknown_source",
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The labels of one connection, as Istio names them. Unknown values are "unknown".
#[derive(Debug, Clone)]
pub struct ConnectionLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_service: String,
    pub security: Security,
}

impl ConnectionLabels {
    fn labels(&self) -> Vec<Label> {
        vec![
            Label::new("reporter", self.reporter.as_str()),
            Label::new("source_workload", self.source_workload.clone()),
            Label::new(
                "source_workload_namespace",
                self.source_workload_namespace.clone(),
            ),
            Label::new("source_principal", self.source_principal.clone()),
            Label::new("destination_workload", self.destination_workload.clone()),
            Label::new(
                "destination_workload_namespace",
                self.destination_workload_namespace.clone(),
            ),
            Label::new("destination_principal", self.destination_principal.clone()),
            Label::new("destination_service", self.destination_service.clone()),
            Label::new("request_protocol", "tcp"),
            Label::new("connection_security_policy", self.security.as_str()),
        ]
    }
}

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

/// The counters of one open connection; bytes are added when it closes.
pub struct ConnectionCounters {
    closed: Counter,
    sent: Counter,
    received: Counter,
}

impl ConnectionCounters {
    /// Records the end of the connection: bytes sent to and received from the destination.
    pub fn closed(self, sent: u64, received: u64) {
        self.sent.increment(sent);
        self.received.increment(received);
        self.closed.increment(1);
    }
}

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        Metrics { recorder, handle }
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    pub fn connection_opened(&self, labels: &ConnectionLabels) -> ConnectionCounters {
        let l = labels.labels();
        self.counter("istio_tcp_connections_opened_total", l.clone())
            .increment(1);
        ConnectionCounters {
            closed: self.counter("istio_tcp_connections_closed_total", l.clone()),
            sent: self.counter("istio_tcp_sent_bytes_total", l.clone()),
            received: self.counter("istio_tcp_received_bytes_total", l),
        }
    }

    pub fn connection_failed(&self, labels: &ConnectionLabels, reason: FailureReason) {
        let mut l = labels.labels();
        l.push(Label::new("reason", reason.as_str()));
        self.counter("ambit_connection_failures_total", l)
            .increment(1);
    }

    /// Prometheus text exposition of everything recorded.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> ConnectionLabels {
        ConnectionLabels {
            reporter: Reporter::Destination,
            source_workload: "client".into(),
            source_workload_namespace: "demo".into(),
            source_principal: "spiffe://cluster.local/ns/demo/sa/client".into(),
            destination_workload: "reviews-v1".into(),
            destination_workload_namespace: "demo".into(),
            destination_principal: "spiffe://cluster.local/ns/demo/sa/reviews".into(),
            destination_service: "reviews.demo.svc.cluster.local".into(),
            security: Security::MutualTls,
        }
    }

    #[test]
    fn renders_istio_names_and_labels() {
        let m = Metrics::new();
        m.connection_opened(&labels()).closed(100, 42);
        m.connection_failed(&labels(), FailureReason::PolicyDenied);
        let text = m.render();
        for expected in [
            "istio_tcp_connections_opened_total{",
            "istio_tcp_connections_closed_total{",
            "istio_tcp_sent_bytes_total{",
            "istio_tcp_received_bytes_total{",
            "source_principal=\"spiffe://cluster.local/ns/demo/sa/client\"",
            "connection_security_policy=\"mutual_tls\"",
            "reason=\"policy_denied\"",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
        let sent = text
            .lines()
            .find(|l| l.starts_with("istio_tcp_sent_bytes_total{"))
            .unwrap();
        assert!(sent.ends_with(" 100"), "{sent}");
    }
}
