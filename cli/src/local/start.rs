//! The steps of starting a local mesh: its namespaces, the command lines of its controller and
//! ztunnels (kept as specs so the supervisor restarts them the same way), waiting for each to
//! be ready, and the sample apps.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ambit_testbed::{NetnsChild, Testbed};

use super::LocalError;
use super::mesh::{LocalMesh, Options};
use super::ports::CONTROLLER_API_PORT;
use super::process::{Process, Spec};
use super::state::{NodeState, PodState};
use ambit_controller::source::file::{self, MeshFile};

pub use super::apps::fetch;

/// How long the controller and each ztunnel get to become ready at start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The namespaces of the mesh file's nodes and pods.
pub fn testbed(file: &MeshFile) -> Result<Testbed, LocalError> {
    let mut testbed = Testbed::new()?;
    for node in &file.topology.nodes {
        testbed.add_node(node)?;
    }
    for pod in &file.topology.pods {
        let v4 = pod.addresses.iter().find_map(|a| match a {
            IpAddr::V4(v4) => Some(*v4),
            _ => None,
        });
        let v6 = pod.addresses.iter().find_map(|a| match a {
            IpAddr::V6(v6) => Some(*v6),
            _ => None,
        });
        let (Some(v4), Some(v6)) = (v4, v6) else {
            return Err(LocalError::PodAddresses {
                pod: format!("{}/{}", pod.namespace, pod.name),
            });
        };
        testbed.add_pod(
            &pod.node,
            &testbed_pod_name(&pod.namespace, &pod.name),
            v4,
            v6,
        )?;
    }
    for wp in &file.topology.waypoints {
        let (v4, v6) = super::waypoints::addresses(wp)?;
        testbed.add_pod(
            &wp.node,
            &super::waypoints::testbed_name(&wp.namespace, &wp.name),
            v4,
            v6,
        )?;
    }
    Ok(testbed)
}

/// The controller's command line. Its observation API listens beside its gRPC port, on
/// [`CONTROLLER_API_PORT`] of the same loopback address.
pub fn controller_spec(
    options: &Options,
    mesh_path: &Path,
    grpc: SocketAddr,
    metrics: SocketAddr,
    root_cert: &Path,
) -> Spec {
    let api = SocketAddr::new(grpc.ip(), CONTROLLER_API_PORT);
    let mut spec = Spec::new(
        "controller",
        &options.binaries.controller,
        &options.work_dir.join("controller.log"),
    );
    spec.arg("--source")
        .arg(format!("file:{}", mesh_path.display()))
        .args(["--listen".to_string(), grpc.to_string()])
        .args(["--metrics".to_string(), metrics.to_string()])
        .args(["--api-addr".to_string(), api.to_string()])
        .arg("--ca-cert")
        .arg(root_cert)
        .arg("--ca-key")
        .arg(options.work_dir.join("root-key.pem"));
    spec
}

pub fn ztunnel_spec(
    options: &Options,
    file: &MeshFile,
    node: &NodeState,
    controller: SocketAddr,
    root_cert: &Path,
    token_file: &Path,
) -> Spec {
    let mut spec = Spec::new(
        &format!("ztunnel on {}", node.name),
        &options.binaries.ztunnel,
        &options.work_dir.join(format!("ztunnel-{}.log", node.name)),
    );
    spec.args(["--node", node.name.as_str()])
        .args(["--controller".to_string(), format!("https://{controller}")])
        .arg("--root-cert")
        .arg(root_cert)
        .args(["--trust-domain", file.model.trust_domain()])
        .arg("--token-file")
        .arg(token_file)
        .arg("--node-agent-socket")
        .arg(&node.socket)
        .args(["--admin-addr".to_string(), node.admin.to_string()])
        .args(["--metrics-addr".to_string(), node.metrics.to_string()])
        .args(["--readiness-addr".to_string(), node.readiness.to_string()])
        .args(["--drain-timeout", "3s"]);
    if let Some(n) = options.ztunnel_workers {
        spec.args(["--worker-threads".to_string(), n.to_string()]);
    }
    spec.args(options.ztunnel_flags.iter().cloned());
    spec
}

/// Polls `ready` until it holds, the process exits, or READY_TIMEOUT passes.
pub async fn wait_until<F, Fut>(
    what: &str,
    process: &mut Process,
    ready: F,
) -> Result<(), LocalError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if ready().await {
            return Ok(());
        }
        if let Some(status) = process.exited() {
            return Err(LocalError::Exited {
                what: what.into(),
                status: status.to_string(),
                log: process.log.clone(),
                tail: process.log_tail(),
            });
        }
        if start.elapsed() > READY_TIMEOUT {
            return Err(LocalError::NotReady {
                what: what.into(),
                waited: READY_TIMEOUT,
                log: process.log.clone(),
                tail: process.log_tail(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each pod's sample server (`app:` in the mesh file), in the pod's namespace, logging each
/// request it serves to its log ([`app_log`]), so tests can count what reached it.
pub fn apps(mesh: &LocalMesh, binaries: &super::Binaries) -> Result<Vec<NetnsChild>, LocalError> {
    let mut children = Vec::new();
    let work_dir = mesh.state().work_dir;
    for pod in &mesh.file().topology.pods {
        let kind = match pod.app {
            Some(file::PodApp::HttpEcho) => "http-echo",
            Some(file::PodApp::TcpEcho) => "tcp-echo",
            None => continue,
        };
        if pod.ports.is_empty() {
            continue;
        }
        let mut args = vec![
            "app".to_string(),
            "serve".into(),
            "--kind".into(),
            kind.into(),
        ];
        for port in &pod.ports {
            args.extend(["--port".to_string(), port.to_string()]);
        }
        args.extend([
            "--name".to_string(),
            pod.name.clone(),
            "--access-log".into(),
        ]);
        let netns = mesh.pod(&pod.namespace, &pod.name)?.netns().clone();
        let log = app_log(&work_dir, &pod.namespace, &pod.name);
        let out = std::fs::File::create(&log).map_err(|source| LocalError::Io {
            what: format!("creating {}", log.display()),
            source,
        })?;
        let child = netns.spawn(
            Command::new(&binaries.ambit)
                .args(&args)
                .stdout(out.try_clone().map_err(|source| LocalError::Io {
                    what: format!("opening {}", log.display()),
                    source,
                })?)
                .stderr(out),
        )?;
        children.push(child);
    }
    Ok(children)
}

pub fn pod_states(file: &MeshFile, testbed: &Testbed) -> Result<Vec<PodState>, LocalError> {
    let mut pods = Vec::new();
    for spec in &file.topology.pods {
        let pod = testbed.pod(&spec.node, &testbed_pod_name(&spec.namespace, &spec.name))?;
        let meshed = file
            .model
            .workloads()
            .any(|w| w.pod.name == spec.name && w.pod.namespace == spec.namespace && w.meshed);
        pods.push(PodState {
            namespace: spec.namespace.clone(),
            name: spec.name.clone(),
            node: spec.node.clone(),
            netns: pod.netns().name().to_string(),
            ipv4: pod.ipv4(),
            ipv6: pod.ipv6(),
            meshed,
            server: spec.app.is_some(),
        });
    }
    Ok(pods)
}

/// Where a pod's sample server writes its output: a JSON line per request it served.
pub fn app_log(work_dir: &Path, namespace: &str, name: &str) -> std::path::PathBuf {
    work_dir.join(format!("app-{namespace}-{name}.log"))
}

/// The testbed's name for a pod: unique per node across Kubernetes namespaces.
pub fn testbed_pod_name(namespace: &str, name: &str) -> String {
    format!("{namespace}-{name}")
}

pub fn write(path: &Path, contents: &str) -> Result<(), LocalError> {
    std::fs::write(path, contents).map_err(|source| LocalError::Io {
        what: format!("writing {}", path.display()),
        source,
    })
}
