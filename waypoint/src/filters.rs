//! A route rule's Gateway API filters, compiled once with the routes and applied per request as
//! pure functions on the request or response head: header modifiers, the URL rewrite, and a
//! redirect answered by the waypoint itself.
//!
//! Prefix replacement (`ReplacePrefixMatch`) needs the path prefix the request matched, which
//! [`crate::route::Matched`] carries; the controller only sends it on rules whose every match is
//! a prefix match.

use ambit_proto::api::route as api;
use http::header::{HOST, LOCATION};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, request, response};

/// Everything a rule does to a request besides sending it to a backend.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub request_headers: Option<HeaderModifier>,
    pub response_headers: Option<HeaderModifier>,
    pub rewrite: Option<UrlRewrite>,
    /// When set the waypoint answers with this redirect; nothing goes to a backend.
    pub redirect: Option<Redirect>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderModifier {
    pub set: Box<[(HeaderName, HeaderValue)]>,
    pub add: Box<[(HeaderName, HeaderValue)]>,
    pub remove: Box<[HeaderName]>,
}

impl HeaderModifier {
    /// Removes, then sets (replacing every value), then adds (appending), as Envoy does.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathModifier {
    ReplaceFullPath(Box<str>),
    /// Replaces the matched prefix (whole segments), keeping the rest of the path.
    ReplacePrefixMatch(Box<str>),
}

impl PathModifier {
    /// The new path for `path`; `prefix` is the prefix the request matched (`/` if none).
    pub fn apply(&self, path: &str, prefix: Option<&str>) -> String {
        match self {
            PathModifier::ReplaceFullPath(p) => p.to_string(),
            PathModifier::ReplacePrefixMatch(replacement) => {
                let prefix = prefix.unwrap_or("/").trim_end_matches('/');
                // A matched prefix covers whole segments, so the rest is empty or starts at '/'.
                let rest = path.strip_prefix(prefix).unwrap_or(path);
                let new = format!("{}{rest}", replacement.trim_end_matches('/'));
                if new.is_empty() { "/".into() } else { new }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlRewrite {
    pub hostname: Option<Authority>,
    pub path: Option<PathModifier>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub scheme: Option<Scheme>,
    pub hostname: Option<Authority>,
    pub path: Option<PathModifier>,
    pub port: Option<u16>,
    pub status: StatusCode,
}

/// Applies the request header modifier and the URL rewrite. `matched_prefix` is the path prefix
/// the request matched (for `ReplacePrefixMatch`).
pub fn apply_request(filters: &Filters, matched_prefix: Option<&str>, req: &mut request::Parts) {
    if let Some(m) = &filters.request_headers {
        m.apply(&mut req.headers);
    }
    let Some(rewrite) = &filters.rewrite else {
        return;
    };
    let mut parts = req.uri.clone().into_parts();
    if let Some(path) = &rewrite.path {
        let new = path.apply(req.uri.path(), matched_prefix);
        let new = match req.uri.query() {
            Some(q) => format!("{new}?{q}"),
            None => new,
        };
        // Replacements are checked as paths when compiled, so this parses.
        if let Ok(pq) = PathAndQuery::try_from(new) {
            parts.path_and_query = Some(pq);
        }
    }
    if let Some(host) = &rewrite.hostname {
        if parts.authority.is_some() {
            parts.authority = Some(host.clone());
        }
        // An HTTP/2 request may carry its host only as :authority; a Host header beside it
        // must agree, and an HTTP/1.1 one needs it.
        if (req.headers.contains_key(HOST) || req.uri.authority().is_none())
            && let Ok(v) = HeaderValue::from_str(host.as_str())
        {
            req.headers.insert(HOST, v);
        }
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        req.uri = uri;
    }
}

/// Applies the response header modifier.
pub fn apply_response(filters: &Filters, resp: &mut response::Parts) {
    if let Some(m) = &filters.response_headers {
        m.apply(&mut resp.headers);
    }
}

/// The request's host without port: the URI's authority (HTTP/2, absolute form), else `Host`.
fn request_host(req: &request::Parts) -> Option<String> {
    if let Some(a) = req.uri.authority() {
        return Some(a.host().to_string());
    }
    let host = req.headers.get(HOST)?.to_str().ok()?;
    Some(host.parse::<Authority>().ok()?.host().to_string())
}

/// The redirect's response head, `Location` built as Gateway API specifies: scheme, host, path
/// from the filter or else the request; the port from the filter, else the redirect scheme's
/// well-known port, else the port the request was sent to (`port`, the service port); 80 with
/// http and 443 with https are left out. The query is kept.
pub fn redirect(
    redirect: &Redirect,
    matched_prefix: Option<&str>,
    port: u16,
    req: &request::Parts,
) -> http::Response<()> {
    let scheme = redirect
        .scheme
        .clone()
        .or_else(|| req.uri.scheme().cloned())
        .unwrap_or(Scheme::HTTP);
    let host = match &redirect.hostname {
        Some(h) => h.host().to_string(),
        None => request_host(req).unwrap_or_default(),
    };
    let port = redirect.port.unwrap_or(match redirect.scheme.as_ref() {
        Some(s) if *s == Scheme::HTTP => 80,
        Some(s) if *s == Scheme::HTTPS => 443,
        _ => port,
    });
    let default_port =
        (scheme == Scheme::HTTP && port == 80) || (scheme == Scheme::HTTPS && port == 443);
    let path = match &redirect.path {
        Some(p) => p.apply(req.uri.path(), matched_prefix),
        None => req.uri.path().to_string(),
    };
    let mut location = format!("{scheme}://{host}");
    if !default_port {
        location.push_str(&format!(":{port}"));
    }
    location.push_str(&path);
    if let Some(q) = req.uri.query() {
        location.push('?');
        location.push_str(q);
    }
    let mut resp = http::Response::new(());
    *resp.status_mut() = redirect.status;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(LOCATION, v);
    }
    resp
}

// --- compiling from the wire form ---

fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("header name {name:?} is invalid"))
}

fn header_modifier(m: &api::HeaderModifier) -> Result<HeaderModifier, String> {
    let pairs = |list: &[api::Header]| {
        list.iter()
            .map(|h| {
                let value = HeaderValue::from_str(&h.value)
                    .map_err(|_| format!("header {:?}: value {:?} is invalid", h.name, h.value))?;
                Ok((header_name(&h.name)?, value))
            })
            .collect::<Result<Box<[_]>, String>>()
    };
    Ok(HeaderModifier {
        set: pairs(&m.set)?,
        add: pairs(&m.add)?,
        remove: m
            .remove
            .iter()
            .map(|n| header_name(n))
            .collect::<Result<_, _>>()?,
    })
}

fn path_modifier(m: &api::PathModifier) -> Result<Option<PathModifier>, String> {
    use api::path_modifier::Kind;
    let check = |p: &str| {
        if p.starts_with('/') && PathAndQuery::try_from(p).is_ok_and(|pq| pq.query().is_none()) {
            Ok(p.into())
        } else {
            Err(format!("path {p:?} is not an absolute path"))
        }
    };
    Ok(match &m.kind {
        None => None,
        Some(Kind::ReplaceFullPath(p)) => Some(PathModifier::ReplaceFullPath(check(p)?)),
        // Empty is allowed: it strips the prefix.
        Some(Kind::ReplacePrefixMatch(p)) if p.is_empty() => {
            Some(PathModifier::ReplacePrefixMatch("".into()))
        }
        Some(Kind::ReplacePrefixMatch(p)) => Some(PathModifier::ReplacePrefixMatch(check(p)?)),
    })
}

fn hostname(h: &str) -> Result<Option<Authority>, String> {
    if h.is_empty() {
        return Ok(None);
    }
    match h.parse::<Authority>() {
        Ok(a) if a.port().is_none() => Ok(Some(a)),
        _ => Err(format!("hostname {h:?} is not a host name")),
    }
}

impl Filters {
    /// Compiles a rule's filters; `prefix_only` says every match of the rule is a path prefix
    /// match, which `ReplacePrefixMatch` needs.
    pub(crate) fn from_api(rule: &api::RouteRule, prefix_only: bool) -> Result<Filters, String> {
        let rewrite = rule
            .url_rewrite
            .as_ref()
            .map(|r| {
                Ok::<_, String>(UrlRewrite {
                    hostname: hostname(&r.hostname).map_err(|e| format!("urlRewrite: {e}"))?,
                    path: match &r.path {
                        Some(p) => path_modifier(p).map_err(|e| format!("urlRewrite: {e}"))?,
                        None => None,
                    },
                })
            })
            .transpose()?;
        let redirect = rule
            .request_redirect
            .as_ref()
            .map(|r| {
                let scheme = match r.scheme.as_str() {
                    "" => None,
                    "http" => Some(Scheme::HTTP),
                    "https" => Some(Scheme::HTTPS),
                    other => {
                        return Err(format!(
                            "requestRedirect: scheme {other:?} is not http or https"
                        ));
                    }
                };
                let status = match r.status_code {
                    0 => StatusCode::FOUND,
                    c @ (301 | 302 | 303 | 307 | 308) => StatusCode::from_u16(c as u16)
                        .map_err(|_| format!("requestRedirect: status {c}"))?,
                    c => {
                        return Err(format!(
                            "requestRedirect: status {c} is not 301, 302, 303, 307 or 308"
                        ));
                    }
                };
                let port = match r.port {
                    0 => None,
                    p => Some(
                        u16::try_from(p)
                            .map_err(|_| format!("requestRedirect: port {p} is out of range"))?,
                    ),
                };
                Ok(Redirect {
                    scheme,
                    hostname: hostname(&r.hostname).map_err(|e| format!("requestRedirect: {e}"))?,
                    path: match &r.path {
                        Some(p) => path_modifier(p).map_err(|e| format!("requestRedirect: {e}"))?,
                        None => None,
                    },
                    port,
                    status,
                })
            })
            .transpose()?;
        if rewrite.is_some() && redirect.is_some() {
            return Err("a rule cannot both rewrite and redirect".into());
        }
        let prefix_replaced = [
            rewrite.as_ref().and_then(|r| r.path.as_ref()),
            redirect.as_ref().and_then(|r| r.path.as_ref()),
        ]
        .into_iter()
        .flatten()
        .any(|p| matches!(p, PathModifier::ReplacePrefixMatch(_)));
        if prefix_replaced && !prefix_only {
            return Err(
                "replacePrefixMatch needs every match of the rule to be a path prefix match".into(),
            );
        }
        Ok(Filters {
            request_headers: rule
                .request_header_modifier
                .as_ref()
                .map(header_modifier)
                .transpose()
                .map_err(|e| format!("requestHeaderModifier: {e}"))?,
            response_headers: rule
                .response_header_modifier
                .as_ref()
                .map(header_modifier)
                .transpose()
                .map_err(|e| format!("responseHeaderModifier: {e}"))?,
            rewrite,
            redirect,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, headers: &[(&str, &str)]) -> request::Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn h(name: &str, value: &str) -> (HeaderName, HeaderValue) {
        (
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        )
    }

    fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn header_modifiers_remove_set_and_add() {
        let m = HeaderModifier {
            set: [h("x-set", "new")].into(),
            add: [h("x-add", "two"), h("x-fresh", "1")].into(),
            remove: [HeaderName::from_static("x-gone")].into(),
        };
        let mut r = req(
            "/",
            &[
                ("x-set", "old"),
                ("x-set", "older"),
                ("x-add", "one"),
                ("x-gone", "a"),
                ("x-gone", "b"),
                ("x-kept", "k"),
            ],
        );
        let filters = Filters {
            request_headers: Some(m.clone()),
            ..Default::default()
        };
        apply_request(&filters, None, &mut r);
        let table: [(&str, &[&str]); 5] = [
            ("x-set", &["new"]),
            ("x-add", &["one", "two"]),
            ("x-fresh", &["1"]),
            ("x-gone", &[]),
            ("x-kept", &["k"]),
        ];
        for (name, expected) in table {
            assert_eq!(values(&r.headers, name), expected, "{name}");
        }
        let (mut resp, ()) = http::Response::builder()
            .header("x-set", "upstream")
            .body(())
            .unwrap()
            .into_parts();
        apply_response(
            &Filters {
                response_headers: Some(m),
                ..Default::default()
            },
            &mut resp,
        );
        assert_eq!(values(&resp.headers, "x-set"), ["new"]);
        assert_eq!(values(&resp.headers, "x-add"), ["two"]);
    }

    #[test]
    fn prefix_replacement_follows_the_gateway_api_table() {
        let table = [
            // (path, matched prefix, replacement, result)
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo/bar", "/foo", "", "/bar"),
            ("/foo/", "/foo", "", "/"),
            ("/foo", "/foo", "", "/"),
            ("/foo/", "/foo", "/", "/"),
            ("/foo", "/foo", "/", "/"),
            ("/prefix/one/two", "/prefix/one", "/one", "/one/two"),
            ("/strip-prefix/three", "/strip-prefix", "/", "/three"),
            ("/anything", "/", "/api", "/api/anything"),
        ];
        for (path, prefix, replacement, expected) in table {
            let m = PathModifier::ReplacePrefixMatch(replacement.into());
            assert_eq!(
                m.apply(path, Some(prefix)),
                expected,
                "{path} {prefix} {replacement}"
            );
        }
        assert_eq!(
            PathModifier::ReplaceFullPath("/one".into()).apply("/full/one/two", Some("/full")),
            "/one"
        );
    }

    #[test]
    fn url_rewrites_change_path_and_host_and_keep_the_query() {
        let host = |h: &str| Some(h.parse::<Authority>().unwrap());
        let table = [
            // (request uri, Host header, rewrite, matched prefix, expected uri, expected Host)
            (
                "/prefix/one/two?a=1",
                Some("svc:8080"),
                UrlRewrite {
                    hostname: None,
                    path: Some(PathModifier::ReplacePrefixMatch("/one".into())),
                },
                Some("/prefix/one"),
                "/one/two?a=1",
                Some("svc:8080"),
            ),
            (
                "/full/x",
                Some("svc"),
                UrlRewrite {
                    hostname: host("example.org"),
                    path: Some(PathModifier::ReplaceFullPath("/test".into())),
                },
                Some("/full"),
                "/test",
                Some("example.org"),
            ),
            (
                // HTTP/2: the host is the URI's authority.
                "http://svc:8080/a?b",
                None,
                UrlRewrite {
                    hostname: host("example.org"),
                    path: None,
                },
                None,
                "http://example.org/a?b",
                None,
            ),
        ];
        for (uri, host_header, rewrite, prefix, expected_uri, expected_host) in table {
            let headers: Vec<(&str, &str)> = host_header.iter().map(|h| ("host", *h)).collect();
            let mut r = req(uri, &headers);
            let filters = Filters {
                rewrite: Some(rewrite),
                ..Default::default()
            };
            apply_request(&filters, prefix, &mut r);
            assert_eq!(r.uri.to_string(), expected_uri, "{uri}");
            assert_eq!(
                r.headers.get(HOST).map(|v| v.to_str().unwrap()),
                expected_host,
                "{uri}"
            );
        }
    }

    #[test]
    fn redirects_build_the_location_as_specified() {
        let base = Redirect {
            scheme: None,
            hostname: None,
            path: None,
            port: None,
            status: StatusCode::FOUND,
        };
        let table = [
            // (redirect, request uri, Host, matched prefix, service port, status, Location)
            (
                base.clone(),
                "/a?x=1",
                "echo",
                None,
                80,
                302,
                "http://echo/a?x=1",
            ),
            (
                Redirect {
                    port: Some(8083),
                    ..base.clone()
                },
                "/port",
                "echo",
                None,
                80,
                302,
                "http://echo:8083/port",
            ),
            (
                Redirect {
                    scheme: Some(Scheme::HTTPS),
                    status: StatusCode::MOVED_PERMANENTLY,
                    ..base.clone()
                },
                "/scheme",
                "echo:8080",
                None,
                8080,
                301,
                "https://echo/scheme",
            ),
            (
                Redirect {
                    hostname: Some("example.org".parse().unwrap()),
                    path: Some(PathModifier::ReplacePrefixMatch(
                        "/replacement-prefix".into(),
                    )),
                    ..base.clone()
                },
                "/original-prefix/lemon",
                "echo",
                Some("/original-prefix"),
                80,
                302,
                "http://example.org/replacement-prefix/lemon",
            ),
            (
                Redirect {
                    path: Some(PathModifier::ReplaceFullPath(
                        "/full-path-replacement".into(),
                    )),
                    ..base.clone()
                },
                "/full/path/original",
                "echo",
                Some("/full"),
                80,
                302,
                "http://echo/full-path-replacement",
            ),
            // No port in the filter and no scheme: the service port the request came to.
            (
                base.clone(),
                "/p",
                "echo:9080",
                None,
                9080,
                302,
                "http://echo:9080/p",
            ),
            (
                Redirect {
                    scheme: Some(Scheme::HTTP),
                    ..base.clone()
                },
                "/p",
                "echo:9080",
                None,
                9080,
                302,
                "http://echo/p",
            ),
            (
                Redirect {
                    status: StatusCode::PERMANENT_REDIRECT,
                    ..base.clone()
                },
                "/p",
                "[fd00::1]:80",
                None,
                80,
                308,
                "http://[fd00::1]/p",
            ),
        ];
        for (r, uri, host, prefix, port, status, location) in table {
            let resp = redirect(&r, prefix, port, &req(uri, &[("host", host)]));
            assert_eq!(resp.status().as_u16(), status, "{uri}");
            assert_eq!(resp.headers()[LOCATION], location, "{uri}");
        }
    }

    #[test]
    fn compiling_refuses_what_cannot_be_applied() {
        fn rule(f: impl FnOnce(&mut api::RouteRule)) -> api::RouteRule {
            let mut r = api::RouteRule::default();
            f(&mut r);
            r
        }
        fn prefix(p: &str) -> api::PathModifier {
            api::PathModifier {
                kind: Some(api::path_modifier::Kind::ReplacePrefixMatch(p.into())),
            }
        }
        let cases: [(api::RouteRule, bool, &str); 6] = [
            (
                rule(|r| {
                    r.url_rewrite = Some(Default::default());
                    r.request_redirect = Some(Default::default());
                }),
                true,
                "both rewrite and redirect",
            ),
            (
                rule(|r| {
                    r.url_rewrite = Some(api::UrlRewrite {
                        hostname: String::new(),
                        path: Some(prefix("/x")),
                    })
                }),
                false,
                "every match of the rule to be a path prefix",
            ),
            (
                rule(|r| {
                    r.request_redirect = Some(api::RequestRedirect {
                        status_code: 304,
                        ..Default::default()
                    })
                }),
                true,
                "status 304",
            ),
            (
                rule(|r| {
                    r.request_redirect = Some(api::RequestRedirect {
                        scheme: "ftp".into(),
                        ..Default::default()
                    })
                }),
                true,
                "scheme \"ftp\"",
            ),
            (
                rule(|r| {
                    r.request_header_modifier = Some(api::HeaderModifier {
                        remove: vec!["bad header".into()],
                        ..Default::default()
                    })
                }),
                true,
                "requestHeaderModifier: header name",
            ),
            (
                rule(|r| {
                    r.url_rewrite = Some(api::UrlRewrite {
                        hostname: "a.b:80".into(),
                        path: None,
                    })
                }),
                true,
                "is not a host name",
            ),
        ];
        for (rule, prefix_only, expected) in cases {
            let err = Filters::from_api(&rule, prefix_only).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
        let ok = Filters::from_api(
            &rule(|r| {
                r.url_rewrite = Some(api::UrlRewrite {
                    hostname: "example.org".into(),
                    path: Some(prefix("")),
                })
            }),
            true,
        )
        .unwrap();
        assert_eq!(
            ok.rewrite.unwrap().path,
            Some(PathModifier::ReplacePrefixMatch("".into()))
        );
    }
}
