//! Putting the plugin on the node at start and taking it off at exit: the binary into the CNI
//! bin directory, a kubeconfig beside the network configuration, and the plugin into its
//! chain (`crate::install`). The agent sees the host's directories where the DaemonSet mounts
//! them; the plugin's configuration names host paths, since the runtime runs it on the host.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::install::{self, InstallError, KUBECONFIG_FILE, PLUGIN_TYPE};

#[derive(Debug, Clone)]
pub struct Setup {
    /// The plugin binary to install (in the agent's image).
    pub plugin_binary: PathBuf,
    /// The host's CNI bin directory, as the agent sees it.
    pub bin_dir: PathBuf,
    /// The host's CNI config directory, as the agent sees it.
    pub conf_dir: PathBuf,
    /// The same directory as the host (and so the plugin) sees it.
    pub host_conf_dir: PathBuf,
    /// ztunnel's node agent socket as the host sees it.
    pub host_ztunnel_socket: PathBuf,
    pub cluster_id: String,
    pub excluded_namespaces: Vec<String>,
}

impl Setup {
    /// The plugin's entry in the chain.
    pub fn plugin_config(&self) -> Value {
        json!({
            "type": PLUGIN_TYPE,
            "kubeconfig": self.host_conf_dir.join(KUBECONFIG_FILE),
            "ztunnelSocket": self.host_ztunnel_socket,
            "clusterId": self.cluster_id,
            "excludeNamespaces": self.excluded_namespaces,
        })
    }

    /// Installs the binary and the kubeconfig, then chains the plugin: in that order, so the
    /// runtime never runs a plugin that is not there or cannot read the API. Returns the
    /// configuration file chained into.
    pub fn install(&self, kubeconfig: &[u8]) -> Result<PathBuf, InstallError> {
        let binary = std::fs::read(&self.plugin_binary).map_err(|source| InstallError::Io {
            path: self.plugin_binary.clone(),
            source,
        })?;
        install::write_whole(&self.bin_dir.join(PLUGIN_TYPE), &binary, 0o755)?;
        self.write_kubeconfig(kubeconfig)?;
        install::install(&self.conf_dir, &self.plugin_config())
    }

    /// Writes the plugin's kubeconfig when it differs from what is there (the token in it is
    /// rotated by the kubelet). Returns whether it wrote.
    pub fn write_kubeconfig(&self, kubeconfig: &[u8]) -> Result<bool, InstallError> {
        let path = self.conf_dir.join(KUBECONFIG_FILE);
        if std::fs::read(&path).is_ok_and(|current| current == kubeconfig) {
            return Ok(false);
        }
        // It holds a token that reads every pod: root only.
        install::write_whole(&path, kubeconfig, 0o600)?;
        Ok(true)
    }

    /// Takes the plugin out of the chain and removes its kubeconfig; the binary stays (a
    /// runtime may be running it right now, and without the chain nothing calls it).
    pub fn uninstall(&self) -> Result<(), InstallError> {
        install::uninstall(&self.conf_dir)
    }
}

/// Where a pod finds its service account's credentials, and the API server's address.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error(
        "not running in a pod (KUBERNETES_SERVICE_HOST is not set): give --plugin-kubeconfig for the plugin's API access"
    )]
    NotInCluster,
    #[error("{path}: {source} (is the service account token mounted?)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The plugin's kubeconfig: the file given, or else one made from this pod's service account
/// (the plugin then reads pods with the agent's RBAC), read again each time so that the
/// kubelet's token rotation reaches the plugin.
pub fn plugin_kubeconfig(given: Option<&Path>) -> Result<Vec<u8>, KubeconfigError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| KubeconfigError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    if let Some(path) = given {
        return read(path);
    }
    let host =
        std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| KubeconfigError::NotInCluster)?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    let dir = Path::new(SERVICE_ACCOUNT_DIR);
    let token = String::from_utf8_lossy(&read(&dir.join("token"))?)
        .trim()
        .to_string();
    let ca = read(&dir.join("ca.crt"))?;
    Ok(in_cluster_kubeconfig(&host, &port, &token, &ca))
}

fn in_cluster_kubeconfig(host: &str, port: &str, token: &str, ca: &[u8]) -> Vec<u8> {
    use base64::Engine;
    // An IPv6 service host needs brackets in a URL.
    let server = if host.contains(':') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    };
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {
            "server": server,
            "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(ca),
        }}],
        "users": [{"name": "ambit-cni", "user": {"token": token}}],
        "contexts": [{"name": "ambit-cni", "context": {"cluster": "local", "user": "ambit-cni"}}],
        "current-context": "ambit-cni",
    });
    // JSON is YAML: kube reads it as a kubeconfig.
    serde_json::to_vec_pretty(&config).expect("JSON values serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(root: &Path) -> Setup {
        for dir in ["bin", "net.d"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::write(root.join("ambit-cni-in-image"), b"\x7fELF plugin").unwrap();
        Setup {
            plugin_binary: root.join("ambit-cni-in-image"),
            bin_dir: root.join("bin"),
            conf_dir: root.join("net.d"),
            host_conf_dir: "/etc/cni/net.d".into(),
            host_ztunnel_socket: "/var/run/ambit/node-agent.sock".into(),
            cluster_id: "Kubernetes".into(),
            excluded_namespaces: vec!["kube-system".into()],
        }
    }

    #[test]
    fn install_puts_binary_kubeconfig_and_chain_in_place_and_uninstall_takes_the_chain_out() {
        use std::os::unix::fs::PermissionsExt;
        let root = std::env::temp_dir().join(format!("ambit-agent-setup-{}", std::process::id()));
        let setup = setup(&root);
        let network =
            json!({"cniVersion": "1.0.0", "name": "kindnet", "plugins": [{"type": "ptp"}]});
        let conflist = root.join("net.d/10-kindnet.conflist");
        std::fs::write(&conflist, network.to_string()).unwrap();

        assert_eq!(setup.install(b"kubeconfig v1").unwrap(), conflist);
        let binary = root.join("bin/ambit-cni");
        assert_eq!(std::fs::read(&binary).unwrap(), b"\x7fELF plugin");
        assert_eq!(
            std::fs::metadata(&binary).unwrap().permissions().mode() & 0o777,
            0o755
        );
        let kubeconfig = root.join("net.d").join(KUBECONFIG_FILE);
        assert_eq!(
            std::fs::metadata(&kubeconfig).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let chained: Value = serde_json::from_slice(&std::fs::read(&conflist).unwrap()).unwrap();
        let ours = &chained["plugins"][1];
        assert_eq!(ours["type"], PLUGIN_TYPE);
        // Host paths, for the plugin the runtime runs on the host.
        assert_eq!(ours["kubeconfig"], "/etc/cni/net.d/ambit-cni.kubeconfig");
        assert_eq!(ours["ztunnelSocket"], "/var/run/ambit/node-agent.sock");
        // The plugin accepts the entry it is given.
        let mut conf = ours.clone();
        conf["cniVersion"] = json!("1.0.0");
        conf["name"] = json!("kindnet");
        crate::spec::NetConf::parse(conf.to_string().as_bytes()).unwrap();

        assert!(
            !setup.write_kubeconfig(b"kubeconfig v1").unwrap(),
            "unchanged"
        );
        assert!(
            setup.write_kubeconfig(b"kubeconfig v2").unwrap(),
            "rotated token"
        );
        assert_eq!(std::fs::read(&kubeconfig).unwrap(), b"kubeconfig v2");

        setup.uninstall().unwrap();
        let restored: Value = serde_json::from_slice(&std::fs::read(&conflist).unwrap()).unwrap();
        assert_eq!(restored, network);
        assert!(!kubeconfig.exists());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_in_cluster_kubeconfig_is_one_kube_reads() {
        let text = in_cluster_kubeconfig(
            "fd00:10:96::1",
            "443",
            "tok",
            b"-----BEGIN CERTIFICATE-----",
        );
        let config =
            kube::config::Kubeconfig::from_yaml(std::str::from_utf8(&text).unwrap()).unwrap();
        let cluster = config.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(
            cluster.server.as_deref(),
            Some("https://[fd00:10:96::1]:443")
        );
        assert!(cluster.certificate_authority_data.is_some());
        let user = config.auth_infos[0].auth_info.as_ref().unwrap();
        assert!(user.token.is_some());
        assert_eq!(config.current_context.as_deref(), Some("ambit-cni"));
    }
}
