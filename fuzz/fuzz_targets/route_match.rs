//! Routing: any Route a controller could send (prost-decoded, compiled as the waypoint compiles
//! it) and any request, normalised as the waypoint normalises it, looked up on each of the
//! route's parents. Besides not panicking:
//! - a rule matched on a path prefix names a prefix of the request's path;
//! - a weighted pick only ever returns a backend of the rule, and one whenever a weight is set;
//! - filters leave a valid request, and a path rewrite an absolute path;
//! - a redirect's `Location` is a valid header value.

#![no_main]

use ambit_proto::api::route as api;
use ambit_waypoint::filters::{apply_request, apply_response, redirect};
use ambit_waypoint::path::{EscapedSlashes, normalise_uri};
use ambit_waypoint::route::{Lookup, Routes};
use http::{HeaderName, HeaderValue, Method, Request, Response};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use prost::Message;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    method: &'a str,
    uri: &'a str,
    headers: Vec<(&'a str, &'a [u8])>,
    port: u16,
    roll: u64,
    /// An encoded `ambit.route.v1.Route`.
    route: &'a [u8],
}

fuzz_target!(|input: Input<'_>| {
    let Ok(route) = api::Route::decode(input.route) else {
        return;
    };
    let Ok(routes) = Routes::from_api(std::slice::from_ref(&route)) else {
        return;
    };
    let Ok(method) = Method::from_bytes(input.method.as_bytes()) else {
        return;
    };
    let Ok(request) = Request::builder().method(method).uri(input.uri).body(()) else {
        return;
    };
    let (mut head, ()) = request.into_parts();
    for (name, value) in &input.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            head.headers.append(n, v);
        }
    }
    if normalise_uri(&mut head.uri, EscapedSlashes::Reject).is_err() {
        return;
    }
    for parent in &route.parents {
        let port = u16::try_from(parent.port)
            .ok()
            .filter(|p| *p != 0)
            .unwrap_or(input.port);
        let Lookup::Matched(matched) = routes.lookup(&parent.service, port, &head) else {
            continue;
        };
        let rule = matched.rule;
        if let Some(prefix) = matched.prefix {
            assert!(
                head.uri.path().starts_with(prefix.trim_end_matches('/')),
                "matched prefix {prefix:?} is not a prefix of {:?}",
                head.uri.path()
            );
        }
        let picked = rule.pick_backend(input.roll);
        if rule.backends.iter().any(|b| b.weight > 0) {
            let b = picked.expect("a rule with a weighted backend picks one");
            assert!(rule.backends.iter().any(|own| std::ptr::eq(own, b)));
        } else {
            assert!(picked.is_none(), "a rule with no weight picked a backend");
        }
        if let Some(r) = &rule.filters.redirect {
            let location = redirect(r, matched.prefix, port, &head);
            assert!(location.headers().contains_key(http::header::LOCATION));
            continue;
        }
        let mut rewritten = head.clone();
        apply_request(&rule.filters, matched.prefix, &mut rewritten);
        assert!(
            rewritten.uri.path().starts_with('/') || head.uri.path_and_query().is_none(),
            "rewrite made {:?} of {:?}",
            rewritten.uri,
            head.uri
        );
        if let Some(rewrite) = rule.filters.rewrite.as_ref().and_then(|r| r.path.as_ref()) {
            let new = rewrite.apply(head.uri.path(), matched.prefix);
            assert!(
                http::uri::PathAndQuery::try_from(new.as_str()).is_ok(),
                "the rewrite of {:?} gave {new:?}, which is not a path",
                head.uri.path()
            );
        }
        let (mut response, ()) = Response::new(()).into_parts();
        apply_response(&rule.filters, &mut response);
    }
});
