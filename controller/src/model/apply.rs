//! A change to a model applied in place: one pod, service, policy, route, traffic policy or
//! node at a time, re-deriving only what follows from it (a service's endpoints, the indexes),
//! instead of building the whole mesh again. The maps are persistent ([`imbl`]), so the new
//! model shares everything it did not change with the one it came from, and cloning either is
//! cheap.
//!
//! The contract: when `apply` succeeds, its model is exactly the one [`super::MeshBuilder`]
//! makes of the same objects (the tests hold it to that). Namespaces and waypoints, whose
//! labels reach everything in a namespace, are not applied: a source rebuilds for them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use imbl::OrdMap;

use super::build::Checker;
use super::lineage::{Changes, Lineage};
use super::*;

/// One object added or replaced (by its key), or removed.
#[derive(Debug, Clone, PartialEq)]
pub enum Edit {
    Node(Node),
    RemoveNode(String),
    Pod(Pod),
    RemovePod(ObjectKey),
    Service(Service),
    RemoveService(ObjectKey),
    Policy(AuthorizationPolicy),
    RemovePolicy(ObjectKey),
    Route(Route),
    RemoveRoute(ObjectKey),
    TrafficPolicy(TrafficPolicy),
    RemoveTrafficPolicy(ObjectKey),
}

/// An object the model knows by namespace and name.
pub(crate) trait Named {
    fn key(&self) -> ObjectKey;
}

/// A kind of object the model takes as [`Edit`]s: put whole, removed by key.
pub(crate) trait Edited: Named + Clone + PartialEq {
    fn put(self) -> Edit;
    fn remove(key: ObjectKey) -> Edit;
}

macro_rules! named {
    ($($t:ty),*) => {$(
        impl Named for $t {
            fn key(&self) -> ObjectKey {
                ObjectKey::new(&self.namespace, &self.name)
            }
        }
    )*};
}

named!(
    Pod,
    Service,
    Waypoint,
    AuthorizationPolicy,
    Route,
    TrafficPolicy
);

macro_rules! edited {
    ($($t:ty => $put:ident, $remove:ident);* $(;)?) => {$(
        impl Edited for $t {
            fn put(self) -> Edit {
                Edit::$put(self)
            }
            fn remove(key: ObjectKey) -> Edit {
                Edit::$remove(key)
            }
        }
    )*};
}

edited! {
    Pod => Pod, RemovePod;
    Service => Service, RemoveService;
    AuthorizationPolicy => Policy, RemovePolicy;
    Route => Route, RemoveRoute;
    TrafficPolicy => TrafficPolicy, RemoveTrafficPolicy;
}

impl Edit {
    /// The order edits are applied in: what others refer to is added first and removed last,
    /// so a batch does not depend on the order its edits came in.
    fn rank(&self) -> u8 {
        match self {
            Edit::Node(_) => 0,
            Edit::Service(_) => 1,
            Edit::Pod(_) => 2,
            Edit::Policy(_) => 3,
            Edit::Route(_) => 4,
            Edit::TrafficPolicy(_) => 5,
            Edit::RemoveTrafficPolicy(_) => 6,
            Edit::RemoveRoute(_) => 7,
            Edit::RemovePolicy(_) => 8,
            Edit::RemovePod(_) => 9,
            Edit::RemoveService(_) => 10,
            Edit::RemoveNode(_) => 11,
        }
    }

    /// The object an edit is about: of two edits of one object in a batch, the later wins.
    fn subject(&self) -> ResourceRef {
        let key = |ns: &str, name: &str| ObjectKey::new(ns, name).to_string();
        match self {
            Edit::Node(n) => ResourceRef::new(Kind::Node, &n.name),
            Edit::RemoveNode(n) => ResourceRef::new(Kind::Node, n),
            Edit::Pod(p) => ResourceRef::new(Kind::Pod, key(&p.namespace, &p.name)),
            Edit::RemovePod(k) => ResourceRef::new(Kind::Pod, k.to_string()),
            Edit::Service(s) => ResourceRef::new(Kind::Service, key(&s.namespace, &s.name)),
            Edit::RemoveService(k) => ResourceRef::new(Kind::Service, k.to_string()),
            Edit::Policy(p) => {
                ResourceRef::new(Kind::AuthorizationPolicy, key(&p.namespace, &p.name))
            }
            Edit::RemovePolicy(k) => ResourceRef::new(Kind::AuthorizationPolicy, k.to_string()),
            Edit::Route(r) => ResourceRef::new(Kind::Route, key(&r.namespace, &r.name)),
            Edit::RemoveRoute(k) => ResourceRef::new(Kind::Route, k.to_string()),
            Edit::TrafficPolicy(p) => {
                ResourceRef::new(Kind::TrafficPolicy, key(&p.namespace, &p.name))
            }
            Edit::RemoveTrafficPolicy(k) => ResourceRef::new(Kind::TrafficPolicy, k.to_string()),
        }
    }
}

impl MeshModel {
    /// This model with `edits` applied, or what is wrong with the result. An `Err` does not
    /// always mean a full build of the same objects fails (a batch that swaps two traffic
    /// policies' targets, say, is refused here): a source that gets one rebuilds instead, and
    /// reports whatever that build reports.
    pub fn apply(
        &self,
        edits: impl IntoIterator<Item = Edit>,
    ) -> Result<MeshModel, Vec<ModelError>> {
        let mut last: BTreeMap<ResourceRef, Edit> = BTreeMap::new();
        for edit in edits {
            last.insert(edit.subject(), edit);
        }
        let mut edits: Vec<Edit> = last.into_values().collect();
        edits.sort_by_key(Edit::rank);
        let mut m = self.clone();
        let mut a = Applying::default();
        for edit in edits {
            m.apply_one(edit, &mut a);
        }
        m.check_removed(&mut a);
        if !a.checker.errors.is_empty() {
            return Err(a.checker.errors);
        }
        m.lineage = Lineage::child(&self.lineage, a.changes);
        Ok(m)
    }

    fn apply_one(&mut self, edit: Edit, a: &mut Applying) {
        let subject = edit.subject();
        match edit {
            Edit::Node(node) => {
                let clash = self.nodes.values().find(|n| {
                    n.name != node.name
                        && n.bootstrap_token.is_some()
                        && n.bootstrap_token == node.bootstrap_token
                });
                if let Some(first) = clash {
                    a.checker.errors.push(ModelError::DuplicateToken {
                        subject,
                        first: ResourceRef::new(Kind::Node, &first.name),
                    });
                    return;
                }
                a.changes.nodes.insert(node.name.clone());
                self.nodes.insert(node.name.clone(), node);
            }
            Edit::RemoveNode(name) => {
                if self.nodes.remove(&name).is_some() {
                    a.changes.nodes.insert(name.clone());
                    a.removed_nodes.push(name);
                }
            }
            Edit::Pod(pod) => self.upsert_pod(subject, pod, a),
            Edit::RemovePod(key) => {
                if let Some(old) = self.workloads.remove(&key) {
                    release(&mut self.addresses, &subject, &old.pod.addresses);
                    self.unplace(&key, &old.pod.node);
                    a.changes.workloads.insert(key.clone());
                    self.refresh_users_of(&key, &old.pod.labels, None, a);
                }
            }
            Edit::Service(svc) => {
                let key = ObjectKey::new(&svc.namespace, &svc.name);
                self.forget_service(&key, &subject);
                let mut claims = std::mem::take(&mut self.addresses);
                let entry = a.checker.service(self, &subject, svc, &mut claims);
                self.addresses = claims;
                self.services.insert(key.clone(), entry);
                self.index_explicit_endpoints(&key, true);
                self.refresh_endpoints(&key);
                a.changes.services.insert(key);
            }
            Edit::RemoveService(key) => {
                if self.services.contains_key(&key) {
                    self.forget_service(&key, &subject);
                    self.services.remove(&key);
                    a.changes.services.insert(key.clone());
                    a.removed_services.push(key);
                }
            }
            Edit::Policy(policy) => {
                let key = ObjectKey::new(&policy.namespace, &policy.name);
                let policy = a.checker.policy(self, &subject, policy);
                self.policies.insert(key.clone(), policy);
                a.changes.policies.insert(key);
            }
            Edit::RemovePolicy(key) => {
                if self.policies.remove(&key).is_some() {
                    a.changes.policies.insert(key);
                }
            }
            Edit::Route(route) => {
                let key = ObjectKey::new(&route.namespace, &route.name);
                a.checker.route(self, &subject, &route);
                self.routes.insert(key.clone(), route);
                a.changes.routes.insert(key);
            }
            Edit::RemoveRoute(key) => {
                if self.routes.remove(&key).is_some() {
                    a.changes.routes.insert(key);
                }
            }
            Edit::TrafficPolicy(policy) => {
                let key = ObjectKey::new(&policy.namespace, &policy.name);
                if a.checker.traffic_policy(self, &subject, &policy) {
                    self.remove_traffic_policy(&key);
                    self.traffic_by_target
                        .insert(policy.target.clone(), key.clone());
                    self.traffic_policies.insert(key.clone(), policy);
                    a.changes.traffic_policies.insert(key);
                }
            }
            Edit::RemoveTrafficPolicy(key) => {
                if self.remove_traffic_policy(&key) {
                    a.changes.traffic_policies.insert(key);
                }
            }
        }
    }

    fn upsert_pod(&mut self, subject: ResourceRef, pod: Pod, a: &mut Applying) {
        let key = ObjectKey::new(&pod.namespace, &pod.name);
        let old = self.workloads.get(&key).map(|w| w.pod.clone());
        if let Some(old) = &old {
            release(&mut self.addresses, &subject, &old.addresses);
        }
        let mut claims = std::mem::take(&mut self.addresses);
        let workload = a.checker.workload(self, &subject, pod, &mut claims);
        self.addresses = claims;
        let Some(workload) = workload else {
            return;
        };
        if let Some(old) = &old
            && old.node != workload.pod.node
        {
            self.unplace(&key, &old.node);
        }
        let on_node = self
            .workloads_by_node
            .entry(workload.pod.node.clone())
            .or_default();
        on_node.insert(key.clone());
        let labels = workload.pod.labels.clone();
        self.workloads.insert(key.clone(), workload);
        a.changes.workloads.insert(key.clone());
        let old_labels = old.map(|p| p.labels).unwrap_or_default();
        self.refresh_users_of(&key, &old_labels, Some(&labels), a);
    }

    /// Refreshes the endpoints of the services that selected the pod before (by `old` labels)
    /// or select it now, and of those that list it outright.
    fn refresh_users_of(
        &mut self,
        pod: &ObjectKey,
        old: &Labels,
        new: Option<&Labels>,
        a: &mut Applying,
    ) {
        let mut users: Vec<ObjectKey> = self
            .explicit_users
            .get(pod)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        let selecting = |l: &Labels, s: &ServiceEntry| {
            !s.service.selector.is_empty() && selects(&s.service.selector, l)
        };
        users.extend(
            in_namespace(&self.services, &pod.namespace)
                .filter(|s| selecting(old, s) || new.is_some_and(|n| selecting(n, s)))
                .map(|s| ObjectKey::new(&s.service.namespace, &s.service.name)),
        );
        for key in users {
            let before = self.services.get(&key).map(|s| s.endpoints.clone());
            self.refresh_endpoints(&key);
            if self.services.get(&key).map(|s| &s.endpoints) != before.as_ref() {
                a.changes.services.insert(key);
            }
        }
    }

    /// Takes a workload off its node's list, and the node's list away once empty.
    fn unplace(&mut self, key: &ObjectKey, node: &str) {
        if let Some(on_node) = self.workloads_by_node.get_mut(node) {
            on_node.remove(key);
            if on_node.is_empty() {
                self.workloads_by_node.remove(node);
            }
        }
    }

    /// Releases what a service held (its VIPs, its place in the explicit-endpoint index).
    fn forget_service(&mut self, key: &ObjectKey, subject: &ResourceRef) {
        let Some(vips) = self.services.get(key).map(|s| s.service.vips.clone()) else {
            return;
        };
        release(&mut self.addresses, subject, &vips);
        self.index_explicit_endpoints(key, false);
    }

    fn remove_traffic_policy(&mut self, key: &ObjectKey) -> bool {
        let Some(old) = self.traffic_policies.remove(key) else {
            return false;
        };
        if self.traffic_by_target.get(&old.target) == Some(key) {
            self.traffic_by_target.remove(&old.target);
        }
        true
    }

    /// What still refers to a removed service or node, once the whole batch is in.
    fn check_removed(&self, a: &mut Applying) {
        for key in &a.removed_services {
            if self.services.contains_key(key) {
                continue;
            }
            let host = service_hostname(&key.name, &key.namespace, &self.trust_domain);
            for r in self.routes.values() {
                let named = r.parent_services().chain(r.backend_services());
                if named.into_iter().any(|h| h == host) {
                    let subject =
                        ResourceRef::new(Kind::Route, format!("{}/{}", r.namespace, r.name));
                    a.checker.errors.push(ModelError::UnknownBackend {
                        subject,
                        backend: host.clone(),
                    });
                }
            }
            if let Some(policy) = self.traffic_by_target.get(&host) {
                a.checker.errors.push(ModelError::UnknownBackend {
                    subject: ResourceRef::new(Kind::TrafficPolicy, policy.to_string()),
                    backend: host.clone(),
                });
            }
        }
        for node in &a.removed_nodes {
            let waypoints = self.waypoints.values().filter(|w| w.node == *node);
            let users = self
                .workloads_on_node(node)
                .map(|w| ResourceRef::new(Kind::Pod, w.key().to_string()))
                .chain(waypoints.map(|w| {
                    ResourceRef::new(Kind::Waypoint, format!("{}/{}", w.namespace, w.name))
                }));
            let errors: Vec<ModelError> = users
                .map(|subject| ModelError::UnknownNode {
                    subject,
                    node: node.clone(),
                })
                .collect();
            a.checker.errors.extend(errors);
        }
    }
}

/// Gives back the addresses `subject` claimed, so that its new version (or another object) can
/// claim them.
fn release(claims: &mut OrdMap<IpAddr, ResourceRef>, subject: &ResourceRef, addresses: &[IpAddr]) {
    for address in addresses {
        if claims.get(address) == Some(subject) {
            claims.remove(address);
        }
    }
}

/// A batch being applied: the problems so far, what changed, and the removals whose referrers
/// are checked at the end.
#[derive(Default)]
struct Applying {
    checker: Checker,
    changes: Changes,
    removed_services: Vec<ObjectKey>,
    removed_nodes: Vec<String>,
}

/// The random edits the tests hold `apply` to, which the snapshot's tests reuse.
#[cfg(test)]
pub(crate) mod tests;
