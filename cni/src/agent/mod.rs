//! The node agent (binary `ambit-node-agent`), one per node beside ztunnel, as Istio's CNI
//! agent: at start it installs the plugin ([`setup`]), then it keeps ztunnel's captured pods in
//! line with the labels ([`reconcile`] decides, [`run`] watches and acts): labelling a
//! namespace `ambit.io/dataplane-mode=ambient` enrols its running pods, removing the label (or
//! `=none` on a pod) releases them, without restarting any. At exit it takes the plugin out of
//! the chain again.

pub mod reconcile;
pub mod run;
pub mod setup;

use std::path::PathBuf;
use std::time::Duration;

use crate::spec::{DEFAULT_CLUSTER_ID, DEFAULT_ZTUNNEL_SOCKET};

/// The agent's flags (each also an environment variable, for the DaemonSet).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "ambit-node-agent",
    version,
    about = "Ambit's node agent: installs ambit-cni and enrols the node's running pods in ztunnel by label"
)]
pub struct Config {
    /// This node's name (the DaemonSet passes spec.nodeName).
    #[arg(long, env = "AMBIT_NODE")]
    pub node: String,
    /// The agent's own API access; in a pod, its service account when not given.
    #[arg(long, env = "AMBIT_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// ztunnel's node agent socket as the agent sees it.
    #[arg(long, env = "AMBIT_ZTUNNEL_SOCKET", default_value = DEFAULT_ZTUNNEL_SOCKET)]
    pub ztunnel_socket: PathBuf,
    /// The same socket as the host sees it (written into the plugin's configuration).
    #[arg(long, env = "AMBIT_HOST_ZTUNNEL_SOCKET", default_value = DEFAULT_ZTUNNEL_SOCKET)]
    pub host_ztunnel_socket: PathBuf,
    /// The cluster name workload uids start with (the controller's --cluster-id).
    #[arg(long, env = "AMBIT_CLUSTER_ID", default_value = DEFAULT_CLUSTER_ID)]
    pub cluster_id: String,
    /// Namespaces never enrolled, by the agent or the plugin (comma-separated).
    #[arg(
        long,
        env = "AMBIT_EXCLUDE_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system"
    )]
    pub exclude_namespaces: Vec<String>,
    /// Where the runtime pins pod network namespaces, as the agent sees it.
    #[arg(long, env = "AMBIT_NETNS_DIR", default_value = crate::netns::PINNED_DIR)]
    pub netns_dir: PathBuf,
    /// How often ztunnel is asked whether it still holds its pods, and the plugin's
    /// kubeconfig refreshed (e.g. "10s").
    #[arg(long, env = "AMBIT_RESYNC", default_value = "10s", value_parser = positive_duration)]
    pub resync: Duration,
    /// Install the plugin at start and take it out at exit. Without it the agent only enrols
    /// and releases running pods (the flags below are then unused).
    #[arg(long, env = "AMBIT_INSTALL_CNI")]
    pub install_cni: bool,
    /// The plugin binary to install.
    #[arg(
        long,
        env = "AMBIT_CNI_PLUGIN",
        default_value = "/usr/local/bin/ambit-cni"
    )]
    pub cni_plugin: PathBuf,
    /// The host's CNI bin directory, as the agent sees it.
    #[arg(long, env = "AMBIT_CNI_BIN_DIR", default_value = "/host/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// The host's CNI config directory, as the agent sees it.
    #[arg(
        long,
        env = "AMBIT_CNI_CONF_DIR",
        default_value = "/host/etc/cni/net.d"
    )]
    pub cni_conf_dir: PathBuf,
    /// The same directory as the host sees it (written into the plugin's configuration).
    #[arg(
        long,
        env = "AMBIT_HOST_CNI_CONF_DIR",
        default_value = "/etc/cni/net.d"
    )]
    pub host_cni_conf_dir: PathBuf,
    /// The plugin's API access; in a pod, made from the agent's service account when not
    /// given.
    #[arg(long, env = "AMBIT_PLUGIN_KUBECONFIG")]
    pub plugin_kubeconfig: Option<PathBuf>,
}

impl Config {
    pub fn setup(&self) -> Option<setup::Setup> {
        self.install_cni.then(|| setup::Setup {
            plugin_binary: self.cni_plugin.clone(),
            bin_dir: self.cni_bin_dir.clone(),
            conf_dir: self.cni_conf_dir.clone(),
            host_conf_dir: self.host_cni_conf_dir.clone(),
            host_ztunnel_socket: self.host_ztunnel_socket.clone(),
            cluster_id: self.cluster_id.clone(),
            excluded_namespaces: self.exclude_namespaces.clone(),
        })
    }

    pub fn settings(&self) -> run::Settings {
        run::Settings {
            node: self.node.clone(),
            rules: reconcile::Rules {
                cluster_id: self.cluster_id.clone(),
                excluded_namespaces: self.exclude_namespaces.clone(),
            },
            ztunnel_socket: self.ztunnel_socket.clone(),
            pinned_netns_dir: self.netns_dir.clone(),
            resync: self.resync,
        }
    }
}

/// A humantime duration ("10s", "500ms"), more than zero.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("the resync period must be more than zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{e}: write e.g. 10s or 500ms")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resync_period_of_zero_or_nonsense_is_refused() {
        assert_eq!(positive_duration("10s"), Ok(Duration::from_secs(10)));
        for bad in ["0s", "10", "soon"] {
            assert!(positive_duration(bad).is_err(), "{bad}");
        }
    }
}
