//! The mesh as it would be with more policies: the model's own objects fed back through
//! [`MeshBuilder`] with the suggested policies added, so that the builder checks them as it
//! checks any source's (a suggestion the controller would refuse is caught here).

use std::collections::BTreeSet;

use crate::model::{AuthorizationPolicy, MeshBuilder, MeshModel, ModelError, PolicyMode};

/// `model` with `added` policies. A policy keeps its namespace's mode; the mesh-wide mode is not
/// in a model, so it is taken from the model's policies (any dry-run one in a namespace without
/// its own mode label means the mesh-wide mode was audit).
pub fn with_policies(
    model: &MeshModel,
    added: &[AuthorizationPolicy],
) -> Result<MeshModel, Vec<ModelError>> {
    let mut b = MeshBuilder::new(model.trust_domain(), model.cluster_id());
    let mut namespaces = BTreeSet::new();
    for node in model.nodes() {
        b.node(node.clone());
    }
    if model.waypoints().any(|w| w.addresses.is_empty()) {
        b.allow_pending_waypoints();
    }
    if model.workloads().any(|w| w.pod.addresses.is_empty()) {
        b.allow_unaddressed_pods();
    }
    for w in model.workloads() {
        namespaces.insert(w.pod.namespace.clone());
        b.pod(w.pod.clone());
    }
    for s in model.services() {
        namespaces.insert(s.service.namespace.clone());
        b.service(s.service.clone());
    }
    for w in model.waypoints() {
        namespaces.insert(w.namespace.clone());
        b.waypoint(w.clone());
    }
    let mut audit_mesh_wide = false;
    for p in model.policies() {
        namespaces.insert(p.namespace.clone());
        let own_mode = model
            .namespace(&p.namespace)
            .is_some_and(|n| n.labels.contains_key(crate::model::POLICY_MODE_LABEL));
        audit_mesh_wide |= p.dry_run && !own_mode;
        b.policy(p.clone());
    }
    for p in added {
        namespaces.insert(p.namespace.clone());
        b.policy(p.clone());
    }
    for r in model.routes() {
        namespaces.insert(r.namespace.clone());
        b.route(r.clone());
    }
    for t in model.traffic_policies() {
        namespaces.insert(t.namespace.clone());
        b.traffic_policy(t.clone());
    }
    for name in &namespaces {
        if let Some(ns) = model.namespace(name) {
            b.namespace(ns.clone());
        }
    }
    if audit_mesh_wide {
        b.policy_mode(PolicyMode::Audit);
    }
    b.build()
}
