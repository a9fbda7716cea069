//! From Kubernetes objects to the model's input types. Anything the mesh cannot use (a pod not
//! scheduled yet, a port whose named target cannot be resolved, a policy port that is not a
//! number…) is left out, or used in part, and reported as a [`Skip`] naming the object, the
//! cause and the fix; nothing here fails as a whole.
//!
//! - `workloads`: namespaces, pods, services (and their ports);
//! - `endpoints`: the EndpointSlices of services without selector;
//! - `waypoints`: Gateways of class `ambit-waypoint` and their pods;
//! - `policies`: Ambit's AuthorizationPolicy;
//! - `routes`: HTTPRoutes and GRPCRoutes attached to services (through `source::routes`);
//! - `traffic`: Ambit's TrafficPolicy (through `source::traffic`).

mod endpoints;
mod policies;
mod routes;
mod traffic;
mod waypoints;
mod workloads;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use gateway_api::experimental::gateways::Gateway;
use gateway_api::experimental::grpcroutes::GrpcRoute;
use gateway_api::experimental::httproutes::HttpRoute;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::crd;
use crate::model::{self, Labels, ObjectKey, ResourceRef, USE_WAYPOINT_LABEL, WAYPOINT_NONE};

/// Something from the cluster the model leaves out (or uses only in part), and why.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Skip {
    pub subject: ResourceRef,
    pub reason: String,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.subject, self.reason)
    }
}

/// Everything the source reads from the cluster: the reflectors' caches at one moment.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub namespaces: Vec<Arc<core::Namespace>>,
    pub pods: Vec<Arc<core::Pod>>,
    pub services: Vec<Arc<core::Service>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    pub gateways: Vec<Arc<Gateway>>,
    pub http_routes: Vec<Arc<HttpRoute>>,
    pub grpc_routes: Vec<Arc<GrpcRoute>>,
    pub policies: Vec<Arc<crd::AuthorizationPolicy>>,
    pub traffic_policies: Vec<Arc<crd::traffic::TrafficPolicy>>,
}

/// What the cluster holds, in the model's terms, before the model checks it as a whole.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Input {
    /// Every node that runs a pod or waypoint of the model (Kubernetes nodes are not watched: a
    /// node is known through its pods). Nodes get no bootstrap token, so no certificates, from
    /// this source.
    pub nodes: BTreeSet<String>,
    pub namespaces: Vec<model::Namespace>,
    pub pods: Vec<model::Pod>,
    pub services: Vec<model::Service>,
    pub waypoints: Vec<model::Waypoint>,
    pub policies: Vec<model::AuthorizationPolicy>,
    pub routes: Vec<model::Route>,
    pub traffic_policies: Vec<model::TrafficPolicy>,
    pub skips: Vec<Skip>,
}

fn labels(meta: &ObjectMeta) -> Labels {
    meta.labels.clone().unwrap_or_default()
}

/// `(namespace, name)` of a namespaced object.
fn key(meta: &ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Converts everything at once: waypoint labels resolve against the waypoints, endpoints
/// against the pods, and routes against the services that are known. `trust_domain` makes the
/// service hostnames routes are keyed by.
pub fn convert(objects: &Objects, trust_domain: &str) -> Input {
    let mut input = Input::default();
    let skips = &mut input.skips;
    let gateways = waypoints::waypoint_gateways(&objects.gateways);
    // Waypoint pods are the waypoint, not workloads: their addresses are the waypoint's, and a
    // workload with the same address would be refused by the model as a duplicate.
    let mut members = Vec::new();
    let mut pods = Vec::new();
    for p in &objects.pods {
        match waypoints::gateway_of(p, &gateways, skips) {
            Some(gateway) => members.push((gateway, p)),
            None => pods.push(p),
        }
    }
    for wp in waypoints::waypoints(&gateways, &members, skips) {
        if !wp.node.is_empty() {
            input.nodes.insert(wp.node.clone());
        }
        input.waypoints.push(wp);
    }
    for ns in &objects.namespaces {
        if let Some(ns) = workloads::namespace(ns, &gateways, skips) {
            input.namespaces.push(ns);
        }
    }
    let mut containers: BTreeMap<(String, String), &core::Pod> = BTreeMap::new();
    for p in pods {
        if let Some(pod) = workloads::pod(p, &gateways, skips) {
            input.nodes.insert(pod.node.clone());
            containers.insert((pod.namespace.clone(), pod.name.clone()), p);
            input.pods.push(pod);
        }
    }
    let slices = endpoints::Slices::new(&objects.endpoint_slices, &input.pods);
    for s in &objects.services {
        let context = workloads::ServiceContext {
            pods: &input.pods,
            containers: &containers,
            waypoints: &gateways,
            slices: &slices,
        };
        if let Some(svc) = workloads::service(s, &context, skips) {
            input.services.push(svc);
        }
    }
    for p in &objects.policies {
        if let Some(policy) = policies::policy(p, skips) {
            input.policies.push(policy);
        }
    }
    let context = crate::source::routes::RouteContext::new(
        &input.namespaces,
        &input.services,
        &gateways,
        trust_domain,
    );
    let mut http_names = BTreeSet::new();
    for r in &objects.http_routes {
        if let Some(route) = routes::http_route(r, &context, skips) {
            http_names.insert((route.namespace.clone(), route.name.clone()));
            input.routes.push(route);
        }
    }
    for r in &objects.grpc_routes {
        if let Some(route) = routes::grpc_route(r, &context, &http_names, skips) {
            input.routes.push(route);
        }
    }
    let context = crate::source::traffic::TrafficContext::new(
        &input.namespaces,
        &input.services,
        trust_domain,
    );
    input.traffic_policies =
        traffic::traffic_policies(&objects.traffic_policies, &context, &mut input.skips);
    input.skips.sort();
    input
}

/// The waypoints a `use-waypoint` label may name: every `ambit-waypoint` Gateway.
type Waypoints = BTreeSet<ObjectKey>;

/// Drops a waypoint label that names no waypoint Gateway: the object stays in the mesh without a
/// waypoint rather than making the whole model invalid. A label naming a waypoint with no ready
/// pod is kept: the waypoint exists without address, and the traffic fails closed (as Istio)
/// rather than bypassing the waypoint's L7 policy.
fn check_waypoint_label(
    subject: &ResourceRef,
    namespace: &str,
    labels: &mut Labels,
    waypoints: &Waypoints,
    skips: &mut Vec<Skip>,
) {
    let Some(name) = labels.get(USE_WAYPOINT_LABEL) else {
        return;
    };
    if name == WAYPOINT_NONE || waypoints.contains(&ObjectKey::new(namespace, name)) {
        return;
    }
    skips.push(Skip {
        subject: subject.clone(),
        reason: format!(
            "label {USE_WAYPOINT_LABEL}={name:?} names no Gateway of class {} in namespace {namespace}; create it or fix the label (the label is ignored meanwhile)",
            super::WAYPOINT_CLASS
        ),
    });
    labels.remove(USE_WAYPOINT_LABEL);
}
