//! Which model a model was made from by [`MeshModel::apply`], and what that changed: a snapshot
//! of the new model reads this to re-resolve only what changed instead of comparing every
//! object of both models.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};

use super::{MeshModel, ObjectKey};

/// A model's identity, and the change that made it from its parent. Identity is an allocation
/// rather than a number, so no counter is shared between models: a child holds a weak
/// reference to its parent's, which keeps the address from being reused while it is held.
#[derive(Debug, Clone, Default)]
pub(super) struct Lineage {
    identity: Arc<()>,
    since: Option<Arc<Changes>>,
}

impl Lineage {
    pub(super) fn child(parent: &Lineage, changes: Changes) -> Lineage {
        Lineage {
            identity: Arc::new(()),
            since: Some(Arc::new(Changes {
                parent: Arc::downgrade(&parent.identity),
                ..changes
            })),
        }
    }
}

/// The objects a change may have added, changed or removed, by kind; everything else is the
/// same object (in the same place) as in the parent. Keys only: the objects themselves are
/// read from the two models.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    parent: Weak<()>,
    pub nodes: BTreeSet<String>,
    pub workloads: BTreeSet<ObjectKey>,
    pub services: BTreeSet<ObjectKey>,
    pub policies: BTreeSet<ObjectKey>,
    pub routes: BTreeSet<ObjectKey>,
    pub traffic_policies: BTreeSet<ObjectKey>,
}

impl MeshModel {
    /// What changed since `parent`, when this model was made from it by [`MeshModel::apply`];
    /// `None` when it was built otherwise (then only comparing the two tells).
    pub fn changes_since(&self, parent: &MeshModel) -> Option<&Changes> {
        let changes = self.lineage.since.as_deref()?;
        let same = std::ptr::eq(
            changes.parent.as_ptr(),
            Arc::as_ptr(&parent.lineage.identity),
        );
        same.then_some(changes)
    }
}
