//! Who may subscribe for whose config. A proxy's scope tells which pods run on its node and
//! which policies guard them, so a subscription is authenticated like a certificate request
//! (the same [`Authenticator`]: a node's bootstrap token, or a Kubernetes service-account token)
//! and the caller must speak for the subscriber it names:
//! - a ztunnel subscribing for node N must be node N;
//! - a waypoint subscribing as `<ns>/<name>` must run as that waypoint's service account, or be
//!   the node it is placed on (mesh file: waypoints there use their node's token).

use std::sync::Arc;

use ambit_proto::api::discovery::{ProxyKind, Subscriber};
use tokio::sync::watch;
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::ca::{Authenticator, Caller};
use crate::model::{MeshModel, ObjectKey};

/// The authentication of subscriptions; see the module docs.
pub struct SubscriberAccess {
    authenticator: Arc<Authenticator>,
    models: watch::Receiver<Arc<MeshModel>>,
}

/// Why a subscription was refused or ended.
pub struct Denied {
    pub status: Status,
    /// The credential may be fine, but could not be checked (the API server is unreachable): an
    /// open subscription keeps going on what was proven when it opened.
    pub undecided: bool,
}

impl SubscriberAccess {
    pub fn new(authenticator: Arc<Authenticator>, models: watch::Receiver<Arc<MeshModel>>) -> Self {
        SubscriberAccess {
            authenticator,
            models,
        }
    }

    /// Who the caller is. Done from the request's metadata alone, before the first message is
    /// read, so an anonymous caller cannot make the controller buffer a large request.
    pub async fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Denied> {
        self.authenticator
            .authenticate(metadata, &self.models)
            .await
            .map_err(|refused| {
                let status = Status::from(refused.refusal);
                Denied {
                    undecided: status.code() == tonic::Code::Unavailable,
                    status,
                }
            })
    }

    /// May `caller` receive `subscriber`'s scope, in the current model?
    pub fn authorize(&self, caller: &Caller, subscriber: &Subscriber) -> Result<(), Denied> {
        let model = self.models.borrow().clone();
        if speaks_for(&model, caller, subscriber) {
            Ok(())
        } else {
            Err(Denied {
                status: Status::permission_denied(refusal(caller, subscriber)),
                undecided: false,
            })
        }
    }

    /// Both, again, for an open subscription when the mesh changes: a token removed from the
    /// mesh file, an expired service-account token or a waypoint that moved ends it.
    pub async fn recheck(
        &self,
        metadata: &MetadataMap,
        subscriber: &Subscriber,
    ) -> Result<(), Denied> {
        let caller = self.authenticate(metadata).await?;
        self.authorize(&caller, subscriber)
    }
}

fn speaks_for(model: &MeshModel, caller: &Caller, subscriber: &Subscriber) -> bool {
    match ProxyKind::try_from(subscriber.kind) {
        Ok(ProxyKind::Waypoint) => {
            let key = ObjectKey::new(&subscriber.namespace, &subscriber.name);
            let Some(waypoint) = model.waypoint(&key) else {
                return false;
            };
            match caller {
                Caller::Node(node) => waypoint.node == *node,
                Caller::ServiceAccount(sa) => {
                    sa.namespace == waypoint.namespace && sa.name == waypoint.service_account
                }
            }
        }
        _ => matches!(caller, Caller::Node(node) if *node == subscriber.name),
    }
}

fn refusal(caller: &Caller, subscriber: &Subscriber) -> String {
    match ProxyKind::try_from(subscriber.kind) {
        Ok(ProxyKind::Waypoint) => format!(
            "{caller} may not subscribe as waypoint {}/{}: a waypoint subscribes with its own service account's token (or, from a mesh file, its node's token), and the mesh must declare that waypoint",
            subscriber.namespace, subscriber.name
        ),
        _ => format!(
            "{caller} may not subscribe for node {:?}: a ztunnel subscribes for its own node only, with that node's token (--node must match the token's node)",
            subscriber.name
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::NamespacedName;
    use crate::model::{MeshBuilder, Node, Waypoint};

    fn model() -> MeshModel {
        let mut b = MeshBuilder::new("cluster.local", "Kubernetes");
        for name in ["node-a", "node-b"] {
            b.node(Node {
                name: name.into(),
                bootstrap_token: None,
            });
        }
        b.namespace(crate::model::Namespace {
            name: "demo".into(),
            labels: Default::default(),
            egress_scope: None,
        });
        b.waypoint(Waypoint {
            name: "waypoint".into(),
            namespace: "demo".into(),
            node: "node-b".into(),
            service_account: "waypoint".into(),
            addresses: vec!["10.244.2.9".parse().unwrap()],
        });
        b.build().unwrap()
    }

    fn ztunnel(node: &str) -> Subscriber {
        Subscriber {
            kind: ProxyKind::Ztunnel.into(),
            name: node.into(),
            ..Default::default()
        }
    }

    fn waypoint(ns: &str, name: &str) -> Subscriber {
        Subscriber {
            kind: ProxyKind::Waypoint.into(),
            name: name.into(),
            namespace: ns.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_node_subscribes_for_itself_only() {
        let m = model();
        let a = Caller::Node("node-a".into());
        assert!(speaks_for(&m, &a, &ztunnel("node-a")));
        assert!(!speaks_for(&m, &a, &ztunnel("node-b")));
        let sa = Caller::ServiceAccount(NamespacedName::new("demo", "waypoint"));
        assert!(!speaks_for(&m, &sa, &ztunnel("node-a")));
        assert!(refusal(&a, &ztunnel("node-b")).contains("its own node only"));
    }

    #[test]
    fn a_waypoint_subscribes_as_its_service_account_or_from_its_node() {
        let m = model();
        let wp = waypoint("demo", "waypoint");
        let own = Caller::ServiceAccount(NamespacedName::new("demo", "waypoint"));
        let other = Caller::ServiceAccount(NamespacedName::new("demo", "reviews"));
        assert!(speaks_for(&m, &own, &wp));
        assert!(!speaks_for(&m, &other, &wp));
        assert!(speaks_for(&m, &Caller::Node("node-b".into()), &wp));
        assert!(!speaks_for(&m, &Caller::Node("node-a".into()), &wp));
        assert!(!speaks_for(&m, &own, &waypoint("demo", "undeclared")));
    }
}
