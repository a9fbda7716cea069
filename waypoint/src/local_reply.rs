//! Replies the waypoint makes itself (no route, timeout, no healthy upstream, connect failure,
//! denied): a status, the response flag in `x-ambit-flags` (Envoy's letters, also in the
//! metrics and the access log) and a one-line body saying why and what to check, so whoever
//! sees the failure can tell the mesh's doing from the application's. gRPC clients get the
//! same as a trailers-only gRPC status, which is what their libraries surface.

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderName, Response, StatusCode};

use crate::body::{self, Body};

pub const FLAGS_HEADER: HeaderName = HeaderName::from_static("x-ambit-flags");

/// Why the waypoint answered instead of an upstream (or alongside one: URX).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    /// No route matched the request (404).
    NoRoute,
    /// The request (or one attempt of it) timed out (504).
    Timeout,
    /// No healthy endpoint for the chosen backend (503).
    NoHealthyUpstream,
    /// Connecting to the upstream failed (503).
    ConnectFailure,
    /// The upstream connection broke after the request was sent (503).
    UpstreamReset,
    /// The upstream reset the request's stream (503).
    StreamReset,
    /// The upstream's response was not valid HTTP (502).
    ProtocolError,
    /// The client went away (its body broke) before the upstream answered.
    DownstreamClosed,
    /// Retries were exhausted; the last upstream answer is passed on.
    RetriesExhausted,
    /// Denied by an authorization policy (403).
    Denied,
    /// The route's configuration cannot serve the request: a backend that does not exist or
    /// only zero weights (500, as the Gateway API specifies).
    BadBackend,
    /// The request's path cannot be normalised (an escaped slash, a malformed escape): 400,
    /// with Envoy's flag for a downstream protocol error.
    BadPath,
    /// A circuit breaker limit of the backend service was reached (503), or it refused a
    /// retry (the last answer is passed on).
    Overflow,
}

impl Flag {
    /// Envoy's letters, as in Istio's `response_flags`.
    pub fn letters(self) -> &'static str {
        match self {
            Flag::NoRoute => "NR",
            Flag::Timeout => "UT",
            Flag::NoHealthyUpstream => "UH",
            Flag::ConnectFailure => "UF",
            Flag::UpstreamReset => "UC",
            Flag::StreamReset => "UR",
            Flag::ProtocolError => "UPE",
            Flag::DownstreamClosed => "DC",
            Flag::RetriesExhausted => "URX",
            Flag::Denied => "RBAC",
            Flag::BadBackend => "NC",
            Flag::BadPath => "DPE",
            Flag::Overflow => "UO",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Flag::NoRoute => StatusCode::NOT_FOUND,
            Flag::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Flag::NoHealthyUpstream
            | Flag::ConnectFailure
            | Flag::UpstreamReset
            | Flag::StreamReset
            | Flag::DownstreamClosed => StatusCode::SERVICE_UNAVAILABLE,
            Flag::ProtocolError => StatusCode::BAD_GATEWAY,
            Flag::RetriesExhausted | Flag::Overflow => StatusCode::SERVICE_UNAVAILABLE,
            Flag::Denied => StatusCode::FORBIDDEN,
            Flag::BadBackend => StatusCode::INTERNAL_SERVER_ERROR,
            Flag::BadPath => StatusCode::BAD_REQUEST,
        }
    }

    /// The flag for an upstream error's letters ([`crate::upstream::UpstreamError::response_flag`]).
    pub fn from_letters(letters: &str) -> Flag {
        match letters {
            "UC" => Flag::UpstreamReset,
            "UR" => Flag::StreamReset,
            "UPE" => Flag::ProtocolError,
            "DC" => Flag::DownstreamClosed,
            "UH" => Flag::NoHealthyUpstream,
            "UT" => Flag::Timeout,
            "UO" => Flag::Overflow,
            _ => Flag::ConnectFailure,
        }
    }

    /// The gRPC status a gRPC client gets for it (numeric, as on the wire).
    fn grpc_status(self) -> u8 {
        match self {
            Flag::NoRoute => 12,    // UNIMPLEMENTED
            Flag::Timeout => 4,     // DEADLINE_EXCEEDED
            Flag::Denied => 7,      // PERMISSION_DENIED
            Flag::BadBackend => 13, // INTERNAL
            Flag::BadPath => 3,     // INVALID_ARGUMENT
            _ => 14,                // UNAVAILABLE
        }
    }
}

/// The local reply for `flag`, with `detail` as the reason. For gRPC the HTTP status is 200
/// and the status travels in `grpc-status`/`grpc-message` (trailers-only response).
pub fn reply(flag: Flag, detail: &str, grpc: bool) -> Response<Body> {
    let mut response = if grpc {
        let mut r = Response::new(body::empty());
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        r.headers_mut().insert(
            "grpc-status",
            HeaderValue::from(u16::from(flag.grpc_status())),
        );
        if let Ok(v) = HeaderValue::from_str(&grpc_message(detail)) {
            r.headers_mut().insert("grpc-message", v);
        }
        r
    } else {
        let mut r = Response::new(body::full(format!("{detail}\n")));
        *r.status_mut() = flag.status();
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    response
        .headers_mut()
        .insert(FLAGS_HEADER, HeaderValue::from_static(flag.letters()));
    response
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2 spec): printable ASCII except `%`
/// passes, everything else is escaped.
fn grpc_message(detail: &str) -> String {
    let mut out = String::with_capacity(detail.len());
    for b in detail.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_replies_carry_status_flag_and_reason() {
        let r = reply(Flag::Timeout, "upstream timed out after 200ms", false);
        assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(r.headers()[FLAGS_HEADER], "UT");
        let r = reply(Flag::NoRoute, "no route", false);
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(r.headers()[FLAGS_HEADER], "NR");
    }

    #[test]
    fn grpc_replies_are_trailers_only_statuses() {
        let r = reply(Flag::Denied, "denied by policy demo/deny 100%", true);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "7");
        assert_eq!(
            r.headers()["grpc-message"],
            "denied by policy demo/deny 100%25"
        );
        assert_eq!(r.headers()[FLAGS_HEADER], "RBAC");
    }
}
