//! L7 routes as the waypoint holds them: the Gateway API HTTPRoutes attached to each service
//! (GAMMA), compiled once when config arrives (regexes built, headers parsed) and ordered by
//! Gateway API precedence, so a request is matched by walking one list.
//!
//! Precedence between matches of all routes on a service, as the Gateway API specifies: an
//! exact path, then (implementation-specific, as Istio does) a regular expression, then the
//! longest path prefix; then a method match; then the most header matches. Equal matches keep
//! the routes' order by namespace/name, then their rules' order.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ambit_proto::api::route as api;
use http::header::HeaderName;
use http::{Method, request};
use regex::Regex;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("route {route:?} is invalid: {reason}")]
pub struct RouteError {
    pub route: String,
    pub reason: String,
}

#[derive(Debug)]
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

#[derive(Debug)]
pub enum ValueMatch {
    Exact(Box<str>),
    Regex(Regex),
}

#[derive(Debug)]
pub struct HeaderMatch {
    pub name: HeaderName,
    pub value: ValueMatch,
}

/// One way a request can match a rule; every condition given must hold.
#[derive(Debug, Default)]
pub struct RequestMatch {
    pub path: Option<PathMatch>,
    pub method: Option<Method>,
    pub headers: Box<[HeaderMatch]>,
}

impl RequestMatch {
    pub fn matches(&self, req: &request::Parts) -> bool {
        self.path.as_ref().is_none_or(|p| p.matches(req.uri.path()))
            && self.method.as_ref().is_none_or(|m| m == req.method)
            && self.headers.iter().all(|h| {
                req.headers
                    .get(&h.name)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| match &h.value {
                        ValueMatch::Exact(want) => v == &**want,
                        ValueMatch::Regex(r) => r.is_match(v),
                    })
            })
    }

    fn precedence(&self) -> ((u8, usize), bool, usize) {
        (
            self.path.as_ref().map_or((1, 1), PathMatch::rank),
            self.method.is_some(),
            self.headers.len(),
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The service's host name (`reviews-v2.demo.svc.cluster.local`).
    pub service: Box<str>,
    pub port: u16,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub retry_on: Box<[Box<str>]>,
    pub backoff_base: Duration,
}

/// What a matched request is subject to.
#[derive(Debug)]
pub struct Rule {
    /// "<namespace>/<name>" of the route, for logs and local replies.
    pub route: Box<str>,
    pub backends: Box<[Backend]>,
    total_weight: u64,
    /// The whole request, retries included.
    pub timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
}

impl Rule {
    /// The backend for a request, weighted; `roll` is uniform in `0..u64::MAX`. None when
    /// every weight is 0 (Gateway API answers 500 then).
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

/// The outcome of looking up a request.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// The service has routes and this rule matched.
    Matched(&'a Arc<Rule>),
    /// The service has routes and none matched (404, flag NR).
    NoMatch,
    /// The service has no route: the request goes to the service itself.
    NoRoutes,
}

/// Every match of every rule on one service, most specific first.
type Candidates = Box<[(RequestMatch, Arc<Rule>)]>;

#[derive(Debug, Default)]
pub struct Routes {
    by_service: HashMap<Box<str>, Candidates>,
}

impl Routes {
    pub fn lookup(&self, service: &str, req: &request::Parts) -> Lookup<'_> {
        let Some(candidates) = self.by_service.get(service) else {
            return Lookup::NoRoutes;
        };
        candidates
            .iter()
            .find(|(m, _)| m.matches(req))
            .map_or(Lookup::NoMatch, |(_, rule)| Lookup::Matched(rule))
    }

    /// Compiles routes; one invalid route refuses the whole set (the config is NACKed and
    /// the previous routes stay), as the rest of the config is handled.
    pub fn from_api(routes: &[api::Route]) -> Result<Routes, RouteError> {
        let mut sorted: Vec<&api::Route> = routes.iter().collect();
        sorted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let mut by_service: HashMap<Box<str>, Vec<(RequestMatch, Arc<Rule>)>> = HashMap::new();
        for route in sorted {
            let key = format!("{}/{}", route.namespace, route.name);
            let invalid = |reason: String| RouteError {
                route: key.clone(),
                reason,
            };
            for (i, rule) in route.rules.iter().enumerate() {
                let compiled = Arc::new(
                    compile_rule(&key, rule).map_err(|r| invalid(format!("rules[{i}]: {r}")))?,
                );
                let mut matches = rule
                    .matches
                    .iter()
                    .enumerate()
                    .map(|(j, m)| {
                        compile_match(m)
                            .map_err(|r| invalid(format!("rules[{i}].matches[{j}]: {r}")))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if matches.is_empty() {
                    // A rule without matches takes every request (PathPrefix "/").
                    matches.push(RequestMatch {
                        path: Some(PathMatch::Prefix("/".into())),
                        ..Default::default()
                    });
                }
                for host in &route.hostnames {
                    let list = by_service.entry(host.as_str().into()).or_default();
                    for m in &matches {
                        list.push((clone_match(m), compiled.clone()));
                    }
                }
            }
        }
        let by_service = by_service
            .into_iter()
            .map(|(host, mut list)| {
                // Stable: equal precedence keeps route order, then rule order.
                list.sort_by_key(|(m, _)| Reverse(m.precedence()));
                (host, list.into_boxed_slice())
            })
            .collect();
        Ok(Routes { by_service })
    }
}

/// Matches are shared by every host a route names; regexes clone cheaply (reference-counted).
fn clone_match(m: &RequestMatch) -> RequestMatch {
    RequestMatch {
        path: m.path.as_ref().map(|p| match p {
            PathMatch::Exact(s) => PathMatch::Exact(s.clone()),
            PathMatch::Prefix(s) => PathMatch::Prefix(s.clone()),
            PathMatch::Regex(r) => PathMatch::Regex(r.clone()),
        }),
        method: m.method.clone(),
        headers: m
            .headers
            .iter()
            .map(|h| HeaderMatch {
                name: h.name.clone(),
                value: match &h.value {
                    ValueMatch::Exact(s) => ValueMatch::Exact(s.clone()),
                    ValueMatch::Regex(r) => ValueMatch::Regex(r.clone()),
                },
            })
            .collect(),
    }
}

fn anchored(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| format!("regular expression {pattern:?} is invalid: {e}"))
}

fn compile_match(m: &api::RouteMatch) -> Result<RequestMatch, String> {
    use api::string_match::Kind;
    let path = match m.path.as_ref().and_then(|p| p.kind.as_ref()) {
        None => None,
        Some(Kind::Exact(p)) | Some(Kind::Prefix(p)) if !p.starts_with('/') => {
            return Err(format!("path {p:?} does not start with '/'"));
        }
        Some(Kind::Exact(p)) => Some(PathMatch::Exact(p.as_str().into())),
        Some(Kind::Prefix(p)) => Some(PathMatch::Prefix(p.as_str().into())),
        Some(Kind::Regex(r)) => Some(PathMatch::Regex(anchored(r)?)),
    };
    let method = if m.method.is_empty() {
        None
    } else {
        Some(
            Method::from_bytes(m.method.as_bytes())
                .map_err(|_| format!("method {:?} is not an HTTP method", m.method))?,
        )
    };
    let headers = m
        .headers
        .iter()
        .map(|h| {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| format!("header name {:?} is invalid", h.name))?;
            let value = match h.value.as_ref().and_then(|v| v.kind.as_ref()) {
                Some(Kind::Exact(v)) => ValueMatch::Exact(v.as_str().into()),
                Some(Kind::Regex(r)) => ValueMatch::Regex(anchored(r)?),
                Some(Kind::Prefix(_)) => {
                    return Err(format!(
                        "header {:?}: a prefix match is not a Gateway API header match",
                        h.name
                    ));
                }
                None => return Err(format!("header {:?} has no value to match", h.name)),
            };
            Ok(HeaderMatch { name, value })
        })
        .collect::<Result<Box<[_]>, String>>()?;
    Ok(RequestMatch {
        path,
        method,
        headers,
    })
}

fn compile_rule(route: &str, rule: &api::RouteRule) -> Result<Rule, String> {
    let backends = rule
        .backends
        .iter()
        .map(|b| {
            let port = u16::try_from(b.port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("backend {} has port {} out of range", b.service, b.port))?;
            Ok(Backend {
                service: b.service.as_str().into(),
                port,
                weight: b.weight,
            })
        })
        .collect::<Result<Box<[_]>, String>>()?;
    let ms = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
    Ok(Rule {
        route: route.into(),
        total_weight: backends.iter().map(|b| u64::from(b.weight)).sum(),
        backends,
        timeout: ms(rule.timeout_ms),
        retry: rule
            .retry
            .as_ref()
            .filter(|r| r.attempts > 1)
            .map(|r| RetryPolicy {
                attempts: r.attempts,
                per_try_timeout: ms(r.per_try_timeout_ms),
                retry_on: r.retry_on.iter().map(|s| s.as_str().into()).collect(),
                backoff_base: Duration::from_millis(r.backoff_base_ms),
            }),
    })
}

#[cfg(test)]
mod tests;
