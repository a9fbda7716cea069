//! One model in wire form: every resource built and versioned once, shared by all subscriptions.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use ambit_proto::api::discovery::{Resource, ResourceType, resource::Kind};
use prost::Message;

use super::ResourceKey;
use super::desired::{Resolved, SharedChanges, hash_resolved};
use crate::model::{MeshModel, ObjectKey};

/// The resources of one model, each versioned by a hash of its content: an unchanged resource
/// keeps its version across models and across controller restarts, so a reconnecting proxy's
/// `known_versions` match without any shared history.
pub struct Snapshot {
    model: Arc<MeshModel>,
    resources: HashMap<ResourceKey, Arc<Resource>>,
    /// What every node that captures traffic receives (see [`super::scope`]), resolved once per
    /// model rather than once per node.
    pub(super) mesh_wide: Arc<Resolved>,
    pub(super) mesh_wide_hash: u64,
    /// How `mesh_wide` differs from the previous snapshot's.
    pub(super) mesh_wide_changes: Option<SharedChanges>,
}

pub(super) fn workload_key(model: &MeshModel, key: &ObjectKey) -> Option<ResourceKey> {
    let w = model.workload(key)?;
    Some(ResourceKey::new(ResourceType::Workload, w.uid.as_str()))
}

pub(super) fn named_key(kind: ResourceType, key: &ObjectKey) -> ResourceKey {
    ResourceKey::new(kind, key.to_string())
}

impl Snapshot {
    /// `previous` is the snapshot this one replaces, if any: what changed since is computed once
    /// here rather than by every subscription.
    pub fn build(model: Arc<MeshModel>, previous: Option<&Snapshot>) -> Self {
        let mut resources = HashMap::new();
        let mut add = |key: ResourceKey, kind: Kind| {
            let version = content_version(&kind);
            let resource = Resource {
                name: key.name.to_string(),
                version,
                kind: Some(kind),
            };
            resources.insert(key, Arc::new(resource));
        };
        let m = &model;
        for w in m.workloads() {
            add(
                ResourceKey::new(ResourceType::Workload, w.uid.as_str()),
                Kind::Workload(m.workload_proto(w)),
            );
        }
        for s in m.services() {
            let key = ObjectKey::new(&s.service.namespace, &s.service.name);
            add(
                named_key(ResourceType::Service, &key),
                Kind::Service(m.service_proto(s)),
            );
        }
        for wp in m.waypoints() {
            let key = ObjectKey::new(&wp.namespace, &wp.name);
            add(
                named_key(ResourceType::WaypointResource, &key),
                Kind::Waypoint(m.waypoint_proto(wp)),
            );
        }
        for p in m.policies() {
            let key = ObjectKey::new(&p.namespace, &p.name);
            add(
                named_key(ResourceType::AuthorizationPolicy, &key),
                Kind::AuthorizationPolicy(m.policy_proto(p)),
            );
        }
        for r in m.routes() {
            let key = ObjectKey::new(&r.namespace, &r.name);
            add(named_key(ResourceType::Route, &key), Kind::Route(r.clone()));
        }
        let mut snapshot = Snapshot {
            model: model.clone(),
            resources,
            mesh_wide: Arc::default(),
            mesh_wide_hash: 0,
            mesh_wide_changes: None,
        };
        let mesh_wide = snapshot.resolve(&super::scope::mesh_wide(&model));
        snapshot.mesh_wide_hash = hash_resolved(&mesh_wide);
        snapshot.mesh_wide_changes =
            previous.map(|p| SharedChanges::between(p.mesh_wide.clone(), &mesh_wide));
        snapshot.mesh_wide = Arc::new(mesh_wide);
        snapshot
    }

    pub fn model(&self) -> &Arc<MeshModel> {
        &self.model
    }

    pub fn resource(&self, key: &ResourceKey) -> Option<&Arc<Resource>> {
        self.resources.get(key)
    }

    /// The resources behind `keys`, in key order.
    pub fn resolve<'a>(&self, keys: impl IntoIterator<Item = &'a ResourceKey>) -> Resolved {
        keys.into_iter()
            .filter_map(|k| self.resources.get(k).map(|r| (k.clone(), r.clone())))
            .collect()
    }
}

/// A version that changes exactly when the resource's content does. Protobuf encoding is
/// deterministic except for maps, whose order follows the generated `HashMap`; the one map (a
/// policy's selector) is therefore hashed sorted, apart from the rest of the message.
fn content_version(kind: &Kind) -> String {
    let mut h = DefaultHasher::new();
    match kind {
        Kind::AuthorizationPolicy(p) => {
            let mut p = p.clone();
            let selector = p.selector.take();
            p.encode_to_vec().hash(&mut h);
            let labels: BTreeMap<_, _> = selector.iter().flat_map(|s| &s.match_labels).collect();
            labels.hash(&mut h);
        }
        Kind::Workload(w) => w.encode_to_vec().hash(&mut h),
        Kind::Service(s) => s.encode_to_vec().hash(&mut h),
        Kind::Waypoint(w) => w.encode_to_vec().hash(&mut h),
        Kind::Route(r) => r.encode_to_vec().hash(&mut h),
    }
    format!("{:016x}", h.finish())
}
