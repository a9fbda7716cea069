//! Failures carry typed causes, so callers classify them by matching (endpoint health above
//! all), never by their wording.

use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use ambit_proto::hbone::{HboneError, TlsFailure, TunnelHandler, TunnelRequest};
use ambit_proto::identity::{CertManager, CertificateAuthority, LocalCa};
use http::StatusCode;

/// Refuses every tunnel with the status it was given.
struct RefuseWith(StatusCode);

impl TunnelHandler for RefuseWith {
    async fn handle(&self, request: TunnelRequest) {
        request.refuse(self.0, "refused by the test");
    }
}

#[tokio::test]
async fn failures_say_whether_the_endpoint_is_unreachable() {
    let certs = manager(CertificateAuthority::generate(TD).unwrap());
    let client = client(certs.clone());
    let source = id("demo", "client");
    let server_id = id("demo", "server");

    // Nothing listens: unreachable.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let err = client
        .connect(&request(&source, closed_addr, &server_id))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, HboneError::Connect { .. }), "{err:?}");
    assert!(err.endpoint_unreachable());

    // Another workload answers at the address: unreachable (the expected one is not there).
    let echo = serve(&certs, &server_id, Arc::new(Echo::default()), "127.0.0.1:0").await;
    let err = client
        .connect(&request(&source, echo.addr, &id("demo", "reviews")))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            &err,
            HboneError::Tls { cause: TlsFailure::WrongIdentity { actual, .. }, .. } if *actual == server_id
        ),
        "{err:?}"
    );
    assert!(err.endpoint_unreachable());

    // The app behind the endpoint cannot be reached (503): unreachable. Policy (401): not.
    for (status, unreachable) in [
        (StatusCode::SERVICE_UNAVAILABLE, true),
        (StatusCode::UNAUTHORIZED, false),
    ] {
        let server = serve(
            &certs,
            &server_id,
            Arc::new(RefuseWith(status)),
            "127.0.0.1:0",
        )
        .await;
        let err = client
            .connect(&request(&source, server.addr, &server_id))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(&err, HboneError::Refused { status: s, .. } if *s == status),
            "{err:?}"
        );
        assert_eq!(err.endpoint_unreachable(), unreachable, "{err}");
    }
}

#[tokio::test]
async fn a_refused_certificate_is_our_problem_not_the_endpoints() {
    let ours = CertificateAuthority::generate(TD).unwrap();
    let server_certs = manager(ours);
    // Trusts the server's root, but holds a certificate from a root of its own.
    let client_certs = CertManager::new(
        Arc::new(LocalCa {
            ca: Arc::new(CertificateAuthority::generate(TD).unwrap()),
            ttl: Duration::from_secs(3600),
        }),
        server_certs.trust_bundle().clone(),
    );
    let server = serve(
        &server_certs,
        &id("demo", "server"),
        Arc::new(Echo::default()),
        "127.0.0.1:0",
    )
    .await;
    let err = client(client_certs)
        .connect(&request(
            &id("demo", "client"),
            server.addr,
            &id("demo", "server"),
        ))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            &err,
            HboneError::Tls {
                cause: TlsFailure::CertificateRefused { .. }
                    | TlsFailure::ClosedAfterHandshake { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.endpoint_unreachable(), "{err}");
}
