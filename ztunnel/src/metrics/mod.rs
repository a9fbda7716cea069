//! TCP metrics with Istio's names and labels, so existing dashboards and Kiali read them.
//! The recorder is owned, not global: each ztunnel (and each test) has its own.
//!
//! A connection's counters are resolved once per (pod, destination) pair and config version
//! and shared by its connections: registering them costs ~100 allocations and four lookups
//! by ~20 labels, which a connection would otherwise pay as it opens.

mod labels;

pub use labels::{
    ConnectionLabels, Parties, PeerLabels, Reporter, Security, ServiceLabels, Side, UNKNOWN,
};

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use ambit_discovery::Current;
use ambit_discovery::telemetry::Shape;
use ambit_proto::hbone::ConnectionLimits;
use metrics::{Counter, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use parking_lot::RwLock;

/// Pairs held before the cache starts over (it also starts over with each config version):
/// a bound on what a node calling many addresses outside the config can make it hold.
const MAX_CACHED_PAIRS: usize = 16 * 1024;

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
    /// The destination is not in ztunnel's config and the controller could not be asked
    /// (on-demand destinations: no stream, no answer in time).
    DestinationLookup,
    /// The destination is outside the egress scope the source's namespace declares.
    OutsideEgressScope,
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
            FailureReason::DestinationLookup => "destination_lookup",
            FailureReason::OutsideEgressScope => "outside_egress_scope",
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
            | FailureReason::UnknownSource
            | FailureReason::DestinationLookup
            | FailureReason::OutsideEgressScope => "NR",
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
    /// The counters of each (pod, destination) pair seen in this config version.
    pairs: Current<CounterCache>,
}

#[derive(Default)]
struct CounterCache {
    by_parties: RwLock<HashMap<Parties, Arc<ConnectionCounters>>>,
}

/// The counters of the connections between two parties; a connection's bytes are added as
/// they move (an atomic add per chunk).
pub struct ConnectionCounters {
    opened: Counter,
    closed: Counter,
    sent: Counter,
    received: Counter,
    /// The inbound flow shape of the first port this pair carried (`proxy::flows`).
    shape: OnceLock<(u16, Arc<Shape>)>,
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

    /// The shape kept for connections of this pair to `port`, if one is.
    pub fn shape(&self, port: u16) -> Option<&Arc<Shape>> {
        self.shape.get().filter(|(p, _)| *p == port).map(|(_, s)| s)
    }

    /// Keeps `shape` for connections of this pair to `port` (only the first port's is kept).
    pub fn keep_shape(&self, port: u16, shape: Arc<Shape>) {
        let _ = self.shape.set((port, shape));
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
        "Connections an authorization policy decided or audited, by policy and decision (ztunnel counts AUDIT matches, and with mode=\"audit\" what a policy in observer mode would have denied; its denials are in ambit_connection_failures_total)",
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
        Metrics {
            recorder,
            handle,
            pairs: Current::default(),
        }
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    /// A connection opens between `parties`: its counters, from the cache when the pair was
    /// seen before in this config version.
    pub fn connection_opened(&self, parties: &Parties) -> Arc<ConnectionCounters> {
        let cache = self.pairs.load();
        let cached = cache.by_parties.read().get(parties).cloned();
        let counters = cached.unwrap_or_else(|| {
            let counters = Arc::new(self.register(&parties.labels()));
            let mut by_parties = cache.by_parties.write();
            if by_parties.len() >= MAX_CACHED_PAIRS {
                by_parties.clear();
            }
            by_parties.insert(parties.clone(), counters.clone());
            counters
        });
        counters.opened.increment(1);
        counters
    }

    fn register(&self, labels: &ConnectionLabels) -> ConnectionCounters {
        let l = labels.labels("-");
        ConnectionCounters {
            opened: self.counter("istio_tcp_connections_opened_total", l.clone()),
            closed: self.counter("istio_tcp_connections_closed_total", l.clone()),
            sent: self.counter("istio_tcp_sent_bytes_total", l.clone()),
            received: self.counter("istio_tcp_received_bytes_total", l),
            shape: OnceLock::new(),
        }
    }

    /// The config changed: pairs are resolved again, from the entries of the new version (the
    /// old ones are let go). Call it from the thread that applied the config.
    pub fn config_changed(&self) {
        self.pairs.replace(CounterCache::default());
    }

    /// A connection refused or not carried: opened and closed at once with the failure's
    /// response flag (as Istio records it), and counted by reason.
    pub fn connection_failed(&self, parties: &Parties, reason: FailureReason) {
        let mut l = parties.labels().labels(reason.response_flag());
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
    pub fn attempt_failed(&self, parties: &Parties, reason: FailureReason) {
        let mut l = parties.labels().labels(reason.response_flag());
        l.push(Label::new("reason", reason.as_str()));
        self.counter("ambit_connection_failures_total", l)
            .increment(1);
    }

    /// An inbound tunnel from `waypoint` (`<namespace>/<name>`), the waypoint the destination
    /// uses: the destination's authorization policies were enforced there, on the original
    /// client's identity, so this side allowed it without judging the waypoint's identity.
    pub fn enforced_by_waypoint(&self, parties: &Parties, waypoint: &str) {
        let (workload, namespace) = parties
            .destination
            .workload
            .as_ref()
            .map_or((UNKNOWN.to_string(), UNKNOWN.to_string()), |w| {
                (w.name().to_string(), w.shared.namespace.to_string())
            });
        let l = vec![
            Label::new("waypoint", waypoint.to_string()),
            Label::new("destination_workload", workload),
            Label::new("destination_workload_namespace", namespace),
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

    /// A policy in observer mode (`<namespace>/<name>`) would have denied a connection that
    /// went through.
    pub fn policy_would_deny(&self, policy: &str) {
        let l = vec![
            Label::new("policy", policy.to_string()),
            Label::from_static_parts("decision", "deny"),
            Label::from_static_parts("mode", "audit"),
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

    fn workload(name: &str, ip: &str) -> ambit_discovery::state::Workload {
        use ambit_proto::api::discovery::resource::Kind;
        let resource = ambit_discovery::testing::workload(
            name,
            &[ip],
            ambit_proto::api::workload::Protocol::Hbone,
        );
        let Some(Kind::Workload(mut w)) = resource.kind else {
            unreachable!("testing::workload builds a workload")
        };
        w.uid = format!("Kubernetes//Pod/demo/{name}");
        w.canonical_revision = "v1".into();
        ambit_discovery::state::Workload::from_api(&w).expect("a valid workload")
    }

    /// A tunnel from client to reviews-v1, addressed to the reviews service.
    pub(crate) fn parties() -> Parties {
        use ambit_discovery::testing::{response, service};
        let mut state = ambit_discovery::ProxyState::default();
        state
            .apply(&response(
                true,
                vec![service("reviews", &["10.96.0.10"], &["reviews-v1"])],
            ))
            .unwrap();
        Parties {
            reporter: Reporter::Destination,
            source: Side::meshed(&workload("client", "10.244.1.2")),
            destination: Side::meshed(&workload("reviews-v1", "10.244.1.4")),
            service: state.service("demo/reviews").cloned(),
            security: Security::MutualTls,
        }
    }

    #[test]
    fn renders_istio_names_and_labels() {
        let m = Metrics::new();
        let p = parties();
        let c = m.connection_opened(&p);
        c.sent(100);
        c.received(42);
        c.closed();
        m.connection_failed(&p, FailureReason::PolicyDenied);
        m.enforced_by_waypoint(&p, "demo/waypoint");
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

    #[test]
    fn a_pair_is_resolved_once_per_config_version() {
        let m = Metrics::new();
        let p = parties();
        let first = m.connection_opened(&p);
        let second = m.connection_opened(&p);
        assert!(Arc::ptr_eq(&first, &second), "the second connection reuses");
        m.config_changed();
        let third = m.connection_opened(&p);
        assert!(
            !Arc::ptr_eq(&first, &third),
            "resolved again after a change"
        );
        // The same labels all along: one series, counting the three.
        let text = m.render(&ConnectionLimits::default());
        let opened: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
            .collect();
        assert_eq!(opened.len(), 1, "{text}");
        assert!(opened[0].ends_with(" 3"), "{}", opened[0]);
    }
}
