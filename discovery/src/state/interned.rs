//! The values that many workloads share, held once: thousands of pods name the same
//! namespace, node, revision and service account, and a copy of each per workload was ~190 B
//! of a workload's ~530 (50k bulk pods, counted by allocation).
//!
//! Only values a cluster has a bounded number of are interned (namespaces, nodes, identities,
//! revisions, canonical names that differ from the pod's, policy and waypoint keys, and what
//! replicas have in common), never one per pod. Still, values go out of use (a revision
//! rolled out, a namespace deleted): a full state starts afresh, and a state fed only deltas
//! rebuilds its interned values from the workloads it holds once they have doubled since the
//! last time.
//!
//! The sets are plain hash sets behind one lock, shared by a state and every state built from
//! it: only an apply reads or writes them (one at a time, never the data path), and a state's
//! clone for the next one must not copy them. A persistent map, as the state's own maps are,
//! cost 150–200 B per value in its sparse trie nodes; with three replicas per app that was more
//! than the workloads themselves (`state_memory` bench, spread shape).

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use ambit_proto::identity::SpiffeId;
use parking_lot::{Mutex, MutexGuard};

use super::workload::{Shared, Workload};

/// Below this many values the interned set is never rebuilt.
const REBUILD_FLOOR: usize = 1_024;

/// A handle on the interned values; clones share them.
#[derive(Debug, Default, Clone)]
pub(super) struct Interned(Arc<Mutex<Values>>);

#[derive(Debug, Default)]
pub(super) struct Values {
    strings: HashSet<Arc<str>>,
    identities: HashSet<ByUri>,
    lists: HashSet<Arc<[Arc<str>]>>,
    shared: HashSet<Arc<Shared>>,
    /// How many values it held when last built from the workloads held.
    settled: usize,
}

/// An identity found by its URI.
#[derive(Debug)]
struct ByUri(SpiffeId);

impl PartialEq for ByUri {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for ByUri {}

impl Hash for ByUri {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.as_str().hash(state)
    }
}

impl Borrow<str> for ByUri {
    fn borrow(&self) -> &str {
        self.0.as_str()
    }
}

impl Interned {
    /// What `workloads` hold, and nothing else, in a set of its own.
    pub(super) fn of<'a>(workloads: impl Iterator<Item = &'a Workload>) -> Self {
        let mut values = Values::default();
        for w in workloads {
            values.keep(&w.node);
            let shared = &w.shared;
            if let Some(canonical) = &shared.canonical_name {
                values.keep(canonical);
            }
            values.keep(&shared.namespace);
            values.keep(&shared.canonical_revision);
            shared
                .authorization_policies
                .iter()
                .for_each(|p| values.keep(p));
            if let Some(waypoint) = &shared.waypoint {
                values.keep(waypoint);
            }
            values.identities.insert(ByUri(shared.identity.clone()));
            values.lists.insert(shared.authorization_policies.clone());
            values.shared.insert(shared.clone());
        }
        values.settle();
        Interned(Arc::new(Mutex::new(values)))
    }

    /// The values, for one apply to intern into.
    pub(super) fn values(&self) -> MutexGuard<'_, Values> {
        self.0.lock()
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.values().len()
    }
}

impl Values {
    /// Takes the values held now as the measure of growth.
    pub(super) fn settle(&mut self) {
        self.settled = self.len();
    }

    /// Whether it has grown enough since it was settled that values no workload holds may
    /// make up much of it.
    pub(super) fn outgrown(&self) -> bool {
        self.len() > 2 * self.settled + REBUILD_FLOOR
    }

    pub(super) fn len(&self) -> usize {
        self.strings.len() + self.identities.len() + self.lists.len() + self.shared.len()
    }

    fn keep(&mut self, s: &Arc<str>) {
        if !self.strings.contains(&**s) {
            self.strings.insert(s.clone());
        }
    }

    /// `s`, shared with every other holder of the same text.
    pub(super) fn str(&mut self, s: &str) -> Arc<str> {
        if let Some(held) = self.strings.get(s) {
            return held.clone();
        }
        let held: Arc<str> = s.into();
        self.strings.insert(held.clone());
        held
    }

    /// The identity of `service_account` in `namespace` of `trust_domain`, shared.
    pub(super) fn identity(
        &mut self,
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, String> {
        let uri = format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}");
        if let Some(id) = self.identities.get(uri.as_str()) {
            return Ok(id.0.clone());
        }
        let id = SpiffeId::new(trust_domain, namespace, service_account)
            .map_err(|e| format!("its identity is invalid: {e}"))?;
        self.identities.insert(ByUri(id.clone()));
        Ok(id)
    }

    /// A list of keys, shared with every other holder of the same list (the pods a set of
    /// policies selects all carry the same one).
    pub(super) fn list(&mut self, items: &[String]) -> Arc<[Arc<str>]> {
        let items: Vec<Arc<str>> = items.iter().map(|s| self.str(s)).collect();
        if let Some(held) = self.lists.get(items.as_slice()) {
            return held.clone();
        }
        let list: Arc<[Arc<str>]> = items.into();
        self.lists.insert(list.clone());
        list
    }

    /// What replicas have in common (built of interned parts), shared.
    pub(super) fn shared(&mut self, shared: Shared) -> Arc<Shared> {
        if let Some(held) = self.shared.get(&shared) {
            return held.clone();
        }
        let held = Arc::new(shared);
        self.shared.insert(held.clone());
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_one_allocation() {
        let interned = Interned::default();
        let mut values = interned.values();
        let (a, b) = (values.str("demo"), values.str("demo"));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &values.str("other")));

        let a = values.identity("cluster.local", "demo", "sa").unwrap();
        let b = values.identity("cluster.local", "demo", "sa").unwrap();
        assert_eq!(a.as_str(), "spiffe://cluster.local/ns/demo/sa/sa");
        assert!(std::ptr::eq(a.as_str(), b.as_str()));

        let keys = ["demo/a".to_string(), "demo/b".to_string()];
        let (a, b) = (values.list(&keys), values.list(&keys));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(Arc::ptr_eq(&a[0], &values.str("demo/a")));
    }

    #[test]
    fn clones_share_the_values() {
        let interned = Interned::default();
        let a = interned.values().str("demo");
        let b = interned.clone().values().str("demo");
        assert!(Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn an_invalid_identity_is_refused_and_not_kept() {
        let interned = Interned::default();
        let mut values = interned.values();
        let err = values.identity("cluster.local", "de/mo", "sa").unwrap_err();
        assert!(err.starts_with("its identity is invalid"), "{err}");
        assert!(values.identities.is_empty());
    }
}
