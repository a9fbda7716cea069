//! L7 authorization: any AuthorizationPolicy a controller could send (prost-decoded from the
//! input, then compiled as the proxies compile it) judged against any request. Besides not
//! panicking, the verdicts must fail closed: the same rules as an ALLOW and as a DENY never
//! both let one request through (a condition that cannot be evaluated denies both ways), and
//! an AUDIT never denies.

#![no_main]

use std::sync::Arc;

use ambit_discovery::state::{
    Policy, PolicyRequest as Request, PolicySource as Source, Verdict, decide_request,
};
use ambit_proto::api::security as api;
use ambit_proto::identity::SpiffeId;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use prost::Message;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    method: &'a str,
    path: &'a str,
    authority: Option<&'a str>,
    headers: Vec<(&'a str, &'a [u8])>,
    /// Namespace and service account of the client's identity; none for plaintext.
    identity: Option<(&'a str, &'a str)>,
    ip: [u8; 4],
    port: u16,
    /// An encoded `ambit.security.v1.AuthorizationPolicy`.
    policy: &'a [u8],
}

fuzz_target!(|input: Input<'_>| {
    let Ok(wire) = api::AuthorizationPolicy::decode(input.policy) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &input.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(n, v);
        }
    }
    let request = Request {
        method: input.method,
        path: input.path,
        authority: input.authority,
        headers: &headers,
    };
    let identity = input
        .identity
        .and_then(|(ns, sa)| SpiffeId::new("cluster.local", ns, sa).ok());
    let source = Source {
        identity: identity.as_ref(),
        ip: input.ip.into(),
    };
    let verdict = |action: api::Action| {
        let wire = api::AuthorizationPolicy {
            action: action as i32,
            ..wire.clone()
        };
        let policy = Arc::new(Policy::from_api(&wire).ok()?);
        Some(decide_request(
            std::iter::once(&policy),
            &source,
            input.port,
            &request,
        ))
    };
    let (Some(allow), Some(deny), Some(audit)) = (
        verdict(api::Action::Allow),
        verdict(api::Action::Deny),
        verdict(api::Action::Audit),
    ) else {
        return;
    };
    // A dry-run policy (observer mode) lets everything through and reports what it would
    // deny instead: "let through" below means allowed and not reported.
    let passes = |v: &Verdict| v.is_allowed() && v.would_deny.is_none();
    assert!(
        !(passes(&allow) && passes(&deny)),
        "the same rules as ALLOW and as DENY both let {request:?} from {source:?} through"
    );
    if wire.dry_run {
        assert!(
            allow.is_allowed() && deny.is_allowed(),
            "a dry-run policy denied: {allow:?} {deny:?}"
        );
    }
    assert!(passes(&audit), "an AUDIT policy denied: {audit:?}");
    assert!(
        allow.audited.is_empty() && deny.audited.is_empty(),
        "a verdict of no AUDIT policy lists one"
    );
});
