//! Why a certificate was not issued: each refusal says what would fix it, maps to a gRPC code
//! and has a short label for the refusals metric.

use ambit_proto::identity::{IdentityError, SpiffeId, SpiffeIdError};
use tonic::{Code, Status};

use super::NamespacedName;

/// Why a certificate was not issued. Each says what would fix it.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("no `authorization: Bearer <token>` metadata: send the node's bootstrap token")]
    MissingToken,
    #[error(
        "no `authorization: Bearer <token>` metadata: send a projected service-account token with audience {audience:?}"
    )]
    MissingServiceAccountToken { audience: String },
    #[error(
        "the bootstrap token matches no node of the mesh: give the proxy the token of its node (bootstrapToken in the mesh file)"
    )]
    UnknownToken,
    #[error(
        "the bootstrap token is node {token_node}'s but the ambit-node header says {claimed:?}: a proxy must use its own node's token"
    )]
    NodeMismatch { token_node: String, claimed: String },
    #[error(
        "the service-account token is bound to a pod on node {token_node} but the ambit-node header says {claimed:?}: a ztunnel must send its own pod's token and its own node name"
    )]
    TokenNodeMismatch { token_node: String, claimed: String },
    #[error(
        "the Kubernetes API could not review the token (TokenReview): {reason}: check that the API server is reachable and that the controller may create tokenreviews (RBAC: the system:auth-delegator cluster role)"
    )]
    ReviewUnavailable { reason: String },
    #[error(
        "the Kubernetes API did not authenticate the token for audience {audience:?}: {reason}: send a current projected service-account token (serviceAccountToken volume with audience {audience:?}; it expires, and dies with its pod)"
    )]
    NotAuthenticated { audience: String, reason: String },
    #[error(
        "the token is {user:?}'s, not a service account's: certificates go to ztunnels and waypoints, which present their pod's service-account token"
    )]
    NotAServiceAccount { user: String },
    #[error(
        "the ztunnel token of {service_account} names no node (no authentication.kubernetes.io/node-name in the review): mount a pod-bound projected service-account token (Kubernetes 1.30 or later puts the node in it)"
    )]
    NoNodeInToken { service_account: NamespacedName },
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
    #[error(
        "service account {service_account} may obtain only its own identity, not {identity}: a pod's certificate is asked for by its node's ztunnel, with the ztunnel service account's token"
    )]
    NotOwnIdentity {
        service_account: NamespacedName,
        identity: SpiffeId,
    },
    #[error(
        "service account {service_account} runs no waypoint of the mesh, so its own token gets it no certificate: only waypoints ask for themselves (deploy it as a waypoint of namespace {namespace} with service account {name}); a meshed pod gets its certificate through its node's ztunnel",
        namespace = service_account.namespace,
        name = service_account.name
    )]
    NotAWaypoint { service_account: NamespacedName },
    #[error(
        "{identity} is the controller's own identity, which proxies trust with their tokens: no caller may obtain it (rename the pod's service account, or give the controller another --identity)"
    )]
    ControllerIdentity { identity: SpiffeId },
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
            Refusal::MissingToken
            | Refusal::MissingServiceAccountToken { .. }
            | Refusal::UnknownToken
            | Refusal::NotAuthenticated { .. }
            | Refusal::NoNodeInToken { .. } => Code::Unauthenticated,
            Refusal::NodeMismatch { .. }
            | Refusal::TokenNodeMismatch { .. }
            | Refusal::NotAServiceAccount { .. }
            | Refusal::ForeignTrustDomain { .. }
            | Refusal::NotOnNode { .. }
            | Refusal::NotOwnIdentity { .. }
            | Refusal::NotAWaypoint { .. }
            | Refusal::ControllerIdentity { .. } => Code::PermissionDenied,
            Refusal::BadIdentity { .. } | Refusal::BadCsr { .. } => Code::InvalidArgument,
            Refusal::ReviewUnavailable { .. } => Code::Unavailable,
            Refusal::Signing { .. } => Code::Internal,
        }
    }

    /// Short label for the refusals metric, also logged as the check that refused.
    pub(super) fn reason(&self) -> &'static str {
        match self {
            Refusal::MissingToken | Refusal::MissingServiceAccountToken { .. } => "missing_token",
            Refusal::UnknownToken => "unknown_token",
            Refusal::NodeMismatch { .. } | Refusal::TokenNodeMismatch { .. } => "node_mismatch",
            Refusal::ReviewUnavailable { .. } => "token_review_unavailable",
            Refusal::NotAuthenticated { .. } => "token_not_authenticated",
            Refusal::NotAServiceAccount { .. } => "not_a_service_account",
            Refusal::NoNodeInToken { .. } => "no_node_in_token",
            Refusal::BadIdentity { .. } => "bad_identity",
            Refusal::ForeignTrustDomain { .. } => "foreign_trust_domain",
            Refusal::NotOnNode { .. } => "not_on_node",
            Refusal::NotOwnIdentity { .. } => "not_own_identity",
            Refusal::NotAWaypoint { .. } => "not_a_waypoint",
            Refusal::ControllerIdentity { .. } => "controller_identity",
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
