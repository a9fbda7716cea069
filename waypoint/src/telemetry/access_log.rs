//! The access log: one JSON object per line and per request, to stdout (or any writer the
//! caller gives, so that tests capture it).
//!
//! Fields follow Envoy's (and Istio's JSON access log) meaning: `path` is Envoy's `:path`,
//! query string included, as Istio logs it (the query can carry personal data; routes needing
//! privacy should not log, not truncate); durations are whole milliseconds; a missing value is
//! `null`. `request_id` is the request's `x-request-id`: a request without one should be given
//! one before it is forwarded, as Envoy does, with [`new_request_id`], so that the upstream's
//! logs and ours share it. `trace_id` is the trace of the waypoint's hop (see
//! [`trace`](super::trace)).
//!
//! Writing: the line is serialized into a buffer kept per thread (no allocation once warm;
//! the serializer streams `Display` values such as addresses and ids), then written whole
//! and flushed under a mutex, one `write` per line. A slow stdout therefore holds up the
//! requests that finish while one line is being written, no more than that line's write;
//! good enough for now, a bounded channel to a writer thread is the next step if it shows.
//! Write errors are dropped (a warning is logged once).

use std::cell::RefCell;
use std::fmt;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Version};
use parking_lot::Mutex;
use serde::{Serialize, Serializer};

use super::trace::TraceId;

pub const X_REQUEST_ID: &str = "x-request-id";

/// A line buffer larger than this is not kept for the next line.
const KEEP_BUFFER: usize = 16 * 1024;

/// One request, as logged. Borrowed from the request and response so that logging copies
/// nothing.
#[derive(Debug, Clone, Serialize)]
pub struct Entry<'a> {
    /// When the request's headers arrived; RFC 3339, UTC, milliseconds.
    #[serde(serialize_with = "rfc3339")]
    pub start_time: SystemTime,
    pub method: &'a str,
    /// `:path`, query included.
    pub path: &'a str,
    pub authority: &'a str,
    /// `HTTP/1.1`, `HTTP/2`: see [`protocol`].
    pub protocol: &'static str,
    /// The status sent to the client; 0 when none was.
    pub response_code: u16,
    pub grpc_status: Option<u32>,
    /// Envoy's flag letters, `-` for none.
    pub response_flags: &'a str,
    /// From the request's first byte to the response's last.
    #[serde(rename = "duration_ms", serialize_with = "millis")]
    pub duration: Duration,
    /// From the upstream request's start to the upstream response's headers (last attempt).
    #[serde(rename = "upstream_service_time_ms", serialize_with = "opt_millis")]
    pub upstream_service_time: Option<Duration>,
    /// Tries sent upstream, retries included (0 when the waypoint answered itself).
    pub attempts: u32,
    /// Request body bytes received from the client.
    pub bytes_received: u64,
    /// Response body bytes sent to the client.
    pub bytes_sent: u64,
    /// The endpoint of the last attempt.
    pub upstream_host: Option<SocketAddr>,
    /// The backend service of the last attempt.
    pub upstream_cluster: Option<&'a str>,
    /// The route (`<namespace>/<name>`) that matched.
    pub route_name: Option<&'a str>,
    pub source_principal: Option<&'a str>,
    pub source_address: Option<SocketAddr>,
    pub destination_service: Option<&'a str>,
    pub trace_id: Option<TraceId>,
    pub user_agent: Option<&'a str>,
    pub request_id: Option<&'a str>,
}

/// Envoy's `%PROTOCOL%` for a request's version.
pub fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "-",
    }
}

/// A random (version 4) UUID for a request without `x-request-id`.
pub fn new_request_id() -> HeaderValue {
    new_request_id_with(&mut fastrand::Rng::new())
}

pub fn new_request_id_with(rng: &mut fastrand::Rng) -> HeaderValue {
    let mut b = rng.u128(..).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 36];
    let mut i = 0;
    for (n, byte) in b.iter().enumerate() {
        if matches!(n, 4 | 6 | 8 | 10) {
            out[i] = b'-';
            i += 1;
        }
        out[i] = DIGITS[usize::from(byte >> 4)];
        out[i + 1] = DIGITS[usize::from(byte & 0xf)];
        i += 2;
    }
    HeaderValue::from_bytes(&out).expect("hex digits and dashes are a valid header value")
}

/// Where access log lines go.
pub struct AccessLog {
    out: Mutex<Box<dyn Write + Send>>,
    warned: AtomicBool,
}

impl fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessLog").finish_non_exhaustive()
    }
}

thread_local! {
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl AccessLog {
    /// Lines go to `out`, each written whole and flushed.
    pub fn new(out: impl Write + Send + 'static) -> Self {
        AccessLog {
            out: Mutex::new(Box::new(out)),
            warned: AtomicBool::new(false),
        }
    }

    pub fn stdout() -> Self {
        Self::new(std::io::stdout())
    }

    pub fn log(&self, entry: &Entry<'_>) {
        let result = LINE.with_borrow_mut(|line| {
            line.clear();
            let result = serde_json::to_writer(&mut *line, entry)
                .map_err(std::io::Error::from)
                .and_then(|()| {
                    line.push(b'\n');
                    let mut out = self.out.lock();
                    out.write_all(line)?;
                    out.flush()
                });
            if line.capacity() > KEEP_BUFFER {
                *line = Vec::new();
            }
            result
        });
        if let Err(error) = result
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(%error, "cannot write the access log; further errors are not reported");
        }
    }
}

fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&Rfc3339(*t))
}

fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis().min(u128::from(u64::MAX)) as u64)
}

fn opt_millis<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => millis(d, s),
        None => s.serialize_none(),
    }
}

/// A time as RFC 3339 in UTC with milliseconds (`2024-05-01T12:34:56.789Z`), as Envoy logs
/// `START_TIME`. Times before 1970 show as 1970.
pub struct Rfc3339(pub SystemTime);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let since = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let (year, month, day) = civil_from_days((secs / 86_400) as i64);
        let rem = secs % 86_400;
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
            since.subsec_millis()
        )
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn entry() -> Entry<'static> {
        Entry {
            start_time: UNIX_EPOCH + Duration::from_millis(1_714_566_896_789),
            method: "GET",
            path: "/reviews/1?full=true",
            authority: "reviews.demo.svc.cluster.local:9080",
            protocol: protocol(Version::HTTP_11),
            response_code: 200,
            grpc_status: None,
            response_flags: "-",
            duration: Duration::from_micros(12_900),
            upstream_service_time: Some(Duration::from_millis(11)),
            attempts: 1,
            bytes_received: 0,
            bytes_sent: 358,
            upstream_host: Some("10.244.1.5:9080".parse().unwrap()),
            upstream_cluster: Some("reviews-v1.demo.svc.cluster.local"),
            route_name: Some("demo/reviews"),
            source_principal: Some("spiffe://cluster.local/ns/demo/sa/productpage"),
            source_address: Some("10.244.0.7:50312".parse().unwrap()),
            destination_service: Some("reviews.demo.svc.cluster.local"),
            trace_id: Some(TraceId([0xab; 16])),
            user_agent: Some("curl/8.5.0"),
            request_id: Some("6f1c1a5e-6b0a-4c1e-9a1e-0f6a2b3c4d5e"),
        }
    }

    #[test]
    fn one_json_line_per_request() {
        let capture = Capture::default();
        let log = AccessLog::new(capture.clone());
        log.log(&entry());
        let mut e = entry();
        e.response_code = 504;
        e.response_flags = "UT";
        e.upstream_service_time = None;
        e.upstream_host = None;
        e.trace_id = None;
        log.log(&e);
        let text = String::from_utf8(capture.0.lock().clone()).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(text.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        let want = serde_json::json!({
            "start_time": "2024-05-01T12:34:56.789Z",
            "method": "GET",
            "path": "/reviews/1?full=true",
            "authority": "reviews.demo.svc.cluster.local:9080",
            "protocol": "HTTP/1.1",
            "response_code": 200,
            "grpc_status": null,
            "response_flags": "-",
            "duration_ms": 12,
            "upstream_service_time_ms": 11,
            "attempts": 1,
            "bytes_received": 0,
            "bytes_sent": 358,
            "upstream_host": "10.244.1.5:9080",
            "upstream_cluster": "reviews-v1.demo.svc.cluster.local",
            "route_name": "demo/reviews",
            "source_principal": "spiffe://cluster.local/ns/demo/sa/productpage",
            "source_address": "10.244.0.7:50312",
            "destination_service": "reviews.demo.svc.cluster.local",
            "trace_id": "abababababababababababababababab",
            "user_agent": "curl/8.5.0",
            "request_id": "6f1c1a5e-6b0a-4c1e-9a1e-0f6a2b3c4d5e",
        });
        assert_eq!(v, want);
        let v: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(v["response_code"], 504);
        assert_eq!(v["response_flags"], "UT");
        assert_eq!(v["upstream_service_time_ms"], serde_json::Value::Null);
        assert_eq!(v["trace_id"], serde_json::Value::Null);
    }

    #[test]
    fn strings_are_escaped() {
        let capture = Capture::default();
        let log = AccessLog::new(capture.clone());
        let mut e = entry();
        e.path = "/a\"b\n";
        e.user_agent = Some("x\u{7}y");
        log.log(&e);
        let text = String::from_utf8(capture.0.lock().clone()).unwrap();
        assert_eq!(text.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["path"], "/a\"b\n");
        assert_eq!(v["user_agent"], "x\u{7}y");
    }

    #[test]
    fn rfc3339_dates() {
        let at = |secs: u64, ms: u64| {
            Rfc3339(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms)).to_string()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_709_251_199, 999), "2024-02-29T23:59:59.999Z");
        assert_eq!(at(4_102_444_800, 0), "2100-01-01T00:00:00.000Z");
        assert_eq!(
            Rfc3339(UNIX_EPOCH - Duration::from_secs(5)).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let mut rng = fastrand::Rng::with_seed(3);
        let a = new_request_id_with(&mut rng);
        let b = new_request_id_with(&mut rng);
        assert_ne!(a, b);
        let s = a.to_str().unwrap();
        assert_eq!(s.len(), 36);
        let dashes: Vec<_> = s.match_indices('-').map(|(i, _)| i).collect();
        assert_eq!(dashes, [8, 13, 18, 23]);
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "{s}");
        assert!(
            s.bytes()
                .all(|c| c == b'-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }

    #[test]
    fn protocols() {
        assert_eq!(protocol(Version::HTTP_2), "HTTP/2");
        assert_eq!(protocol(Version::HTTP_10), "HTTP/1.0");
    }
}
