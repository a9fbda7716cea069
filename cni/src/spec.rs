//! The CNI protocol (spec 1.0) as a plugin sees it: the command and the pod in environment
//! variables, the network configuration on stdin, a result or an error as JSON on stdout. The
//! spec's layer is small and a plugin must get every detail right (error codes, prevResult
//! passed through, DEL idempotent); the Rust crates for it were last released for spec 0.4,
//! so it is written out here.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Value, json};

/// The CNI versions whose configuration and results this plugin reads and writes: a chained
/// plugin that passes `prevResult` through unchanged serves every version with that field.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// The version answered to VERSION and written in errors when the config names none.
pub const VERSION: &str = "1.0.0";

/// The spec's well-known error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    InvalidEnvironment = 4,
    Io = 5,
    Decode = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    /// Plugin-specific codes start at 100: a meshed pod that ztunnel does not hold (CHECK).
    NotCaptured = 100,
}

/// An error as the spec wants it on stdout: code, message, details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}: {details}")]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    pub fn to_json(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "code": self.code as u32,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
}

/// The pod, from `CNI_ARGS` (`K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;K8S_POD_UID=..`, as the
/// kubelet's runtimes set them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodArgs {
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// The pod object's uid: tells a pod from the one of the same name that replaces it.
    pub uid: Option<String>,
}

/// What the runtime put in the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub pod: PodArgs,
}

impl Env {
    /// Reads the CNI variables through `var` (the process environment, or a test's map).
    pub fn read(var: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let command = match var("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some(other) => {
                return Err(CniError::new(
                    Code::InvalidEnvironment,
                    "unknown CNI_COMMAND",
                    format!(
                        "{other:?}: this plugin implements ADD, DEL, CHECK and VERSION (CNI spec 1.0)"
                    ),
                ));
            }
            None => {
                return Err(CniError::new(
                    Code::InvalidEnvironment,
                    "CNI_COMMAND is not set",
                    "ambit-cni is run by a container runtime with CNI_COMMAND, CNI_NETNS and CNI_ARGS set, the network configuration on stdin",
                ));
            }
        };
        let netns = var("CNI_NETNS")
            .filter(|n| !n.is_empty())
            .map(PathBuf::from);
        Ok(Env {
            command,
            container_id: var("CNI_CONTAINERID"),
            netns,
            pod: parse_args(var("CNI_ARGS").as_deref().unwrap_or("")),
        })
    }
}

/// `K=V;K=V`; keys other than the pod's are the runtime's business.
fn parse_args(args: &str) -> PodArgs {
    let mut pod = PodArgs::default();
    for pair in args.split(';') {
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        let value = Some(value.to_string()).filter(|v| !v.is_empty());
        match key {
            "K8S_POD_NAMESPACE" => pod.namespace = value,
            "K8S_POD_NAME" => pod.name = value,
            "K8S_POD_UID" => pod.uid = value,
            _ => {}
        }
    }
    pod
}

/// Where ztunnel's node agent socket is on a node by default (the DaemonSet's host path).
pub const DEFAULT_ZTUNNEL_SOCKET: &str = "/var/run/ambit/node-agent.sock";
/// The cluster name workload uids start with, as the controller's default.
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// The network configuration on stdin: the spec's fields and this plugin's own.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// The kubeconfig the plugin reads pods and namespaces with (the node agent writes it).
    pub kubeconfig: PathBuf,
    #[serde(default = "default_socket")]
    pub ztunnel_socket: PathBuf,
    #[serde(default = "default_cluster_id")]
    pub cluster_id: String,
    /// Namespaces never looked up: kube-system by default (the cluster's own pods must start
    /// when the API server or ztunnel cannot be reached).
    #[serde(default = "default_excluded")]
    pub exclude_namespaces: Vec<String>,
    /// Fields of the spec this plugin has no use for, and anything else (refused below).
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// Spec fields a runtime or another plugin may put in any plugin's configuration.
const SPEC_FIELDS: &[&str] = &["runtimeConfig", "capabilities", "args", "dns", "ipam"];

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_ZTUNNEL_SOCKET)
}

fn default_excluded() -> Vec<String> {
    vec!["kube-system".into()]
}

fn default_cluster_id() -> String {
    DEFAULT_CLUSTER_ID.into()
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                Code::Decode,
                "the network configuration on stdin is not JSON",
                e.to_string(),
            )
        })?;
        let conf: NetConf = serde_json::from_value(value).map_err(|e| {
            CniError::new(
                Code::InvalidConfig,
                "the network configuration is not ambit-cni's",
                format!("{e}; it needs cniVersion, name, type and kubeconfig (ztunnelSocket, clusterId and excludeNamespaces are optional)"),
            )
        })?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                "incompatible CNI version",
                format!(
                    "cniVersion {:?}; ambit-cni supports {}",
                    conf.cni_version,
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        if let Some(field) = conf
            .other
            .keys()
            .find(|k| !SPEC_FIELDS.contains(&k.as_str()))
        {
            return Err(CniError::new(
                Code::UnsupportedField,
                "unsupported field in the network configuration",
                format!(
                    "{field:?}: ambit-cni reads kubeconfig, ztunnelSocket, clusterId and excludeNamespaces"
                ),
            ));
        }
        Ok(conf)
    }

    /// The previous plugin's result, required of a chained plugin on ADD and CHECK.
    pub fn prev_result(&self) -> Result<&Value, CniError> {
        self.prev_result.as_ref().ok_or_else(|| {
            CniError::new(
                Code::InvalidConfig,
                "no prevResult",
                "ambit-cni is a chained plugin: list it after the pod network's plugin in the conflist's plugins",
            )
        })
    }
}

/// The version of the config on stdin, for errors written before (or without) parsing it
/// whole; the plugin's own when there is none.
pub fn version_of(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| VERSION.to_string())
}

/// The answer to VERSION.
pub fn version_result() -> Value {
    json!({ "cniVersion": VERSION, "supportedVersions": SUPPORTED_VERSIONS })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::read(|k| map.get(k).cloned())
    }

    #[test]
    fn the_pod_is_read_from_cni_args() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_NETNS", "/var/run/netns/cni-1"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=client-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1",
            ),
        ])
        .unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.netns, Some(PathBuf::from("/var/run/netns/cni-1")));
        assert_eq!(
            e.pod,
            PodArgs {
                namespace: Some("demo".into()),
                name: Some("client-0".into()),
                uid: Some("u-1".into()),
            }
        );
        let bare = env(&[("CNI_COMMAND", "DEL"), ("CNI_NETNS", "")]).unwrap();
        assert_eq!((bare.netns, bare.pod), (None, PodArgs::default()));
    }

    #[test]
    fn a_missing_or_unknown_command_is_code_4() {
        for pairs in [&[][..], &[("CNI_COMMAND", "GC")][..]] {
            let e = env(pairs).unwrap_err();
            assert_eq!(e.code, Code::InvalidEnvironment, "{e}");
        }
    }

    #[test]
    fn configs_are_refused_with_the_specs_codes() {
        let good = r#"{"cniVersion":"1.0.0","name":"k8s","type":"ambit-cni","kubeconfig":"/k","prevResult":{"cniVersion":"1.0.0"},"runtimeConfig":{}}"#;
        let conf = NetConf::parse(good.as_bytes()).unwrap();
        assert_eq!(conf.ztunnel_socket, PathBuf::from(DEFAULT_ZTUNNEL_SOCKET));
        assert_eq!(conf.cluster_id, DEFAULT_CLUSTER_ID);
        assert_eq!(conf.exclude_namespaces, ["kube-system"]);
        let cases = [
            ("{not json", Code::Decode),
            (
                r#"{"cniVersion":"1.0.0","name":"k8s","type":"ambit-cni"}"#,
                Code::InvalidConfig,
            ),
            (
                r#"{"cniVersion":"2.0.0","name":"k8s","type":"ambit-cni","kubeconfig":"/k"}"#,
                Code::IncompatibleVersion,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"k8s","type":"ambit-cni","kubeconfig":"/k","ztunnelSocekt":"/s"}"#,
                Code::UnsupportedField,
            ),
        ];
        for (text, code) in cases {
            assert_eq!(
                NetConf::parse(text.as_bytes()).unwrap_err().code,
                code,
                "{text}"
            );
        }
    }

    #[test]
    fn errors_carry_the_configs_version_when_it_has_a_supported_one() {
        assert_eq!(version_of(br#"{"cniVersion":"0.4.0"}"#), "0.4.0");
        assert_eq!(version_of(br#"{"cniVersion":"9"}"#), VERSION);
        assert_eq!(version_of(b"garbage"), VERSION);
        let e = CniError::new(Code::TryAgainLater, "m", "d").to_json("0.4.0");
        assert_eq!(
            e,
            json!({"cniVersion":"0.4.0","code":11,"msg":"m","details":"d"})
        );
    }
}
