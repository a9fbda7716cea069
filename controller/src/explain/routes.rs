//! The waypoint's view of a service port: the routes that apply to it, their rules
//! (matches, weighted backends, timeouts, retries), and each backend service's traffic policy
//! and endpoints.

use ambit_proto::api::route as rpb;
use ambit_proto::api::traffic as tpb;

use crate::model::{MeshModel, ServiceEntry, Workload};

use super::types::{
    BackendInfo, EndpointInfo, OutlierInfo, RetryInfo, RouteBackend, RouteInfo, RouteMatchInfo,
    RouteRuleInfo, TrafficPolicyInfo,
};

/// The routes whose parents include this service on this port (a parent without port means
/// every port), in name order.
pub fn applying<'a>(
    model: &'a MeshModel,
    hostname: &'a str,
    port: u16,
) -> impl Iterator<Item = &'a rpb::Route> + 'a {
    model.routes().filter(move |r| {
        r.parents
            .iter()
            .any(|p| p.service == hostname && (p.port == 0 || p.port == u32::from(port)))
    })
}

pub fn route_info(model: &MeshModel, route: &rpb::Route) -> RouteInfo {
    RouteInfo {
        name: format!("{}/{}", route.namespace, route.name),
        hostnames: route.hostnames.clone(),
        rules: route
            .rules
            .iter()
            .enumerate()
            .map(|(index, rule)| rule_info(model, index, rule))
            .collect(),
    }
}

fn rule_info(model: &MeshModel, index: usize, rule: &rpb::RouteRule) -> RouteRuleInfo {
    let total: u64 = rule.backends.iter().map(|b| u64::from(b.weight)).sum();
    RouteRuleInfo {
        index,
        matches: rule.matches.iter().map(match_info).collect(),
        backends: rule
            .backends
            .iter()
            .map(|b| RouteBackend {
                service: service_name(model, &b.service),
                port: u16::try_from(b.port).unwrap_or(u16::MAX),
                weight: b.weight,
                percent: if total == 0 {
                    0.0
                } else {
                    100.0 * f64::from(b.weight) / total as f64
                },
            })
            .collect(),
        redirect: rule.request_redirect.as_ref().map(redirect),
        request_timeout_ms: nonzero(rule.request_timeout_ms),
        backend_request_timeout_ms: nonzero(rule.backend_request_timeout_ms),
        retry: rule.retry.as_ref().map(|r| RetryInfo {
            attempts: r.attempts,
            codes: r.codes.clone(),
            grpc_codes: r.grpc_codes.clone(),
            backoff_ms: r.backoff_ms,
        }),
    }
}

fn nonzero(ms: u64) -> Option<u64> {
    (ms > 0).then_some(ms)
}

/// `<namespace>/<name>` of the service with this host name; the host name itself otherwise.
pub fn service_name(model: &MeshModel, hostname: &str) -> String {
    match model.service_by_hostname(hostname) {
        Some(s) => format!("{}/{}", s.service.namespace, s.service.name),
        None => hostname.to_string(),
    }
}

fn value(v: &Option<rpb::ValueMatch>) -> String {
    match v.as_ref().and_then(|v| v.kind.as_ref()) {
        Some(rpb::value_match::Kind::Exact(s)) => format!("= {s}"),
        Some(rpb::value_match::Kind::Regex(r)) => format!("~ {r}"),
        None => "present".into(),
    }
}

fn match_info(m: &rpb::RouteMatch) -> RouteMatchInfo {
    use rpb::path_match::Kind;
    RouteMatchInfo {
        path: m
            .path
            .as_ref()
            .and_then(|p| p.kind.as_ref())
            .map(|k| match k {
                Kind::Exact(p) => format!("exact {p}"),
                Kind::Prefix(p) => format!("prefix {p}"),
                Kind::Regex(r) => format!("regex {r}"),
            }),
        method: (!m.method.is_empty()).then(|| m.method.clone()),
        headers: m
            .headers
            .iter()
            .map(|h| format!("{} {}", h.name, value(&h.value)))
            .collect(),
        query_params: m
            .query_params
            .iter()
            .map(|q| format!("{} {}", q.name, value(&q.value)))
            .collect(),
    }
}

fn redirect(r: &rpb::RequestRedirect) -> String {
    use rpb::path_modifier::Kind;
    let scheme = if r.scheme.is_empty() {
        "<same scheme>"
    } else {
        &r.scheme
    };
    let host = if r.hostname.is_empty() {
        "<same host>"
    } else {
        &r.hostname
    };
    let port = if r.port == 0 {
        String::new()
    } else {
        format!(":{}", r.port)
    };
    let path = match r.path.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(Kind::ReplaceFullPath(p)) => p.clone(),
        Some(Kind::ReplacePrefixMatch(p)) => format!("{p}<rest of the path>"),
        None => "<same path>".into(),
    };
    let status = if r.status_code == 0 {
        302
    } else {
        r.status_code
    };
    format!("{status} to {scheme}://{host}{port}{path}")
}

/// Each backend service the rules can send to (or the service itself when no route applies),
/// each once, in the order the rules name them.
pub fn backends(
    model: &MeshModel,
    routes: &[&rpb::Route],
    destination: &ServiceEntry,
    port: u16,
) -> Vec<BackendInfo> {
    let td = model.trust_domain();
    let mut targets: Vec<(String, u16)> = Vec::new();
    if routes.is_empty() {
        targets.push((destination.hostname(td), port));
    }
    for route in routes {
        for b in route.rules.iter().flat_map(|r| &r.backends) {
            let target = (b.service.clone(), u16::try_from(b.port).unwrap_or(u16::MAX));
            if !targets.contains(&target) {
                targets.push(target);
            }
        }
    }
    targets
        .into_iter()
        .filter_map(|(hostname, port)| {
            let entry = model.service_by_hostname(&hostname)?;
            let target_port = entry
                .service
                .ports
                .iter()
                .find(|p| p.port == port)
                .map_or(port, |p| p.target_port);
            Some(backend(model, entry, port, target_port))
        })
        .collect()
}

pub fn backend(
    model: &MeshModel,
    entry: &ServiceEntry,
    port: u16,
    target_port: u16,
) -> BackendInfo {
    let hostname = entry.hostname(model.trust_domain());
    BackendInfo {
        service: format!("{}/{}", entry.service.namespace, entry.service.name),
        port,
        target_port,
        traffic_policy: model.traffic_policy_for(&hostname).map(traffic_info),
        endpoints: entry
            .endpoints
            .iter()
            .filter_map(|k| model.workload(k))
            .map(|w| endpoint_info(w, target_port))
            .collect(),
    }
}

pub fn endpoint_info(w: &Workload, target_port: u16) -> EndpointInfo {
    // The IPv4 address when there is one: what the demo's clients use.
    let address = w
        .pod
        .addresses
        .iter()
        .find(|a| a.is_ipv4())
        .or(w.pod.addresses.first())
        .map_or_else(
            || "(no address yet)".to_string(),
            |a| std::net::SocketAddr::new(*a, target_port).to_string(),
        );
    EndpointInfo {
        workload: w.key().to_string(),
        address,
        node: w.pod.node.clone(),
        healthy: w.pod.healthy,
        meshed: w.meshed,
        mtls_mode: w.mtls_mode.as_str().to_string(),
    }
}

fn some<T: Default + PartialEq>(v: T) -> Option<T> {
    (v != T::default()).then_some(v)
}

fn traffic_info(p: &tpb::TrafficPolicy) -> TrafficPolicyInfo {
    let pool = p.connection_pool.unwrap_or_default();
    TrafficPolicyInfo {
        name: format!("{}/{}", p.namespace, p.name),
        max_connections: some(pool.max_connections),
        max_pending_requests: some(pool.max_pending_requests),
        max_requests: some(pool.max_requests),
        max_retries: some(pool.max_retries),
        max_requests_per_connection: some(pool.max_requests_per_connection),
        idle_timeout_ms: some(pool.idle_timeout_ms),
        outlier_detection: p.outlier_detection.as_ref().map(|o| OutlierInfo {
            consecutive_5xx: o.consecutive_5xx,
            consecutive_gateway_errors: o.consecutive_gateway_errors,
            consecutive_connect_failures: o.consecutive_connect_failures,
            base_ejection_time_ms: o.base_ejection_time_ms,
            max_ejection_percent: o.max_ejection_percent,
        }),
    }
}
