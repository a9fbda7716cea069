//! What one metrics report says, by flow: the samples of Istio's standard metrics (see
//! ztunnel's `metrics` and the waypoint's `telemetry::metrics`) summed by who talked to whom,
//! ready to be subtracted from an earlier report for rates.

use std::collections::HashMap;
use std::sync::Arc;

use super::exposition::Sample;

pub const REQUESTS_TOTAL: &str = "istio_requests_total";
pub const REQUEST_DURATION_BUCKET: &str = "istio_request_duration_milliseconds_bucket";
pub const REQUEST_BYTES_SUM: &str = "istio_request_bytes_sum";
pub const RESPONSE_BYTES_SUM: &str = "istio_response_bytes_sum";
pub const TCP_OPENED: &str = "istio_tcp_connections_opened_total";
pub const TCP_CLOSED: &str = "istio_tcp_connections_closed_total";
pub const TCP_SENT: &str = "istio_tcp_sent_bytes_total";
pub const TCP_RECEIVED: &str = "istio_tcp_received_bytes_total";

/// Istio's value for a label the proxy could not fill.
pub const UNKNOWN: &str = "unknown";

/// Who talked to whom, and how it went, as a series' labels say: the series of one report
/// that agree on all of these are summed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Flow {
    /// `source` or `destination` (ztunnel), `waypoint`.
    pub reporter: Arc<str>,
    pub source_workload: Arc<str>,
    pub source_namespace: Arc<str>,
    pub source_principal: Arc<str>,
    pub destination_workload: Arc<str>,
    pub destination_namespace: Arc<str>,
    pub destination_principal: Arc<str>,
    /// The service's host name.
    pub destination_service: Arc<str>,
    /// `tcp`, `http`, `grpc`.
    pub protocol: Arc<str>,
    pub mutual_tls: bool,
    /// L7: a 5xx or a gRPC error; L4: any response flag (refused, denied, not carried).
    pub failed: bool,
}

impl Flow {
    fn of(sample: &Sample, strings: &mut Interner) -> Flow {
        let mut label = |key: &str| strings.get(sample.label(key).unwrap_or(UNKNOWN));
        let protocol = label("request_protocol");
        let failed = if &*protocol == "tcp" {
            !matches!(sample.label("response_flags"), None | Some("-") | Some(""))
        } else {
            let code = sample.label("response_code").unwrap_or("");
            let grpc = sample.label("grpc_response_status").unwrap_or("");
            code.starts_with('5') || (!grpc.is_empty() && grpc != "0")
        };
        Flow {
            reporter: label("reporter"),
            source_workload: label("source_workload"),
            source_namespace: label("source_workload_namespace"),
            source_principal: label("source_principal"),
            destination_workload: label("destination_workload"),
            destination_namespace: label("destination_workload_namespace"),
            destination_principal: label("destination_principal"),
            destination_service: label("destination_service"),
            protocol,
            mutual_tls: sample.label("connection_security_policy") == Some("mutual_tls"),
            failed,
        }
    }
}

/// Shares the label strings of one report (a ztunnel repeats each ~20 times).
#[derive(Default)]
struct Interner(HashMap<String, Arc<str>>);

impl Interner {
    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.get(s) {
            return a.clone();
        }
        let a: Arc<str> = s.into();
        self.0.insert(s.to_string(), a.clone());
        a
    }
}

/// Cumulative counts by flow, as of one report (or, subtracted, increases over a window).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlowCounts {
    /// L7 requests.
    pub requests: f64,
    /// L7 request duration buckets: (upper bound in ms, cumulative count).
    pub duration_buckets: Vec<(f64, f64)>,
    /// L4 connections opened and closed.
    pub opened: f64,
    pub closed: f64,
    /// Bytes both ways: TCP bytes (L4), request and response bodies (L7).
    pub bytes: f64,
}

impl FlowCounts {
    fn add_bucket(&mut self, le: f64, count: f64) {
        match self.duration_buckets.iter_mut().find(|(b, _)| *b == le) {
            Some((_, c)) => *c += count,
            None => self.duration_buckets.push((le, count)),
        }
    }

    /// What grew from `earlier` to `self`. A count that went down means the proxy restarted,
    /// so all of the new count is growth (as Prometheus' `rate` takes a reset).
    pub fn since(&self, earlier: Option<&FlowCounts>) -> FlowCounts {
        let Some(e) = earlier else {
            return self.clone();
        };
        let grew = |now: f64, then: f64| if now >= then { now - then } else { now };
        FlowCounts {
            requests: grew(self.requests, e.requests),
            duration_buckets: self
                .duration_buckets
                .iter()
                .map(|(le, count)| {
                    let then = e
                        .duration_buckets
                        .iter()
                        .find(|(b, _)| b == le)
                        .map_or(0.0, |(_, c)| *c);
                    (*le, grew(*count, then))
                })
                .collect(),
            opened: grew(self.opened, e.opened),
            closed: grew(self.closed, e.closed),
            bytes: grew(self.bytes, e.bytes),
        }
    }

    /// Scaled by `factor` (1 / seconds, for per-second rates).
    pub fn scaled(&self, factor: f64) -> FlowCounts {
        FlowCounts {
            requests: self.requests * factor,
            duration_buckets: self
                .duration_buckets
                .iter()
                .map(|(le, c)| (*le, c * factor))
                .collect(),
            opened: self.opened * factor,
            closed: self.closed * factor,
            bytes: self.bytes * factor,
        }
    }

    pub fn add(&mut self, other: &FlowCounts) {
        self.requests += other.requests;
        for (le, c) in &other.duration_buckets {
            self.add_bucket(*le, *c);
        }
        self.opened += other.opened;
        self.closed += other.closed;
        self.bytes += other.bytes;
    }
}

/// One report's metrics by flow.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportMetrics {
    pub flows: HashMap<Flow, FlowCounts>,
}

impl ReportMetrics {
    /// Keeps the samples of Istio's request and TCP metrics; the rest (the proxies' own
    /// metrics) is not about flows.
    pub fn from_samples(samples: &[Sample]) -> ReportMetrics {
        let mut strings = Interner::default();
        let mut flows: HashMap<Flow, FlowCounts> = HashMap::new();
        for s in samples {
            let known = matches!(
                s.name.as_str(),
                REQUESTS_TOTAL
                    | REQUEST_DURATION_BUCKET
                    | REQUEST_BYTES_SUM
                    | RESPONSE_BYTES_SUM
                    | TCP_OPENED
                    | TCP_CLOSED
                    | TCP_SENT
                    | TCP_RECEIVED
            );
            if !known || !s.value.is_finite() {
                continue;
            }
            let c = flows.entry(Flow::of(s, &mut strings)).or_default();
            match s.name.as_str() {
                REQUESTS_TOTAL => c.requests += s.value,
                REQUEST_DURATION_BUCKET => {
                    if let Some(le) = s.label("le").and_then(parse_le) {
                        c.add_bucket(le, s.value);
                    }
                }
                TCP_OPENED => c.opened += s.value,
                TCP_CLOSED => c.closed += s.value,
                _ => c.bytes += s.value,
            }
        }
        ReportMetrics { flows }
    }
}

fn parse_le(le: &str) -> Option<f64> {
    match le {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        _ => le.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::exposition::parse;

    fn report(text: &str) -> ReportMetrics {
        ReportMetrics::from_samples(&parse(text, usize::MAX).unwrap())
    }

    #[test]
    fn a_ztunnel_report_sums_by_flow() {
        let m = report(include_str!(
            "../../tests/fixtures/telemetry/ztunnel-node-a-2.prom"
        ));
        // Four flows; the failure and policy counters are not about flows.
        assert_eq!(m.flows.len(), 4);
        let denied = m
            .flows
            .iter()
            .find(|(f, _)| f.failed)
            .map(|(f, c)| (f.clone(), c.clone()))
            .unwrap();
        assert_eq!(&*denied.0.reporter, "destination");
        assert_eq!(&*denied.0.source_workload, "denied-client");
        assert!(denied.0.mutual_tls);
        assert_eq!((denied.1.opened, denied.1.closed), (15.0, 15.0));
        let legacy = m
            .flows
            .iter()
            .find(|(f, _)| &*f.destination_workload == "legacy")
            .unwrap();
        assert!(!legacy.0.mutual_tls);
        assert_eq!(legacy.1.bytes, 9000.0);
    }

    #[test]
    fn a_waypoint_report_keeps_requests_and_buckets_by_outcome() {
        let m = report(include_str!(
            "../../tests/fixtures/telemetry/waypoint-demo-2.prom"
        ));
        assert_eq!(m.flows.len(), 2);
        let (failed, counts) = m.flows.iter().find(|(f, _)| f.failed).unwrap();
        assert_eq!(&*failed.protocol, "http");
        assert_eq!(counts.requests, 14.0);
        let inf = counts
            .duration_buckets
            .iter()
            .find(|(le, _)| le.is_infinite())
            .unwrap();
        assert_eq!(inf.1, 14.0);
        assert_eq!(counts.duration_buckets.len(), 20);
    }

    #[test]
    fn increases_take_a_reset_as_a_restart() {
        let then = FlowCounts {
            requests: 10.0,
            duration_buckets: vec![(5.0, 8.0), (f64::INFINITY, 10.0)],
            opened: 4.0,
            closed: 2.0,
            bytes: 100.0,
        };
        let now = FlowCounts {
            requests: 15.0,
            duration_buckets: vec![(5.0, 12.0), (f64::INFINITY, 15.0)],
            opened: 1.0,
            closed: 1.0,
            bytes: 160.0,
        };
        let grew = now.since(Some(&then));
        assert_eq!(grew.requests, 5.0);
        assert_eq!(grew.duration_buckets, [(5.0, 4.0), (f64::INFINITY, 5.0)]);
        // The proxy restarted: its new counts are all new.
        assert_eq!((grew.opened, grew.closed), (1.0, 1.0));
        assert_eq!(grew.bytes, 60.0);
        assert_eq!(now.since(None), now);
        // A grpc error is a failure even with HTTP 200.
        let grpc = parse(
            "istio_requests_total{request_protocol=\"grpc\",response_code=\"200\",grpc_response_status=\"14\"} 1\nistio_requests_total{request_protocol=\"grpc\",response_code=\"200\",grpc_response_status=\"0\"} 2\n",
            10,
        )
        .unwrap();
        let m = ReportMetrics::from_samples(&grpc);
        let failed: f64 = m
            .flows
            .iter()
            .filter(|(f, _)| f.failed)
            .map(|(_, c)| c.requests)
            .sum();
        assert_eq!(failed, 1.0);
    }
}
