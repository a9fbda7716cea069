//! One model in wire form: every resource built and versioned once, shared by all subscriptions.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use ambit_proto::api::discovery::{Resource, ResourceType, resource::Kind};
use prost::Message;

use super::ResourceKey;
use crate::model::{MeshModel, ObjectKey};

/// The resources of one model, each versioned by a hash of its content: an unchanged resource
/// keeps its version across models and across controller restarts, so a reconnecting proxy's
/// `known_versions` match without any shared history.
pub struct Snapshot {
    model: Arc<MeshModel>,
    resources: HashMap<ResourceKey, Arc<Resource>>,
    /// What every node that captures traffic receives (see [`super::scope`]), computed once per
    /// model rather than once per node.
    pub(super) mesh_wide: Vec<ResourceKey>,
}

pub(super) fn workload_key(model: &MeshModel, key: &ObjectKey) -> Option<ResourceKey> {
    let w = model.workload(key)?;
    Some(ResourceKey::new(ResourceType::Workload, w.uid.as_str()))
}

pub(super) fn named_key(kind: ResourceType, key: &ObjectKey) -> ResourceKey {
    ResourceKey::new(kind, key.to_string())
}

impl Snapshot {
    pub fn build(model: Arc<MeshModel>) -> Self {
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
        let mesh_wide = super::scope::mesh_wide(m);
        Snapshot {
            model,
            resources,
            mesh_wide,
        }
    }

    pub fn model(&self) -> &Arc<MeshModel> {
        &self.model
    }

    pub fn resource(&self, key: &ResourceKey) -> Option<&Arc<Resource>> {
        self.resources.get(key)
    }

    /// The resources behind `keys`, in key order.
    pub fn resolve<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a ResourceKey>,
    ) -> BTreeMap<ResourceKey, Arc<Resource>> {
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

/// The version of a whole scope: a hash of its keys and their versions.
pub(super) fn system_version(scope: &BTreeMap<ResourceKey, Arc<Resource>>) -> String {
    let mut h = DefaultHasher::new();
    for (key, resource) in scope {
        key.hash(&mut h);
        resource.version.hash(&mut h);
    }
    format!("{:016x}", h.finish())
}
