//! Checks a mesh description and derives what follows from it: which pods are meshed, each
//! service's endpoints, who uses which waypoint.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use ambit_proto::identity::SpiffeId;

use super::rules;
use super::*;

mod namespaces;

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
    pending_waypoints: bool,
    unaddressed_pods: bool,
    mtls_mode: MtlsMode,
    policy_mode: PolicyMode,
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
            pending_waypoints: false,
            unaddressed_pods: false,
            mtls_mode: MtlsMode::default(),
            policy_mode: PolicyMode::default(),
        }
    }

    /// Accepts waypoints that are declared but not (all) running: no address (nothing ready to
    /// serve) and an empty node (no pod anywhere yet). A Kubernetes waypoint must be in the model
    /// before its pods are Ready, since they become Ready only once the CA and discovery, which
    /// both require the model's waypoint, have served them. A mesh file does not call this: a
    /// human wrote its waypoints, and one without address or node there is a mistake.
    pub fn allow_pending_waypoints(&mut self) -> &mut Self {
        self.pending_waypoints = true;
        self
    }

    /// Accepts pods scheduled on a node that have no IP yet. On Kubernetes the CNI plugin hands
    /// a pod to its node's ztunnel while the pod's network is being set up, before the API
    /// knows its IP, and ztunnel captures only workloads its config holds (and the CA signs
    /// only for identities that run on the caller's node). A mesh file does not call this:
    /// every pod there has its addresses.
    pub fn allow_unaddressed_pods(&mut self) -> &mut Self {
        self.unaddressed_pods = true;
        self
    }

    /// The mode of meshed workloads whose namespace has no [`MTLS_MODE_LABEL`] (default
    /// permissive, as Istio's).
    pub fn mtls_mode(&mut self, mode: MtlsMode) -> &mut Self {
        self.mtls_mode = mode;
        self
    }

    /// The mode of the policies of namespaces without a [`POLICY_MODE_LABEL`] (default
    /// enforce).
    pub fn policy_mode(&mut self, mode: PolicyMode) -> &mut Self {
        self.policy_mode = mode;
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
        let mut c = Checker {
            errors: Vec::new(),
            addresses: HashMap::new(),
            pending_waypoints: self.pending_waypoints,
            unaddressed_pods: self.unaddressed_pods,
        };
        if let Err(source) = SpiffeId::new(&self.trust_domain, "ns", "sa") {
            return Err(vec![ModelError::InvalidTrustDomain {
                trust_domain: self.trust_domain,
                source,
            }]);
        }
        let nodes = c.nodes(self.nodes);
        let namespaces = c.namespaces(self.namespaces);
        let mtls_modes = c.mtls_modes(&namespaces, self.mtls_mode);
        let policy_modes = c.policy_modes(&namespaces, self.policy_mode);
        let waypoints = c.waypoints(self.waypoints, &nodes, &namespaces, &self.trust_domain);
        let waypoint_names: HashSet<ObjectKey> = waypoints.keys().cloned().collect();
        let namespace_waypoints = c.namespace_waypoints(&namespaces, &waypoint_names);
        let mut workloads = c.workloads(
            self.pods,
            &nodes,
            &namespaces,
            &waypoint_names,
            &self.trust_domain,
            &self.cluster_id,
        );
        let services = c.services(
            self.services,
            &namespaces,
            &namespace_waypoints,
            &waypoint_names,
        );
        let mut policies = c.policies(self.policies, &namespaces);
        let routes = c.routes(self.routes, &namespaces, &services, &self.trust_domain);
        let (traffic_policies, traffic_by_target) = c.traffic_policies(
            self.traffic_policies,
            &namespaces,
            &services,
            &self.trust_domain,
        );
        if !c.errors.is_empty() {
            return Err(c.errors);
        }
        for p in policies.values_mut() {
            let mode = policy_modes.get(&p.namespace).copied();
            p.dry_run = mode.unwrap_or(self.policy_mode) == PolicyMode::Audit;
        }
        for w in workloads.values_mut().filter(|w| w.meshed) {
            w.mtls_mode = mtls_modes
                .get(&w.pod.namespace)
                .copied()
                .unwrap_or(self.mtls_mode);
        }
        let services = services
            .into_iter()
            .map(|(key, (service, waypoint))| {
                let endpoints = endpoints_of(&service, &workloads);
                let entry = ServiceEntry {
                    service,
                    endpoints,
                    waypoint,
                };
                (key, entry)
            })
            .collect();
        let mut workloads_by_node: BTreeMap<String, Vec<ObjectKey>> = BTreeMap::new();
        for (key, workload) in &workloads {
            workloads_by_node
                .entry(workload.pod.node.clone())
                .or_default()
                .push(key.clone());
        }
        Ok(MeshModel {
            trust_domain: self.trust_domain,
            cluster_id: self.cluster_id,
            nodes,
            namespaces,
            workloads,
            services,
            waypoints,
            policies,
            routes,
            traffic_policies,
            traffic_by_target,
            workloads_by_node,
        })
    }
}

/// The service's workloads that can be reached: a pod with no IP yet is no endpoint.
fn endpoints_of(service: &Service, workloads: &BTreeMap<ObjectKey, Workload>) -> Vec<ObjectKey> {
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

struct Checker {
    errors: Vec<ModelError>,
    /// Which object first claimed each address.
    addresses: HashMap<IpAddr, ResourceRef>,
    /// See [`MeshBuilder::allow_pending_waypoints`].
    pending_waypoints: bool,
    /// See [`MeshBuilder::allow_unaddressed_pods`].
    unaddressed_pods: bool,
}

impl Checker {
    fn claim_addresses(&mut self, subject: &ResourceRef, addresses: &[IpAddr]) {
        for address in addresses {
            match self.addresses.get(address) {
                Some(first) if first != subject => self.errors.push(ModelError::DuplicateAddress {
                    subject: subject.clone(),
                    address: *address,
                    first: first.clone(),
                }),
                Some(_) => {}
                None => {
                    self.addresses.insert(*address, subject.clone());
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

    fn namespaced<T>(
        &mut self,
        out: &BTreeMap<ObjectKey, T>,
        subject: &ResourceRef,
        key: &ObjectKey,
        namespaces: &BTreeMap<String, Namespace>,
    ) -> bool {
        if out.contains_key(key) {
            self.errors.push(ModelError::Duplicate {
                subject: subject.clone(),
            });
            return false;
        }
        if !namespaces.contains_key(&key.namespace) {
            self.errors.push(ModelError::UnknownNamespace {
                subject: subject.clone(),
                namespace: key.namespace.clone(),
            });
        }
        true
    }

    fn on_node(&mut self, subject: &ResourceRef, node: &str, nodes: &BTreeMap<String, Node>) {
        if !nodes.contains_key(node) {
            self.errors.push(ModelError::UnknownNode {
                subject: subject.clone(),
                node: node.into(),
            });
        }
    }

    fn addressed(&mut self, subject: &ResourceRef, addresses: &[IpAddr]) {
        if addresses.is_empty() {
            self.errors.push(ModelError::NoAddress {
                subject: subject.clone(),
            });
        }
        self.claim_addresses(subject, addresses);
    }

    fn waypoints(
        &mut self,
        waypoints: Vec<Waypoint>,
        nodes: &BTreeMap<String, Node>,
        namespaces: &BTreeMap<String, Namespace>,
        td: &str,
    ) -> BTreeMap<ObjectKey, Waypoint> {
        let mut out = BTreeMap::new();
        for wp in waypoints {
            let key = ObjectKey::new(&wp.namespace, &wp.name);
            let subject = ResourceRef::new(Kind::Waypoint, key.to_string());
            if !self.namespaced(&out, &subject, &key, namespaces) {
                continue;
            }
            if !(self.pending_waypoints && wp.node.is_empty()) {
                self.on_node(&subject, &wp.node, nodes);
            }
            if !(self.pending_waypoints && wp.addresses.is_empty()) {
                self.addressed(&subject, &wp.addresses);
            }
            self.identity(&subject, td, &wp.namespace, &wp.service_account);
            out.insert(key, wp);
        }
        out
    }

    fn waypoint_label(
        &mut self,
        subject: &ResourceRef,
        namespace: &str,
        labels: &Labels,
        waypoints: &HashSet<ObjectKey>,
    ) -> Option<ObjectKey> {
        let name = labels.get(USE_WAYPOINT_LABEL)?;
        if name == WAYPOINT_NONE {
            return None;
        }
        let key = ObjectKey::new(namespace, name);
        if waypoints.contains(&key) {
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

    fn workloads(
        &mut self,
        pods: Vec<Pod>,
        nodes: &BTreeMap<String, Node>,
        namespaces: &BTreeMap<String, Namespace>,
        waypoints: &HashSet<ObjectKey>,
        td: &str,
        cluster_id: &str,
    ) -> BTreeMap<ObjectKey, Workload> {
        let mut out = BTreeMap::new();
        for pod in pods {
            let key = ObjectKey::new(&pod.namespace, &pod.name);
            let subject = ResourceRef::new(Kind::Pod, key.to_string());
            if !self.namespaced(&out, &subject, &key, namespaces) {
                continue;
            }
            self.on_node(&subject, &pod.node, nodes);
            if !(self.unaddressed_pods && pod.addresses.is_empty()) {
                self.addressed(&subject, &pod.addresses);
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
            let waypoint = self.waypoint_label(&subject, &pod.namespace, &pod.labels, waypoints);
            let Some(identity) = self.identity(&subject, td, &pod.namespace, &pod.service_account)
            else {
                continue;
            };
            let meshed = ambit_proto::enrolment::enrolled(
                namespaces
                    .get(&pod.namespace)
                    .and_then(|ns| ns.labels.get(DATAPLANE_MODE_LABEL))
                    .map(String::as_str),
                pod.labels.get(DATAPLANE_MODE_LABEL).map(String::as_str),
            );
            let workload = Workload {
                uid: format!("{cluster_id}//Pod/{}/{}", pod.namespace, pod.name),
                identity,
                meshed,
                waypoint,
                pod,
                mtls_mode: MtlsMode::Permissive,
            };
            out.insert(key, workload);
        }
        out
    }

    #[allow(clippy::type_complexity)]
    fn services(
        &mut self,
        services: Vec<Service>,
        namespaces: &BTreeMap<String, Namespace>,
        namespace_waypoints: &HashMap<String, ObjectKey>,
        waypoints: &HashSet<ObjectKey>,
    ) -> BTreeMap<ObjectKey, (Service, Option<ObjectKey>)> {
        let mut out = BTreeMap::new();
        for svc in services {
            let key = ObjectKey::new(&svc.namespace, &svc.name);
            let subject = ResourceRef::new(Kind::Service, key.to_string());
            if !self.namespaced(&out, &subject, &key, namespaces) {
                continue;
            }
            self.claim_addresses(&subject, &svc.vips);
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
                self.waypoint_label(&subject, &svc.namespace, &svc.labels, waypoints)
            } else {
                namespace_waypoints.get(&svc.namespace).cloned()
            };
            out.insert(key, (svc, waypoint));
        }
        out
    }

    fn policies(
        &mut self,
        policies: Vec<AuthorizationPolicy>,
        namespaces: &BTreeMap<String, Namespace>,
    ) -> BTreeMap<ObjectKey, AuthorizationPolicy> {
        let mut out = BTreeMap::new();
        for policy in policies {
            let key = ObjectKey::new(&policy.namespace, &policy.name);
            let subject = ResourceRef::new(Kind::AuthorizationPolicy, key.to_string());
            if !self.namespaced(&out, &subject, &key, namespaces) {
                continue;
            }
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
            out.insert(key, policy);
        }
        out
    }

    fn routes(
        &mut self,
        routes: Vec<Route>,
        namespaces: &BTreeMap<String, Namespace>,
        services: &BTreeMap<ObjectKey, (Service, Option<ObjectKey>)>,
        td: &str,
    ) -> BTreeMap<ObjectKey, Route> {
        let known: HashSet<String> = services
            .keys()
            .map(|k| service_hostname(&k.name, &k.namespace, td))
            .collect();
        let mut out = BTreeMap::new();
        for route in routes {
            let key = ObjectKey::new(&route.namespace, &route.name);
            let subject = ResourceRef::new(Kind::Route, key.to_string());
            if !self.namespaced(&out, &subject, &key, namespaces) {
                continue;
            }
            for host in route.parent_services().chain(route.backend_services()) {
                if !known.contains(host) {
                    self.errors.push(ModelError::UnknownBackend {
                        subject: subject.clone(),
                        backend: host.to_string(),
                    });
                }
            }
            out.insert(key, route);
        }
        out
    }

    /// Each policy's target must be a declared service of the policy's own namespace, and a
    /// service takes one policy: the first declared keeps it.
    #[allow(clippy::type_complexity)]
    fn traffic_policies(
        &mut self,
        policies: Vec<TrafficPolicy>,
        namespaces: &BTreeMap<String, Namespace>,
        services: &BTreeMap<ObjectKey, (Service, Option<ObjectKey>)>,
        td: &str,
    ) -> (
        BTreeMap<ObjectKey, TrafficPolicy>,
        BTreeMap<String, ObjectKey>,
    ) {
        let mut out = BTreeMap::new();
        let mut by_target: BTreeMap<String, ObjectKey> = BTreeMap::new();
        for policy in policies {
            let key = ObjectKey::new(&policy.namespace, &policy.name);
            let subject = ResourceRef::new(Kind::TrafficPolicy, key.to_string());
            if !self.namespaced(&out, &subject, &key, namespaces) {
                continue;
            }
            let target = policy
                .target
                .strip_suffix(&format!(".svc.{td}"))
                .and_then(|rest| rest.split_once('.'))
                .map(|(name, namespace)| ObjectKey::new(namespace, name));
            let known = target
                .is_some_and(|t| t.namespace == policy.namespace && services.contains_key(&t));
            if !known {
                self.errors.push(ModelError::UnknownBackend {
                    subject,
                    backend: policy.target.clone(),
                });
                continue;
            }
            if let Some(first) = by_target.get(&policy.target) {
                self.errors.push(ModelError::DuplicateTarget {
                    subject,
                    service: policy.target.clone(),
                    first: ResourceRef::new(Kind::TrafficPolicy, first.to_string()),
                });
                continue;
            }
            by_target.insert(policy.target.clone(), key.clone());
            out.insert(key, policy);
        }
        (out, by_target)
    }
}
