//! The mesh-wide objects the rest is checked against: nodes and namespaces, with what a
//! namespace's labels decide for everything in it (mesh membership, waypoint, mTLS mode).

use std::collections::HashMap;

use imbl::OrdMap;

use super::Checker;
use crate::model::*;

impl Checker {
    pub(super) fn nodes(&mut self, nodes: Vec<Node>) -> OrdMap<String, Node> {
        let mut out = OrdMap::new();
        let mut tokens: HashMap<String, ResourceRef> = HashMap::new();
        for node in nodes {
            let subject = ResourceRef::new(Kind::Node, &node.name);
            if out.contains_key(&node.name) {
                self.errors.push(ModelError::Duplicate { subject });
                continue;
            }
            if let Some(token) = &node.bootstrap_token {
                if let Some(first) = tokens.get(token) {
                    self.errors.push(ModelError::DuplicateToken {
                        subject: subject.clone(),
                        first: first.clone(),
                    });
                }
                tokens.insert(token.clone(), subject);
            }
            out.insert(node.name.clone(), node);
        }
        out
    }

    pub(super) fn namespaces(&mut self, namespaces: Vec<Namespace>) -> OrdMap<String, Namespace> {
        let mut out = OrdMap::new();
        for ns in namespaces {
            let subject = ResourceRef::new(Kind::Namespace, &ns.name);
            if out.contains_key(&ns.name) {
                self.errors.push(ModelError::Duplicate { subject });
                continue;
            }
            if let Some(value) = ns.labels.get(DATAPLANE_MODE_LABEL)
                && value != DATAPLANE_MODE_AMBIENT
                && value != DATAPLANE_MODE_NONE
            {
                self.errors.push(ModelError::InvalidLabelValue {
                    subject,
                    label: DATAPLANE_MODE_LABEL,
                    value: value.clone(),
                    allowed: "\"ambient\" (mesh the namespace) or \"none\"",
                });
            }
            out.insert(ns.name.clone(), ns);
        }
        out
    }

    /// The waypoint each namespace's label names must exist: checked once per namespace rather
    /// than once per service that inherits it.
    pub(super) fn namespace_waypoints(&mut self, m: &MeshModel) {
        for ns in m.namespaces.values() {
            let subject = ResourceRef::new(Kind::Namespace, &ns.name);
            self.waypoint_label(m, &subject, &ns.name, &ns.labels);
        }
    }

    /// Each namespace's policy mode must be one; a label value that is no mode is an error (a
    /// mistyped `audit` must not pass for enforce, nor the reverse).
    pub(super) fn policy_modes(
        &mut self,
        namespaces: &OrdMap<String, Namespace>,
        default: PolicyMode,
    ) {
        for ns in namespaces.values() {
            if let Err(value) = PolicyMode::of_namespace(&ns.labels, default) {
                self.errors.push(ModelError::InvalidLabelValue {
                    subject: ResourceRef::new(Kind::Namespace, &ns.name),
                    label: POLICY_MODE_LABEL,
                    value,
                    allowed: "\"enforce\" or \"audit\" (observer mode: evaluated, logged and counted, never enforced); without the label the mesh-wide mode applies",
                });
            }
        }
    }

    /// Each namespace's mTLS mode must be one; a label value that is no mode is an error, since
    /// guessing either way is wrong for someone (strict breaks plaintext clients, permissive
    /// lets them in).
    pub(super) fn mtls_modes(&mut self, namespaces: &OrdMap<String, Namespace>, default: MtlsMode) {
        for ns in namespaces.values() {
            if let Err(value) = MtlsMode::of_namespace(&ns.labels, default) {
                self.errors.push(ModelError::InvalidLabelValue {
                    subject: ResourceRef::new(Kind::Namespace, &ns.name),
                    label: MTLS_MODE_LABEL,
                    value,
                    allowed: "\"strict\" (only mTLS) or \"permissive\" (also plaintext); without the label the mesh-wide mode applies",
                });
            }
        }
    }
}

impl MeshModel {
    /// The waypoint a namespace's label names, if it names one that exists.
    pub(super) fn namespace_waypoint(&self, namespace: &str) -> Option<ObjectKey> {
        let name = self
            .namespaces
            .get(namespace)?
            .labels
            .get(USE_WAYPOINT_LABEL)?;
        let key = ObjectKey::new(namespace, name);
        (name != WAYPOINT_NONE && self.waypoints.contains_key(&key)).then_some(key)
    }
}
