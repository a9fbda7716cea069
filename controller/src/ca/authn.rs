//! Who is asking: a caller's credential turned into a [`Caller`], before anything is checked
//! about the identity it asks for.
//!
//! - Bootstrap tokens (mesh file): the token is a node's shared secret, so the caller speaks for
//!   that node.
//! - Kubernetes (TokenReview): the token is a projected service-account token. The ztunnel's
//!   service account speaks for the node its pod runs on (the API server binds the token to
//!   the pod and names the node); any other service account speaks only for itself.

use std::fmt;
use std::sync::Arc;

use tokio::sync::watch;
use tonic::metadata::MetadataMap;

use super::token_review::TokenReviewer;
use super::{NamespacedName, Refusal, Refused};
use crate::model::MeshModel;

/// Who a caller proved to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A node's agent (its ztunnel): may obtain the identities that run on the node.
    Node(String),
    /// A workload speaking for itself (a waypoint): may obtain only its own identity.
    ServiceAccount(NamespacedName),
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Node(node) => write!(f, "node {node}"),
            Caller::ServiceAccount(sa) => write!(f, "service account {sa}"),
        }
    }
}

/// How callers prove who they are.
// One value per process, so the size of the unboxed variant costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
pub enum Authenticator {
    /// The nodes' bootstrap tokens from the mesh model.
    BootstrapTokens,
    /// Kubernetes service-account tokens, reviewed by the API server.
    TokenReview {
        reviewer: TokenReviewer,
        /// Whose tokens speak for their node rather than for themselves.
        ztunnel: NamespacedName,
    },
}

impl Authenticator {
    pub(crate) async fn authenticate(
        &self,
        metadata: &MetadataMap,
        models: &watch::Receiver<Arc<MeshModel>>,
    ) -> Result<Caller, Box<Refused>> {
        let token = bearer_token(metadata);
        let claimed = metadata
            .get("ambit-node")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        match self {
            Authenticator::BootstrapTokens => {
                let token = token.ok_or_else(|| Refused::anonymous(Refusal::MissingToken))?;
                let node = models
                    .borrow()
                    .node_by_token(token)
                    .ok_or_else(|| Refused::anonymous(Refusal::UnknownToken))?
                    .name
                    .clone();
                node_as_claimed(node, claimed, |token_node, claimed| Refusal::NodeMismatch {
                    token_node,
                    claimed,
                })
            }
            Authenticator::TokenReview { reviewer, ztunnel } => {
                let token = token.ok_or_else(|| {
                    let audience = reviewer.audience().into();
                    Refused::anonymous(Refusal::MissingServiceAccountToken { audience })
                })?;
                let reviewed = reviewer.review(token).await.map_err(Refused::anonymous)?;
                let Some(account) = NamespacedName::from_service_account_user(&reviewed.user)
                else {
                    let user = reviewed.user;
                    return Err(Refused::anonymous(Refusal::NotAServiceAccount { user }));
                };
                if account != *ztunnel {
                    // A waypoint may send the ambit-node header too (it runs on some node), but
                    // it speaks only for itself, so the header changes nothing.
                    return Ok(Caller::ServiceAccount(account));
                }
                let caller = Caller::ServiceAccount(account.clone());
                let node = reviewed.node.ok_or_else(|| {
                    let service_account = account;
                    Refused::by(caller, Refusal::NoNodeInToken { service_account })
                })?;
                node_as_claimed(node, claimed, |token_node, claimed| {
                    Refusal::TokenNodeMismatch {
                        token_node,
                        claimed,
                    }
                })
            }
        }
    }
}

/// The node a credential proved, if the `ambit-node` header (when sent) names the same one.
fn node_as_claimed(
    node: String,
    claimed: Option<String>,
    mismatch: fn(String, String) -> Refusal,
) -> Result<Caller, Box<Refused>> {
    match claimed {
        Some(claimed) if claimed != node => Err(Refused::by(
            Caller::Node(node.clone()),
            mismatch(node, claimed),
        )),
        _ => Ok(Caller::Node(node)),
    }
}

fn bearer_token(metadata: &MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ")?.trim();
    (!token.is_empty()).then_some(token)
}
