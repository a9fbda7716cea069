//! What is retried, and when.
//!
//! A rule's retry config is compiled once into a [`Policy`] ([`Policy::from_proto`] for the
//! route's GEP-1731 config: HTTP codes, gRPC codes, backoff; [`Policy::parse`] for Envoy-style
//! `retry_on` words); after each attempt, [`decide`] says whether to try again and after what
//! delay. The caller then takes a retry from the [`RetryBudget`](super::RetryBudget); [`decide`]
//! takes [`ReplayBody::is_capped`](super::ReplayBody::is_capped) as input.
//!
//! Conditions. From the route config: the HTTP status codes listed, and the gRPC codes listed
//! (see below for where `grpc-status` is looked for). With [`Policy::parse`] (Envoy's and
//! Linkerd's spellings, case-insensitive):
//! - `503`, `500-504`: response status codes; `5xx`: 500–599; `gateway-error`: 502, 503, 504;
//!   `retriable-4xx`: 409. A per-try timeout counts as a 504 (the status it ends in), as in
//!   Envoy.
//! - `reset`: the upstream reset or closed the stream before answering. `5xx` and
//!   `gateway-error` include it, as in Envoy.
//! - gRPC status names (`unavailable`, `cancelled`, `deadline-exceeded`, `resource-exhausted`,
//!   `internal`, … any of the 17, kebab or snake case) or `grpc:14`: matched against the
//!   `grpc-status` **response header** only, that is trailers-only responses, which is how
//!   servers answer UNAVAILABLE and friends without a body and what Envoy (hence Istio)
//!   retries. A `grpc-status` in trailers arrives after the response body, which has been
//!   streamed to the client by then: it is never retried.
//! - `connect-failure`, `refused-stream`, `retriable-status-codes`: accepted for Istio
//!   compatibility; the first two are always on (below), the last is implied by listing codes.
//!
//! Safe by default: an attempt that failed before any byte of the request was sent (connection
//! refused or failed, HTTP/2 REFUSED_STREAM, no connection from the pool) is retried even
//! without a retry config, up to [`DEFAULT_ATTEMPTS`] tries in all: the upstream never saw it.
//!
//! Never retried: a request whose body streamed past the replay cap, whatever the outcome. The
//! request method is not looked at: a configured condition applies to every method, as with
//! Envoy and the Gateway API.

use std::time::Duration;

use http::{HeaderMap, StatusCode};

/// Tries in all (the first included) for a request that failed before being sent, when its
/// rule has no retry config.
pub const DEFAULT_ATTEMPTS: u32 = 2;

/// Backoff base of the retries made without a retry config (Envoy's default base).
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);

/// The gRPC status names in code order (0..=16), kebab case.
const GRPC_NAMES: [&str; 17] = [
    "ok",
    "cancelled",
    "unknown",
    "invalid-argument",
    "deadline-exceeded",
    "not-found",
    "already-exists",
    "permission-denied",
    "resource-exhausted",
    "failed-precondition",
    "aborted",
    "out-of-range",
    "unimplemented",
    "internal",
    "unavailable",
    "data-loss",
    "unauthenticated",
];

/// The gRPC code for a status name (`UNAVAILABLE`, `deadline_exceeded`, `data-loss`…).
pub fn grpc_code(name: &str) -> Option<u8> {
    let name = name.trim().to_ascii_lowercase().replace('_', "-");
    let name = if name == "canceled" {
        "cancelled"
    } else {
        &name
    };
    GRPC_NAMES.iter().position(|n| *n == name).map(|c| c as u8)
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("unknown retry condition {0:?}")]
pub struct PolicyError(pub String);

/// How one attempt ended.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// Failed before any byte of the request reached the upstream: connect refused or failed,
    /// TLS/HBONE handshake failed, HTTP/2 REFUSED_STREAM, no connection from the pool.
    NotSent,
    /// The upstream reset or closed the stream after the request was (perhaps partly) sent,
    /// before response headers.
    Reset,
    /// The per-try timeout fired before response headers.
    PerTryTimeout,
    /// Response headers arrived.
    Response {
        status: StatusCode,
        headers: &'a HeaderMap,
    },
}

/// A set of HTTP status codes (0..640), as a bitset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Codes([u64; 10]);

impl Codes {
    fn insert_range(&mut self, from: u16, to: u16) {
        for code in from..=to.min(639) {
            self.0[usize::from(code / 64)] |= 1 << (code % 64);
        }
    }

    fn contains(&self, code: u16) -> bool {
        code < 640 && self.0[usize::from(code / 64)] & (1 << (code % 64)) != 0
    }
}

/// Delays between attempts: uniformly random in `[base, min(base·2^n, max)]` before retry
/// `n` (1 for the first retry), `max` being 10 × base, Envoy's default (full jitter above the
/// base, so that clients that failed together do not retry together). The Gateway API
/// (GEP-1731) leaves the algorithm to the implementation. A zero base means no wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn new(base: Duration) -> Self {
        Backoff {
            base,
            max: base.saturating_mul(10),
        }
    }

    /// The delay before retry `retry` (1-based).
    pub fn delay(&self, retry: u32) -> Duration {
        self.delay_with(retry, &mut fastrand::Rng::new())
    }

    pub fn delay_with(&self, retry: u32, rng: &mut fastrand::Rng) -> Duration {
        let base = self.base.as_nanos().min(u128::from(u64::MAX)) as u64;
        let max = (self.max.as_nanos().min(u128::from(u64::MAX)) as u64).max(base);
        let upper = base.saturating_mul(1u64 << retry.clamp(1, 32)).min(max);
        Duration::from_nanos(rng.u64(base..=upper))
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(DEFAULT_BACKOFF_BASE)
    }
}

/// A rule's retry config, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    attempts: u32,
    codes: Codes,
    /// Bit `c` set: retry on gRPC status `c` (0..=16) in the response headers.
    grpc: u32,
    on_reset: bool,
    pub backoff: Backoff,
    pub per_try_timeout: Option<Duration>,
}

impl Default for Policy {
    /// No conditions: only requests that were not sent are retried, [`DEFAULT_ATTEMPTS`] in
    /// all.
    fn default() -> Self {
        Policy {
            attempts: DEFAULT_ATTEMPTS,
            codes: Codes::default(),
            grpc: 0,
            on_reset: false,
            backoff: Backoff::default(),
            per_try_timeout: None,
        }
    }
}

impl Policy {
    /// `attempts` counts tries in all, the first included (at least 1); `codes` are HTTP
    /// statuses and `grpc_codes` gRPC statuses (0..=16) to retry; others are ignored.
    pub fn new(attempts: u32, codes: &[u16], grpc_codes: &[u32], backoff_base: Duration) -> Self {
        let mut policy = Policy {
            attempts: attempts.max(1),
            backoff: Backoff::new(backoff_base),
            ..Policy::default()
        };
        for &code in codes.iter().filter(|c| (100..=599).contains(*c)) {
            policy.codes.insert_range(code, code);
        }
        for &g in grpc_codes.iter().filter(|g| **g <= 16) {
            policy.grpc |= 1 << g;
        }
        policy
    }

    /// From a route rule's retry config (GEP-1731), whose `attempts` counts retries after the
    /// first try and whose `backoff_ms` 0 means no wait.
    pub fn from_proto(p: &ambit_proto::api::route::RetryPolicy) -> Self {
        let codes: Vec<u16> = p
            .codes
            .iter()
            .filter_map(|c| u16::try_from(*c).ok())
            .collect();
        Policy::new(
            p.attempts.saturating_add(1),
            &codes,
            &p.grpc_codes,
            Duration::from_millis(p.backoff_ms),
        )
    }

    /// From a compiled route rule's retry config (`attempts` counts retries after the first).
    pub fn from_route(r: &crate::route::RetryPolicy) -> Self {
        let codes: Vec<u16> = r.codes.iter().map(|c| c.as_u16()).collect();
        Policy::new(
            r.attempts.saturating_add(1),
            &codes,
            &r.grpc_codes,
            r.backoff,
        )
    }

    /// From Envoy-style `retry_on` words (see the module docs); `attempts` counts tries in
    /// all, the first included.
    pub fn parse<S: AsRef<str>>(
        attempts: u32,
        retry_on: &[S],
        backoff_base: Duration,
    ) -> Result<Self, PolicyError> {
        let mut policy = Policy::new(attempts, &[], &[], backoff_base);
        for cond in retry_on {
            policy.add_condition(cond.as_ref())?;
        }
        Ok(policy)
    }

    /// Tries in all, the first included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    fn add_condition(&mut self, cond: &str) -> Result<(), PolicyError> {
        let c = cond.trim().to_ascii_lowercase();
        let code = |s: &str| {
            s.trim()
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
        };
        match c.as_str() {
            "" | "connect-failure" | "refused-stream" | "retriable-status-codes" => {}
            "5xx" => {
                self.codes.insert_range(500, 599);
                self.on_reset = true;
            }
            "gateway-error" => {
                self.codes.insert_range(502, 504);
                self.on_reset = true;
            }
            "retriable-4xx" => self.codes.insert_range(409, 409),
            "reset" => self.on_reset = true,
            _ => {
                if let Some(code) = code(&c) {
                    self.codes.insert_range(code, code);
                } else if let Some((from, to)) = c.split_once('-')
                    && let (Some(from), Some(to)) = (code(from), code(to))
                    && from <= to
                {
                    self.codes.insert_range(from, to);
                } else if let Some(g) = c
                    .strip_prefix("grpc:")
                    .and_then(|g| g.parse::<u8>().ok())
                    .filter(|g| *g <= 16)
                    .or_else(|| grpc_code(&c))
                {
                    self.grpc |= 1 << g;
                } else {
                    return Err(PolicyError(cond.to_string()));
                }
            }
        }
        Ok(())
    }

    /// Whether the outcome matches a condition (attempts, budget and body aside).
    pub fn is_retryable(&self, outcome: &Outcome<'_>) -> bool {
        match outcome {
            Outcome::NotSent => true,
            Outcome::Reset => self.on_reset,
            Outcome::PerTryTimeout => self.codes.contains(504),
            Outcome::Response { status, headers } => {
                self.codes.contains(status.as_u16())
                    || (self.grpc != 0
                        && grpc_status(headers)
                            .is_some_and(|g| g <= 16 && self.grpc & (1 << g) != 0))
            }
        }
    }
}

/// The `grpc-status` of a response's headers (a trailers-only response) or of trailers.
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// After try number `attempt` (1 for the first) ended with `outcome`: `Some(delay)` to try
/// again after `delay`, `None` to give the outcome to the client. `policy` is the rule's
/// (`None` without a retry config); `body_capped` is
/// [`ReplayBody::is_capped`](super::ReplayBody::is_capped) after the attempt. The caller
/// still takes the retry from the budget and, if it is spent, stops.
pub fn decide(
    policy: Option<&Policy>,
    attempt: u32,
    outcome: &Outcome<'_>,
    body_capped: bool,
) -> Option<Duration> {
    decide_with(
        policy,
        attempt,
        outcome,
        body_capped,
        &mut fastrand::Rng::new(),
    )
}

pub fn decide_with(
    policy: Option<&Policy>,
    attempt: u32,
    outcome: &Outcome<'_>,
    body_capped: bool,
    rng: &mut fastrand::Rng,
) -> Option<Duration> {
    if body_capped {
        return None;
    }
    let default = Policy::default();
    let policy = policy.unwrap_or(&default);
    let attempts = match outcome {
        Outcome::NotSent => policy.attempts.max(DEFAULT_ATTEMPTS),
        _ => policy.attempts,
    };
    (attempt < attempts && policy.is_retryable(outcome))
        .then(|| policy.backoff.delay_with(attempt, rng))
}

/// The `grpc-timeout` request header as a duration: 1 to 8 ASCII digits and a unit, `H`ours,
/// `M`inutes, `S`econds, `m`illis, `u` micros or `n`anos (the gRPC over HTTP/2 spec). `None`
/// when absent or malformed (then there is no deadline, as gRPC servers treat it).
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    parse_grpc_timeout(headers.get("grpc-timeout")?.as_bytes())
}

pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    fn policy(attempts: u32, on: &[&str]) -> Policy {
        Policy::parse(attempts, on, Duration::from_millis(10)).unwrap()
    }

    #[test]
    fn conditions_table() {
        let none = HeaderMap::new();
        let unavailable = headers(&[("grpc-status", "14"), ("content-type", "application/grpc")]);
        let internal = headers(&[("grpc-status", "13")]);
        let resp = |code: u16, h: &'static HeaderMap| Outcome::Response {
            status: StatusCode::from_u16(code).unwrap(),
            headers: h,
        };
        // Leak the maps to get 'static references for the table.
        let none: &'static HeaderMap = Box::leak(Box::new(none));
        let unavailable: &'static HeaderMap = Box::leak(Box::new(unavailable));
        let internal: &'static HeaderMap = Box::leak(Box::new(internal));
        let cases: &[(&[&str], Outcome<'static>, bool)] = &[
            (&["503"], resp(503, none), true),
            (&["503"], resp(502, none), false),
            (&["503"], resp(200, none), false),
            (&["500-504"], resp(504, none), true),
            (&["500-504"], resp(505, none), false),
            (&["5xx"], resp(599, none), true),
            (&["5xx"], resp(499, none), false),
            (&["gateway-error"], resp(502, none), true),
            (&["gateway-error"], resp(500, none), false),
            (&["retriable-4xx"], resp(409, none), true),
            (&["Retriable-Status-Codes", "503"], resp(503, none), true),
            // Resets: only with reset, 5xx or gateway-error.
            (&["503"], Outcome::Reset, false),
            (&["reset"], Outcome::Reset, true),
            (&["5xx"], Outcome::Reset, true),
            (&["gateway-error"], Outcome::Reset, true),
            // A per-try timeout is a 504.
            (&["504"], Outcome::PerTryTimeout, true),
            (&["503"], Outcome::PerTryTimeout, false),
            (&["5xx"], Outcome::PerTryTimeout, true),
            // Not sent: always.
            (&[], Outcome::NotSent, true),
            (&["503"], Outcome::NotSent, true),
            // gRPC, trailers-only responses (status in the headers, HTTP 200).
            (&["unavailable"], resp(200, unavailable), true),
            (&["UNAVAILABLE"], resp(200, unavailable), true),
            (&["unavailable"], resp(200, internal), false),
            (&["internal", "cancelled"], resp(200, internal), true),
            (&["grpc:14"], resp(200, unavailable), true),
            (&["deadline_exceeded"], resp(200, unavailable), false),
            (&["unavailable"], resp(200, none), false),
            (&["503"], resp(200, unavailable), false),
        ];
        for (on, outcome, want) in cases {
            let p = policy(3, on);
            assert_eq!(p.is_retryable(outcome), *want, "{on:?} {outcome:?}");
        }
    }

    #[test]
    fn unknown_conditions_are_errors() {
        for bad in ["5xxx", "600", "504-500", "grpc:17", "sometimes"] {
            assert_eq!(
                Policy::parse(2, &[bad], Duration::ZERO),
                Err(PolicyError(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn grpc_names() {
        assert_eq!(grpc_code("unavailable"), Some(14));
        assert_eq!(grpc_code("RESOURCE_EXHAUSTED"), Some(8));
        assert_eq!(grpc_code("deadline-exceeded"), Some(4));
        assert_eq!(grpc_code("canceled"), Some(1));
        assert_eq!(grpc_code("unauthenticated"), Some(16));
        assert_eq!(grpc_code("nope"), None);
    }

    #[test]
    fn decide_table() {
        let none: &'static HeaderMap = Box::leak(Box::new(HeaderMap::new()));
        let r503 = Outcome::Response {
            status: StatusCode::SERVICE_UNAVAILABLE,
            headers: none,
        };
        let p3 = policy(3, &["503"]);
        let p1 = policy(1, &["503"]);
        let cases: &[(Option<&Policy>, u32, Outcome<'static>, bool, bool)] = &[
            // policy, attempt just made, outcome, body capped, retry?
            (Some(&p3), 1, r503, false, true),
            (Some(&p3), 2, r503, false, true),
            (Some(&p3), 3, r503, false, false),
            (Some(&p3), 1, r503, true, false),
            (Some(&p1), 1, r503, false, false),
            // No config: only not-sent requests, once.
            (None, 1, r503, false, false),
            (None, 1, Outcome::Reset, false, false),
            (None, 1, Outcome::NotSent, false, true),
            (None, 2, Outcome::NotSent, false, false),
            (None, 1, Outcome::NotSent, true, false),
            // A config with 1 attempt still retries what was never sent.
            (Some(&p1), 1, Outcome::NotSent, false, true),
            (Some(&p3), 2, Outcome::NotSent, false, true),
            (Some(&p3), 3, Outcome::NotSent, false, false),
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        for (p, attempt, outcome, capped, want) in cases {
            let got = decide_with(*p, *attempt, outcome, *capped, &mut rng);
            assert_eq!(got.is_some(), *want, "{p:?} {attempt} {outcome:?} {capped}");
        }
    }

    #[test]
    fn backoff_is_jittered_within_bounds() {
        let b = Backoff::new(Duration::from_millis(10));
        assert_eq!(b.max, Duration::from_millis(100));
        let mut rng = fastrand::Rng::with_seed(1);
        for (retry, upper) in [(1, 20), (2, 40), (3, 80), (4, 100), (10, 100), (40, 100)] {
            let delays: Vec<_> = (0..200).map(|_| b.delay_with(retry, &mut rng)).collect();
            let lo = Duration::from_millis(10);
            let hi = Duration::from_millis(upper);
            assert!(delays.iter().all(|d| (lo..=hi).contains(d)), "{retry}");
            // Jittered, not constant.
            assert!(delays.iter().any(|d| *d != delays[0]), "{retry}");
        }
        assert_eq!(Backoff::new(Duration::ZERO).delay(3), Duration::ZERO);
        let d = Backoff::default().delay(1);
        assert!(d >= DEFAULT_BACKOFF_BASE && d <= DEFAULT_BACKOFF_BASE * 2);
    }

    #[test]
    fn grpc_timeout_table() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("200m", Some(Duration::from_millis(200))),
            ("1S", Some(Duration::from_secs(1))),
            ("2M", Some(Duration::from_secs(120))),
            ("1H", Some(Duration::from_secs(3600))),
            ("500u", Some(Duration::from_micros(500))),
            ("99999999n", Some(Duration::from_nanos(99_999_999))),
            ("0m", Some(Duration::ZERO)),
            ("123456789m", None),
            ("m", None),
            ("", None),
            ("10", None),
            ("10s", None),
            ("1.5S", None),
            ("-1S", None),
            (" 1S", None),
        ];
        for (v, want) in cases {
            assert_eq!(parse_grpc_timeout(v.as_bytes()), *want, "{v:?}");
        }
        assert_eq!(
            grpc_timeout(&headers(&[("grpc-timeout", "30S")])),
            Some(Duration::from_secs(30))
        );
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn grpc_status_parses() {
        assert_eq!(grpc_status(&headers(&[("grpc-status", "14")])), Some(14));
        assert_eq!(grpc_status(&headers(&[("grpc-status", "x")])), None);
        assert_eq!(grpc_status(&HeaderMap::new()), None);
    }

    #[test]
    fn from_route_config() {
        let p = Policy::from_proto(&ambit_proto::api::route::RetryPolicy {
            attempts: 2,
            codes: vec![503, 504, 70000],
            grpc_codes: vec![14, 99],
            backoff_ms: 50,
        });
        // Two retries after the first try.
        assert_eq!(p.attempts(), 3);
        assert_eq!(p.backoff.base, Duration::from_millis(50));
        let none = HeaderMap::new();
        let unavailable = headers(&[("grpc-status", "14")]);
        let resp = |code: u16, headers: &HeaderMap| {
            p.is_retryable(&Outcome::Response {
                status: StatusCode::from_u16(code).unwrap(),
                headers,
            })
        };
        assert!(resp(503, &none));
        assert!(!resp(500, &none));
        assert!(resp(200, &unavailable));
        assert!(p.is_retryable(&Outcome::PerTryTimeout));
        assert!(!p.is_retryable(&Outcome::Reset));
        let zero = Policy::from_proto(&ambit_proto::api::route::RetryPolicy::default());
        assert_eq!(zero.attempts(), 1);
        assert_eq!(zero.backoff.delay(1), Duration::ZERO);
        assert_eq!(
            decide(Some(&zero), 1, &Outcome::NotSent, false),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn from_compiled_route() {
        let p = Policy::from_route(&crate::route::RetryPolicy {
            attempts: 1,
            codes: vec![StatusCode::BAD_GATEWAY].into(),
            grpc_codes: vec![14].into(),
            backoff: Duration::from_millis(5),
        });
        assert_eq!(p, Policy::new(2, &[502], &[14], Duration::from_millis(5)));
    }

    #[test]
    fn structured_config_ignores_out_of_range() {
        let p = Policy::new(0, &[42, 503, 600], &[17, 2], Duration::ZERO);
        assert_eq!(p.attempts(), 1);
        assert_eq!(p.codes, {
            let mut c = Codes::default();
            c.insert_range(503, 503);
            c
        });
        assert_eq!(p.grpc, 1 << 2);
    }
}
