//! The mesh root certificate, published in a ConfigMap (as Istio publishes
//! `istio-ca-root-cert`), so that proxies mount the public root and nothing but the controller
//! ever reads the CA Secret: a Secret mounted into a DaemonSet is fetched, private key included,
//! by the kubelet of every node, and one compromised node could then mint any identity.
//!
//! The controller applies the ConfigMap at start and watches it (one object, by a field
//! selector): when it is deleted, or its certificate edited, it is applied again at once. A
//! watch rather than a periodic re-apply, because ztunnel pods cannot start without it: the gap
//! should be one round trip, not a period. Failures are retried with backoff; they never stop
//! the controller, whose discovery and CA serve proxies that already run.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::NamespacedName;

/// The ConfigMap's name, in the controller's namespace and in every namespace with a waypoint.
pub const CONFIGMAP_NAME: &str = "ambit-ca-root-cert";
/// Its key holding the root certificate(s), PEM: what proxies' `--root-cert` files are.
pub const ROOT_CERT_KEY: &str = "root-cert.pem";
/// The server-side apply field manager.
pub const FIELD_MANAGER: &str = "ambit-controller";
/// The namespace it goes to when neither `--root-cert-namespace` nor `--ca-secret` says.
pub const DEFAULT_NAMESPACE: &str = "ambit-system";
/// Every (group, resource, verb) the publisher calls the API with, in its namespace only. The
/// manifests test checks that manifests/controller.yaml grants each there.
pub const REQUIRED_PERMISSIONS: &[(&str, &str, &str)] = &[
    ("", "configmaps", "list"),
    ("", "configmaps", "watch"),
    ("", "configmaps", "create"),
    ("", "configmaps", "patch"),
];

/// First retry delay after a failed apply; doubled per further failure up to [`RETRY_MAX`].
const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum RootConfigMapError {
    #[error("could not apply the root certificate ConfigMap {configmap}: {source}; {fix}")]
    Apply {
        configmap: NamespacedName,
        source: Box<kube::Error>,
        fix: String,
    },
    #[error(
        "could not watch the root certificate ConfigMap {configmap} (to restore it when it is changed or deleted): {source}; check that the controller may list and watch configmaps in namespace {namespace} (RBAC: the ambit-controller Role in manifests/controller.yaml); retrying",
        namespace = configmap.namespace
    )]
    Watch {
        configmap: NamespacedName,
        source: Box<watcher::Error>,
    },
}

/// The ConfigMap holding `root_pem` in `namespace`, ready for server-side apply: only the fields
/// we own, and no owner (it lives as long as the mesh does).
pub fn configmap(namespace: &str, root_pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(CONFIGMAP_NAME.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "ambit-controller".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            ROOT_CERT_KEY.to_string(),
            root_pem.to_string(),
        )])),
        ..ConfigMap::default()
    }
}

/// Applies the ConfigMap once (forced: the root is ours, whoever edited it).
pub async fn apply(
    client: kube::Client,
    namespace: &str,
    root_pem: &str,
) -> Result<(), RootConfigMapError> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Api::<ConfigMap>::namespaced(client, namespace)
        .patch(
            CONFIGMAP_NAME,
            &params,
            &Patch::Apply(configmap(namespace, root_pem)),
        )
        .await
        .map(|_| ())
        .map_err(|source| RootConfigMapError::Apply {
            configmap: NamespacedName::new(namespace, CONFIGMAP_NAME),
            fix: fix(&source, namespace),
            source: Box::new(source),
        })
}

fn fix(error: &kube::Error, namespace: &str) -> String {
    match error {
        kube::Error::Api(status) => match status.code {
            401 | 403 => format!(
                "the controller's service account may not create or patch configmaps in namespace {namespace}: grant it in the ambit-controller Role (manifests/controller.yaml); retrying"
            ),
            404 => format!(
                "namespace {namespace} does not exist: create it, or set --root-cert-namespace to the controller's namespace; retrying"
            ),
            _ => "the API server failed: retrying".into(),
        },
        _ => "the API server could not be reached: retrying".into(),
    }
}

/// Whether a ConfigMap seen by the watch still holds exactly `root_pem`.
fn holds(configmap: &ConfigMap, root_pem: &str) -> bool {
    configmap
        .data
        .as_ref()
        .and_then(|d| d.get(ROOT_CERT_KEY))
        .is_some_and(|pem| pem == root_pem)
}

/// Publishes `root_pem` in `namespace` until `shutdown`: applied now, and again whenever the
/// watch shows it deleted or changed, or after a failure (with backoff).
pub async fn publish(
    client: kube::Client,
    namespace: String,
    root_pem: String,
    shutdown: CancellationToken,
) {
    let api = Api::<ConfigMap>::namespaced(client.clone(), &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={CONFIGMAP_NAME}"));
    let mut events = watcher(api, config).default_backoff().boxed();
    let target = NamespacedName::new(&namespace, CONFIGMAP_NAME);
    let mut failures = 0u32;
    // When to apply next: now at start, then only on drift or after a failure.
    let mut apply_at = Some(Instant::now());
    let mut drift = Drift::default();
    loop {
        let due = async {
            match apply_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = due => apply_at = try_apply(&client, &target, &root_pem, &mut failures).await,
            event = events.next() => {
                let Some(event) = event else { break };
                // A pending retry keeps its backoff; otherwise put it back now.
                if drift.seen(event, &target, &root_pem) && apply_at.is_none() {
                    tracing::info!(configmap = %target, "root certificate ConfigMap deleted or changed; applying it again");
                    apply_at = Some(Instant::now());
                }
            }
        }
    }
    tracing::info!("root certificate ConfigMap publisher stopped");
}

/// One apply; on failure, when to try again.
async fn try_apply(
    client: &kube::Client,
    target: &NamespacedName,
    root_pem: &str,
    failures: &mut u32,
) -> Option<Instant> {
    match apply(client.clone(), &target.namespace, root_pem).await {
        Ok(()) => {
            tracing::info!(configmap = %target, after_failures = *failures, "root certificate ConfigMap applied");
            *failures = 0;
            None
        }
        Err(error) => {
            *failures = failures.saturating_add(1);
            let delay = RETRY_BASE
                .saturating_mul(1 << (*failures - 1).min(8))
                .min(RETRY_MAX);
            tracing::warn!(%error, failures = *failures, retry_in = ?delay, "root certificate ConfigMap not published");
            Some(Instant::now() + delay)
        }
    }
}

/// Reads the watch for changes that undo the publication.
#[derive(Default)]
struct Drift {
    /// During a (re)list: whether the ConfigMap was listed at all.
    listed: bool,
}

impl Drift {
    /// Whether `event` shows the ConfigMap gone or holding another certificate.
    fn seen(
        &mut self,
        event: Result<watcher::Event<ConfigMap>, watcher::Error>,
        target: &NamespacedName,
        root_pem: &str,
    ) -> bool {
        match event {
            Err(source) => {
                let error = RootConfigMapError::Watch {
                    configmap: target.clone(),
                    source: Box::new(source),
                };
                tracing::warn!(%error, "root certificate ConfigMap");
                false
            }
            Ok(watcher::Event::Init) => {
                self.listed = false;
                false
            }
            Ok(watcher::Event::InitApply(seen)) => {
                self.listed = true;
                !holds(&seen, root_pem)
            }
            // Listed without it: deleted while the watch was down.
            Ok(watcher::Event::InitDone) => !self.listed,
            Ok(watcher::Event::Apply(seen)) => !holds(&seen, root_pem),
            Ok(watcher::Event::Delete(_)) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configmap_holds_the_root_and_nothing_else() {
        let cm = configmap("mesh-system", "-----BEGIN CERTIFICATE-----\n");
        assert_eq!(cm.metadata.name.as_deref(), Some(CONFIGMAP_NAME));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("mesh-system"));
        assert_eq!(cm.metadata.owner_references, None);
        let data = cm.data.as_ref().unwrap();
        assert_eq!(data.len(), 1);
        assert!(holds(&cm, "-----BEGIN CERTIFICATE-----\n"));
        assert!(!holds(&cm, "another root"));
        assert_eq!(cm.binary_data, None);
    }
}
