//! `security.CertificateService`: signs workload certificates for proxies.
//!
//! Each request is answered in three steps, one module each:
//! - `authn`: who is asking, from the caller's token ([`Authenticator`]: a node's bootstrap token
//!   from the mesh file, or a Kubernetes service-account token checked with a TokenReview by
//!   `token_review`), giving a [`Caller`];
//! - `authz`: whether that caller may hold the identity asked for;
//! - signing the CSR with the root, which comes from files or, in Kubernetes, from a Secret
//!   (`root_secret`).
//!
//! Every refusal (`refusal`) is logged with the peer, the check that refused and what would fix
//! it, counted by that check, and answered with a gRPC code saying whose fault it is.

mod authn;
mod authz;
mod names;
mod refusal;
pub mod root_configmap;
pub mod root_secret;
mod token_review;

use std::sync::Arc;
use std::time::Duration;

use ambit_proto::api::security::certificate_service_server::{
    CertificateService, CertificateServiceServer,
};
use ambit_proto::api::security::{CreateCertificateRequest, CreateCertificateResponse};
use ambit_proto::identity::{CertificateAuthority, IdentityError, SpiffeId, Validity};
use tokio::sync::watch;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::model::MeshModel;

pub use authn::{Authenticator, Caller};
pub use names::{NamespacedName, NamespacedNameError};
pub use refusal::Refusal;
pub use token_review::{DEFAULT_CACHE_FOR, DEFAULT_REVIEW_TIMEOUT, NODE_NAME_EXTRA, TokenReviewer};

/// The CA service. Reads the current model for every request, so a pod moved by a reload is
/// authorized on its new node at once.
pub struct CaService {
    ca: Arc<CertificateAuthority>,
    models: watch::Receiver<Arc<MeshModel>>,
    ttl: Duration,
    /// Shared with discovery, which authenticates subscriptions the same way.
    authenticator: Arc<Authenticator>,
    /// The identity the controller presents to proxies: whoever held it would receive every
    /// proxy's token, so it is never issued.
    controller: Option<SpiffeId>,
}

impl CaService {
    /// Certificates last `ttl`, or less when the caller asks for less. Callers authenticate
    /// with their node's bootstrap token unless [`CaService::authenticate_with`] says otherwise.
    pub fn new(
        ca: Arc<CertificateAuthority>,
        models: watch::Receiver<Arc<MeshModel>>,
        ttl: Duration,
    ) -> Self {
        CaService {
            ca,
            models,
            ttl,
            authenticator: Arc::new(Authenticator::BootstrapTokens),
            controller: None,
        }
    }

    pub fn authenticate_with(mut self, authenticator: impl Into<Arc<Authenticator>>) -> Self {
        self.authenticator = authenticator.into();
        self
    }

    /// Never issue `identity`, the one the controller serves as.
    pub fn serving_as(mut self, identity: SpiffeId) -> Self {
        self.controller = Some(identity);
        self
    }

    pub fn into_server(self) -> CertificateServiceServer<Self> {
        CertificateServiceServer::new(self)
    }

    async fn issue(
        &self,
        metadata: &MetadataMap,
        request: &CreateCertificateRequest,
    ) -> Result<Issued, Box<Refused>> {
        let caller = self
            .authenticator
            .authenticate(metadata, &self.models)
            .await?;
        let fail = |refusal: Refusal| Refused::by(caller.clone(), refusal);
        let identity: SpiffeId = request.identity.parse().map_err(|source| {
            fail(Refusal::BadIdentity {
                identity: request.identity.clone(),
                source,
            })
        })?;
        if self.controller.as_ref() == Some(&identity) {
            return Err(fail(Refusal::ControllerIdentity { identity }));
        }
        // Read after authenticating: a review may have taken a while, and the pod may have moved.
        let model = self.models.borrow().clone();
        authz::authorize(&model, &caller, &identity).map_err(fail)?;
        let ttl = match request.validity_seconds {
            0 => self.ttl,
            asked => self.ttl.min(Duration::from_secs(asked)),
        };
        let chain = self
            .ca
            .sign_csr(&request.csr, &identity, Validity::for_ttl(ttl))
            .map_err(|source| {
                let identity = identity.clone();
                fail(match source {
                    IdentityError::CsrInvalid { .. }
                    | IdentityError::CsrIdentityMismatch { .. } => {
                        Refusal::BadCsr { identity, source }
                    }
                    source => Refusal::Signing { identity, source },
                })
            })?;
        Ok(Issued {
            caller,
            identity,
            chain,
        })
    }
}

struct Issued {
    caller: Caller,
    identity: SpiffeId,
    chain: Vec<String>,
}

pub(crate) struct Refused {
    /// Who the caller proved to be, if it got that far.
    pub(crate) caller: Option<Caller>,
    pub(crate) refusal: Refusal,
}

impl Refused {
    /// Refused before the caller proved who it is.
    fn anonymous(refusal: Refusal) -> Box<Refused> {
        Box::new(Refused {
            caller: None,
            refusal,
        })
    }

    fn by(caller: Caller, refusal: Refusal) -> Box<Refused> {
        Box::new(Refused {
            caller: Some(caller),
            refusal,
        })
    }
}

#[tonic::async_trait]
impl CertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<CreateCertificateRequest>,
    ) -> Result<Response<CreateCertificateResponse>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown peer".to_string(), |p| p.to_string());
        match self.issue(request.metadata(), request.get_ref()).await {
            Ok(Issued {
                caller,
                identity,
                chain: cert_chain,
            }) => {
                metrics::counter!("ambit_controller_certificates_issued_total").increment(1);
                tracing::info!(%peer, %caller, %identity, "issued a workload certificate");
                Ok(Response::new(CreateCertificateResponse { cert_chain }))
            }
            Err(refused) => {
                let Refused { caller, refusal } = *refused;
                metrics::counter!("ambit_controller_certificate_refusals_total", "reason" => refusal.reason())
                    .increment(1);
                let caller = caller.map_or_else(|| "unauthenticated".into(), |c| c.to_string());
                tracing::warn!(
                    %peer,
                    %caller,
                    requested = %request.get_ref().identity,
                    check = refusal.reason(),
                    error = %refusal,
                    "refused a certificate request"
                );
                Err(refusal.into())
            }
        }
    }
}
