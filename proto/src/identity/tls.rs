//! rustls configurations for mesh mTLS, as Istio's ztunnel sets them up so the two interoperate:
//! TLS 1.3 only with AES-GCM suites, ALPN `h2`, no SNI, no session resumption, a client
//! certificate required, and identities checked on the single SPIFFE URI SAN.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    ServerConfig, SignatureScheme,
};
use tokio::sync::watch;

use super::{IdentityError, SpiffeId, TrustBundle, WorkloadCertificate, leaf_identity};

pub(crate) const ALPN_H2: &[u8] = b"h2";

/// The one crypto provider every mesh connection uses: ring, restricted to TLS 1.3 AES-GCM.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut p = rustls::crypto::ring::default_provider();
            p.cipher_suites = vec![
                rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
                rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
            ];
            Arc::new(p)
        })
        .clone()
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    provider().signature_verification_algorithms
}

/// Hands rustls whatever certificate a workload currently holds, so a renewal reaches new
/// handshakes at once while open connections keep the one they started with.
#[derive(Debug)]
pub struct CertResolver {
    current: watch::Receiver<Arc<WorkloadCertificate>>,
}

impl CertResolver {
    pub fn new(current: watch::Receiver<Arc<WorkloadCertificate>>) -> Self {
        CertResolver { current }
    }

    fn key(&self) -> Arc<CertifiedKey> {
        self.current.borrow().certified_key().clone()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }
}

impl rustls::client::ResolvesClientCert for CertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl std::fmt::Debug for WorkloadCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCertificate")
            .field("identity", &self.identity().to_string())
            .field("serial", &self.serial())
            .finish_non_exhaustive()
    }
}

/// The HBONE server side: presents the workload's current certificate and requires a client
/// certificate that chains to the mesh roots with an identity in the mesh's trust domain.
pub fn server_config(
    certs: watch::Receiver<Arc<WorkloadCertificate>>,
    bundle: &TrustBundle,
) -> Result<ServerConfig, IdentityError> {
    let chain = WebPkiClientVerifier::builder_with_provider(bundle.roots().clone(), provider())
        .build()
        .map_err(|e| IdentityError::TlsConfig {
            what: "the client certificate verifier".into(),
            reason: e.to_string(),
        })?;
    let verifier = Arc::new(MeshClientVerifier {
        chain,
        trust_domain: bundle.trust_domain().into(),
    });
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| IdentityError::TlsConfig {
            what: "the HBONE server".into(),
            reason: e.to_string(),
        })?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(CertResolver::new(certs)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// The HBONE client side for one source workload and one expected destination identity.
pub fn client_config(
    certs: watch::Receiver<Arc<WorkloadCertificate>>,
    bundle: &TrustBundle,
    expected: SpiffeId,
) -> Result<ClientConfig, IdentityError> {
    let mut config = client_builder(bundle, expected, "the HBONE client")?
        .with_client_cert_resolver(Arc::new(CertResolver::new(certs)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.enable_sni = false;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// A TLS 1.3 client that accepts only a server chaining to `bundle` whose identity is `expected`;
/// what it presents itself is the caller's choice.
pub(crate) fn client_builder(
    bundle: &TrustBundle,
    expected: SpiffeId,
    what: &str,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, IdentityError> {
    let verifier = Arc::new(MeshServerVerifier {
        bundle: bundle.clone(),
        expected,
    });
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| IdentityError::TlsConfig {
            what: what.into(),
            reason: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier))
}

/// The SPIFFE ID proven by the peer of an established connection.
pub fn peer_identity(conn: &rustls::CommonState) -> Result<SpiffeId, IdentityError> {
    leaf_identity(peer_certificate(conn)?)
}

/// The leaf certificate presented by the peer of an established connection.
pub fn peer_certificate(
    conn: &rustls::CommonState,
) -> Result<&CertificateDer<'static>, IdentityError> {
    conn.peer_certificates()
        .and_then(|c| c.first())
        .ok_or(IdentityError::NoPeerCertificate)
}

/// Wraps an identity failure so rustls carries it (and its explanation) to the caller.
fn reject(err: IdentityError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err))))
}

#[derive(Debug)]
struct MeshClientVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertVerifier for MeshClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.chain
            .verify_client_cert(end_entity, intermediates, now)?;
        let peer = leaf_identity(end_entity).map_err(reject)?;
        if peer.trust_domain() != self.trust_domain {
            return Err(reject(IdentityError::ForeignPeer {
                peer,
                trust_domain: self.trust_domain.clone(),
            }));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// Checks the server's chain against the mesh roots and that its identity is exactly the one
/// the control plane said the destination has. Host names play no part: there is no SNI.
#[derive(Debug)]
struct MeshServerVerifier {
    bundle: TrustBundle,
    expected: SpiffeId,
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            self.bundle.roots(),
            intermediates,
            now,
            algorithms().all,
        )?;
        let actual = leaf_identity(end_entity).map_err(reject)?;
        if actual != self.expected {
            return Err(reject(IdentityError::UnexpectedIdentity {
                expected: self.expected.clone(),
                actual,
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}
