//! The plugin's commands. ADD runs after the pod network's plugin, before the pod's containers
//! start: a meshed pod is handed to ztunnel, which installs its redirect rules and listeners in
//! the pod's namespace before ADD returns, so not even the pod's first packet leaves
//! unencrypted. A pod that is not meshed, or is not a Kubernetes pod at all, is never handed over
//! and never fails here for ztunnel's sake. The previous plugin's result is passed on unchanged.

use std::time::Duration;

use ambit_proto::node_agent::{self, Command as AgentCommand, Reply};
use serde_json::Value;

use crate::decide;
use crate::spec::{CniError, Code, Command, Env, NetConf, version_result};

/// How long ztunnel may take to capture a pod (rules and listeners) before ADD gives up.
const ZTUNNEL_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs one command; `Ok(Some(result))` is printed, `Ok(None)` prints nothing.
pub fn run(env: &Env, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    if env.command == Command::Version {
        return Ok(Some(version_result()));
    }
    let conf = NetConf::parse(stdin)?;
    match env.command {
        Command::Add => add(env, &conf).map(Some),
        Command::Del => {
            del(env, &conf);
            Ok(None)
        }
        Command::Check => check(env, &conf).map(|()| None),
        Command::Version => unreachable!("answered above"),
    }
}

/// The pod's namespace and name when it is a Kubernetes pod the plugin may look at.
fn kubernetes_pod<'e>(env: &'e Env, conf: &NetConf) -> Option<(&'e str, &'e str)> {
    let namespace = env.pod.namespace.as_deref()?;
    let name = env.pod.name.as_deref()?;
    (!conf.exclude_namespaces.iter().any(|n| n == namespace)).then_some((namespace, name))
}

/// The uid ztunnel knows the pod by, as the controller names workloads.
fn workload_uid(conf: &NetConf, namespace: &str, name: &str) -> String {
    format!("{}//Pod/{namespace}/{name}", conf.cluster_id)
}

fn add(env: &Env, conf: &NetConf) -> Result<Value, CniError> {
    let mut result = conf.prev_result()?.clone();
    if let Some((namespace, name)) = kubernetes_pod(env, conf)
        && decide::meshed(&conf.kubeconfig, namespace, name)?
    {
        let netns = env.netns.as_ref().ok_or_else(|| {
            CniError::new(
                Code::InvalidEnvironment,
                "CNI_NETNS is not set",
                format!("pod {namespace}/{name} is meshed and ztunnel needs its network namespace"),
            )
        })?;
        let command = AgentCommand::Add {
            uid: workload_uid(conf, namespace, name),
            netns: netns.clone(),
            exclude_ports: Vec::new(),
            pod_uid: env.pod.uid.clone(),
        };
        let captured = ask_ztunnel(conf, &command).and_then(|ok| {
            ok.then_some(())
                .ok_or_else(|| "ztunnel answered the add with ok: false".to_string())
        });
        captured.map_err(|reason| {
            CniError::new(
                Code::TryAgainLater,
                format!("ztunnel could not capture meshed pod {namespace}/{name}"),
                format!("{reason}; the pod does not start uncaptured, the runtime retries it"),
            )
        })?;
    }
    // The result is the previous plugin's, in the version this config speaks.
    if let Some(object) = result.as_object_mut() {
        object.insert("cniVersion".into(), Value::String(conf.cni_version.clone()));
    }
    Ok(result)
}

/// Releases the pod if ztunnel holds it for this pod object. DEL must succeed when there is
/// nothing to undo: a pod ztunnel never held, a second DEL, a ztunnel that is not running (its
/// rules die with the namespace), or a late DEL of a pod that one of the same name replaced
/// (ztunnel keeps the new one: the pod uid differs).
fn del(env: &Env, conf: &NetConf) {
    let (Some(namespace), Some(name)) = (env.pod.namespace.as_deref(), env.pod.name.as_deref())
    else {
        return;
    };
    let command = AgentCommand::Remove {
        uid: workload_uid(conf, namespace, name),
        pod_uid: env.pod.uid.clone(),
    };
    if let Err(reason) = ask_ztunnel(conf, &command) {
        // stderr reaches the runtime's log; stdout must stay empty on success.
        eprintln!("ambit-cni: DEL {namespace}/{name}: nothing released ({reason})");
    }
}

/// A meshed pod must be held by ztunnel; any other pod passes.
fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    conf.prev_result()?;
    let Some((namespace, name)) = kubernetes_pod(env, conf) else {
        return Ok(());
    };
    if !decide::meshed(&conf.kubeconfig, namespace, name)? {
        return Ok(());
    }
    let command = AgentCommand::Check {
        uid: workload_uid(conf, namespace, name),
    };
    let not_captured = |reason: String| {
        CniError::new(
            Code::NotCaptured,
            format!("meshed pod {namespace}/{name} is not captured by ztunnel"),
            reason,
        )
    };
    match ask_ztunnel(conf, &command) {
        Ok(true) => Ok(()),
        Ok(false) => Err(not_captured(
            "ztunnel does not hold it (restarted without it, or released it); deleting the pod recreates it captured".into(),
        )),
        Err(reason) => Err(not_captured(reason)),
    }
}

/// ztunnel's answer: `ok` (for CHECK: whether it holds the pod), or why it could not be asked
/// or refused.
fn ask_ztunnel(conf: &NetConf, command: &AgentCommand) -> Result<bool, String> {
    let socket = &conf.ztunnel_socket;
    match node_agent::send_blocking(socket, command, ZTUNNEL_TIMEOUT) {
        Ok(Reply::Ok { ok }) => Ok(ok),
        Ok(Reply::Error { error }) => Err(format!("ztunnel answered: {error}")),
        Err(e) => Err(format!(
            "ztunnel's node agent socket {}: {e} (is ztunnel running on this node?)",
            socket.display()
        )),
    }
}
