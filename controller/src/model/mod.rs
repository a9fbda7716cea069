//! The one mesh model: what runs where, what is meshed, which services and policies apply. Sources
//! (the mesh file, Kubernetes) describe the mesh with the input types here and
//! [`MeshBuilder`] turns that into a checked [`MeshModel`]; the push and the CA only ever read a
//! model. A model is immutable: a change is a new model, so readers never see half an update.
//! A source with one object changed makes that new model with [`MeshModel::apply`], which shares
//! everything else with the old one (the maps are persistent) and records what it changed
//! ([`MeshModel::changes_since`]) for the snapshot to re-resolve only that.

mod apply;
mod build;
mod convert;
mod egress_scope;
mod enforcement;
mod error;
mod lineage;
mod mtls;
mod policy_mode;
mod rules;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ambit_proto::api::{route, security, traffic};
use ambit_proto::identity::SpiffeId;
use imbl::{OrdMap, OrdSet};

pub use apply::Edit;
#[cfg(test)]
pub(crate) use apply::tests as random_edits;
pub(crate) use apply::{Edited, Named};
pub use build::MeshBuilder;
pub(crate) use build::keyed_edits;
pub use egress_scope::{EGRESS_SCOPE_ANNOTATION, EgressHost, EgressScope, EgressScopeError};
pub use enforcement::{UnenforcedL7, l7_fields};
pub use error::{Kind, ModelError, ResourceRef};
pub use lineage::Changes;
pub use mtls::{MTLS_MODE_LABEL, MtlsMode, MtlsModeError};
pub use policy_mode::{POLICY_MODE_LABEL, PolicyMode, PolicyModeError};
pub use rules::{
    SOURCE_NAMESPACE, SOURCE_PRINCIPAL, check_condition, check_header_name, check_ip_block,
    check_policy_host, check_principal,
};

pub use ambit_proto::enrolment::{
    DATAPLANE_MODE_AMBIENT, DATAPLANE_MODE_LABEL, DATAPLANE_MODE_NONE,
};
/// Namespace, service or pod label naming the waypoint (in the same namespace) that traffic goes
/// through; on a service, [`WAYPOINT_NONE`] opts it out of its namespace's waypoint.
pub const USE_WAYPOINT_LABEL: &str = "ambit.io/use-waypoint";
pub const WAYPOINT_NONE: &str = "none";

pub type Labels = BTreeMap<String, String>;

/// Each service with the waypoint it asks for by label: its own [`USE_WAYPOINT_LABEL`], else its
/// namespace's; `None` when neither names one or the service opts out with [`WAYPOINT_NONE`].
/// (Whether that waypoint exists is the model builder's check.)
pub fn requested_waypoints<'a>(
    namespaces: &'a [Namespace],
    services: impl IntoIterator<Item = &'a Service, IntoIter: 'a>,
) -> impl Iterator<Item = (&'a Service, Option<&'a str>)> {
    let by_namespace: BTreeMap<&str, &str> = namespaces
        .iter()
        .filter_map(|ns| {
            Some((
                ns.name.as_str(),
                ns.labels.get(USE_WAYPOINT_LABEL)?.as_str(),
            ))
        })
        .collect();
    services.into_iter().map(move |s| {
        let waypoint = match s.labels.get(USE_WAYPOINT_LABEL) {
            Some(own) => Some(own.as_str()),
            None => by_namespace.get(s.namespace.as_str()).copied(),
        };
        (s, waypoint.filter(|w| *w != WAYPOINT_NONE))
    })
}

/// `<namespace>/<name>`: how namespaced objects are named throughout the controller.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// Shared secret a node's proxies present to the CA. `None`: the node gets no certificates.
    pub bootstrap_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
    /// What its meshed pods may connect to, when it declares that.
    pub egress_scope: Option<EgressScope>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub node: String,
    /// Empty only for a pod whose network is still being set up (see
    /// [`MeshBuilder::allow_unaddressed_pods`]): nothing can reach it yet.
    pub addresses: Vec<IpAddr>,
    pub labels: Labels,
    pub healthy: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppProtocol {
    Tcp,
    Http,
    Http2,
    Grpc,
}

impl AppProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            AppProtocol::Tcp => "tcp",
            AppProtocol::Http => "http",
            AppProtocol::Http2 => "http2",
            AppProtocol::Grpc => "grpc",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    pub target_port: u16,
    pub app_protocol: AppProtocol,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// Pods in the service's namespace whose labels include all of these are its endpoints. Empty
    /// means no computed endpoints (as a Kubernetes service without selector), not every pod of
    /// the namespace, which nobody means.
    pub selector: Labels,
    /// The endpoints of a service without selector, given outright (in Kubernetes: from its
    /// EndpointSlices). Ignored when `selector` is set, so a source cannot give two answers. Pods
    /// the model does not hold are left out: a source may list an endpoint whose pod the model
    /// rejected.
    pub explicit_endpoints: Vec<ObjectKey>,
    pub labels: Labels,
}

/// An L7 proxy deployed for a namespace; it is a process of its own (not a meshed pod), reached
/// over HBONE on its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waypoint {
    pub name: String,
    pub namespace: String,
    /// The node whose token speaks for the waypoint (its certificate and subscription, for a
    /// mesh file's waypoints). Empty: no node does, as for a Kubernetes waypoint with no pod yet
    /// (see [`MeshBuilder::allow_pending_waypoints`]).
    pub node: String,
    pub service_account: String,
    /// Where it serves. Empty only for a pending waypoint: nothing is ready to serve, and the
    /// traffic of whatever uses it fails rather than going around its policies.
    pub addresses: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuthorizationPolicy {
    pub name: String,
    pub namespace: String,
    /// Pods of the namespace whose labels include all of these; empty selects the whole namespace.
    pub selector: Labels,
    pub action: security::Action,
    /// Kept in their wire form: the controller only checks them, the proxies evaluate them.
    pub rules: Vec<security::Rule>,
    /// Observer mode (see [`PolicyMode`]): set by the model from the namespace's mode.
    pub dry_run: bool,
}

/// L7 routes (HTTPRoutes and GRPCRoutes, one name space per namespace) are consumed only by
/// waypoints and carry no derived state, so the model keeps them in their wire form after
/// checking that their namespace, parent services and backends exist.
pub type Route = route::Route;

/// Circuit breaking, outlier ejection and connection pool for one service's upstream, applied by
/// the waypoints that send to it. Kept in wire form, as routes are, once its namespace and target
/// service are checked; its target is the service's hostname (see [`service_hostname`]).
pub type TrafficPolicy = traffic::TrafficPolicy;

/// The services a route names, by hostname (`<name>.<namespace>.svc.<trust domain>`; see
/// [`MeshModel::service_by_hostname`]).
pub trait RouteServices {
    /// The services whose traffic the route governs (its parents), each once.
    fn parent_services(&self) -> impl Iterator<Item = &str>;
    /// The services its rules send requests to, each once.
    fn backend_services(&self) -> impl Iterator<Item = &str>;
}

impl RouteServices for Route {
    fn parent_services(&self) -> impl Iterator<Item = &str> {
        let set: std::collections::BTreeSet<&str> =
            self.parents.iter().map(|p| p.service.as_str()).collect();
        set.into_iter()
    }

    fn backend_services(&self) -> impl Iterator<Item = &str> {
        let set: std::collections::BTreeSet<&str> = self
            .rules
            .iter()
            .flat_map(|r| &r.backends)
            .map(|b| b.service.as_str())
            .collect();
        set.into_iter()
    }
}

/// A pod as the mesh sees it: the pod plus what follows from its namespace and labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub pod: Pod,
    pub uid: String,
    pub identity: SpiffeId,
    /// Traffic to and from it goes through ztunnel (its namespace opted in, it did not opt out).
    pub meshed: bool,
    pub waypoint: Option<ObjectKey>,
    /// Its namespace's mode, else the mesh-wide one; always permissive outside the mesh, where
    /// no ztunnel receives its traffic to refuse anything.
    pub mtls_mode: MtlsMode,
}

impl Workload {
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(&self.pod.namespace, &self.pod.name)
    }
}

/// A service plus its computed endpoints and waypoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceEntry {
    pub service: Service,
    /// Endpoint workloads, sorted.
    pub endpoints: Vec<ObjectKey>,
    pub waypoint: Option<ObjectKey>,
}

impl ServiceEntry {
    pub fn hostname(&self, trust_domain: &str) -> String {
        service_hostname(&self.service.name, &self.service.namespace, trust_domain)
    }
}

/// `<name>.<namespace>.svc.<trust domain>`, the name routes and telemetry use for a service.
pub fn service_hostname(name: &str, namespace: &str, trust_domain: &str) -> String {
    format!("{name}.{namespace}.svc.{trust_domain}")
}

/// Does a label set contain every pair of a selector?
pub fn selects(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// What holds an address: see [`MeshModel::at_address`].
pub enum Addressed<'a> {
    Workload(&'a Workload),
    Service(&'a ServiceEntry),
}

/// The entries of a map keyed by [`ObjectKey`] in one namespace: keys sort by namespace first, so
/// this is a range, not a scan of the whole mesh.
fn in_namespace<'a, T>(
    map: &'a OrdMap<ObjectKey, T>,
    namespace: &'a str,
) -> impl Iterator<Item = &'a T> + 'a {
    map.range(ObjectKey::new(namespace, "")..)
        .take_while(move |(k, _)| k.namespace == namespace)
        .map(|(_, v)| v)
}

pub type KeyedIter<'a, T> =
    imbl::ordmap::Iter<'a, ObjectKey, T, imbl::shared_ptr::DefaultSharedPtr>;

/// See [`MeshModel::keyed`].
pub struct Keyed<'a> {
    pub workloads: KeyedIter<'a, Workload>,
    pub services: KeyedIter<'a, ServiceEntry>,
    pub waypoints: KeyedIter<'a, Waypoint>,
    pub policies: KeyedIter<'a, AuthorizationPolicy>,
    pub routes: KeyedIter<'a, Route>,
    pub traffic_policies: KeyedIter<'a, TrafficPolicy>,
}

/// A checked, indexed mesh. Built only by [`MeshBuilder`] (or from a built one by
/// [`MeshModel::apply`]), so every reference in it resolves. Equal models hold the same objects,
/// whichever way they were made (and with whatever [`MeshBuilder`] settings: those are in the
/// objects already).
#[derive(Debug, Clone)]
pub struct MeshModel {
    trust_domain: String,
    cluster_id: String,
    settings: build::Settings,
    nodes: OrdMap<String, Node>,
    namespaces: OrdMap<String, Namespace>,
    workloads: OrdMap<ObjectKey, Workload>,
    services: OrdMap<ObjectKey, ServiceEntry>,
    waypoints: OrdMap<ObjectKey, Waypoint>,
    policies: OrdMap<ObjectKey, AuthorizationPolicy>,
    routes: OrdMap<ObjectKey, Route>,
    traffic_policies: OrdMap<ObjectKey, TrafficPolicy>,
    /// The traffic policy of each service that has one, by the service's hostname (one each).
    traffic_by_target: OrdMap<String, ObjectKey>,
    workloads_by_node: OrdMap<String, OrdSet<ObjectKey>>,
    /// For each pod a selector-less service lists as an endpoint, those services: a pod's
    /// change refreshes them without a scan of every service.
    explicit_users: OrdMap<ObjectKey, OrdSet<ObjectKey>>,
    /// Which object holds each address (pod IP, service VIP, waypoint address): an address
    /// is one object's, and a change that claims a taken one is refused.
    addresses: OrdMap<IpAddr, ResourceRef>,
    /// Not content: which model this one was applied to, and what that changed.
    lineage: lineage::Lineage,
}

impl PartialEq for MeshModel {
    fn eq(&self, other: &Self) -> bool {
        self.trust_domain == other.trust_domain
            && self.cluster_id == other.cluster_id
            && self.nodes == other.nodes
            && self.namespaces == other.namespaces
            && self.workloads == other.workloads
            && self.services == other.services
            && self.waypoints == other.waypoints
            && self.policies == other.policies
            && self.routes == other.routes
            && self.traffic_policies == other.traffic_policies
            && self.traffic_by_target == other.traffic_by_target
            && self.workloads_by_node == other.workloads_by_node
            && self.explicit_users == other.explicit_users
            && self.addresses == other.addresses
    }
}

/// How many objects of each kind a model holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub workloads: usize,
    pub services: usize,
    pub waypoints: usize,
    pub policies: usize,
    pub routes: usize,
    pub traffic_policies: usize,
}

impl MeshModel {
    /// Without a walk of the model: a source logs them on every change.
    pub fn counts(&self) -> Counts {
        Counts {
            workloads: self.workloads.len(),
            services: self.services.len(),
            waypoints: self.waypoints.len(),
            policies: self.policies.len(),
            routes: self.routes.len(),
            traffic_policies: self.traffic_policies.len(),
        }
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name)
    }

    pub fn namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.namespaces.values()
    }

    /// The egress scope `namespace` declares, if it declares one.
    pub fn egress_scope(&self, namespace: &str) -> Option<&EgressScope> {
        self.namespaces.get(namespace)?.egress_scope.as_ref()
    }

    pub fn workloads(&self) -> impl Iterator<Item = &Workload> {
        self.workloads.values()
    }

    pub fn workload(&self, key: &ObjectKey) -> Option<&Workload> {
        self.workloads.get(key)
    }

    pub fn workloads_in<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a Workload> + 'a {
        in_namespace(&self.workloads, namespace)
    }

    pub fn workloads_on_node<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Workload> + 'a {
        self.workloads_by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|key| self.workloads.get(key))
    }

    pub fn services(&self) -> impl Iterator<Item = &ServiceEntry> {
        self.services.values()
    }

    pub fn services_in<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a ServiceEntry> + 'a {
        in_namespace(&self.services, namespace)
    }

    pub fn service(&self, key: &ObjectKey) -> Option<&ServiceEntry> {
        self.services.get(key)
    }

    pub fn waypoints(&self) -> impl Iterator<Item = &Waypoint> {
        self.waypoints.values()
    }

    pub fn waypoint(&self, key: &ObjectKey) -> Option<&Waypoint> {
        self.waypoints.get(key)
    }

    pub fn policies(&self) -> impl Iterator<Item = &AuthorizationPolicy> {
        self.policies.values()
    }

    pub fn policies_in<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a AuthorizationPolicy> + 'a {
        in_namespace(&self.policies, namespace)
    }

    pub fn policy(&self, key: &ObjectKey) -> Option<&AuthorizationPolicy> {
        self.policies.get(key)
    }

    pub fn route(&self, key: &ObjectKey) -> Option<&Route> {
        self.routes.get(key)
    }

    pub fn traffic_policy(&self, key: &ObjectKey) -> Option<&TrafficPolicy> {
        self.traffic_policies.get(key)
    }

    /// Whether the workload is an endpoint of any service.
    pub fn is_endpoint(&self, key: &ObjectKey) -> bool {
        self.services_backed_by(key).next().is_some()
    }

    /// The services the workload is an endpoint of: those with a selector in its own
    /// namespace, and the selector-less ones that list it outright.
    pub fn services_backed_by<'a>(
        &'a self,
        key: &'a ObjectKey,
    ) -> impl Iterator<Item = &'a ServiceEntry> + 'a {
        let has = move |s: &&ServiceEntry| s.endpoints.binary_search(key).is_ok();
        let listed = self
            .explicit_users
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|s| self.services.get(s));
        let selecting =
            in_namespace(&self.services, &key.namespace).filter(|s| !s.service.selector.is_empty());
        listed.chain(selecting).filter(has)
    }

    /// The workload or the service (by one of its VIPs) at `ip`; `None` for an address the
    /// mesh does not know, or a waypoint's. The model keeps who holds each address as it
    /// changes, so a lookup needs no index of its own per model.
    pub fn at_address(&self, ip: IpAddr) -> Option<Addressed<'_>> {
        let holder = self.addresses.get(&ip)?;
        let (namespace, name) = holder.name.split_once('/')?;
        let key = ObjectKey::new(namespace, name);
        match holder.kind {
            Kind::Pod => self.workloads.get(&key).map(Addressed::Workload),
            Kind::Service => self.services.get(&key).map(Addressed::Service),
            _ => None,
        }
    }

    pub fn routes_in<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a Route> + 'a {
        in_namespace(&self.routes, namespace)
    }

    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.values()
    }

    pub fn traffic_policies(&self) -> impl Iterator<Item = &TrafficPolicy> {
        self.traffic_policies.values()
    }

    /// The traffic policy of the service with this hostname, if it has one.
    pub fn traffic_policy_for(&self, hostname: &str) -> Option<&TrafficPolicy> {
        self.traffic_policies
            .get(self.traffic_by_target.get(hostname)?)
    }

    /// Every object of each kind with its key, in key order: for walking two models side by side.
    pub fn keyed(&self) -> Keyed<'_> {
        Keyed {
            workloads: self.workloads.iter(),
            services: self.services.iter(),
            waypoints: self.waypoints.iter(),
            policies: self.policies.iter(),
            routes: self.routes.iter(),
            traffic_policies: self.traffic_policies.iter(),
        }
    }

    /// Does `policy` apply to `workload`? Policies select pods of their own namespace only.
    pub fn policy_selects(policy: &AuthorizationPolicy, workload: &Workload) -> bool {
        policy.namespace == workload.pod.namespace
            && selects(&policy.selector, &workload.pod.labels)
    }

    /// The service with this hostname (`<name>.<namespace>.svc.<trust domain>`).
    pub fn service_by_hostname(&self, hostname: &str) -> Option<&ServiceEntry> {
        let suffix = format!(".svc.{}", self.trust_domain);
        let (name, namespace) = hostname.strip_suffix(&suffix)?.split_once('.')?;
        self.services.get(&ObjectKey::new(namespace, name))
    }

    /// The node whose bootstrap token this is. Compares every token in constant time, so timing
    /// does not reveal how much of a guess was right.
    pub fn node_by_token(&self, token: &str) -> Option<&Node> {
        let mut found = None;
        for node in self.nodes.values() {
            if let Some(expected) = &node.bootstrap_token
                && constant_time_eq(expected.as_bytes(), token.as_bytes())
            {
                found = Some(node);
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests;
