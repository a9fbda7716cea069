//! Gateway API HTTPRoutes and GRPCRoutes to the model's routes, for both sources (the mesh file
//! and Kubernetes read the same [`spec`] shape). A route is the mesh's when a `parentRef` is a
//! Service (`group: ""` or `core`, `kind: Service`; GAMMA), optionally one port of it; a route
//! whose parents are all something else (a Gateway) is another gateway's business.
//!
//! A route the waypoint could not honour as written (an unsupported filter or field, a backend
//! that is no existing Service, a malformed duration or regular expression) is refused whole,
//! with the field and the fix: half a route would send traffic where nobody asked. What is
//! checked here is everything the waypoint checks when it compiles routes, so a route that is
//! sent is one the waypoint accepts (a route it refused would make it refuse the whole config).
//!
//! GRPCRoutes have no `timeouts` or `retry` in Gateway API: Ambit reads them from annotations
//! on the route (as Linkerd does), applied to every rule — see [`GRPC_ANNOTATIONS`].

mod rules;
pub mod spec;

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use ambit_proto::api::route as rpb;
use serde_saphyr::Spanned;

use crate::model::{self, ObjectKey, USE_WAYPOINT_LABEL};

pub use rules::GRPC_CODES;

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// Retries when a route asks for retry without `attempts`, as Istio's default.
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;
/// Retried when an HTTPRoute asks for retry without `codes` (connection failures before any
/// byte was sent are always retried by the waypoint).
pub const DEFAULT_RETRY_CODES: [u32; 1] = [503];
/// Retried when a GRPCRoute asks for retry without `retry.ambit.io/grpc-codes`.
pub const DEFAULT_RETRY_GRPC_CODES: [u32; 1] = [14];
/// Gateway API's bound on a backend's weight.
const MAX_WEIGHT: i64 = 1_000_000;

/// The annotations a GRPCRoute may carry for what Gateway API gives it no field for; each
/// applies to every rule. Any other annotation under these prefixes is refused (a typo would
/// otherwise be a retry silently not made).
pub const GRPC_ANNOTATIONS: [&str; 5] = [
    ANNOTATION_ATTEMPTS,
    ANNOTATION_GRPC_CODES,
    ANNOTATION_BACKOFF,
    ANNOTATION_REQUEST_TIMEOUT,
    ANNOTATION_BACKEND_REQUEST_TIMEOUT,
];
/// Retries after the first try (a number, default 2).
pub const ANNOTATION_ATTEMPTS: &str = "retry.ambit.io/attempts";
/// Comma-separated gRPC status names retried (default `unavailable`), e.g.
/// `unavailable,resource-exhausted`.
pub const ANNOTATION_GRPC_CODES: &str = "retry.ambit.io/grpc-codes";
/// Wait before each retry, a Gateway API duration.
pub const ANNOTATION_BACKOFF: &str = "retry.ambit.io/backoff";
/// As HTTPRoute's `timeouts.request`.
pub const ANNOTATION_REQUEST_TIMEOUT: &str = "timeout.ambit.io/request";
/// As HTTPRoute's `timeouts.backendRequest`.
pub const ANNOTATION_BACKEND_REQUEST_TIMEOUT: &str = "timeout.ambit.io/backend-request";
const ANNOTATION_PREFIXES: [&str; 2] = ["retry.ambit.io/", "timeout.ambit.io/"];

/// What routes are checked and resolved against: the services of the model input.
pub struct RouteContext<'a> {
    services: BTreeMap<ObjectKey, ServiceInfo<'a>>,
    waypoint_gateways: &'a BTreeSet<ObjectKey>,
    trust_domain: &'a str,
}

struct ServiceInfo<'a> {
    /// Its own label, else its namespace's.
    waypoint: Option<&'a str>,
    ports: Vec<u16>,
}

impl<'a> RouteContext<'a> {
    /// `waypoint_gateways`: the `ambit-waypoint` Gateways (Kubernetes), so that a route attached
    /// to one can be told how to attach it instead.
    pub fn new(
        namespaces: &'a [model::Namespace],
        services: impl IntoIterator<Item = &'a model::Service, IntoIter: 'a>,
        waypoint_gateways: &'a BTreeSet<ObjectKey>,
        trust_domain: &'a str,
    ) -> Self {
        let services = model::requested_waypoints(namespaces, services)
            .map(|(s, waypoint)| {
                let info = ServiceInfo {
                    waypoint,
                    ports: s.ports.iter().map(|p| p.port).collect(),
                };
                (ObjectKey::new(&s.namespace, &s.name), info)
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

/// The route's object metadata.
pub struct Meta<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub annotations: &'a BTreeMap<String, String>,
    /// Prefix of field paths in reasons: `spec.` for a Kubernetes object, empty for a mesh file
    /// item (whose spec fields are at its top level).
    pub spec_path: &'a str,
}

/// Why a route is refused, and where (a mesh file line, when known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    pub line: Option<u64>,
}

/// Something about a route that is said whether or not the route is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// Part of what is written is ignored (a parent that cannot be used, say); a mesh file,
    /// which a human fixes, refuses it.
    Ignored { reason: String, line: Option<u64> },
    /// Nothing is wrong with the route itself (its service uses no waypoint yet, say).
    Info(String),
}

/// What became of a route.
#[derive(Debug)]
pub struct Outcome {
    /// `Ok(None)`: no parent is a Service, so the route is not the mesh's.
    pub route: Result<Option<rpb::Route>, Refusal>,
    pub notes: Vec<Note>,
    /// Parents that are not Services (another gateway's business in Kubernetes; a mistake in a
    /// mesh file), by field and line.
    pub foreign_parents: Vec<(String, Option<u64>)>,
}

/// The line of a value read from a mesh file; `None` for one read from Kubernetes.
fn line<T>(s: &Spanned<T>) -> Option<u64> {
    Some(s.referenced.line()).filter(|l| *l > 0)
}

fn refuse(reason: String, line: Option<u64>) -> Refusal {
    Refusal { reason, line }
}

pub fn http_route(meta: &Meta<'_>, spec: &spec::HttpRouteSpec, ctx: &RouteContext<'_>) -> Outcome {
    let mut out = Outcome {
        route: Ok(None),
        notes: Vec::new(),
        foreign_parents: Vec::new(),
    };
    out.route = convert(
        meta,
        &spec.parent_refs,
        &spec.hostnames,
        ctx,
        &mut out,
        |out| {
            refuse_annotations(meta, "an HTTPRoute", "its rules' `retry` and `timeouts`")?;
            spec.rules
                .iter()
                .enumerate()
                .map(|(i, rule)| {
                    let path = format!("{}rules[{i}]", meta.spec_path);
                    rules::http_rule(rule, &path, meta.namespace, ctx, &mut out.notes)
                })
                .collect()
        },
    );
    out
}

pub fn grpc_route(meta: &Meta<'_>, spec: &spec::GrpcRouteSpec, ctx: &RouteContext<'_>) -> Outcome {
    let mut out = Outcome {
        route: Ok(None),
        notes: Vec::new(),
        foreign_parents: Vec::new(),
    };
    out.route = convert(
        meta,
        &spec.parent_refs,
        &spec.hostnames,
        ctx,
        &mut out,
        |out| {
            let (timeouts, retry) =
                grpc_annotations(meta).map_err(|reason| refuse(reason, None))?;
            spec.rules
                .iter()
                .enumerate()
                .map(|(i, rule)| {
                    let path = format!("{}rules[{i}]", meta.spec_path);
                    let mut r = rules::grpc_rule(rule, &path, meta.namespace, ctx, &mut out.notes)?;
                    (r.request_timeout_ms, r.backend_request_timeout_ms) = timeouts;
                    r.retry = retry.clone();
                    Ok(r)
                })
                .collect()
        },
    );
    out
}

/// The parents, then the rules (by `convert_rules`), into a route.
fn convert(
    meta: &Meta<'_>,
    parent_refs: &[Spanned<spec::ParentRef>],
    hostnames: &[String],
    ctx: &RouteContext<'_>,
    out: &mut Outcome,
    convert_rules: impl FnOnce(&mut Outcome) -> Result<Vec<rpb::RouteRule>, Refusal>,
) -> Result<Option<rpb::Route>, Refusal> {
    let Some(parents) = parents(meta, parent_refs, ctx, out)? else {
        return Ok(None);
    };
    for (i, h) in hostnames.iter().enumerate() {
        rules::check_hostname(h, true)
            .map_err(|why| refuse(format!("{}hostnames[{i}] {why}", meta.spec_path), None))?;
    }
    let rules = convert_rules(out)?;
    if rules.is_empty() {
        // Kubernetes defaults an empty list to one rule matching every request and sending it
        // nowhere (500); a route written without rules is more likely unfinished than that.
        return Err(refuse(
            format!(
                "{}rules is empty; give at least one rule (with backendRefs)",
                meta.spec_path
            ),
            None,
        ));
    }
    Ok(Some(rpb::Route {
        name: meta.name.into(),
        namespace: meta.namespace.into(),
        parents,
        // Checked lowercase above.
        hostnames: hostnames.to_vec(),
        rules,
    }))
}

/// The Service parents; `Ok(None)` when no parent is a Service (nor an Ambit waypoint, which
/// is told to attach to Services instead). Parents that are Services but unusable are noted.
fn parents(
    meta: &Meta<'_>,
    parent_refs: &[Spanned<spec::ParentRef>],
    ctx: &RouteContext<'_>,
    out: &mut Outcome,
) -> Result<Option<Vec<rpb::ParentRef>>, Refusal> {
    let namespace = meta.namespace;
    let mut for_mesh = false;
    let mut parents = BTreeSet::new();
    for (i, spanned) in parent_refs.iter().enumerate() {
        let parent = &spanned.value;
        let at = line(spanned);
        let field = format!("{}parentRefs[{i}]", meta.spec_path);
        let ignored = |reason: String| Note::Ignored { reason, line: at };
        let group = parent.group.as_deref().unwrap_or(GATEWAY_GROUP);
        let kind = parent.kind.as_deref().unwrap_or("Gateway");
        let target = ObjectKey::new(
            parent.namespace.as_deref().unwrap_or(namespace),
            &parent.name,
        );
        match (group, kind) {
            ("" | "core", "Service") => {}
            (GATEWAY_GROUP, "Gateway") if ctx.waypoint_gateways.contains(&target) => {
                for_mesh = true;
                out.notes.push(ignored(format!(
                    "{field} names waypoint {target}: routes attach to the Services they route (GAMMA), not to the waypoint; this parent is ignored: use parentRefs [{{group: \"\", kind: Service, name: <service>}}]"
                )));
                continue;
            }
            _ => {
                out.foreign_parents.push((field, at));
                continue;
            }
        }
        for_mesh = true;
        if parent.section_name.is_some() {
            return Err(refuse(
                format!(
                    "{field}.sectionName is not supported on a Service parent; give the service port as `port`"
                ),
                at,
            ));
        }
        if target.namespace != namespace {
            out.notes.push(ignored(format!(
                "{field} is in namespace {}: routes for another namespace's traffic (consumer routes) are not supported, so this parent is ignored; put the route in {}",
                target.namespace, target.namespace
            )));
            continue;
        }
        let Some(service) = ctx.services.get(&target) else {
            out.notes.push(ignored(format!(
                "{field} names service {target}, which does not exist (or was left out); this parent is ignored until it does"
            )));
            continue;
        };
        let port = match parent.port {
            None => 0,
            Some(p) => match u16::try_from(p).ok().filter(|p| service.ports.contains(p)) {
                Some(p) => p,
                None => {
                    out.notes.push(ignored(format!(
                        "{field}.port {p} is no port of service {target}; this parent is ignored"
                    )));
                    continue;
                }
            },
        };
        if service.waypoint.is_none() {
            // Kept, since a label may come later; but said, as nothing applies it today.
            out.notes.push(Note::Info(format!(
                "{field}: service {target} uses no waypoint, so no proxy applies this route to its traffic yet; label the service (or its namespace) {USE_WAYPOINT_LABEL}=<waypoint>"
            )));
        }
        parents.insert((ctx.hostname(&target), port));
    }
    if !for_mesh {
        return Ok(None);
    }
    if parents.is_empty() {
        return Err(refuse(
            "no parentRef is a service the mesh can attach it to (see this route's other lines)"
                .into(),
            None,
        ));
    }
    // A parent for every port of a service covers its parents for one port.
    let every_port: BTreeSet<String> = parents
        .iter()
        .filter(|(_, p)| *p == 0)
        .map(|(s, _)| s.clone())
        .collect();
    Ok(Some(
        parents
            .into_iter()
            .filter(|(s, p)| *p == 0 || !every_port.contains(s))
            .map(|(service, port)| rpb::ParentRef {
                service,
                port: port.into(),
            })
            .collect(),
    ))
}

/// Milliseconds of a Gateway API duration (GEP-2257: "200ms", "1s", "1h30m"); 0 means none.
fn millis(value: &str, field: &str) -> Result<u64, String> {
    let d = gateway_api::Duration::from_str(value).map_err(|why| {
        format!(
            "{field} {value:?} is not a Gateway API duration ({why}); write e.g. \"500ms\", \"2s\" or \"1m\""
        )
    })?;
    Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `(request, backend_request)` in milliseconds, checked as GEP-1742 requires.
fn timeouts(
    request: Option<(&str, &str)>,
    backend_request: Option<(&str, &str)>,
) -> Result<(u64, u64), String> {
    let request_ms = request.map(|(v, f)| millis(v, f)).transpose()?.unwrap_or(0);
    let backend_ms = backend_request
        .map(|(v, f)| millis(v, f))
        .transpose()?
        .unwrap_or(0);
    if request_ms > 0 && backend_ms > request_ms {
        let (_, field) = backend_request.unwrap_or_default();
        return Err(format!(
            "{field} ({backend_ms}ms) is longer than the request timeout ({request_ms}ms); a try cannot outlast the request"
        ));
    }
    Ok((request_ms, backend_ms))
}

/// An HTTPRoute has fields for what the annotations say: they are refused on one.
fn refuse_annotations(meta: &Meta<'_>, what: &str, instead: &str) -> Result<(), Refusal> {
    match meta
        .annotations
        .keys()
        .find(|k| ANNOTATION_PREFIXES.iter().any(|p| k.starts_with(p)))
    {
        Some(k) => Err(refuse(
            format!("annotation {k} is for GRPCRoutes; on {what} use {instead}"),
            None,
        )),
        None => Ok(()),
    }
}

/// The timeouts `(request, backend_request)` and retry a GRPCRoute's annotations ask for.
fn grpc_annotations(meta: &Meta<'_>) -> Result<((u64, u64), Option<rpb::RetryPolicy>), String> {
    let a = meta.annotations;
    if let Some(k) = a.keys().find(|k| {
        ANNOTATION_PREFIXES.iter().any(|p| k.starts_with(p))
            && !GRPC_ANNOTATIONS.contains(&k.as_str())
    }) {
        return Err(format!(
            "annotation {k} is not one Ambit reads; use {}",
            GRPC_ANNOTATIONS.join(", ")
        ));
    }
    let get = |k: &'static str| a.get(k).map(|v| (v.as_str(), k));
    let timeouts = timeouts(
        get(ANNOTATION_REQUEST_TIMEOUT),
        get(ANNOTATION_BACKEND_REQUEST_TIMEOUT),
    )?;
    let asked = [
        ANNOTATION_ATTEMPTS,
        ANNOTATION_GRPC_CODES,
        ANNOTATION_BACKOFF,
    ]
    .iter()
    .any(|k| a.contains_key(*k));
    if !asked {
        return Ok((timeouts, None));
    }
    let attempts = match a.get(ANNOTATION_ATTEMPTS) {
        Some(v) => v.trim().parse::<u32>().map_err(|_| {
            format!("annotation {ANNOTATION_ATTEMPTS} {v:?} is not a number of retries (0 or more)")
        })?,
        None => DEFAULT_RETRY_ATTEMPTS,
    };
    let grpc_codes = match a.get(ANNOTATION_GRPC_CODES) {
        Some(v) => rules::grpc_codes(v)
            .map_err(|why| format!("annotation {ANNOTATION_GRPC_CODES}: {why}"))?,
        None => DEFAULT_RETRY_GRPC_CODES.to_vec(),
    };
    let backoff_ms = match a.get(ANNOTATION_BACKOFF) {
        Some(v) => millis(v, &format!("annotation {ANNOTATION_BACKOFF}"))?,
        None => 0,
    };
    Ok((
        timeouts,
        Some(rpb::RetryPolicy {
            attempts,
            codes: Vec::new(),
            grpc_codes,
            backoff_ms,
        }),
    ))
}

/// A backend Service of the route's own namespace that exists, with its port and weight.
fn backend(
    spanned: &Spanned<spec::BackendRef>,
    field: &str,
    namespace: &str,
    ctx: &RouteContext<'_>,
) -> Result<rpb::BackendRef, String> {
    let b = &spanned.value;
    let group = b.group.as_deref().unwrap_or_default();
    let kind = b.kind.as_deref().unwrap_or("Service");
    if !matches!(group, "" | "core") || kind != "Service" {
        return Err(format!(
            "{field} is a {kind} of group {group:?}; the mesh routes to Services only"
        ));
    }
    if b.filters
        .as_ref()
        .is_some_and(|f| !f.is_null() && f != &serde_json::json!([]))
    {
        return Err(format!(
            "{field}.filters are not supported by Ambit's waypoint; put the filters on the rule"
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
    if !ctx.services.contains_key(&service) {
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
    let weight = b.weight.unwrap_or(1);
    if !(0..=MAX_WEIGHT).contains(&weight) {
        return Err(format!(
            "{field}.weight {weight} is out of range; give 0 to {MAX_WEIGHT}"
        ));
    }
    Ok(rpb::BackendRef {
        service: ctx.hostname(&service),
        port: port.into(),
        weight: weight as u32,
    })
}
