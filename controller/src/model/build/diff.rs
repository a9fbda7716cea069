//! What turns the model of one builder's objects into that of another's, as [`Edit`]s for
//! [`MeshModel::apply`]: a source that gets its objects whole (the mesh file, a Kubernetes
//! relist) still hands the snapshot only what changed.

use std::borrow::Borrow;
use std::collections::BTreeMap;

use super::*;
use crate::model::{Edit, Edited, Named};

impl MeshBuilder {
    /// The edits that make `new`'s model of this builder's; `None` when what `apply` does not
    /// take differs (settings, namespaces, waypoints): `new` is then built whole.
    pub fn edits_to(&self, new: &MeshBuilder) -> Option<Vec<Edit>> {
        if self.trust_domain != new.trust_domain
            || self.cluster_id != new.cluster_id
            || self.settings != new.settings
            || sorted_by(&self.namespaces, |n| n.name.clone())
                != sorted_by(&new.namespaces, |n| n.name.clone())
            || sorted_by(&self.waypoints, Named::key) != sorted_by(&new.waypoints, Named::key)
        {
            return None;
        }
        let mut edits = Vec::new();
        let e = &mut edits;
        let (old, new) = (self, new);
        fn by_name(nodes: &[Node]) -> BTreeMap<String, &Node> {
            nodes.iter().map(|n| (n.name.clone(), n)).collect()
        }
        let node = |n: &Node| Edit::Node(n.clone());
        let (o, n) = (by_name(&old.nodes), by_name(&new.nodes));
        keyed_edits(&o, &n, node, Edit::RemoveNode, e);
        kind_edits(&old.pods, &new.pods, e);
        kind_edits(&old.services, &new.services, e);
        kind_edits(&old.policies, &new.policies, e);
        kind_edits(&old.routes, &new.routes, e);
        kind_edits(&old.traffic_policies, &new.traffic_policies, e);
        Some(edits)
    }
}

fn sorted_by<T, K: Ord>(objects: &[T], key: impl Fn(&T) -> K) -> Vec<&T> {
    let mut sorted: Vec<&T> = objects.iter().collect();
    sorted.sort_by_key(|o| key(o));
    sorted
}

/// [`keyed_edits`] of two lists of one kind.
fn kind_edits<T: Edited>(old: &[T], new: &[T], edits: &mut Vec<Edit>) {
    let old: BTreeMap<ObjectKey, &T> = old.iter().map(|o| (o.key(), o)).collect();
    let new: BTreeMap<ObjectKey, &T> = new.iter().map(|o| (o.key(), o)).collect();
    keyed_edits(&old, &new, |o| o.clone().put(), T::remove, edits);
}

/// An edit for each object of one kind that `new` adds, changes or drops against `old`.
pub(crate) fn keyed_edits<K: Ord + Borrow<Q>, Q: Ord + Clone, T: PartialEq>(
    old: &BTreeMap<K, &T>,
    new: &BTreeMap<K, &T>,
    put: impl Fn(&T) -> Edit,
    remove: impl Fn(Q) -> Edit,
    edits: &mut Vec<Edit>,
) {
    for (key, object) in new {
        if old.get(key.borrow()) != Some(object) {
            edits.push(put(object));
        }
    }
    let gone = old.keys().filter(|k| !new.contains_key((*k).borrow()));
    edits.extend(gone.map(|k| remove(k.borrow().clone())));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder(pods: &[(&str, &str)]) -> MeshBuilder {
        let mut b = MeshBuilder::new("cluster.local", "test");
        b.node(Node {
            name: "node-a".into(),
            bootstrap_token: Some("t".into()),
        })
        .namespace(Namespace {
            name: "demo".into(),
            labels: Labels::new(),
            egress_scope: None,
        });
        for (name, ip) in pods {
            b.pod(Pod {
                name: (*name).into(),
                namespace: "demo".into(),
                service_account: "default".into(),
                node: "node-a".into(),
                addresses: vec![ip.parse().unwrap()],
                labels: Labels::new(),
                healthy: true,
            });
        }
        b
    }

    #[test]
    fn the_edits_between_two_builders_make_the_second_ones_model() {
        let old = builder(&[("a", "10.0.0.1"), ("b", "10.0.0.2")]);
        let new = builder(&[("a", "10.0.0.9"), ("c", "10.0.0.3")]);
        let edits = old.edits_to(&new).unwrap();
        assert_eq!(edits.len(), 3, "a changed, c added, b removed: {edits:?}");
        let model = old.clone().build().unwrap();
        let applied = model.apply(edits).unwrap();
        assert_eq!(applied, new.clone().build().unwrap());
        assert!(applied.changes_since(&model).is_some());

        let mut relabelled = new.clone();
        relabelled.namespaces[0]
            .labels
            .insert("team".into(), "x".into());
        assert!(
            new.edits_to(&relabelled).is_none(),
            "a namespace is built whole"
        );
        assert_eq!(new.edits_to(&new.clone()), Some(vec![]));
    }
}
