//! The updater against a full build: after every change, the model it makes and what it says
//! are those a full conversion and build of the same objects make; a change that `apply` can
//! take is taken in place (the model records what changed), one that reaches across the
//! cluster is built whole.

use std::collections::BTreeSet;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::*;
use crate::source::kubernetes::convert::{Changed, Lookup};
use crate::source::kubernetes::crd::AuthorizationPolicy;
use crate::source::kubernetes::update::Updater;

/// The cluster as the watches' caches would hold it.
#[derive(Clone)]
struct Cluster(Objects);

fn find<K: kube::Resource>(objects: &[Arc<K>], key: &ObjectKey) -> Option<Arc<K>> {
    objects
        .iter()
        .find(|o| {
            let meta = o.meta();
            meta.namespace.as_deref() == Some(&key.namespace)
                && meta.name.as_deref() == Some(&key.name)
        })
        .cloned()
}

impl Lookup for Cluster {
    fn pod(&self, key: &ObjectKey) -> Option<Arc<core::Pod>> {
        find(&self.0.pods, key)
    }
    fn service(&self, key: &ObjectKey) -> Option<Arc<core::Service>> {
        find(&self.0.services, key)
    }
    fn endpoint_slice(&self, key: &ObjectKey) -> Option<Arc<EndpointSlice>> {
        find(&self.0.endpoint_slices, key)
    }
    fn policy(&self, key: &ObjectKey) -> Option<Arc<AuthorizationPolicy>> {
        find(&self.0.policies, key)
    }
    fn routes_and_traffic_policies(&self) -> Objects {
        Objects {
            http_routes: self.0.http_routes.clone(),
            grpc_routes: self.0.grpc_routes.clone(),
            traffic_policies: self.0.traffic_policies.clone(),
            ..Objects::default()
        }
    }
    fn objects(&self) -> Objects {
        self.0.clone()
    }
}

impl Cluster {
    fn put<K: kube::Resource + Clone>(list: &mut Vec<Arc<K>>, object: K) -> ObjectKey {
        let key = ObjectKey::new(
            object.meta().namespace.clone().unwrap_or_default(),
            object.meta().name.clone().unwrap_or_default(),
        );
        list.retain(|o| {
            o.meta().name.as_deref() != Some(&key.name)
                || o.meta().namespace.as_deref() != Some(&key.namespace)
        });
        list.push(Arc::new(object));
        key
    }

    fn put_pod(&mut self, changed: &mut Changed, pod: core::Pod) {
        changed.pods.insert(Self::put(&mut self.0.pods, pod));
    }

    fn remove_pod(&mut self, changed: &mut Changed, name: &str) {
        self.0
            .pods
            .retain(|p| p.metadata.name.as_deref() != Some(name));
        changed.pods.insert(ObjectKey::new("shop", name));
    }

    fn put_service(&mut self, changed: &mut Changed, service: core::Service) {
        changed
            .services
            .insert(Self::put(&mut self.0.services, service));
    }

    fn put_slice(&mut self, changed: &mut Changed, slice: EndpointSlice) {
        changed
            .endpoint_slices
            .insert(Self::put(&mut self.0.endpoint_slices, slice));
    }
}

/// The updater and the model in force, checked against a full build at every step.
struct Harness {
    cluster: Cluster,
    updater: Updater,
    model: MeshModel,
}

#[derive(Debug, PartialEq)]
enum Made {
    InPlace,
    Whole,
    Same,
}

impl Harness {
    fn new(objects: Objects) -> Harness {
        let cluster = Cluster(objects);
        let mut updater = Updater::new(&Options::default());
        let model = updater.first(&cluster).unwrap();
        let h = Harness {
            cluster,
            updater,
            model,
        };
        h.check();
        h
    }

    fn check(&self) {
        let input = convert(&self.cluster.0, DEFAULT_TRUST_DOMAIN);
        let built = assemble(&input, &Options::default().mesh_settings()).unwrap();
        assert_eq!(self.model, built.model, "the model a full build makes");
        let said: BTreeSet<Skip> = built.skips.into_iter().collect();
        assert_eq!(self.updater.said(), &said, "what a full build says");
    }

    fn change(&mut self, f: impl FnOnce(&mut Cluster, &mut Changed)) -> Made {
        let mut changed = Changed::default();
        f(&mut self.cluster, &mut changed);
        let made = match self
            .updater
            .next(&changed, &self.cluster, &self.model)
            .unwrap()
        {
            None => Made::Same,
            Some(model) => {
                let made = match model.changes_since(&self.model) {
                    Some(_) => Made::InPlace,
                    None => Made::Whole,
                };
                self.model = model;
                made
            }
        };
        self.check();
        made
    }
}

fn shop(pods: Vec<core::Pod>, services: Vec<core::Service>) -> Objects {
    Objects {
        namespaces: vec![Arc::new(ns(
            "shop",
            json!({"ambit.io/dataplane-mode": "ambient"}),
        ))],
        pods: pods.into_iter().map(Arc::new).collect(),
        services: services.into_iter().map(Arc::new).collect(),
        ..Objects::default()
    }
}

fn cart(name: &str, ip: &str, version: &str) -> core::Pod {
    pod(
        "shop",
        name,
        Some(ip),
        json!({"app": "cart", "version": version}),
    )
}

fn on_node(mut p: core::Pod, node: &str) -> core::Pod {
    p.spec.as_mut().unwrap().node_name = Some(node.into());
    p
}

fn cart_service(target_port: Value) -> core::Service {
    let ports = json!([{"name": "http", "port": 80, "targetPort": target_port}]);
    service("shop", "cart", "10.96.0.1", json!({"app": "cart"}), ports)
}

fn slice(name: &str, service: &str, endpoints: Value) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": service}
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": endpoints
    }))
    .unwrap()
}

#[test]
fn pods_and_services_are_applied_in_place_as_a_full_build_would_make_them() {
    let mut h = Harness::new(shop(
        vec![cart("cart-1", "10.0.0.1", "v1")],
        vec![cart_service(json!(8080))],
    ));
    let relabel = |c: &mut Cluster, ch: &mut Changed| {
        c.put_pod(ch, cart("cart-1", "10.0.0.1", "v2"));
    };
    assert_eq!(h.change(relabel), Made::InPlace);
    let add = |c: &mut Cluster, ch: &mut Changed| {
        c.put_pod(ch, on_node(cart("cart-2", "10.0.0.2", "v1"), "node-b"));
    };
    assert_eq!(h.change(add), Made::InPlace, "a pod on a new node");
    assert!(h.model.node("node-b").is_some());
    let unscheduled = |c: &mut Cluster, ch: &mut Changed| {
        let mut p = cart("cart-3", "10.0.0.3", "v1");
        p.spec.as_mut().unwrap().node_name = None;
        c.put_pod(ch, p);
    };
    assert_eq!(h.change(unscheduled), Made::Same, "said, not in the model");
    let remove = |c: &mut Cluster, ch: &mut Changed| {
        c.remove_pod(ch, "cart-2");
        c.remove_pod(ch, "cart-3");
    };
    assert_eq!(h.change(remove), Made::InPlace);
    assert!(h.model.node("node-b").is_none(), "its last pod left");
    let same = |c: &mut Cluster, ch: &mut Changed| {
        c.put_pod(ch, cart("cart-1", "10.0.0.1", "v2"));
    };
    assert_eq!(h.change(same), Made::Same);

    // A pod that takes another's address: `apply` refuses it, the full build leaves it out
    // (the same model, and the reason said), and while it is left out every change is built
    // whole.
    let clash = |c: &mut Cluster, ch: &mut Changed| {
        c.put_pod(ch, pod("shop", "clash", Some("10.0.0.1"), json!({})));
    };
    assert_eq!(h.change(clash), Made::Same);
    assert_eq!(h.change(relabel), Made::Same);
    let moved = |c: &mut Cluster, ch: &mut Changed| {
        c.put_pod(ch, pod("shop", "clash", Some("10.0.0.9"), json!({})));
    };
    assert_eq!(h.change(moved), Made::Whole);
    let again = |c: &mut Cluster, ch: &mut Changed| {
        c.put_pod(ch, cart("cart-1", "10.0.0.1", "v3"));
    };
    assert_eq!(h.change(again), Made::InPlace);
}

#[test]
fn a_named_target_port_follows_its_pods_containers() {
    let mut h = Harness::new(shop(vec![], vec![cart_service(json!("web"))]));
    let port = |h: &Harness| {
        let svc = h.model.service(&ObjectKey::new("shop", "cart")).unwrap();
        svc.service.ports.first().map(|p| p.target_port)
    };
    assert_eq!(port(&h), None, "no pod declares it yet");
    let declare = |c: &mut Cluster, ch: &mut Changed| {
        c.put_pod(ch, cart("cart-1", "10.0.0.1", "v1"));
    };
    assert_eq!(h.change(declare), Made::InPlace);
    assert_eq!(port(&h), Some(8080));
    let renumber = |c: &mut Cluster, ch: &mut Changed| {
        let mut p = cart("cart-1", "10.0.0.1", "v1");
        p.spec.as_mut().unwrap().containers[0]
            .ports
            .as_mut()
            .unwrap()[0]
            .container_port = 9090;
        c.put_pod(ch, p);
    };
    assert_eq!(
        h.change(renumber),
        Made::InPlace,
        "the pod's own value is the same; the service's is not"
    );
    assert_eq!(port(&h), Some(9090));
}

#[test]
fn endpoint_slices_of_a_service_without_selector_are_applied_in_place() {
    let external = service(
        "shop",
        "legacy",
        "10.96.0.2",
        json!({}),
        json!([{"name": "http", "port": 80}]),
    );
    let mut objects = shop(
        vec![
            cart("cart-1", "10.0.0.1", "v1"),
            cart("cart-2", "10.0.0.2", "v1"),
        ],
        vec![external],
    );
    objects.endpoint_slices = vec![Arc::new(slice(
        "legacy-a",
        "legacy",
        json!([{"addresses": ["10.0.0.1"],
                "targetRef": {"kind": "Pod", "name": "cart-1", "namespace": "shop"}}]),
    ))];
    let mut h = Harness::new(objects);
    let endpoints = |h: &Harness| {
        let svc = h.model.service(&ObjectKey::new("shop", "legacy")).unwrap();
        svc.endpoints.clone()
    };
    assert_eq!(endpoints(&h), [ObjectKey::new("shop", "cart-1")]);
    let by_address = |c: &mut Cluster, ch: &mut Changed| {
        c.put_slice(
            ch,
            slice("legacy-b", "legacy", json!([{"addresses": ["10.0.0.2"]}])),
        );
    };
    assert_eq!(h.change(by_address), Made::InPlace);
    assert_eq!(endpoints(&h).len(), 2);
    // A pod that leaves an address a slice lists without naming it: the pod at that address
    // is another one now, which only a full conversion finds.
    let leave = |c: &mut Cluster, ch: &mut Changed| {
        c.put_pod(ch, cart("cart-2", "10.0.0.3", "v1"));
    };
    assert_eq!(
        h.change(leave),
        Made::InPlace,
        "the full conversion applied"
    );
    assert_eq!(endpoints(&h), [ObjectKey::new("shop", "cart-1")]);
    let unknown_port = |c: &mut Cluster, ch: &mut Changed| {
        c.put_service(
            ch,
            service(
                "shop",
                "legacy",
                "10.96.0.2",
                json!({}),
                json!([{"name": "http", "port": 81}]),
            ),
        );
    };
    assert_eq!(h.change(unknown_port), Made::InPlace);
}

#[test]
fn namespaces_and_listings_are_built_whole() {
    let mut h = Harness::new(shop(
        vec![cart("cart-1", "10.0.0.1", "v1")],
        vec![cart_service(json!(8080))],
    ));
    let relabel = |c: &mut Cluster, ch: &mut Changed| {
        c.0.namespaces = vec![Arc::new(ns("shop", json!({})))];
        ch.everything = true;
    };
    assert_eq!(h.change(relabel), Made::Whole);
    assert!(!meshed(&h.model, "shop", "cart-1"));
    // A listing again that finds one pod changed is applied as edits.
    let relisted = |c: &mut Cluster, ch: &mut Changed| {
        c.put_pod(ch, cart("cart-1", "10.0.0.1", "v2"));
        ch.everything = true;
    };
    assert_eq!(h.change(relisted), Made::InPlace);
}

#[test]
fn policies_and_routes_follow_their_objects_and_the_services_they_name() {
    let mut h = Harness::new(shop(vec![cart("cart-1", "10.0.0.1", "v1")], vec![]));
    let allow = |principal: &str| -> AuthorizationPolicy {
        serde_json::from_value(json!({
            "apiVersion": "ambit.io/v1alpha1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "allow-cart", "namespace": "shop"},
            "spec": {
                "selector": {"matchLabels": {"app": "cart"}},
                "rules": [{"from": [{"source": {"principals": [principal]}}]}]
            }
        }))
        .unwrap()
    };
    let put_policy = |principal: &'static str| {
        move |c: &mut Cluster, ch: &mut Changed| {
            ch.policies
                .insert(Cluster::put(&mut c.0.policies, allow(principal)));
        }
    };
    assert_eq!(
        h.change(put_policy("cluster.local/ns/shop/sa/web")),
        Made::InPlace
    );
    assert_eq!(
        h.change(put_policy("cluster.local/ns/shop/sa/api")),
        Made::InPlace
    );
    let drop_policy = |c: &mut Cluster, ch: &mut Changed| {
        c.0.policies.clear();
        ch.policies.insert(ObjectKey::new("shop", "allow-cart"));
    };
    assert_eq!(h.change(drop_policy), Made::InPlace);

    // A route to a service that does not exist yet is said to be refused; once the service
    // comes, what is said of the route is the full build's (the service has no waypoint).
    let route = |c: &mut Cluster, ch: &mut Changed| {
        let r: gateway_api::experimental::httproutes::HttpRoute = serde_json::from_value(json!({
            "metadata": {"name": "cart-split", "namespace": "shop"},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "cart"}],
                "rules": [{"backendRefs": [{"name": "cart", "port": 80}]}]
            }
        }))
        .unwrap();
        c.0.http_routes = vec![Arc::new(r)];
        ch.routes = true;
    };
    assert_eq!(h.change(route), Made::Same);
    let said_of_route = |h: &Harness| -> Vec<String> {
        let said = h.updater.said().iter();
        said.filter(|s| s.subject.name == "shop/cart-split")
            .map(|s| s.reason.clone())
            .collect()
    };
    let before = said_of_route(&h);
    assert!(!before.is_empty());
    let service = |c: &mut Cluster, ch: &mut Changed| {
        c.put_service(ch, cart_service(json!(8080)));
    };
    assert_eq!(h.change(service), Made::InPlace);
    assert_ne!(said_of_route(&h), before, "the route was converted again");
}

/// Random changes to a small cluster of two namespaces: pods that come, go, move, relabel and
/// take each other's addresses; services with selectors, named ports or slices; slices naming
/// their pods or only addresses; policies. After each, the updater's model and what it says
/// must be a full build's.
#[test]
fn random_changes_make_what_a_full_build_makes() {
    use crate::model::random_edits::Rng;

    let namespaces = ["shop", "bank"];
    let mut objects = Objects {
        namespaces: namespaces
            .iter()
            .map(|n| Arc::new(ns(n, json!({"ambit.io/dataplane-mode": "ambient"}))))
            .collect(),
        ..Objects::default()
    };
    objects.pods.push(Arc::new(pod(
        "shop",
        "p0",
        Some("10.0.0.1"),
        json!({"app": "a"}),
    )));
    let mut h = Harness::new(objects);
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let (mut in_place, mut whole) = (0, 0);
    for _ in 0..400 {
        let namespace = rng.pick(&namespaces);
        let (prefix, number) = (rng.below(4), rng.below(6));
        let name = format!("{}{number}", ["p", "s", "e", "z"][prefix]);
        let app = rng.pick(&["a", "b", "c"]);
        // An address of its own, but one time in twenty one that may be another's.
        let ns_index = usize::from(namespace == "bank");
        let ip = match rng.below(20) {
            0 => format!("10.0.{ns_index}.{}", rng.below(24)),
            _ => format!("10.0.{ns_index}.{}", prefix * 6 + number),
        };
        let kind = rng.below(10);
        let remove = rng.below(5) == 0;
        let made = h.change(|c, ch| {
            let key = ObjectKey::new(namespace, &name);
            let matches = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
                meta.namespace.as_deref() == Some(namespace) && meta.name.as_deref() == Some(&name)
            };
            match kind {
                0..=4 => {
                    if remove {
                        c.0.pods.retain(|p| !matches(&p.metadata));
                        ch.pods.insert(key);
                        return;
                    }
                    let mut p = pod(namespace, &name, Some(&ip), json!({"app": app}));
                    let spec = p.spec.as_mut().unwrap();
                    spec.node_name = Some(format!("node-{}", rng.below(3)));
                    spec.containers[0].ports.as_mut().unwrap()[0].container_port =
                        8080 + rng.below(2) as i32;
                    c.put_pod(ch, p);
                }
                5 | 6 => {
                    if remove {
                        c.0.services.retain(|s| !matches(&s.metadata));
                        ch.services.insert(key);
                        return;
                    }
                    let target = match rng.below(3) {
                        0 => json!(8080),
                        _ => json!("web"),
                    };
                    let selector = match rng.below(3) {
                        0 => json!({}),
                        _ => json!({"app": app}),
                    };
                    let vip = format!("10.96.{ns_index}.{}", prefix * 6 + number);
                    let ports = json!([{"name": "http", "port": 80, "targetPort": target}]);
                    c.put_service(ch, service(namespace, &name, &vip, selector, ports));
                }
                7 | 8 => {
                    if remove {
                        c.0.endpoint_slices.retain(|s| !matches(&s.metadata));
                        ch.endpoint_slices.insert(key);
                        return;
                    }
                    let target = format!("p{}", rng.below(6));
                    let endpoint = match rng.below(2) {
                        0 => json!({"addresses": [ip],
                                    "targetRef": {"kind": "Pod", "name": target, "namespace": namespace}}),
                        _ => json!({"addresses": [ip]}),
                    };
                    let service = format!("s{}", rng.below(6));
                    let mut s = slice(&name, &service, json!([endpoint]));
                    s.metadata.namespace = Some(namespace.into());
                    c.put_slice(ch, s);
                }
                _ => {
                    let policy: AuthorizationPolicy = serde_json::from_value(json!({
                        "apiVersion": "ambit.io/v1alpha1",
                        "kind": "AuthorizationPolicy",
                        "metadata": {"name": name, "namespace": namespace},
                        "spec": {
                            "selector": {"matchLabels": {"app": app}},
                            "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]
                        }
                    }))
                    .unwrap();
                    if remove {
                        c.0.policies.retain(|p| !matches(&p.metadata));
                    } else {
                        Cluster::put(&mut c.0.policies, policy);
                    }
                    ch.policies.insert(key);
                }
            }
        });
        match made {
            Made::InPlace => in_place += 1,
            Made::Whole => whole += 1,
            Made::Same => {}
        }
    }
    // Both ways are taken often enough for the comparison to mean something.
    assert!(
        in_place > 150 && whole > 10,
        "{in_place} in place, {whole} whole"
    );
}
