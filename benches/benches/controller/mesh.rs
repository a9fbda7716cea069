//! A synthetic but cluster-shaped mesh: namespaces of 50 pods (8 services of 5 replicas, 10
//! client pods), one ALLOW policy per service naming the clients that call it, a waypoint in one
//! meshed namespace of ten, and one namespace in ten left out of the mesh. Out-of-mesh namespaces
//! run on their own node pool, as clusters that adopt a mesh gradually tend to, so some ztunnels
//! have nothing meshed and must hear nothing about mesh-wide changes.

use std::net::{IpAddr, Ipv4Addr};

use ambit_controller::model::{
    AppProtocol, AuthorizationPolicy, DATAPLANE_MODE_AMBIENT, DATAPLANE_MODE_LABEL, Edit, Labels,
    MeshBuilder, Namespace, Node, Pod, Service, ServicePort, USE_WAYPOINT_LABEL, Waypoint,
};
use ambit_proto::api::security::{Action, Destination, Rule, Source};

/// The default cluster: 100 nodes, a tenth of them running only namespaces outside the mesh.
pub const NODES: usize = 100;
pub const PODS_PER_NAMESPACE: usize = 50;
const SERVICES_PER_NAMESPACE: usize = 8;
const REPLICAS: usize = 5;
const CLIENTS_PER_NAMESPACE: usize = PODS_PER_NAMESPACE - SERVICES_PER_NAMESPACE * REPLICAS;
/// How many services each client calls (and so how many policies name it).
const CALLS_PER_CLIENT: usize = 3;
const TRUST_DOMAIN: &str = "cluster.local";

/// The one change a scenario makes on top of the mesh as it stands.
#[derive(Debug, Clone, Copy)]
pub enum Change {
    /// A meshed service's pod is recreated with a new IP on the same node.
    PodNewIp,
    /// A meshed service gains a replica (new workload, new endpoint list).
    ScaleUp,
    /// A policy of one service gains a principal.
    PolicyEdit,
    /// A client pod of a namespace outside the mesh is recreated with a new IP.
    LegacyPodNewIp,
}

impl Change {
    pub const ALL: [Change; 4] = [
        Change::PodNewIp,
        Change::ScaleUp,
        Change::PolicyEdit,
        Change::LegacyPodNewIp,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Change::PodNewIp => "meshed pod gets a new IP",
            Change::ScaleUp => "pod added to a service",
            Change::PolicyEdit => "policy gains a principal",
            Change::LegacyPodNewIp => "non-mesh client pod new IP",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Change::PodNewIp => "pod_new_ip",
            Change::ScaleUp => "scale_up",
            Change::PolicyEdit => "policy_edit",
            Change::LegacyPodNewIp => "legacy_pod_new_ip",
        }
    }
}

/// The builder's input, kept so that a change can be made to it, applied to the model as a
/// source applies one object's event, and checked against a full build of the changed input.
pub struct Spec {
    namespaces: Vec<Namespace>,
    pods: Vec<Pod>,
    services: Vec<Service>,
    waypoints: Vec<Waypoint>,
    policies: Vec<AuthorizationPolicy>,
    /// Next free host number per node, for addresses of new or moved pods.
    next_host: Vec<u32>,
    nodes: usize,
    /// Nodes `meshed_nodes..nodes` run only the namespaces that are not meshed.
    meshed_nodes: usize,
}

/// See [`Spec::objects`].
#[allow(
    dead_code,
    reason = "only the kubernetes_source bench reads the objects"
)]
pub struct Objects<'a> {
    pub namespaces: &'a [Namespace],
    pub pods: &'a [Pod],
    pub services: &'a [Service],
    pub waypoints: &'a [Waypoint],
    pub policies: &'a [AuthorizationPolicy],
}

pub fn node_name(i: usize) -> String {
    format!("node-{i:03}")
}

/// Node `i`'s bootstrap token, which its ztunnel presents.
pub fn node_token(i: usize) -> String {
    format!("token-{i}")
}

fn namespace_name(i: usize) -> String {
    format!("team-{i:04}")
}

fn meshed(ns: usize) -> bool {
    ns % 10 != 9
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Kubernetes-like pod-name suffixes, so names are as long as real ones.
fn suffix(a: usize, b: usize) -> String {
    let h = (a as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (b as u64).wrapping_mul(0xC2B2);
    format!("{:010x}-{:05x}", h >> 24, (h ^ (h >> 31)) & 0xfffff)
}

impl Spec {
    /// About `workloads` pods (rounded up to whole namespaces) on the default cluster.
    pub fn generate(workloads: usize) -> Spec {
        Self::generate_on(workloads, NODES)
    }

    /// About `workloads` pods on `nodes` nodes (10 or more), a tenth of them for the namespaces
    /// outside the mesh.
    pub fn generate_on(workloads: usize, nodes: usize) -> Spec {
        assert!(
            nodes >= 10,
            "a cluster of {nodes} nodes has no pool outside the mesh"
        );
        let mut spec = Spec {
            namespaces: Vec::new(),
            pods: Vec::new(),
            services: Vec::new(),
            waypoints: Vec::new(),
            policies: Vec::new(),
            next_host: vec![2; nodes],
            nodes,
            meshed_nodes: nodes - nodes / 10,
        };
        let meshed_nodes = spec.meshed_nodes;
        let (mut meshed_pods, mut legacy_pods) = (0usize, 0usize);
        for ns in 0..workloads.div_ceil(PODS_PER_NAMESPACE) {
            let name = namespace_name(ns);
            let mut ns_labels = Labels::new();
            if meshed(ns) {
                ns_labels.insert(DATAPLANE_MODE_LABEL.into(), DATAPLANE_MODE_AMBIENT.into());
            }
            if meshed(ns) && ns % 10 == 0 {
                let wp = format!("{name}-waypoint");
                ns_labels.insert(USE_WAYPOINT_LABEL.into(), wp.clone());
                let node = ns % meshed_nodes;
                // 192.168.0.0/16: apart from pods and services at any size.
                let addr = IpAddr::V4(Ipv4Addr::from(0xC0A8_0000 + ns as u32));
                spec.waypoints.push(Waypoint {
                    name: wp.clone(),
                    namespace: name.clone(),
                    node: node_name(node),
                    service_account: wp,
                    addresses: vec![addr],
                });
            }
            spec.namespaces.push(Namespace {
                name: name.clone(),
                labels: ns_labels,
                egress_scope: None,
            });
            for i in 0..PODS_PER_NAMESPACE {
                let node = if meshed(ns) {
                    meshed_pods += 1;
                    meshed_pods % meshed_nodes
                } else {
                    legacy_pods += 1;
                    meshed_nodes + legacy_pods % (nodes - meshed_nodes)
                };
                let app = if i < SERVICES_PER_NAMESPACE * REPLICAS {
                    format!("svc-{}", i / REPLICAS)
                } else {
                    format!("client-{}", i - SERVICES_PER_NAMESPACE * REPLICAS)
                };
                spec.add_pod(&name, &app, node, ns * PODS_PER_NAMESPACE + i);
            }
            for s in 0..SERVICES_PER_NAMESPACE {
                spec.add_service(&name, s, ns * SERVICES_PER_NAMESPACE + s);
                if meshed(ns) {
                    spec.add_policy(&name, ns, s);
                }
            }
        }
        spec
    }

    /// The pod's service account is its app, as one Deployment per service account usually is.
    fn add_pod(&mut self, ns: &str, app: &str, node: usize, seed: usize) {
        let address = self.take_address(node);
        self.pods.push(Pod {
            name: format!("{app}-{}", suffix(seed, self.pods.len())),
            namespace: ns.into(),
            service_account: app.into(),
            node: node_name(node),
            addresses: vec![address],
            labels: labels(&[
                ("app", app),
                ("version", "v1"),
                ("pod-template-hash", &suffix(seed, 0)[..10]),
            ]),
            healthy: true,
        });
    }

    /// Each node a block of 10.0.0.0/8 of its own, as a CNI's per-node pod CIDR: a /16 each
    /// on up to 255 nodes, smaller blocks on more.
    fn take_address(&mut self, node: usize) -> IpAddr {
        let host = self.next_host[node];
        self.next_host[node] += 1;
        let block_bits = 24
            - (self.nodes as u32 + 1)
                .next_power_of_two()
                .trailing_zeros()
                .max(8);
        assert!(
            host < 1 << block_bits,
            "node {node} ran out of pod addresses"
        );
        IpAddr::V4(Ipv4Addr::from(
            0x0A00_0000 + ((node as u32 + 1) << block_bits) + host,
        ))
    }

    fn add_service(&mut self, ns: &str, s: usize, index: usize) {
        let mut ports = vec![ServicePort {
            name: "http".into(),
            port: 80,
            target_port: 8080,
            app_protocol: AppProtocol::Http,
        }];
        if s % 2 == 1 {
            ports.push(ServicePort {
                name: "grpc".into(),
                port: 9090,
                target_port: 9090,
                app_protocol: AppProtocol::Grpc,
            });
        }
        let app = format!("svc-{s}");
        self.services.push(Service {
            name: app.clone(),
            namespace: ns.into(),
            // 172.16.0.0/12: a million services would fit.
            vips: vec![IpAddr::V4(Ipv4Addr::from(0xAC10_0000 + index as u32))],
            ports,
            selector: labels(&[("app", &app)]),
            explicit_endpoints: Vec::new(),
            labels: labels(&[("app", &app)]),
        });
    }

    /// Service `s` is called by the clients whose window of `CALLS_PER_CLIENT` services covers
    /// it, plus the same service account of the previous namespace (a cross-team caller).
    fn add_policy(&mut self, ns: &str, ns_index: usize, s: usize) {
        let principal = |ns: &str, sa: &str| format!("spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/{sa}");
        let mut principals: Vec<String> = (0..CLIENTS_PER_NAMESPACE)
            .filter(|c| (0..CALLS_PER_CLIENT).any(|k| (c + k) % SERVICES_PER_NAMESPACE == s))
            .map(|c| principal(ns, &format!("client-{c}")))
            .collect();
        let previous = namespace_name(ns_index.saturating_sub(1));
        principals.push(principal(&previous, &format!("client-{s}")));
        self.policies.push(AuthorizationPolicy {
            name: format!("allow-svc-{s}"),
            namespace: ns.into(),
            selector: labels(&[("app", &format!("svc-{s}"))]),
            action: Action::Allow,
            dry_run: false,
            rules: vec![Rule {
                from: vec![Source {
                    principals,
                    ..Default::default()
                }],
                to: vec![Destination {
                    ports: vec![8080, 9090],
                    ..Default::default()
                }],
                when: vec![],
            }],
        });
    }

    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// The builder's input as it stands, for a bench that feeds it in another shape.
    #[allow(
        dead_code,
        reason = "only the kubernetes_source bench reads the objects"
    )]
    pub fn objects(&self) -> Objects<'_> {
        Objects {
            namespaces: &self.namespaces,
            pods: &self.pods,
            services: &self.services,
            waypoints: &self.waypoints,
            policies: &self.policies,
        }
    }

    /// The nodes that run meshed pods are `0..meshed_nodes()`.
    #[allow(dead_code, reason = "the controller bench subscribes every node")]
    pub fn meshed_nodes(&self) -> usize {
        self.meshed_nodes
    }

    pub fn workloads(&self) -> usize {
        self.pods.len()
    }

    pub fn namespaces(&self) -> usize {
        self.namespaces.len()
    }

    pub fn services(&self) -> usize {
        self.services.len()
    }

    pub fn policies(&self) -> usize {
        self.policies.len()
    }

    pub fn waypoints(&self) -> usize {
        self.waypoints.len()
    }

    pub fn builder(&self) -> MeshBuilder {
        let mut b = MeshBuilder::new(TRUST_DOMAIN, "local");
        for i in 0..self.nodes {
            b.node(Node {
                name: node_name(i),
                bootstrap_token: Some(node_token(i)),
            });
        }
        for ns in &self.namespaces {
            b.namespace(ns.clone());
        }
        for p in &self.pods {
            b.pod(p.clone());
        }
        for s in &self.services {
            b.service(s.clone());
        }
        for w in &self.waypoints {
            b.waypoint(w.clone());
        }
        for p in &self.policies {
            b.policy(p.clone());
        }
        b
    }

    /// Makes `change` in the first namespace of the right kind; returns the object it changed,
    /// as the model edit a source would apply for its event.
    pub fn apply(&mut self, change: Change) -> Edit {
        let meshed_ns = namespace_name(0);
        match change {
            Change::PodNewIp => {
                let i = self.pod_index(&meshed_ns, "svc-0");
                self.move_pod(i);
                Edit::Pod(self.pods[i].clone())
            }
            Change::ScaleUp => {
                let i = self.pod_index(&meshed_ns, "svc-1");
                let node = self.node_of(i);
                let seed = self.pods.len();
                self.add_pod(&meshed_ns, "svc-1", (node + 1) % self.meshed_nodes, seed);
                Edit::Pod(self.pods[self.pods.len() - 1].clone())
            }
            Change::PolicyEdit => {
                let p = self
                    .policies
                    .iter_mut()
                    .find(|p| p.namespace == meshed_ns && p.name == "allow-svc-0")
                    .expect("every meshed namespace has allow-svc-0");
                p.rules[0].from[0]
                    .principals
                    .push(format!("spiffe://{TRUST_DOMAIN}/ns/{meshed_ns}/sa/batch"));
                Edit::Policy(p.clone())
            }
            Change::LegacyPodNewIp => {
                let legacy = (0..self.namespaces.len())
                    .find(|&ns| !meshed(ns))
                    .map(namespace_name)
                    .expect("sizes of 500 pods or more have a namespace outside the mesh");
                let i = self.pod_index(&legacy, "client-0");
                self.move_pod(i);
                Edit::Pod(self.pods[i].clone())
            }
        }
    }

    fn pod_index(&self, ns: &str, app: &str) -> usize {
        self.pods
            .iter()
            .position(|p| p.namespace == ns && p.labels.get("app").map(String::as_str) == Some(app))
            .expect("the generated mesh has this pod")
    }

    fn node_of(&self, pod: usize) -> usize {
        self.pods[pod].node["node-".len()..]
            .parse()
            .expect("node names are node-NNN")
    }

    fn move_pod(&mut self, i: usize) {
        let node = self.node_of(i);
        self.pods[i].addresses = vec![self.take_address(node)];
    }
}
