//! One model in wire form: every resource built and versioned once, shared by all subscriptions.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use ambit_proto::api::discovery::{Resource, ResourceType, resource::Kind};
use ambit_proto::api::workload::WorkloadStatus;
use bytes::Bytes;
use prost::Message;

use super::ResourceKey;
use super::desired::{Resolved, SharedChanges};
use super::liveness::DownNodes;
use crate::model::{KeyedIter, MeshModel, ObjectKey, Workload};

mod incremental;

/// The resources of a snapshot: persistent, so that the next snapshot starts from a copy of
/// this one in constant time and replaces only what changed.
type ResourceMap = imbl::HashMap<ResourceKey, Arc<WireResource>>;

/// The resources of one model, each versioned by a hash of its content: an unchanged resource
/// keeps its version across models and across controller restarts, so a reconnecting proxy's
/// `known_versions` match without any shared history.
pub struct Snapshot {
    model: Arc<MeshModel>,
    /// Nodes whose ztunnel is gone (see [`super::liveness`]): their meshed workloads go out
    /// unhealthy whatever the model says.
    down_nodes: DownNodes,
    resources: ResourceMap,
    /// What every node that captures traffic receives with `--destinations all` (see
    /// [`super::scope`]), resolved once per model rather than once per node, and only once a
    /// subscription asks for it: with every ztunnel on demand nobody does, and at 1M workloads
    /// it is ~1.8 GiB and a copy of a million entries on every change.
    mesh_wide: OnceLock<MeshWide>,
    /// How many subscriptions use the mesh-wide part, shared by a snapshot and those built
    /// from it: while any does, each new snapshot brings the part up to date as it is built
    /// (by the change, off the subscriptions' workers); while none does, it is not kept.
    mesh_wide_users: Arc<AtomicUsize>,
    /// One more than the previous snapshot's: tells a subscription whether `touched_nodes` is
    /// relative to the snapshot it last saw.
    pub(super) generation: u64,
    /// The nodes whose part of a ztunnel scope (see [`super::scope`]) may differ from the
    /// previous snapshot's: a workload on them was added, removed or changed, a policy or an
    /// egress scope changed in a namespace with a workload on them, a service their part holds
    /// changed ([`nodes_holding_service`]), or the node went down or came back.
    /// `None`: any may (no previous snapshot, or a new trust domain or cluster id).
    pub(super) touched_nodes: Option<HashSet<String>>,
    /// What changed since the previous snapshot, when this one was made from it by a model's
    /// recorded change (see [`Changed`]); `None`: anything may have.
    pub(super) changed: Option<Changed>,
}

/// The part of a snapshot that every ztunnel sent everything shares.
pub(super) struct MeshWide {
    pub(super) resolved: Arc<Resolved>,
    /// A hash of `resolved`'s keys and versions: the sum of each entry's, so that a change
    /// updates it without a walk of the whole part.
    pub(super) hash: u64,
    /// How `resolved` differs from the previous snapshot's; `None` when that one had no
    /// mesh-wide part to compare with (then a subscription compares whole).
    pub(super) changes: Option<SharedChanges>,
}

impl MeshWide {
    /// Resolved from nothing, compared with `previous` when given.
    fn resolve(snapshot: &Snapshot, previous: Option<&MeshWide>) -> MeshWide {
        let resolved = snapshot.resolve(&super::scope::mesh_wide(&snapshot.model));
        let hash = resolved
            .iter()
            .fold(0u64, |sum, (k, r)| sum.wrapping_add(entry_hash(k, r)));
        let changes = previous.map(|p| SharedChanges::between(p.resolved.clone(), &resolved));
        MeshWide {
            resolved: Arc::new(resolved),
            hash,
            changes,
        }
    }
}

/// A subscription's use of the mesh-wide part (see [`Snapshot::use_mesh_wide`]), until dropped.
pub struct MeshWideUser(Arc<AtomicUsize>);

impl Drop for MeshWideUser {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What an incremental snapshot changed, for an on-demand subscription to follow in place: a
/// change touches a handful of resources, while one subscription holds thousands (7,660 at 1M
/// workloads), so resolving and diffing each subscription whole on every change made a change's
/// cost grow with the mesh times the subscriptions.
#[derive(Debug, Default)]
pub(crate) struct Changed {
    /// The resources added, re-versioned or removed (some may have kept their version).
    pub(super) keys: Vec<ResourceKey>,
    /// The addresses what [`super::on_demand::keys_for`] brings may differ at: those the
    /// changed workloads and services had or have.
    pub(super) addresses: HashSet<IpAddr>,
    /// The nodes of `touched_nodes` whose part may hold other keys than before. On the rest
    /// only resources the part holds were re-versioned (a policy's rules edited: it selects the
    /// same pods), so an on-demand session patches those entries rather than resolving the
    /// node's part again, which at 1M workloads took ~23 ms for each of the 50 nodes a
    /// namespace's pods run on.
    pub(super) reshaped_nodes: HashSet<String>,
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
    /// here rather than by every subscription, and every resource whose wire form cannot have
    /// changed is taken over from it rather than built, encoded and hashed again (at 50k
    /// workloads that was most of a change's cost, and a change touches a handful of objects).
    pub fn build(model: Arc<MeshModel>, previous: Option<&Snapshot>) -> Self {
        Self::build_with(model, DownNodes::default(), previous)
    }

    /// [`Self::build`], with the meshed workloads on `down_nodes` unhealthy. A node going down
    /// or coming back re-versions only its own workloads.
    pub fn build_with(
        model: Arc<MeshModel>,
        down_nodes: DownNodes,
        previous: Option<&Snapshot>,
    ) -> Self {
        let reusable = previous.filter(|p| {
            // Every wire form carries the trust domain, and workload uids the cluster id.
            p.model.trust_domain() == model.trust_domain()
                && p.model.cluster_id() == model.cluster_id()
        });
        // A model applied to the previous one says what changed: only that is re-resolved.
        if let Some(p) = reusable
            && p.down_nodes == down_nodes
            && let Some(changes) = model.changes_since(&p.model)
        {
            return Self::build_incremental(model.clone(), p, changes);
        }
        let mut b = Resources {
            previous: reusable.map(|p| &p.resources),
            resources: ResourceMap::new(),
            changed: None,
        };
        let m = &model;
        let old = reusable.map(|p| p.model.keyed());
        let new = m.keyed();
        // A workload's wire form lists the policies that select it.
        let policy_namespaces =
            changed_namespaces(old.as_ref().map(|o| &o.policies), &new.policies);
        let flipped: HashSet<&String> = match reusable {
            Some(p) => p.down_nodes.symmetric_difference(&down_nodes).collect(),
            None => HashSet::new(),
        };
        let mut touched_nodes: HashSet<&String> = flipped.clone();
        for (_, w, was) in paired(old.as_ref().map(|o| &o.workloads), &new.workloads) {
            let kept = same(was, w);
            if !kept {
                touched_nodes.extend([Some(w), was].into_iter().flatten().map(|w| &w.pod.node));
            }
            let unchanged = kept
                && !policy_namespaces.contains(w.pod.namespace.as_str())
                && (flipped.is_empty() || !flipped.contains(&w.pod.node));
            let key = ResourceKey::new(ResourceType::Workload, w.uid.as_str());
            b.add(key, unchanged, || {
                Kind::Workload(workload_wire(m, w, &down_nodes))
            });
        }
        if let (Some(previous), Some(old)) = (reusable, &old) {
            let removed =
                paired(Some(&new.workloads), &old.workloads).filter(|(_, _, now)| now.is_none());
            touched_nodes.extend(removed.map(|(_, w, _)| &w.pod.node));
            for ns in &policy_namespaces {
                let nodes = m.workloads_in(ns).chain(previous.model.workloads_in(ns));
                touched_nodes.extend(nodes.map(|w| &w.pod.node));
            }
            // A node's part carries the egress scopes of its pods' namespaces.
            for ns in changed_egress_scopes(&previous.model, m) {
                let nodes = m.workloads_in(ns).chain(previous.model.workloads_in(ns));
                touched_nodes.extend(nodes.map(|w| &w.pod.node));
            }
        }
        let mut touched_nodes: Option<HashSet<String>> =
            reusable.map(|_| touched_nodes.into_iter().cloned().collect());
        // A service's wire form names its endpoints by uid, which follows from the cluster id
        // and the endpoint's key, both compared already.
        for (object, s, was) in paired(old.as_ref().map(|o| &o.services), &new.services) {
            let key = named_key(ResourceType::Service, object);
            let unchanged = same(was, s);
            if let (Some(touched), Some(p), false) = (&mut touched_nodes, reusable, unchanged) {
                touched.extend(nodes_holding_service(&p.model, object));
                touched.extend(nodes_holding_service(m, object));
            }
            b.add(key, unchanged, || Kind::Service(m.service_proto(s)));
        }
        if let (Some(touched), Some(p), Some(old)) = (&mut touched_nodes, reusable, &old) {
            let removed =
                paired(Some(&new.services), &old.services).filter(|(_, _, n)| n.is_none());
            for (object, _, _) in removed {
                touched.extend(nodes_holding_service(&p.model, object));
            }
        }
        for (key, wp, was) in paired(old.as_ref().map(|o| &o.waypoints), &new.waypoints) {
            let key = named_key(ResourceType::WaypointResource, key);
            b.add(key, same(was, wp), || Kind::Waypoint(m.waypoint_proto(wp)));
        }
        for (key, p, was) in paired(old.as_ref().map(|o| &o.policies), &new.policies) {
            let key = named_key(ResourceType::AuthorizationPolicy, key);
            b.add(key, same(was, p), || {
                Kind::AuthorizationPolicy(m.policy_proto(p))
            });
        }
        for (key, r, was) in paired(old.as_ref().map(|o| &o.routes), &new.routes) {
            let key = named_key(ResourceType::Route, key);
            b.add(key, same(was, r), || Kind::Route(r.clone()));
        }
        let traffic = paired(
            old.as_ref().map(|o| &o.traffic_policies),
            &new.traffic_policies,
        );
        for (key, p, was) in traffic {
            let key = named_key(ResourceType::TrafficPolicy, key);
            b.add(key, same(was, p), || Kind::TrafficPolicy(p.clone()));
        }
        for ns in m.namespaces() {
            if let Some(scope) = &ns.egress_scope {
                let was = reusable.and_then(|p| p.model.egress_scope(&ns.name));
                let key = ResourceKey::new(ResourceType::EgressScope, ns.name.as_str());
                b.add(key, same(was, scope), || {
                    Kind::EgressScope(scope.to_proto(&ns.name))
                });
            }
        }
        let snapshot = Snapshot {
            model: model.clone(),
            down_nodes,
            resources: b.resources,
            mesh_wide: OnceLock::new(),
            mesh_wide_users: previous.map_or_else(Arc::default, |p| p.mesh_wide_users.clone()),
            generation: previous.map_or(0, |p| p.generation + 1),
            touched_nodes,
            changed: None,
        };
        if snapshot.mesh_wide_used() {
            let part = MeshWide::resolve(&snapshot, previous.and_then(|p| p.mesh_wide.get()));
            let _ = snapshot.mesh_wide.set(part);
        }
        snapshot
    }

    /// The part every ztunnel sent everything shares, resolved now if no subscription used it
    /// when this snapshot was built (the first to ask, after none did, waits for that).
    pub(super) fn mesh_wide(&self) -> &MeshWide {
        self.mesh_wide.get_or_init(|| MeshWide::resolve(self, None))
    }

    /// Counts a subscription that uses the mesh-wide part until the guard is dropped: the
    /// snapshots built meanwhile resolve it as they are built.
    pub(super) fn use_mesh_wide(&self) -> MeshWideUser {
        self.mesh_wide_users.fetch_add(1, Ordering::Relaxed);
        MeshWideUser(self.mesh_wide_users.clone())
    }

    fn mesh_wide_used(&self) -> bool {
        self.mesh_wide_users.load(Ordering::Relaxed) > 0
    }

    pub fn model(&self) -> &Arc<MeshModel> {
        &self.model
    }

    pub fn down_nodes(&self) -> &DownNodes {
        &self.down_nodes
    }

    pub fn resource(&self, key: &ResourceKey) -> Option<&Arc<WireResource>> {
        self.resources.get(key)
    }

    /// The resources behind `keys`, in key order.
    pub fn resolve<'a>(&self, keys: impl IntoIterator<Item = &'a ResourceKey>) -> Resolved {
        keys.into_iter()
            .filter_map(|k| self.resources.get(k).map(|r| (k.clone(), r.clone())))
            .collect()
    }
}

/// A resource encoded once per snapshot, then sent as these bytes to every subscriber that
/// needs it. Only the encoded form is kept: at 1M workloads the decoded one beside it was ~1 GiB
/// of the controller's heap, and nothing on the push path reads it.
#[derive(Debug)]
pub struct WireResource {
    /// The content's version (see [`content_version`]); on the wire as 16 hex digits.
    pub version: u64,
    pub encoded: Bytes,
}

impl WireResource {
    fn new(name: String, kind: Kind) -> Self {
        let version = content_version(&kind);
        let resource = Resource {
            name,
            version: version_text(version),
            kind: Some(kind),
        };
        WireResource {
            version,
            encoded: resource.encode_to_vec().into(),
        }
    }

    /// The resource as sent, decoded again (for a what-if evaluation, a bench or a test).
    pub fn decode(&self) -> Resource {
        Resource::decode(self.encoded.clone()).expect("encoded by this process")
    }
}

/// A resource version as it goes on the wire.
pub fn version_text(version: u64) -> String {
    format!("{version:016x}")
}

/// A workload's wire form, unhealthy when it is meshed and its node is down.
fn workload_wire(
    m: &MeshModel,
    w: &Workload,
    down_nodes: &DownNodes,
) -> ambit_proto::api::workload::Workload {
    let mut proto = m.workload_proto(w);
    if w.meshed && !down_nodes.is_empty() && down_nodes.contains(&w.pod.node) {
        proto.status = WorkloadStatus::Unhealthy.into();
    }
    proto
}

/// One entry's share of [`MeshWide::hash`].
pub(super) fn entry_hash(key: &ResourceKey, resource: &WireResource) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    resource.version.hash(&mut h);
    h.finish()
}

/// The resources of a snapshot being built.
struct Resources<'p> {
    /// The previous snapshot's, when its model is comparable with this one.
    previous: Option<&'p ResourceMap>,
    resources: ResourceMap,
    /// The keys built anew or removed, when recorded (an incremental build: a full one would
    /// list every key).
    changed: Option<Vec<ResourceKey>>,
}

impl Resources<'_> {
    /// `unchanged`: the object, and everything else its wire form reads, is the same in the
    /// previous model, so the previous resource is this one.
    fn add(&mut self, key: ResourceKey, unchanged: bool, wire_form: impl FnOnce() -> Kind) {
        if unchanged && let Some(same) = self.previous.and_then(|p| p.get(&key)) {
            self.resources.insert(key, same.clone());
            return;
        }
        if let Some(changed) = &mut self.changed {
            changed.push(key.clone());
        }
        let resource = WireResource::new(key.name.to_string(), wire_form());
        self.resources.insert(key, Arc::new(resource));
    }

    fn remove(&mut self, key: &ResourceKey) {
        if self.resources.remove(key).is_some()
            && let Some(changed) = &mut self.changed
        {
            changed.push(key.clone());
        }
    }
}

/// Whether an object is the same as before: the same reference when the model itself is the
/// previous one (a rebuild for a node going down), which spares comparing 50k workloads field
/// by field.
fn same<'a, T: PartialEq + 'a>(was: Option<&T>, now: impl Into<Option<&'a T>>) -> bool {
    match (was, now.into()) {
        (Some(was), Some(now)) => std::ptr::eq(was, now) || was == now,
        _ => false,
    }
}

/// Each object of `new` with the object under the same key in `old`, if any; both iterate in
/// key order, so this is one walk of each rather than a lookup per object.
fn paired<'a, T>(
    old: Option<&KeyedIter<'a, T>>,
    new: &KeyedIter<'a, T>,
) -> impl Iterator<Item = (&'a ObjectKey, &'a T, Option<&'a T>)> {
    let mut old = old.cloned().into_iter().flatten().peekable();
    new.clone().map(move |(key, object)| {
        while old.next_if(|(k, _)| *k < key).is_some() {}
        let was = old.next_if(|(k, _)| *k == key).map(|(_, o)| o);
        (key, object, was)
    })
}

/// The namespaces in which an object was added, changed or removed between `old` and `new`
/// (all of them when there is no `old`).
fn changed_namespaces<'a, T: PartialEq>(
    old: Option<&KeyedIter<'a, T>>,
    new: &KeyedIter<'a, T>,
) -> HashSet<&'a str> {
    let mut changed: HashSet<&str> = paired(old, new)
        .filter(|(_, object, was)| !same(*was, *object))
        .map(|(key, _, _)| key.namespace.as_str())
        .collect();
    if let Some(old) = old {
        let removed = paired(Some(new), old).filter(|(_, _, now)| now.is_none());
        changed.extend(removed.map(|(key, _, _)| key.namespace.as_str()));
    }
    changed
}

/// The nodes whose part of an on-demand ztunnel's scope holds service `key` of `m` (see
/// [`super::on_demand`]): those of its endpoints, and those running meshed pods of a namespace
/// whose egress scope names it. A change to the service must reach them, as a change to one of
/// their own workloads does.
pub(super) fn nodes_holding_service(m: &MeshModel, key: &ObjectKey) -> HashSet<String> {
    let mut nodes = HashSet::new();
    if let Some(s) = m.service(key) {
        let endpoints = s.endpoints.iter().filter_map(|e| m.workload(e));
        nodes.extend(endpoints.map(|w| w.pod.node.clone()));
    }
    let naming = m.namespaces().filter(|ns| {
        ns.egress_scope.as_ref().is_some_and(|scope| {
            scope
                .named_services()
                .any(|(n, name)| n == key.namespace && name == key.name)
        })
    });
    for ns in naming {
        let meshed = m.workloads_in(&ns.name).filter(|w| w.meshed);
        nodes.extend(meshed.map(|w| w.pod.node.clone()));
    }
    nodes
}

/// The namespaces whose egress scope `new` adds, changes or removes.
fn changed_egress_scopes<'a>(old: &'a MeshModel, new: &'a MeshModel) -> BTreeSet<&'a str> {
    let declared = |m: &'a MeshModel| {
        m.namespaces()
            .filter(|ns| ns.egress_scope.is_some())
            .map(|ns| ns.name.as_str())
    };
    declared(old)
        .chain(declared(new))
        .filter(|ns| old.egress_scope(ns) != new.egress_scope(ns))
        .collect()
}

/// A version that changes exactly when the resource's content does. Protobuf encoding is
/// deterministic except for maps, whose order follows the generated `HashMap`; the one map (a
/// policy's selector) is therefore hashed sorted, apart from the rest of the message.
fn content_version(kind: &Kind) -> u64 {
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
        Kind::TrafficPolicy(p) => p.encode_to_vec().hash(&mut h),
        Kind::EgressScope(e) => e.encode_to_vec().hash(&mut h),
    }
    h.finish()
}

#[cfg(test)]
mod tests;
