//! Scoped config push: the `discovery.Discovery/Subscribe` server. Each proxy subscribes naming
//! itself, receives its scope (see [`scope`]) in full once, and after that only what changed,
//! each resource with its own version.
//!
//! Resource keys, as the proxies echo them in `known_versions`, are `<type>/<name>`: type is
//! [`ResourceType::key_name`] (`workload`, `service`, `waypoint`, `authorization_policy`,
//! `route`, `traffic_policy`, `egress_scope`); name is the workload's uid, the namespace for an
//! egress scope, or `<namespace>/<name>` for the others.

mod access;
mod desired;
#[cfg(test)]
mod egress_scope_tests;
mod liveness;
mod on_demand;
mod scope;
mod server;
mod session;
mod snapshot;
mod sync;

use std::fmt;
use std::sync::Arc;

use ambit_proto::api::discovery::ResourceType;

pub use access::SubscriberAccess;
pub use desired::Desired;
pub use liveness::{DownNodes, NodeLiveness};
pub use scope::{Scope, desired_for, desired_since, scope_of};
pub use server::{DiscoveryService, publish_snapshots, publish_snapshots_with};
pub use snapshot::{Snapshot, WireResource, version_text};
pub use sync::{SyncEntry, SyncStatus, SyncTable};

/// One resource's identity in a subscription: its type and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    pub kind: ResourceType,
    pub name: Arc<str>,
}

impl ResourceKey {
    pub fn new(kind: ResourceType, name: impl Into<Arc<str>>) -> Self {
        ResourceKey {
            kind,
            name: name.into(),
        }
    }

    /// Reads a `known_versions` key; `None` for a type this controller does not know.
    pub fn parse(key: &str) -> Option<Self> {
        let (kind, name) = key.split_once('/')?;
        let kind = ResourceType::from_key_name(kind)?;
        (!name.is_empty()).then(|| ResourceKey::new(kind, name))
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.key_name(), self.name)
    }
}
