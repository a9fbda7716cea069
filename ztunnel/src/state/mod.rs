//! Everything ztunnel knows about the mesh, indexed for the lookups the data path makes:
//! workloads by address, services by VIP, policies by name. Updated from the discovery stream
//! (or a local file) all-or-nothing: a bad update is refused whole and the old state stays.

mod policy;
mod workload;

pub use policy::{Decision, Policy, Source as PolicySource};
pub use workload::{Protocol, Service, ServicePort, Workload};

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_proto::api::discovery::{self as api, resource::Kind};

/// Why an update was refused (it is NACKed with this text, and the old state kept).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("workload {uid:?} is invalid: {reason}")]
    InvalidWorkload { uid: String, reason: String },
    #[error("service {key:?} is invalid: {reason}")]
    InvalidService { key: String, reason: String },
    #[error("authorization policy {key:?} is invalid: {reason}")]
    InvalidPolicy { key: String, reason: String },
    #[error("resource {name:?} has no content")]
    EmptyResource { name: String },
    #[error("address {address} is claimed by both workload {first:?} and workload {second:?}")]
    DuplicateAddress {
        address: IpAddr,
        first: String,
        second: String,
    },
}

/// Where an outbound connection goes.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// A meshed workload: HBONE to `workload`, tunnel target `target`.
    Hbone {
        workload: Arc<Workload>,
        target: SocketAddr,
        service: Option<Arc<Service>>,
    },
    /// Outside the mesh (or an unmeshed workload): plain TCP to `target`.
    Passthrough {
        target: SocketAddr,
        workload: Option<Arc<Workload>>,
        service: Option<Arc<Service>>,
    },
    /// A service VIP with no healthy endpoint.
    NoHealthyEndpoint { service: Arc<Service> },
}

#[derive(Debug, Default)]
pub struct ProxyState {
    workloads: HashMap<Box<str>, Arc<Workload>>,
    services: HashMap<Box<str>, Arc<Service>>,
    policies: HashMap<Box<str>, Arc<Policy>>,
    by_ip: HashMap<IpAddr, Arc<Workload>>,
    by_vip: HashMap<IpAddr, Arc<Service>>,
    /// The services each workload (by uid) is an endpoint of.
    by_endpoint: HashMap<Box<str>, Vec<Arc<Service>>>,
    /// Version of each resource ("<type>/<name>"), sent back on reconnect so the controller
    /// resends only what changed.
    versions: HashMap<String, String>,
    system_version: String,
}

impl ProxyState {
    pub fn workload(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.workloads.get(uid)
    }

    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip.get(&ip)
    }

    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads.values()
    }

    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    pub fn policies(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.policies.values()
    }

    pub fn versions(&self) -> &HashMap<String, String> {
        &self.versions
    }

    pub fn system_version(&self) -> &str {
        &self.system_version
    }

    /// Where a connection to `dst` should go. A service's endpoint is chosen among its
    /// healthy ones of the same address family, leaving out those `ejected` says failed
    /// recently unless no other is left (a guess at a recovering endpoint beats a sure
    /// refusal).
    pub fn resolve(&self, dst: SocketAddr, ejected: impl Fn(IpAddr) -> bool) -> Upstream {
        if let Some(service) = self.by_vip.get(&dst.ip()) {
            let target_port = service.target_port(dst.port()).unwrap_or(dst.port());
            let healthy: Vec<(&Arc<Workload>, IpAddr)> = service
                .endpoints
                .iter()
                .filter_map(|uid| self.workloads.get(uid))
                .filter(|w| w.healthy)
                .filter_map(|w| Some((w, w.address_like(dst.ip())?)))
                .collect();
            let live: Vec<(&Arc<Workload>, IpAddr)> = healthy
                .iter()
                .copied()
                .filter(|(_, ip)| !ejected(*ip))
                .collect();
            let candidates = if live.is_empty() { &healthy } else { &live };
            let Some(&(workload, ip)) = service.pick(candidates) else {
                return Upstream::NoHealthyEndpoint {
                    service: service.clone(),
                };
            };
            let target = SocketAddr::new(ip, target_port);
            return match workload.protocol {
                Protocol::Hbone => Upstream::Hbone {
                    workload: workload.clone(),
                    target,
                    service: Some(service.clone()),
                },
                Protocol::Tcp => Upstream::Passthrough {
                    target,
                    workload: Some(workload.clone()),
                    service: Some(service.clone()),
                },
            };
        }
        match self.by_ip.get(&dst.ip()) {
            Some(w) if w.protocol == Protocol::Hbone => Upstream::Hbone {
                workload: w.clone(),
                target: dst,
                service: None,
            },
            other => Upstream::Passthrough {
                target: dst,
                workload: other.cloned(),
                service: None,
            },
        }
    }

    /// The service a connection to `workload`'s `port` most likely came through, for the
    /// destination side's telemetry (the tunnel names the pod, not the service): one of the
    /// services `workload` backs with that target port, else any of them.
    pub fn service_of(&self, workload: &str, port: u16) -> Option<&Arc<Service>> {
        let services = self.by_endpoint.get(workload)?;
        services
            .iter()
            .find(|s| s.ports.iter().any(|p| p.target_port == port))
            .or_else(|| services.first())
    }

    /// The authorization decision for a connection to `workload` on `port`.
    pub fn authorize(&self, workload: &Workload, source: &PolicySource<'_>, port: u16) -> Decision {
        let selected = workload
            .authorization_policies
            .iter()
            .filter_map(|key| self.policies.get(key));
        policy::decide(selected, source, port)
    }

    /// Applies a discovery response: all of it, or none of it.
    pub fn apply(&mut self, response: &api::SubscribeResponse) -> Result<(), StateError> {
        let mut next = if response.full_state {
            Staged::default()
        } else {
            Staged::from(&*self)
        };
        if response.full_state {
            next.versions.clear();
        }
        for removed in &response.removed {
            let name = removed.name.as_str();
            match api::ResourceType::try_from(removed.r#type) {
                Ok(api::ResourceType::Workload) => {
                    next.workloads.remove(name);
                }
                Ok(api::ResourceType::Service) => {
                    next.services.remove(name);
                }
                Ok(api::ResourceType::AuthorizationPolicy) => {
                    next.policies.remove(name);
                }
                // Waypoints and routes are for waypoints; ztunnel keeps no copy.
                _ => {}
            }
            next.versions
                .remove(&format!("{}/{}", type_name(removed.r#type), name));
        }
        for resource in &response.resources {
            let Some(kind) = &resource.kind else {
                return Err(StateError::EmptyResource {
                    name: resource.name.clone(),
                });
            };
            let type_key = match kind {
                Kind::Workload(w) => {
                    let w = Workload::from_api(w)?;
                    next.workloads.insert(w.uid.clone(), Arc::new(w));
                    api::ResourceType::Workload
                }
                Kind::Service(s) => {
                    let s = Service::from_api(s)?;
                    next.services.insert(s.key.clone(), Arc::new(s));
                    api::ResourceType::Service
                }
                Kind::AuthorizationPolicy(p) => {
                    let p = Policy::from_api(p)?;
                    next.policies.insert(p.key.clone(), Arc::new(p));
                    api::ResourceType::AuthorizationPolicy
                }
                Kind::Waypoint(_) => api::ResourceType::WaypointResource,
                Kind::Route(_) => api::ResourceType::Route,
            };
            next.versions.insert(
                format!("{}/{}", type_name(type_key as i32), resource.name),
                resource.version.clone(),
            );
        }
        let Indexes {
            by_ip,
            by_vip,
            by_endpoint,
        } = next.index()?;
        self.workloads = next.workloads;
        self.services = next.services;
        self.policies = next.policies;
        self.versions = next.versions;
        self.by_ip = by_ip;
        self.by_vip = by_vip;
        self.by_endpoint = by_endpoint;
        self.system_version = response.system_version.clone();
        Ok(())
    }
}

/// The resource type's name in version keys.
fn type_name(t: i32) -> &'static str {
    api::ResourceType::try_from(t).map_or("unknown", api::ResourceType::key_name)
}

#[derive(Default)]
struct Staged {
    workloads: HashMap<Box<str>, Arc<Workload>>,
    services: HashMap<Box<str>, Arc<Service>>,
    policies: HashMap<Box<str>, Arc<Policy>>,
    versions: HashMap<String, String>,
}

impl From<&ProxyState> for Staged {
    fn from(s: &ProxyState) -> Self {
        Staged {
            workloads: s.workloads.clone(),
            services: s.services.clone(),
            policies: s.policies.clone(),
            versions: s.versions.clone(),
        }
    }
}

struct Indexes {
    by_ip: HashMap<IpAddr, Arc<Workload>>,
    by_vip: HashMap<IpAddr, Arc<Service>>,
    by_endpoint: HashMap<Box<str>, Vec<Arc<Service>>>,
}

impl Staged {
    fn index(&self) -> Result<Indexes, StateError> {
        let mut by_ip: HashMap<IpAddr, Arc<Workload>> = HashMap::new();
        for w in self.workloads.values() {
            for ip in w.addresses.iter() {
                if let Some(first) = by_ip.insert(*ip, w.clone()) {
                    return Err(StateError::DuplicateAddress {
                        address: *ip,
                        first: first.uid.to_string(),
                        second: w.uid.to_string(),
                    });
                }
            }
        }
        let mut by_vip = HashMap::new();
        let mut by_endpoint: HashMap<Box<str>, Vec<Arc<Service>>> = HashMap::new();
        for s in self.services.values() {
            for vip in s.vips.iter() {
                by_vip.insert(*vip, s.clone());
            }
            for uid in s.endpoints.iter() {
                by_endpoint.entry(uid.clone()).or_default().push(s.clone());
            }
        }
        Ok(Indexes {
            by_ip,
            by_vip,
            by_endpoint,
        })
    }
}

#[cfg(test)]
mod tests {
    use ambit_proto::api::discovery::{Resource, SubscribeResponse};
    use ambit_proto::api::workload as wl;

    use super::*;

    fn workload(name: &str, ips: &[&str], protocol: wl::Protocol) -> Resource {
        let uid = format!("local//Pod/demo/{name}");
        Resource {
            name: uid.clone(),
            version: "1".into(),
            kind: Some(Kind::Workload(wl::Workload {
                uid,
                name: name.into(),
                namespace: "demo".into(),
                service_account: name.into(),
                node: "node-a".into(),
                addresses: ips.iter().map(|s| s.to_string()).collect(),
                protocol: protocol as i32,
                trust_domain: "cluster.local".into(),
                ..Default::default()
            })),
        }
    }

    fn service() -> Resource {
        Resource {
            name: "demo/reviews".into(),
            version: "1".into(),
            kind: Some(Kind::Service(wl::Service {
                name: "reviews".into(),
                namespace: "demo".into(),
                hostname: "reviews.demo.svc.cluster.local".into(),
                addresses: vec!["10.96.0.10".into(), "fd00:10:96::10".into()],
                ports: vec![wl::Port {
                    service_port: 9080,
                    target_port: 8080,
                    ..Default::default()
                }],
                endpoints: vec![wl::Endpoint {
                    workload_uid: "local//Pod/demo/reviews-v1".into(),
                }],
                waypoint: None,
            })),
        }
    }

    fn response(full: bool, resources: Vec<Resource>) -> SubscribeResponse {
        SubscribeResponse {
            system_version: "v".into(),
            nonce: "n".into(),
            resources,
            removed: vec![],
            full_state: full,
            more: false,
        }
    }

    impl ProxyState {
        fn resolve_any(&self, dst: SocketAddr) -> Upstream {
            self.resolve(dst, |_| false)
        }
    }

    fn base() -> ProxyState {
        let mut s = ProxyState::default();
        s.apply(&response(
            true,
            vec![
                workload(
                    "reviews-v1",
                    &["10.244.1.4", "fd00:10:244:1::4"],
                    wl::Protocol::Hbone,
                ),
                workload("legacy", &["10.244.2.3"], wl::Protocol::Tcp),
                service(),
            ],
        ))
        .unwrap();
        s
    }

    #[test]
    fn resolves_vips_workloads_and_the_outside() {
        let s = base();
        match s.resolve_any("10.96.0.10:9080".parse().unwrap()) {
            Upstream::Hbone {
                workload,
                target,
                service,
            } => {
                assert_eq!(&*workload.name, "reviews-v1");
                assert_eq!(target, "10.244.1.4:8080".parse().unwrap());
                assert_eq!(&*service.unwrap().key, "demo/reviews");
            }
            other => panic!("{other:?}"),
        }
        match s.resolve_any("[fd00:10:96::10]:9080".parse().unwrap()) {
            Upstream::Hbone { target, .. } => {
                assert_eq!(target, "[fd00:10:244:1::4]:8080".parse().unwrap())
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.resolve_any("10.244.2.3:8080".parse().unwrap()),
            Upstream::Passthrough {
                workload: Some(_),
                ..
            }
        ));
        assert!(matches!(
            s.resolve_any("192.0.2.1:443".parse().unwrap()),
            Upstream::Passthrough { workload: None, .. }
        ));
    }

    /// reviews with two endpoints, v1 healthy or not, v2 healthy.
    fn two_endpoints(v1_healthy: bool) -> ProxyState {
        let mut v1 = workload(
            "reviews-v1",
            &["10.244.1.4", "fd00:10:244:1::4"],
            wl::Protocol::Hbone,
        );
        if let Some(Kind::Workload(w)) = &mut v1.kind {
            if !v1_healthy {
                w.status = wl::WorkloadStatus::Unhealthy as i32;
            }
        }
        let mut svc = service();
        if let Some(Kind::Service(s)) = &mut svc.kind {
            s.endpoints.push(wl::Endpoint {
                workload_uid: "local//Pod/demo/reviews-v2".into(),
            });
        }
        let mut s = ProxyState::default();
        s.apply(&response(
            true,
            vec![
                v1,
                workload("reviews-v2", &["10.244.2.2"], wl::Protocol::Hbone),
                svc,
            ],
        ))
        .unwrap();
        s
    }

    /// Which endpoints 200 picks of `dst` land on.
    fn picks(s: &ProxyState, dst: &str, ejected: &[&str]) -> std::collections::BTreeSet<String> {
        let ejected: Vec<IpAddr> = ejected.iter().map(|a| a.parse().unwrap()).collect();
        (0..200)
            .map(
                |_| match s.resolve(dst.parse().unwrap(), |ip| ejected.contains(&ip)) {
                    Upstream::Hbone { target, .. } => target.to_string(),
                    Upstream::NoHealthyEndpoint { .. } => "none".into(),
                    other => panic!("{other:?}"),
                },
            )
            .collect()
    }

    #[test]
    fn endpoint_choice() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        let vip4 = "10.96.0.10:9080";
        let vip6 = "[fd00:10:96::10]:9080";
        let (v1, v2) = ("10.244.1.4:8080", "10.244.2.2:8080");
        // (v1 healthy in config, ejected by this ztunnel, destination, expected picks)
        let table: [(bool, &[&str], &str, &[&str]); 7] = [
            (true, &[], vip4, &[v1, v2]),
            (false, &[], vip4, &[v2]),
            (true, &["10.244.1.4"], vip4, &[v2]),
            (true, &["10.244.2.2"], vip4, &[v1]),
            // Everything ejected: still try one rather than refuse.
            (true, &["10.244.1.4", "10.244.2.2"], vip4, &[v1, v2]),
            // Only v1 has an IPv6 address.
            (true, &[], vip6, &["[fd00:10:244:1::4]:8080"]),
            (false, &[], vip6, &["none"]),
        ];
        for (healthy, ejected, dst, expected) in table {
            let s = two_endpoints(healthy);
            assert_eq!(
                picks(&s, dst, ejected),
                set(expected),
                "v1 healthy {healthy}, ejected {ejected:?}, to {dst}"
            );
        }
    }

    #[test]
    fn the_destination_side_finds_the_service_of_a_workload() {
        let s = two_endpoints(true);
        let found = |uid: &str, port| s.service_of(uid, port).map(|s| s.key.to_string());
        assert_eq!(
            found("local//Pod/demo/reviews-v2", 8080).as_deref(),
            Some("demo/reviews")
        );
        // Another port of a workload that backs one service: still that service.
        assert_eq!(
            found("local//Pod/demo/reviews-v2", 9999).as_deref(),
            Some("demo/reviews")
        );
        assert_eq!(found("local//Pod/demo/legacy", 8080), None);
    }

    #[test]
    fn a_bad_update_is_refused_whole_and_the_old_state_stays() {
        let mut s = base();
        let bad = response(
            false,
            vec![
                workload("new-good", &["10.244.1.9"], wl::Protocol::Hbone),
                workload("new-bad", &["10.244.1.300"], wl::Protocol::Hbone),
            ],
        );
        let err = s.apply(&bad).unwrap_err().to_string();
        assert!(
            err.contains("new-bad") && err.contains("10.244.1.300"),
            "{err}"
        );
        assert!(
            s.workload("local//Pod/demo/new-good").is_none(),
            "half of a refused update was applied"
        );
        assert!(s.workload("local//Pod/demo/reviews-v1").is_some());

        let clash = response(
            false,
            vec![workload("impostor", &["10.244.1.4"], wl::Protocol::Hbone)],
        );
        let err = s.apply(&clash).unwrap_err().to_string();
        assert!(err.contains("10.244.1.4"), "{err}");
        assert!(s.workload("local//Pod/demo/impostor").is_none());
    }

    #[test]
    fn deltas_add_and_remove_and_versions_follow() {
        let mut s = base();
        let mut delta = response(
            false,
            vec![workload("reviews-v2", &["10.244.2.2"], wl::Protocol::Hbone)],
        );
        delta.removed.push(api::RemovedResource {
            r#type: api::ResourceType::Workload as i32,
            name: "local//Pod/demo/legacy".into(),
        });
        s.apply(&delta).unwrap();
        assert!(s.workload("local//Pod/demo/reviews-v2").is_some());
        assert!(s.workload("local//Pod/demo/legacy").is_none());
        assert!(
            s.versions()
                .contains_key("workload/local//Pod/demo/reviews-v2")
        );
        assert!(!s.versions().contains_key("workload/local//Pod/demo/legacy"));
        assert!(s.versions().contains_key("service/demo/reviews"));
    }
}
