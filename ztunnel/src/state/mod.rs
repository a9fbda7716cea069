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

    /// Where a connection to `dst` should go.
    pub fn resolve(&self, dst: SocketAddr) -> Upstream {
        if let Some(service) = self.by_vip.get(&dst.ip()) {
            let target_port = service.target_port(dst.port()).unwrap_or(dst.port());
            let healthy: Vec<Arc<Workload>> = service
                .endpoints
                .iter()
                .filter_map(|uid| self.workloads.get(uid))
                .filter(|w| w.healthy && w.address_like(dst.ip()).is_some())
                .cloned()
                .collect();
            let Some(workload) = service.pick(&healthy) else {
                return Upstream::NoHealthyEndpoint {
                    service: service.clone(),
                };
            };
            let ip = workload.address_like(dst.ip()).expect("filtered above");
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
        let (by_ip, by_vip) = next.index()?;
        self.workloads = next.workloads;
        self.services = next.services;
        self.policies = next.policies;
        self.versions = next.versions;
        self.by_ip = by_ip;
        self.by_vip = by_vip;
        self.system_version = response.system_version.clone();
        Ok(())
    }
}

/// The resource type's name in version keys, as the controller spells it.
pub fn type_name(t: i32) -> &'static str {
    match api::ResourceType::try_from(t) {
        Ok(api::ResourceType::Workload) => "workload",
        Ok(api::ResourceType::Service) => "service",
        Ok(api::ResourceType::WaypointResource) => "waypoint",
        Ok(api::ResourceType::AuthorizationPolicy) => "authorization_policy",
        Ok(api::ResourceType::Route) => "route",
        _ => "unknown",
    }
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

type Indexes = (
    HashMap<IpAddr, Arc<Workload>>,
    HashMap<IpAddr, Arc<Service>>,
);

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
        for s in self.services.values() {
            for vip in s.vips.iter() {
                by_vip.insert(*vip, s.clone());
            }
        }
        Ok((by_ip, by_vip))
    }
}
