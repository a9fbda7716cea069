//! Everything ztunnel knows about the mesh, indexed for the lookups the data path makes:
//! workloads by address, services by VIP, policies by name. Updated from the discovery stream
//! (or a local file) all-or-nothing: a bad update is refused whole and the old state stays.

mod policy;
mod waypoint;
mod workload;

pub use policy::{Decision, Policy, Source as PolicySource};
pub use waypoint::Waypoint;
pub use workload::{Protocol, Service, ServicePort, Workload};

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_proto::api::discovery::{self as api, resource::Kind};
use ambit_proto::identity::SpiffeId;

/// Why an update was refused (it is NACKed with this text, and the old state kept).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("workload {uid:?} is invalid: {reason}")]
    InvalidWorkload { uid: String, reason: String },
    #[error("service {key:?} is invalid: {reason}")]
    InvalidService { key: String, reason: String },
    #[error("authorization policy {key:?} is invalid: {reason}")]
    InvalidPolicy { key: String, reason: String },
    #[error("waypoint {key:?} is invalid: {reason}")]
    InvalidWaypoint { key: String, reason: String },
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
    /// The service (or workload) uses a waypoint: HBONE to the waypoint, tunnel target the
    /// original destination (the VIP or pod address and port), as Istio does. `waypoint` is
    /// `None` when it is not in the config: the connection must be refused, never sent
    /// around it.
    Waypoint {
        key: Box<str>,
        waypoint: Option<Arc<Waypoint>>,
        target: SocketAddr,
        service: Option<Arc<Service>>,
        workload: Option<Arc<Workload>>,
    },
}

#[derive(Debug, Default)]
pub struct ProxyState {
    workloads: HashMap<Box<str>, Arc<Workload>>,
    services: HashMap<Box<str>, Arc<Service>>,
    policies: HashMap<Box<str>, Arc<Policy>>,
    waypoints: HashMap<Box<str>, Arc<Waypoint>>,
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

    /// Where a connection from `from` to `dst` should go. A service or workload that uses a
    /// waypoint is reached through it (except by the waypoint itself). A service's endpoint is
    /// chosen among its healthy ones of the same address family, leaving out those `ejected`
    /// says failed recently unless no other is left (a guess at a recovering endpoint beats a
    /// sure refusal).
    pub fn resolve(
        &self,
        dst: SocketAddr,
        from: &SpiffeId,
        ejected: impl Fn(IpAddr) -> bool,
    ) -> Upstream {
        let through = |key: &Option<Box<str>>| -> Option<(Box<str>, Option<Arc<Waypoint>>)> {
            let key = key.as_ref()?;
            let waypoint = self.waypoints.get(key).cloned();
            if waypoint.as_ref().is_some_and(|w| &w.identity == from) {
                return None;
            }
            Some((key.clone(), waypoint))
        };
        if let Some(service) = self.by_vip.get(&dst.ip()) {
            if let Some((key, waypoint)) = through(&service.waypoint) {
                return Upstream::Waypoint {
                    key,
                    waypoint,
                    target: dst,
                    service: Some(service.clone()),
                    workload: None,
                };
            }
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
        let workload = self.by_ip.get(&dst.ip());
        if let Some((key, waypoint)) = workload.and_then(|w| through(&w.waypoint)) {
            return Upstream::Waypoint {
                key,
                waypoint,
                target: dst,
                service: None,
                workload: workload.cloned(),
            };
        }
        match workload {
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
                Ok(api::ResourceType::WaypointResource) => {
                    next.waypoints.remove(name);
                }
                // Routes are for waypoints; ztunnel keeps no copy.
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
                Kind::Waypoint(w) => {
                    let w = Waypoint::from_api(w)?;
                    next.waypoints.insert(w.key.clone(), Arc::new(w));
                    api::ResourceType::WaypointResource
                }
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
        self.waypoints = next.waypoints;
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
    waypoints: HashMap<Box<str>, Arc<Waypoint>>,
    versions: HashMap<String, String>,
}

impl From<&ProxyState> for Staged {
    fn from(s: &ProxyState) -> Self {
        Staged {
            workloads: s.workloads.clone(),
            services: s.services.clone(),
            policies: s.policies.clone(),
            waypoints: s.waypoints.clone(),
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
mod tests;
