//! L7 routes as the waypoint holds them: the Gateway API HTTPRoutes and GRPCRoutes attached to
//! each service (GAMMA; a GRPCRoute's method match arrives as a path match), compiled once when
//! config arrives (regexes built, headers parsed, filters checked) into one list per service and
//! port, ordered by Gateway API precedence, so a request is matched by walking one list.
//!
//! Precedence between the matches of every route on a service port, as the Gateway API
//! specifies: the most specific matching host name (exact, then the longest wildcard, then
//! routes without host names); an exact path, then (implementation-specific, as Istio does) a
//! regular expression, then the longest path prefix; then a method match; then the most header
//! matches; then the most query parameter matches. Equal matches keep the routes' order by
//! namespace/name, then their rules' order.
//!
//! A route whose parent names a port applies to that service port only; one without port to
//! every port of the service. A port of a service no route applies to has no routes: its
//! requests go to the service itself.

mod compile;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::header::{HOST, HeaderName};
use http::uri::Authority;
use http::{Method, StatusCode, request};
use regex::Regex;

use crate::filters::Filters;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("route {route:?} is invalid: {reason}")]
pub struct RouteError {
    /// "<namespace>/<name>".
    pub route: String,
    pub reason: String,
}

/// A route's `hostnames` entry, matched against the request's host without port.
#[derive(Debug, Clone)]
pub enum HostMatch {
    Exact(Box<str>),
    /// `*.example.com`: one or more labels in front of `.example.com` (stored with its dot).
    Wildcard(Box<str>),
}

impl HostMatch {
    fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
            HostMatch::Wildcard(suffix) => {
                host.len() > suffix.len()
                    && host
                        .get(host.len() - suffix.len()..)
                        .is_some_and(|s| s.eq_ignore_ascii_case(suffix))
            }
        }
    }

    /// Higher is more specific.
    fn rank(&self) -> (u8, usize) {
        match self {
            HostMatch::Exact(h) => (2, h.len()),
            HostMatch::Wildcard(s) => (1, s.len()),
        }
    }
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(Box<str>),
    /// Whole path segments: `/foo` matches `/foo` and `/foo/bar`, never `/foobar`.
    Prefix(Box<str>),
    /// The whole path must match (anchored).
    Regex(Regex),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == &**p,
            PathMatch::Prefix(p) => {
                let p = p.trim_end_matches('/');
                path.strip_prefix(p)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
            PathMatch::Regex(r) => r.is_match(path),
        }
    }

    /// Higher is more specific.
    fn rank(&self) -> (u8, usize) {
        match self {
            PathMatch::Exact(p) => (3, p.len()),
            PathMatch::Regex(_) => (2, 0),
            PathMatch::Prefix(p) => (1, p.len()),
        }
    }
}

#[derive(Debug, Clone)]
pub enum ValueMatch {
    Exact(Box<str>),
    Regex(Regex),
}

impl ValueMatch {
    fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatch::Exact(want) => value == &**want,
            ValueMatch::Regex(r) => r.is_match(value),
        }
    }
}

#[derive(Debug, Clone)]
pub struct HeaderMatch {
    pub name: HeaderName,
    pub value: ValueMatch,
}

#[derive(Debug, Clone)]
pub struct QueryParamMatch {
    /// Exact, case-sensitive, percent-decoded.
    pub name: Box<str>,
    pub value: ValueMatch,
}

/// One way a request can match a rule; every condition given must hold.
#[derive(Debug, Clone, Default)]
pub struct RequestMatch {
    pub host: Option<HostMatch>,
    pub path: Option<PathMatch>,
    pub method: Option<Method>,
    pub headers: Box<[HeaderMatch]>,
    pub query_params: Box<[QueryParamMatch]>,
}

impl RequestMatch {
    pub fn matches(&self, req: &request::Parts) -> bool {
        self.host
            .as_ref()
            .is_none_or(|h| request_host(req).is_some_and(|host| h.matches(&host)))
            && self.path.as_ref().is_none_or(|p| p.matches(req.uri.path()))
            && self.method.as_ref().is_none_or(|m| m == req.method)
            && self.headers.iter().all(|h| {
                req.headers
                    .get(&h.name)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| h.value.matches(v))
            })
            && self.query_params.iter().all(|q| {
                query_param(req.uri.query().unwrap_or(""), &q.name)
                    .is_some_and(|v| q.value.matches(&v))
            })
    }

    /// The path prefix a matching request matched, for `ReplacePrefixMatch`.
    fn prefix(&self) -> Option<&str> {
        match &self.path {
            Some(PathMatch::Prefix(p)) => Some(p),
            _ => None,
        }
    }

    #[allow(clippy::type_complexity)]
    fn precedence(&self) -> ((u8, usize), (u8, usize), bool, usize, usize) {
        (
            self.host.as_ref().map_or((0, 0), HostMatch::rank),
            self.path.as_ref().map_or((1, 1), PathMatch::rank),
            self.method.is_some(),
            self.headers.len(),
            self.query_params.len(),
        )
    }
}

/// The request's host without port: the URI's authority (HTTP/2), else its `Host` header.
fn request_host(req: &request::Parts) -> Option<String> {
    if let Some(a) = req.uri.authority() {
        return Some(a.host().to_string());
    }
    let host = req.headers.get(HOST)?.to_str().ok()?;
    Some(host.parse::<Authority>().ok()?.host().to_string())
}

/// The first value of query parameter `name`, percent-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The service's host name (`reviews-v2.demo.svc.cluster.local`).
    pub service: Box<str>,
    pub port: u16,
    pub weight: u32,
}

/// GEP-1742.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// The whole request, retries included.
    pub request: Option<Duration>,
    /// Each try; never longer than `request`.
    pub backend_request: Option<Duration>,
}

/// GEP-1731, plus gRPC statuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try (at least 1).
    pub attempts: u32,
    /// Response statuses retried.
    pub codes: Box<[StatusCode]>,
    /// `grpc-status` values retried (14 is UNAVAILABLE).
    pub grpc_codes: Box<[u32]>,
    /// Wait before each retry.
    pub backoff: Duration,
}

impl RetryPolicy {
    pub fn retries_status(&self, status: StatusCode) -> bool {
        self.codes.contains(&status)
    }

    pub fn retries_grpc_status(&self, grpc_status: u32) -> bool {
        self.grpc_codes.contains(&grpc_status)
    }
}

/// What a matched request is subject to.
#[derive(Debug)]
pub struct Rule {
    /// "<namespace>/<name>" of the route, for logs and local replies.
    pub route: Box<str>,
    pub filters: Filters,
    pub backends: Box<[Backend]>,
    total_weight: u64,
    pub timeouts: Timeouts,
    pub retry: Option<RetryPolicy>,
    /// Requests this rule has sent so far (their index in the split's sequence).
    picks: AtomicU64,
}

impl Rule {
    /// The backend for the next request. Weights hold over every run of requests, not only on
    /// average: request `n` takes point `n·φ` (mod 1) of a Weyl sequence, which spreads points
    /// evenly (a 90/10 split sends 10% ± a request or two of any hundred) with no short period
    /// a client's own pattern could fall into step with. Random rolls would stray by ±2% over
    /// 2,000 requests, which is what users then see on their canary dashboards.
    pub fn next_backend(&self) -> Option<&Backend> {
        if self.total_weight == 0 {
            return None;
        }
        let n = self.picks.fetch_add(1, Ordering::Relaxed);
        // 2^64 / φ: the golden ratio's fractional part in 64-bit fixed point.
        let x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let point = (u128::from(x) * u128::from(self.total_weight)) >> 64;
        self.pick_backend(point as u64)
    }

    /// The backend for a request, weighted; `roll` is uniform in `0..u64::MAX`. None when there
    /// is no backend or every weight is 0 (Gateway API answers 500 then).
    pub fn pick_backend(&self, roll: u64) -> Option<&Backend> {
        if self.total_weight == 0 {
            return None;
        }
        let mut point = roll % self.total_weight;
        self.backends.iter().find(|b| {
            let w = u64::from(b.weight);
            if point < w {
                true
            } else {
                point -= w;
                false
            }
        })
    }
}

/// A rule a request matched, with what its filters need from the match.
#[derive(Debug, Clone, Copy)]
pub struct Matched<'a> {
    pub rule: &'a Arc<Rule>,
    /// The path prefix the request matched (`ReplacePrefixMatch` replaces it); `None` for other
    /// path matches.
    pub prefix: Option<&'a str>,
}

/// The outcome of looking up a request.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// The service port has routes and this rule matched.
    Matched(Matched<'a>),
    /// The service port has routes and none matched (404, flag NR).
    NoMatch,
    /// No route applies to the service port: the request goes to the service itself.
    NoRoutes,
}

/// Every match of every rule on one service port, most specific first.
type Candidates = Box<[(RequestMatch, Arc<Rule>)]>;

/// One service's routes: those for every port, and per port named by some route those plus the
/// port's own.
#[derive(Debug, Default)]
struct ServiceRoutes {
    any_port: Option<Candidates>,
    by_port: HashMap<u16, Candidates>,
}

#[derive(Debug, Default)]
pub struct Routes {
    by_service: HashMap<Box<str>, ServiceRoutes>,
}

impl Routes {
    /// The rule for a request to `service` (its host name) on service port `port`.
    pub fn lookup(&self, service: &str, port: u16, req: &request::Parts) -> Lookup<'_> {
        let Some(routes) = self.by_service.get(service) else {
            return Lookup::NoRoutes;
        };
        let Some(candidates) = routes.by_port.get(&port).or(routes.any_port.as_ref()) else {
            return Lookup::NoRoutes;
        };
        candidates
            .iter()
            .find(|(m, _)| m.matches(req))
            .map_or(Lookup::NoMatch, |(m, rule)| {
                Lookup::Matched(Matched {
                    rule,
                    prefix: m.prefix(),
                })
            })
    }

    /// Does any route apply to this service (on some port)?
    pub fn has_routes(&self, service: &str) -> bool {
        self.by_service.contains_key(service)
    }
}

#[cfg(test)]
mod tests;
