//! What every proxy reads before it can reach the controller: the mesh root it trusts
//! (`--root-cert`) and the identity the controller must prove (`--controller-identity`, else
//! the trust domain's default).

use std::path::{Path, PathBuf};

use ambit_proto::control;
use ambit_proto::identity::{IdentityError, SpiffeId, TrustBundle};

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("could not read the mesh root certificate {} (--root-cert): {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the mesh root certificate {} (--root-cert) is not usable: {source}", path.display())]
    Load {
        path: PathBuf,
        source: IdentityError,
    },
    #[error(
        "the trust domain {trust_domain:?} makes no controller identity (--trust-domain): {source}"
    )]
    ControllerIdentity {
        trust_domain: String,
        source: IdentityError,
    },
}

/// The mesh's trust, as a proxy starts with it.
pub struct Trust {
    /// The root certificate(s) as read (a local CA signs with them).
    pub root_pem: String,
    pub bundle: TrustBundle,
    /// Pinned on the link to the controller.
    pub controller: SpiffeId,
}

impl Trust {
    pub fn load(
        root_cert: &Path,
        trust_domain: &str,
        controller: Option<&SpiffeId>,
    ) -> Result<Trust, TrustError> {
        let root_pem = std::fs::read_to_string(root_cert).map_err(|source| TrustError::Read {
            path: root_cert.to_path_buf(),
            source,
        })?;
        let bundle =
            TrustBundle::from_pem(trust_domain, &root_pem).map_err(|source| TrustError::Load {
                path: root_cert.to_path_buf(),
                source,
            })?;
        let controller = match controller {
            Some(id) => id.clone(),
            None => control::default_controller_identity(trust_domain).map_err(|source| {
                TrustError::ControllerIdentity {
                    trust_domain: trust_domain.to_string(),
                    source,
                }
            })?,
        };
        Ok(Trust {
            root_pem,
            bundle,
            controller,
        })
    }
}
