//! The strings that many workloads share, held once: thousands of pods name the same
//! namespace, node, revision and service account, and a copy of each per workload was ~190 B
//! of a workload's ~530 (50k bulk pods, counted by allocation).
//!
//! Only values a cluster has a bounded number of are interned (namespaces, nodes, identities,
//! revisions, canonical names that differ from the pod's, policy and waypoint keys, and what
//! replicas have in common), never one per pod. Still, values go out of use (a revision
//! rolled out, a namespace deleted): a full state starts afresh, and a state fed only deltas
//! rebuilds its interned values from the workloads it holds once they have doubled since the
//! last time. The maps are persistent like the state's, so a clone for the next state costs
//! nothing.

use std::sync::Arc;

use ambit_proto::identity::SpiffeId;

use super::workload::{Shared, Workload};

/// Below this many values the interned set is never rebuilt.
const REBUILD_FLOOR: usize = 1_024;

#[derive(Debug, Default, Clone)]
pub(super) struct Interned {
    strings: imbl::HashMap<Arc<str>, ()>,
    /// By the identity's URI.
    identities: imbl::HashMap<Arc<str>, SpiffeId>,
    lists: imbl::HashMap<Arc<[Arc<str>]>, ()>,
    shared: imbl::HashMap<Arc<Shared>, ()>,
    /// How many values it held when last built from the workloads held.
    settled: usize,
}

impl Interned {
    /// What `workloads` hold, and nothing else.
    pub(super) fn of<'a>(workloads: impl Iterator<Item = &'a Arc<Workload>>) -> Self {
        let mut interned = Interned::default();
        for w in workloads {
            interned.keep(&w.node);
            if !Arc::ptr_eq(&w.canonical_name, &w.name) {
                interned.keep(&w.canonical_name);
            }
            let shared = &w.shared;
            interned.keep(&shared.namespace);
            interned.keep(&shared.canonical_revision);
            shared
                .authorization_policies
                .iter()
                .for_each(|p| interned.keep(p));
            if let Some(waypoint) = &shared.waypoint {
                interned.keep(waypoint);
            }
            if !interned.identities.contains_key(shared.identity.as_str()) {
                let uri: Arc<str> = shared.identity.as_str().into();
                interned.identities.insert(uri, shared.identity.clone());
            }
            interned
                .lists
                .insert(shared.authorization_policies.clone(), ());
            interned.shared.insert(shared.clone(), ());
        }
        interned.settle();
        interned
    }

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
        self.strings.insert(s.clone(), ());
    }

    /// `s`, shared with every other holder of the same text.
    pub(super) fn str(&mut self, s: &str) -> Arc<str> {
        if let Some((held, ())) = self.strings.get_key_value(s) {
            return held.clone();
        }
        let held: Arc<str> = s.into();
        self.strings.insert(held.clone(), ());
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
            return Ok(id.clone());
        }
        let id = SpiffeId::new(trust_domain, namespace, service_account)
            .map_err(|e| format!("its identity is invalid: {e}"))?;
        self.identities.insert(uri.into(), id.clone());
        Ok(id)
    }

    /// A list of keys, shared with every other holder of the same list (the pods a set of
    /// policies selects all carry the same one).
    pub(super) fn list(&mut self, items: &[String]) -> Arc<[Arc<str>]> {
        let list: Arc<[Arc<str>]> = items.iter().map(|s| self.str(s)).collect();
        if let Some((held, ())) = self.lists.get_key_value(&list) {
            return held.clone();
        }
        self.lists.insert(list.clone(), ());
        list
    }

    /// What replicas have in common (built of interned parts), shared.
    pub(super) fn shared(&mut self, shared: Shared) -> Arc<Shared> {
        if let Some((held, ())) = self.shared.get_key_value(&shared) {
            return held.clone();
        }
        let held = Arc::new(shared);
        self.shared.insert(held.clone(), ());
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_one_allocation() {
        let mut interned = Interned::default();
        let (a, b) = (interned.str("demo"), interned.str("demo"));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &interned.str("other")));

        let a = interned.identity("cluster.local", "demo", "sa").unwrap();
        let b = interned.identity("cluster.local", "demo", "sa").unwrap();
        assert_eq!(a.as_str(), "spiffe://cluster.local/ns/demo/sa/sa");
        assert!(std::ptr::eq(a.as_str(), b.as_str()));

        let keys = ["demo/a".to_string(), "demo/b".to_string()];
        let (a, b) = (interned.list(&keys), interned.list(&keys));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(Arc::ptr_eq(&a[0], &interned.str("demo/a")));
    }

    #[test]
    fn an_invalid_identity_is_refused_and_not_kept() {
        let mut interned = Interned::default();
        let err = interned
            .identity("cluster.local", "de/mo", "sa")
            .unwrap_err();
        assert!(err.starts_with("its identity is invalid"), "{err}");
        assert!(interned.identities.is_empty());
    }
}
