//! The mesh-wide objects the rest is checked against: nodes and namespaces, with what a
//! namespace's labels decide for everything in it (mesh membership, waypoint, mTLS mode).

use std::collections::{BTreeMap, HashMap, HashSet};

use super::Checker;
use crate::model::*;

impl Checker {
    pub(super) fn nodes(&mut self, nodes: Vec<Node>) -> BTreeMap<String, Node> {
        let mut out = BTreeMap::new();
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

    pub(super) fn namespaces(&mut self, namespaces: Vec<Namespace>) -> BTreeMap<String, Namespace> {
        let mut out = BTreeMap::new();
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

    /// The waypoint each namespace's label names, checked once per namespace rather than once
    /// per service that inherits it.
    pub(super) fn namespace_waypoints(
        &mut self,
        namespaces: &BTreeMap<String, Namespace>,
        waypoints: &HashSet<ObjectKey>,
    ) -> HashMap<String, ObjectKey> {
        let mut out = HashMap::new();
        for ns in namespaces.values() {
            let subject = ResourceRef::new(Kind::Namespace, &ns.name);
            if let Some(key) = self.waypoint_label(&subject, &ns.name, &ns.labels, waypoints) {
                out.insert(ns.name.clone(), key);
            }
        }
        out
    }

    /// Each namespace's policy mode; a label value that is no mode is an error (a mistyped
    /// `audit` must not pass for enforce, nor the reverse).
    pub(super) fn policy_modes(
        &mut self,
        namespaces: &BTreeMap<String, Namespace>,
        default: PolicyMode,
    ) -> HashMap<String, PolicyMode> {
        let mut out = HashMap::new();
        for ns in namespaces.values() {
            match PolicyMode::of_namespace(&ns.labels, default) {
                Ok(mode) => {
                    out.insert(ns.name.clone(), mode);
                }
                Err(value) => self.errors.push(ModelError::InvalidLabelValue {
                    subject: ResourceRef::new(Kind::Namespace, &ns.name),
                    label: POLICY_MODE_LABEL,
                    value,
                    allowed: "\"enforce\" or \"audit\" (observer mode: evaluated, logged and counted, never enforced); without the label the mesh-wide mode applies",
                }),
            }
        }
        out
    }

    /// Each namespace's mTLS mode; a label value that is no mode is an error, since guessing
    /// either way is wrong for someone (strict breaks plaintext clients, permissive lets them in).
    pub(super) fn mtls_modes(
        &mut self,
        namespaces: &BTreeMap<String, Namespace>,
        default: MtlsMode,
    ) -> HashMap<String, MtlsMode> {
        let mut out = HashMap::new();
        for ns in namespaces.values() {
            match MtlsMode::of_namespace(&ns.labels, default) {
                Ok(mode) => {
                    out.insert(ns.name.clone(), mode);
                }
                Err(value) => self.errors.push(ModelError::InvalidLabelValue {
                    subject: ResourceRef::new(Kind::Namespace, &ns.name),
                    label: MTLS_MODE_LABEL,
                    value,
                    allowed: "\"strict\" (only mTLS) or \"permissive\" (also plaintext); without the label the mesh-wide mode applies",
                }),
            }
        }
        out
    }
}
