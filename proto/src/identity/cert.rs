//! A workload's key, certificate chain and the mesh roots it is checked against.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::PublicKeyData;
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::{IdentityError, SpiffeId, tls};

/// The mesh roots: what every peer certificate must chain to, and the trust domain its identity
/// must be in.
#[derive(Clone, Debug)]
pub struct TrustBundle {
    trust_domain: String,
    roots: Arc<RootCertStore>,
    root_ders: Arc<Vec<CertificateDer<'static>>>,
}

impl TrustBundle {
    pub fn new(
        trust_domain: &str,
        root_ders: Vec<CertificateDer<'static>>,
    ) -> Result<Self, IdentityError> {
        let mut roots = RootCertStore::empty();
        for (i, der) in root_ders.iter().enumerate() {
            roots
                .add(der.clone())
                .map_err(|e| IdentityError::CertificateParse {
                    what: format!("root certificate #{i}"),
                    reason: e.to_string(),
                })?;
        }
        if root_ders.is_empty() {
            return Err(IdentityError::NoCertificate {
                what: "the trust bundle".into(),
            });
        }
        Ok(TrustBundle {
            trust_domain: trust_domain.into(),
            roots: Arc::new(roots),
            root_ders: Arc::new(root_ders),
        })
    }

    pub fn from_pem(trust_domain: &str, pem: &str) -> Result<Self, IdentityError> {
        Self::new(trust_domain, parse_pem_chain(pem, "the trust bundle")?)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }

    pub fn root_ders(&self) -> &[CertificateDer<'static>] {
        &self.root_ders
    }
}

/// A freshly generated private key, ECDSA P-256 as Istio uses, and the CSR that asks the CA to
/// certify it. The key never leaves the proxy.
pub struct WorkloadKey {
    key: rcgen::KeyPair,
}

impl WorkloadKey {
    pub fn generate() -> Result<Self, IdentityError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(IdentityError::KeyGeneration)?;
        Ok(WorkloadKey { key })
    }

    pub fn csr_pem(&self, identity: &SpiffeId) -> Result<String, IdentityError> {
        let build = || -> Result<String, rcgen::Error> {
            let mut params = rcgen::CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            params.subject_alt_names = vec![rcgen::SanType::URI(identity.to_string().try_into()?)];
            params.serialize_request(&self.key)?.pem()
        };
        build().map_err(|source| IdentityError::CsrBuild {
            identity: identity.clone(),
            source,
        })
    }
}

/// A workload's X.509 SVID: its chain (leaf first, then any intermediates), its private key and
/// the identity the leaf proves, ready to be handed to rustls.
pub struct WorkloadCertificate {
    identity: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    certified_key: Arc<CertifiedKey>,
    not_before: SystemTime,
    not_after: SystemTime,
    serial: String,
}

impl WorkloadCertificate {
    /// Pairs a key with the chain the CA returned for it. The chain may end with the root; it
    /// is kept out of what we present, since peers hold the root already.
    pub fn new(
        key: WorkloadKey,
        chain_pem: &[String],
        bundle: &TrustBundle,
    ) -> Result<Self, IdentityError> {
        let mut chain = Vec::new();
        for (i, pem) in chain_pem.iter().enumerate() {
            chain.extend(parse_pem_chain(
                pem,
                &format!("certificate #{i} of the chain"),
            )?);
        }
        chain.retain(|c| !bundle.root_ders().contains(c));
        let leaf = chain.first().ok_or_else(|| IdentityError::NoCertificate {
            what: "the certificate chain returned by the CA".into(),
        })?;
        let identity = leaf_identity(leaf)?;
        let parsed = parse(leaf, "the leaf certificate")?;
        if parsed.public_key().raw != key.key.subject_public_key_info() {
            return Err(IdentityError::KeyMismatch { identity });
        }
        let validity = parsed.validity();
        let not_before = unix_to_system(validity.not_before.timestamp());
        let not_after = unix_to_system(validity.not_after.timestamp());
        let serial = parsed.raw_serial_as_string();
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.key.serialize_der()));
        let signing_key = tls::provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| IdentityError::UnusableKey {
                reason: e.to_string(),
            })?;
        let certified_key = Arc::new(CertifiedKey::new(chain.clone(), signing_key));
        Ok(WorkloadCertificate {
            identity,
            chain,
            certified_key,
            not_before,
            not_after,
            serial,
        })
    }

    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified_key
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The leaf's serial number, colon-separated hex, as `openssl x509 -serial` prints it.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// When to fetch the next certificate: half-way through the lifetime, as Istio does, so a
    /// CA outage of up to half a lifetime goes unnoticed.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        self.not_before + lifetime / 2
    }

    pub fn is_expired(&self) -> bool {
        SystemTime::now() >= self.not_after
    }
}

/// The identity a leaf certificate proves. Exactly one URI SAN, and it must be a well-formed
/// workload SPIFFE ID; anything else (none, several, another scheme, embedded NUL) is refused.
pub fn leaf_identity(der: &CertificateDer<'_>) -> Result<SpiffeId, IdentityError> {
    let cert = parse(der, "the peer's leaf certificate")?;
    let uris: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(uri.to_string()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => {
            return Err(IdentityError::CertificateParse {
                what: "the subject alternative names".into(),
                reason: e.to_string(),
            });
        }
    };
    match uris.as_slice() {
        [] => Err(IdentityError::NoUriSan),
        [uri] => uri.parse().map_err(IdentityError::SanNotSpiffe),
        _ => Err(IdentityError::SeveralUriSans {
            count: uris.len(),
            uris,
        }),
    }
}

/// A certificate's serial number as colon-separated hex, for logs and config dumps.
pub fn leaf_serial(der: &CertificateDer<'_>) -> Result<String, IdentityError> {
    Ok(parse(der, "the peer's leaf certificate")?.raw_serial_as_string())
}

fn parse<'a>(
    der: &'a CertificateDer<'_>,
    what: &str,
) -> Result<X509Certificate<'a>, IdentityError> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|e| IdentityError::CertificateParse {
            what: what.into(),
            reason: e.to_string(),
        })
}

pub(crate) fn parse_pem_chain(
    pem: &str,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::CertificateParse {
            what: what.into(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(IdentityError::NoCertificate { what: what.into() });
    }
    Ok(certs)
}

fn unix_to_system(secs: i64) -> SystemTime {
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}
