//! Whether a pod is meshed, asked of the API server at ADD: its namespace's
//! `ambit.io/dataplane-mode` label and its own, judged by the rule the controller uses
//! (`ambit_proto::enrolment`). The plugin runs once per pod and exits, so it builds a client from
//! the kubeconfig the node agent wrote and makes two GETs on a small runtime of its own.

use std::path::Path;
use std::time::Duration;

use ambit_proto::enrolment::{DATAPLANE_MODE_LABEL, enrolled};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::spec::{CniError, Code};

/// How long the lookups may take together: the runtime waits on this plugin to start the pod.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Looks the pod and its namespace up and judges them.
pub fn meshed(kubeconfig: &Path, namespace: &str, pod: &str) -> Result<bool, CniError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            CniError::new(
                Code::Io,
                "could not start the plugin's runtime",
                e.to_string(),
            )
        })?;
    let lookup = async {
        let client = client(kubeconfig).await?;
        // Gone from the API (deleted while its sandbox was being made): nothing to mesh.
        let Some(ns) = Api::<Namespace>::all(client.clone())
            .get_opt(namespace)
            .await
            .map_err(|e| unreachable_api(&format!("namespace {namespace}"), &e))?
        else {
            return Ok(false);
        };
        let Some(pod_object) = Api::<Pod>::namespaced(client, namespace)
            .get_opt(pod)
            .await
            .map_err(|e| unreachable_api(&format!("pod {namespace}/{pod}"), &e))?
        else {
            return Ok(false);
        };
        let label = |labels: Option<&std::collections::BTreeMap<String, String>>| {
            labels.and_then(|l| l.get(DATAPLANE_MODE_LABEL)).cloned()
        };
        Ok(enrolled(
            label(ns.metadata.labels.as_ref()).as_deref(),
            label(pod_object.metadata.labels.as_ref()).as_deref(),
        ))
    };
    runtime.block_on(async {
        tokio::time::timeout(LOOKUP_TIMEOUT, lookup)
            .await
            .unwrap_or_else(|_| {
                Err(CniError::new(
                    Code::TryAgainLater,
                    "the API server did not answer in time",
                    format!(
                        "looking up pod {namespace}/{pod} took over {LOOKUP_TIMEOUT:?}; the runtime retries the pod"
                    ),
                ))
            })
    })
}

async fn client(kubeconfig: &Path) -> Result<Client, CniError> {
    let invalid = |e: &dyn std::fmt::Display| {
        CniError::new(
            Code::InvalidConfig,
            format!("could not use the kubeconfig {}", kubeconfig.display()),
            format!("{e}; the node agent writes it when it installs the plugin (is it running?)"),
        )
    };
    let file = Kubeconfig::read_from(kubeconfig).map_err(|e| invalid(&e))?;
    let config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .map_err(|e| invalid(&e))?;
    Client::try_from(config).map_err(|e| invalid(&e))
}

fn unreachable_api(what: &str, e: &kube::Error) -> CniError {
    CniError::new(
        Code::TryAgainLater,
        format!("could not look up {what} to tell whether it is meshed"),
        format!("{e}; the runtime retries the pod"),
    )
}
