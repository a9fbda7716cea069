//! The node agent against a fake API server and a real ztunnel: running pods are enrolled and
//! released by their namespace's label without being restarted, a restarted ztunnel gets its
//! pods back, a restarted agent takes over the pods it had handed over, and a pod outside the
//! mesh is never touched. Pods are testbed namespaces found through their IPs, as on a node.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use ambit_cli::local::Binaries;
use ambit_cni::netns::PINNED_DIR;
use ambit_e2e::can_run;
use ambit_fake_kube_api::FakeApi;
use ambit_proto::identity::CertificateAuthority;
use ambit_proto::node_agent::{self, Reply};
use ambit_testbed::Testbed;
use serde_json::{Value, json};

const PODS: &str = "/api/v1/pods";
const NAMESPACES: &str = "/api/v1/namespaces";

/// A child process killed (and reaped) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Process {
    /// SIGTERM, as the kubelet stops a container, and waits for the exit.
    fn terminate(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn namespace(name: &str, mode: Option<&str>) -> Value {
    let labels = match mode {
        Some(m) => json!({"ambit.io/dataplane-mode": m}),
        None => json!({}),
    };
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "uid": format!("ns-{name}"), "resourceVersion": "1", "labels": labels}})
}

fn pod(ns: &str, name: &str, ip: std::net::Ipv4Addr) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"namespace": ns, "name": name, "uid": format!("pod-{name}"), "resourceVersion": "1"},
           "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "app"}]},
           "status": {"phase": "Running", "podIP": ip.to_string()}})
}

struct Files {
    dir: PathBuf,
    /// ztunnel's admin, metrics and readiness ports, kept across its restart.
    ports: [u16; 3],
}

impl Files {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn start_ztunnel(bin: &Path, files: &Files) -> Process {
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(files.path("ztunnel.log"))
        .unwrap();
    let port = |p: u16| format!("127.0.0.1:{p}");
    Process(
        Command::new(bin)
            .args(["--node", "node-a"])
            .arg("--root-cert")
            .arg(files.path("root.pem"))
            .arg("--ca-key")
            .arg(files.path("root-key.pem"))
            .arg("--config-file")
            .arg(files.path("config.yaml"))
            .arg("--node-agent-socket")
            .arg(files.path("ztunnel.sock"))
            .args(["--admin-addr", &port(files.ports[0])])
            .args(["--metrics-addr", &port(files.ports[1])])
            .args(["--readiness-addr", &port(files.ports[2])])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

fn start_agent(bin: &Path, files: &Files) -> Process {
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(files.path("agent.log"))
        .unwrap();
    Process(
        Command::new(bin)
            .args(["--node", "node-a"])
            .arg("--kubeconfig")
            .arg(files.path("kubeconfig"))
            .arg("--ztunnel-socket")
            .arg(files.path("ztunnel.sock"))
            .arg("--netns-dir")
            .arg(PINNED_DIR)
            .args(["--resync", "500ms"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// Whether ztunnel holds the pod (false also while its socket is not up).
fn holds(files: &Files, name: &str, ns: &str) -> bool {
    let check = node_agent::Command::Check {
        uid: format!("Kubernetes//Pod/{ns}/{name}"),
    };
    matches!(
        node_agent::send_blocking(&files.path("ztunnel.sock"), &check, Duration::from_secs(5)),
        Ok(Reply::Ok { ok: true })
    )
}

async fn eventually(what: &str, files: &Files, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(files.path("agent.log")).unwrap_or_default();
    panic!("timed out waiting until {what}; the agent's log:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_pods_are_enrolled_and_released_by_label_across_restarts() -> anyhow::Result<()> {
    if !can_run("running_pods_are_enrolled_and_released_by_label_across_restarts") {
        return Ok(());
    }
    Testbed::preflight()?;
    let mut tb = Testbed::new()?;
    let (a4, a6) = tb.add_node("node-a")?.pod_addrs(1)?;
    let (b4, b6) = tb.node("node-a")?.pod_addrs(2)?;
    tb.add_pod("node-a", "app", a4, a6)?;
    tb.add_pod("node-a", "legacy", b4, b6)?;

    let files = Files {
        dir: std::env::temp_dir().join(format!("ambit-e2e-node-agent-{}", std::process::id())),
        ports: [free_port(), free_port(), free_port()],
    };
    std::fs::create_dir_all(&files.dir)?;
    let ca = CertificateAuthority::generate("cluster.local")?;
    std::fs::write(files.path("root.pem"), ca.root_pem())?;
    std::fs::write(files.path("root-key.pem"), ca.root_key_pem())?;
    // What the controller would send node-a's ztunnel for these two pods.
    std::fs::write(
        files.path("config.yaml"),
        format!(
            "workloads:\n\
             - {{uid: Kubernetes//Pod/demo/app, name: app, namespace: demo, serviceAccount: app, node: node-a, addresses: ['{a4}', '{a6}'], protocol: HBONE}}\n\
             - {{uid: Kubernetes//Pod/plain/legacy, name: legacy, namespace: plain, serviceAccount: legacy, node: node-a, addresses: ['{b4}', '{b6}'], protocol: TCP}}\n"
        ),
    )?;

    let api = FakeApi::start().await;
    let demo_pod = pod("demo", "app", a4);
    let pods = vec![demo_pod.clone(), pod("plain", "legacy", b4)];
    api.collection(PODS, "PodList", pods.clone());
    api.collection(
        NAMESPACES,
        "NamespaceList",
        vec![namespace("demo", Some("ambient")), namespace("plain", None)],
    );
    std::fs::write(
        files.path("kubeconfig"),
        json!({"apiVersion": "v1", "kind": "Config",
               "clusters": [{"name": "fake", "cluster": {"server": format!("http://{}", api.addr)}}],
               "users": [{"name": "agent", "user": {}}],
               "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "agent"}}],
               "current-context": "fake"})
        .to_string(),
    )?;

    let bins = Binaries::locate()?;
    let agent_bin = bins.ztunnel.with_file_name("ambit-node-agent");
    let ztunnel = start_ztunnel(&bins.ztunnel, &files);
    let mut agent = start_agent(&agent_bin, &files);

    // A running pod of a labelled namespace is enrolled; the one outside the mesh is not.
    eventually("the demo pod is enrolled", &files, || {
        holds(&files, "app", "demo")
    })
    .await;
    assert!(!holds(&files, "legacy", "plain"));

    // Unlabelling the namespace releases it; labelling it again enrols it again.
    api.send(NAMESPACES, "MODIFIED", namespace("demo", None));
    eventually("the demo pod is released", &files, || {
        !holds(&files, "app", "demo")
    })
    .await;
    api.send(NAMESPACES, "MODIFIED", namespace("demo", Some("ambient")));
    eventually("the demo pod is enrolled again", &files, || {
        holds(&files, "app", "demo")
    })
    .await;

    // A restarted ztunnel holds nothing (it released its pods as it stopped); the agent hands
    // the pod over again.
    ztunnel.terminate();
    assert!(!holds(&files, "app", "demo"));
    let ztunnel = start_ztunnel(&bins.ztunnel, &files);
    eventually("the pod is back in the new ztunnel", &files, || {
        holds(&files, "app", "demo")
    })
    .await;

    // The agent killed outright (no clean exit) and started again: it finds the pod held and
    // takes it over, so that unlabelling still releases it. Its fresh list and watch come from
    // a collection registered anew, as an API server would serve a new client.
    drop(agent);
    api.collection(PODS, "PodList", pods.clone());
    api.collection(
        NAMESPACES,
        "NamespaceList",
        vec![namespace("demo", Some("ambient")), namespace("plain", None)],
    );
    agent = start_agent(&agent_bin, &files);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(holds(&files, "app", "demo"), "the restart released the pod");
    api.send(NAMESPACES, "MODIFIED", namespace("demo", None));
    eventually("the restarted agent releases the pod", &files, || {
        !holds(&files, "app", "demo")
    })
    .await;

    // The pod opting out while its namespace is meshed stays out.
    let mut opted_out = demo_pod.clone();
    opted_out["metadata"]["labels"] = json!({"ambit.io/dataplane-mode": "none"});
    api.send(PODS, "MODIFIED", opted_out);
    api.send(NAMESPACES, "MODIFIED", namespace("demo", Some("ambient")));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !holds(&files, "app", "demo"),
        "an opted-out pod was enrolled"
    );
    assert!(
        !holds(&files, "legacy", "plain"),
        "a pod outside the mesh was touched"
    );

    drop(agent);
    drop(ztunnel);
    tb.destroy()?;
    let _ = std::fs::remove_dir_all(&files.dir);
    Ok(())
}
