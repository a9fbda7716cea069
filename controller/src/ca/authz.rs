//! Which identities a [`Caller`] may hold.
//!
//! A node may hold the identities that run on it: the service accounts of its meshed pods and
//! of the waypoints placed there. A compromised node can thus impersonate only what already
//! runs on it, as with Istio's node-scoped ztunnel certificates. A service account speaking for
//! itself may hold its own identity, and only if a waypoint of the mesh runs as it: ordinary
//! pods get theirs through their node's ztunnel, so a pod's token alone (which every pod has)
//! buys nothing.

use ambit_proto::identity::SpiffeId;

use super::{Caller, NamespacedName, Refusal};
use crate::model::MeshModel;

pub(super) fn authorize(
    model: &MeshModel,
    caller: &Caller,
    identity: &SpiffeId,
) -> Result<(), Refusal> {
    if identity.trust_domain() != model.trust_domain() {
        return Err(Refusal::ForeignTrustDomain {
            identity: identity.clone(),
            trust_domain: model.trust_domain().into(),
        });
    }
    match caller {
        Caller::Node(node) => authorize_node(model, node, identity),
        Caller::ServiceAccount(account) => authorize_self(model, account, identity),
    }
}

/// May `node` hold `identity`? Only when a meshed pod or a waypoint on it runs as that identity.
fn authorize_node(model: &MeshModel, node: &str, identity: &SpiffeId) -> Result<(), Refusal> {
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

fn authorize_self(
    model: &MeshModel,
    account: &NamespacedName,
    identity: &SpiffeId,
) -> Result<(), Refusal> {
    if identity.namespace() != account.namespace || identity.service_account() != account.name {
        return Err(Refusal::NotOwnIdentity {
            service_account: account.clone(),
            identity: identity.clone(),
        });
    }
    let waypoint = model
        .waypoints()
        .any(|wp| wp.namespace == account.namespace && wp.service_account == account.name);
    if waypoint {
        Ok(())
    } else {
        Err(Refusal::NotAWaypoint {
            service_account: account.clone(),
        })
    }
}
