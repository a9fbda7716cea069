//! Everything a proxy knows about the mesh, indexed for the lookups the data path makes:
//! workloads by address, services by VIP and host name, waypoints and policies by key, and the
//! routes a waypoint compiles. Updated from the discovery stream (or a local file)
//! all-or-nothing: a bad update is refused whole and the old state stays.
//!
//! A [`ProxyState`] is cheap to clone (its maps are persistent), so a proxy may build its next
//! state on a clone ([`ProxyState::applied`]) and swap it in, readers never waiting on that.

mod apply;
mod backing;
mod dense;
mod egress_scope;
mod interned;
mod policy;
mod reindex;
mod service;
mod version;
mod waypoint;
mod workload;

pub use egress_scope::{EgressScope, OutsideEgressScope};
pub use policy::{
    Action, Decision, Policy, Request as PolicyRequest, Source as PolicySource, Verdict, decide,
    decide_request,
};
pub use service::{AppProtocol, Service, ServicePort};
pub use waypoint::Waypoint;
pub use workload::{Protocol, Shared, Workload, WorkloadFields};

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ambit_proto::api::discovery as api;
use ambit_proto::api::route::Route;
use ambit_proto::api::traffic::TrafficPolicy;
use ambit_proto::identity::SpiffeId;

use version::{Version, VersionKey};
use workload::ByUid;

/// The state's maps are persistent: a clone shares every node with the original, and a delta
/// copies only the paths it changes. A proxy builds its next state on a clone for every
/// response, and an on-demand ztunnel gets one per destination its pods first reach, so a
/// plain map's clone made each lookup's answer cost a copy of all it held (1.8 ms at 8,000
/// workloads; 13 µs with a persistent map).
///
/// A B-tree rather than imbl's hash trie: the trie's nodes are fixed arrays of 16 or 32 slots
/// that a large map fills sparsely, from 56 to 236 B per entry as the size varies (192 B for
/// workloads by uid and 236 B by address at 50k), where the B-tree holds 56 and 77 B at every
/// size. A lookup costs more comparisons (at 50k, cold caches: 0.3–0.5 µs against 0.15–0.3 µs),
/// which a connection pays once or twice; in the memory a node holds per workload, everyone pays.
type Map<K, V> = imbl::OrdMap<K, V>;
type Set<T> = imbl::OrdSet<T>;

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
    #[error("host name {hostname:?} is claimed by both service {first:?} and service {second:?}")]
    DuplicateHostname {
        hostname: String,
        first: String,
        second: String,
    },
}

/// The mesh as one proxy sees it; see the module docs.
#[derive(Debug, Default, Clone)]
pub struct ProxyState {
    /// A workload holds its uid, so this is a set found by it rather than a map keyed by it.
    workloads: Set<ByUid>,
    services: Map<Arc<str>, Arc<Service>>,
    policies: Map<Arc<str>, Arc<Policy>>,
    waypoints: Map<Arc<str>, Arc<Waypoint>>,
    routes: Map<Arc<str>, Arc<Route>>,
    traffic_policies: Map<Arc<str>, Arc<TrafficPolicy>>,
    /// By declaring namespace.
    egress_scopes: Map<Arc<str>, Arc<EgressScope>>,
    /// Version of each resource (`<type>/<name>`) but workloads, sent back on reconnect so the
    /// controller resends only what changed. A workload holds its own version: an entry here
    /// for each was 72 B per workload, the most of anything after the workload itself.
    /// Sorted rather than hashed: no connection reads it, and a B-tree's nodes hold more
    /// entries per byte than a hash trie's.
    versions: imbl::OrdMap<VersionKey, Version>,
    system_version: Arc<str>,
    indexes: Indexes,
    /// The text its workloads share.
    interned: interned::Interned,
}

/// Lookups derived from the resources: built for a whole state, changed where a delta
/// touched them (see [`reindex`]).
#[derive(Debug, Default, Clone)]
struct Indexes {
    by_ip: Map<IpAddr, Workload>,
    by_vip: Map<IpAddr, Arc<Service>>,
    by_hostname: Map<Arc<str>, Arc<Service>>,
    /// The services each workload (by uid) is an endpoint of (see [`backing`]).
    by_endpoint: Set<backing::Backing>,
}

impl ProxyState {
    /// The workload with this uid.
    pub fn workload(&self, uid: &str) -> Option<&Workload> {
        self.workloads.get(uid).map(|w| &w.0)
    }

    /// The workload that has this address.
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Workload> {
        self.indexes.by_ip.get(&ip)
    }

    /// Whether a workload or a service VIP has this address: a connection there needs nothing
    /// more of the controller.
    pub fn knows_address(&self, ip: IpAddr) -> bool {
        self.indexes.by_vip.contains_key(&ip) || self.indexes.by_ip.contains_key(&ip)
    }

    /// Every workload, in no order.
    pub fn workloads(&self) -> impl Iterator<Item = &Workload> {
        self.workloads.iter().map(|w| &w.0)
    }

    pub fn workload_count(&self) -> usize {
        self.workloads.len()
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// The service with this key (`<namespace>/<name>`).
    pub fn service(&self, key: &str) -> Option<&Arc<Service>> {
        self.services.get(key)
    }

    /// The service with this VIP.
    pub fn service_by_vip(&self, ip: IpAddr) -> Option<&Arc<Service>> {
        self.indexes.by_vip.get(&ip)
    }

    /// The service with this host name (`reviews.demo.svc.cluster.local`), as routes name
    /// their backends.
    pub fn service_by_hostname(&self, hostname: &str) -> Option<&Arc<Service>> {
        self.indexes.by_hostname.get(hostname)
    }

    /// Every service, in no order.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    /// The services `workload` (a uid) is an endpoint of, in the order of their keys.
    pub fn services_of(&self, workload: &str) -> impl Iterator<Item = &Arc<Service>> + use<'_> {
        backing::services_of(&self.indexes.by_endpoint, workload)
    }

    /// The service a connection to `workload`'s `port` most likely came through, for the
    /// destination side's telemetry (the tunnel names the pod, not the service): one of the
    /// services `workload` backs with that target port, else any of them.
    pub fn service_of(&self, workload: &str, port: u16) -> Option<&Arc<Service>> {
        self.services_of(workload)
            .find(|s| s.ports.iter().any(|p| p.target_port == port))
            .or_else(|| self.services_of(workload).next())
    }

    /// The waypoint with this key (`<namespace>/<name>`).
    pub fn waypoint(&self, key: &str) -> Option<&Arc<Waypoint>> {
        self.waypoints.get(key)
    }

    /// Every waypoint, in no order.
    pub fn waypoints(&self) -> impl Iterator<Item = &Arc<Waypoint>> {
        self.waypoints.values()
    }

    /// Every authorization policy, in no order.
    pub fn policies(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.policies.values()
    }

    /// Every route, by resource name (`<namespace>/<name>`), in no order: a waypoint compiles
    /// them; ztunnel has no use for them.
    pub fn routes(&self) -> impl Iterator<Item = (&str, &Arc<Route>)> {
        self.routes.iter().map(|(name, r)| (&**name, r))
    }

    /// Every traffic policy, by resource name (`<namespace>/<name>`), in no order: a waypoint
    /// compiles them; ztunnel has no use for them.
    pub fn traffic_policies(&self) -> impl Iterator<Item = (&str, &Arc<TrafficPolicy>)> {
        self.traffic_policies.iter().map(|(name, p)| (&**name, p))
    }

    /// The version held of a resource, by its key (`<type>/<name>`, e.g. `service/demo/reviews`).
    pub fn version(&self, key: &str) -> Option<String> {
        let key = VersionKey::parse(key)?;
        let v = match key.is_workload() {
            true => &self.workload(key.name())?.version,
            false => self.versions.get(&key)?,
        };
        Some(v.to_string())
    }

    /// Every resource held, `<type>/<name>` to version: what a reconnecting proxy tells the
    /// controller it has (`known_versions`).
    pub fn known_versions(&self) -> HashMap<String, String> {
        let workloads = self.workloads().map(|w| {
            let kind = api::ResourceType::Workload.key_name();
            (format!("{kind}/{}", w.uid()), w.version.to_string())
        });
        self.versions
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain(workloads)
            .collect()
    }

    /// The version of the whole scope, as the controller named it.
    pub fn system_version(&self) -> &str {
        &self.system_version
    }

    /// The L4 authorization decision for a connection to `workload` on `port` (L7 conditions
    /// fail closed: see [`policy`]).
    pub fn authorize(&self, workload: &Workload, source: &PolicySource<'_>, port: u16) -> Verdict {
        policy::decide(self.policies_of(workload), source, port)
    }

    /// The authorization decision for `request` to `workload` on `port`, every condition checked
    /// (a waypoint's).
    pub fn authorize_request(
        &self,
        workload: &Workload,
        source: &PolicySource<'_>,
        port: u16,
        request: &PolicyRequest<'_>,
    ) -> Verdict {
        policy::decide_request(self.policies_of(workload), source, port, request)
    }

    fn policies_of<'a>(
        &'a self,
        workload: &'a Workload,
    ) -> impl Iterator<Item = &'a Arc<Policy>> + Clone + 'a {
        workload
            .shared
            .authorization_policies
            .iter()
            .filter_map(|key| self.policies.get(&**key))
    }

    /// The waypoint `peer` proves to be, if `workload` uses it: its own waypoint, or that of a
    /// service it is an endpoint of. Traffic from that waypoint was authorized there, against
    /// the original client's identity, so the destination must not judge it again by the
    /// waypoint's identity. A waypoint the state does not hold matches no peer.
    pub fn enforcing_waypoint(
        &self,
        workload: &Workload,
        peer: &SpiffeId,
    ) -> Option<&Arc<Waypoint>> {
        let services = self.services_of(workload.uid());
        std::iter::once(&workload.shared.waypoint)
            .chain(services.map(|s| &s.waypoint))
            .filter_map(|key| self.waypoints.get(&**key.as_ref()?))
            .find(|w| w.identity == *peer)
    }
}

#[cfg(test)]
mod tests;
