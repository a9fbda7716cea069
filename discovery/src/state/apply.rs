//! Applying a discovery response to a [`ProxyState`]: the resources are checked, the indexes
//! built (for the whole state) or changed where the delta touched them, and only when all of
//! that succeeded does the new state replace the old one.

use std::net::IpAddr;
use std::sync::Arc;

use ambit_proto::api::discovery::{self as api, resource::Kind};
use imbl::ordmap::Entry;

use super::backing::Backing;
use super::dense;
use super::interned::Interned;
use super::reindex::Touched;
use super::version::{Version, VersionKey};
use super::workload::ByUid;
use super::{
    EgressScope, Indexes, Map, Policy, ProxyState, Service, Set, StateError, Waypoint, Workload,
};

impl ProxyState {
    /// Applies a discovery response: all of it, or none of it.
    pub fn apply(&mut self, response: &api::SubscribeResponse) -> Result<(), StateError> {
        *self = self.applied(response)?;
        Ok(())
    }

    /// The state `response` makes of this one, which is left as it is: for a proxy that swaps
    /// the new state in while readers keep using the old one.
    pub fn applied(&self, response: &api::SubscribeResponse) -> Result<ProxyState, StateError> {
        let mut touched = Touched::default();
        let mut next = if response.full_state {
            ProxyState::default()
        } else {
            self.clone()
        };
        next.remove(&response.removed, &mut touched);
        next.add(&response.resources, &mut touched)?;
        if response.full_state {
            next.interned.values().settle();
        } else if next.interned.values().outgrown() {
            next.interned = Interned::of(next.workloads());
        }
        if response.full_state {
            next.indexes = next.index()?;
        } else {
            touched.reindex(&mut next)?;
        }
        next.system_version = response.system_version.as_str().into();
        Ok(next)
    }

    pub(super) fn remove(&mut self, removed: &[api::RemovedResource], touched: &mut Touched) {
        for r in removed {
            let name = r.name.as_str();
            match api::ResourceType::try_from(r.r#type) {
                Ok(api::ResourceType::Workload) => {
                    touched
                        .old_workloads
                        .extend(self.workloads.remove(name).map(|w| w.0));
                }
                Ok(api::ResourceType::Service) => {
                    touched.old_services.extend(self.services.remove(name));
                }
                Ok(api::ResourceType::AuthorizationPolicy) => {
                    self.policies.remove(name);
                }
                Ok(api::ResourceType::WaypointResource) => {
                    self.waypoints.remove(name);
                }
                Ok(api::ResourceType::Route) => {
                    self.routes.remove(name);
                }
                Ok(api::ResourceType::TrafficPolicy) => {
                    self.traffic_policies.remove(name);
                }
                Ok(api::ResourceType::EgressScope) => {
                    self.egress_scopes.remove(name);
                }
                // A type this proxy does not know: nothing of it is held.
                Ok(api::ResourceType::Unspecified) | Err(_) => {}
            }
            if r.r#type != api::ResourceType::Workload as i32 {
                self.versions
                    .remove(&VersionKey::new(r.r#type, name.into()));
            }
        }
    }

    pub(super) fn add(
        &mut self,
        resources: &[api::Resource],
        touched: &mut Touched,
    ) -> Result<(), StateError> {
        let interned = self.interned.clone();
        let mut interned = interned.values();
        // Put in all at once, after the loop: in an order that fills the map's nodes.
        let mut workloads = Vec::new();
        for resource in resources {
            let Some(kind) = &resource.kind else {
                return Err(StateError::EmptyResource {
                    name: resource.name.clone(),
                });
            };
            // The name the resource is held under, shared with its version's key.
            let (type_key, held_as): (_, Arc<str>) = match kind {
                Kind::Workload(w) => {
                    let w = Workload::from_api_in(w, &resource.version, &mut interned)?;
                    touched.new_workloads.push(w.clone());
                    workloads.push(ByUid(w));
                    // It holds its version itself.
                    continue;
                }
                Kind::Service(s) => {
                    let s = Arc::new(Service::from_api(s)?);
                    let key = s.key.clone();
                    touched.new_services.push(s.clone());
                    touched
                        .old_services
                        .extend(self.services.insert(s.key.clone(), s));
                    (api::ResourceType::Service, key)
                }
                Kind::AuthorizationPolicy(p) => {
                    let p = Policy::from_api(p)?;
                    let key = p.key.clone();
                    self.policies.insert(p.key.clone(), Arc::new(p));
                    (api::ResourceType::AuthorizationPolicy, key)
                }
                Kind::Waypoint(w) => {
                    let w = Waypoint::from_api(w)?;
                    let key = w.key.clone();
                    self.waypoints.insert(w.key.clone(), Arc::new(w));
                    (api::ResourceType::WaypointResource, key)
                }
                Kind::Route(r) => {
                    // Checked by the waypoint that compiles it; held as sent.
                    let name: Arc<str> = resource.name.as_str().into();
                    self.routes.insert(name.clone(), Arc::new(r.clone()));
                    (api::ResourceType::Route, name)
                }
                Kind::TrafficPolicy(p) => {
                    // Checked by the waypoint that compiles it; held as sent.
                    let name: Arc<str> = resource.name.as_str().into();
                    self.traffic_policies
                        .insert(name.clone(), Arc::new(p.clone()));
                    (api::ResourceType::TrafficPolicy, name)
                }
                Kind::EgressScope(s) => {
                    let s = EgressScope::from_api(s);
                    let namespace = s.namespace.clone();
                    self.egress_scopes.insert(s.namespace.clone(), Arc::new(s));
                    (api::ResourceType::EgressScope, namespace)
                }
            };
            // A resource is held under its name; should one ever be held otherwise, its
            // version keeps the name it was sent with.
            let name = if *held_as == *resource.name {
                held_as
            } else {
                resource.name.as_str().into()
            };
            self.versions.insert(
                VersionKey::new(type_key as i32, name),
                Version::of(&resource.version),
            );
        }
        for w in dense::in_fill_order(workloads, |w| w.0.uid()) {
            touched
                .old_workloads
                .extend(self.workloads.insert(w).map(|old| old.0));
        }
        Ok(())
    }

    /// The indexes of the whole state, built afresh.
    pub(super) fn index(&self) -> Result<Indexes, StateError> {
        let addresses: Vec<(IpAddr, Workload)> = self
            .workloads()
            .flat_map(|w| w.addresses().iter().map(|ip| (*ip, w.clone())))
            .collect();
        let mut by_ip: Map<IpAddr, Workload> = Map::new();
        dense::insert_all(&mut by_ip, unique_addresses(addresses)?, |_| {});
        let mut by_vip = Map::new();
        let mut by_hostname: Map<Arc<str>, Arc<Service>> = Map::new();
        let mut backings = Vec::new();
        for s in self.services.values() {
            for vip in s.vips.iter() {
                by_vip.insert(*vip, s.clone());
            }
            if !s.hostname.is_empty() {
                match by_hostname.entry(s.hostname.clone()) {
                    Entry::Vacant(v) => {
                        v.insert(s.clone());
                    }
                    Entry::Occupied(o) => {
                        return Err(StateError::DuplicateHostname {
                            hostname: s.hostname.to_string(),
                            first: o.get().key.to_string(),
                            second: s.key.to_string(),
                        });
                    }
                }
            }
            backings.extend(Backing::of(s));
        }
        let mut by_endpoint = Set::new();
        for b in dense::in_fill_order(backings, |b| b) {
            by_endpoint.insert(b);
        }
        Ok(Indexes {
            by_ip,
            by_vip,
            by_hostname,
            by_endpoint,
        })
    }
}

/// `addresses` sorted, or the first address two workloads claim (the one earlier in the list
/// named first).
pub(super) fn unique_addresses(
    mut addresses: Vec<(IpAddr, Workload)>,
) -> Result<Vec<(IpAddr, Workload)>, StateError> {
    // Stable: of two claims to one address, the earlier stays first.
    addresses.sort_by_key(|(ip, _)| *ip);
    if let Some(pair) = addresses.windows(2).find(|p| p[0].0 == p[1].0) {
        return Err(StateError::DuplicateAddress {
            address: pair[0].0,
            first: pair[0].1.uid().to_string(),
            second: pair[1].1.uid().to_string(),
        });
    }
    Ok(addresses)
}
