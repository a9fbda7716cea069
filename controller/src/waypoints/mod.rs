//! The waypoint deployment reconciler: for every Gateway of class `ambit-waypoint` (a namespace's
//! request for an L7 waypoint, as Istio ambient users write `istio-waypoint` Gateways) it keeps
//! a ServiceAccount, a Deployment and a Service named like the Gateway, owned by it so
//! Kubernetes garbage-collects them with it, and reports on the Gateway's status whether the
//! waypoint is up and at which address.
//!
//! - `desired`: the objects a Gateway asks for (pure, unit-tested).
//! - `root_cert`: the namespace's root certificate ConfigMap the waypoints mount, shared by
//!   the namespace's waypoint Gateways (pure, unit-tested).
//! - `status`: the Gateway's conditions and addresses (pure, unit-tested).
//! - `ownership`: whether an object of a waypoint's name is this Gateway's; nothing else is
//!   ever applied onto or deleted (a user's Service named like the Gateway stays theirs).
//! - `namespace_lock`: serialises the writes of a namespace's shared root certificate ConfigMap.
//! - `reconcile`: one Gateway: apply, clean up after a class change, write status.
//! - `run`: the watches (Gateways, and the objects we created) and the retry policy.
//!
//! Which Gateways: those whose `spec.gatewayClassName` is [`WaypointOptions::gateway_class`].
//! We match the class *name*, not the GatewayClass's `controllerName`, as Istio does for
//! `istio-waypoint`: it needs no GatewayClass watch and no RBAC on gatewayclasses, and a Gateway
//! created before its GatewayClass works once both exist. manifests/gatewayclass.yaml declares
//! the class with controllerName [`CONTROLLER_NAME`] for tooling that lists classes.

mod desired;
mod namespace_lock;
mod ownership;
mod reconcile;
mod root_cert;
mod run;
mod status;

use std::time::Duration;

pub use desired::{DesiredObjects, InvalidGateway, desired_objects, replicas};
pub use ownership::{ConflictingObject, NameConflict};
pub use reconcile::ReconcileError;
pub use run::run;
pub use status::{ObservedState, gateway_status};

/// The class name a waypoint Gateway carries (Istio's is `istio-waypoint`).
pub const GATEWAY_CLASS: &str = "ambit-waypoint";
/// The GatewayClass `spec.controllerName` of that class (manifests/gatewayclass.yaml).
pub const CONTROLLER_NAME: &str = "ambit.io/waypoint-controller";
/// The server-side apply field manager, on the objects and on the Gateway's status.
pub const FIELD_MANAGER: &str = "ambit-controller";
/// Gateway annotation: how many waypoint pods to run (1 when absent).
pub const REPLICAS_ANNOTATION: &str = "ambit.io/waypoint-replicas";
/// Most replicas the annotation may ask for: a typo such as `10000` should not empty a cluster.
pub const MAX_REPLICAS: i32 = 100;
/// Label on every object we create, so our watches see only those.
pub const MANAGED_LABEL: &str = "ambit.io/managed-by";
pub const MANAGED_VALUE: &str = "waypoint-controller";
/// Label on the waypoint's pods (and objects), as the Gateway API asks of implementations.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// The listener a waypoint Gateway must have.
pub const HBONE_PORT: i32 = 15008;
pub const HBONE_PROTOCOL: &str = "HBONE";
pub const METRICS_PORT: i32 = 15020;
pub const READINESS_PORT: i32 = 15021;

/// One permission the reconciler uses: API group ("" for core), resource, verb. The manifests
/// test checks manifests/controller.yaml grants each, and nothing more.
pub type Permission = (&'static str, &'static str, &'static str);

/// Every (group, resource, verb) the reconciler calls the API with: the watches (list, watch),
/// the read before each write (get: is the object absent or this Gateway's?), server-side apply
/// (patch, and create when the object is new), the deletes after a class change, and the
/// Gateway's status (a server-side apply on the subresource: patch, never update).
pub const REQUIRED_PERMISSIONS: &[Permission] = &[
    ("gateway.networking.k8s.io", "gateways", "list"),
    ("gateway.networking.k8s.io", "gateways", "watch"),
    ("gateway.networking.k8s.io", "gateways/status", "patch"),
    ("", "serviceaccounts", "get"),
    ("", "serviceaccounts", "list"),
    ("", "serviceaccounts", "watch"),
    ("", "serviceaccounts", "create"),
    ("", "serviceaccounts", "patch"),
    ("", "serviceaccounts", "delete"),
    ("apps", "deployments", "get"),
    ("apps", "deployments", "list"),
    ("apps", "deployments", "watch"),
    ("apps", "deployments", "create"),
    ("apps", "deployments", "patch"),
    ("apps", "deployments", "delete"),
    ("", "services", "get"),
    ("", "services", "list"),
    ("", "services", "watch"),
    ("", "services", "create"),
    ("", "services", "patch"),
    ("", "services", "delete"),
    ("", "configmaps", "get"),
    ("", "configmaps", "list"),
    ("", "configmaps", "watch"),
    ("", "configmaps", "create"),
    ("", "configmaps", "patch"),
    ("", "configmaps", "delete"),
];

/// How the reconciler runs and what it deploys.
#[derive(Debug, Clone)]
pub struct WaypointOptions {
    /// Gateways of this class are waypoints.
    pub gateway_class: String,
    /// The waypoint container image.
    pub image: String,
    /// The controller's discovery (and CA) address, as the waypoint pods dial it.
    pub controller_address: String,
    /// The mesh's SPIFFE trust domain (the waypoint's identity is
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<gateway name>`).
    pub trust_domain: String,
    /// Audience of the projected service-account token the waypoint shows the CA.
    pub ca_audience: String,
    /// The mesh root certificate(s), PEM: the `ambit-ca-root-cert` ConfigMap put in each
    /// waypoint namespace holds it, and the waypoint mounts that as its `--root-cert`.
    pub root_cert_pem: String,
    /// Where the controller publishes that ConfigMap itself (`--root-cert-namespace`): a
    /// waypoint there mounts the controller's copy, and the reconciler leaves it alone.
    pub root_cert_namespace: String,
    /// Server-side apply field manager.
    pub field_manager: String,
    /// First retry delay after a failed reconcile of a Gateway; doubled per further failure.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// How often a Gateway is reconciled even when nothing changed (repairs missed events).
    pub resync: Duration,
    /// Gateways reconciled at the same time.
    pub concurrency: u16,
}

/// The default waypoint image: this controller's own version, so the two match.
pub fn default_image() -> String {
    format!("ghcr.io/ambit-mesh/waypoint:{}", env!("CARGO_PKG_VERSION"))
}

impl Default for WaypointOptions {
    fn default() -> Self {
        WaypointOptions {
            gateway_class: GATEWAY_CLASS.into(),
            image: default_image(),
            controller_address: "https://ambit-controller.ambit-system.svc:15010".into(),
            trust_domain: "cluster.local".into(),
            ca_audience: "ambit-ca".into(),
            root_cert_pem: String::new(),
            root_cert_namespace: crate::ca::root_configmap::DEFAULT_NAMESPACE.into(),
            field_manager: FIELD_MANAGER.into(),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            resync: Duration::from_secs(600),
            concurrency: 4,
        }
    }
}
