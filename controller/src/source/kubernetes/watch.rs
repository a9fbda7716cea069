//! Keeps a reflector (a local cache fed by list + watch) per kind, and makes the next model
//! from the caches shortly after anything changes (applied to the current one where it can be:
//! [`super::incremental`]): a burst of events (a rollout, a resync after a reconnect) becomes
//! one new model, not one per event.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use gateway_api::experimental::gateways::Gateway;
use gateway_api::experimental::grpcroutes::GrpcRoute;
use gateway_api::experimental::httproutes::HttpRoute;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch as channel};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::assemble::assemble;
use super::convert::{Objects, Skip, convert};
use super::crd::AuthorizationPolicy;
use super::crd::traffic::TrafficPolicy;
use super::incremental::{self, MadeFrom};
use super::{KubernetesError, Options, Watching};
use crate::model::MeshModel;

/// How far a kind's first list got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listed {
    Pending,
    Complete,
    /// The API server does not serve the kind (404): its CRD is not installed.
    NotInstalled,
}

/// Whether the start waits for a kind's first list. Built-in kinds are always served, so a
/// failure to list them is a real problem (RBAC, connectivity). CRD-based kinds may simply not
/// be installed: as Istio does without the Gateway API CRDs, the source then runs without them
/// (logged), and the watch, which keeps retrying, picks them up once they are installed. Any
/// other failure on them (403 and the like) still holds the start: policies silently not read
/// would be policies not enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Required,
    UnlessNotInstalled,
}

/// A kind's cache, how its first list went, and the task that feeds it.
struct Reflector<K: Resource<DynamicType = ()> + 'static> {
    kind: String,
    need: Need,
    store: Store<K>,
    listed: channel::Receiver<Listed>,
    task: JoinHandle<()>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Reflector<K> {
    fn settled(&self) -> bool {
        match *self.listed.borrow() {
            Listed::Complete => true,
            Listed::NotInstalled => self.need == Need::UnlessNotInstalled,
            Listed::Pending => false,
        }
    }

    async fn wait(&self) {
        let mut listed = self.listed.clone();
        let need = self.need;
        let _ = listed
            .wait_for(|l| match l {
                Listed::Complete => true,
                Listed::NotInstalled => need == Need::UnlessNotInstalled,
                Listed::Pending => false,
            })
            .await;
    }
}

fn not_installed(error: &watcher::Error) -> bool {
    matches!(
        error,
        watcher::Error::InitialListFailed(kube::Error::Api(status)) if status.code == 404
    )
}

/// Watches every object of kind `K` in all namespaces into a cache, waking `changed` on each
/// event, until `shutdown`. Errors (API unreachable, forbidden, a watch expired) are logged and
/// retried with kube's default backoff; the cache keeps its last state meanwhile.
fn reflect<K>(
    client: Client,
    need: Need,
    changed: Arc<Notify>,
    shutdown: CancellationToken,
) -> Reflector<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let kind = format!("{} ({})", K::kind(&()), K::api_version(&()));
    let (listed_tx, listed) = channel::channel(Listed::Pending);
    let stream = watcher(Api::<K>::all(client), watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    let task_kind = kind.clone();
    let task = tokio::spawn(async move {
        let kind = task_kind;
        let mut stream = std::pin::pin!(stream);
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = stream.next() => event,
            };
            match event {
                Some(Ok(event)) => {
                    if matches!(event, watcher::Event::InitDone) {
                        if *listed_tx.borrow() == Listed::NotInstalled {
                            tracing::info!(%kind, "now served by the API server (its CRD was installed); reading it");
                        }
                        listed_tx.send_replace(Listed::Complete);
                    }
                    changed.notify_one();
                }
                Some(Err(error)) if need == Need::UnlessNotInstalled && not_installed(&error) => {
                    // Logged once, not on every retry: running without it is a supported state.
                    if listed_tx.send_replace(Listed::NotInstalled) != Listed::NotInstalled {
                        tracing::warn!(%kind, "not served by the API server (CRD not installed); running without it until it is installed");
                        changed.notify_one();
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(%kind, %error, "watching the Kubernetes API failed; retrying (the last known state stays in force)")
                }
                None => return,
            }
        }
    });
    Reflector {
        kind,
        need,
        store,
        listed,
        task,
    }
}

struct Caches {
    namespaces: Reflector<core::Namespace>,
    pods: Reflector<core::Pod>,
    services: Reflector<core::Service>,
    endpoint_slices: Reflector<EndpointSlice>,
    gateways: Reflector<Gateway>,
    http_routes: Reflector<HttpRoute>,
    grpc_routes: Reflector<GrpcRoute>,
    policies: Reflector<AuthorizationPolicy>,
    traffic_policies: Reflector<TrafficPolicy>,
}

impl Caches {
    fn start(client: &Client, changed: &Arc<Notify>, stop: &CancellationToken) -> Caches {
        use Need::*;
        Caches {
            namespaces: reflect(client.clone(), Required, changed.clone(), stop.clone()),
            pods: reflect(client.clone(), Required, changed.clone(), stop.clone()),
            services: reflect(client.clone(), Required, changed.clone(), stop.clone()),
            endpoint_slices: reflect(client.clone(), Required, changed.clone(), stop.clone()),
            gateways: reflect(
                client.clone(),
                UnlessNotInstalled,
                changed.clone(),
                stop.clone(),
            ),
            http_routes: reflect(
                client.clone(),
                UnlessNotInstalled,
                changed.clone(),
                stop.clone(),
            ),
            grpc_routes: reflect(
                client.clone(),
                UnlessNotInstalled,
                changed.clone(),
                stop.clone(),
            ),
            policies: reflect(
                client.clone(),
                UnlessNotInstalled,
                changed.clone(),
                stop.clone(),
            ),
            traffic_policies: reflect(
                client.clone(),
                UnlessNotInstalled,
                changed.clone(),
                stop.clone(),
            ),
        }
    }

    fn objects(&self) -> Objects {
        Objects {
            namespaces: self.namespaces.store.state(),
            pods: self.pods.store.state(),
            services: self.services.store.state(),
            endpoint_slices: self.endpoint_slices.store.state(),
            gateways: self.gateways.store.state(),
            http_routes: self.http_routes.store.state(),
            grpc_routes: self.grpc_routes.store.state(),
            policies: self.policies.store.state(),
            traffic_policies: self.traffic_policies.store.state(),
        }
    }

    /// Until every kind is listed (or, for CRD kinds, known not to be installed).
    async fn wait(&self) {
        self.namespaces.wait().await;
        self.pods.wait().await;
        self.services.wait().await;
        self.endpoint_slices.wait().await;
        self.gateways.wait().await;
        self.http_routes.wait().await;
        self.grpc_routes.wait().await;
        self.policies.wait().await;
        self.traffic_policies.wait().await;
    }

    /// The kinds not settled yet, for the error when the start times out.
    fn pending(&self) -> String {
        let kinds = [
            (self.namespaces.settled(), &self.namespaces.kind),
            (self.pods.settled(), &self.pods.kind),
            (self.services.settled(), &self.services.kind),
            (self.endpoint_slices.settled(), &self.endpoint_slices.kind),
            (self.gateways.settled(), &self.gateways.kind),
            (self.http_routes.settled(), &self.http_routes.kind),
            (self.grpc_routes.settled(), &self.grpc_routes.kind),
            (self.policies.settled(), &self.policies.kind),
            (self.traffic_policies.settled(), &self.traffic_policies.kind),
        ];
        let pending: Vec<&str> = kinds
            .iter()
            .filter(|(settled, _)| !settled)
            .map(|(_, kind)| kind.as_str())
            .collect();
        pending.join(", ")
    }

    fn tasks(self) -> [JoinHandle<()>; 9] {
        [
            self.namespaces.task,
            self.pods.task,
            self.services.task,
            self.endpoint_slices.task,
            self.gateways.task,
            self.http_routes.task,
            self.grpc_routes.task,
            self.policies.task,
            self.traffic_policies.task,
        ]
    }
}

/// The source's state between rebuilds.
struct Rebuilder {
    caches: Caches,
    options: Options,
    /// Skips already logged, so each is logged once when it appears, not on every rebuild.
    logged: BTreeSet<Skip>,
    /// What the model in force was made from, for the next change to be applied to it.
    made_from: Option<MadeFrom>,
}

impl Rebuilder {
    /// The model of the caches now: `current` with what changed applied to it when it can
    /// be (see [`super::incremental`]), else built whole.
    fn build(&mut self, current: Option<&MeshModel>) -> Result<MeshModel, KubernetesError> {
        let input = convert(&self.caches.objects(), &self.options.trust_domain);
        let applied = match (current, &self.made_from) {
            (Some(current), Some(from)) => incremental::apply(current, from, &input),
            _ => None,
        };
        let (model, skips, left_out) = match applied {
            Some((model, skips)) => (model, skips, false),
            None => {
                self.made_from = None;
                let a = assemble(&input, &self.options.mesh_settings())
                    .map_err(|errors| KubernetesError::Model { errors })?;
                (a.model, a.skips, a.left_out)
            }
        };
        self.made_from = Some(MadeFrom { input, left_out });
        let now: BTreeSet<Skip> = skips.into_iter().collect();
        for skip in now.difference(&self.logged) {
            tracing::info!(object = %skip.subject, reason = %skip.reason, "left out of the mesh model, or used in part");
        }
        self.logged = now;
        Ok(model)
    }

    /// Rebuilds on every change until `shutdown`; gives itself back so the caller can wait for
    /// the watch tasks.
    async fn run(
        mut self,
        models: channel::Sender<Arc<MeshModel>>,
        changed: Arc<Notify>,
        shutdown: CancellationToken,
    ) -> Self {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return self,
                _ = changed.notified() => {}
            }
            // Debounce: let the rest of a burst arrive; events meanwhile leave a permit in
            // `changed`, which at worst costs one more (unchanged) rebuild.
            tokio::select! {
                _ = shutdown.cancelled() => return self,
                _ = tokio::time::sleep(self.options.debounce) => {}
            }
            let current = models.borrow().clone();
            match self.build(Some(&current)) {
                Ok(model) => {
                    if **models.borrow() == model {
                        continue;
                    }
                    log_model(&model, "Kubernetes state changed; new model in force");
                    metrics::counter!("ambit_controller_config_reloads_total", "result" => "ok")
                        .increment(1);
                    models.send_replace(Arc::new(model));
                }
                Err(error) => {
                    metrics::counter!("ambit_controller_config_reloads_total", "result" => "error")
                        .increment(1);
                    tracing::error!(%error, "could not build a model from the cluster; the last good model stays in force");
                }
            }
        }
    }
}

/// Starts the watches, waits for the first complete view of the cluster, and builds the first
/// model from it.
pub async fn start(
    client: Client,
    options: Options,
    shutdown: CancellationToken,
) -> Result<Watching, KubernetesError> {
    let changed = Arc::new(Notify::new());
    // The watch tasks end with `stop`: on shutdown, or when the start fails.
    let stop = shutdown.child_token();
    let caches = Caches::start(&client, &changed, &stop);
    let first = match tokio::time::timeout(options.sync_timeout, caches.wait()).await {
        Ok(()) => {
            let mut rebuilder = Rebuilder {
                caches,
                options,
                logged: BTreeSet::new(),
                made_from: None,
            };
            rebuilder.build(None).map(|model| (rebuilder, model))
        }
        Err(_) => Err(KubernetesError::NotSynced {
            timeout: options.sync_timeout,
            kinds: caches.pending(),
        }),
    };
    let (rebuilder, model) = match first {
        Ok(first) => first,
        Err(error) => {
            stop.cancel();
            return Err(error);
        }
    };
    log_model(&model, "first model built from the Kubernetes API");
    let (tx, models) = channel::channel(Arc::new(model));
    let task = tokio::spawn(async move {
        let Rebuilder { caches, .. } = rebuilder.run(tx, changed, stop.clone()).await;
        stop.cancel();
        for task in caches.tasks() {
            let _ = task.await;
        }
    });
    Ok(Watching { models, task })
}

/// One line saying what a model holds.
fn log_model(model: &MeshModel, what: &str) {
    tracing::info!(
        workloads = model.workloads().count(),
        services = model.services().count(),
        waypoints = model.waypoints().count(),
        policies = model.policies().count(),
        routes = model.routes().count(),
        traffic_policies = model.traffic_policies().count(),
        "{what}"
    );
}
