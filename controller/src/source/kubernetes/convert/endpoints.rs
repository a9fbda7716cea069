//! The EndpointSlices of services without selector: whoever manages them (a person, an operator)
//! says which addresses back the service, and the mesh maps each address to the pod it belongs
//! to, since the model's endpoints are workloads.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::Skip;
use crate::model::{ObjectKey, ResourceRef};

/// The label that ties a slice to its service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Every address `slice` lists for an endpoint that names no pod: the pod at it is found by
/// its address (see [`Slices::new`]).
pub(super) fn unreferenced_addresses(slice: &EndpointSlice) -> impl Iterator<Item = IpAddr> + '_ {
    slice
        .endpoints
        .iter()
        .filter(|e| !names_pod(e))
        .flat_map(|e| &e.addresses)
        .filter_map(|a| a.parse().ok())
}

fn names_pod(endpoint: &k8s_openapi::api::discovery::v1::Endpoint) -> bool {
    endpoint
        .target_ref
        .as_ref()
        .is_some_and(|r| r.kind.as_deref() == Some("Pod") && r.name.is_some())
}

#[derive(Debug, Default)]
struct ServiceSlices {
    /// Ready endpoints mapped to their pods.
    pods: Vec<ObjectKey>,
    /// Ready addresses that are no known pod, with the slice that lists them.
    unknown: Vec<(String, IpAddr)>,
    /// By port name ("" for an unnamed port): each number the slices give it, with how many
    /// ready endpoints the slices giving it list. Several numbers happen mid-rollout, when the
    /// old and new slices disagree.
    ports: BTreeMap<String, BTreeMap<u16, usize>>,
}

/// Every slice's endpoints, by service.
#[derive(Debug, Default)]
pub(super) struct Slices {
    by_service: BTreeMap<(String, String), ServiceSlices>,
}

impl Slices {
    /// `pod_at`: the pod at an address a slice lists without naming its pod.
    pub(super) fn new<'a>(
        slices: impl IntoIterator<Item = &'a Arc<EndpointSlice>>,
        pod_at: impl Fn(IpAddr) -> Option<ObjectKey>,
    ) -> Slices {
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
            // Kubernetes: an unset `ready` is to be read as ready. Not ready is not healthy: left
            // out, since the wire protocol has one health per workload and this one is about the
            // workload as this service's endpoint only.
            let ready: Vec<_> = slice
                .endpoints
                .iter()
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
                .collect();
            for port in slice.ports.iter().flatten() {
                if let Some(number) = port.port.and_then(|p| u16::try_from(p).ok()) {
                    let name = port.name.clone().unwrap_or_default();
                    *entry
                        .ports
                        .entry(name)
                        .or_default()
                        .entry(number)
                        .or_default() += ready.len();
                }
            }
            for endpoint in ready {
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
                    match pod_at(ip) {
                        Some(pod) => entry.pods.push(pod),
                        None => entry
                            .unknown
                            .push((meta.name.clone().unwrap_or_default(), ip)),
                    }
                }
            }
        }
        out
    }

    /// The ready endpoints of a service from its slices. What the slices say that the mesh
    /// cannot use is reported against the service: addresses that are no pod, and port names
    /// the slices give different numbers.
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
        for (name, numbers) in entry.ports.iter().filter(|(_, n)| n.len() > 1) {
            let chosen = chosen_number(numbers);
            let mut given = String::new();
            for (number, count) in numbers {
                let _ = write!(given, " {number} ({count} ready endpoints)");
            }
            let name = if name.is_empty() { "(unnamed)" } else { name };
            skips.push(Skip {
                subject: subject.clone(),
                reason: format!(
                    "its EndpointSlices give port {name} different numbers:{given}, as mid-rollout; a service port has one target port, so the mesh uses {chosen} (most ready endpoints) and the endpoints on the other numbers cannot be reached through it until the slices agree"
                ),
            });
        }
        let mut pods = entry.pods.clone();
        pods.sort();
        pods.dedup();
        pods
    }

    /// The number the slices give the service port named `port_name`: when they disagree, the
    /// one with the most ready endpoints (the lower on a tie), so that the answer does not
    /// depend on the order slices are listed in.
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
            .map(chosen_number)
    }
}

fn chosen_number(numbers: &BTreeMap<u16, usize>) -> u16 {
    // max_by_key keeps the last maximum: iterating from the highest number makes that the lowest.
    numbers
        .iter()
        .rev()
        .max_by_key(|(_, count)| **count)
        .map(|(number, _)| *number)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::Kind;

    /// Pods a, b and c at 10.0.0.1 to .3.
    fn pod_at(ip: IpAddr) -> Option<ObjectKey> {
        let name = match ip.to_string().as_str() {
            "10.0.0.1" => "a",
            "10.0.0.2" => "b",
            "10.0.0.3" => "c",
            _ => return None,
        };
        Some(ObjectKey::new("demo", name))
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
        let slice = Arc::new(slice);
        let slices = Slices::new([&slice], pod_at);
        let unreferenced: Vec<IpAddr> = unreferenced_addresses(&slice).collect();
        let ips =
            |ips: &[&str]| -> Vec<IpAddr> { ips.iter().map(|ip| ip.parse().unwrap()).collect() };
        assert_eq!(
            unreferenced,
            ips(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "192.168.1.1"]),
            "every address but the one of an endpoint naming its pod"
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

    fn slice(name: &str, port: u16, ips: &[&str]) -> Arc<EndpointSlice> {
        let endpoints: Vec<_> = ips.iter().map(|ip| json!({"addresses": [ip]})).collect();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "demo",
                             "labels": {"kubernetes.io/service-name": "db"}},
                "addressType": "IPv4",
                "ports": [{"name": "sql", "port": port}],
                "endpoints": endpoints
            }))
            .unwrap(),
        )
    }

    #[test]
    fn slices_that_disagree_on_a_port_are_reported_and_the_most_endpoints_win() {
        let subject = ResourceRef::new(Kind::Service, "demo/db");
        let old = slice("db-old", 5432, &["10.0.0.1"]);
        let new = slice("db-new", 6432, &["10.0.0.2", "10.0.0.3"]);
        // Either listing order gives the same answer.
        for listed in [[old.clone(), new.clone()], [new.clone(), old.clone()]] {
            let slices = Slices::new(&listed, pod_at);
            assert_eq!(slices.port("demo", "db", Some("sql")), Some(6432));
            let mut skips = Vec::new();
            assert_eq!(
                slices.endpoints(&subject, "demo", "db", &mut skips).len(),
                3
            );
            assert_eq!(skips.len(), 1, "{skips:?}");
            let reason = &skips[0].reason;
            assert!(reason.contains("port sql"), "{reason}");
            assert!(
                reason.contains("5432 (1 ready endpoints) 6432 (2"),
                "{reason}"
            );
        }
        // A tie goes to the lower number.
        let tie = Slices::new(
            &[new, slice("db-odd", 5432, &["10.0.0.1", "10.9.9.9"])],
            pod_at,
        );
        assert_eq!(tie.port("demo", "db", Some("sql")), Some(5432));
    }
}
