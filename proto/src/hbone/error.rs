//! Why a tunnel could not be opened, naming the peer and the cause.

use std::net::SocketAddr;
use std::sync::Arc;

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
    #[error("no certificate for source identity {identity}: {source}")]
    SourceCertificate {
        identity: SpiffeId,
        source: IdentityError,
    },
    #[error("TLS with HBONE endpoint {addr} (expected identity {expected}) failed: {reason}")]
    Tls {
        addr: SocketAddr,
        expected: SpiffeId,
        reason: String,
    },
    #[error("HTTP/2 with HBONE endpoint {addr} failed: {reason}")]
    Http2 { addr: SocketAddr, reason: String },
    #[error("HBONE endpoint {addr} refused the tunnel to {authority} with {status}: {reason}")]
    Refused {
        addr: SocketAddr,
        authority: SocketAddr,
        status: http::StatusCode,
        reason: String,
    },
    #[error("HBONE endpoint {addr} did not answer the tunnel request to {authority} in time")]
    ResponseTimeout {
        addr: SocketAddr,
        authority: SocketAddr,
    },
}

/// Turns a TLS or HTTP/2 failure into a sentence: our own identity checks travel inside rustls
/// errors, and the peer's refusal of our certificate arrives as an alert.
pub(crate) fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return describe_tls(tls);
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
    // h2 keeps only the text of an I/O error, so a TLS alert that arrives after the handshake
    // (TLS 1.3 clients learn of a refused certificate only then) is recognised by its text.
    let text = err.to_string();
    match text.split_once("received fatal alert: ") {
        Some((_, alert)) => describe_alert(alert.trim()),
        None => text,
    }
}

fn describe_alert(alert: &str) -> String {
    match alert {
        "NoApplicationProtocol" => {
            "the peer does not speak HTTP/2 (ALPN h2 refused): is this an HBONE port?".into()
        }
        _ => format!(
            "the peer refused our certificate (TLS alert {alert}): it does not trust our root, our certificate expired, or our identity is outside its trust domain"
        ),
    }
}

fn describe_tls(err: &rustls::Error) -> String {
    use rustls::{CertificateError as C, Error as E};
    match err {
        E::InvalidCertificate(C::Other(other)) => {
            let inner: Arc<dyn std::error::Error + Send + Sync> = other.0.clone();
            match inner.downcast_ref::<IdentityError>() {
                Some(id) => id.to_string(),
                None => inner.to_string(),
            }
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the peer's certificate has expired".into()
        }
        E::InvalidCertificate(C::UnknownIssuer) => {
            "the peer's certificate is not signed by the mesh root (unknown issuer): the peer belongs to another mesh, or the roots differ".into()
        }
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "the peer's certificate is not valid yet (clock skew?)".into()
        }
        E::InvalidCertificate(C::BadSignature) => {
            "the peer's certificate does not verify against the mesh root (bad signature): it comes from another root with the same name".into()
        }
        E::AlertReceived(alert) => describe_alert(&format!("{alert:?}")),
        other => other.to_string(),
    }
}
