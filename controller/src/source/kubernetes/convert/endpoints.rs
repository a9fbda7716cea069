//! The EndpointSlices of services without selector: whoever manages them (a person, an operator)
//! says which addresses back the service, and the mesh maps each address to the pod it belongs
//! to, since the model's endpoints are workloads.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::Skip;
use crate::model::{self, ObjectKey, ResourceRef};

/// The label that ties a slice to its service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Debug, Default)]
struct ServiceSlices {
    /// Ready endpoints mapped to their pods.
    pods: Vec<ObjectKey>,
    /// Ready addresses that are no known pod, with the slice that lists them.
    unknown: Vec<(String, IpAddr)>,
    /// Port numbers by port name ("" for an unnamed port).
    ports: BTreeMap<String, u16>,
}

/// Every slice's endpoints, by service.
#[derive(Debug, Default)]
pub(super) struct Slices {
    by_service: BTreeMap<(String, String), ServiceSlices>,
}

impl Slices {
    pub(super) fn new(slices: &[Arc<EndpointSlice>], pods: &[model::Pod]) -> Slices {
        let by_ip: BTreeMap<IpAddr, ObjectKey> = pods
            .iter()
            .flat_map(|p| {
                p.addresses
                    .iter()
                    .map(|ip| (*ip, ObjectKey::new(&p.namespace, &p.name)))
            })
            .collect();
        let mut out = Slices::default();
        for slice in slices {
            let meta = &slice.metadata;
            let namespace = meta.namespace.clone().unwrap_or_default();
            let Some(service) = meta.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
                continue;
            };
            let entry = out
                .by_service
                .entry((namespace.clone(), service.clone()))
                .or_default();
            for port in slice.ports.iter().flatten() {
                if let Some(number) = port.port.and_then(|p| u16::try_from(p).ok()) {
                    let name = port.name.clone().unwrap_or_default();
                    entry.ports.entry(name).or_insert(number);
                }
            }
            for endpoint in &slice.endpoints {
                // Kubernetes: an unset `ready` is to be read as ready.
                let ready = endpoint
                    .conditions
                    .as_ref()
                    .and_then(|c| c.ready)
                    .unwrap_or(true);
                // Not ready is not healthy: left out, since the wire protocol has one health per
                // workload and this one is about the workload as this service's endpoint only.
                if !ready {
                    continue;
                }
                let target = endpoint
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| {
                        let ns = r.namespace.clone().unwrap_or_else(|| namespace.clone());
                        Some(ObjectKey::new(ns, r.name.clone()?))
                    });
                if let Some(pod) = target {
                    entry.pods.push(pod);
                    continue;
                }
                for address in &endpoint.addresses {
                    let Ok(ip) = address.parse::<IpAddr>() else {
                        continue; // FQDN slices: nothing the mesh can reach by address
                    };
                    match by_ip.get(&ip) {
                        Some(pod) => entry.pods.push(pod.clone()),
                        None => entry
                            .unknown
                            .push((meta.name.clone().unwrap_or_default(), ip)),
                    }
                }
            }
        }
        out
    }

    /// The ready endpoints of a service from its slices; addresses that are no pod are
    /// reported against the service.
    pub(super) fn endpoints(
        &self,
        subject: &ResourceRef,
        namespace: &str,
        service: &str,
        skips: &mut Vec<Skip>,
    ) -> Vec<ObjectKey> {
        let Some(entry) = self
            .by_service
            .get(&(namespace.to_string(), service.to_string()))
        else {
            return Vec::new();
        };
        for (slice, ip) in &entry.unknown {
            skips.push(Skip {
                subject: subject.clone(),
                reason: format!(
                    "EndpointSlice {namespace}/{slice} lists {ip}, which is no pod the mesh knows (the mesh's endpoints are pods); that endpoint is left out"
                ),
            });
        }
        let mut pods = entry.pods.clone();
        pods.sort();
        pods.dedup();
        pods
    }

    /// The number the slices give the service port named `port_name`.
    pub(super) fn port(
        &self,
        namespace: &str,
        service: &str,
        port_name: Option<&str>,
    ) -> Option<u16> {
        self.by_service
            .get(&(namespace.to_string(), service.to_string()))?
            .ports
            .get(port_name.unwrap_or_default())
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::{Kind, Labels};

    fn pod(name: &str, ip: &str) -> model::Pod {
        model::Pod {
            name: name.into(),
            namespace: "demo".into(),
            service_account: "default".into(),
            node: "node-a".into(),
            addresses: vec![ip.parse().unwrap()],
            labels: Labels::new(),
            healthy: true,
        }
    }

    #[test]
    fn addresses_map_to_pods_and_not_ready_ones_are_left_out() {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "db-1", "namespace": "demo",
                         "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "ports": [{"name": "sql", "port": 5432}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.3"]},
                {"addresses": ["192.168.1.1"]},
                {"addresses": ["10.9.9.9"], "targetRef": {"kind": "Pod", "name": "by-ref"}}
            ]
        }))
        .unwrap();
        let slices = Slices::new(
            &[Arc::new(slice)],
            &[
                pod("a", "10.0.0.1"),
                pod("b", "10.0.0.2"),
                pod("c", "10.0.0.3"),
            ],
        );
        let subject = ResourceRef::new(Kind::Service, "demo/db");
        let mut skips = Vec::new();
        let endpoints = slices.endpoints(&subject, "demo", "db", &mut skips);
        let names: Vec<&str> = endpoints.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, vec!["a", "by-ref", "c"]);
        assert_eq!(skips.len(), 1, "{skips:?}");
        assert!(skips[0].reason.contains("192.168.1.1"), "{skips:?}");
        assert_eq!(slices.port("demo", "db", Some("sql")), Some(5432));
        assert_eq!(slices.port("demo", "db", None), None);
        assert!(
            slices
                .endpoints(&subject, "demo", "other", &mut skips)
                .is_empty()
        );
    }
}
