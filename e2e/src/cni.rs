//! Playing the container runtime's side of CNI for a pod: an empty network namespace for the
//! plugins to fill, and the chain run in order (ADD, each plugin given the previous result) or
//! in reverse (DEL), each plugin executed from the node's namespace with the spec's
//! environment and its configuration on stdin, as containerd and CRI-O run it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

/// Where Debian's containernetworking-plugins are.
pub const DEBIAN_CNI_DIR: &str = "/usr/lib/cni";

/// A pod's network namespace as the runtime makes it: empty, for the plugins to fill.
pub struct PodNetns(String);

impl PodNetns {
    pub fn add(name: String) -> PodNetns {
        run("ip", &["netns", "add", &name]);
        // Loopback up, as containerd and CRI-O do (the loopback plugin) before the pod's
        // network: ztunnel's redirected connections travel over it.
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        PodNetns(name)
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.0)
    }

    pub fn nat_rules(&self) -> String {
        let v4 = run(
            "ip",
            &["netns", "exec", &self.0, "iptables-save", "-t", "nat"],
        );
        let v6 = run(
            "ip",
            &["netns", "exec", &self.0, "ip6tables-save", "-t", "nat"],
        );
        v4 + &v6
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The runtime's side of CNI for one pod: the chain in order for ADD (each plugin given the
/// previous result), in reverse for DEL.
pub struct Runtime {
    pub node_netns: String,
    pub cni_path: String,
    pub conflist: Value,
}

impl Runtime {
    fn invoke(
        &self,
        command: &str,
        plugin: &Value,
        pod: &PodNetns,
        ns: &str,
        name: &str,
        prev: Option<&Value>,
    ) -> Result<Value, Value> {
        let mut conf = plugin.clone();
        conf["cniVersion"] = self.conflist["cniVersion"].clone();
        conf["name"] = self.conflist["name"].clone();
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        let binary = self
            .cni_path
            .split(':')
            .map(|dir| Path::new(dir).join(plugin["type"].as_str().unwrap()))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("no {} in {}", plugin["type"], self.cni_path));
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.node_netns])
            .arg(&binary)
            .env("CNI_COMMAND", command)
            // One sandbox per namespace, and one pod object: a pod made again under its name
            // has a new uid, as in Kubernetes.
            .env("CNI_CONTAINERID", pod.name())
            .env("CNI_NETNS", pod.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.cni_path)
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_UID=uid-{};K8S_POD_INFRA_CONTAINER_ID={}", pod.name(), pod.name()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let printed: Value = if out.stdout.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                panic!(
                    "{binary:?} printed no JSON ({e}): {}",
                    String::from_utf8_lossy(&out.stdout)
                )
            })
        };
        if out.status.success() {
            Ok(printed)
        } else {
            Err(printed)
        }
    }

    pub fn add(&self, pod: &PodNetns, ns: &str, name: &str) -> Result<Value, Value> {
        let mut result: Option<Value> = None;
        for plugin in self.conflist["plugins"].as_array().unwrap() {
            result = Some(self.invoke("ADD", plugin, pod, ns, name, result.as_ref())?);
        }
        Ok(result.unwrap())
    }

    pub fn del(&self, pod: &PodNetns, ns: &str, name: &str) {
        for plugin in self.conflist["plugins"].as_array().unwrap().iter().rev() {
            self.invoke("DEL", plugin, pod, ns, name, None)
                .unwrap_or_else(|e| panic!("DEL {}: {e}", plugin["type"]));
        }
    }
}

/// A kubeconfig for an API server on plain HTTP with no credentials (the fake one).
pub fn fake_kubeconfig(server: &str) -> String {
    json!({"apiVersion": "v1", "kind": "Config",
           "clusters": [{"name": "fake", "cluster": {"server": server}}],
           "users": [{"name": "anonymous", "user": {}}],
           "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "anonymous"}}],
           "current-context": "fake"})
    .to_string()
}
