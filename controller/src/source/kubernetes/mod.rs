//! The Kubernetes source: watches the cluster through the API server and publishes a new model,
//! built by the same [`crate::model::MeshBuilder`] as the mesh file's, shortly after anything it
//! reads changes. It reads what a mesh file can say, in the objects an Istio ambient user knows:
//! Namespaces, Pods and Services; EndpointSlices (for services without selector); Gateway API
//! `Gateway`s of class [`WAYPOINT_CLASS`] (waypoints) and `HTTPRoute`s (L7 routes, attached to
//! services the GAMMA way); Ambit's own `AuthorizationPolicy` and `TrafficPolicy` CRDs ([`crd`]).
//!
//! - `convert`: Kubernetes objects to the model's input; what cannot be used is skipped with the
//!   reason (a pod without IP, a named target port that does not resolve, a policy port that is
//!   not a number…), never fatal.
//! - `assemble`: the model from that input, leaving out whatever the model rejects.
//! - `update`: the next model after a change, made from what the change touches.
//! - `watch`: the reflectors (list + watch caches) and the debounced update. Gateway API and
//!   Ambit CRDs that are not installed are run without, as Istio does.
//!
//! Not watched: Nodes (a node is known through its pods and gets no bootstrap token, so no
//! certificates for node proxies from this source), ReferenceGrants (a route may send its own
//! traffic to a service of another namespace, which any of its clients could anyway).

mod assemble;
mod convert;
pub mod crd;
mod update;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch as channel;
use tokio_util::sync::CancellationToken;

pub use assemble::{MeshSettings, assemble};
pub use convert::{Changed, Converted, Input, Lookup, Objects, Skip, Update, convert};
pub use update::Updater;

use crate::model::{MeshModel, ModelError, MtlsMode, PolicyMode};

/// The trust domain when none is configured, as in Istio and Kubernetes.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Prefix of workload uids from this source (Istio's default cluster id).
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";
/// `spec.gatewayClassName` of the Gateways that are Ambit waypoints.
pub const WAYPOINT_CLASS: &str = "ambit-waypoint";
/// Pod label naming the Gateway a pod runs for (set by the waypoint reconciler, as Gateway API
/// implementations do).
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

#[derive(Debug, Clone)]
pub struct Options {
    pub trust_domain: String,
    pub cluster_id: String,
    /// The mTLS mode of meshed pods whose namespace has no `ambit.io/mtls-mode` label
    /// (`--mtls-mode`).
    pub mtls_mode: MtlsMode,
    /// The mode of the policies of namespaces without an `ambit.io/policy-mode` label
    /// (`--policy-mode`).
    pub policy_mode: PolicyMode,
    /// How long after a change the model is rebuilt; changes meanwhile join the same rebuild.
    pub debounce: Duration,
    /// How long the first list of every kind may take before the start fails.
    pub sync_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            trust_domain: DEFAULT_TRUST_DOMAIN.into(),
            cluster_id: DEFAULT_CLUSTER_ID.into(),
            mtls_mode: MtlsMode::default(),
            policy_mode: PolicyMode::default(),
            debounce: Duration::from_millis(100),
            sync_timeout: Duration::from_secs(30),
        }
    }
}

impl Options {
    pub fn mesh_settings(&self) -> MeshSettings {
        MeshSettings {
            trust_domain: self.trust_domain.clone(),
            cluster_id: self.cluster_id.clone(),
            mtls_mode: self.mtls_mode,
            policy_mode: self.policy_mode,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error(
        "could not connect to the Kubernetes API (in a pod: its service account; elsewhere: KUBECONFIG or ~/.kube/config): {0}"
    )]
    Client(#[source] kube::Error),
    #[error(
        "the Kubernetes API did not list {kinds} within {timeout:?}: check that the API server is reachable and that the controller may list and watch them (RBAC); the watch errors above say which failed"
    )]
    NotSynced { timeout: Duration, kinds: String },
    #[error("the cluster does not make a mesh model:{}", errors.iter().map(|e| format!("\n  {e}")).collect::<String>())]
    Model { errors: Vec<ModelError> },
}

/// The source once started: the latest model, and the task that keeps it current.
pub struct Watching {
    pub models: channel::Receiver<Arc<MeshModel>>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Watches the cluster `client` talks to, until `shutdown`. Returns once the first model is
/// built, that is once every kind has been listed completely.
pub async fn watch(
    client: kube::Client,
    options: Options,
    shutdown: CancellationToken,
) -> Result<Watching, KubernetesError> {
    watch::start(client, options, shutdown).await
}

/// A client from the environment: the in-cluster service account, else the kubeconfig.
pub async fn default_client() -> Result<kube::Client, KubernetesError> {
    kube::Client::try_default()
        .await
        .map_err(KubernetesError::Client)
}

#[cfg(test)]
mod tests;
