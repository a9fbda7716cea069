//! Which resources each proxy receives.
//!
//! This is what a ztunnel subscribed with `--destinations all` receives; one subscribed on
//! demand (the default) gets its node's part and what it looks up instead (see
//! [`super::on_demand`]).
//!
//! **ztunnel on node N** receives:
//! 1. every workload on N, meshed or not (a non-meshed one tells it which pods to leave alone);
//! 2. if N runs at least one meshed workload (so ztunnel captures traffic there), everything
//!    such a pod can address: every service (a pod may connect to any VIP) with every endpoint
//!    workload of those services (to pick a backend and know whether it speaks HBONE), and every
//!    meshed workload anywhere (a pod may dial a peer's pod IP directly, and sending that in
//!    plaintext would bypass mTLS). Non-meshed workloads elsewhere that back no service are left
//!    out: traffic to them is plain passthrough, which is what an unknown address gets anyway;
//! 3. the waypoints the services and workloads of 1–2 use;
//! 4. the authorization policies that select a meshed workload on N: policies are enforced by
//!    the destination's ztunnel, and a pod ztunnel does not capture cannot be protected;
//! 5. the egress scopes the namespaces of N's meshed workloads declare (checked at the source).
//!    No routes or traffic policies, in the full state or in any delta: they are L7, for
//!    waypoints.
//!
//! **waypoint W** receives what it needs to serve the traffic sent through it:
//! 1. its services (those that use W) with their endpoint workloads, and the workloads that use
//!    W themselves (traffic addressed to a pod goes through its waypoint too);
//! 2. the routes attached to its services (a route's parents name them), from any namespace;
//! 3. the services those routes name as backends, wherever they are, with their endpoint
//!    workloads: W sends the requests there itself;
//! 4. the authorization policies that select any of those workloads, in their own namespaces:
//!    the destination's ztunnel leaves traffic from W to W's judgement (it sees W's identity,
//!    not the client's), so W must hold every policy of every workload it sends to;
//! 5. the traffic policies of the services of 1 and 3: W applies a service's breaker, pool and
//!    outlier ejection to the requests it sends there, whether the service is its own or a
//!    route's backend elsewhere.
//!
//! No waypoint resources, and nothing of services that use another waypoint or none, unless a
//! route of W names them as backends.
//! A subscriber unknown to the model (a node or waypoint not declared yet) gets an empty scope
//! until it appears.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ambit_proto::api::discovery::{ProxyKind, ResourceType, Subscriber};

use super::ResourceKey;
use super::desired::{Desired, NodePart};
use super::snapshot::{Snapshot, named_key, workload_key};
use crate::model::{EgressScope, MeshModel, ObjectKey, ServiceEntry, Workload};

pub type Scope = BTreeSet<ResourceKey>;

/// The resource keys `subscriber` receives from `snapshot`.
pub fn scope_of(snapshot: &Snapshot, subscriber: &Subscriber) -> Scope {
    desired_for(snapshot, subscriber).keys().cloned().collect()
}

/// The resources `subscriber` receives from `snapshot`.
pub fn desired_for(snapshot: &Snapshot, subscriber: &Subscriber) -> Desired {
    let mut desired = match ProxyKind::try_from(subscriber.kind) {
        Ok(ProxyKind::Ztunnel) => {
            let part = node_part(snapshot, &subscriber.name);
            ztunnel(snapshot, Arc::new(part))
        }
        Ok(ProxyKind::Waypoint) => {
            let key = ObjectKey::new(&subscriber.namespace, &subscriber.name);
            Desired::own(snapshot.resolve(&waypoint(snapshot.model(), &key)))
        }
        _ => Desired::default(),
    };
    desired.generation = snapshot.generation;
    desired
}

/// [`desired_for`], taking a ztunnel's node part over from `previous` (what it was sent from the
/// snapshot just before) when the change touched nothing on its node: at 50k workloads most
/// changes touch a node or two, and resolving a node part costs milliseconds, for each of 100
/// ztunnels on every change.
pub fn desired_since(snapshot: &Snapshot, subscriber: &Subscriber, previous: &Desired) -> Desired {
    let untouched = previous.generation + 1 == snapshot.generation
        && snapshot
            .touched_nodes
            .as_ref()
            .is_some_and(|touched| !touched.contains(&subscriber.name));
    match &previous.node_part {
        Some(part) if untouched && subscriber.kind == ProxyKind::Ztunnel as i32 => {
            let mut desired = ztunnel(snapshot, part.clone());
            desired.generation = snapshot.generation;
            desired
        }
        _ => desired_for(snapshot, subscriber),
    }
}

pub(super) fn add_service(model: &MeshModel, scope: &mut Scope, s: &ServiceEntry) {
    let key = ObjectKey::new(&s.service.namespace, &s.service.name);
    scope.insert(named_key(ResourceType::Service, &key));
    scope.extend(s.endpoints.iter().filter_map(|e| workload_key(model, e)));
}

/// Part 2 and 3 of a ztunnel's scope, the same for every node that captures traffic.
pub(super) fn mesh_wide(model: &MeshModel) -> Vec<ResourceKey> {
    let mut scope = Scope::new();
    let mut waypoints = BTreeSet::new();
    for s in model.services() {
        add_service(model, &mut scope, s);
        waypoints.extend(s.waypoint.clone());
        for e in s.endpoints.iter().filter_map(|e| model.workload(e)) {
            waypoints.extend(e.waypoint.clone());
        }
    }
    for w in model.workloads().filter(|w| w.meshed) {
        scope.insert(ResourceKey::new(ResourceType::Workload, w.uid.as_str()));
        waypoints.extend(w.waypoint.clone());
    }
    scope.extend(
        waypoints
            .iter()
            .map(|k| named_key(ResourceType::WaypointResource, k)),
    );
    scope.into_iter().collect()
}

fn node_part(snapshot: &Snapshot, node: &str) -> NodePart {
    let model = snapshot.model();
    let local: Vec<_> = model.workloads_on_node(node).collect();
    let mut own: Scope = local
        .iter()
        .map(|w| ResourceKey::new(ResourceType::Workload, w.uid.as_str()))
        .collect();
    let meshed: Vec<&Workload> = local.iter().copied().filter(|w| w.meshed).collect();
    own.extend(policies_selecting(model, meshed.iter().copied()));
    own.extend(egress_scopes(model, &meshed).map(|(key, _)| key));
    NodePart {
        own: snapshot.resolve(&own),
        captures: !meshed.is_empty(),
    }
}

fn ztunnel(snapshot: &Snapshot, part: Arc<NodePart>) -> Desired {
    let mut desired = if part.captures {
        let shared = snapshot.mesh_wide();
        Desired::new(
            shared.resolved.clone(),
            shared.hash,
            shared.changes.clone(),
            part.own.clone(),
        )
    } else {
        // Waypoints of local non-meshed pods are not needed: ztunnel does not capture them.
        Desired::own(part.own.clone())
    };
    desired.node_part = Some(part);
    desired
}

fn waypoint(model: &MeshModel, key: &ObjectKey) -> Scope {
    let mut scope = Scope::new();
    if model.waypoint(key).is_none() {
        return scope;
    }
    let uses = |w: &Option<ObjectKey>| w.as_ref() == Some(key);
    // The `use-waypoint` label names a waypoint of its own namespace, so W's users are there.
    let served: Vec<&ServiceEntry> = model
        .services_in(&key.namespace)
        .filter(|s| uses(&s.waypoint))
        .collect();
    let own_workloads: Vec<&Workload> = model
        .workloads_in(&key.namespace)
        .filter(|w| uses(&w.waypoint))
        .collect();
    let td = model.trust_domain();
    let hostnames: BTreeSet<String> = served.iter().map(|s| s.hostname(td)).collect();
    let attached = model
        .routes()
        .filter(|r| r.parents.iter().any(|p| hostnames.contains(&p.service)));
    let mut backends = Vec::new();
    for r in attached {
        let route = ObjectKey::new(&r.namespace, &r.name);
        scope.insert(named_key(ResourceType::Route, &route));
        let named = r.rules.iter().flat_map(|rule| &rule.backends);
        backends.extend(named.filter_map(|b| model.service_by_hostname(&b.service)));
    }
    let services = served.iter().chain(&backends);
    for s in services.clone() {
        add_service(model, &mut scope, s);
        if let Some(p) = model.traffic_policy_for(&s.hostname(td)) {
            let key = ObjectKey::new(&p.namespace, &p.name);
            scope.insert(named_key(ResourceType::TrafficPolicy, &key));
        }
    }
    scope.extend(
        own_workloads
            .iter()
            .map(|w| ResourceKey::new(ResourceType::Workload, w.uid.as_str())),
    );
    let endpoints = services
        .flat_map(|s| &s.endpoints)
        .filter_map(|e| model.workload(e));
    scope.extend(policies_selecting(
        model,
        endpoints.chain(own_workloads.iter().copied()),
    ));
    scope
}

/// The egress scopes the namespaces of `meshed` (a node's meshed workloads) declare, with their
/// keys: the node's ztunnel checks those pods' connections against them.
pub(super) fn egress_scopes<'a>(
    model: &'a MeshModel,
    meshed: &[&'a Workload],
) -> impl Iterator<Item = (ResourceKey, &'a EgressScope)> + 'a {
    let namespaces: BTreeSet<&str> = meshed.iter().map(|w| w.pod.namespace.as_str()).collect();
    namespaces.into_iter().filter_map(move |ns| {
        let scope = model.egress_scope(ns)?;
        Some((ResourceKey::new(ResourceType::EgressScope, ns), scope))
    })
}

/// The keys of the authorization policies that select any of `workloads`. Grouped by namespace
/// because a policy selects pods of its own namespace only: checking each policy against every
/// workload made this quadratic on a busy node.
pub(super) fn policies_selecting<'a>(
    model: &'a MeshModel,
    workloads: impl Iterator<Item = &'a Workload>,
) -> Vec<ResourceKey> {
    let mut by_namespace: BTreeMap<&str, Vec<&Workload>> = BTreeMap::new();
    for w in workloads {
        by_namespace.entry(&w.pod.namespace).or_default().push(w);
    }
    let mut keys = Vec::new();
    for (ns, pods) in &by_namespace {
        for p in model.policies_in(ns) {
            if pods.iter().any(|w| MeshModel::policy_selects(p, w)) {
                let key = ObjectKey::new(&p.namespace, &p.name);
                keys.push(named_key(ResourceType::AuthorizationPolicy, &key));
            }
        }
    }
    keys
}

#[cfg(test)]
mod tests;
