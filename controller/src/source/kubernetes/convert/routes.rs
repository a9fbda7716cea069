//! Gateway API HTTPRoutes to the model's routes, attached the GAMMA (mesh) way: a parentRef to a
//! Service makes that service's hostname the route's; a parentRef to an `ambit-waypoint` Gateway
//! covers the services that use that waypoint (narrowed by `spec.hostnames` if given). A route
//! with no such parent is for some other gateway and is not the mesh's business.
//!
//! A route the waypoint could not honour as written (a filter, a query-parameter match, a backend
//! that is no existing Service) is skipped as a whole with the field and the fix: half a route
//! would send traffic where nobody asked.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::sync::Arc;

use ambit_proto::api::route as rpb;
use gateway_api::Duration;
use gateway_api::experimental::httproutes::{
    HttpRoute, HttpRouteParentRefs, HttpRouteRules, HttpRouteRulesBackendRefs,
    HttpRouteRulesMatches, HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesPathType,
};

use super::{Skip, key};
use crate::model::{self, Kind, ObjectKey, ResourceRef, USE_WAYPOINT_LABEL, WAYPOINT_NONE};

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// Retries when a route asks for retry without `attempts`, as Istio's default.
const DEFAULT_RETRY_ATTEMPTS: u32 = 2;
/// Retried when a route asks for retry without `codes`: what Istio retries by default. A request
/// that never reached the backend is always safe to retry.
const DEFAULT_RETRY_ON: [&str; 2] = ["connect-failure", "503"];

/// What routes are checked and resolved against.
pub(super) struct RouteContext<'a> {
    /// Every service, with the waypoint it uses (its own label, else its namespace's).
    services: BTreeMap<ObjectKey, Option<&'a str>>,
    waypoint_gateways: &'a BTreeSet<ObjectKey>,
    trust_domain: &'a str,
}

impl<'a> RouteContext<'a> {
    pub(super) fn new(
        namespaces: &'a [model::Namespace],
        services: &'a [model::Service],
        waypoint_gateways: &'a BTreeSet<ObjectKey>,
        trust_domain: &'a str,
    ) -> Self {
        let namespace_waypoint: BTreeMap<&str, &str> = namespaces
            .iter()
            .filter_map(|ns| {
                Some((
                    ns.name.as_str(),
                    ns.labels.get(USE_WAYPOINT_LABEL)?.as_str(),
                ))
            })
            .collect();
        let services = services
            .iter()
            .map(|s| {
                let waypoint = match s.labels.get(USE_WAYPOINT_LABEL) {
                    Some(own) => Some(own.as_str()),
                    None => namespace_waypoint.get(s.namespace.as_str()).copied(),
                };
                let waypoint = waypoint.filter(|w| *w != WAYPOINT_NONE);
                (ObjectKey::new(&s.namespace, &s.name), waypoint)
            })
            .collect();
        RouteContext {
            services,
            waypoint_gateways,
            trust_domain,
        }
    }

    fn hostname(&self, service: &ObjectKey) -> String {
        model::service_hostname(&service.name, &service.namespace, self.trust_domain)
    }
}

/// The route, `None` when it is not for the mesh or is skipped (with a reason in `skips`).
pub(super) fn route(
    r: &Arc<HttpRoute>,
    context: &RouteContext<'_>,
    skips: &mut Vec<Skip>,
) -> Option<model::Route> {
    let (namespace, name) = key(&r.metadata);
    let subject = ResourceRef::new(Kind::Route, format!("{namespace}/{name}"));
    let mut notes = Vec::new();
    let parents = parents(r, &namespace, context, &mut notes);
    let converted = parents.and_then(|hostnames| {
        let Some(hostnames) = hostnames else {
            return Ok(None);
        };
        let rules = r.spec.rules.iter().flatten().enumerate();
        let rules = rules
            .map(|(i, rule)| route_rule(rule, &format!("spec.rules[{i}]"), &namespace, context))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Some(rpb::Route {
            name: name.clone(),
            namespace: namespace.clone(),
            hostnames,
            rules,
            // Gateway API has no field for either: a route from Kubernetes has neither.
            circuit_breaker: None,
            outlier_detection: None,
        }))
    });
    let reason = |reason: String| Skip {
        subject: subject.clone(),
        reason,
    };
    // The notes explain a skip as much as a route used in part, so they go out either way.
    skips.extend(notes.into_iter().map(reason));
    match converted {
        Ok(route) => route,
        Err(why) => {
            skips.push(reason(format!(
                "{why}; the route is not used until it is fixed"
            )));
            None
        }
    }
}

/// The hostnames of the services the route attaches to; `Ok(None)` when no parent is the
/// mesh's. Parents that are the mesh's but unusable are noted.
fn parents(
    r: &HttpRoute,
    namespace: &str,
    context: &RouteContext<'_>,
    notes: &mut Vec<String>,
) -> Result<Option<Vec<String>>, String> {
    let mut for_mesh = false;
    let mut hostnames = BTreeSet::new();
    for (i, parent) in r.spec.parent_refs.iter().flatten().enumerate() {
        let field = format!("spec.parentRefs[{i}]");
        let Some(service_parent) = mesh_parent(parent, namespace, context) else {
            continue;
        };
        for_mesh = true;
        let target = ObjectKey::new(
            parent.namespace.as_deref().unwrap_or(namespace),
            &parent.name,
        );
        if target.namespace != namespace {
            notes.push(format!(
                "{field} is in namespace {}: routes for another namespace's traffic (consumer routes) are not supported, so this parent is ignored; put the route in {}",
                target.namespace, target.namespace
            ));
            continue;
        }
        if service_parent {
            let Some(waypoint) = context.services.get(&target) else {
                notes.push(format!(
                    "{field} names service {target}, which does not exist (or was left out); this parent is ignored until it does"
                ));
                continue;
            };
            if waypoint.is_none() {
                // Kept, since a label may come later; but said, as nothing applies it today.
                notes.push(format!(
                    "{field}: service {target} uses no waypoint, so no proxy applies this route to its traffic yet; label the service (or its namespace) {USE_WAYPOINT_LABEL}=<waypoint>"
                ));
            }
            if parent.port.is_some() {
                notes.push(format!(
                    "{field}.port is not supported: the route applies to every port of service {target}"
                ));
            }
            hostnames.insert(context.hostname(&target));
            continue;
        }
        // An ambit-waypoint Gateway: the services it serves, narrowed by the route's hostnames.
        let wanted: Option<BTreeSet<&str>> = r
            .spec
            .hostnames
            .as_ref()
            .map(|h| h.iter().map(String::as_str).collect());
        let served = context
            .services
            .iter()
            .filter(|(svc, waypoint)| {
                svc.namespace == target.namespace && **waypoint == Some(target.name.as_str())
            })
            .map(|(svc, _)| context.hostname(svc))
            .filter(|host| wanted.as_ref().is_none_or(|w| w.contains(host.as_str())))
            .collect::<Vec<_>>();
        if served.is_empty() {
            notes.push(format!(
                "{field} names waypoint {target}, which serves no service{}; label a service (or its namespace) {USE_WAYPOINT_LABEL}={}",
                if wanted.is_some() { " of spec.hostnames (full names like reviews.demo.svc.cluster.local)" } else { "" },
                target.name
            ));
        }
        hostnames.extend(served);
    }
    if !for_mesh {
        return Ok(None);
    }
    if hostnames.is_empty() {
        return Err(
            "no parentRef is a service or waypoint the mesh can attach it to (see this route's other lines)"
                .into(),
        );
    }
    Ok(Some(hostnames.into_iter().collect()))
}

/// `Some(true)` for a Service parent, `Some(false)` for an ambit-waypoint Gateway, `None` for a
/// parent that is not the mesh's (another gateway's route).
fn mesh_parent(
    parent: &HttpRouteParentRefs,
    namespace: &str,
    context: &RouteContext<'_>,
) -> Option<bool> {
    let group = parent.group.as_deref().unwrap_or(GATEWAY_GROUP);
    let kind = parent.kind.as_deref().unwrap_or("Gateway");
    match (group, kind) {
        ("", "Service") => Some(true),
        (GATEWAY_GROUP, "Gateway") => {
            let gateway = ObjectKey::new(
                parent.namespace.as_deref().unwrap_or(namespace),
                &parent.name,
            );
            context
                .waypoint_gateways
                .contains(&gateway)
                .then_some(false)
        }
        _ => None,
    }
}

fn millis(value: &str, field: &str) -> Result<u64, String> {
    let d = Duration::from_str(value).map_err(|why| {
        format!("{field} {value:?} is not a Gateway API duration ({why}); write e.g. \"500ms\" or \"2s\"")
    })?;
    Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn route_rule(
    rule: &HttpRouteRules,
    path: &str,
    namespace: &str,
    context: &RouteContext<'_>,
) -> Result<rpb::RouteRule, String> {
    if rule.filters.as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(format!(
            "{path}.filters are not supported by Ambit's waypoint yet; remove them"
        ));
    }
    let matches = rule
        .matches
        .iter()
        .flatten()
        .enumerate()
        .map(|(j, m)| route_match(m, &format!("{path}.matches[{j}]")))
        .collect::<Result<_, _>>()?;
    let backends = rule
        .backend_refs
        .iter()
        .flatten()
        .enumerate()
        .map(|(j, b)| backend(b, &format!("{path}.backendRefs[{j}]"), namespace, context))
        .collect::<Result<_, _>>()?;
    let timeouts = rule.timeouts.as_ref();
    let timeout_ms = match timeouts.and_then(|t| t.request.as_deref()) {
        Some(v) => millis(v, &format!("{path}.timeouts.request"))?,
        None => 0,
    };
    let per_try_timeout_ms = match timeouts.and_then(|t| t.backend_request.as_deref()) {
        Some(v) => Some(millis(v, &format!("{path}.timeouts.backendRequest"))?),
        None => None,
    };
    let retry = match &rule.retry {
        Some(retry) => {
            let attempts = match retry.attempts {
                Some(n) => u32::try_from(n).map_err(|_| {
                    format!("{path}.retry.attempts {n} is out of range; give 0 or more")
                })?,
                None => DEFAULT_RETRY_ATTEMPTS,
            };
            let retry_on = match &retry.codes {
                Some(codes) => std::iter::once("connect-failure".to_string())
                    .chain(codes.iter().map(i64::to_string))
                    .collect(),
                None => DEFAULT_RETRY_ON.iter().map(|s| s.to_string()).collect(),
            };
            let backoff_base_ms = match retry.backoff.as_deref() {
                Some(v) => millis(v, &format!("{path}.retry.backoff"))?,
                None => 0,
            };
            Some(rpb::RetryPolicy {
                attempts,
                per_try_timeout_ms: per_try_timeout_ms.unwrap_or(0),
                retry_on,
                backoff_base_ms,
            })
        }
        // A per-try timeout without retries: one try, bounded.
        None => per_try_timeout_ms.map(|ms| rpb::RetryPolicy {
            attempts: 0,
            per_try_timeout_ms: ms,
            retry_on: Vec::new(),
            backoff_base_ms: 0,
        }),
    };
    Ok(rpb::RouteRule {
        matches,
        backends,
        retry,
        timeout_ms,
    })
}

fn string_match(kind: rpb::string_match::Kind) -> Option<rpb::StringMatch> {
    Some(rpb::StringMatch { kind: Some(kind) })
}

fn route_match(m: &HttpRouteRulesMatches, field: &str) -> Result<rpb::RouteMatch, String> {
    use rpb::string_match::Kind;
    if m.query_params.as_ref().is_some_and(|q| !q.is_empty()) {
        return Err(format!(
            "{field}.queryParams are not supported by Ambit's waypoint yet; match on path, method or headers"
        ));
    }
    let path = m.path.as_ref().map(|p| {
        let value = p.value.clone().unwrap_or_else(|| "/".into());
        match p.r#type {
            Some(HttpRouteRulesMatchesPathType::Exact) => Kind::Exact(value),
            Some(HttpRouteRulesMatchesPathType::RegularExpression) => Kind::Regex(value),
            Some(HttpRouteRulesMatchesPathType::PathPrefix) | None => Kind::Prefix(value),
        }
    });
    let method = m
        .method
        .as_ref()
        .and_then(|m| serde_json::to_value(m).ok())
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let headers = m
        .headers
        .iter()
        .flatten()
        .map(|h| rpb::HeaderMatch {
            name: h.name.to_ascii_lowercase(),
            value: string_match(match h.r#type {
                Some(HttpRouteRulesMatchesHeadersType::RegularExpression) => {
                    Kind::Regex(h.value.clone())
                }
                Some(HttpRouteRulesMatchesHeadersType::Exact) | None => {
                    Kind::Exact(h.value.clone())
                }
            }),
        })
        .collect();
    Ok(rpb::RouteMatch {
        path: path.and_then(string_match),
        method,
        headers,
    })
}

fn backend(
    b: &HttpRouteRulesBackendRefs,
    field: &str,
    namespace: &str,
    context: &RouteContext<'_>,
) -> Result<rpb::BackendRef, String> {
    let group = b.group.as_deref().unwrap_or_default();
    let kind = b.kind.as_deref().unwrap_or("Service");
    if (group, kind) != ("", "Service") {
        return Err(format!(
            "{field} is a {kind} of group {group:?}; the mesh routes to Services only"
        ));
    }
    if b.filters.as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(format!(
            "{field}.filters are not supported by Ambit's waypoint yet; remove them"
        ));
    }
    let service = ObjectKey::new(b.namespace.as_deref().unwrap_or(namespace), &b.name);
    if service.namespace != namespace {
        // Gateway API lets a route send traffic to another namespace only when a ReferenceGrant
        // there allows it; Ambit does not read ReferenceGrants yet, so it allows none, rather
        // than let any namespace's route pull another's service.
        return Err(format!(
            "{field} names service {service} in another namespace, which needs a ReferenceGrant there; Ambit does not read ReferenceGrants yet, so route only to services of namespace {namespace}"
        ));
    }
    if !context.services.contains_key(&service) {
        return Err(format!(
            "{field} names service {service}, which does not exist (or was left out); create it or fix the name"
        ));
    }
    let port = b
        .port
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            format!("{field}.port is missing or out of range; a Service backend needs its port")
        })?;
    let weight = u32::try_from(b.weight.unwrap_or(1))
        .map_err(|_| format!("{field}.weight is negative; give 0 or more"))?;
    Ok(rpb::BackendRef {
        service: context.hostname(&service),
        port: port.into(),
        weight,
    })
}

#[cfg(test)]
mod tests;
