//! From the wire form to the route table: every route checked (one invalid route refuses the
//! whole config, which is NACKed, and the previous routes stay) and every match placed in the
//! list of each service port it applies to, in precedence order.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use ambit_proto::api::route as api;
use http::header::HeaderName;
use http::uri::Authority;
use http::{Method, StatusCode};
use regex::Regex;

use super::{
    Backend, Candidates, HeaderMatch, HostMatch, PathMatch, QueryParamMatch, RequestMatch,
    RetryPolicy, RouteError, Routes, Rule, ServiceRoutes, Timeouts, ValueMatch,
};
use crate::filters::Filters;

/// A candidate before ordering: its match, its rule, and its place in the config (route, rule,
/// match), which breaks precedence ties.
type Entry = (RequestMatch, Arc<Rule>, (usize, usize, usize));

#[derive(Default)]
struct Lists {
    any_port: Vec<Entry>,
    by_port: HashMap<u16, Vec<Entry>>,
}

fn ordered(mut list: Vec<Entry>) -> Candidates {
    list.sort_by_key(|(m, _, place)| (Reverse(m.precedence()), *place));
    list.into_iter().map(|(m, rule, _)| (m, rule)).collect()
}

impl Routes {
    /// Compiles routes; one invalid route refuses the whole set.
    pub fn from_api(routes: &[api::Route]) -> Result<Routes, RouteError> {
        let mut sorted: Vec<&api::Route> = routes.iter().collect();
        sorted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let mut lists: HashMap<Box<str>, Lists> = HashMap::new();
        for (r, route) in sorted.into_iter().enumerate() {
            let key = format!("{}/{}", route.namespace, route.name);
            let invalid = |reason: String| RouteError {
                route: key.clone(),
                reason,
            };
            let parents = parents(route).map_err(invalid)?;
            let hosts = route
                .hostnames
                .iter()
                .map(|h| host_match(h).map(Some))
                .collect::<Result<Vec<_>, _>>()
                .map_err(invalid)?;
            let hosts = if hosts.is_empty() { vec![None] } else { hosts };
            let mut entries = Vec::new();
            for (i, rule) in route.rules.iter().enumerate() {
                let mut matches = rule
                    .matches
                    .iter()
                    .enumerate()
                    .map(|(j, m)| {
                        compile_match(m)
                            .map_err(|e| invalid(format!("rules[{i}].matches[{j}]: {e}")))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if matches.is_empty() {
                    // A rule without matches takes every request (PathPrefix "/").
                    matches.push(RequestMatch {
                        path: Some(PathMatch::Prefix("/".into())),
                        ..Default::default()
                    });
                }
                let prefix_only = matches
                    .iter()
                    .all(|m| matches!(m.path, Some(PathMatch::Prefix(_))));
                let compiled = Arc::new(
                    compile_rule(&key, rule, prefix_only)
                        .map_err(|e| invalid(format!("rules[{i}]: {e}")))?,
                );
                for (j, m) in matches.iter().enumerate() {
                    for host in &hosts {
                        let m = RequestMatch {
                            host: host.clone(),
                            ..m.clone()
                        };
                        entries.push((m, compiled.clone(), (r, i, j)));
                    }
                }
            }
            for (service, ports) in parents {
                let lists = lists.entry(service.into()).or_default();
                if ports.contains(&0) {
                    lists.any_port.extend(entries.iter().cloned());
                } else {
                    for port in ports {
                        let list = lists.by_port.entry(port).or_default();
                        list.extend(entries.iter().cloned());
                    }
                }
            }
        }
        let by_service = lists
            .into_iter()
            .map(|(service, lists)| {
                let by_port = lists
                    .by_port
                    .into_iter()
                    .map(|(port, mut list)| {
                        list.extend(lists.any_port.iter().cloned());
                        (port, ordered(list))
                    })
                    .collect();
                let any_port = (!lists.any_port.is_empty()).then(|| ordered(lists.any_port));
                (service, ServiceRoutes { any_port, by_port })
            })
            .collect();
        Ok(Routes { by_service })
    }
}

/// Each parent service with its ports (0: every port).
fn parents(route: &api::Route) -> Result<HashMap<&str, BTreeSet<u16>>, String> {
    if route.parents.is_empty() {
        return Err("it has no parent service".into());
    }
    let mut out: HashMap<&str, BTreeSet<u16>> = HashMap::new();
    for (i, p) in route.parents.iter().enumerate() {
        if p.service.is_empty() {
            return Err(format!("parents[{i}] names no service"));
        }
        let port = u16::try_from(p.port)
            .map_err(|_| format!("parents[{i}]: port {} is out of range", p.port))?;
        out.entry(p.service.as_str()).or_default().insert(port);
    }
    Ok(out)
}

fn host_match(h: &str) -> Result<HostMatch, String> {
    let invalid = || format!("hostname {h:?} is not a host name (or *.-wildcard)");
    let (wildcard, name) = match h.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, h),
    };
    if name.is_empty() || name.contains('*') {
        return Err(invalid());
    }
    match name.parse::<Authority>() {
        Ok(a) if a.port().is_none() && a.as_str() == name => {}
        _ => return Err(invalid()),
    }
    let name = name.to_ascii_lowercase();
    Ok(if wildcard {
        HostMatch::Wildcard(format!(".{name}").into())
    } else {
        HostMatch::Exact(name.into())
    })
}

fn anchored(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| format!("regular expression {pattern:?} is invalid: {e}"))
}

fn value_match(what: &str, v: Option<&api::ValueMatch>) -> Result<ValueMatch, String> {
    use api::value_match::Kind;
    match v.and_then(|v| v.kind.as_ref()) {
        Some(Kind::Exact(v)) => Ok(ValueMatch::Exact(v.as_str().into())),
        Some(Kind::Regex(r)) => Ok(ValueMatch::Regex(anchored(r)?)),
        None => Err(format!("{what} has no value to match")),
    }
}

fn compile_match(m: &api::RouteMatch) -> Result<RequestMatch, String> {
    use api::path_match::Kind;
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
            let value = value_match(&format!("header {:?}", h.name), h.value.as_ref())?;
            Ok(HeaderMatch { name, value })
        })
        .collect::<Result<Box<[_]>, String>>()?;
    let query_params = m
        .query_params
        .iter()
        .map(|q| {
            if q.name.is_empty() {
                return Err("a query parameter match has no name".to_string());
            }
            let value = value_match(&format!("query parameter {:?}", q.name), q.value.as_ref())?;
            Ok(QueryParamMatch {
                name: q.name.as_str().into(),
                value,
            })
        })
        .collect::<Result<Box<[_]>, String>>()?;
    Ok(RequestMatch {
        host: None,
        path,
        method,
        headers,
        query_params,
    })
}

fn compile_rule(route: &str, rule: &api::RouteRule, prefix_only: bool) -> Result<Rule, String> {
    let filters = Filters::from_api(rule, prefix_only)?;
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
    let timeouts = Timeouts {
        request: ms(rule.request_timeout_ms),
        backend_request: ms(rule.backend_request_timeout_ms),
    };
    if let (Some(request), Some(backend)) = (timeouts.request, timeouts.backend_request)
        && backend > request
    {
        return Err(format!(
            "the backend request timeout ({backend:?}) is longer than the request timeout ({request:?})"
        ));
    }
    let retry = match &rule.retry {
        Some(r) if r.attempts > 0 => Some(RetryPolicy {
            attempts: r.attempts,
            codes: r
                .codes
                .iter()
                .map(|c| {
                    u16::try_from(*c)
                        .ok()
                        .and_then(|c| StatusCode::from_u16(c).ok())
                        .ok_or_else(|| format!("retry code {c} is not an HTTP status"))
                })
                .collect::<Result<_, _>>()?,
            grpc_codes: r
                .grpc_codes
                .iter()
                .map(|c| {
                    if *c <= 16 {
                        Ok(*c)
                    } else {
                        Err(format!("retry gRPC code {c} is not a gRPC status"))
                    }
                })
                .collect::<Result<_, _>>()?,
            backoff: Duration::from_millis(r.backoff_ms),
        }),
        _ => None,
    };
    Ok(Rule {
        route: route.into(),
        filters,
        total_weight: if rule.request_redirect.is_some() {
            0
        } else {
            backends.iter().map(|b| u64::from(b.weight)).sum()
        },
        backends,
        timeouts,
        retry,
        picks: AtomicU64::new(0),
    })
}
