//! A snapshot of a model made by [`MeshModel::apply`] from the previous snapshot's model: only
//! the objects the change recorded (and the workloads whose wire form reads a changed policy)
//! are re-resolved, and the part every capturing ztunnel shares is patched rather than
//! resolved again. At 50k workloads that turns a walk of every object of both models into a
//! handful of lookups.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use ambit_proto::api::discovery::{ResourceType, resource::Kind};

use super::super::ResourceKey;
use super::super::desired::{Resolved, SharedChanges};
use super::{
    Changed, MeshWide, Resources, Snapshot, WireResource, entry_hash, named_key,
    nodes_holding_service, same, workload_wire,
};
use crate::model::{Changes, MeshModel, ObjectKey};

/// An object whose place in the shared part may have changed.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Candidate {
    Workload(ObjectKey),
    Service(ObjectKey),
    Waypoint(ObjectKey),
}

impl Snapshot {
    /// `previous` is comparable (same trust domain and cluster id, same nodes down) and
    /// `changes` is how `model` was made from its model.
    pub(super) fn build_incremental(
        model: Arc<MeshModel>,
        previous: &Snapshot,
        changes: &Changes,
    ) -> Snapshot {
        let old = previous.model.as_ref();
        let m = model.as_ref();
        let mut b = Resources {
            previous: Some(&previous.resources),
            resources: previous.resources.clone(),
            changed: Some(Vec::new()),
        };
        let mut touched: HashSet<String> = HashSet::new();
        // Of those, the nodes whose part may hold other keys (see `Changed::reshaped_nodes`).
        let mut reshaped: HashSet<String> = HashSet::new();
        // A workload's wire form lists the policies that select it.
        let policy_namespaces: BTreeSet<&str> = changes
            .policies
            .iter()
            .map(|k| k.namespace.as_str())
            .collect();
        let reselected = reselecting_namespaces(old, m, changes);
        let mut workloads: BTreeSet<ObjectKey> = changes.workloads.clone();
        for ns in &policy_namespaces {
            let reselects = reselected.contains(ns);
            for w in m.workloads_in(ns).chain(old.workloads_in(ns)) {
                touched.insert(w.pod.node.clone());
                if reselects {
                    reshaped.insert(w.pod.node.clone());
                }
                workloads.insert(w.key());
            }
        }
        for key in &workloads {
            let (was, now) = (old.workload(key), m.workload(key));
            if !same(was, now) {
                let nodes = [was, now].into_iter().flatten().map(|w| &w.pod.node);
                touched.extend(nodes.clone().cloned());
                reshaped.extend(nodes.cloned());
            }
            match (was, now) {
                (_, Some(w)) => {
                    let unchanged =
                        same(was, now) && !policy_namespaces.contains(w.pod.namespace.as_str());
                    let key = ResourceKey::new(ResourceType::Workload, w.uid.as_str());
                    b.add(key, unchanged, || {
                        Kind::Workload(workload_wire(m, w, &previous.down_nodes))
                    });
                }
                (Some(w), None) => {
                    b.remove(&ResourceKey::new(ResourceType::Workload, w.uid.as_str()));
                }
                (None, None) => {}
            }
        }
        for key in &changes.services {
            let (was, now) = (old.service(key), m.service(key));
            if !same(was, now) {
                let nodes = nodes_holding_service(old, key);
                let nodes = nodes.into_iter().chain(nodes_holding_service(m, key));
                for node in nodes {
                    touched.insert(node.clone());
                    reshaped.insert(node);
                }
            }
            let rk = named_key(ResourceType::Service, key);
            match now {
                Some(s) => b.add(rk, same(was, now), || Kind::Service(m.service_proto(s))),
                None => b.remove(&rk),
            }
        }
        for key in &changes.policies {
            let (was, now) = (old.policy(key), m.policy(key));
            let rk = named_key(ResourceType::AuthorizationPolicy, key);
            match now {
                Some(p) => b.add(rk, same(was, now), || {
                    Kind::AuthorizationPolicy(m.policy_proto(p))
                }),
                None => b.remove(&rk),
            }
        }
        for key in &changes.routes {
            let (was, now) = (old.route(key), m.route(key));
            let rk = named_key(ResourceType::Route, key);
            match now {
                Some(r) => b.add(rk, same(was, now), || Kind::Route(r.clone())),
                None => b.remove(&rk),
            }
        }
        for key in &changes.traffic_policies {
            let (was, now) = (old.traffic_policy(key), m.traffic_policy(key));
            let rk = named_key(ResourceType::TrafficPolicy, key);
            match now {
                Some(p) => b.add(rk, same(was, now), || Kind::TrafficPolicy(p.clone())),
                None => b.remove(&rk),
            }
        }
        let changed = Changed {
            keys: b.changed.unwrap_or_default(),
            addresses: changed_addresses(old, m, changes),
            reshaped_nodes: reshaped,
        };
        let snapshot = Snapshot {
            model: model.clone(),
            down_nodes: previous.down_nodes.clone(),
            resources: b.resources,
            mesh_wide: OnceLock::new(),
            mesh_wide_users: previous.mesh_wide_users.clone(),
            generation: previous.generation + 1,
            touched_nodes: Some(touched),
            changed: Some(changed),
        };
        if snapshot.mesh_wide_used() {
            let part = match previous.mesh_wide.get() {
                Some(was) => {
                    let candidates = mesh_wide_candidates(old, m, workloads, changes);
                    snapshot.patched_mesh_wide(previous, was, candidates)
                }
                None => MeshWide::resolve(&snapshot, None),
            };
            let _ = snapshot.mesh_wide.set(part);
        }
        snapshot
    }

    /// `was` (the previous snapshot's shared part) brought up to date for the objects that may
    /// have joined, left or changed in it, with how it changed. The map is copied only when
    /// something did.
    fn patched_mesh_wide(
        &self,
        previous: &Snapshot,
        was: &MeshWide,
        candidates: BTreeSet<Candidate>,
    ) -> MeshWide {
        let (old, m) = (previous.model.as_ref(), self.model.as_ref());
        let mut updates: Vec<(ResourceKey, Option<Arc<WireResource>>)> = Vec::new();
        for candidate in candidates {
            let Some(key) = resource_key(old, m, &candidate) else {
                continue;
            };
            let now = in_mesh_wide(m, &candidate)
                .then(|| self.resources.get(&key).cloned())
                .flatten();
            let differs = match (was.resolved.get(&key), &now) {
                (None, None) => false,
                (Some(a), Some(b)) => a.version != b.version,
                _ => true,
            };
            if differs {
                updates.push((key, now));
            }
        }
        let mut keys: Vec<ResourceKey> = updates.iter().map(|(k, _)| k.clone()).collect();
        keys.sort();
        let mut hash = was.hash;
        let mut resolved = was.resolved.clone();
        if !updates.is_empty() {
            let mut shared: Resolved = (*was.resolved).clone();
            for (key, now) in updates {
                if let Some(gone) = shared.remove(&key) {
                    hash = hash.wrapping_sub(entry_hash(&key, &gone));
                }
                if let Some(now) = now {
                    hash = hash.wrapping_add(entry_hash(&key, &now));
                    shared.insert(key, now);
                }
            }
            resolved = Arc::new(shared);
        }
        MeshWide {
            resolved,
            hash,
            changes: Some(SharedChanges {
                previous: was.resolved.clone(),
                keys: keys.into(),
            }),
        }
    }
}

/// The namespaces in which a changed policy may select other pods than before: it came, went or
/// has another selector. (A policy selects pods of its own namespace by their labels only; an
/// edit of its rules, action or mode selects the same ones.)
fn reselecting_namespaces<'a>(
    old: &MeshModel,
    m: &MeshModel,
    changes: &'a Changes,
) -> BTreeSet<&'a str> {
    changes
        .policies
        .iter()
        .filter(|key| match (old.policy(key), m.policy(key)) {
            (Some(was), Some(now)) => was.selector != now.selector,
            _ => true,
        })
        .map(|key| key.namespace.as_str())
        .collect()
}

/// The addresses of the workloads and services `changes` names, in either model: only there
/// can what an address brings (the object holding it, a service's endpoints and waypoint, a
/// workload's waypoint) differ, since a service whose endpoints changed is among the changes.
fn changed_addresses(old: &MeshModel, m: &MeshModel, changes: &Changes) -> HashSet<IpAddr> {
    let mut addresses = HashSet::new();
    for key in &changes.workloads {
        for w in [old.workload(key), m.workload(key)].into_iter().flatten() {
            addresses.extend(w.pod.addresses.iter().copied());
        }
    }
    for key in &changes.services {
        for s in [old.service(key), m.service(key)].into_iter().flatten() {
            addresses.extend(s.service.vips.iter().copied());
        }
    }
    addresses
}

/// What may have joined, left or changed in the shared part: the workloads re-resolved, the
/// changed services and the endpoints they had or have (an endpoint is in it even when not
/// meshed), and the waypoints any of those use or used.
fn mesh_wide_candidates(
    old: &MeshModel,
    m: &MeshModel,
    workloads: BTreeSet<ObjectKey>,
    changes: &Changes,
) -> BTreeSet<Candidate> {
    let mut out = BTreeSet::new();
    let mut waypoints = BTreeSet::new();
    let mut workload_keys = workloads;
    for key in &changes.services {
        for s in [old.service(key), m.service(key)].into_iter().flatten() {
            workload_keys.extend(s.endpoints.iter().cloned());
            waypoints.extend(s.waypoint.clone());
        }
        out.insert(Candidate::Service(key.clone()));
    }
    for key in workload_keys {
        for w in [old.workload(&key), m.workload(&key)].into_iter().flatten() {
            waypoints.extend(w.waypoint.clone());
        }
        out.insert(Candidate::Workload(key));
    }
    out.extend(waypoints.into_iter().map(Candidate::Waypoint));
    out
}

/// The candidate's resource key, from whichever model holds it (a workload's uid follows from
/// the cluster id and its key, the same in both).
fn resource_key(old: &MeshModel, m: &MeshModel, candidate: &Candidate) -> Option<ResourceKey> {
    Some(match candidate {
        Candidate::Workload(key) => {
            let w = m.workload(key).or_else(|| old.workload(key))?;
            ResourceKey::new(ResourceType::Workload, w.uid.as_str())
        }
        Candidate::Service(key) => named_key(ResourceType::Service, key),
        Candidate::Waypoint(key) => named_key(ResourceType::WaypointResource, key),
    })
}

/// Whether `candidate` belongs to the shared part of `m`, by the rule of
/// [`super::super::scope`]'s `mesh_wide`: every service; every workload that is meshed or an
/// endpoint of a service; every waypoint that one of those uses. A `use-waypoint` label names
/// a waypoint of its own namespace, so a waypoint's users are all in its namespace. (The
/// snapshot tests hold this to `mesh_wide` itself.)
fn in_mesh_wide(m: &MeshModel, candidate: &Candidate) -> bool {
    match candidate {
        Candidate::Service(key) => m.service(key).is_some(),
        Candidate::Workload(key) => m
            .workload(key)
            .is_some_and(|w| w.meshed || m.is_endpoint(key)),
        Candidate::Waypoint(key) => {
            let uses = |w: &Option<ObjectKey>| w.as_ref() == Some(key);
            m.services_in(&key.namespace).any(|s| uses(&s.waypoint))
                || m.workloads_in(&key.namespace)
                    .any(|w| uses(&w.waypoint) && (w.meshed || m.is_endpoint(&w.key())))
        }
    }
}

#[cfg(test)]
mod tests;
