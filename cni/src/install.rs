//! Putting the plugin into a node's CNI configuration and taking it out again, as the node agent
//! does at start and at uninstall. The container runtime reads the first configuration file of
//! its config directory (by name); the plugin is appended to that file's plugin chain, after the
//! pod network's plugin, and the kubeconfig it reads pods with is written beside it. Every write
//! replaces its file whole (a temporary file renamed over it), so a runtime reading the
//! directory meanwhile sees the old chain or the new one, never half of either.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The plugin's `type`, and the name of its binary in the CNI bin directory.
pub const PLUGIN_TYPE: &str = "ambit-cni";
/// The kubeconfig the plugin reads pods with, in the CNI config directory (an extension the
/// runtime does not read as network configuration).
pub const KUBECONFIG_FILE: &str = "ambit-cni.kubeconfig";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "no CNI network configuration in {dir} (*.conflist, *.conf, *.json): the pod network's plugin writes one; is it installed on this node?"
    )]
    NoNetwork { dir: PathBuf },
    #[error("{path}: {reason}")]
    BadConfig { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The file the runtime takes its network from: the first, by name, with a CNI extension.
pub fn primary_config(dir: &Path) -> Result<PathBuf, InstallError> {
    let mut configs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                )
        })
        .collect();
    configs.sort();
    configs
        .into_iter()
        .next()
        .ok_or_else(|| InstallError::NoNetwork {
            dir: dir.to_path_buf(),
        })
}

/// The configuration with the plugin at the end of its chain (an earlier entry of ours is
/// replaced). A single-plugin configuration (`.conf`) becomes a list of it and ours.
pub fn chain(config: &Value, plugin: &Value) -> Result<Value, String> {
    let mut list = as_list(config)?;
    // Every ADD and DEL of the node would fail with "incompatible CNI version", pods outside
    // the mesh included: refuse to install instead.
    let version = list["cniVersion"].as_str().unwrap_or_default();
    if !crate::spec::SUPPORTED_VERSIONS.contains(&version) {
        return Err(format!(
            "its cniVersion {version:?} is not one ambit-cni supports ({})",
            crate::spec::SUPPORTED_VERSIONS.join(", ")
        ));
    }
    let plugins = list["plugins"]
        .as_array_mut()
        .expect("as_list makes plugins");
    plugins.retain(|p| p["type"] != PLUGIN_TYPE);
    if plugins.is_empty() {
        return Err("it names no network plugin to chain after".into());
    }
    plugins.push(plugin.clone());
    Ok(list)
}

/// The configuration without the plugin.
pub fn unchain(config: &Value) -> Result<Value, String> {
    let mut list = as_list(config)?;
    list["plugins"]
        .as_array_mut()
        .expect("as_list makes plugins")
        .retain(|p| p["type"] != PLUGIN_TYPE);
    Ok(list)
}

fn as_list(config: &Value) -> Result<Value, String> {
    let object = config
        .as_object()
        .ok_or("not a JSON object (a CNI network configuration)")?;
    if let Some(plugins) = object.get("plugins") {
        if !plugins.is_array() {
            return Err("its \"plugins\" is not a list".into());
        }
        return Ok(config.clone());
    }
    if object.get("type").is_none() {
        return Err("it has neither \"plugins\" nor a plugin \"type\"".into());
    }
    Ok(json!({
        "cniVersion": object.get("cniVersion").cloned().unwrap_or(json!("1.0.0")),
        "name": object.get("name").cloned().unwrap_or(json!("k8s-pod-network")),
        "plugins": [config],
    }))
}

/// Chains the plugin into the directory's primary configuration; returns the file written (a
/// `.conf` is rewritten as `.conflist`, as runtimes read chains only from those).
pub fn install(dir: &Path, plugin: &Value) -> Result<PathBuf, InstallError> {
    let path = primary_config(dir)?;
    let config = read_json(&path)?;
    let chained = chain(&config, plugin).map_err(|reason| InstallError::BadConfig {
        path: path.clone(),
        reason,
    })?;
    // Runtimes read a chain only from a .conflist; a .conf or .json holds one plugin.
    let target = if path.extension().and_then(|e| e.to_str()) == Some("conflist") {
        path.clone()
    } else {
        path.with_extension("conflist")
    };
    write_json(&target, &chained)?;
    if target != path {
        std::fs::remove_file(&path).map_err(io(&path))?;
    }
    Ok(target)
}

/// Takes the plugin out of every configuration in the directory that holds it, and removes its
/// kubeconfig. Nothing to undo is not an error.
pub fn uninstall(dir: &Path) -> Result<(), InstallError> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("conflist") {
            continue;
        }
        let config = read_json(&path)?;
        let holds_ours = config["plugins"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["type"] == PLUGIN_TYPE));
        if holds_ours {
            let without = unchain(&config).map_err(|reason| InstallError::BadConfig {
                path: path.clone(),
                reason,
            })?;
            write_json(&path, &without)?;
        }
    }
    let kubeconfig = dir.join(KUBECONFIG_FILE);
    match std::fs::remove_file(&kubeconfig) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&kubeconfig)(e)),
        _ => Ok(()),
    }
}

fn read_json(path: &Path) -> Result<Value, InstallError> {
    let text = std::fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&text).map_err(|e| InstallError::BadConfig {
        path: path.to_path_buf(),
        reason: format!("not JSON: {e}"),
    })
}

fn write_json(path: &Path, value: &Value) -> Result<(), InstallError> {
    let mut text = serde_json::to_vec_pretty(value).expect("JSON values serialize");
    text.push(b'\n');
    write_whole(path, &text, 0o644)
}

/// Writes `contents` to `path` through a temporary file renamed over it.
pub fn write_whole(path: &Path, contents: &[u8], mode: u32) -> Result<(), InstallError> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("ambit-tmp");
    std::fs::write(&tmp, contents).map_err(io(&tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours() -> Value {
        json!({"type": PLUGIN_TYPE, "kubeconfig": "/etc/cni/net.d/ambit-cni.kubeconfig"})
    }

    #[test]
    fn the_plugin_goes_last_in_the_chain_once() {
        let bridge = json!({"type": "bridge", "bridge": "cni0"});
        let portmap = json!({"type": "portmap", "capabilities": {"portMappings": true}});
        let list = json!({"cniVersion": "1.0.0", "name": "kindnet", "plugins": [bridge, portmap]});
        let chained = chain(&list, &ours()).unwrap();
        assert_eq!(chained["plugins"], json!([bridge, portmap, ours()]));
        assert_eq!(chained["name"], "kindnet");
        // Installing again changes nothing; removing gives the original back.
        assert_eq!(chain(&chained, &ours()).unwrap(), chained);
        assert_eq!(unchain(&chained).unwrap(), list);
        assert_eq!(unchain(&list).unwrap(), list);
    }

    #[test]
    fn a_single_plugin_config_becomes_a_list() {
        let conf = json!({"cniVersion": "0.4.0", "name": "net", "type": "bridge"});
        let chained = chain(&conf, &ours()).unwrap();
        assert_eq!(
            chained,
            json!({"cniVersion": "0.4.0", "name": "net", "plugins": [conf, ours()]})
        );
    }

    #[test]
    fn configs_that_cannot_be_chained_say_why() {
        for (config, why) in [
            (json!([]), "not a JSON object"),
            (json!({"name": "x"}), "neither"),
            (json!({"plugins": {}}), "not a list"),
            (
                json!({"cniVersion": "1.0.0", "plugins": [ours()]}),
                "no network plugin",
            ),
            (
                json!({"cniVersion": "1.1.0", "plugins": [{"type": "ptp"}]}),
                "not one ambit-cni supports",
            ),
        ] {
            let e = chain(&config, &ours()).unwrap_err();
            assert!(e.contains(why), "{config}: {e}");
        }
    }

    #[test]
    fn install_and_uninstall_rewrite_the_runtimes_first_config() {
        let dir = std::env::temp_dir().join(format!("ambit-cni-install-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kind = json!({"cniVersion": "1.0.0", "name": "kindnet", "plugins": [{"type": "ptp"}]});
        std::fs::write(dir.join("10-kindnet.conflist"), kind.to_string()).unwrap();
        std::fs::write(dir.join("99-other.conf"), r#"{"type":"bridge"}"#).unwrap();
        std::fs::write(dir.join(KUBECONFIG_FILE), "k").unwrap();

        let written = install(&dir, &ours()).unwrap();
        assert_eq!(written, dir.join("10-kindnet.conflist"));
        let chained = read_json(&written).unwrap();
        assert_eq!(chained["plugins"][1], ours());
        let other: Value = read_json(&dir.join("99-other.conf")).unwrap();
        assert_eq!(
            other,
            json!({"type": "bridge"}),
            "only the first config is chained"
        );

        uninstall(&dir).unwrap();
        assert_eq!(read_json(&written).unwrap(), kind);
        assert!(!dir.join(KUBECONFIG_FILE).exists());
        uninstall(&dir).unwrap();

        // A lone .conf is rewritten as a .conflist.
        std::fs::remove_file(&written).unwrap();
        let conflist = install(&dir, &ours()).unwrap();
        assert_eq!(conflist, dir.join("99-other.conflist"));
        assert!(!dir.join("99-other.conf").exists());

        std::fs::remove_dir_all(&dir).unwrap();
        let empty = dir.with_extension("empty");
        std::fs::create_dir_all(&empty).unwrap();
        assert!(matches!(
            install(&empty, &ours()),
            Err(InstallError::NoNetwork { .. })
        ));
        std::fs::remove_dir_all(&empty).unwrap();
    }
}
