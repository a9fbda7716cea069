//! Checks a mesh description and derives what follows from it: which pods are meshed, each
//! service's endpoints, who uses which waypoint. Each object is checked and derived by one
//! function of [`Checker`] that the full build and [`super::apply`] share, so an object applied
//! on its own ends up exactly as a full build of the same mesh makes it.

use std::collections::HashSet;
use std::net::IpAddr;

use ambit_proto::identity::SpiffeId;
use imbl::OrdMap;

use super::lineage::Lineage;
use super::rules;
use super::*;

mod diff;
mod namespaces;

pub(crate) use diff::keyed_edits;

/// Collects a mesh description; [`MeshBuilder::build`] checks it as a whole and reports every
/// problem at once, so a human fixing a file sees them all in one go.
#[derive(Debug, Clone)]
pub struct MeshBuilder {
    trust_domain: String,
    cluster_id: String,
    nodes: Vec<Node>,
    namespaces: Vec<Namespace>,
    pods: Vec<Pod>,
    services: Vec<Service>,
    waypoints: Vec<Waypoint>,
    policies: Vec<AuthorizationPolicy>,
    routes: Vec<Route>,
    traffic_policies: Vec<TrafficPolicy>,
    settings: Settings,
}

/// How a model checks and derives its objects, beyond the objects themselves: kept in the model
/// so that a change applied later is checked as the first build checked everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Settings {
    pub(super) pending_waypoints: bool,
    pub(super) unaddressed_pods: bool,
    pub(super) mtls_mode: MtlsMode,
    pub(super) policy_mode: PolicyMode,
}

impl MeshBuilder {
    /// `cluster_id` prefixes workload uids (`<cluster>//Pod/<namespace>/<name>`), keeping them
    /// unique should several sources ever feed one mesh.
    pub fn new(trust_domain: impl Into<String>, cluster_id: impl Into<String>) -> Self {
        MeshBuilder {
            trust_domain: trust_domain.into(),
            cluster_id: cluster_id.into(),
            nodes: Vec::new(),
            namespaces: Vec::new(),
            pods: Vec::new(),
            services: Vec::new(),
            waypoints: Vec::new(),
            policies: Vec::new(),
            routes: Vec::new(),
            traffic_policies: Vec::new(),
            settings: Settings::default(),
        }
    }

    /// Accepts waypoints that are declared but not (all) running: no address (nothing ready to
    /// serve) and an empty node (no pod anywhere yet). A Kubernetes waypoint must be in the model
    /// before its pods are Ready, since they become Ready only once the CA and discovery, which
    /// both require the model's waypoint, have served them. A mesh file does not call this: a
    /// human wrote its waypoints, and one without address or node there is a mistake.
    pub fn allow_pending_waypoints(&mut self) -> &mut Self {
        self.settings.pending_waypoints = true;
        self
    }

    /// Accepts pods scheduled on a node that have no IP yet. On Kubernetes the CNI plugin hands
    /// a pod to its node's ztunnel while the pod's network is being set up, before the API
    /// knows its IP, and ztunnel captures only workloads its config holds (and the CA signs
    /// only for identities that run on the caller's node). A mesh file does not call this:
    /// every pod there has its addresses.
    pub fn allow_unaddressed_pods(&mut self) -> &mut Self {
        self.settings.unaddressed_pods = true;
        self
    }

    /// The mode of meshed workloads whose namespace has no [`MTLS_MODE_LABEL`] (default
    /// permissive, as Istio's).
    pub fn mtls_mode(&mut self, mode: MtlsMode) -> &mut Self {
        self.settings.mtls_mode = mode;
        self
    }

    /// The mode of the policies of namespaces without a [`POLICY_MODE_LABEL`] (default
    /// enforce).
    pub fn policy_mode(&mut self, mode: PolicyMode) -> &mut Self {
        self.settings.policy_mode = mode;
        self
    }

    pub fn node(&mut self, node: Node) -> &mut Self {
        self.nodes.push(node);
        self
    }

    pub fn namespace(&mut self, namespace: Namespace) -> &mut Self {
        self.namespaces.push(namespace);
        self
    }

    pub fn pod(&mut self, pod: Pod) -> &mut Self {
        self.pods.push(pod);
        self
    }

    pub fn service(&mut self, service: Service) -> &mut Self {
        self.services.push(service);
        self
    }

    pub fn waypoint(&mut self, waypoint: Waypoint) -> &mut Self {
        self.waypoints.push(waypoint);
        self
    }

    pub fn policy(&mut self, policy: AuthorizationPolicy) -> &mut Self {
        self.policies.push(policy);
        self
    }

    pub fn route(&mut self, route: Route) -> &mut Self {
        self.routes.push(route);
        self
    }

    pub fn traffic_policy(&mut self, policy: TrafficPolicy) -> &mut Self {
        self.traffic_policies.push(policy);
        self
    }

    /// The checked model, or every problem found (in declaration order, kind by kind).
    pub fn build(self) -> Result<MeshModel, Vec<ModelError>> {
        if let Err(source) = SpiffeId::new(&self.trust_domain, "ns", "sa") {
            return Err(vec![ModelError::InvalidTrustDomain {
                trust_domain: self.trust_domain,
                source,
            }]);
        }
        let mut m = MeshModel {
            trust_domain: self.trust_domain,
            cluster_id: self.cluster_id,
            settings: self.settings,
            nodes: OrdMap::new(),
            namespaces: OrdMap::new(),
            workloads: OrdMap::new(),
            services: OrdMap::new(),
            waypoints: OrdMap::new(),
            policies: OrdMap::new(),
            routes: OrdMap::new(),
            traffic_policies: OrdMap::new(),
            traffic_by_target: OrdMap::new(),
            workloads_by_node: OrdMap::new(),
            explicit_users: OrdMap::new(),
            addresses: OrdMap::new(),
            lineage: Lineage::default(),
        };
        let mut c = Checker::default();
        m.nodes = c.nodes(self.nodes);
        m.namespaces = c.namespaces(self.namespaces);
        // Checked here, once per namespace; the derivations below read them as valid.
        c.mtls_modes(&m.namespaces, m.settings.mtls_mode);
        c.policy_modes(&m.namespaces, m.settings.policy_mode);
        for wp in self.waypoints {
            let key = ObjectKey::new(&wp.namespace, &wp.name);
            let subject = ResourceRef::new(Kind::Waypoint, key.to_string());
            if c.first(&m.waypoints, &subject, &key) {
                let mut claims = std::mem::take(&mut m.addresses);
                c.waypoint(&m, &subject, &wp, &mut claims);
                m.addresses = claims;
                m.waypoints.insert(key, wp);
            }
        }
        c.namespace_waypoints(&m);
        for pod in self.pods {
            let key = ObjectKey::new(&pod.namespace, &pod.name);
            let subject = ResourceRef::new(Kind::Pod, key.to_string());
            if c.first(&m.workloads, &subject, &key) {
                let mut claims = std::mem::take(&mut m.addresses);
                let workload = c.workload(&m, &subject, pod, &mut claims);
                m.addresses = claims;
                if let Some(w) = workload {
                    m.workloads.insert(key, w);
                }
            }
        }
        for svc in self.services {
            let key = ObjectKey::new(&svc.namespace, &svc.name);
            let subject = ResourceRef::new(Kind::Service, key.to_string());
            if c.first(&m.services, &subject, &key) {
                let mut claims = std::mem::take(&mut m.addresses);
                let entry = c.service(&m, &subject, svc, &mut claims);
                m.addresses = claims;
                m.services.insert(key, entry);
            }
        }
        for policy in self.policies {
            let key = ObjectKey::new(&policy.namespace, &policy.name);
            let subject = ResourceRef::new(Kind::AuthorizationPolicy, key.to_string());
            if c.first(&m.policies, &subject, &key) {
                let policy = c.policy(&m, &subject, policy);
                m.policies.insert(key, policy);
            }
        }
        for route in self.routes {
            let key = ObjectKey::new(&route.namespace, &route.name);
            let subject = ResourceRef::new(Kind::Route, key.to_string());
            if c.first(&m.routes, &subject, &key) {
                c.route(&m, &subject, &route);
                m.routes.insert(key, route);
            }
        }
        for policy in self.traffic_policies {
            let key = ObjectKey::new(&policy.namespace, &policy.name);
            let subject = ResourceRef::new(Kind::TrafficPolicy, key.to_string());
            if c.first(&m.traffic_policies, &subject, &key)
                && c.traffic_policy(&m, &subject, &policy)
            {
                m.traffic_by_target
                    .insert(policy.target.clone(), key.clone());
                m.traffic_policies.insert(key, policy);
            }
        }
        if !c.errors.is_empty() {
            return Err(c.errors);
        }
        // Endpoints and the indexes once every workload is in, rather than once per pod.
        let keys: Vec<ObjectKey> = m.services.keys().cloned().collect();
        for key in keys {
            m.refresh_endpoints(&key);
            m.index_explicit_endpoints(&key, true);
        }
        for (key, w) in &m.workloads {
            let on_node = m.workloads_by_node.entry(w.pod.node.clone()).or_default();
            on_node.insert(key.clone());
        }
        Ok(m)
    }
}

impl MeshModel {
    /// Recomputes one service's endpoints from the workloads as they are now.
    pub(super) fn refresh_endpoints(&mut self, key: &ObjectKey) {
        let Some(entry) = self.services.get(key) else {
            return;
        };
        let endpoints = endpoints_of(&entry.service, &self.workloads);
        if entry.endpoints != endpoints
            && let Some(entry) = self.services.get_mut(key)
        {
            entry.endpoints = endpoints;
        }
    }

    /// Records (or forgets) which pods a selector-less service lists, so that a pod's change
    /// finds the services to refresh without a scan of every service.
    pub(super) fn index_explicit_endpoints(&mut self, key: &ObjectKey, add: bool) {
        let Some(entry) = self.services.get(key) else {
            return;
        };
        if !entry.service.selector.is_empty() {
            return;
        }
        let pods: Vec<ObjectKey> = entry.service.explicit_endpoints.clone();
        for pod in pods {
            if add {
                let users = self.explicit_users.entry(pod).or_default();
                users.insert(key.clone());
            } else if let Some(users) = self.explicit_users.get_mut(&pod) {
                users.remove(key);
                if users.is_empty() {
                    self.explicit_users.remove(&pod);
                }
            }
        }
    }
}

/// The service's workloads that can be reached: a pod with no IP yet is no endpoint.
fn endpoints_of(service: &Service, workloads: &OrdMap<ObjectKey, Workload>) -> Vec<ObjectKey> {
    let addressed = |w: &Workload| !w.pod.addresses.is_empty();
    if service.selector.is_empty() {
        let mut listed: Vec<ObjectKey> = service
            .explicit_endpoints
            .iter()
            .filter(|key| workloads.get(*key).is_some_and(addressed))
            .cloned()
            .collect();
        listed.sort();
        listed.dedup();
        return listed;
    }
    in_namespace(workloads, &service.namespace)
        .filter(|w| addressed(w) && selects(&service.selector, &w.pod.labels))
        .map(Workload::key)
        .collect()
}

/// Whether `host` is the hostname of a declared service. Every split of its first part into
/// `<name>.<namespace>` is tried, so a service whose name has a dot is found as well.
fn declared(m: &MeshModel, host: &str) -> bool {
    let suffix = format!(".svc.{}", m.trust_domain);
    let Some(prefix) = host.strip_suffix(&suffix) else {
        return false;
    };
    prefix.match_indices('.').any(|(i, _)| {
        m.services
            .contains_key(&ObjectKey::new(&prefix[i + 1..], &prefix[..i]))
    })
}

/// Collects the problems of a mesh description (or of a change to a model) rather than stopping
/// at the first.
#[derive(Default)]
pub(super) struct Checker {
    pub(super) errors: Vec<ModelError>,
}

impl Checker {
    /// Claims `addresses` for `subject`; one already claimed by another object is an error on
    /// `subject` (the later one).
    pub(super) fn claim(
        &mut self,
        claims: &mut OrdMap<IpAddr, ResourceRef>,
        subject: &ResourceRef,
        addresses: &[IpAddr],
    ) {
        for address in addresses {
            match claims.get(address) {
                Some(first) if first != subject => self.errors.push(ModelError::DuplicateAddress {
                    subject: subject.clone(),
                    address: *address,
                    first: first.clone(),
                }),
                Some(_) => {}
                None => {
                    claims.insert(*address, subject.clone());
                }
            }
        }
    }

    fn identity(
        &mut self,
        subject: &ResourceRef,
        td: &str,
        ns: &str,
        sa: &str,
    ) -> Option<SpiffeId> {
        SpiffeId::new(td, ns, sa)
            .map_err(|source| {
                self.errors.push(ModelError::InvalidIdentity {
                    subject: subject.clone(),
                    source,
                })
            })
            .ok()
    }

    /// Whether this is the first object under `key` (a second one is reported and left out).
    fn first<T: Clone>(
        &mut self,
        out: &OrdMap<ObjectKey, T>,
        subject: &ResourceRef,
        key: &ObjectKey,
    ) -> bool {
        if out.contains_key(key) {
            self.errors.push(ModelError::Duplicate {
                subject: subject.clone(),
            });
            return false;
        }
        true
    }

    pub(super) fn in_namespace(&mut self, m: &MeshModel, subject: &ResourceRef, namespace: &str) {
        if !m.namespaces.contains_key(namespace) {
            self.errors.push(ModelError::UnknownNamespace {
                subject: subject.clone(),
                namespace: namespace.into(),
            });
        }
    }

    pub(super) fn on_node(&mut self, m: &MeshModel, subject: &ResourceRef, node: &str) {
        if !m.nodes.contains_key(node) {
            self.errors.push(ModelError::UnknownNode {
                subject: subject.clone(),
                node: node.into(),
            });
        }
    }

    fn addressed(
        &mut self,
        subject: &ResourceRef,
        addresses: &[IpAddr],
        claims: &mut OrdMap<IpAddr, ResourceRef>,
    ) {
        if addresses.is_empty() {
            self.errors.push(ModelError::NoAddress {
                subject: subject.clone(),
            });
        }
        self.claim(claims, subject, addresses);
    }

    /// Checks a waypoint and claims its addresses in `claims`.
    fn waypoint(
        &mut self,
        m: &MeshModel,
        subject: &ResourceRef,
        wp: &Waypoint,
        claims: &mut OrdMap<IpAddr, ResourceRef>,
    ) {
        self.in_namespace(m, subject, &wp.namespace);
        if !(m.settings.pending_waypoints && wp.node.is_empty()) {
            self.on_node(m, subject, &wp.node);
        }
        if !(m.settings.pending_waypoints && wp.addresses.is_empty()) {
            self.addressed(subject, &wp.addresses, claims);
        }
        self.identity(subject, &m.trust_domain, &wp.namespace, &wp.service_account);
    }

    pub(super) fn waypoint_label(
        &mut self,
        m: &MeshModel,
        subject: &ResourceRef,
        namespace: &str,
        labels: &Labels,
    ) -> Option<ObjectKey> {
        let name = labels.get(USE_WAYPOINT_LABEL)?;
        if name == WAYPOINT_NONE {
            return None;
        }
        let key = ObjectKey::new(namespace, name);
        if m.waypoints.contains_key(&key) {
            Some(key)
        } else {
            self.errors.push(ModelError::UnknownWaypoint {
                subject: subject.clone(),
                label: USE_WAYPOINT_LABEL,
                namespace: namespace.into(),
                waypoint: name.clone(),
            });
            None
        }
    }

    /// A pod checked and made a workload, its mTLS mode included; its addresses are claimed
    /// in `claims` (from which whatever the pod held before must have been released).
    pub(super) fn workload(
        &mut self,
        m: &MeshModel,
        subject: &ResourceRef,
        pod: Pod,
        claims: &mut OrdMap<IpAddr, ResourceRef>,
    ) -> Option<Workload> {
        self.in_namespace(m, subject, &pod.namespace);
        self.on_node(m, subject, &pod.node);
        if !(m.settings.unaddressed_pods && pod.addresses.is_empty()) {
            self.addressed(subject, &pod.addresses, claims);
        }
        if let Some(value) = pod.labels.get(DATAPLANE_MODE_LABEL)
            && value != DATAPLANE_MODE_NONE
        {
            self.errors.push(ModelError::InvalidLabelValue {
                subject: subject.clone(),
                label: DATAPLANE_MODE_LABEL,
                value: value.clone(),
                allowed: "\"none\" (a pod can only opt out; label its namespace to opt in)",
            });
        }
        let waypoint = self.waypoint_label(m, subject, &pod.namespace, &pod.labels);
        let identity = self.identity(
            subject,
            &m.trust_domain,
            &pod.namespace,
            &pod.service_account,
        )?;
        let namespace = m.namespaces.get(&pod.namespace);
        let meshed = ambit_proto::enrolment::enrolled(
            namespace
                .and_then(|ns| ns.labels.get(DATAPLANE_MODE_LABEL))
                .map(String::as_str),
            pod.labels.get(DATAPLANE_MODE_LABEL).map(String::as_str),
        );
        // Outside the mesh no ztunnel receives its traffic to refuse anything.
        let mtls_mode = match namespace {
            Some(ns) if meshed => MtlsMode::of_namespace(&ns.labels, m.settings.mtls_mode)
                .unwrap_or(m.settings.mtls_mode),
            _ if meshed => m.settings.mtls_mode,
            _ => MtlsMode::Permissive,
        };
        Some(Workload {
            uid: format!("{}//Pod/{}/{}", m.cluster_id, pod.namespace, pod.name),
            identity,
            meshed,
            waypoint,
            pod,
            mtls_mode,
        })
    }

    /// A service checked, with its waypoint and its VIPs claimed in `claims`; its endpoints
    /// are left for [`MeshModel::refresh_endpoints`].
    pub(super) fn service(
        &mut self,
        m: &MeshModel,
        subject: &ResourceRef,
        svc: Service,
        claims: &mut OrdMap<IpAddr, ResourceRef>,
    ) -> ServiceEntry {
        self.in_namespace(m, subject, &svc.namespace);
        self.claim(claims, subject, &svc.vips);
        let mut ports = HashSet::new();
        for port in &svc.ports {
            if !ports.insert(port.port) {
                self.errors.push(ModelError::DuplicatePort {
                    subject: subject.clone(),
                    port: port.port,
                });
            }
        }
        let waypoint = if svc.labels.contains_key(USE_WAYPOINT_LABEL) {
            self.waypoint_label(m, subject, &svc.namespace, &svc.labels)
        } else {
            m.namespace_waypoint(&svc.namespace)
        };
        ServiceEntry {
            service: svc,
            endpoints: Vec::new(),
            waypoint,
        }
    }

    /// A policy checked, in its namespace's mode.
    pub(super) fn policy(
        &mut self,
        m: &MeshModel,
        subject: &ResourceRef,
        mut policy: AuthorizationPolicy,
    ) -> AuthorizationPolicy {
        self.in_namespace(m, subject, &policy.namespace);
        for source in policy.rules.iter().flat_map(|r| &r.from) {
            for principal in source.principals.iter().chain(&source.not_principals) {
                if let Err(reason) = rules::check_principal(principal) {
                    self.errors.push(ModelError::InvalidPrincipal {
                        subject: subject.clone(),
                        principal: principal.clone(),
                        reason,
                    });
                }
            }
            for block in source.ip_blocks.iter().chain(&source.not_ip_blocks) {
                if rules::check_ip_block(block).is_err() {
                    self.errors.push(ModelError::InvalidIpBlock {
                        subject: subject.clone(),
                        block: block.clone(),
                    });
                }
            }
        }
        for reason in rules::check_l7(&policy.rules) {
            self.errors.push(ModelError::InvalidPolicy {
                subject: subject.clone(),
                reason,
            });
        }
        let default = m.settings.policy_mode;
        let mode = m
            .namespaces
            .get(&policy.namespace)
            .and_then(|ns| PolicyMode::of_namespace(&ns.labels, default).ok())
            .unwrap_or(default);
        policy.dry_run = mode == PolicyMode::Audit;
        policy
    }

    pub(super) fn route(&mut self, m: &MeshModel, subject: &ResourceRef, route: &Route) {
        self.in_namespace(m, subject, &route.namespace);
        for host in route.parent_services().chain(route.backend_services()) {
            if !declared(m, host) {
                self.errors.push(ModelError::UnknownBackend {
                    subject: subject.clone(),
                    backend: host.to_string(),
                });
            }
        }
    }

    /// Whether the policy may have its target: a declared service of the policy's own
    /// namespace that no other policy has (a service takes one policy: the first declared
    /// keeps it).
    pub(super) fn traffic_policy(
        &mut self,
        m: &MeshModel,
        subject: &ResourceRef,
        policy: &TrafficPolicy,
    ) -> bool {
        self.in_namespace(m, subject, &policy.namespace);
        let known = m
            .service_by_hostname(&policy.target)
            .is_some_and(|s| s.service.namespace == policy.namespace);
        if !known {
            self.errors.push(ModelError::UnknownBackend {
                subject: subject.clone(),
                backend: policy.target.clone(),
            });
            return false;
        }
        let key = ObjectKey::new(&policy.namespace, &policy.name);
        match m.traffic_by_target.get(&policy.target) {
            Some(first) if *first != key => {
                self.errors.push(ModelError::DuplicateTarget {
                    subject: subject.clone(),
                    service: policy.target.clone(),
                    first: ResourceRef::new(Kind::TrafficPolicy, first.to_string()),
                });
                false
            }
            _ => true,
        }
    }
}
