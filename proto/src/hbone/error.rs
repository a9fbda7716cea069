//! Why a tunnel could not be opened, naming the peer and the cause. Causes are typed so callers
//! (endpoint health, metrics, retries) classify a failure by matching, never by its text.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use crate::identity::{IdentityError, SpiffeId};

#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("could not connect to HBONE endpoint {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("timed out connecting to HBONE endpoint {addr}")]
    ConnectTimeout { addr: SocketAddr },
    #[error(
        "HBONE endpoint {addr} did not complete the {stage} handshake within {timeout:?} (is the endpoint overloaded, or not an HBONE port?)"
    )]
    HandshakeTimeout {
        addr: SocketAddr,
        stage: HandshakeStage,
        timeout: Duration,
    },
    #[error("no certificate for source identity {identity}: {source}")]
    SourceCertificate {
        identity: SpiffeId,
        source: IdentityError,
    },
    #[error("TLS with HBONE endpoint {addr} (expected identity {expected}) failed: {cause}")]
    Tls {
        addr: SocketAddr,
        expected: SpiffeId,
        cause: TlsFailure,
    },
    #[error("HTTP/2 with HBONE endpoint {addr} failed: {cause}")]
    Http2 {
        addr: SocketAddr,
        cause: Http2Failure,
    },
    #[error("HBONE endpoint {addr} refused the tunnel to {authority} with {status}: {reason}")]
    Refused {
        addr: SocketAddr,
        authority: SocketAddr,
        status: StatusCode,
        reason: String,
    },
    #[error("HBONE endpoint {addr} did not answer the tunnel request to {authority} in time")]
    ResponseTimeout {
        addr: SocketAddr,
        authority: SocketAddr,
    },
}

/// Which handshake a connection was in when it ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeStage {
    Tls,
    Http2,
}

impl fmt::Display for HandshakeStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HandshakeStage::Tls => "TLS",
            HandshakeStage::Http2 => "HTTP/2",
        })
    }
}

/// Why a TLS handshake (or the first use of a new TLS connection) failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsFailure {
    /// The peer proved another identity than the one expected at its address.
    #[error(
        "peer identity {actual} is not the expected {expected}: the destination is serving another workload's certificate (stale endpoint, or an impostor)"
    )]
    WrongIdentity {
        expected: SpiffeId,
        actual: SpiffeId,
    },
    /// Our other checks of the peer's certificate: SAN shape, trust domain.
    #[error("{0}")]
    PeerIdentity(String),
    #[error("the peer's certificate has expired")]
    PeerExpired,
    #[error("the peer's certificate is not valid yet (clock skew?)")]
    PeerNotYetValid,
    #[error(
        "the peer's certificate is not signed by the mesh root (unknown issuer): the peer belongs to another mesh, or the roots differ"
    )]
    PeerUnknownIssuer,
    #[error(
        "the peer's certificate does not verify against the mesh root (bad signature): it comes from another root with the same name"
    )]
    PeerBadSignature,
    #[error("the peer's certificate was rejected: {0}")]
    PeerCertificate(String),
    /// The peer sent an alert saying it does not accept our certificate.
    #[error(
        "the peer refused our certificate (TLS alert {alert}): it does not trust our root, our certificate expired, or our identity is outside its trust domain"
    )]
    CertificateRefused { alert: String },
    /// A new connection closed right after the handshake, before its first tunnel: TLS 1.3
    /// clients learn that their certificate was refused only then, and the alert can be lost.
    #[error(
        "the peer closed the connection right after the TLS handshake: it most likely refused our certificate (untrusted root, expired, or an identity outside its trust domain) [{detail}]"
    )]
    ClosedAfterHandshake { detail: String },
    #[error("the peer does not speak HTTP/2 (ALPN h2 refused): is this an HBONE port?")]
    NoHttp2,
    /// The connection broke during the handshake (reset, closed).
    #[error("the connection broke during the handshake: {0}")]
    Io(String),
    #[error("{0}")]
    Protocol(String),
    /// Our TLS configuration could not be built: a local problem, not the peer's.
    #[error("could not set up TLS: {0}")]
    LocalConfig(String),
}

/// Why HTTP/2 on an HBONE connection failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Http2Failure {
    #[error("the HTTP/2 handshake failed: {0}")]
    Handshake(String),
    /// The endpoint sent GOAWAY before answering: `ENHANCE_YOUR_CALM` when we are over one of
    /// its connection limits, `NO_ERROR` when it is draining.
    #[error("{}", describe_go_away(*.code))]
    GoAway { code: u32 },
    /// The connection failed while the tunnel was being opened.
    #[error("the connection failed: {0}")]
    Connection(String),
    #[error("could not build the CONNECT request: {0}")]
    Request(String),
}

fn describe_go_away(code: u32) -> String {
    match h2::Reason::from(code) {
        h2::Reason::ENHANCE_YOUR_CALM => "the endpoint closed the connection with GOAWAY ENHANCE_YOUR_CALM: we are over one of its connection limits (per source identity, or per node)".into(),
        h2::Reason::NO_ERROR => "the endpoint closed the connection with GOAWAY: it is draining or closed an idle connection".into(),
        reason => format!("the endpoint closed the connection with GOAWAY {reason:?}"),
    }
}

impl HboneError {
    /// Whether the failure says the endpoint cannot serve tunnels now (down, unreachable,
    /// overloaded, not an HBONE port, or another workload at its address), so another endpoint
    /// should be tried and this one counted unhealthy. False when the endpoint is fine and the
    /// tunnel itself was refused (policy, a bad request) or the problem is ours or mesh-wide
    /// (our certificate, a root mismatch).
    pub fn endpoint_unreachable(&self) -> bool {
        match self {
            HboneError::Connect { .. }
            | HboneError::ConnectTimeout { .. }
            | HboneError::HandshakeTimeout { .. }
            | HboneError::ResponseTimeout { .. } => true,
            HboneError::SourceCertificate { .. } => false,
            HboneError::Tls { cause, .. } => match cause {
                TlsFailure::Io(_) | TlsFailure::Protocol(_) | TlsFailure::NoHttp2 => true,
                TlsFailure::WrongIdentity { .. } => true,
                TlsFailure::PeerIdentity(_) => false,
                TlsFailure::PeerExpired
                | TlsFailure::PeerNotYetValid
                | TlsFailure::PeerUnknownIssuer
                | TlsFailure::PeerBadSignature
                | TlsFailure::PeerCertificate(_)
                | TlsFailure::CertificateRefused { .. }
                | TlsFailure::ClosedAfterHandshake { .. }
                | TlsFailure::LocalConfig(_) => false,
            },
            HboneError::Http2 { cause, .. } => !matches!(cause, Http2Failure::Request(_)),
            HboneError::Refused { status, .. } => *status == StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The same failure for every tunnel that waited on the dial that produced it.
    pub(crate) fn shared_copy(&self) -> HboneError {
        match self {
            HboneError::Connect { addr, source } => HboneError::Connect {
                addr: *addr,
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            HboneError::ConnectTimeout { addr } => HboneError::ConnectTimeout { addr: *addr },
            HboneError::HandshakeTimeout {
                addr,
                stage,
                timeout,
            } => HboneError::HandshakeTimeout {
                addr: *addr,
                stage: *stage,
                timeout: *timeout,
            },
            HboneError::SourceCertificate { identity, source } => HboneError::SourceCertificate {
                identity: identity.clone(),
                source: IdentityError::Fetch {
                    identity: identity.clone(),
                    reason: source.to_string(),
                },
            },
            HboneError::Tls {
                addr,
                expected,
                cause,
            } => HboneError::Tls {
                addr: *addr,
                expected: expected.clone(),
                cause: cause.clone(),
            },
            HboneError::Http2 { addr, cause } => HboneError::Http2 {
                addr: *addr,
                cause: cause.clone(),
            },
            HboneError::Refused {
                addr,
                authority,
                status,
                reason,
            } => HboneError::Refused {
                addr: *addr,
                authority: *authority,
                status: *status,
                reason: reason.clone(),
            },
            HboneError::ResponseTimeout { addr, authority } => HboneError::ResponseTimeout {
                addr: *addr,
                authority: *authority,
            },
        }
    }
}

/// What a TLS or HTTP/2 error means: a TLS failure (ours or the peer's checks, an alert), an
/// HTTP/2 GOAWAY, or something else, described.
#[derive(Debug, Clone)]
pub(crate) enum Cause {
    Tls(TlsFailure),
    GoAway(u32),
    Other(String),
}

impl Cause {
    pub(crate) fn tls_or(self, other: impl FnOnce(String) -> TlsFailure) -> TlsFailure {
        match self {
            Cause::Tls(t) => t,
            Cause::GoAway(code) => other(describe_go_away(code)),
            Cause::Other(s) => other(s),
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Tls(t) => t.fmt(f),
            Cause::GoAway(code) => f.write_str(&describe_go_away(*code)),
            Cause::Other(s) => f.write_str(s),
        }
    }
}

/// Classifies a TLS or HTTP/2 error: our own identity checks travel inside rustls errors, and
/// the peer's refusal of our certificate arrives as an alert.
pub(crate) fn classify(err: &(dyn std::error::Error + 'static)) -> Cause {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Cause::Tls(classify_tls(tls));
        }
        if let Some(h2e) = e.downcast_ref::<h2::Error>()
            && h2e.is_go_away()
            && h2e.is_remote()
            && let Some(reason) = h2e.reason()
        {
            return Cause::GoAway(reason.into());
        }
        // io::Error and h2::Error hide the error they wrap from `source()`.
        cur = if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.get_ref() {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => None,
            }
        } else if let Some(io) = e.downcast_ref::<h2::Error>().and_then(h2::Error::get_io) {
            Some(io as &(dyn std::error::Error + 'static))
        } else {
            e.source()
        };
    }
    // h2 keeps only the text of an I/O error it passes to streams, so a TLS alert that arrives
    // after the handshake (TLS 1.3 clients learn of a refused certificate only then) can only
    // be recognised by rustls' wording. That parsing stays here; callers get a typed cause.
    let text = err.to_string();
    match text.split_once("received fatal alert: ") {
        Some((_, alert)) => Cause::Tls(classify_alert(alert.trim())),
        None => Cause::Other(text),
    }
}

fn classify_alert(alert: &str) -> TlsFailure {
    match alert {
        "NoApplicationProtocol" => TlsFailure::NoHttp2,
        _ => TlsFailure::CertificateRefused {
            alert: alert.to_string(),
        },
    }
}

fn classify_tls(err: &rustls::Error) -> TlsFailure {
    use rustls::{CertificateError as C, Error as E};
    match err {
        E::InvalidCertificate(C::Other(other)) => {
            let inner: Arc<dyn std::error::Error + Send + Sync> = other.0.clone();
            match inner.downcast_ref::<IdentityError>() {
                Some(IdentityError::UnexpectedIdentity { expected, actual }) => {
                    TlsFailure::WrongIdentity {
                        expected: expected.clone(),
                        actual: actual.clone(),
                    }
                }
                Some(id) => TlsFailure::PeerIdentity(id.to_string()),
                None => TlsFailure::PeerCertificate(inner.to_string()),
            }
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => TlsFailure::PeerExpired,
        E::InvalidCertificate(C::UnknownIssuer) => TlsFailure::PeerUnknownIssuer,
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            TlsFailure::PeerNotYetValid
        }
        E::InvalidCertificate(C::BadSignature) => TlsFailure::PeerBadSignature,
        E::InvalidCertificate(other) => TlsFailure::PeerCertificate(format!("{other:?}")),
        E::AlertReceived(alert) => classify_alert(&format!("{alert:?}")),
        E::NoApplicationProtocol => TlsFailure::NoHttp2,
        other => TlsFailure::Protocol(other.to_string()),
    }
}

/// A TLS handshake error: rustls' own errors are classified; a bare I/O error (reset, EOF
/// mid-handshake) means the connection broke.
pub(crate) fn classify_handshake(err: &std::io::Error) -> TlsFailure {
    match classify(err) {
        Cause::Tls(t) => t,
        Cause::GoAway(_) | Cause::Other(_) => TlsFailure::Io(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "10.0.0.1:15008".parse().unwrap()
    }

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", "demo", sa).unwrap()
    }

    fn tls(cause: TlsFailure) -> HboneError {
        HboneError::Tls {
            addr: addr(),
            expected: id("server"),
            cause,
        }
    }

    fn refused(status: StatusCode) -> HboneError {
        HboneError::Refused {
            addr: addr(),
            authority: "10.0.0.1:8080".parse().unwrap(),
            status,
            reason: "r".into(),
        }
    }

    #[test]
    fn endpoint_health_follows_the_typed_cause() {
        let down = [
            HboneError::ConnectTimeout { addr: addr() },
            HboneError::HandshakeTimeout {
                addr: addr(),
                stage: HandshakeStage::Tls,
                timeout: Duration::from_secs(1),
            },
            tls(TlsFailure::Io("reset".into())),
            tls(TlsFailure::WrongIdentity {
                expected: id("server"),
                actual: id("other"),
            }),
            HboneError::Http2 {
                addr: addr(),
                cause: Http2Failure::GoAway { code: 0xb },
            },
            refused(StatusCode::SERVICE_UNAVAILABLE),
        ];
        for e in &down {
            assert!(e.endpoint_unreachable(), "{e}");
            assert_eq!(e.shared_copy().to_string(), e.to_string());
        }
        let up = [
            refused(StatusCode::UNAUTHORIZED),
            refused(StatusCode::BAD_REQUEST),
            tls(TlsFailure::CertificateRefused {
                alert: "UnknownCA".into(),
            }),
            tls(TlsFailure::PeerUnknownIssuer),
            HboneError::SourceCertificate {
                identity: id("client"),
                source: IdentityError::NoUriSan,
            },
        ];
        for e in &up {
            assert!(!e.endpoint_unreachable(), "{e}");
        }
    }

    #[test]
    fn go_away_over_a_limit_says_so() {
        let e = Http2Failure::GoAway {
            code: h2::Reason::ENHANCE_YOUR_CALM.into(),
        };
        assert!(e.to_string().contains("over one of its connection limits"));
    }
}
