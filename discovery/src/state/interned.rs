//! The strings that many workloads share, held once: thousands of pods name the same
//! namespace, node, revision and service account, and a copy of each per workload was ~190 B
//! of a workload's ~530 (50k bulk pods, counted by allocation).
//!
//! Only values a cluster has a bounded number of are interned (namespaces, nodes, identities,
//! revisions, canonical names that differ from the pod's, policy and waypoint keys, and what
//! replicas on a node have in common), so a state
//! that lives through deltas never gathers one entry per pod that came and went; a full state
//! starts afresh. The maps are persistent like the state's, so a clone for the next state costs
//! nothing.

use std::sync::Arc;

use ambit_proto::identity::SpiffeId;

use super::workload::Shared;

#[derive(Debug, Default, Clone)]
pub(super) struct Interned {
    strings: imbl::HashMap<Arc<str>, ()>,
    /// By the identity's URI.
    identities: imbl::HashMap<Arc<str>, SpiffeId>,
    lists: imbl::HashMap<Arc<[Arc<str>]>, ()>,
    shared: imbl::HashMap<Arc<Shared>, ()>,
}

impl Interned {
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
