//! The cluster as converted, kept object by object, so that a change converts only what it
//! touches: a pod itself (and the services of its namespace that look at their pods'
//! containers), a service, a policy. Converting the whole cluster again for one pod cost
//! O(cluster) per event: at 50k pods, more than the target for a whole change.
//!
//! What reaches across the cluster is converted whole: namespaces and waypoints (their labels
//! reach every object of a namespace), a pod that is a waypoint's, a pod at an address an
//! EndpointSlice lists without naming the pod. Routes and traffic policies, few and keyed by
//! service host names, are converted again together when one of them or a service changes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::endpoints::{Slices, unreferenced_addresses};
use super::{Input, Objects, Skip, Waypoints, policies, routes, traffic, waypoints, workloads};
use crate::model::{self, Edit, Edited, MeshModel, Node, ObjectKey, keyed_edits};
use crate::source::kubernetes::crd;

/// One object as converted: the object (a service's named target port is looked up in its
/// pods' containers), what the model gets of it (`None`: left out) and what was said of it.
#[derive(Debug, Clone)]
pub(crate) struct Entry<K, T> {
    pub source: Arc<K>,
    pub value: Option<T>,
    pub skips: Vec<Skip>,
}

pub(crate) type Pods = BTreeMap<ObjectKey, Entry<core::Pod, model::Pod>>;
type Services = BTreeMap<ObjectKey, Entry<core::Service, model::Service>>;
type Policies = BTreeMap<ObjectKey, Entry<crd::AuthorizationPolicy, model::AuthorizationPolicy>>;

/// A kind converted as a whole, with what was said of it.
#[derive(Debug, Clone, Default, PartialEq)]
struct Whole<T> {
    values: Vec<T>,
    skips: Vec<Skip>,
}

/// The objects a change names, by kind, as the watches saw them: see [`Converted::update`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changed {
    /// Convert everything again: a kind was listed (again), a CRD came or went, or a namespace
    /// or Gateway changed.
    pub everything: bool,
    pub pods: BTreeSet<ObjectKey>,
    pub services: BTreeSet<ObjectKey>,
    pub endpoint_slices: BTreeSet<ObjectKey>,
    pub policies: BTreeSet<ObjectKey>,
    /// An HTTPRoute or GRPCRoute.
    pub routes: bool,
    pub traffic_policies: bool,
}

impl Changed {
    pub fn everything() -> Changed {
        Changed {
            everything: true,
            ..Changed::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Changed::default()
    }
}

/// Reads the objects a change names, as they are now (`None`: deleted).
pub trait Lookup {
    fn pod(&self, key: &ObjectKey) -> Option<Arc<core::Pod>>;
    fn service(&self, key: &ObjectKey) -> Option<Arc<core::Service>>;
    fn endpoint_slice(&self, key: &ObjectKey) -> Option<Arc<EndpointSlice>>;
    fn policy(&self, key: &ObjectKey) -> Option<Arc<crd::AuthorizationPolicy>>;
    /// The kinds converted as a whole (the other kinds may be left empty).
    fn routes_and_traffic_policies(&self) -> Objects;
    /// Everything.
    fn objects(&self) -> Objects;
}

/// What a change makes of the model, and what it says that was not said before.
#[derive(Debug, Default)]
pub struct Update {
    pub edits: Vec<Edit>,
    pub new_skips: Vec<Skip>,
    /// Said before of the objects converted again, and not now.
    pub gone_skips: Vec<Skip>,
}

/// The cluster as converted; see the module's documentation.
#[derive(Debug, Clone)]
pub struct Converted {
    trust_domain: String,
    gateways: Waypoints,
    namespaces: Vec<model::Namespace>,
    waypoints: Vec<model::Waypoint>,
    /// What was said of namespaces, Gateways and waypoint pods.
    fixed_skips: Vec<Skip>,
    /// Pods that are no waypoint's.
    pods: Pods,
    waypoint_pods: BTreeSet<ObjectKey>,
    services: Services,
    slices: BTreeMap<ObjectKey, Arc<EndpointSlice>>,
    /// Addresses slices list without naming a pod, with how many list each: the pod at one
    /// is found by its address, so a pod that takes or leaves one changes slices elsewhere.
    slice_addresses: BTreeMap<IpAddr, usize>,
    policies: Policies,
    routes: Whole<model::Route>,
    traffic_policies: Whole<model::TrafficPolicy>,
    /// Pods and waypoints per node: a node is in the model while it runs one.
    nodes: BTreeMap<String, usize>,
}

/// The entries of `namespace` in a map keyed by object.
fn in_namespace<'a, V>(
    map: &'a BTreeMap<ObjectKey, V>,
    namespace: &'a str,
) -> impl Iterator<Item = (&'a ObjectKey, &'a V)> + 'a {
    map.range(ObjectKey::new(namespace, "")..)
        .take_while(move |(k, _)| k.namespace == namespace)
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectKey {
    let (namespace, name) = super::key(meta);
    ObjectKey::new(namespace, name)
}

impl Converted {
    /// Converts everything at once.
    pub fn full(objects: &Objects, trust_domain: &str) -> Converted {
        let mut fixed_skips = Vec::new();
        let gateways = waypoints::waypoint_gateways(&objects.gateways);
        // Waypoint pods are the waypoint, not workloads: their addresses are the waypoint's,
        // and a workload with the same address would be refused by the model as a duplicate.
        let mut members = Vec::new();
        let mut waypoint_pods = BTreeSet::new();
        let mut pods = Pods::new();
        for p in &objects.pods {
            let mut skips = Vec::new();
            if let Some(gateway) = waypoints::gateway_of(p, &gateways, &mut skips) {
                waypoint_pods.insert(key_of(&p.metadata));
                members.push((gateway, p));
                continue;
            }
            let value = workloads::pod(p, &gateways, &mut skips);
            let entry = Entry {
                source: p.clone(),
                value,
                skips,
            };
            pods.insert(key_of(&p.metadata), entry);
        }
        let waypoints = waypoints::waypoints(&gateways, &members, &mut fixed_skips);
        let namespaces = objects
            .namespaces
            .iter()
            .filter_map(|ns| workloads::namespace(ns, &gateways, &mut fixed_skips))
            .collect();
        let mut nodes = BTreeMap::new();
        let placed = pods
            .values()
            .filter_map(|e| e.value.as_ref())
            .map(|p| &p.node);
        let waypoint_nodes = waypoints.iter().map(|w| &w.node).filter(|n| !n.is_empty());
        for node in placed.chain(waypoint_nodes) {
            *nodes.entry(node.clone()).or_insert(0) += 1;
        }
        let slices: BTreeMap<ObjectKey, Arc<EndpointSlice>> = objects
            .endpoint_slices
            .iter()
            .map(|s| (key_of(&s.metadata), s.clone()))
            .collect();
        let mut slice_addresses = BTreeMap::new();
        for slice in slices.values() {
            count_addresses(&mut slice_addresses, slice, 1);
        }
        let mut c = Converted {
            trust_domain: trust_domain.into(),
            gateways,
            namespaces,
            waypoints,
            fixed_skips,
            pods,
            waypoint_pods,
            services: Services::new(),
            slices,
            slice_addresses,
            policies: Policies::new(),
            routes: Whole::default(),
            traffic_policies: Whole::default(),
            nodes,
        };
        let by_ip: BTreeMap<IpAddr, ObjectKey> = c
            .pods
            .iter()
            .filter_map(|(k, e)| Some((k, e.value.as_ref()?)))
            .flat_map(|(k, p)| p.addresses.iter().map(move |ip| (*ip, k.clone())))
            .collect();
        let slices = Slices::new(c.slices.values(), |ip| by_ip.get(&ip).cloned());
        for s in &objects.services {
            let entry = c.service(s.clone(), &slices);
            c.services.insert(key_of(&s.metadata), entry);
        }
        for p in &objects.policies {
            c.policies.insert(key_of(&p.metadata), policy(p.clone()));
        }
        c.convert_routes(objects);
        c.convert_traffic_policies(objects);
        c
    }

    fn service(
        &self,
        s: Arc<core::Service>,
        slices: &Slices,
    ) -> Entry<core::Service, model::Service> {
        let context = workloads::ServiceContext {
            pods: &self.pods,
            waypoints: &self.gateways,
            slices,
        };
        let mut skips = Vec::new();
        let value = workloads::service(&s, &context, &mut skips);
        Entry {
            source: s,
            value,
            skips,
        }
    }

    fn service_values(&self) -> impl Iterator<Item = &model::Service> {
        self.services.values().filter_map(|e| e.value.as_ref())
    }

    fn convert_routes(&mut self, objects: &Objects) {
        let context = crate::source::routes::RouteContext::new(
            &self.namespaces,
            self.service_values(),
            &self.gateways,
            &self.trust_domain,
        );
        let mut whole = Whole::default();
        let mut http_names = BTreeSet::new();
        for r in &objects.http_routes {
            if let Some(route) = routes::http_route(r, &context, &mut whole.skips) {
                http_names.insert((route.namespace.clone(), route.name.clone()));
                whole.values.push(route);
            }
        }
        for r in &objects.grpc_routes {
            if let Some(route) = routes::grpc_route(r, &context, &http_names, &mut whole.skips) {
                whole.values.push(route);
            }
        }
        self.routes = whole;
    }

    fn convert_traffic_policies(&mut self, objects: &Objects) {
        let context = crate::source::traffic::TrafficContext::new(
            &self.namespaces,
            self.service_values(),
            &self.trust_domain,
        );
        let mut skips = Vec::new();
        let values = traffic::traffic_policies(&objects.traffic_policies, &context, &mut skips);
        self.traffic_policies = Whole { values, skips };
    }

    /// The model's input: everything converted.
    pub fn input(&self) -> Input {
        let mut input = Input {
            nodes: self.nodes.keys().cloned().collect(),
            namespaces: self.namespaces.clone(),
            pods: values(&self.pods).into_values().cloned().collect(),
            services: values(&self.services).into_values().cloned().collect(),
            waypoints: self.waypoints.clone(),
            policies: values(&self.policies).into_values().cloned().collect(),
            routes: self.routes.values.clone(),
            traffic_policies: self.traffic_policies.values.clone(),
            skips: self.skips().cloned().collect(),
        };
        input.skips.sort();
        input.skips.dedup();
        input
    }

    /// Everything said of the objects.
    pub fn skips(&self) -> impl Iterator<Item = &Skip> {
        let pods = self.pods.values().flat_map(|e| &e.skips);
        let services = self.services.values().flat_map(|e| &e.skips);
        let policies = self.policies.values().flat_map(|e| &e.skips);
        self.fixed_skips
            .iter()
            .chain(pods)
            .chain(services)
            .chain(policies)
            .chain(&self.routes.skips)
            .chain(&self.traffic_policies.skips)
    }

    /// What turns the model of `self` into that of `new`, a full conversion of the cluster
    /// since; `None` when namespaces or waypoints differ (the model is then built whole).
    pub fn edits_to(&self, new: &Converted) -> Option<Vec<Edit>> {
        if self.namespaces != new.namespaces || self.waypoints != new.waypoints {
            return None;
        }
        let mut edits = Vec::new();
        node_edits(self.nodes.keys(), new.nodes.keys(), &mut edits);
        entry_edits(&self.pods, &new.pods, &mut edits);
        entry_edits(&self.services, &new.services, &mut edits);
        entry_edits(&self.policies, &new.policies, &mut edits);
        whole_edits(&self.routes, &new.routes, &mut edits);
        whole_edits(&self.traffic_policies, &new.traffic_policies, &mut edits);
        Some(edits)
    }

    /// Whether `changed` reaches across the cluster: see the module's documentation.
    fn reaches_across(&self, changed: &Changed, now: &dyn Lookup) -> bool {
        if changed.everything {
            return true;
        }
        let slices_now: Vec<Arc<EndpointSlice>> = changed
            .endpoint_slices
            .iter()
            .filter_map(|key| now.endpoint_slice(key))
            .collect();
        let listed = |ip: &IpAddr| {
            self.slice_addresses.contains_key(ip)
                || slices_now
                    .iter()
                    .any(|s| unreferenced_addresses(s).any(|a| a == *ip))
        };
        changed.pods.iter().any(|key| {
            let new = now.pod(key);
            let was = self.pods.get(key).and_then(|e| e.value.as_ref());
            let old_addresses = was.into_iter().flat_map(|p| &p.addresses);
            let new_addresses = new
                .iter()
                .flat_map(|p| p.status.as_ref().map(workloads::pod_ips));
            self.waypoint_pods.contains(key)
                || new.as_ref().is_some_and(|p| {
                    waypoints::gateway_of(p, &self.gateways, &mut Vec::new()).is_some()
                })
                || old_addresses.into_iter().any(listed)
                || new_addresses.flatten().any(|ip| listed(&ip))
        })
    }

    /// Converts what `changed` names again, given the objects as they are now and the model
    /// made of this conversion; `None` (and `self` untouched) when the change reaches across
    /// the cluster and everything must be converted again.
    pub fn update(
        &mut self,
        changed: &Changed,
        now: &dyn Lookup,
        model: &MeshModel,
    ) -> Option<Update> {
        if self.reaches_across(changed, now) {
            return None;
        }
        let mut out = Update::default();
        let mut slice_namespaces = BTreeSet::new();
        for key in &changed.endpoint_slices {
            if let Some(old) = self.slices.remove(key) {
                count_addresses(&mut self.slice_addresses, &old, -1);
            }
            if let Some(new) = now.endpoint_slice(key) {
                count_addresses(&mut self.slice_addresses, &new, 1);
                self.slices.insert(key.clone(), new);
            }
            slice_namespaces.insert(key.namespace.clone());
        }
        let mut nodes = BTreeMap::new();
        let mut pod_namespaces = BTreeSet::new();
        for key in &changed.pods {
            let mut skips = Vec::new();
            let new = match now.pod(key) {
                Some(p) => Some(Entry {
                    value: workloads::pod(&p, &self.gateways, &mut skips),
                    source: p,
                    skips,
                }),
                None => None,
            };
            let (old, changed) = replace(&mut self.pods, key, new, &mut out);
            if changed {
                let is = self.pods.get(key).and_then(|e| e.value.as_ref());
                let was = old.as_ref().and_then(|e| e.value.as_ref());
                for (pod, step) in [(was, -1), (is, 1)] {
                    if let Some(p) = pod {
                        *nodes.entry(p.node.clone()).or_insert(0) += step;
                    }
                }
            }
            // Its containers may differ even when its value does not.
            pod_namespaces.insert(key.namespace.clone());
        }
        self.count_nodes(nodes, &mut out.edits);

        // The services whose conversion looks at what changed besides themselves.
        let mut services = changed.services.clone();
        for ns in &pod_namespaces {
            let named = in_namespace(&self.services, ns).filter(|(_, e)| has_named_port(&e.source));
            services.extend(named.map(|(k, _)| k.clone()));
        }
        for ns in &slice_namespaces {
            let listed = in_namespace(&self.services, ns).filter(|(_, e)| no_selector(&e.source));
            services.extend(listed.map(|(k, _)| k.clone()));
        }
        let by_ip = |ip: IpAddr| match model.at_address(ip)? {
            model::Addressed::Workload(w) => Some(w.key()),
            _ => None,
        };
        let mut services_changed = false;
        let mut slices_of: BTreeMap<String, Slices> = BTreeMap::new();
        for key in &services {
            let new = now.service(key).map(|s| {
                let slices = slices_of.entry(key.namespace.clone()).or_insert_with(|| {
                    Slices::new(
                        in_namespace(&self.slices, &key.namespace).map(|(_, s)| s),
                        by_ip,
                    )
                });
                self.service(s, slices)
            });
            services_changed |= replace(&mut self.services, key, new, &mut out).1;
        }

        for key in &changed.policies {
            let new = now.policy(key).map(policy);
            replace(&mut self.policies, key, new, &mut out);
        }

        // A service that comes, goes or changes ports may make a route or traffic policy
        // valid or not; with none in the cluster there is nothing to look at.
        let routes = changed.routes || (services_changed && self.has_routes());
        let traffic = changed.traffic_policies || (services_changed && self.has_traffic());
        if routes || traffic {
            let objects = now.routes_and_traffic_policies();
            if routes {
                let old = std::mem::take(&mut self.routes);
                self.convert_routes(&objects);
                whole_edits(&old, &self.routes, &mut out.edits);
                out.compare(&old.skips, &self.routes.skips);
            }
            if traffic {
                let old = std::mem::take(&mut self.traffic_policies);
                self.convert_traffic_policies(&objects);
                whole_edits(&old, &self.traffic_policies, &mut out.edits);
                out.compare(&old.skips, &self.traffic_policies.skips);
            }
        }
        Some(out)
    }

    /// Whether a route was converted last time, or refused (it may be valid with a service
    /// that comes).
    fn has_routes(&self) -> bool {
        !self.routes.values.is_empty() || !self.routes.skips.is_empty()
    }

    fn has_traffic(&self) -> bool {
        !self.traffic_policies.values.is_empty() || !self.traffic_policies.skips.is_empty()
    }

    /// Node edits for pods that moved by `steps` (pods placed minus pods gone, per node).
    fn count_nodes(&mut self, steps: BTreeMap<String, i64>, edits: &mut Vec<Edit>) {
        for (node, step) in steps.into_iter().filter(|(_, s)| *s != 0) {
            let count = self.nodes.entry(node.clone()).or_insert(0);
            let before = *count;
            *count = usize::try_from(before as i64 + step).unwrap_or(0);
            match (before, *count) {
                (0, n) if n > 0 => edits.push(Edit::Node(Node {
                    name: node,
                    bootstrap_token: None,
                })),
                (b, 0) if b > 0 => {
                    self.nodes.remove(&node);
                    edits.push(Edit::RemoveNode(node));
                }
                _ => {}
            }
        }
    }
}

fn policy(
    p: Arc<crd::AuthorizationPolicy>,
) -> Entry<crd::AuthorizationPolicy, model::AuthorizationPolicy> {
    let mut skips = Vec::new();
    let value = policies::policy(&p, &mut skips);
    Entry {
        source: p,
        value,
        skips,
    }
}

/// What is said of an object converted again, against what was.
fn said<K, T>(old: Option<&Entry<K, T>>, new: Option<&Entry<K, T>>, out: &mut Update) {
    let before: &[Skip] = old.map_or(&[], |e| &e.skips);
    let now: &[Skip] = new.map_or(&[], |e| &e.skips);
    out.compare(before, now);
}

impl Update {
    fn compare(&mut self, before: &[Skip], now: &[Skip]) {
        let new = now.iter().filter(|s| !before.contains(s));
        self.new_skips.extend(new.cloned());
        let gone = before.iter().filter(|s| !now.contains(s));
        self.gone_skips.extend(gone.cloned());
    }
}

fn has_named_port(s: &core::Service) -> bool {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let ports = s.spec.iter().flat_map(|spec| spec.ports.iter().flatten());
    ports
        .filter_map(|p| p.target_port.as_ref())
        .any(|t| matches!(t, IntOrString::String(named) if named.parse::<u16>().is_err()))
}

fn no_selector(s: &core::Service) -> bool {
    s.spec
        .as_ref()
        .and_then(|spec| spec.selector.as_ref())
        .is_none_or(|selector| selector.is_empty())
}

fn count_addresses(counts: &mut BTreeMap<IpAddr, usize>, slice: &EndpointSlice, step: isize) {
    for ip in unreferenced_addresses(slice) {
        let count = counts.entry(ip).or_insert(0);
        *count = count.saturating_add_signed(step);
        if *count == 0 {
            counts.remove(&ip);
        }
    }
}

/// The converted objects of a map, by key.
fn values<K, T>(map: &BTreeMap<ObjectKey, Entry<K, T>>) -> BTreeMap<&ObjectKey, &T> {
    map.iter()
        .filter_map(|(k, e)| Some((k, e.value.as_ref()?)))
        .collect()
}

fn node_edits<'a>(
    old: impl Iterator<Item = &'a String>,
    new: impl Iterator<Item = &'a String>,
    edits: &mut Vec<Edit>,
) {
    let old: BTreeSet<&String> = old.collect();
    let new: BTreeSet<&String> = new.collect();
    edits.extend(new.difference(&old).map(|n| {
        Edit::Node(Node {
            name: (*n).clone(),
            bootstrap_token: None,
        })
    }));
    edits.extend(old.difference(&new).map(|n| Edit::RemoveNode((*n).clone())));
}

/// Puts `new` in place of the entry at `key` (removes it, when `None`), with the edit when
/// the model's value changed and what is said now; returns the entry replaced and whether
/// the value changed.
fn replace<K, T: Edited>(
    map: &mut BTreeMap<ObjectKey, Entry<K, T>>,
    key: &ObjectKey,
    new: Option<Entry<K, T>>,
    out: &mut Update,
) -> (Option<Entry<K, T>>, bool) {
    let old = map.remove(key);
    let was = old.as_ref().and_then(|e| e.value.as_ref());
    let is = new.as_ref().and_then(|e| e.value.as_ref());
    let changed = was != is;
    if changed {
        out.edits.push(match is {
            Some(value) => value.clone().put(),
            None => T::remove(key.clone()),
        });
    }
    said(old.as_ref(), new.as_ref(), out);
    if let Some(new) = new {
        map.insert(key.clone(), new);
    }
    (old, changed)
}

/// Edits between two conversions of a kind converted object by object.
fn entry_edits<K, T: Edited>(
    old: &BTreeMap<ObjectKey, Entry<K, T>>,
    new: &BTreeMap<ObjectKey, Entry<K, T>>,
    edits: &mut Vec<Edit>,
) {
    keyed_edits(
        &values(old),
        &values(new),
        |v| v.clone().put(),
        T::remove,
        edits,
    );
}

/// Edits between two conversions of a kind converted whole.
fn whole_edits<T: Edited>(old: &Whole<T>, new: &Whole<T>, edits: &mut Vec<Edit>) {
    fn keyed<T: Edited>(w: &Whole<T>) -> BTreeMap<ObjectKey, &T> {
        w.values.iter().map(|v| (v.key(), v)).collect()
    }
    keyed_edits(
        &keyed(old),
        &keyed(new),
        |v| v.clone().put(),
        T::remove,
        edits,
    );
}
