//! One Gateway, one pass: a waypoint Gateway gets its objects applied and its status written;
//! any other Gateway loses the objects and status we gave it while it was one (after a class
//! change). Every pass is idempotent: server-side apply of the same desired objects is a no-op,
//! and status is written only when it would change. Nothing is applied onto, or deleted from,
//! an object that is not this Gateway's (see `ownership`).

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use gateway_api::apis::standard::gateways::Gateway;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::json;

use super::namespace_lock::NamespaceLocks;
use super::ownership::{
    self, ConflictingObject, NameConflict, NamespacedObject, controlled_by, delete_if_ours,
    delete_object, is_waypoint_root_cert,
};
use super::status::{self, ObservedState};
use super::{DesiredObjects, WaypointOptions, desired_objects, root_cert};
use crate::ca::root_configmap::CONFIGMAP_NAME;

/// What each reconcile needs, shared by all of them.
pub(super) struct Context {
    pub client: Client,
    pub options: WaypointOptions,
    /// Every Gateway: a namespace's root certificate ConfigMap is owned by all its waypoints.
    pub gateways: Store<Gateway>,
    pub root_certs: Store<ConfigMap>,
    pub service_accounts: Store<ServiceAccount>,
    pub deployments: Store<Deployment>,
    pub services: Store<Service>,
    /// Consecutive failures per Gateway (`namespace/name`), for its retry backoff; cleared on
    /// success and when the Gateway is gone.
    pub failures: Mutex<HashMap<String, u32>>,
    /// Serialises the writes of each namespace's shared root certificate ConfigMap.
    pub namespace_locks: NamespaceLocks,
}

/// A reconcile that failed; it is retried with backoff. Each names the Gateway, the object,
/// the API server's answer and what would fix it.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(
        "waypoint Gateway {gateway}: could not read {kind} {object} (to make sure it is not someone else's before writing it): {source}; {fix}"
    )]
    Read {
        gateway: String,
        kind: String,
        object: String,
        #[source]
        source: kube::Error,
        fix: String,
    },
    #[error("waypoint Gateway {gateway}: could not apply {kind} {object}: {source}; {fix}")]
    Apply {
        gateway: String,
        kind: String,
        object: String,
        #[source]
        source: kube::Error,
        fix: String,
    },
    #[error(
        "Gateway {gateway} is no longer of the waypoint class: could not delete the {kind} {object} it owned: {source}; {fix}"
    )]
    Delete {
        gateway: String,
        kind: String,
        object: String,
        #[source]
        source: kube::Error,
        fix: String,
    },
    #[error("Gateway {gateway}: could not write its status: {source}; {fix}")]
    Status {
        gateway: String,
        #[source]
        source: kube::Error,
        fix: String,
    },
}

/// What would fix a failed call of `verb` on `resource`, judged from the API server's answer.
pub(super) fn fix(error: &kube::Error, verb: &str, resource: &str) -> String {
    match error {
        kube::Error::Api(status) => match status.code {
            401 | 403 => format!(
                "the controller's service account may not {verb} {resource}: grant it in the ambit-controller ClusterRole (manifests/controller.yaml)"
            ),
            409 => "another writer changed it at the same moment: retrying".into(),
            // The apply named the uid read just before; the object was replaced in between.
            422 if status.message.contains("metadata.uid") => {
                "it was replaced since it was read: retrying (if the new one is not this Gateway's, the Gateway's status will say so)".into()
            }
            400 | 422 => format!(
                "the API server refused the object ({}): check the Gateway's annotations and spec.infrastructure labels/annotations, and the controller's waypoint image option",
                status.message
            ),
            404 => format!(
                "{resource} are not served (for gateways: install the Gateway API CRDs, see manifests/README.md): retrying"
            ),
            _ => "the API server failed: retrying".into(),
        },
        _ => "the API server could not be reached: retrying".into(),
    }
}

/// `namespace/name`: how Gateways are named in logs, errors and the failure counts.
pub(super) fn gateway_name(gateway: &Gateway) -> String {
    format!(
        "{}/{}",
        gateway.namespace().unwrap_or_default(),
        gateway.name_any()
    )
}

/// Reconciles one Gateway (called by the runtime on every change of it or of what it owns).
pub(super) async fn reconcile(
    gateway: Arc<Gateway>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let result = if gateway.spec.gateway_class_name == ctx.options.gateway_class {
        deploy(&gateway, &ctx).await
    } else {
        clean_up(&gateway, &ctx).await.map(|()| Outcome::Done)
    };
    if result.is_ok() {
        ctx.failures.lock().remove(&gateway_name(&gateway));
    }
    result.map(|outcome| match outcome {
        Outcome::Done => Action::requeue(ctx.options.resync),
        // Our watches do not see the user's object go (it lacks our label), so look again
        // sooner than the resync; renaming the Gateway is a new Gateway, reconciled at once.
        Outcome::Blocked => Action::requeue(ctx.options.retry_max.min(ctx.options.resync)),
    })
}

/// How a reconcile that did not fail ended.
enum Outcome {
    Done,
    /// Not deployed because objects of its names are someone else's (reported on the Gateway).
    Blocked,
}

/// After a failure: log it with everything needed to fix it, and retry with exponential
/// backoff per Gateway, so one broken Gateway neither spins nor delays the others.
pub(super) fn error_policy(
    gateway: Arc<Gateway>,
    error: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    let failures = {
        let mut failures = ctx.failures.lock();
        let count = failures.entry(gateway_name(&gateway)).or_insert(0);
        *count = count.saturating_add(1);
        *count
    };
    let delay = ctx
        .options
        .retry_base
        .saturating_mul(1u32 << (failures - 1).min(16))
        .min(ctx.options.retry_max);
    tracing::warn!(%error, failures, retry_in = ?delay, "waypoint reconcile failed");
    Action::requeue(delay)
}

async fn deploy(gateway: &Gateway, ctx: &Context) -> Result<Outcome, ReconcileError> {
    let observed = match desired_objects(gateway, &ctx.options) {
        Err(invalid) => {
            tracing::warn!(gateway = %gateway_name(gateway), reason = %invalid, "waypoint Gateway not deployed");
            ObservedState::Invalid(invalid)
        }
        Ok(desired) => match apply_all(gateway, ctx, desired).await {
            Ok(observed) => observed,
            Err(error) => {
                // Tell the user on the Gateway too; if the API is down this fails as well,
                // and the apply error is the one that matters.
                let failed = ObservedState::Failed {
                    message: error.to_string(),
                };
                if let Err(status_error) = write_status(gateway, ctx, &failed).await {
                    tracing::debug!(%status_error, "could not report the failure on the Gateway");
                }
                return Err(error);
            }
        },
    };
    let outcome = match &observed {
        ObservedState::Conflict(conflict) => {
            tracing::warn!(gateway = %gateway_name(gateway), %conflict, "waypoint Gateway not deployed");
            Outcome::Blocked
        }
        _ => Outcome::Done,
    };
    write_status(gateway, ctx, &observed).await?;
    Ok(outcome)
}

async fn apply_all(
    gateway: &Gateway,
    ctx: &Context,
    desired: DesiredObjects,
) -> Result<ObservedState, ReconcileError> {
    // Every object read and judged before any is written: all of them or nothing.
    let uid = gateway.uid().unwrap_or_default();
    let mut conflicts = Vec::new();
    let sa_uid = existing_uid(gateway, ctx, &desired.service_account, &uid, &mut conflicts).await?;
    let deployment_uid =
        existing_uid(gateway, ctx, &desired.deployment, &uid, &mut conflicts).await?;
    let service_uid = existing_uid(gateway, ctx, &desired.service, &uid, &mut conflicts).await?;
    let ns = gateway.namespace().unwrap_or_default();
    // Held from computing the shared ConfigMap's owners to writing them (see namespace_lock).
    let guard = ctx.namespace_locks.lock(&ns).await;
    let root_cert = root_cert_to_apply(gateway, ctx, &mut conflicts).await?;
    if !conflicts.is_empty() {
        return Ok(ObservedState::Conflict(NameConflict { objects: conflicts }));
    }
    // First: the pods cannot start without the root certificate they mount.
    if let Some((configmap, existing)) = root_cert {
        apply(gateway, ctx, &configmap, existing).await?;
    }
    drop(guard);
    apply(gateway, ctx, &desired.service_account, sa_uid).await?;
    let deployment = apply(gateway, ctx, &desired.deployment, deployment_uid).await?;
    let service = apply(gateway, ctx, &desired.service, service_uid).await?;
    let status = deployment.status.unwrap_or_default();
    let spec = service.spec.unwrap_or_default();
    let cluster_ips = spec
        .cluster_ips
        .or_else(|| spec.cluster_ip.map(|ip| vec![ip]))
        .unwrap_or_default()
        .into_iter()
        .filter(|ip| !ip.is_empty() && ip != "None")
        .collect();
    Ok(ObservedState::Applied {
        replicas: desired
            .deployment
            .spec
            .and_then(|s| s.replicas)
            .unwrap_or(1),
        available: status.available_replicas.unwrap_or(0),
        cluster_ips,
    })
}

/// The uid of the object named like `desired` if it exists and is this Gateway's (`uid`);
/// `None` if there is none, or if it is someone else's, which then goes into `conflicts`.
async fn existing_uid<K>(
    gateway: &Gateway,
    ctx: &Context,
    desired: &K,
    uid: &str,
    conflicts: &mut Vec<ConflictingObject>,
) -> Result<Option<String>, ReconcileError>
where
    K: NamespacedObject,
{
    let ns = desired.namespace().unwrap_or_default();
    match ownership::read::<K>(gateway, ctx, &ns, &desired.name_any()).await? {
        None => Ok(None),
        Some(existing) if controlled_by(&existing, uid) => Ok(existing.uid()),
        Some(existing) => {
            conflicts.push(ConflictingObject::of(&existing));
            Ok(None)
        }
    }
}

/// Server-side apply, forced: we own the fields we set, whoever set them before, and leave
/// fields only other managers set (an HPA's, a user's extra annotation) alone. Only ever on an
/// object found absent or ours: `existing_uid` is the uid it was read with, sent along so the
/// API server refuses the apply (422, uid immutable) should it have been replaced since.
async fn apply<K>(
    gateway: &Gateway,
    ctx: &Context,
    object: &K,
    existing_uid: Option<String>,
) -> Result<K, ReconcileError>
where
    K: NamespacedObject + Serialize,
{
    let ns = object.namespace().unwrap_or_default();
    let name = object.name_any();
    let mut object = object.clone();
    object.meta_mut().uid = existing_uid;
    let params = PatchParams::apply(&ctx.options.field_manager).force();
    Api::<K>::namespaced(ctx.client.clone(), &ns)
        .patch(&name, &params, &Patch::Apply(&object))
        .await
        .map_err(|source| ReconcileError::Apply {
            gateway: gateway_name(gateway),
            kind: kind_of::<K>(),
            object: format!("{ns}/{name}"),
            fix: fix(&source, "patch (server-side apply)", &K::plural(&())),
            source,
        })
}

/// The Gateway's namespace's root certificate ConfigMap, owned by every deployable waypoint
/// there (computed now, under the namespace's lock), with the uid it was read with; `None` in
/// the controller's namespace (its publisher keeps that one), or when the ConfigMap there is
/// not ours, which then goes into `conflicts`.
async fn root_cert_to_apply(
    gateway: &Gateway,
    ctx: &Context,
    conflicts: &mut Vec<ConflictingObject>,
) -> Result<Option<(ConfigMap, Option<String>)>, ReconcileError> {
    let ns = gateway.namespace().unwrap_or_default();
    let cache = ctx.gateways.state();
    let owners = root_cert::owners(
        &ns,
        cache.iter().map(|g| g.as_ref()),
        Some(gateway),
        None,
        &ctx.options,
    );
    let Some(desired) = root_cert::desired_root_cert(&ns, &owners, &ctx.options) else {
        return Ok(None);
    };
    match ownership::read::<ConfigMap>(gateway, ctx, &ns, CONFIGMAP_NAME).await? {
        None => Ok(Some((desired, None))),
        Some(existing) if is_waypoint_root_cert(&existing) => Ok(Some((desired, existing.uid()))),
        Some(existing) => {
            conflicts.push(ConflictingObject::of(&existing));
            Ok(None)
        }
    }
}

/// A Gateway leaving our class gives up its share of its namespace's root certificate
/// ConfigMap: re-applied with the other waypoints as owners, or deleted with the last one.
async fn release_root_cert(
    gateway: &Gateway,
    ctx: &Context,
    gateway_uid: &str,
) -> Result<(), ReconcileError> {
    let ns = gateway.namespace().unwrap_or_default();
    let owns = |configmap: &ConfigMap| {
        is_waypoint_root_cert(configmap)
            && configmap
                .owner_references()
                .iter()
                .any(|o| o.uid == gateway_uid)
    };
    // The watch cache first, so a Gateway that never was a waypoint costs no API call.
    let key = ObjectRef::<ConfigMap>::new(CONFIGMAP_NAME).within(&ns);
    let cached = ctx.root_certs.get(&key);
    if ns == ctx.options.root_cert_namespace || !cached.is_some_and(|c| owns(&c)) {
        return Ok(());
    }
    let _guard = ctx.namespace_locks.lock(&ns).await;
    let Some(configmap) = ownership::read::<ConfigMap>(gateway, ctx, &ns, CONFIGMAP_NAME).await?
    else {
        return Ok(());
    };
    if !owns(&configmap) {
        return Ok(());
    }
    let cache = ctx.gateways.state();
    let others = root_cert::owners(
        &ns,
        cache.iter().map(|g| g.as_ref()),
        None,
        Some(gateway_uid),
        &ctx.options,
    );
    match root_cert::desired_root_cert(&ns, &others, &ctx.options) {
        Some(desired) => apply(gateway, ctx, &desired, configmap.uid())
            .await
            .map(drop),
        None => delete_object(gateway, ctx, &configmap).await,
    }
}

pub(super) fn kind_of<K: Resource<DynamicType = ()>>() -> String {
    K::kind(&()).into_owned()
}

async fn write_status(
    gateway: &Gateway,
    ctx: &Context,
    observed: &ObservedState,
) -> Result<(), ReconcileError> {
    let now = Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_default());
    let desired = status::gateway_status(gateway, observed, &now);
    if !status::status_differs(gateway, &desired) {
        return Ok(());
    }
    patch_status(gateway, ctx, json!(desired)).await
}

/// Applies `status` as ours on the Gateway's status subresource. Conditions are a map keyed by
/// type there, so other writers' condition types are kept.
async fn patch_status(
    gateway: &Gateway,
    ctx: &Context,
    status: serde_json::Value,
) -> Result<(), ReconcileError> {
    let ns = gateway.namespace().unwrap_or_default();
    let body = json!({
        "apiVersion": Gateway::api_version(&()),
        "kind": Gateway::kind(&()),
        "metadata": {"name": gateway.name_any(), "namespace": ns},
        "status": status,
    });
    let params = PatchParams::apply(&ctx.options.field_manager).force();
    Api::<Gateway>::namespaced(ctx.client.clone(), &ns)
        .patch_status(&gateway.name_any(), &params, &Patch::Apply(&body))
        .await
        .map(|_| ())
        .map_err(|source| ReconcileError::Status {
            gateway: gateway_name(gateway),
            fix: fix(&source, "patch", "gateways/status"),
            source,
        })
}

/// Whether a Gateway's status has fields written by our field manager.
fn holds_our_status(gateway: &Gateway, manager: &str) -> bool {
    gateway.managed_fields().iter().any(|f| {
        f.manager.as_deref() == Some(manager) && f.subresource.as_deref() == Some("status")
    })
}

/// A Gateway not (or no longer) of our class: delete what it owns through us, found in the
/// watch caches (so a Gateway that never was a waypoint costs no API call), and give up our
/// status fields, leaving the new class's controller a clean Gateway.
async fn clean_up(gateway: &Gateway, ctx: &Context) -> Result<(), ReconcileError> {
    let Some(uid) = gateway.uid() else {
        return Ok(());
    };
    if holds_our_status(gateway, &ctx.options.field_manager) {
        // An empty apply releases every status field only we own.
        patch_status(gateway, ctx, json!({})).await?;
    }
    // Deployment first: its pods are what serves traffic.
    delete_owned(gateway, ctx, &ctx.deployments, &uid).await?;
    delete_owned(gateway, ctx, &ctx.services, &uid).await?;
    delete_owned(gateway, ctx, &ctx.service_accounts, &uid).await?;
    release_root_cert(gateway, ctx, &uid).await
}

async fn delete_owned<K>(
    gateway: &Gateway,
    ctx: &Context,
    store: &Store<K>,
    gateway_uid: &str,
) -> Result<(), ReconcileError>
where
    K: NamespacedObject,
{
    let ns = gateway.namespace().unwrap_or_default();
    let name = gateway.name_any();
    let key = ObjectRef::<K>::new(&name).within(&ns);
    // The watch cache says whether there is anything to look at; the API server's current
    // copy says whether it is still ours to delete.
    if !store
        .get(&key)
        .is_some_and(|object| controlled_by(object.as_ref(), gateway_uid))
    {
        return Ok(());
    }
    delete_if_ours::<K>(gateway, ctx, &ns, &name, |object| {
        controlled_by(object, gateway_uid)
    })
    .await
}
