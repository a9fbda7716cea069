//! The mesh certificate authority: a root key that signs short-lived workload certificates.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;

use super::cert::parse_pem_chain;
use super::{IdentityError, SpiffeId, TrustBundle};

/// How long a signed certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// Valid from a minute ago (peers' clocks drift) until `ttl` from now.
    pub fn for_ttl(ttl: Duration) -> Self {
        let now = SystemTime::now();
        Validity {
            not_before: now - Duration::from_secs(60),
            not_after: now + ttl,
        }
    }
}

/// Signs workload certificates for one trust domain. Whether a caller may hold the identity it
/// asks for is the caller's business (the controller's CA service checks tokens); this type
/// only makes sure the certificate says exactly that identity and nothing else.
pub struct CertificateAuthority {
    trust_domain: String,
    root_pem: String,
    root_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl CertificateAuthority {
    /// A new self-signed root, valid for ten years.
    pub fn generate(trust_domain: &str) -> Result<Self, IdentityError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(IdentityError::KeyGeneration)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, "Ambit mesh root");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + Duration::from_secs(10 * 365 * 24 * 3600)).into();
        params.serial_number = Some(random_serial()?);
        let cert = params
            .self_signed(&key)
            .map_err(|e| IdentityError::CaRoot {
                reason: e.to_string(),
            })?;
        Self::from_pem(trust_domain, &cert.pem(), &key.serialize_pem())
    }

    /// A root given as PEM, e.g. one shared with another mesh so both trust each other.
    pub fn from_pem(
        trust_domain: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Self, IdentityError> {
        let root_der = parse_pem_chain(cert_pem, "the CA root certificate")?
            .into_iter()
            .next()
            .expect("parse_pem_chain returns at least one certificate");
        let key = KeyPair::from_pem(key_pem).map_err(|e| IdentityError::CaRoot {
            reason: format!("the root key is not a PEM private key: {e}"),
        })?;
        let issuer =
            Issuer::from_ca_cert_der(&root_der, key).map_err(|e| IdentityError::CaRoot {
                reason: format!("the root certificate cannot be used to sign: {e}"),
            })?;
        Ok(CertificateAuthority {
            trust_domain: trust_domain.into(),
            root_pem: cert_pem.into(),
            root_der,
            issuer,
        })
    }

    /// Loads the root from `cert_path` and `key_path`, or generates one and writes both (the key
    /// with mode 0600) when neither exists, so a restart keeps the mesh's trust.
    pub fn load_or_generate(
        trust_domain: &str,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<Self, IdentityError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| IdentityError::Read {
                path: path.into(),
                source,
            })
        };
        if cert_path.exists() || key_path.exists() {
            return Self::from_pem(trust_domain, &read(cert_path)?, &read(key_path)?);
        }
        let ca = Self::generate(trust_domain)?;
        let write = |path: &Path, contents: &str, mode: u32| {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|source| IdentityError::Write {
                    path: dir.into(),
                    source,
                })?;
            }
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(path)
                .and_then(|mut f| f.write_all(contents.as_bytes()))
                .map_err(|source| IdentityError::Write {
                    path: path.into(),
                    source,
                })
        };
        write(key_path, &ca.root_key_pem(), 0o600)?;
        write(cert_path, &ca.root_pem, 0o644)?;
        Ok(ca)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The root's private key as PKCS#8 PEM, for saving it or sharing it with another mesh.
    pub fn root_key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    pub fn trust_bundle(&self) -> TrustBundle {
        TrustBundle::new(&self.trust_domain, vec![self.root_der.clone()])
            .expect("the CA's own root is a valid trust anchor")
    }

    /// Signs `csr_pem` into a certificate for `identity`. Returns the chain as PEM, leaf first
    /// and the root last (as Istio's CA does, so clients can learn the root).
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        validity: Validity,
    ) -> Result<Vec<String>, IdentityError> {
        if identity.trust_domain() != self.trust_domain {
            return Err(IdentityError::ForeignTrustDomain {
                identity: identity.clone(),
                ca_domain: self.trust_domain.clone(),
            });
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|source| IdentityError::CsrInvalid { source })?;
        let requested: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(uri) => uri.as_str().to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        if requested.iter().any(|r| *r != identity.to_string()) {
            return Err(IdentityError::CsrIdentityMismatch {
                identity: identity.clone(),
                requested,
            });
        }
        let signing_error = |source| IdentityError::Signing {
            identity: identity.clone(),
            source,
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            identity.to_string().try_into().map_err(signing_error)?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = validity.not_before.into();
        params.not_after = validity.not_after.into();
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(signing_error)?;
        Ok(vec![cert.pem(), self.root_pem.clone()])
    }
}

fn random_serial() -> Result<SerialNumber, IdentityError> {
    let mut bytes = [0u8; 16];
    super::tls::provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| IdentityError::CaRoot {
            reason: "the system random number generator failed".into(),
        })?;
    // A positive DER integer: clear the top bit.
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}
