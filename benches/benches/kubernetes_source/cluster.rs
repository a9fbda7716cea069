//! The controller bench's mesh as the Kubernetes API would hold it: Namespaces, Pods (with the
//! container port their services target), Services, the EndpointSlice the EndpointSlice
//! controller writes for each, Ambit AuthorizationPolicies, and for each waypoint its Gateway
//! and pod. Held as the watches' caches hold it, with a lookup by key.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ambit_controller::model::{self, Edit, ObjectKey};
use ambit_controller::source::kubernetes::crd::AuthorizationPolicy;
use ambit_controller::source::kubernetes::{
    Changed, GATEWAY_NAME_LABEL, Lookup, Objects, WAYPOINT_CLASS,
};
use gateway_api::experimental::gateways::Gateway;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::mesh;

fn object<T: DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("the bench's objects are well-formed")
}

fn meta(namespace: &str, name: &str, labels: &model::Labels) -> Value {
    json!({"namespace": namespace, "name": name, "labels": labels})
}

fn pod(p: &model::Pod, extra: &[(&str, &str)]) -> core::Pod {
    let mut labels = p.labels.clone();
    labels.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let ips: Vec<Value> = p.addresses.iter().map(|ip| json!({"ip": ip})).collect();
    object(json!({
        "metadata": meta(&p.namespace, &p.name, &labels),
        "spec": {
            "nodeName": p.node,
            "serviceAccountName": p.service_account,
            "containers": [{"name": "app", "ports": [
                {"name": "http", "containerPort": 8080},
                {"name": "grpc", "containerPort": 9090}
            ]}]
        },
        "status": {
            "phase": "Running",
            "podIP": p.addresses.first(),
            "podIPs": ips,
            "conditions": [{"type": "Ready", "status": if p.healthy { "True" } else { "False" }}]
        }
    }))
}

fn service(s: &model::Service) -> core::Service {
    let ports: Vec<Value> = s
        .ports
        .iter()
        .map(|p| {
            json!({
                "name": p.name, "port": p.port, "targetPort": p.target_port,
                "protocol": "TCP", "appProtocol": p.app_protocol.as_str()
            })
        })
        .collect();
    object(json!({
        "metadata": meta(&s.namespace, &s.name, &s.labels),
        "spec": {
            "clusterIP": s.vips.first(),
            "clusterIPs": s.vips,
            "selector": s.selector,
            "ports": ports
        }
    }))
}

/// The slice the EndpointSlice controller keeps for a service with a selector: its ready pods,
/// each named.
fn slice(s: &model::Service, pods: &[&model::Pod]) -> EndpointSlice {
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|p| {
            json!({
                "addresses": p.addresses,
                "conditions": {"ready": p.healthy},
                "nodeName": p.node,
                "targetRef": {"kind": "Pod", "namespace": p.namespace, "name": p.name}
            })
        })
        .collect();
    let ports: Vec<Value> = s
        .ports
        .iter()
        .map(|p| json!({"name": p.name, "port": p.target_port, "protocol": "TCP"}))
        .collect();
    let labels: model::Labels = [("kubernetes.io/service-name".to_string(), s.name.clone())]
        .into_iter()
        .collect();
    object(json!({
        "metadata": meta(&s.namespace, &format!("{}-abcde", s.name), &labels),
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports
    }))
}

fn policy(p: &model::AuthorizationPolicy) -> AuthorizationPolicy {
    let rules: Vec<Value> = p
        .rules
        .iter()
        .map(|r| {
            let from: Vec<Value> = r
                .from
                .iter()
                .map(|f| json!({"source": {"principals": f.principals}}))
                .collect();
            let to: Vec<Value> =
                r.to.iter()
                    .map(|t| {
                        let ports: Vec<String> = t.ports.iter().map(u32::to_string).collect();
                        json!({"operation": {"ports": ports}})
                    })
                    .collect();
            json!({"from": from, "to": to})
        })
        .collect();
    object(json!({
        "apiVersion": "ambit.io/v1alpha1",
        "kind": "AuthorizationPolicy",
        "metadata": meta(&p.namespace, &p.name, &model::Labels::new()),
        "spec": {"selector": {"matchLabels": p.selector}, "rules": rules}
    }))
}

fn gateway(w: &model::Waypoint) -> Gateway {
    object(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": meta(&w.namespace, &w.name, &model::Labels::new()),
        "spec": {
            "gatewayClassName": WAYPOINT_CLASS,
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]
        }
    }))
}

fn waypoint_pod(w: &model::Waypoint) -> core::Pod {
    pod(
        &model::Pod {
            name: format!("{}-7c9d8f6b5-x2x4q", w.name),
            namespace: w.namespace.clone(),
            service_account: w.service_account.clone(),
            node: w.node.clone(),
            addresses: w.addresses.clone(),
            labels: model::Labels::new(),
            healthy: true,
        },
        &[(GATEWAY_NAME_LABEL, &w.name)],
    )
}

fn key_of<K: kube::Resource>(o: &K) -> ObjectKey {
    let meta = o.meta();
    ObjectKey::new(
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The caches: what the watches hold, by kind and key.
pub struct Cluster {
    namespaces: Vec<Arc<core::Namespace>>,
    gateways: Vec<Arc<Gateway>>,
    pods: HashMap<ObjectKey, Arc<core::Pod>>,
    services: HashMap<ObjectKey, Arc<core::Service>>,
    slices: HashMap<ObjectKey, Arc<EndpointSlice>>,
    policies: HashMap<ObjectKey, Arc<AuthorizationPolicy>>,
    /// The model's pods by key (a namespace's together), to write a service's slice again
    /// when one of its pods changes.
    model_pods: BTreeMap<ObjectKey, model::Pod>,
    model_services: HashMap<ObjectKey, model::Service>,
}

fn keyed<K: kube::Resource>(objects: impl Iterator<Item = K>) -> HashMap<ObjectKey, Arc<K>> {
    objects.map(|o| (key_of(&o), Arc::new(o))).collect()
}

impl Cluster {
    pub fn of(spec: &mesh::Spec) -> Cluster {
        let o = spec.objects();
        let namespaces = o
            .namespaces
            .iter()
            .map(|ns| {
                Arc::new(object(json!({
                    "metadata": {"name": ns.name, "labels": ns.labels}
                })))
            })
            .collect();
        let mut pods = keyed(o.pods.iter().map(|p| pod(p, &[])));
        pods.extend(keyed(o.waypoints.iter().map(waypoint_pod)));
        let mut cluster = Cluster {
            namespaces,
            gateways: o.waypoints.iter().map(|w| Arc::new(gateway(w))).collect(),
            pods,
            services: keyed(o.services.iter().map(service)),
            slices: HashMap::new(),
            policies: keyed(o.policies.iter().map(policy)),
            model_pods: o
                .pods
                .iter()
                .map(|p| (ObjectKey::new(&p.namespace, &p.name), p.clone()))
                .collect(),
            model_services: o
                .services
                .iter()
                .map(|s| (ObjectKey::new(&s.namespace, &s.name), s.clone()))
                .collect(),
        };
        let keys: Vec<ObjectKey> = cluster.model_services.keys().cloned().collect();
        for key in keys {
            cluster.write_slice(&key);
        }
        cluster
    }

    /// The service's slice as the EndpointSlice controller writes it.
    fn write_slice(&mut self, service: &ObjectKey) -> ObjectKey {
        let s = &self.model_services[service];
        let pods: Vec<&model::Pod> = self
            .model_pods
            .range(ObjectKey::new(&s.namespace, "")..)
            .map(|(_, p)| p)
            .take_while(|p| p.namespace == s.namespace)
            .filter(|p| model::selects(&s.selector, &p.labels))
            .collect();
        let slice = slice(s, &pods);
        let key = key_of(&slice);
        self.slices.insert(key.clone(), Arc::new(slice));
        key
    }

    /// Makes the change the model edit `edit` stands for, as the API server and its
    /// controllers would (a pod's service gets its slice written again), and says which
    /// objects it named, as the watches would.
    pub fn change(&mut self, edit: &Edit) -> Changed {
        let mut changed = Changed::default();
        match edit {
            Edit::Pod(p) => {
                let key = ObjectKey::new(&p.namespace, &p.name);
                self.pods.insert(key.clone(), Arc::new(pod(p, &[])));
                self.model_pods.insert(key.clone(), p.clone());
                changed.pods.insert(key);
                let backed: Vec<ObjectKey> = self
                    .model_services
                    .iter()
                    .filter(|(k, s)| {
                        k.namespace == p.namespace && model::selects(&s.selector, &p.labels)
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                for service in backed {
                    changed.endpoint_slices.insert(self.write_slice(&service));
                }
            }
            Edit::Policy(p) => {
                let key = ObjectKey::new(&p.namespace, &p.name);
                self.policies.insert(key.clone(), Arc::new(policy(p)));
                changed.policies.insert(key);
            }
            other => panic!("the bench makes no {other:?}"),
        }
        changed
    }
}

impl Lookup for Cluster {
    fn pod(&self, key: &ObjectKey) -> Option<Arc<core::Pod>> {
        self.pods.get(key).cloned()
    }

    fn service(&self, key: &ObjectKey) -> Option<Arc<core::Service>> {
        self.services.get(key).cloned()
    }

    fn endpoint_slice(&self, key: &ObjectKey) -> Option<Arc<EndpointSlice>> {
        self.slices.get(key).cloned()
    }

    fn policy(&self, key: &ObjectKey) -> Option<Arc<AuthorizationPolicy>> {
        self.policies.get(key).cloned()
    }

    fn routes_and_traffic_policies(&self) -> Objects {
        Objects::default()
    }

    fn objects(&self) -> Objects {
        Objects {
            namespaces: self.namespaces.clone(),
            pods: self.pods.values().cloned().collect(),
            services: self.services.values().cloned().collect(),
            endpoint_slices: self.slices.values().cloned().collect(),
            gateways: self.gateways.clone(),
            policies: self.policies.values().cloned().collect(),
            ..Objects::default()
        }
    }
}
