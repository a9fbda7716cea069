//! The HBONE server's reading of a CONNECT: its `:authority` (as h2 hands it over) checked into
//! a tunnel target, and the `forwarded` header a waypoint reads the client from. A target that
//! passes is an `ip:port` that prints back to itself, on the connection's own address when the
//! server checks that, and never on a port of the proxy's own.
//!
//! Input: a flags byte (bit 0: any address allowed, bit 1: not a CONNECT), a length byte, that
//! many bytes of `:authority`, then the `forwarded` header's value.

#![no_main]

use std::net::SocketAddr;

use ambit_proto::hbone::{AuthorityCheck, forwarded_for, tunnel_target};
use http::uri::Authority;
use http::{HeaderValue, Method, Request, Uri};
use libfuzzer_sys::fuzz_target;

const RESERVED: &[u16] = &[15001, 15006, 15008];

fuzz_target!(|data: &[u8]| {
    let [flags, len, rest @ ..] = data else {
        return;
    };
    let (authority, forwarded) = rest.split_at(usize::from(*len).min(rest.len()));
    let check = if flags & 1 == 0 {
        AuthorityCheck::LocalAddress
    } else {
        AuthorityCheck::Any
    };
    let method = if flags & 2 == 0 {
        Method::CONNECT
    } else {
        Method::GET
    };
    let local: SocketAddr = "10.244.0.5:15008".parse().expect("an address");

    // h2 builds a CONNECT's URI from `:authority` alone.
    let Ok(authority) = Authority::try_from(authority) else {
        return;
    };
    let Ok(uri) = Uri::builder().authority(authority.clone()).build() else {
        return;
    };
    let mut request = Request::builder()
        .method(method.clone())
        .uri(uri)
        .body(())
        .expect("a request of parts that parsed");
    if let Ok(value) = HeaderValue::from_bytes(forwarded) {
        request.headers_mut().insert("forwarded", value);
    }
    let (head, ()) = request.into_parts();

    if let Ok(target) = tunnel_target(&head, local, check, RESERVED) {
        assert_eq!(method, Method::CONNECT);
        assert_eq!(target.to_string().parse::<SocketAddr>(), Ok(target));
        assert_eq!(
            authority.as_str().parse::<SocketAddr>(),
            Ok(target),
            "the target is not what the authority says"
        );
        assert!(!RESERVED.contains(&target.port()));
        if check == AuthorityCheck::LocalAddress {
            assert_eq!(target.ip(), local.ip());
        }
    }
    // The client a waypoint reads from `forwarded` is one the header spells out in a `for=`.
    if let Some(client) = forwarded_for(&head.headers) {
        let value = head.headers["forwarded"]
            .to_str()
            .expect("it was read as text");
        assert!(
            value.split(';').any(|p| p
                .trim()
                .strip_prefix("for=")
                .is_some_and(|v| v.trim_matches('"').parse() == Ok(client))),
            "{client} is not what {value:?} says"
        );
    }
});
