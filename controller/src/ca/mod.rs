//! `security.CertificateService`: signs workload certificates for proxies.
//!
//! A caller proves which node it speaks for with that node's bootstrap token (`authorization:
//! Bearer <token>`; the `ambit-node` header, when sent, must name the same node). It may then
//! obtain only identities that run on its node: the service accounts of meshed pods and of
//! waypoints placed there. A compromised node can thus impersonate only what already runs on it,
//! as with Istio's node-scoped ztunnel certificates.

use std::sync::Arc;
use std::time::Duration;

use ambit_proto::api::security::certificate_service_server::{
    CertificateService, CertificateServiceServer,
};
use ambit_proto::api::security::{CreateCertificateRequest, CreateCertificateResponse};
use ambit_proto::identity::{
    CertificateAuthority, IdentityError, SpiffeId, SpiffeIdError, Validity,
};
use tokio::sync::watch;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};

use crate::model::MeshModel;

/// Why a certificate was not issued. Each says what would fix it.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("no `authorization: Bearer <token>` metadata: send the node's bootstrap token")]
    MissingToken,
    #[error(
        "the bootstrap token matches no node of the mesh: give the proxy the token of its node (bootstrapToken in the mesh file)"
    )]
    UnknownToken,
    #[error(
        "the bootstrap token is node {token_node}'s but the ambit-node header says {claimed:?}: a proxy must use its own node's token"
    )]
    NodeMismatch { token_node: String, claimed: String },
    #[error("identity {identity:?} is not a workload SPIFFE ID: {source}")]
    BadIdentity {
        identity: String,
        source: SpiffeIdError,
    },
    #[error("identity {identity} is outside this mesh's trust domain {trust_domain:?}")]
    ForeignTrustDomain {
        identity: SpiffeId,
        trust_domain: String,
    },
    #[error(
        "node {node} may not obtain a certificate for {identity}: no meshed pod or waypoint on {node} runs as that identity (check the pod's node, namespace, serviceAccount and its namespace's ambit.io/dataplane-mode label)"
    )]
    NotOnNode { identity: SpiffeId, node: String },
    #[error("the CSR for {identity} was refused: {source}")]
    BadCsr {
        identity: SpiffeId,
        source: IdentityError,
    },
    #[error("signing the certificate for {identity} failed: {source}")]
    Signing {
        identity: SpiffeId,
        source: IdentityError,
    },
}

impl Refusal {
    fn code(&self) -> Code {
        match self {
            Refusal::MissingToken | Refusal::UnknownToken => Code::Unauthenticated,
            Refusal::NodeMismatch { .. }
            | Refusal::ForeignTrustDomain { .. }
            | Refusal::NotOnNode { .. } => Code::PermissionDenied,
            Refusal::BadIdentity { .. } | Refusal::BadCsr { .. } => Code::InvalidArgument,
            Refusal::Signing { .. } => Code::Internal,
        }
    }

    /// Short label for the refusals metric.
    fn reason(&self) -> &'static str {
        match self {
            Refusal::MissingToken => "missing_token",
            Refusal::UnknownToken => "unknown_token",
            Refusal::NodeMismatch { .. } => "node_mismatch",
            Refusal::BadIdentity { .. } => "bad_identity",
            Refusal::ForeignTrustDomain { .. } => "foreign_trust_domain",
            Refusal::NotOnNode { .. } => "not_on_node",
            Refusal::BadCsr { .. } => "bad_csr",
            Refusal::Signing { .. } => "signing",
        }
    }
}

impl From<Refusal> for Status {
    fn from(r: Refusal) -> Status {
        Status::new(r.code(), r.to_string())
    }
}

/// The CA service. Reads the current model for every request, so a pod moved by a reload is
/// authorized on its new node at once.
pub struct CaService {
    ca: Arc<CertificateAuthority>,
    models: watch::Receiver<Arc<MeshModel>>,
    ttl: Duration,
}

impl CaService {
    /// Certificates last `ttl`, or less when the caller asks for less.
    pub fn new(
        ca: Arc<CertificateAuthority>,
        models: watch::Receiver<Arc<MeshModel>>,
        ttl: Duration,
    ) -> Self {
        CaService { ca, models, ttl }
    }

    pub fn into_server(self) -> CertificateServiceServer<Self> {
        CertificateServiceServer::new(self)
    }

    fn issue(
        &self,
        metadata: &MetadataMap,
        request: &CreateCertificateRequest,
    ) -> Result<Issued, Box<Refused>> {
        let unauthenticated = |refusal| {
            Box::new(Refused {
                node: None,
                refusal,
            })
        };
        let token = bearer_token(metadata).ok_or_else(|| unauthenticated(Refusal::MissingToken))?;
        let model = self.models.borrow().clone();
        let node = model
            .node_by_token(token)
            .ok_or_else(|| unauthenticated(Refusal::UnknownToken))?
            .name
            .clone();
        let fail = |refusal: Refusal| {
            Box::new(Refused {
                node: Some(node.clone()),
                refusal,
            })
        };
        if let Some(claimed) = metadata.get("ambit-node") {
            let claimed = String::from_utf8_lossy(claimed.as_bytes()).into_owned();
            if claimed != node {
                return Err(fail(Refusal::NodeMismatch {
                    token_node: node.clone(),
                    claimed,
                }));
            }
        }
        let identity: SpiffeId = request.identity.parse().map_err(|source| {
            fail(Refusal::BadIdentity {
                identity: request.identity.clone(),
                source,
            })
        })?;
        authorize(&model, &node, &identity).map_err(fail)?;
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
            node,
            identity,
            chain,
        })
    }
}

struct Issued {
    node: String,
    identity: SpiffeId,
    chain: Vec<String>,
}

struct Refused {
    /// The node the caller proved to be, if it got that far.
    node: Option<String>,
    refusal: Refusal,
}

fn bearer_token(metadata: &MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ")?.trim();
    (!token.is_empty()).then_some(token)
}

/// May `node` hold `identity`? Only when a meshed pod or a waypoint on it runs as that identity.
fn authorize(model: &MeshModel, node: &str, identity: &SpiffeId) -> Result<(), Refusal> {
    if identity.trust_domain() != model.trust_domain() {
        return Err(Refusal::ForeignTrustDomain {
            identity: identity.clone(),
            trust_domain: model.trust_domain().into(),
        });
    }
    let runs_here =
        |ns: &str, sa: &str| ns == identity.namespace() && sa == identity.service_account();
    let pod = model
        .workloads_on_node(node)
        .any(|w| w.meshed && runs_here(&w.pod.namespace, &w.pod.service_account));
    let waypoint = model
        .waypoints()
        .any(|wp| wp.node == node && runs_here(&wp.namespace, &wp.service_account));
    if pod || waypoint {
        Ok(())
    } else {
        Err(Refusal::NotOnNode {
            identity: identity.clone(),
            node: node.into(),
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
        match self.issue(request.metadata(), request.get_ref()) {
            Ok(Issued {
                node,
                identity,
                chain: cert_chain,
            }) => {
                metrics::counter!("ambit_controller_certificates_issued_total").increment(1);
                tracing::info!(%peer, %node, %identity, "issued a workload certificate");
                Ok(Response::new(CreateCertificateResponse { cert_chain }))
            }
            Err(refused) => {
                let Refused { node, refusal } = *refused;
                metrics::counter!("ambit_controller_certificate_refusals_total", "reason" => refusal.reason())
                    .increment(1);
                let node = node.as_deref().unwrap_or("unauthenticated");
                tracing::warn!(%peer, %node, requested = %request.get_ref().identity, error = %refusal, "refused a certificate request");
                Err(refusal.into())
            }
        }
    }
}
