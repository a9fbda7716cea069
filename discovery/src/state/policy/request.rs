//! What a waypoint knows of a request that L4 does not: its method, path, host and headers.

use http::HeaderMap;
use http::header::HOST;

/// The L7 attributes of one request, borrowed from it (nothing is copied per request).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The normalised path, without query: the caller normalises it once for routing, policy
    /// and the upstream alike, so that no two of them read a different path.
    pub path: &'a str,
    /// The URI's authority, when the request carries one (HTTP/2 `:authority`, or an HTTP/1.1
    /// absolute-form target).
    pub authority: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

impl<'a> Request<'a> {
    /// Every host the request names, without port and trailing dot: the URI's authority and each
    /// `Host` header. The application may read any of them, so policies see all of them (see
    /// [`super::matching::Values::multi`]).
    pub(super) fn hosts(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let headers: &'a HeaderMap = self.headers;
        self.authority
            .map(str::as_bytes)
            .into_iter()
            .chain(headers.get_all(HOST).iter().map(|v| v.as_bytes()))
            .map(bare_host)
    }

    /// Every value of header `name` (lowercase), as sent.
    pub(super) fn header(&self, name: &http::HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        let headers: &'a HeaderMap = self.headers;
        headers.get_all(name).into_iter().map(|v| v.as_bytes())
    }
}

/// `host[:port]`, `[v6]:port` or `user@host:port` to the host alone, without a trailing dot
/// (`reviews.` is `reviews` to DNS, and must be to a policy too).
pub(super) fn bare_host(authority: &[u8]) -> &[u8] {
    let mut h = authority;
    if let Some(at) = h.iter().rposition(|&b| b == b'@') {
        h = &h[at + 1..];
    }
    if h.first() == Some(&b'[') {
        if let Some(end) = h.iter().position(|&b| b == b']') {
            return &h[..=end];
        }
        return h;
    }
    if let Some(colon) = h.iter().rposition(|&b| b == b':')
        && h[colon + 1..].iter().all(u8::is_ascii_digit)
        && !h[..colon].contains(&b':')
    {
        h = &h[..colon];
    }
    h.strip_suffix(b".").unwrap_or(h)
}
