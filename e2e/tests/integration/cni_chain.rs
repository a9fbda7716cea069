//! ambit-cni chained after Debian's real CNI plugins (bridge + host-local), run as a container
//! runtime runs a chain: each plugin in turn with CNI_COMMAND, CNI_NETNS and CNI_ARGS set and
//! the network configuration (with the previous result) on stdin, from the node's network
//! namespace. A meshed pod's redirect rules are in place when ADD returns, before any of its
//! containers could run; a pod outside the mesh is left alone; DEL takes the rules out.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use ambit_cli::local::Binaries;
use ambit_e2e::can_run;
use ambit_e2e::cni::{DEBIAN_CNI_DIR, PodNetns, Runtime, fake_kubeconfig};
use ambit_fake_kube_api::FakeApi;
use ambit_proto::identity::CertificateAuthority;
use ambit_proto::node_agent::{self, Reply};
use ambit_testbed::Testbed;
use serde_json::{Value, json};

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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
    std::fs::write(&kubeconfig, fake_kubeconfig(&format!("http://{api_addr}")))?;

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

    // The pod deleted and made again under its name (a StatefulSet's): the new sandbox's ADD
    // can come before the old one's DEL, which must then leave the new pod captured.
    let again = PodNetns::add(format!("{}-cni-app-again", tb.run_prefix()));
    tokio::task::block_in_place(|| runtime.add(&again, "demo", "app"))
        .unwrap_or_else(|e| panic!("ADD of the pod made again failed: {e}"));
    assert!(again.nat_rules().contains("AMBIT_"));
    tokio::task::block_in_place(|| runtime.del(&meshed, "demo", "app"));
    assert!(
        again.nat_rules().contains("AMBIT_") && holds(&socket, "demo", "app"),
        "the old pod's DEL released the new one"
    );
    let meshed = again;

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
