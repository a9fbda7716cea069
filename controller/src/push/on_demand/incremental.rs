//! Lookups and releases applied to an on-demand subscription's desired state in place. A
//! ztunnel holds thousands of entries at 50k workloads, and a pod's first connection to a new
//! destination waits for its lookup: resolving, hashing and diffing the whole subscription for
//! each one made that wait grow with everything the ztunnel had looked up before. Here a lookup
//! costs what its own addresses bring (a service, its endpoints, a waypoint).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;

use std::sync::Arc;

use ambit_proto::api::discovery::Subscriber;

use super::{Change, Lookups, keys_for, node_part};
use crate::model::MeshModel;
use crate::push::ResourceKey;
use crate::push::desired::{Desired, NodePart, differing};
use crate::push::snapshot::Snapshot;

/// How many held addresses bring each key: a key two of them bring (their waypoint, a workload
/// looked up by its own address and as a service's endpoint) stays until both are released.
/// Counted from the snapshot the desired state was resolved from, so a release takes away
/// exactly what its lookup brought; a new snapshot counts again (see [`super::desired`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Brought(HashMap<ResourceKey, u32>);

impl Brought {
    pub(super) fn count(model: &MeshModel, addresses: impl Iterator<Item = IpAddr>) -> Self {
        let mut brought = Brought::default();
        for ip in addresses {
            for key in keys_for(model, ip).into_iter().flatten() {
                brought.add(key);
            }
        }
        brought
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &ResourceKey> {
        self.0.keys()
    }

    fn contains(&self, key: &ResourceKey) -> bool {
        self.0.contains_key(key)
    }

    /// Counts one more address bringing `key`; true if it is the first.
    fn add(&mut self, key: ResourceKey) -> bool {
        let count = self.0.entry(key).or_default();
        *count += 1;
        *count == 1
    }

    /// Counts one address fewer bringing `key`; true if it was the last.
    fn remove(&mut self, key: ResourceKey) -> bool {
        match self.0.entry(key) {
            Entry::Occupied(mut o) if *o.get() > 1 => {
                *o.get_mut() -= 1;
                false
            }
            Entry::Occupied(o) => {
                o.remove();
                true
            }
            // Not counted: nothing to take away (cannot happen while the counts and the
            // snapshot agree).
            Entry::Vacant(_) => false,
        }
    }
}

/// Applies `change` (one request's releases, then its lookups) to `desired`, which
/// [`super::desired`] resolved from `snapshot` with `brought` counted; returns the keys whose
/// entry came or went, the only ones the session needs to diff.
pub fn apply(
    snapshot: &Snapshot,
    change: &Change,
    brought: &mut Brought,
    desired: &mut Desired,
) -> Vec<ResourceKey> {
    let model = snapshot.model();
    // The node's own part stays whatever its lookups do.
    let part = desired.node_part.clone();
    let in_node_part = |k: &ResourceKey| part.as_ref().is_some_and(|p| p.own.contains_key(k));
    let mut changed = Vec::new();
    for ip in &change.released {
        for key in keys_for(model, *ip).into_iter().flatten() {
            if brought.remove(key.clone()) && !in_node_part(&key) {
                desired.remove_own(&key);
                changed.push(key);
            }
        }
    }
    for ip in &change.added {
        for key in keys_for(model, *ip).into_iter().flatten() {
            if brought.add(key.clone())
                && !in_node_part(&key)
                && let Some(resource) = snapshot.resource(&key)
            {
                desired.insert_own(key.clone(), resource.clone());
                changed.push(key);
            }
        }
    }
    changed
}

/// `part` with the entries among `changed` it holds taken from `snapshot`, for a node whose
/// part holds the same keys as before; `None` if one of them is gone (then the part must be
/// resolved again after all).
fn repatched(
    part: &Arc<NodePart>,
    snapshot: &Snapshot,
    changed: &[ResourceKey],
) -> Option<Arc<NodePart>> {
    let mut updates = Vec::new();
    for key in changed {
        if let Some(was) = part.own.get(key) {
            let now = snapshot.resource(key)?;
            if now.version != was.version {
                updates.push((key, now));
            }
        }
    }
    if updates.is_empty() {
        return Some(part.clone());
    }
    let mut own = part.own.clone();
    for (key, now) in updates {
        own.insert(key.clone(), now.clone());
    }
    Some(Arc::new(NodePart {
        own,
        captures: part.captures,
    }))
}

/// Whether [`update`] can bring `desired` (resolved from the snapshot before `snapshot`) to
/// `snapshot`: only when it was resolved from `previous`, which `snapshot` follows directly
/// saying what changed.
pub fn follows(desired: &Desired, previous: &Snapshot, snapshot: &Snapshot) -> bool {
    desired.generation == previous.generation
        && previous.generation + 1 == snapshot.generation
        && desired.node_part.is_some()
        && snapshot.changed.is_some()
        && snapshot.touched_nodes.is_some()
}

/// Brings `desired`, resolved from `previous` with `brought` counted there, to what
/// [`super::desired`] would resolve from `snapshot`, which [`follows`] it; returns the keys
/// whose entry came, went or may have changed. Looks only at what the change touched: the
/// held addresses it changed, the resources it re-versioned, and the node's part when the
/// change reached the node.
pub fn update(
    previous: &Snapshot,
    snapshot: &Snapshot,
    subscriber: &Subscriber,
    lookups: &Lookups,
    brought: &mut Brought,
    desired: &mut Desired,
) -> Vec<ResourceKey> {
    let changed = snapshot.changed.as_ref().expect("checked by follows");
    let touched = snapshot.touched_nodes.as_ref().expect("checked by follows");
    let old_part = desired.node_part.clone().expect("checked by follows");
    let node = &subscriber.name;
    let part = if !touched.contains(node) {
        old_part.clone()
    } else if changed.reshaped_nodes.contains(node) {
        Arc::new(node_part(snapshot, node))
    } else {
        repatched(&old_part, snapshot, &changed.keys)
            .unwrap_or_else(|| Arc::new(node_part(snapshot, node)))
    };
    // A node's part again is mostly the same resources (a policy edit in one of its pods'
    // namespaces, say): only those it gained, lost or holds at a new version are diffed.
    let mut candidates: Vec<ResourceKey> = Vec::new();
    if !Arc::ptr_eq(&part, &old_part) {
        candidates.extend(differing(&old_part.own, &part.own));
    }
    // What a held address brings may differ only where the change had or has an object.
    let recount = changed.addresses.iter().filter(|ip| lookups.holds(**ip));
    for ip in recount {
        for key in keys_for(previous.model(), *ip).into_iter().flatten() {
            if brought.remove(key.clone()) {
                candidates.push(key);
            }
        }
        for key in keys_for(snapshot.model(), *ip).into_iter().flatten() {
            if brought.add(key.clone()) {
                candidates.push(key);
            }
        }
    }
    candidates.extend(
        changed
            .keys
            .iter()
            .filter(|k| desired.contains_key(k) || part.own.contains_key(k))
            .cloned(),
    );
    candidates.sort_unstable();
    candidates.dedup();
    for key in &candidates {
        let now = match part.own.get(key) {
            Some(r) => Some(r),
            None if brought.contains(key) => snapshot.resource(key),
            None => None,
        };
        match now {
            Some(resource) => desired.insert_own(key.clone(), resource.clone()),
            None => desired.remove_own(key),
        }
    }
    desired.node_part = Some(part);
    desired.generation = snapshot.generation;
    candidates
}
