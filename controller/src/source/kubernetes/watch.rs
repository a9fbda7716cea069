//! Keeps a reflector (a local cache fed by list + watch) per kind, notes which objects each
//! event names, and makes the next model shortly after anything changes, from what changed
//! ([`super::update`]): a burst of events (a rollout, a resync after a reconnect) becomes one
//! new model, not one per event.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use gateway_api::experimental::gateways::Gateway;
use gateway_api::experimental::grpcroutes::GrpcRoute;
use gateway_api::experimental::httproutes::HttpRoute;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch as channel};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::convert::{Changed, Lookup, Objects};
use super::crd::AuthorizationPolicy;
use super::crd::traffic::TrafficPolicy;
use super::update::Updater;
use super::{KubernetesError, Options, Watching};
use crate::model::{MeshModel, ObjectKey};

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
    changes: &Changes,
    mark: fn(&mut Changed, &K),
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
    let changes = changes.clone();
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
                    changes.mark(|changed| match &event {
                        watcher::Event::Apply(object) | watcher::Event::Delete(object) => {
                            mark(changed, object)
                        }
                        // A list (again) does not say what it no longer holds.
                        watcher::Event::Init
                        | watcher::Event::InitApply(_)
                        | watcher::Event::InitDone => changed.everything = true,
                    });
                }
                Some(Err(error)) if need == Need::UnlessNotInstalled && not_installed(&error) => {
                    // Logged once, not on every retry: running without it is a supported state.
                    if listed_tx.send_replace(Listed::NotInstalled) != Listed::NotInstalled {
                        tracing::warn!(%kind, "not served by the API server (CRD not installed); running without it until it is installed");
                        changes.mark(|changed| changed.everything = true);
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

/// What the watches saw change since the model was last made, and the wake-up for it.
#[derive(Clone, Default)]
struct Changes {
    changed: Arc<Mutex<Changed>>,
    notify: Arc<Notify>,
}

impl Changes {
    fn mark(&self, f: impl FnOnce(&mut Changed)) {
        self.remember(f);
        self.notify.notify_one();
    }

    /// Notes a change without waking the source for it.
    fn remember(&self, f: impl FnOnce(&mut Changed)) {
        f(&mut self.changed.lock());
    }

    fn take(&self) -> Changed {
        std::mem::take(&mut self.changed.lock())
    }
}

/// Notes the object an event names.
fn mark<K: Resource>(keys: &mut BTreeSet<ObjectKey>, object: &K) {
    let meta = object.meta();
    keys.insert(ObjectKey::new(
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    ));
}

fn get<K>(reflector: &Reflector<K>, key: &ObjectKey) -> Option<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    reflector
        .store
        .get(&ObjectRef::new(&key.name).within(&key.namespace))
}

/// What every watch shares.
struct Watches<'a> {
    client: &'a Client,
    changes: &'a Changes,
    stop: &'a CancellationToken,
}

impl Watches<'_> {
    fn reflect<K>(&self, need: Need, mark: fn(&mut Changed, &K)) -> Reflector<K>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        reflect(
            self.client.clone(),
            need,
            self.changes,
            mark,
            self.stop.clone(),
        )
    }
}

impl Caches {
    fn start(client: &Client, changes: &Changes, stop: &CancellationToken) -> Caches {
        use Need::*;
        let w = Watches {
            client,
            changes,
            stop,
        };
        // What each kind's event names: the objects converted one by one, a flag for those
        // converted together, everything for those whose labels reach a whole namespace.
        Caches {
            namespaces: w.reflect(Required, |c, _| c.everything = true),
            pods: w.reflect(Required, |c, o| mark(&mut c.pods, o)),
            services: w.reflect(Required, |c, o| mark(&mut c.services, o)),
            endpoint_slices: w.reflect(Required, |c, o| mark(&mut c.endpoint_slices, o)),
            gateways: w.reflect(UnlessNotInstalled, |c, _| c.everything = true),
            http_routes: w.reflect(UnlessNotInstalled, |c, _| c.routes = true),
            grpc_routes: w.reflect(UnlessNotInstalled, |c, _| c.routes = true),
            policies: w.reflect(UnlessNotInstalled, |c, o| mark(&mut c.policies, o)),
            traffic_policies: w.reflect(UnlessNotInstalled, |c, _| c.traffic_policies = true),
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

impl Lookup for Caches {
    fn pod(&self, key: &ObjectKey) -> Option<Arc<core::Pod>> {
        get(&self.pods, key)
    }

    fn service(&self, key: &ObjectKey) -> Option<Arc<core::Service>> {
        get(&self.services, key)
    }

    fn endpoint_slice(&self, key: &ObjectKey) -> Option<Arc<EndpointSlice>> {
        get(&self.endpoint_slices, key)
    }

    fn policy(&self, key: &ObjectKey) -> Option<Arc<AuthorizationPolicy>> {
        get(&self.policies, key)
    }

    fn routes_and_traffic_policies(&self) -> Objects {
        Objects {
            http_routes: self.http_routes.store.state(),
            grpc_routes: self.grpc_routes.store.state(),
            traffic_policies: self.traffic_policies.store.state(),
            ..Objects::default()
        }
    }

    fn objects(&self) -> Objects {
        Caches::objects(self)
    }
}

/// The source's state between rebuilds.
struct Rebuilder {
    /// Shared with the blocking thread each update runs on.
    caches: Arc<Caches>,
    changes: Changes,
    options: Options,
    updater: Updater,
}

impl Rebuilder {
    /// Rebuilds on every change until `shutdown`; gives itself back so the caller can wait for
    /// the watch tasks.
    async fn run(
        mut self,
        models: channel::Sender<Arc<MeshModel>>,
        shutdown: CancellationToken,
    ) -> Self {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return self,
                _ = self.changes.notify.notified() => {}
            }
            // Debounce: let the rest of a burst arrive; events meanwhile leave a permit in
            // `notify`, which at worst costs one more (empty) round.
            tokio::select! {
                _ = shutdown.cancelled() => return self,
                _ = tokio::time::sleep(self.options.debounce) => {}
            }
            let changed = self.changes.take();
            let current = models.borrow().clone();
            // On a blocking thread: a change is a fraction of a millisecond, but one that
            // converts everything (a relist) takes seconds at a million pods, which must not
            // hold a runtime worker.
            let caches = self.caches.clone();
            let mut updater = std::mem::replace(&mut self.updater, Updater::new(&self.options));
            let job = tokio::task::spawn_blocking(move || {
                let next = updater.next(&changed, &*caches, &current);
                (updater, next)
            });
            let next = tokio::select! {
                _ = shutdown.cancelled() => return self,
                job = job => job,
            };
            let next = match next {
                Ok((updater, next)) => {
                    self.updater = updater;
                    next
                }
                Err(error) => {
                    // The fresh updater in its place builds the next model whole.
                    tracing::error!(%error, "updating the model failed; the last good model stays in force until the next change");
                    self.changes.remember(|c| c.everything = true);
                    continue;
                }
            };
            match next {
                Ok(None) => {}
                Ok(Some(model)) => {
                    log_model(&model, "Kubernetes state changed; new model in force");
                    metrics::counter!("ambit_controller_config_reloads_total", "result" => "ok")
                        .increment(1);
                    models.send_replace(Arc::new(model));
                }
                Err(error) => {
                    metrics::counter!("ambit_controller_config_reloads_total", "result" => "error")
                        .increment(1);
                    tracing::error!(%error, "could not build a model from the cluster; the last good model stays in force");
                    // Whatever changed is still to be taken in, at the next change: a
                    // retry now would only fail again.
                    self.changes.remember(|c| c.everything = true);
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
    let changes = Changes::default();
    // The watch tasks end with `stop`: on shutdown, or when the start fails.
    let stop = shutdown.child_token();
    let caches = Caches::start(&client, &changes, &stop);
    let first = match tokio::time::timeout(options.sync_timeout, caches.wait()).await {
        Ok(()) => {
            // What the first model is made from needs no second look.
            changes.take();
            let caches = Arc::new(caches);
            let mut updater = Updater::new(&options);
            let from = caches.clone();
            // On a blocking thread, as every update (see `Rebuilder::run`).
            let job = tokio::task::spawn_blocking(move || {
                let first = updater.first(&*from);
                (updater, first)
            });
            let (updater, first) = job
                .await
                .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()));
            first.map(|model| {
                let rebuilder = Rebuilder {
                    updater,
                    caches,
                    changes,
                    options,
                };
                (rebuilder, model)
            })
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
        let Rebuilder { caches, .. } = rebuilder.run(tx, stop.clone()).await;
        stop.cancel();
        // Still shared only when shut down during an update, which ends on its own; the
        // watch tasks end on `stop` either way.
        if let Ok(caches) = Arc::try_unwrap(caches) {
            for task in caches.tasks() {
                let _ = task.await;
            }
        }
    });
    Ok(Watching { models, task })
}

/// One line saying what a model holds.
fn log_model(model: &MeshModel, what: &str) {
    let c = model.counts();
    tracing::info!(
        workloads = c.workloads,
        services = c.services,
        waypoints = c.waypoints,
        policies = c.policies,
        routes = c.routes,
        traffic_policies = c.traffic_policies,
        "{what}"
    );
}
