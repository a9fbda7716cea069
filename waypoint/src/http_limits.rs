//! What one client connection may make the waypoint's HTTP server hold or do, and what
//! happens when it goes over: its connection is closed (its stream reset, for what HTTP/2
//! scopes to a stream), every other connection goes on. Each limit is a flag; each refusal is
//! counted and logged (at most a few lines a second per kind, the rest counted in the next
//! line) with the client and the limit.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ambit_proto::hbone::Abuse;
use ambit_proto::log_limit::LogLimiter;
use clap::builder::RangedU64ValueParser;

use crate::forward::Downstream;

/// A request head (HTTP/1.1) or a header block (HTTP/2) must arrive whole within this long.
/// Long enough for a client on a congested link, short enough that a slowloris holds a
/// connection for seconds, not for ever. For HTTP/1.1 it also bounds an idle keep-alive
/// connection: hyper starts it again when it waits for the next request.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Request line and headers (HTTP/1.1) or the decoded header list (HTTP/2): 64 KiB holds
/// the large cookies and tokens real clients send, with room to spare.
pub const DEFAULT_MAX_HEADER_BYTES: u32 = 64 * 1024;
/// hyper's own default, made explicit.
pub const DEFAULT_HTTP1_MAX_HEADERS: usize = 100;
/// Streams at once on one HTTP/2 connection; a client that needs more opens a second
/// connection (gRPC libraries do). Bounds what one connection can make the waypoint hold:
/// this many requests upstream and this many response buffers.
pub const DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// Streams reset by the client before the server took them off the accept queue: h2's
/// rapid-reset bound (CVE-2023-44487). A well-behaved client almost never does this.
pub const DEFAULT_HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 50;
/// Streams the waypoint had to reset for the client's protocol errors (stream stacking,
/// CVE-2023-26964, and its kin).
pub const DEFAULT_HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;
/// Requests a client cancels (RST_STREAM) after the waypoint started on them but before their
/// response began; past this many, and once they are half of its requests or more, the
/// connection is closed. This is rapid reset paced so that h2's accept queue never fills:
/// each cancelled request still cost a route, a policy check and maybe an upstream request.
pub const DEFAULT_HTTP2_MAX_PREMATURE_RESETS: u64 = 100;
/// Response bytes buffered per HTTP/2 stream for a client that reads slowly.
pub const DEFAULT_HTTP2_MAX_SEND_BUF_SIZE: usize = 64 * 1024;

/// Log lines per second for each kind of refusal.
const LOG_LINES_PER_SECOND: u32 = 5;

/// The limits, as flags of the waypoint (see the `DEFAULT_*` constants for why each default
/// is what it is; waypoint/README.md lists them all).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct HttpLimits {
    /// HTTP/1.1: a request head must arrive whole within this long (and an idle keep-alive
    /// connection is closed after it); HTTP/2: a header block must end within this long of its
    /// first frame. Else the connection is closed.
    #[arg(long = "http-header-timeout", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,
    /// The largest request head, in bytes: HTTP/1.1 request line and headers (431, connection
    /// closed); HTTP/2 decoded header list, SETTINGS_MAX_HEADER_LIST_SIZE (431 on the stream;
    /// the connection closed when far over it).
    #[arg(long = "http-max-header-bytes", default_value_t = DEFAULT_MAX_HEADER_BYTES,
          value_parser = RangedU64ValueParser::<u32>::new().range(1024..=16 * 1024 * 1024))]
    pub max_header_bytes: u32,
    /// HTTP/1.1: the most header fields in one request (431, connection closed).
    #[arg(long = "http1-max-headers", default_value_t = DEFAULT_HTTP1_MAX_HEADERS,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    pub http1_max_headers: usize,
    /// HTTP/2: streams at once per connection (SETTINGS_MAX_CONCURRENT_STREAMS); more are
    /// refused with REFUSED_STREAM.
    #[arg(long = "http2-max-concurrent-streams", default_value_t = DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS,
          value_parser = RangedU64ValueParser::<u32>::new().range(1..=100_000))]
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2: streams a client may reset before they are accepted (rapid reset); over it the
    /// connection is closed with GOAWAY ENHANCE_YOUR_CALM.
    #[arg(long = "http2-max-pending-accept-reset-streams", default_value_t = DEFAULT_HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub http2_max_pending_accept_reset_streams: usize,
    /// HTTP/2: streams the waypoint may reset for a client's protocol errors; over it the
    /// connection is closed with GOAWAY ENHANCE_YOUR_CALM.
    #[arg(long = "http2-max-local-error-reset-streams", default_value_t = DEFAULT_HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub http2_max_local_error_reset_streams: usize,
    /// HTTP/2: requests a client may cancel before their response starts; over it, once they
    /// are half of its requests or more, the connection is closed.
    #[arg(long = "http2-max-premature-resets", default_value_t = DEFAULT_HTTP2_MAX_PREMATURE_RESETS,
          value_parser = RangedU64ValueParser::<u64>::new().range(1..))]
    pub http2_max_premature_resets: u64,
    /// HTTP/2: response bytes buffered per stream for a client that reads slowly.
    #[arg(long = "http2-max-send-buf-size", default_value_t = DEFAULT_HTTP2_MAX_SEND_BUF_SIZE,
          value_parser = RangedU64ValueParser::<usize>::new().range(16 * 1024..=16 * 1024 * 1024))]
    pub http2_max_send_buf_size: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            http1_max_headers: DEFAULT_HTTP1_MAX_HEADERS,
            http2_max_concurrent_streams: DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS,
            http2_max_pending_accept_reset_streams: DEFAULT_HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS,
            http2_max_local_error_reset_streams: DEFAULT_HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS,
            http2_max_premature_resets: DEFAULT_HTTP2_MAX_PREMATURE_RESETS,
            http2_max_send_buf_size: DEFAULT_HTTP2_MAX_SEND_BUF_SIZE,
        }
    }
}

/// Which limit closed a client's connection (or refused its request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The request head / header block did not arrive in time (slowloris).
    SlowHeaders,
    /// A request head / header list over the size limit, or too many headers.
    OversizedHeaders,
    /// An HTTP/1.1 head hyper refused with 400: two differing Content-Lengths, a
    /// Transfer-Encoding not ending in chunked, or otherwise not HTTP.
    MalformedRequest,
    /// An HTTP/1.1 request with both Content-Length and Transfer-Encoding (smuggling).
    AmbiguousLength,
    /// CONTINUATION frames past what the header list size allows (CVE-2024-27919).
    ContinuationFlood,
    /// Streams reset before they were accepted, past h2's bound (CVE-2023-44487).
    RapidReset,
    /// Requests cancelled before their response, past our bound (paced rapid reset).
    PrematureResets,
    /// Streams the waypoint had to reset, past h2's bound (stream stacking and the like).
    StreamErrors,
}

impl Refusal {
    pub const ALL: [Refusal; 8] = [
        Refusal::SlowHeaders,
        Refusal::OversizedHeaders,
        Refusal::MalformedRequest,
        Refusal::AmbiguousLength,
        Refusal::ContinuationFlood,
        Refusal::RapidReset,
        Refusal::PrematureResets,
        Refusal::StreamErrors,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Refusal::SlowHeaders => "slow_headers",
            Refusal::OversizedHeaders => "oversized_headers",
            Refusal::MalformedRequest => "malformed_request",
            Refusal::AmbiguousLength => "ambiguous_length",
            Refusal::ContinuationFlood => "continuation_flood",
            Refusal::RapidReset => "rapid_reset",
            Refusal::PrematureResets => "premature_resets",
            Refusal::StreamErrors => "stream_errors",
        }
    }

    /// The flag that sets the limit (none: the protocol itself forbids it).
    pub fn flag(self) -> Option<&'static str> {
        match self {
            Refusal::SlowHeaders => Some("--http-header-timeout"),
            Refusal::OversizedHeaders => Some("--http-max-header-bytes, --http1-max-headers"),
            Refusal::MalformedRequest | Refusal::AmbiguousLength => None,
            // h2 allows 1.25 frames of the largest size per header list.
            Refusal::ContinuationFlood => Some("--http-max-header-bytes"),
            Refusal::RapidReset => Some("--http2-max-pending-accept-reset-streams"),
            Refusal::PrematureResets => Some("--http2-max-premature-resets"),
            Refusal::StreamErrors => Some("--http2-max-local-error-reset-streams"),
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl From<Abuse> for Refusal {
    fn from(abuse: Abuse) -> Self {
        match abuse {
            Abuse::SlowHeaders => Refusal::SlowHeaders,
            Abuse::ContinuationFlood => Refusal::ContinuationFlood,
            Abuse::OversizedHeaders => Refusal::OversizedHeaders,
            Abuse::RapidReset => Refusal::RapidReset,
            Abuse::StreamErrors => Refusal::StreamErrors,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Refusals counted by limit, and their log lines rate-limited by limit.
#[derive(Debug)]
pub struct Refusals {
    counts: [AtomicU64; Refusal::ALL.len()],
    logs: [LogLimiter; Refusal::ALL.len()],
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            logs: std::array::from_fn(|_| LogLimiter::new(LOG_LINES_PER_SECOND)),
        }
    }
}

impl Refusals {
    /// Connections closed (or, for HTTP/1.1 smuggling, requests refused) by `refusal`.
    pub fn count(&self, refusal: Refusal) -> u64 {
        self.counts[refusal.index()].load(Ordering::Relaxed)
    }

    /// Counts the refusal and logs it, unless this kind was logged too often this second.
    pub(crate) fn record(&self, refusal: Refusal, down: &Downstream, detail: &str) {
        self.counts[refusal.index()].fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.logs[refusal.index()].check() {
            tracing::warn!(
                peer = %down.peer,
                client = %down.client_addr,
                limit = %refusal,
                flag = refusal.flag().unwrap_or("none, the protocol forbids it"),
                suppressed,
                "closed a client HTTP connection over a limit: {detail} (only this connection is affected)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Flags {
        #[command(flatten)]
        limits: HttpLimits,
    }

    #[test]
    fn flags_set_the_limits_and_values_that_would_disable_one_are_refused() {
        let parsed = Flags::try_parse_from([
            "waypoint",
            "--http-header-timeout=3s",
            "--http2-max-concurrent-streams=250",
        ])
        .unwrap()
        .limits;
        assert_eq!(parsed.header_timeout, Duration::from_secs(3));
        assert_eq!(parsed.http2_max_concurrent_streams, 250);
        assert_eq!(
            Flags::try_parse_from(["waypoint"]).unwrap().limits,
            HttpLimits::default()
        );
        for bad in [
            "--http2-max-concurrent-streams=0",
            "--http-max-header-bytes=10",
            "--http2-max-send-buf-size=5000000000",
            "--http2-max-premature-resets=0",
        ] {
            let error = Flags::try_parse_from(["waypoint", bad])
                .unwrap_err()
                .to_string();
            let flag = bad.split('=').next().unwrap();
            assert!(error.contains(flag), "{bad}: {error}");
        }
    }
}
