//! On-demand destinations (Istio's on-demand workload discovery, Linkerd's per-destination
//! lookups): a ztunnel that subscribes with `on_demand` is sent its node's part up front and
//! every other destination only once one of its pods connects there and it asks for the
//! address. The controller keeps each looked-up address in the subscription (sending changes
//! to what is there, or a workload that later takes an unknown address) until the proxy
//! releases it.
//!
//! A node's part here is more than [`super::scope`]'s: with nothing mesh-wide sent, the
//! services its pods back and the waypoints in front of them must come with it, since the
//! destination side names the service a connection was for and lets a waypoint's traffic
//! through on the waypoint's judgement (see `enforcing_waypoint` in the proxies' state).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use ambit_proto::api::discovery::{ResourceType, Subscriber};

use super::ResourceKey;
use super::desired::{Desired, NodePart};
use super::scope::{Scope, add_service, egress_scopes, policies_selecting};
use super::snapshot::{Snapshot, named_key};
use crate::model::{Addressed, MeshModel, ObjectKey, Workload};

/// What one address brings into a scope: the workload there with its waypoint, or the service
/// with that VIP with its endpoints and waypoint; `None` when the mesh has nothing there.
pub fn keys_for(model: &MeshModel, ip: IpAddr) -> Option<Scope> {
    let mut scope = Scope::new();
    match model.at_address(ip)? {
        Addressed::Service(s) => {
            add_service(model, &mut scope, s);
            add_waypoint(&mut scope, &s.waypoint);
        }
        Addressed::Workload(w) => {
            scope.insert(ResourceKey::new(ResourceType::Workload, w.uid.as_str()));
            add_waypoint(&mut scope, &w.waypoint);
        }
    }
    Some(scope)
}

fn add_waypoint(scope: &mut Scope, waypoint: &Option<ObjectKey>) {
    if let Some(k) = waypoint {
        scope.insert(named_key(ResourceType::WaypointResource, k));
    }
}

/// The addresses an on-demand subscription holds, and the lookups not yet answered.
#[derive(Debug, Default)]
pub struct Lookups {
    held: BTreeSet<IpAddr>,
    unanswered: BTreeSet<IpAddr>,
}

/// What one request changed of the addresses held: the released ones first, as they were
/// taken first.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub released: Vec<IpAddr>,
    pub added: Vec<IpAddr>,
}

/// The most addresses one subscription may hold: a bound on what one proxy can make the
/// controller track (each a few keys), above ztunnel's own bound (50,000, which it keeps by
/// releasing its least recently used).
pub const MAX_ADDRESSES: usize = 100_000;

/// Why a lookup request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LookupError {
    #[error("{0:?} is not an IP address; lookups name destinations by address")]
    NotAnAddress(String),
    #[error(
        "the subscription already holds {MAX_ADDRESSES} looked-up addresses; the proxy must release unused ones"
    )]
    TooMany,
}

impl Lookups {
    /// Takes a request's `release` and `lookup` lists, in that order; returns which addresses
    /// it released and which it newly holds.
    pub fn request(
        &mut self,
        lookup: &[String],
        release: &[String],
    ) -> Result<Change, LookupError> {
        let parse = |a: &String| {
            a.parse::<IpAddr>()
                .map_err(|_| LookupError::NotAnAddress(a.clone()))
        };
        let lookup = lookup.iter().map(parse).collect::<Result<Vec<_>, _>>()?;
        let release = release.iter().map(parse).collect::<Result<Vec<_>, _>>()?;
        // Releases first: a proxy at its own bound releases one address to make room for
        // the next in the same request.
        let mut change = Change::default();
        for ip in release {
            if self.held.remove(&ip) {
                change.released.push(ip);
            }
            self.unanswered.remove(&ip);
        }
        for ip in lookup {
            if self.held.len() >= MAX_ADDRESSES && !self.held.contains(&ip) {
                return Err(LookupError::TooMany);
            }
            if self.held.insert(ip) {
                change.added.push(ip);
            }
            self.unanswered.insert(ip);
        }
        Ok(change)
    }

    pub fn held(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.held.iter().copied()
    }

    fn holds(&self, ip: IpAddr) -> bool {
        self.held.contains(&ip)
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether some lookup waits for a response to answer it.
    pub fn has_unanswered(&self) -> bool {
        !self.unanswered.is_empty()
    }

    /// The lookups a response about to be sent answers, as (answered, unknown), and marks them
    /// answered. `known` tells whether the mesh has anything at an address.
    pub fn answer(&mut self, known: impl Fn(IpAddr) -> bool) -> (Vec<String>, Vec<String>) {
        let answered: Vec<IpAddr> = std::mem::take(&mut self.unanswered).into_iter().collect();
        let unknown = answered
            .iter()
            .filter(|ip| !known(**ip))
            .map(IpAddr::to_string)
            .collect();
        (answered.iter().map(IpAddr::to_string).collect(), unknown)
    }
}

/// What an on-demand ztunnel on `subscriber.name` receives from `snapshot`: its node's part
/// and what each of `lookups` brings, counted again in `brought` (for [`apply`], which changes
/// it in place as lookups come and go). The node part is taken over from `previous` when the
/// change touched nothing on the node (as [`super::scope::desired_since`] does).
pub fn desired(
    snapshot: &Snapshot,
    subscriber: &Subscriber,
    lookups: &Lookups,
    brought: &mut Brought,
    previous: Option<&Desired>,
) -> Desired {
    let untouched = previous.is_some_and(|p| {
        p.generation == snapshot.generation
            || p.generation + 1 == snapshot.generation
                && snapshot
                    .touched_nodes
                    .as_ref()
                    .is_some_and(|touched| !touched.contains(&subscriber.name))
    });
    let part = match previous.and_then(|p| p.node_part.clone()) {
        Some(part) if untouched => part,
        _ => Arc::new(node_part(snapshot, &subscriber.name)),
    };
    *brought = Brought::count(snapshot.model(), lookups.held());
    let mut wanted: Scope = brought.keys().cloned().collect();
    wanted.retain(|k| !part.own.contains_key(k));
    let mut own = part.own.clone();
    own.extend(snapshot.resolve(&wanted));
    let mut desired = Desired::own(own);
    desired.node_part = Some(part);
    desired.generation = snapshot.generation;
    desired
}

/// The node's workloads, the policies selecting its meshed ones and the egress scopes of their
/// namespaces (as for every ztunnel), the services its meshed workloads back or their scopes
/// name, and the waypoints of the first.
fn node_part(snapshot: &Snapshot, node: &str) -> NodePart {
    let model = snapshot.model();
    let local: Vec<&Workload> = model.workloads_on_node(node).collect();
    let meshed: Vec<&Workload> = local.iter().copied().filter(|w| w.meshed).collect();
    let mut own: Scope = local
        .iter()
        .map(|w| ResourceKey::new(ResourceType::Workload, w.uid.as_str()))
        .collect();
    own.extend(policies_selecting(model, meshed.iter().copied()));
    for w in &meshed {
        add_waypoint(&mut own, &w.waypoint);
        // The service only, not its endpoints elsewhere: the destination side names the
        // service a connection came for. A pod here calling it asks for its VIP like any other
        // (ztunnel looks every VIP up once: one it holds may lack endpoints).
        let key = w.key();
        for s in model.services_backed_by(&key) {
            own.insert(named_key(
                ResourceType::Service,
                &ObjectKey::new(&s.service.namespace, &s.service.name),
            ));
            add_waypoint(&mut own, &s.waypoint);
        }
    }
    // A scope that names a service lets its endpoints' addresses through too: the service is
    // held (without its endpoints) so that ztunnel can tell a looked-up pod is one of them.
    for (key, scope) in egress_scopes(model, &meshed) {
        own.insert(key);
        own.extend(
            scope
                .named_services()
                .map(|(ns, name)| ObjectKey::new(ns, name))
                .filter(|k| model.service(k).is_some())
                .map(|k| named_key(ResourceType::Service, &k)),
        );
    }
    NodePart {
        own: snapshot.resolve(&own),
        captures: !meshed.is_empty(),
    }
}

mod incremental;
pub use incremental::{Brought, apply, follows, update};

#[cfg(test)]
mod tests;
