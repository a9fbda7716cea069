//! One route rule to its wire form: matches (a GRPCRoute's method match becomes a path match on
//! `/<service>/<method>`), filters, backends, timeouts and retry, each checked as the waypoint
//! will check it.

use std::collections::BTreeSet;

use ambit_proto::api::route as rpb;
use http::HeaderName;
use http::header::HeaderValue;
use http::uri::PathAndQuery;
use regex::Regex;
use serde_saphyr::Spanned;

use super::spec::{self, FilterType, PathModifierType, PathType, ValueType};
use super::{
    DEFAULT_RETRY_ATTEMPTS, DEFAULT_RETRY_CODES, Note, Refusal, RouteContext, backend, line,
    refuse, timeouts,
};

/// gRPC status names as `retry.ambit.io/grpc-codes` spells them, with their numbers (OK is not
/// retryable, so not listed).
pub const GRPC_CODES: [(&str, u32); 16] = [
    ("cancelled", 1),
    ("unknown", 2),
    ("invalid-argument", 3),
    ("deadline-exceeded", 4),
    ("not-found", 5),
    ("already-exists", 6),
    ("permission-denied", 7),
    ("resource-exhausted", 8),
    ("failed-precondition", 9),
    ("aborted", 10),
    ("out-of-range", 11),
    ("unimplemented", 12),
    ("internal", 13),
    ("unavailable", 14),
    ("data-loss", 15),
    ("unauthenticated", 16),
];

/// `unavailable, RESOURCE_EXHAUSTED` → `[14, 8]`.
pub(super) fn grpc_codes(list: &str) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let name = word.to_ascii_lowercase().replace('_', "-");
        let Some((_, code)) = GRPC_CODES.iter().find(|(n, _)| *n == name) else {
            let names: Vec<&str> = GRPC_CODES.iter().map(|(n, _)| *n).collect();
            return Err(format!(
                "{word:?} is not a gRPC status; give some of {}",
                names.join(", ")
            ));
        };
        if !out.contains(code) {
            out.push(*code);
        }
    }
    if out.is_empty() {
        return Err("lists no gRPC status".into());
    }
    Ok(out)
}

/// A Gateway API hostname (`*.` wildcard allowed where `wildcard`); the reason when it is not.
pub(super) fn check_hostname(h: &str, wildcard: bool) -> Result<(), String> {
    let name = match h.strip_prefix("*.") {
        Some(rest) if wildcard => rest,
        _ => h,
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if h.len() <= 253 && name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!(
            "{h:?} is not a host name (lowercase DNS labels{})",
            if wildcard {
                ", optionally after \"*.\""
            } else {
                ""
            }
        ))
    }
}

fn anchored(pattern: &str, field: &str) -> Result<String, String> {
    // The waypoint anchors it the same way.
    Regex::new(&format!("^(?:{pattern})$"))
        .map(|_| pattern.to_string())
        .map_err(|e| format!("{field}: regular expression {pattern:?} is invalid: {e}"))
}

fn header_name(name: &str, field: &str) -> Result<String, String> {
    HeaderName::from_bytes(name.as_bytes())
        .map(|n| n.as_str().to_string())
        .map_err(|_| format!("{field}: {name:?} is not a header name"))
}

fn value_match(
    kind: Option<ValueType>,
    value: &str,
    field: &str,
) -> Result<rpb::ValueMatch, String> {
    use rpb::value_match::Kind;
    Ok(rpb::ValueMatch {
        kind: Some(match kind {
            Some(ValueType::RegularExpression) => Kind::Regex(anchored(value, field)?),
            Some(ValueType::Exact) | None => Kind::Exact(value.to_string()),
        }),
    })
}

/// Header matches; of entries with equal names only the first counts (Gateway API).
fn header_matches(list: &[spec::NamedMatch], field: &str) -> Result<Vec<rpb::HeaderMatch>, String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (k, h) in list.iter().enumerate() {
        let field = format!("{field}.headers[{k}]");
        let name = header_name(&h.name, &field)?;
        if seen.insert(name.clone()) {
            out.push(rpb::HeaderMatch {
                value: Some(value_match(h.kind, &h.value, &field)?),
                name,
            });
        }
    }
    Ok(out)
}

fn is_path(p: &str) -> bool {
    p.starts_with('/')
        && PathAndQuery::try_from(p).is_ok_and(|pq| pq.query().is_none() && pq.as_str() == p)
}

fn http_match(m: &spec::HttpMatch, field: &str) -> Result<rpb::RouteMatch, String> {
    use rpb::path_match::Kind;
    let path = match &m.path {
        None => None,
        Some(p) => {
            let value = p.value.clone().unwrap_or_else(|| "/".into());
            let field = format!("{field}.path");
            let kind = p.kind.unwrap_or(PathType::PathPrefix);
            if kind != PathType::RegularExpression && !is_path(&value) {
                return Err(format!(
                    "{field}.value {value:?} is not an absolute path (starting with '/')"
                ));
            }
            Some(rpb::PathMatch {
                kind: Some(match kind {
                    PathType::Exact => Kind::Exact(value),
                    PathType::PathPrefix => Kind::Prefix(value),
                    PathType::RegularExpression => Kind::Regex(anchored(&value, &field)?),
                }),
            })
        }
    };
    let mut seen = BTreeSet::new();
    let mut query_params = Vec::new();
    for (k, q) in m.query_params.iter().enumerate() {
        let field = format!("{field}.queryParams[{k}]");
        if q.name.is_empty() {
            return Err(format!("{field}.name is empty"));
        }
        if seen.insert(q.name.clone()) {
            query_params.push(rpb::QueryParamMatch {
                name: q.name.clone(),
                value: Some(value_match(q.kind, &q.value, &field)?),
            });
        }
    }
    let method = m.method.map(|m| format!("{m:?}").to_ascii_uppercase());
    Ok(rpb::RouteMatch {
        path,
        method: method.unwrap_or_default(),
        headers: header_matches(&m.headers, field)?,
        query_params,
    })
}

/// A gRPC service or method name as GRPCRoute's exact match allows.
fn grpc_name(s: &str, dotted: bool) -> bool {
    let ident = |p: &str| {
        p.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if dotted {
        s.split('.').all(ident)
    } else {
        ident(s)
    }
}

fn grpc_match(m: &spec::GrpcMatch, field: &str) -> Result<rpb::RouteMatch, String> {
    use rpb::path_match::Kind;
    let path = match &m.method {
        None => None,
        Some(mm) => {
            let field = format!("{field}.method");
            let service = mm.service.as_deref().filter(|s| !s.is_empty());
            let method = mm.method.as_deref().filter(|s| !s.is_empty());
            if service.is_none() && method.is_none() {
                return Err(format!("{field} gives neither service nor method"));
            }
            let kind = match mm.kind.unwrap_or(ValueType::Exact) {
                ValueType::Exact => {
                    if let Some(s) = service.filter(|s| !grpc_name(s, true)) {
                        return Err(format!(
                            "{field}.service {s:?} is not a gRPC service name (like pkg.Service)"
                        ));
                    }
                    if let Some(m) = method.filter(|m| !grpc_name(m, false)) {
                        return Err(format!("{field}.method {m:?} is not a gRPC method name"));
                    }
                    match (service, method) {
                        (Some(s), Some(m)) => Kind::Exact(format!("/{s}/{m}")),
                        // Every method of the service: whole segments, so not `/pkg.ServiceX/`.
                        (Some(s), None) => Kind::Prefix(format!("/{s}")),
                        (None, m) => Kind::Regex(format!("/[^/]+/{}", m.unwrap_or_default())),
                    }
                }
                ValueType::RegularExpression => {
                    let part = |p: Option<&str>, what: &str| match p {
                        Some(p) => {
                            anchored(p, &format!("{field}.{what}")).map(|p| format!("(?:{p})"))
                        }
                        None => Ok("[^/]+".to_string()),
                    };
                    Kind::Regex(format!(
                        "/{}/{}",
                        part(service, "service")?,
                        part(method, "method")?
                    ))
                }
            };
            Some(rpb::PathMatch { kind: Some(kind) })
        }
    };
    Ok(rpb::RouteMatch {
        path,
        method: String::new(),
        headers: header_matches(&m.headers, field)?,
        query_params: Vec::new(),
    })
}

fn header_modifier(m: &spec::HeaderModifier, field: &str) -> Result<rpb::HeaderModifier, String> {
    let pairs = |list: &[spec::Header], what: &str| {
        let mut seen = BTreeSet::new();
        list.iter()
            .enumerate()
            .map(|(k, h)| {
                let field = format!("{field}.{what}[{k}]");
                let name = header_name(&h.name, &field)?;
                if !seen.insert(name.clone()) {
                    return Err(format!("{field}: header {name} is given twice"));
                }
                HeaderValue::from_str(&h.value)
                    .map_err(|_| format!("{field}: {:?} is not a header value", h.value))?;
                Ok(rpb::Header {
                    name,
                    value: h.value.clone(),
                })
            })
            .collect::<Result<Vec<_>, String>>()
    };
    Ok(rpb::HeaderModifier {
        set: pairs(&m.set, "set")?,
        add: pairs(&m.add, "add")?,
        remove: m
            .remove
            .iter()
            .enumerate()
            .map(|(k, n)| header_name(n, &format!("{field}.remove[{k}]")))
            .collect::<Result<_, _>>()?,
    })
}

fn path_modifier(m: &spec::PathModifier, field: &str) -> Result<rpb::PathModifier, String> {
    use rpb::path_modifier::Kind;
    let kind = match (m.kind, &m.replace_full_path, &m.replace_prefix_match) {
        (PathModifierType::ReplaceFullPath, Some(p), None) if is_path(p) => {
            Kind::ReplaceFullPath(p.clone())
        }
        (PathModifierType::ReplacePrefixMatch, None, Some(p)) if p.is_empty() || is_path(p) => {
            Kind::ReplacePrefixMatch(p.clone())
        }
        (PathModifierType::ReplaceFullPath, Some(p), None)
        | (PathModifierType::ReplacePrefixMatch, None, Some(p)) => {
            return Err(format!(
                "{field}: {p:?} is not an absolute path (starting with '/')"
            ));
        }
        (kind, _, _) => {
            let want = match kind {
                PathModifierType::ReplaceFullPath => "replaceFullPath",
                PathModifierType::ReplacePrefixMatch => "replacePrefixMatch",
            };
            return Err(format!(
                "{field} of type {kind:?} needs `{want}` and nothing else"
            ));
        }
    };
    Ok(rpb::PathModifier { kind: Some(kind) })
}

fn url_rewrite(r: &spec::UrlRewrite, field: &str) -> Result<rpb::UrlRewrite, String> {
    if let Some(h) = &r.hostname {
        check_hostname(h, false).map_err(|why| format!("{field}.hostname {why}"))?;
    }
    Ok(rpb::UrlRewrite {
        hostname: r.hostname.clone().unwrap_or_default(),
        path: r
            .path
            .as_ref()
            .map(|p| path_modifier(p, &format!("{field}.path")))
            .transpose()?,
    })
}

fn redirect(r: &spec::RequestRedirect, field: &str) -> Result<rpb::RequestRedirect, String> {
    let scheme = r.scheme.clone().unwrap_or_default();
    if !matches!(scheme.as_str(), "" | "http" | "https") {
        return Err(format!("{field}.scheme {scheme:?} is not http or https"));
    }
    if let Some(h) = &r.hostname {
        check_hostname(h, false).map_err(|why| format!("{field}.hostname {why}"))?;
    }
    let port = match r.port {
        None => 0,
        Some(p) => u16::try_from(p)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{field}.port {p} is out of range"))?,
    };
    let status_code = match r.status_code {
        None => 302,
        Some(c @ (301 | 302 | 303 | 307 | 308)) => c as u32,
        Some(c) => {
            return Err(format!(
                "{field}.statusCode {c} is not 301, 302, 303, 307 or 308"
            ));
        }
    };
    Ok(rpb::RequestRedirect {
        scheme,
        hostname: r.hostname.clone().unwrap_or_default(),
        path: r
            .path
            .as_ref()
            .map(|p| path_modifier(p, &format!("{field}.path")))
            .transpose()?,
        port: port.into(),
        status_code,
    })
}

/// A rule's filters, at most one of each type.
#[derive(Default)]
struct Filters {
    request: Option<rpb::HeaderModifier>,
    response: Option<rpb::HeaderModifier>,
    rewrite: Option<rpb::UrlRewrite>,
    redirect: Option<rpb::RequestRedirect>,
}

impl Filters {
    fn replaces_prefix(&self) -> bool {
        let prefix = |p: &Option<rpb::PathModifier>| {
            matches!(
                p.as_ref().and_then(|p| p.kind.as_ref()),
                Some(rpb::path_modifier::Kind::ReplacePrefixMatch(_))
            )
        };
        self.rewrite.as_ref().is_some_and(|r| prefix(&r.path))
            || self.redirect.as_ref().is_some_and(|r| prefix(&r.path))
    }
}

fn filters(list: &[spec::Filter], path: &str, grpc: bool) -> Result<Filters, String> {
    let mut out = Filters::default();
    let mut seen = BTreeSet::new();
    for (k, f) in list.iter().enumerate() {
        let field = format!("{path}.filters[{k}]");
        let kind = f.kind;
        let body_count = [
            f.request_header_modifier.is_some(),
            f.response_header_modifier.is_some(),
            f.url_rewrite.is_some(),
            f.request_redirect.is_some(),
            f.request_mirror.is_some(),
            f.extension_ref.is_some(),
            f.cors.is_some(),
            f.external_auth.is_some(),
        ]
        .into_iter()
        .filter(|b| *b)
        .count();
        let missing = || format!("{field} of type {kind:?} has no settings for it (or others too)");
        let unsupported = |what: &str| {
            format!(
                "{field}: {what} filters are not supported by Ambit's waypoint; remove the filter (the route is not used until then)"
            )
        };
        match kind {
            FilterType::RequestMirror => return Err(unsupported("RequestMirror")),
            FilterType::ExtensionRef => return Err(unsupported("ExtensionRef")),
            FilterType::Cors => return Err(unsupported("CORS")),
            FilterType::ExternalAuth => return Err(unsupported("ExternalAuth")),
            FilterType::UrlRewrite | FilterType::RequestRedirect if grpc => {
                return Err(format!(
                    "{field}: a GRPCRoute has no {kind:?} filter (header modifiers only)"
                ));
            }
            _ => {}
        }
        if body_count != 1 {
            return Err(missing());
        }
        if !seen.insert(format!("{kind:?}")) {
            return Err(format!(
                "{field}: a rule takes one {kind:?} filter; merge them into one"
            ));
        }
        match kind {
            FilterType::RequestHeaderModifier => {
                let m = f.request_header_modifier.as_ref().ok_or_else(missing)?;
                out.request = Some(header_modifier(
                    m,
                    &format!("{field}.requestHeaderModifier"),
                )?);
            }
            FilterType::ResponseHeaderModifier => {
                let m = f.response_header_modifier.as_ref().ok_or_else(missing)?;
                out.response = Some(header_modifier(
                    m,
                    &format!("{field}.responseHeaderModifier"),
                )?);
            }
            FilterType::UrlRewrite => {
                let r = f.url_rewrite.as_ref().ok_or_else(missing)?;
                out.rewrite = Some(url_rewrite(r, &format!("{field}.urlRewrite"))?);
            }
            FilterType::RequestRedirect => {
                let r = f.request_redirect.as_ref().ok_or_else(missing)?;
                out.redirect = Some(redirect(r, &format!("{field}.requestRedirect"))?);
            }
            _ => unreachable!("refused above"),
        }
    }
    if out.rewrite.is_some() && out.redirect.is_some() {
        return Err(format!(
            "{path}.filters: a rule cannot both rewrite (URLRewrite) and redirect (RequestRedirect)"
        ));
    }
    Ok(out)
}

fn backends(
    refs: &[Spanned<spec::BackendRef>],
    path: &str,
    namespace: &str,
    ctx: &RouteContext<'_>,
) -> Result<Vec<rpb::BackendRef>, Refusal> {
    refs.iter()
        .enumerate()
        .map(|(k, b)| {
            backend(b, &format!("{path}.backendRefs[{k}]"), namespace, ctx)
                .map_err(|reason| refuse(reason, line(b)))
        })
        .collect()
}

fn session_persistence(v: &Option<serde_json::Value>, path: &str) -> Result<(), String> {
    match v {
        Some(v) if !v.is_null() => Err(format!(
            "{path}.sessionPersistence is not supported by Ambit's waypoint; remove it"
        )),
        _ => Ok(()),
    }
}

/// The rule without its timeouts and retry.
#[allow(clippy::too_many_arguments)]
fn rule(
    matches: Vec<rpb::RouteMatch>,
    filters: Filters,
    refs: &[Spanned<spec::BackendRef>],
    path: &str,
    at: Option<u64>,
    namespace: &str,
    ctx: &RouteContext<'_>,
    notes: &mut Vec<Note>,
) -> Result<rpb::RouteRule, Refusal> {
    if filters.replaces_prefix()
        && !matches.iter().all(|m| {
            matches!(
                m.path.as_ref().and_then(|p| p.kind.as_ref()),
                Some(rpb::path_match::Kind::Prefix(_))
            )
        })
    {
        return Err(refuse(
            format!(
                "{path}: replacePrefixMatch needs every match of the rule to be a PathPrefix match"
            ),
            at,
        ));
    }
    let backends = if filters.redirect.is_some() {
        if !refs.is_empty() {
            notes.push(Note::Ignored {
                reason: format!(
                    "{path}.backendRefs are never used beside a RequestRedirect (the waypoint answers the redirect itself); remove them"
                ),
                line: at,
            });
        }
        Vec::new()
    } else {
        backends(refs, path, namespace, ctx)?
    };
    Ok(rpb::RouteRule {
        matches,
        request_header_modifier: filters.request,
        response_header_modifier: filters.response,
        url_rewrite: filters.rewrite,
        request_redirect: filters.redirect,
        backends,
        request_timeout_ms: 0,
        backend_request_timeout_ms: 0,
        retry: None,
    })
}

pub(super) fn http_rule(
    spanned: &Spanned<spec::HttpRule>,
    path: &str,
    namespace: &str,
    ctx: &RouteContext<'_>,
    notes: &mut Vec<Note>,
) -> Result<rpb::RouteRule, Refusal> {
    let r = &spanned.value;
    let at = line(spanned);
    let checked = (|| {
        session_persistence(&r.session_persistence, path)?;
        let matches = r
            .matches
            .iter()
            .enumerate()
            .map(|(j, m)| http_match(m, &format!("{path}.matches[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let filters = filters(&r.filters, path, false)?;
        let t = r.timeouts.as_ref();
        let request_field = format!("{path}.timeouts.request");
        let backend_field = format!("{path}.timeouts.backendRequest");
        let timeouts = timeouts(
            t.and_then(|t| t.request.as_deref())
                .map(|v| (v, request_field.as_str())),
            t.and_then(|t| t.backend_request.as_deref())
                .map(|v| (v, backend_field.as_str())),
        )?;
        let retry = r
            .retry
            .as_ref()
            .map(|retry| retry_policy(retry, path))
            .transpose()?;
        Ok::<_, String>((matches, filters, timeouts, retry))
    })();
    let (matches, filters, (request_ms, backend_ms), retry) =
        checked.map_err(|reason| refuse(reason, at))?;
    let mut out = rule(
        matches,
        filters,
        &r.backend_refs,
        path,
        at,
        namespace,
        ctx,
        notes,
    )?;
    out.request_timeout_ms = request_ms;
    out.backend_request_timeout_ms = backend_ms;
    out.retry = retry;
    Ok(out)
}

fn retry_policy(retry: &spec::Retry, path: &str) -> Result<rpb::RetryPolicy, String> {
    let attempts = match retry.attempts {
        Some(n) => u32::try_from(n)
            .map_err(|_| format!("{path}.retry.attempts {n} is out of range; give 0 or more"))?,
        None => DEFAULT_RETRY_ATTEMPTS,
    };
    let codes = match &retry.codes {
        Some(codes) => codes
            .iter()
            .map(|c| match u32::try_from(*c) {
                Ok(c @ 400..=599) => Ok(c),
                _ => Err(format!(
                    "{path}.retry.codes: {c} is not an HTTP error status (400 to 599)"
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => DEFAULT_RETRY_CODES.to_vec(),
    };
    let backoff_ms = match retry.backoff.as_deref() {
        Some(v) => super::millis(v, &format!("{path}.retry.backoff"))?,
        None => 0,
    };
    Ok(rpb::RetryPolicy {
        attempts,
        codes,
        grpc_codes: Vec::new(),
        backoff_ms,
    })
}

pub(super) fn grpc_rule(
    spanned: &Spanned<spec::GrpcRule>,
    path: &str,
    namespace: &str,
    ctx: &RouteContext<'_>,
    notes: &mut Vec<Note>,
) -> Result<rpb::RouteRule, Refusal> {
    let r = &spanned.value;
    let at = line(spanned);
    let checked = (|| {
        session_persistence(&r.session_persistence, path)?;
        let matches = r
            .matches
            .iter()
            .enumerate()
            .map(|(j, m)| grpc_match(m, &format!("{path}.matches[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok::<_, String>((matches, filters(&r.filters, path, true)?))
    })();
    let (matches, filters) = checked.map_err(|reason| refuse(reason, at))?;
    rule(
        matches,
        filters,
        &r.backend_refs,
        path,
        at,
        namespace,
        ctx,
        notes,
    )
}
