//! What a CONNECT asks for: its target address, checked before any tunnel exists, and the
//! original client a waypoint's tunnel names. Pure functions of the request's head, so they
//! are tested (and fuzzed, `fuzz/`) without a connection.

use std::net::SocketAddr;

use http::{HeaderMap, Method, StatusCode, request};

use super::server::AuthorityCheck;

/// Why a CONNECT is refused: the status and the reason sent back in `ambit-error`.
pub type Refusal = (StatusCode, String);

/// The tunnel target of a CONNECT arriving on `local`: its `:authority` as an `ip:port`, which
/// `check` allows and which is none of `reserved_ports`.
pub fn tunnel_target(
    head: &request::Parts,
    local: SocketAddr,
    check: AuthorityCheck,
    reserved_ports: &[u16],
) -> Result<SocketAddr, Refusal> {
    if head.method != Method::CONNECT {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            format!("HBONE accepts only CONNECT, not {}", head.method),
        ));
    }
    let target: SocketAddr = head
        .uri
        .authority()
        .and_then(|a| a.as_str().parse().ok())
        .ok_or_else(|| {
            (
                StatusCode::BAD_REQUEST,
                format!(
                    "the CONNECT authority {:?} is not an ip:port",
                    head.uri.to_string()
                ),
            )
        })?;
    if check == AuthorityCheck::LocalAddress && target.ip() != local.ip() {
        return Err((
            StatusCode::BAD_REQUEST,
            format!(
                "the CONNECT authority {target} is not this destination's address {}: a tunnel may only reach the pod it was dialled to",
                local.ip()
            ),
        ));
    }
    if reserved_ports.contains(&target.port()) {
        return Err((
            StatusCode::BAD_REQUEST,
            format!(
                "port {} is the proxy's own and cannot be a tunnel target",
                target.port()
            ),
        ));
    }
    Ok(target)
}

/// The original client address from `forwarded: for="ip:port"` (RFC 7239), if sent.
pub fn forwarded_for(headers: &HeaderMap) -> Option<SocketAddr> {
    let value = headers.get("forwarded")?.to_str().ok()?;
    value.split(';').find_map(|part| {
        let v = part.trim().strip_prefix("for=")?;
        v.trim_matches('"').parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: &str, uri: &str) -> request::Parts {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    const RESERVED: &[u16] = &[15001, 15006, 15008];

    #[test]
    fn targets() {
        let local: SocketAddr = "10.0.0.5:15008".parse().unwrap();
        let table: &[(&str, &str, AuthorityCheck, Result<&str, StatusCode>)] = &[
            (
                "CONNECT",
                "10.0.0.5:8080",
                AuthorityCheck::LocalAddress,
                Ok("10.0.0.5:8080"),
            ),
            (
                "CONNECT",
                "10.0.0.6:8080",
                AuthorityCheck::LocalAddress,
                Err(StatusCode::BAD_REQUEST),
            ),
            (
                "CONNECT",
                "10.0.0.6:8080",
                AuthorityCheck::Any,
                Ok("10.0.0.6:8080"),
            ),
            (
                "CONNECT",
                "10.0.0.5:15006",
                AuthorityCheck::Any,
                Err(StatusCode::BAD_REQUEST),
            ),
            (
                "CONNECT",
                "reviews:9080",
                AuthorityCheck::Any,
                Err(StatusCode::BAD_REQUEST),
            ),
            (
                "CONNECT",
                "[fd00::1]:80",
                AuthorityCheck::Any,
                Ok("[fd00::1]:80"),
            ),
            (
                "CONNECT",
                "user@10.0.0.5:80",
                AuthorityCheck::Any,
                Err(StatusCode::BAD_REQUEST),
            ),
            (
                "GET",
                "10.0.0.5:8080",
                AuthorityCheck::Any,
                Err(StatusCode::METHOD_NOT_ALLOWED),
            ),
        ];
        for (method, uri, check, want) in table {
            let got = tunnel_target(&head(method, uri), local, *check, RESERVED)
                .map(|a| a.to_string())
                .map_err(|(status, _)| status);
            assert_eq!(
                got.as_deref().map_err(|s| *s),
                want.map(|s| s),
                "{method} {uri} ({check:?})"
            );
        }
    }

    #[test]
    fn forwarded() {
        let table: &[(&str, Option<&str>)] = &[
            ("for=\"10.1.2.3:4567\"", Some("10.1.2.3:4567")),
            ("proto=http; for=\"[fd00::7]:80\"", Some("[fd00::7]:80")),
            ("for=unknown", None),
            ("by=10.0.0.1:1", None),
        ];
        for (value, want) in table {
            let mut headers = HeaderMap::new();
            headers.insert("forwarded", value.parse().unwrap());
            let got = forwarded_for(&headers).map(|a| a.to_string());
            assert_eq!(got.as_deref(), *want, "{value}");
        }
    }
}
