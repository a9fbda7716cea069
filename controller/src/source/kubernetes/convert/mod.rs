//! From Kubernetes objects to the model's input types. Anything the mesh cannot use (a pod not
//! scheduled yet, a port whose named target cannot be resolved, a policy port that is not a
//! number…) is left out, or used in part, and reported as a [`Skip`] naming the object, the
//! cause and the fix; nothing here fails as a whole.
//!
//! - `converted`: the conversion kept object by object, and a change converted by what it
//!   touches;
//! - `workloads`: namespaces, pods, services (and their ports);
//! - `endpoints`: the EndpointSlices of services without selector;
//! - `waypoints`: Gateways of class `ambit-waypoint` and their pods;
//! - `policies`: Ambit's AuthorizationPolicy;
//! - `routes`: HTTPRoutes and GRPCRoutes attached to services (through `source::routes`);
//! - `traffic`: Ambit's TrafficPolicy (through `source::traffic`).

mod converted;
mod endpoints;
mod policies;
mod routes;
mod traffic;
mod waypoints;
mod workloads;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use gateway_api::experimental::gateways::Gateway;
use gateway_api::experimental::grpcroutes::GrpcRoute;
use gateway_api::experimental::httproutes::HttpRoute;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use converted::{Changed, Converted, Lookup, Update};

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
    Converted::full(objects, trust_domain).input()
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
