//! What the waypoint tells about each request: Istio's request metrics ([`metrics`]), a JSON
//! access log line ([`access_log`]) and its hop of the W3C trace ([`trace`]).
//!
//! Per request, the request path:
//! 1. on arrival, [`trace::hop`] on the request headers, sets the returned `traceparent`
//!    (dropping `tracestate` when [`trace::Hop::restarted`]) and, when absent, an
//!    `x-request-id` from [`access_log::new_request_id`];
//! 2. when the response has ended, [`metrics::RequestMetrics::record`] with the
//!    [`metrics::RequestLabels`] of (source, destination workload, service), built once and
//!    kept, and [`access_log::AccessLog::log`].

pub mod access_log;
pub mod metrics;
pub mod trace;

pub use access_log::{AccessLog, Entry};
pub use metrics::{Outcome, Peer, RequestLabels, RequestMetrics, Service};
pub use trace::{Hop, TraceId, TraceParent};

/// `response_flags` when there is none.
pub const NO_FLAGS: &str = "-";

/// The `request_protocol` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Grpc,
}

impl Protocol {
    /// gRPC when the request's `content-type` is `application/grpc` or `application/grpc+…`.
    pub fn of_request(headers: &http::HeaderMap) -> Self {
        let grpc = headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes())
            .is_some_and(|ct| {
                ct.strip_prefix(b"application/grpc")
                    .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
            });
        if grpc { Protocol::Grpc } else { Protocol::Http }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue, header::CONTENT_TYPE};

    use super::*;

    #[test]
    fn protocol_of_request() {
        for (ct, want) in [
            (Some("application/grpc"), Protocol::Grpc),
            (Some("application/grpc+proto"), Protocol::Grpc),
            (Some("application/grpc-web"), Protocol::Http),
            (Some("application/json"), Protocol::Http),
            (None, Protocol::Http),
        ] {
            let mut h = HeaderMap::new();
            if let Some(ct) = ct {
                h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            }
            assert_eq!(Protocol::of_request(&h), want, "{ct:?}");
        }
    }
}
