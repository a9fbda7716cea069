//! Workload identity: SPIFFE IDs, the certificate authority that issues X.509 SVIDs, the rustls
//! configurations that require and verify them, and the manager that renews them before expiry.
//! Shared by ztunnel, the waypoint and the controller.

mod ca;
mod cert;
mod manager;
mod spiffe;
pub(crate) mod tls;

pub use ca::{CertificateAuthority, Validity};
pub use cert::{TrustBundle, WorkloadCertificate, WorkloadKey, leaf_identity, leaf_serial};
pub use manager::{BoxFuture, CertManager, CertificateProvider, LocalCa};
pub use spiffe::{SpiffeId, SpiffeIdError};
pub use tls::{CertResolver, client_config, peer_certificate, peer_identity, server_config};

use std::path::PathBuf;

/// What went wrong with a certificate, a key or a peer's identity. Each variant names the
/// certificate, identity or file concerned.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    InvalidId(#[from] SpiffeIdError),
    #[error("could not generate a key pair: {0}")]
    KeyGeneration(rcgen::Error),
    #[error("could not build a certificate signing request for {identity}: {source}")]
    CsrBuild {
        identity: SpiffeId,
        source: rcgen::Error,
    },
    #[error(
        "the certificate signing request is not a valid PEM/DER PKCS#10 request with a correct signature ({source}); send the PEM produced by the proxy's key"
    )]
    CsrInvalid { source: rcgen::Error },
    #[error(
        "the certificate signing request asks for {requested:?} but the certificate is for {identity}: a CSR may only name the identity it is signed for"
    )]
    CsrIdentityMismatch {
        identity: SpiffeId,
        requested: Vec<String>,
    },
    #[error(
        "the CA for trust domain {ca_domain:?} cannot sign {identity}: its trust domain differs"
    )]
    ForeignTrustDomain {
        identity: SpiffeId,
        ca_domain: String,
    },
    #[error("could not sign the certificate for {identity}: {source}")]
    Signing {
        identity: SpiffeId,
        source: rcgen::Error,
    },
    #[error("the CA root certificate or key is not usable: {reason}")]
    CaRoot { reason: String },
    #[error("could not read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("could not write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} holds no PEM certificate")]
    NoCertificate { what: String },
    #[error("{what} is not a parsable X.509 certificate: {reason}")]
    CertificateParse { what: String, reason: String },
    #[error("certificate has no URI SAN: a mesh certificate carries exactly one spiffe:// URI SAN")]
    NoUriSan,
    #[error(
        "certificate has {count} URI SANs ({uris:?}): a mesh certificate carries exactly one, so which identity it proves would be ambiguous"
    )]
    SeveralUriSans { count: usize, uris: Vec<String> },
    #[error("certificate's URI SAN is not a workload SPIFFE ID: {0}")]
    SanNotSpiffe(SpiffeIdError),
    #[error(
        "peer identity {actual} is not the expected {expected}: the destination is serving another workload's certificate (stale endpoint, or an impostor)"
    )]
    UnexpectedIdentity {
        expected: SpiffeId,
        actual: SpiffeId,
    },
    #[error(
        "peer identity {peer} is outside trust domain {trust_domain:?}: the peer's certificate comes from another mesh"
    )]
    ForeignPeer {
        peer: SpiffeId,
        trust_domain: String,
    },
    #[error("the peer presented no certificate: mesh connections are mutual TLS")]
    NoPeerCertificate,
    #[error("the private key does not match certificate for {identity}")]
    KeyMismatch { identity: SpiffeId },
    #[error("the private key is not usable by TLS: {reason}")]
    UnusableKey { reason: String },
    #[error("TLS configuration for {what} failed: {reason}")]
    TlsConfig { what: String, reason: String },
    #[error("fetching a certificate for {identity} failed: {reason}")]
    Fetch { identity: SpiffeId, reason: String },
}
