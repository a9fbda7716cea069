//! Keeps a reflector (a local cache fed by list + watch) per kind, and rebuilds the model from
//! the caches shortly after anything changes: a burst of events (a rollout, a resync after a
//! reconnect) becomes one new model, not one per event.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1 as core;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch as channel};
use tokio_util::sync::CancellationToken;

use super::assemble::assemble;
use super::convert::{Skip, convert};
use super::{KubernetesError, Options, Watching};
use crate::model::MeshModel;

/// Watches every object of kind `K` in all namespaces into a cache, waking `changed` on each
/// event, until `shutdown`. Errors (API unreachable, forbidden, a watch expired) are logged and
/// retried with kube's default backoff; the cache keeps its last state meanwhile.
fn reflect<K>(
    client: Client,
    changed: Arc<Notify>,
    shutdown: CancellationToken,
) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let kind = K::kind(&());
    let stream = watcher(Api::<K>::all(client), watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = stream.next() => event,
            };
            match event {
                Some(Ok(_)) => changed.notify_one(),
                Some(Err(error)) => {
                    tracing::warn!(%kind, %error, "watching the Kubernetes API failed; retrying (the last known state stays in force)")
                }
                None => return,
            }
        }
    });
    (store, task)
}

struct Caches {
    namespaces: Store<core::Namespace>,
    pods: Store<core::Pod>,
    services: Store<core::Service>,
}

/// The source's state between rebuilds.
struct Rebuilder {
    caches: Caches,
    options: Options,
    /// Skips already logged, so each is logged once when it appears, not on every rebuild.
    logged: BTreeSet<Skip>,
}

impl Rebuilder {
    fn build(&mut self) -> Result<MeshModel, KubernetesError> {
        let input = convert(
            &self.caches.namespaces.state(),
            &self.caches.pods.state(),
            &self.caches.services.state(),
        );
        let (model, skips) = assemble(&input, &self.options.trust_domain, &self.options.cluster_id)
            .map_err(|errors| KubernetesError::Model { errors })?;
        let now: BTreeSet<Skip> = skips.into_iter().collect();
        for skip in now.difference(&self.logged) {
            tracing::info!(object = %skip.subject, reason = %skip.reason, "left out of the mesh model");
        }
        self.logged = now;
        Ok(model)
    }

    async fn run(
        mut self,
        models: channel::Sender<Arc<MeshModel>>,
        changed: Arc<Notify>,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = changed.notified() => {}
            }
            // Debounce: let the rest of a burst arrive; events meanwhile leave a permit in
            // `changed`, which at worst costs one more (unchanged) rebuild.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.options.debounce) => {}
            }
            match self.build() {
                Ok(model) => {
                    if **models.borrow() == model {
                        continue;
                    }
                    tracing::info!(
                        workloads = model.workloads().count(),
                        services = model.services().count(),
                        "Kubernetes state changed; new model in force"
                    );
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
    let (namespaces, ns_task) = reflect(client.clone(), changed.clone(), stop.clone());
    let (pods, pod_task) = reflect(client.clone(), changed.clone(), stop.clone());
    let (services, svc_task) = reflect(client, changed.clone(), stop.clone());
    let synced = async {
        namespaces.wait_until_ready().await?;
        pods.wait_until_ready().await?;
        services.wait_until_ready().await
    };
    let first = match tokio::time::timeout(options.sync_timeout, synced).await {
        Ok(Ok(())) => {
            let mut rebuilder = Rebuilder {
                caches: Caches {
                    namespaces,
                    pods,
                    services,
                },
                options,
                logged: BTreeSet::new(),
            };
            rebuilder.build().map(|model| (rebuilder, model))
        }
        Ok(Err(_)) | Err(_) => Err(KubernetesError::NotSynced {
            timeout: options.sync_timeout,
        }),
    };
    let (rebuilder, model) = match first {
        Ok(first) => first,
        Err(error) => {
            stop.cancel();
            return Err(error);
        }
    };
    tracing::info!(
        workloads = model.workloads().count(),
        services = model.services().count(),
        "first model built from the Kubernetes API"
    );
    let (tx, models) = channel::channel(Arc::new(model));
    let task = tokio::spawn(async move {
        rebuilder.run(tx, changed, stop.clone()).await;
        stop.cancel();
        for task in [ns_task, pod_task, svc_task] {
            let _ = task.await;
        }
    });
    Ok(Watching { models, task })
}
