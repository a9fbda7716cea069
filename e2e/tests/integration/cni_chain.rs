//! ambit-cni chained after Debian's real CNI plugins (bridge + host-local), run as a container
//! runtime runs a chain: each plugin in turn with CNI_COMMAND, CNI_NETNS and CNI_ARGS set and
//! the network configuration (with the previous result) on stdin, from the node's network
//! namespace. A meshed pod's redirect rules are in place when ADD returns, before any of its
//! containers could run; a pod outside the mesh is left alone; DEL takes the rules out.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ambit_controller::local::Binaries;
use ambit_e2e::can_run;
use ambit_fake_kube_api::FakeApi;
use ambit_proto::identity::CertificateAuthority;
use ambit_proto::node_agent::{self, Reply};
use ambit_testbed::Testbed;
use serde_json::{Value, json};

/// Where Debian's containernetworking-plugins are.
const DEBIAN_CNI_DIR: &str = "/usr/lib/cni";

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A pod's network namespace as the runtime makes it: empty, for the plugins to fill.
struct PodNetns(String);

impl PodNetns {
    fn add(name: String) -> PodNetns {
        run("ip", &["netns", "add", &name]);
        PodNetns(name)
    }

    fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.0)
    }

    fn nat_rules(&self) -> String {
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

fn run(program: &str, args: &[&str]) -> String {
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
struct Runtime {
    node_netns: String,
    cni_path: String,
    conflist: Value,
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
            .env("CNI_CONTAINERID", format!("sandbox-{name}"))
            .env("CNI_NETNS", pod.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.cni_path)
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_UID=uid-{name};K8S_POD_INFRA_CONTAINER_ID=sandbox-{name}"),
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

    fn add(&self, pod: &PodNetns, ns: &str, name: &str) -> Result<Value, Value> {
        let mut result: Option<Value> = None;
        for plugin in self.conflist["plugins"].as_array().unwrap() {
            result = Some(self.invoke("ADD", plugin, pod, ns, name, result.as_ref())?);
        }
        Ok(result.unwrap())
    }

    fn del(&self, pod: &PodNetns, ns: &str, name: &str) {
        for plugin in self.conflist["plugins"].as_array().unwrap().iter().rev() {
            self.invoke("DEL", plugin, pod, ns, name, None)
                .unwrap_or_else(|e| panic!("DEL {}: {e}", plugin["type"]));
        }
    }
}

fn holds(socket: &Path, ns: &str, name: &str) -> bool {
    let check = node_agent::Command::Check {
        uid: format!("Kubernetes//Pod/{ns}/{name}"),
    };
    matches!(
        node_agent::send_blocking(socket, &check, Duration::from_secs(5)),
        Ok(Reply::Ok { ok: true })
    )
}

fn namespace(name: &str, mode: Option<&str>) -> Value {
    let labels = mode.map_or(json!({}), |m| json!({"ambit.io/dataplane-mode": m}));
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn pod(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"namespace": ns, "name": name},
           "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "app"}]},
           "status": {"phase": "Pending"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meshed_pod_is_captured_by_the_time_its_cni_add_returns() -> anyhow::Result<()> {
    if !can_run("a_meshed_pod_is_captured_by_the_time_its_cni_add_returns") {
        return Ok(());
    }
    Testbed::preflight()?;
    let mut tb = Testbed::new()?;
    tb.add_node("node-a")?;
    let node = tb.node("node-a")?.netns().clone();
    let dir = std::env::temp_dir().join(format!("ambit-e2e-cni-chain-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    // The API server, reachable from the node's namespace as it would be from a node.
    let listener = node.run(|| std::net::TcpListener::bind("127.0.0.1:0"))??;
    let api = FakeApi::serve_std(listener);
    let api_addr = api.addr;
    for (ns, mode) in [("demo", Some("ambient")), ("plain", None)] {
        api.on(
            http::Method::GET,
            &format!("/api/v1/namespaces/{ns}"),
            move |_| (200, namespace(ns, mode)),
        );
    }
    for (ns, name) in [("demo", "app"), ("plain", "legacy")] {
        api.on(
            http::Method::GET,
            &format!("/api/v1/namespaces/{ns}/pods/{name}"),
            move |_| (200, pod(ns, name)),
        );
    }
    let kubeconfig = dir.join("ambit-cni.kubeconfig");
    std::fs::write(
        &kubeconfig,
        json!({"apiVersion": "v1", "kind": "Config",
               "clusters": [{"name": "fake", "cluster": {"server": format!("http://{api_addr}")}}],
               "users": [{"name": "cni", "user": {}}],
               "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "cni"}}],
               "current-context": "fake"})
        .to_string(),
    )?;

    // ztunnel with the controller's config for the meshed pod (its IP is not known yet: the
    // controller sends a scheduled pod before it has one).
    let ca = CertificateAuthority::generate("cluster.local")?;
    std::fs::write(dir.join("root.pem"), ca.root_pem())?;
    std::fs::write(dir.join("root-key.pem"), ca.root_key_pem())?;
    std::fs::write(
        dir.join("config.yaml"),
        "workloads:\n- {uid: Kubernetes//Pod/demo/app, name: app, namespace: demo, serviceAccount: app, node: node-a, addresses: [], protocol: HBONE}\n",
    )?;
    let socket = dir.join("ztunnel.sock");
    let bins = Binaries::locate()?;
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string()
    };
    let log = std::fs::File::create(dir.join("ztunnel.log"))?;
    let _ztunnel = Process(
        Command::new(&bins.ztunnel)
            .args(["--node", "node-a"])
            .arg("--root-cert")
            .arg(dir.join("root.pem"))
            .arg("--ca-key")
            .arg(dir.join("root-key.pem"))
            .arg("--config-file")
            .arg(dir.join("config.yaml"))
            .arg("--node-agent-socket")
            .arg(&socket)
            .args([
                "--admin-addr",
                &free(),
                "--metrics-addr",
                &free(),
                "--readiness-addr",
                &free(),
            ])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?,
    );
    let started = Instant::now();
    while !socket.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "ztunnel did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let runtime = Runtime {
        node_netns: node.name().to_string(),
        cni_path: format!(
            "{DEBIAN_CNI_DIR}:{}",
            bins.ztunnel.parent().unwrap().display()
        ),
        conflist: json!({
            "cniVersion": "1.0.0",
            "name": "podnet",
            "plugins": [
                {"type": "bridge", "bridge": "cni-ambit0", "isGateway": true,
                 "ipam": {"type": "host-local", "dataDir": dir.join("ipam"),
                          "ranges": [[{"subnet": "10.250.0.0/24"}]]}},
                {"type": "ambit-cni", "kubeconfig": kubeconfig, "ztunnelSocket": socket,
                 "excludeNamespaces": ["kube-system"]},
            ],
        }),
    };
    let meshed = PodNetns::add(format!("{}-cni-app", tb.run_prefix()));
    let plain = PodNetns::add(format!("{}-cni-legacy", tb.run_prefix()));

    let result = tokio::task::block_in_place(|| runtime.add(&meshed, "demo", "app"))
        .unwrap_or_else(|e| panic!("ADD of the meshed pod failed: {e}"));
    // The bridge's result passed on unchanged, and the pod's rules already there.
    assert_eq!(result["ips"][0]["address"], "10.250.0.2/24", "{result}");
    assert!(
        meshed.nat_rules().contains("AMBIT_"),
        "{}",
        meshed.nat_rules()
    );
    assert!(holds(&socket, "demo", "app"));

    let result = tokio::task::block_in_place(|| runtime.add(&plain, "plain", "legacy"))
        .unwrap_or_else(|e| panic!("ADD of the plain pod failed: {e}"));
    assert_eq!(result["ips"][0]["address"], "10.250.0.3/24", "{result}");
    assert!(
        !plain.nat_rules().contains("AMBIT_"),
        "a pod outside the mesh was touched"
    );
    assert!(!holds(&socket, "plain", "legacy"));

    tokio::task::block_in_place(|| {
        runtime.del(&meshed, "demo", "app");
        runtime.del(&plain, "plain", "legacy");
    });
    assert!(
        !meshed.nat_rules().contains("AMBIT_"),
        "DEL left rules: {}",
        meshed.nat_rules()
    );
    assert!(!holds(&socket, "demo", "app"));

    drop((meshed, plain));
    tb.destroy()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
