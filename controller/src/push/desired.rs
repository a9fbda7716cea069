//! What one proxy should hold: its scope resolved to versioned resources.
//!
//! Most of a ztunnel's scope is the same for every node (see [`super::scope`]), so that part is
//! resolved once per snapshot and shared; only the node's own additions are per subscriber. With
//! 50k workloads on 100 nodes this turns 100 copies of a 50k-entry map per change into one.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use super::ResourceKey;
use super::snapshot::{WireResource, entry_hash, version_text};

pub type Resolved = BTreeMap<ResourceKey, Arc<WireResource>>;

/// How a snapshot's shared part differs from the previous snapshot's: computed once per snapshot
/// so that each subscription diffs only these keys, not its whole scope.
#[derive(Clone)]
pub struct SharedChanges {
    pub(super) previous: Arc<Resolved>,
    /// Keys added, changed or removed since `previous`.
    pub(super) keys: Arc<[ResourceKey]>,
}

impl SharedChanges {
    pub(super) fn between(previous: Arc<Resolved>, current: &Resolved) -> Self {
        SharedChanges {
            keys: differing(&previous, current).into(),
            previous,
        }
    }
}

/// The keys that `old` and `new` do not hold alike: in one only, or at another version. One
/// walk of both in key order.
pub(super) fn differing(old: &Resolved, new: &Resolved) -> Vec<ResourceKey> {
    let mut keys = Vec::new();
    let mut old = old.iter().peekable();
    let mut new = new.iter().peekable();
    loop {
        match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some((k, _)), None) => {
                keys.push((*k).clone());
                old.next();
            }
            (None, Some((k, _))) => {
                keys.push((*k).clone());
                new.next();
            }
            (Some((ko, ro)), Some((kn, rn))) => match ko.cmp(kn) {
                std::cmp::Ordering::Less => {
                    keys.push((*ko).clone());
                    old.next();
                }
                std::cmp::Ordering::Greater => {
                    keys.push((*kn).clone());
                    new.next();
                }
                std::cmp::Ordering::Equal => {
                    if ro.version != rn.version {
                        keys.push((*kn).clone());
                    }
                    old.next();
                    new.next();
                }
            },
        }
    }
    keys
}

/// A shared part plus a subscriber's own part; the two never hold the same key.
#[derive(Clone, Default)]
pub struct Desired {
    shared: Arc<Resolved>,
    /// Hash of `shared`, computed once with it.
    shared_hash: u64,
    shared_changes: Option<SharedChanges>,
    own: Resolved,
    /// [`own_hash`] of `own`, kept as entries come and go so an on-demand lookup that adds
    /// a few entries to thousands does not hash them all again.
    own_hash: u64,
    /// The snapshot this was resolved from, and for a ztunnel the node's part as resolved there,
    /// which the next snapshot may reuse (see [`super::scope::desired_since`]).
    pub(super) generation: u64,
    pub(super) node_part: Option<Arc<NodePart>>,
}

/// What a ztunnel's scope holds because of its node (its workloads and the policies selecting
/// them), before the keys also in the shared part are dropped; and whether it gets the shared
/// part at all (only a node with a meshed pod captures traffic).
pub struct NodePart {
    pub(super) own: Resolved,
    pub(super) captures: bool,
}

/// A hash of keys and versions that does not depend on their order (a wrapping sum of each
/// entry's), so adding or removing one entry updates it without visiting the rest.
fn own_hash(resolved: &Resolved) -> u64 {
    resolved
        .iter()
        .fold(0, |sum, (k, r)| sum.wrapping_add(entry_hash(k, r)))
}

impl Desired {
    /// `own` entries whose key is in `shared` are dropped: the shared one is the same resource.
    pub(super) fn new(
        shared: Arc<Resolved>,
        shared_hash: u64,
        shared_changes: Option<SharedChanges>,
        mut own: Resolved,
    ) -> Self {
        own.retain(|k, _| !shared.contains_key(k));
        Desired {
            shared,
            shared_hash,
            shared_changes,
            own_hash: own_hash(&own),
            own,
            generation: 0,
            node_part: None,
        }
    }

    pub(super) fn own(own: Resolved) -> Self {
        Desired::new(Arc::default(), 0, None, own)
    }

    /// The keys that can differ between `synced` and `self`, when `self`'s shared part is known
    /// to follow directly from `synced`'s; `None` when only a full comparison can tell.
    pub(super) fn candidates_since<'a>(
        &'a self,
        synced: &'a Desired,
    ) -> Option<Vec<&'a ResourceKey>> {
        let unchanged = Arc::ptr_eq(&self.shared, &synced.shared);
        let changes = match &self.shared_changes {
            _ if unchanged => &[][..],
            Some(c) if Arc::ptr_eq(&c.previous, &synced.shared) => &c.keys[..],
            _ => return None,
        };
        let mut keys: Vec<&ResourceKey> = changes.iter().collect();
        // A key moving between the shared and the own part shows up in the own parts.
        keys.extend(synced.own.keys());
        keys.extend(self.own.keys());
        keys.sort_unstable();
        keys.dedup();
        Some(keys)
    }

    /// Puts `resource` in the own part (what an on-demand lookup brings), unless the shared
    /// part has the key.
    pub(super) fn insert_own(&mut self, key: ResourceKey, resource: Arc<WireResource>) {
        if self.shared.contains_key(&key) {
            return;
        }
        self.own_hash = self.own_hash.wrapping_add(entry_hash(&key, &resource));
        if let Some(old) = self.own.insert(key.clone(), resource) {
            self.own_hash = self.own_hash.wrapping_sub(entry_hash(&key, &old));
        }
    }

    /// Takes `key` out of the own part (an address released); the shared part is left as is.
    pub(super) fn remove_own(&mut self, key: &ResourceKey) {
        if let Some(old) = self.own.remove(key) {
            self.own_hash = self.own_hash.wrapping_sub(entry_hash(key, &old));
        }
    }

    pub fn get(&self, key: &ResourceKey) -> Option<&Arc<WireResource>> {
        self.shared.get(key).or_else(|| self.own.get(key))
    }

    pub fn contains_key(&self, key: &ResourceKey) -> bool {
        self.shared.contains_key(key) || self.own.contains_key(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ResourceKey, &Arc<WireResource>)> {
        self.shared.iter().chain(self.own.iter())
    }

    pub fn keys(&self) -> impl Iterator<Item = &ResourceKey> {
        self.iter().map(|(k, _)| k)
    }

    pub fn len(&self) -> usize {
        self.shared.len() + self.own.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The version of the whole scope: changes exactly when a key or a version in it does.
    pub fn system_version(&self) -> String {
        let mut h = DefaultHasher::new();
        self.shared_hash.hash(&mut h);
        self.own_hash.hash(&mut h);
        version_text(h.finish())
    }
}
