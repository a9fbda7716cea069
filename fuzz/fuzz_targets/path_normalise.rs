//! The waypoint's path normalisation and the L7 policy that reads its result: for any request
//! target, either the waypoint refuses it (400) or
//! - its normal form is normal: normalising it again changes nothing, and it has no empty, `.`
//!   or `..` segment, no escape of an unreserved character, no escaped slash, no fragment;
//! - a DENY on `/admin` and `/admin/*` denies it whenever an application that percent-decodes
//!   the path once, takes `\` for `/`, merges slashes and resolves dot segments would read
//!   `/admin` or something under it. That is the bypass the CVEs of this kind were made of.
//!
//! Input: a flags byte (bit 0: `--path-escaped-slashes=decode`), then the request target.

#![no_main]

use std::sync::Arc;

use ambit_discovery::state::{
    Policy, PolicyRequest as Request, PolicySource as Source, decide_request,
};
use ambit_proto::api::security as api;
use ambit_waypoint::path::{EscapedSlashes, normalise, normalise_uri};
use http::{HeaderMap, Uri};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, target)) = data.split_first() else {
        return;
    };
    let slashes = if flags & 1 == 0 {
        EscapedSlashes::Reject
    } else {
        EscapedSlashes::Decode
    };
    // As hyper and h2 hand a request target to the waypoint.
    let Ok(raw) = Uri::try_from(target) else {
        return;
    };
    let mut uri = raw.clone();
    if normalise_uri(&mut uri, slashes).is_err() {
        return;
    }
    let path = uri.path();
    if !raw.path().starts_with('/') {
        return;
    }
    assert_normal(path);
    let pq = uri.path_and_query().map_or("", |p| p.as_str());
    // (A path with an escape left in it comes back as a copy, equal.)
    match normalise(pq, slashes) {
        Ok(again) => assert_eq!(again, pq, "normalising the normal form again changed it"),
        Err(e) => panic!("the normal form {pq:?} does not normalise: {e}"),
    }

    let denied = !allowed(deny_admin(), path);
    let read = application_reading(raw.path());
    if read == "/admin" || read.starts_with("/admin/") {
        assert!(
            denied,
            "{:?} reads as {read:?} to an application but normalised to {path:?}, which the DENY on /admin let through",
            raw.path()
        );
    }
});

/// A policy denying `/admin` and everything under it, compiled once.
fn deny_admin() -> &'static Arc<Policy> {
    static POLICY: std::sync::OnceLock<Arc<Policy>> = std::sync::OnceLock::new();
    POLICY.get_or_init(|| {
        let wire = api::AuthorizationPolicy {
            name: "deny-admin".into(),
            namespace: "demo".into(),
            selector: None,
            action: api::Action::Deny as i32,
            dry_run: false,
            rules: vec![api::Rule {
                to: vec![api::Destination {
                    paths: vec!["/admin".into(), "/admin/*".into()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        Arc::new(Policy::from_api(&wire).expect("the DENY on /admin compiles"))
    })
}

/// Does `policy` let a GET of `path` through?
fn allowed(policy: &Arc<Policy>, path: &str) -> bool {
    let headers = HeaderMap::new();
    let request = Request {
        method: "GET",
        path,
        authority: None,
        headers: &headers,
    };
    let source = Source {
        identity: None,
        ip: "10.244.1.7".parse().expect("an address"),
    };
    decide_request(std::iter::once(policy), &source, 8080, &request).is_allowed()
}

fn assert_normal(path: &str) {
    assert!(path.starts_with('/'), "{path:?} is not absolute");
    assert!(!path.contains('#'), "{path:?} kept a fragment");
    assert!(!path.contains('\\'), "{path:?} kept a backslash");
    let segments: Vec<&str> = path[1..].split('/').collect();
    for (i, s) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        assert!(
            !(s.is_empty() && !last) && *s != "." && *s != "..",
            "{path:?} has an empty or dot segment"
        );
    }
    let bytes = path.as_bytes();
    for (i, _) in path.match_indices('%') {
        let hex = bytes.get(i + 1..i + 3).expect("a complete escape");
        let byte =
            u8::from_str_radix(std::str::from_utf8(hex).expect("ascii"), 16).expect("a hex escape");
        assert!(
            !(byte.is_ascii_alphanumeric() || b"-._~".contains(&byte)),
            "{path:?} keeps an escaped unreserved character"
        );
        assert!(
            byte != b'/' && byte != b'\\' && byte != 0,
            "{path:?} keeps an escaped slash, backslash or NUL"
        );
        assert!(
            hex.iter().all(|c| !c.is_ascii_lowercase()),
            "{path:?} has lowercase hex"
        );
    }
}

/// The path as a lenient application reads it: every escape decoded once (a malformed one kept
/// as written), `\` as `/`, slashes merged, `.` and `..` resolved.
fn application_reading(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], escape) {
            (b'%', Some(b)) => {
                decoded.push(b);
                i += 3;
            }
            (b, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    let decoded = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').collect();
    for (i, s) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *s {
            "." | "" if !last => {}
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            "." => out.push(""),
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}
