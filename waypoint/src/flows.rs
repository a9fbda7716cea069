//! What the waypoint tells the controller about each request once its response has ended
//! ([`ambit_discovery::telemetry`]): its count in the shape table (source identity, service,
//! port, method, path prefix: a read-locked lookup), and a `FlowEvent` when the reporter
//! wants one (it failed, or a tap runs; otherwise nothing is built), with the reason in words
//! an application developer reads: the policy, the timeout, the breaker, the retries.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ambit_discovery::state::{Protocol as WorkloadProtocol, Workload};
use ambit_discovery::telemetry::{Reporter, ShapeView, path_prefix};
use ambit_proto::api::telemetry::{FlowEvent, Party, Protocol};
use http::Version;

use crate::destination::Destination;
use crate::forward::Downstream;
use crate::local_reply::Flag;
use crate::report::Report;
use crate::telemetry::Protocol as RequestProtocol;

/// How a request's response ended.
pub(crate) struct Ending<'a> {
    pub status: u16,
    pub grpc_status: Option<u32>,
    pub flags: &'a str,
    pub duration: Duration,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

impl Ending<'_> {
    /// Failed: answered with a 5xx or a gRPC error, or by the waypoint itself (denied, no
    /// route, timed out, breaker, retries exhausted).
    fn failed(&self, report: &Report) -> bool {
        self.status >= 500 || report.flag.is_some() || self.grpc_status.is_some_and(|s| s != 0)
    }
}

pub(crate) fn observe(reporter: &Reporter, down: &Downstream, report: &Report, end: &Ending<'_>) {
    let failed = end.failed(report);
    let (service, workload, namespace, port) = addressed(&down.destination);
    reporter.shapes().count(
        &ShapeView {
            source_identity: down.peer.as_str(),
            destination_workload: workload,
            destination_namespace: namespace,
            destination_service: service,
            destination_port: port.into(),
            method: report.method.as_str(),
            path_prefix: path_prefix(report.uri.path()),
        },
        failed,
    );
    if reporter.wants(failed) {
        reporter.report(event(down, report, end, failed));
    }
}

/// The service host, or the workload and namespace, the client addressed, and the port.
fn addressed(destination: &Destination) -> (&str, &str, &str, u16) {
    match destination {
        Destination::Service { service, port } => (&service.hostname, "", "", port.port),
        Destination::Workload { workload, port } => {
            ("", workload.name(), &workload.shared.namespace, *port)
        }
    }
}

fn event(down: &Downstream, r: &Report, end: &Ending<'_>, failed: bool) -> FlowEvent {
    let (service, _, _, port) = addressed(&down.destination);
    let protocol = match (r.protocol, r.version) {
        (RequestProtocol::Grpc, _) => Protocol::Grpc,
        (_, Version::HTTP_2) => Protocol::Http2,
        _ => Protocol::Http1,
    };
    FlowEvent {
        taps: Vec::new(),
        start_unix_ms: r
            .start_time
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        duration_us: end.duration.as_micros() as u64,
        protocol: protocol.into(),
        source: Some(source(down)),
        destination: Some(match &r.endpoint {
            Some(e) => Party {
                address: e.target.to_string(),
                ..party(&e.workload)
            },
            None => Party::default(),
        }),
        destination_service: service.to_string(),
        destination_port: port.into(),
        // The client's hop is HBONE; the upstream's too unless the endpoint is outside the mesh.
        mutual_tls: r
            .endpoint
            .as_ref()
            .is_none_or(|e| e.workload.protocol == WorkloadProtocol::Hbone),
        method: r.method.to_string(),
        authority: r
            .authority
            .as_ref()
            .and_then(|a| a.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        path: r.uri.path().to_string(),
        status: end.status.into(),
        grpc_status: end.grpc_status.map_or(-1, |s| s as i32),
        response_flags: end.flags.to_string(),
        route: r
            .route
            .as_ref()
            .map_or_else(String::new, |rule| rule.route.to_string()),
        backend_service: r
            .backend
            .as_ref()
            .map_or_else(String::new, |s| s.hostname.to_string()),
        bytes_sent: end.request_bytes,
        bytes_received: end.response_bytes,
        attempts: r.attempts,
        failed,
        reason: match (failed, &r.would_deny) {
            (true, _) => reason(r, end),
            (false, Some(d)) => format!(
                "authorization policy {} would deny it, but it is in observer mode (ambit.io/policy-mode: audit): {}",
                d.policy, d.reason
            ),
            (false, None) => String::new(),
        },
        policy: match (&r.policy, &r.would_deny) {
            (Some(p), _) => p.to_string(),
            (None, Some(d)) => d.policy.to_string(),
            (None, None) => String::new(),
        },
        would_deny: r.policy.is_none() && r.would_deny.is_some(),
    }
}

fn party(w: &Workload) -> Party {
    Party {
        workload: w.name().to_string(),
        namespace: w.shared.namespace.to_string(),
        identity: w.shared.identity.to_string(),
        address: String::new(),
        app: w.canonical_or_name().to_string(),
        version: w.shared.canonical_revision.to_string(),
    }
}

fn source(down: &Downstream) -> Party {
    let mut p = match (&down.source, &down.claimed) {
        (Some(w), _) => party(w),
        (None, Some(c)) => Party {
            workload: c.workload.to_string(),
            namespace: c.namespace.to_string(),
            app: c.app.to_string(),
            version: c.version.to_string(),
            ..Party::default()
        },
        (None, None) => Party {
            namespace: down.peer.namespace().to_string(),
            ..Party::default()
        },
    };
    p.identity = down.peer.to_string();
    p.address = down.client_addr.to_string();
    p
}

/// Why an opaque TCP connection through the waypoint failed.
pub(crate) struct TcpFailure<'a> {
    pub flags: &'static str,
    pub reason: String,
    pub policy: Option<&'a str>,
}

/// An opaque TCP connection through the waypoint ended: counted by shape (no method or
/// path), reported when wanted. `bytes`: (to the destination, back).
pub(crate) fn observe_tcp(
    reporter: &Reporter,
    down: &Downstream,
    started: SystemTime,
    bytes: (u64, u64),
    failure: Option<TcpFailure<'_>>,
) {
    let failed = failure.is_some();
    let (service, workload, namespace, port) = addressed(&down.destination);
    reporter.shapes().count(
        &ShapeView {
            source_identity: down.peer.as_str(),
            destination_workload: workload,
            destination_namespace: namespace,
            destination_service: service,
            destination_port: port.into(),
            ..Default::default()
        },
        failed,
    );
    if !reporter.wants(failed) {
        return;
    }
    let elapsed = started.elapsed().unwrap_or_default();
    let (flags, reason, policy) = match failure {
        Some(f) => (f.flags, f.reason, f.policy.unwrap_or_default().to_string()),
        None => ("-", String::new(), String::new()),
    };
    reporter.report(FlowEvent {
        start_unix_ms: started
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        duration_us: elapsed.as_micros() as u64,
        protocol: Protocol::Tcp.into(),
        source: Some(source(down)),
        destination: Some(match &down.destination {
            Destination::Workload { workload, .. } => party(workload),
            Destination::Service { .. } => Party::default(),
        }),
        destination_service: service.to_string(),
        destination_port: port.into(),
        mutual_tls: true,
        grpc_status: -1,
        response_flags: flags.into(),
        bytes_sent: bytes.0,
        bytes_received: bytes.1,
        failed,
        reason,
        policy,
        ..Default::default()
    });
}

/// Why the request failed, naming the cause.
fn reason(r: &Report, end: &Ending<'_>) -> String {
    let detail = r.detail.as_deref();
    let route = r.route.as_ref().map(|rule| &*rule.route);
    let upstream = || match (&r.endpoint, &r.backend) {
        (Some(e), Some(s)) => format!("{} ({})", e.target, s.hostname),
        (Some(e), None) => e.target.to_string(),
        (None, Some(s)) => s.hostname.to_string(),
        (None, None) => "the upstream".to_string(),
    };
    match (r.flag, detail) {
        (Some(Flag::Timeout), Some(d)) => match route {
            Some(route) => format!("upstream timed out: {d} (route {route})"),
            None => format!("upstream timed out: {d}"),
        },
        (Some(Flag::RetriesExhausted), _) => format!(
            "retries exhausted after {} attempts: last answer {} from {}",
            r.attempts,
            end.status,
            upstream()
        ),
        (Some(Flag::Overflow), None) => format!(
            "the circuit breaker of {} refused a retry: last answer {}",
            upstream(),
            end.status
        ),
        (Some(_), Some(d)) => d.to_string(),
        (Some(flag), None) => format!("{} ({})", flag.letters(), upstream()),
        (None, _) => match end.grpc_status.filter(|s| *s != 0) {
            Some(s) => format!("{} answered gRPC status {s}", upstream()),
            None => format!("{} answered {}", upstream(), end.status),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(flag: Option<Flag>, detail: Option<&str>, attempts: u32) -> Report {
        let (mut head, ()) = http::Request::get("/reviews/1")
            .body(())
            .unwrap()
            .into_parts();
        let mut r = Report::start(&mut head);
        r.flag = flag;
        r.detail = detail.map(str::to_string);
        r.attempts = attempts;
        r
    }

    fn ending(status: u16, grpc_status: Option<u32>) -> Ending<'static> {
        Ending {
            status,
            grpc_status,
            flags: "-",
            duration: Duration::ZERO,
            request_bytes: 0,
            response_bytes: 0,
        }
    }

    #[test]
    fn reasons_name_the_cause() {
        let table = [
            (
                report(Some(Flag::RetriesExhausted), None, 3),
                ending(503, None),
                "retries exhausted after 3 attempts: last answer 503 from the upstream",
            ),
            (
                report(Some(Flag::Overflow), None, 1),
                ending(503, None),
                "the circuit breaker of the upstream refused a retry: last answer 503",
            ),
            (
                report(
                    Some(Flag::Overflow),
                    Some(
                        "circuit breaker of reviews-v1.demo.svc.cluster.local: too many pending requests",
                    ),
                    1,
                ),
                ending(503, None),
                "circuit breaker of reviews-v1.demo.svc.cluster.local: too many pending requests",
            ),
            (
                report(Some(Flag::Timeout), Some("no response within 2s"), 1),
                ending(504, None),
                "upstream timed out: no response within 2s",
            ),
            (
                report(None, None, 1),
                ending(500, None),
                "the upstream answered 500",
            ),
            (
                report(None, None, 1),
                ending(200, Some(14)),
                "the upstream answered gRPC status 14",
            ),
        ];
        for (r, end, want) in table {
            assert!(end.failed(&r), "{want}");
            assert_eq!(reason(&r, &end), want);
        }
        assert!(!ending(404, Some(0)).failed(&report(None, None, 1)));
    }
}
