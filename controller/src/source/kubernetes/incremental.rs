//! A change in the cluster applied to the model in place: the converted state is compared
//! with the one the current model was made from, object by object, and what differs becomes
//! [`Edit`]s for [`MeshModel::apply`]. The new model then shares everything else with the
//! current one and records what changed, so the snapshot re-resolves only that; a rebuild at
//! 50k workloads re-checked every object and made every subscription compare its whole scope.
//!
//! Whatever `apply` does not cover is built whole, as before: a namespace or waypoint change
//! (their labels reach everything in the namespace), a current model that left an object out
//! (that object may be valid now without having changed itself), and a batch `apply` refuses
//! (the full build then reports what is wrong, object by object).

use std::collections::HashMap;

use super::assemble::model_skips;
use super::convert::{Input, Skip};
use crate::model::{Edit, MeshModel, Node, ObjectKey};

/// The input the current model was made from, and whether it left anything of it out.
pub(super) struct MadeFrom {
    pub input: Input,
    pub left_out: bool,
}

/// The model `input` makes, applied to `current` (made from `from`), with its skips; `None`
/// when it must be built whole.
pub(super) fn apply(
    current: &MeshModel,
    from: &MadeFrom,
    input: &Input,
) -> Option<(MeshModel, Vec<Skip>)> {
    if from.left_out {
        return None;
    }
    let edits = edits(&from.input, input)?;
    let model = current.apply(edits).ok()?;
    let mut skips = input.skips.clone();
    skips.extend(model_skips(&model));
    skips.sort();
    skips.dedup();
    Some((model, skips))
}

/// What turns `old` into `new`, or `None` when namespaces or waypoints differ.
pub(super) fn edits(old: &Input, new: &Input) -> Option<Vec<Edit>> {
    if old.namespaces != new.namespaces || old.waypoints != new.waypoints {
        return None;
    }
    let mut edits = Vec::new();
    let node = |name: &String| Node {
        name: name.clone(),
        bootstrap_token: None,
    };
    edits.extend(
        new.nodes
            .difference(&old.nodes)
            .map(|n| Edit::Node(node(n))),
    );
    edits.extend(
        old.nodes
            .difference(&new.nodes)
            .cloned()
            .map(Edit::RemoveNode),
    );
    let key = |ns: &str, name: &str| ObjectKey::new(ns, name);
    diff(
        &old.pods,
        &new.pods,
        |p| key(&p.namespace, &p.name),
        Edit::Pod,
        Edit::RemovePod,
        &mut edits,
    );
    diff(
        &old.services,
        &new.services,
        |s| key(&s.namespace, &s.name),
        Edit::Service,
        Edit::RemoveService,
        &mut edits,
    );
    diff(
        &old.policies,
        &new.policies,
        |p| key(&p.namespace, &p.name),
        Edit::Policy,
        Edit::RemovePolicy,
        &mut edits,
    );
    diff(
        &old.routes,
        &new.routes,
        |r| key(&r.namespace, &r.name),
        Edit::Route,
        Edit::RemoveRoute,
        &mut edits,
    );
    diff(
        &old.traffic_policies,
        &new.traffic_policies,
        |p| key(&p.namespace, &p.name),
        Edit::TrafficPolicy,
        Edit::RemoveTrafficPolicy,
        &mut edits,
    );
    Some(edits)
}

/// Adds an edit for each object of one kind that `new` adds, changes or drops.
fn diff<T: PartialEq + Clone>(
    old: &[T],
    new: &[T],
    key: impl Fn(&T) -> ObjectKey,
    put: impl Fn(T) -> Edit,
    remove: impl Fn(ObjectKey) -> Edit,
    edits: &mut Vec<Edit>,
) {
    let mut was: HashMap<ObjectKey, &T> = old.iter().map(|o| (key(o), o)).collect();
    for object in new {
        if was.remove(&key(object)) != Some(object) {
            edits.push(put(object.clone()));
        }
    }
    edits.extend(was.into_keys().map(remove));
}
