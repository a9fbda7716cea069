//! The watches and the work loop. Built from kube::runtime's parts rather than its
//! `Controller`: `Controller::owns` keeps its caches of owned objects to itself, and cleaning
//! up after a class change needs them (to know, without an API call per Gateway, whether a
//! Gateway of another class owns anything of ours). So: one reflector for Gateways, one per
//! owned kind (only objects with our label), their events turned into reconcile requests
//! (`trigger_self`, `trigger_owners`), and kube's `applier` (the engine under `Controller`:
//! per-object deduplication, at most one reconcile per Gateway at a time, scheduled retries).

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use futures::stream::{BoxStream, StreamExt};
use gateway_api::apis::standard::gateways::Gateway;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use kube::runtime::controller::{
    self, Action, ReconcileRequest, applier, trigger_owners, trigger_self,
};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::namespace_lock::NamespaceLocks;
use super::reconcile::{Context, error_policy, reconcile};
use super::{MANAGED_LABEL, MANAGED_VALUE, WaypointOptions};

type Requests = BoxStream<'static, Result<ReconcileRequest<Gateway>, watcher::Error>>;

/// A cache of our objects of kind `K`, and a stream asking to reconcile their owning Gateway
/// whenever one changes (someone edits or deletes our Deployment: we put it back).
fn owned<K>(client: &Client) -> (Store<K>, Requests)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let config = watcher::Config::default().labels(&format!("{MANAGED_LABEL}={MANAGED_VALUE}"));
    let events = watcher(Api::<K>::all(client.clone()), config)
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    (store, trigger_owners::<Gateway, _>(events, (), ()).boxed())
}

/// Runs the reconciler until `shutdown`; reconciles in flight then finish. Watch errors (the
/// API down, RBAC missing, the Gateway API CRDs not installed) are logged and retried with
/// backoff; they never end the loop.
pub async fn run(client: Client, options: WaypointOptions, shutdown: CancellationToken) {
    let (gateways, writer) = reflector::store::<Gateway>();
    let gateway_events = watcher(
        Api::<Gateway>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .touched_objects();
    let (service_accounts, sa_requests) = owned::<ServiceAccount>(&client);
    let (deployments, deployment_requests) = owned::<Deployment>(&client);
    let (services, service_requests) = owned::<Service>(&client);
    let (root_certs, root_cert_requests) = owned::<ConfigMap>(&client);
    let requests = futures::stream::select_all([
        trigger_self(gateway_events, ()).boxed(),
        root_cert_requests,
        sa_requests,
        deployment_requests,
        service_requests,
    ])
    // The applier drains and stops once its input ends.
    .take_until(shutdown.cancelled_owned());
    let concurrency = options.concurrency;
    let ctx = Arc::new(Context {
        client,
        options,
        gateways: gateways.clone(),
        root_certs,
        service_accounts,
        deployments,
        services,
        failures: Mutex::new(HashMap::new()),
        namespace_locks: NamespaceLocks::default(),
    });
    tracing::info!(
        class = %ctx.options.gateway_class,
        image = %ctx.options.image,
        "waypoint reconciler watching Gateways"
    );
    let forget = ctx.clone();
    applier(
        |gateway, ctx| Box::pin(reconcile(gateway, ctx)),
        error_policy,
        ctx,
        gateways,
        requests,
        controller::Config::default().concurrency(concurrency),
    )
    .for_each(|result| {
        if let Err(controller::Error::ObjectNotFound(gateway)) = &result {
            // Its retry count too: a new Gateway of the same name starts afresh.
            let name = format!(
                "{}/{}",
                gateway.namespace.as_deref().unwrap_or_default(),
                gateway.name
            );
            forget.failures.lock().remove(&name);
        }
        async move { log(result) }
    })
    .await;
    tracing::info!("waypoint reconciler stopped");
}

fn log<E: std::error::Error, Q: std::error::Error>(
    result: Result<(ObjectRef<Gateway>, Action), controller::Error<E, Q>>,
) {
    match result {
        Ok((gateway, _)) => tracing::debug!(%gateway, "waypoint Gateway reconciled"),
        // Logged with its fix by error_policy.
        Err(controller::Error::ReconcilerFailed(..)) => {}
        // A Gateway deleted before its turn came: Kubernetes collects what it owned.
        Err(controller::Error::ObjectNotFound(gateway)) => {
            tracing::debug!(%gateway, "Gateway gone before its reconcile")
        }
        Err(controller::Error::QueueError(error)) => tracing::warn!(
            %error,
            "watching Gateways or waypoint objects failed; retrying (if gateways are not found, install the Gateway API CRDs: see manifests/README.md)"
        ),
        Err(error) => tracing::warn!(%error, "waypoint reconciler"),
    }
}
