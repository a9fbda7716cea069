//! A whole mesh on this host: the testbed's namespaces for the mesh file's nodes and pods, the
//! controller on the file, a ztunnel per node, each meshed pod handed to its node's ztunnel,
//! and the sample apps. `ambit up`, the e2e suite and the benchmarks all start meshes here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ambit_testbed::Testbed;
use ambit_ztunnel::node_agent::{self, Reply};
use serde::{Deserialize, Serialize};

use super::LocalError;
use super::apps::fetch;
use super::process::{Process, free_port};
use crate::source::file::{self, EMBEDDED_MESH, EMBEDDED_ORIGIN, MeshFile};

/// Where the mesh's programs are: built next to each other by cargo.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub controller: PathBuf,
    pub ztunnel: PathBuf,
    pub ambit: PathBuf,
}

impl Binaries {
    /// Looks beside the running program, and one folder up (tests run from target/*/deps).
    pub fn locate() -> Result<Self, LocalError> {
        let exe = std::env::current_exe().map_err(|source| LocalError::Io {
            what: "finding the running program".into(),
            source,
        })?;
        let dir = exe.parent().unwrap_or(Path::new("."));
        for candidate in [dir, dir.parent().unwrap_or(dir)] {
            let b = Binaries {
                controller: candidate.join("controller"),
                ztunnel: candidate.join("ztunnel"),
                ambit: candidate.join("ambit"),
            };
            if b.controller.exists() && b.ztunnel.exists() && b.ambit.exists() {
                return Ok(b);
            }
        }
        Err(LocalError::BinariesMissing {
            dir: dir.to_path_buf(),
        })
    }
}

/// What a running local mesh is, for `ambit config`, `ambit status` and `ambit down`
/// (written to `state.json` in the work directory).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunState {
    pub testbed_run: String,
    pub work_dir: PathBuf,
    pub controller_grpc: SocketAddr,
    pub controller_metrics: SocketAddr,
    pub nodes: Vec<NodeState>,
    /// The controller's and ztunnels' pids, for `ambit down` after a crash.
    pub pids: Vec<u32>,
    pub pods: Vec<PodState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub readiness: SocketAddr,
    pub socket: PathBuf,
    /// The ztunnel's process id (benchmarks read its CPU time and memory).
    #[serde(default)]
    pub pid: Option<u32>,
}

/// `ambit bench` serves one pod on both ports: the first is captured like any app port (the
/// mesh path), the second bypasses capture in every pod of a local mesh (the direct path), so
/// both paths reach the same server process.
pub const BENCH_MESH_PORT: u16 = 15098;
pub const BENCH_DIRECT_PORT: u16 = 15099;

/// A pod of the running mesh, for the CLI.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodState {
    pub namespace: String,
    pub name: String,
    pub node: String,
    /// The namespace's name under /var/run/netns.
    pub netns: String,
    pub ipv4: std::net::Ipv4Addr,
    pub ipv6: std::net::Ipv6Addr,
    pub meshed: bool,
    /// Runs a sample server.
    pub server: bool,
}

/// Where `ambit up` records the current run.
pub const CURRENT_RUN: &str = "/run/ambit/current.json";

impl RunState {
    pub fn load_current() -> Result<Self, LocalError> {
        let text = std::fs::read_to_string(CURRENT_RUN).map_err(|_| LocalError::NoRun)?;
        serde_json::from_str(&text).map_err(|e| LocalError::Io {
            what: format!("reading {CURRENT_RUN}"),
            source: std::io::Error::other(e),
        })
    }
}

pub struct Options {
    /// The mesh file; `None` for the embedded default.
    pub mesh_file: Option<PathBuf>,
    pub work_dir: PathBuf,
    pub binaries: Binaries,
    /// Start each pod's sample app (`app:` in the mesh file).
    pub start_apps: bool,
    /// Record this run as the current one for the CLI.
    pub record_current: bool,
    /// Each ztunnel's data-path worker threads (its default when `None`).
    pub ztunnel_workers: Option<usize>,
}

pub struct LocalMesh {
    file: MeshFile,
    mesh_path: PathBuf,
    state: RunState,
    controller: Process,
    ztunnels: Vec<Process>,
    apps: Vec<ambit_testbed::NetnsChild>,
    /// Declared last: dropped after the processes that use its namespaces.
    testbed: Option<Testbed>,
    record_current: bool,
}

const READY_TIMEOUT: Duration = Duration::from_secs(30);

impl LocalMesh {
    /// Reads and checks the mesh file before anything is created.
    pub fn check(mesh_file: Option<&Path>) -> Result<(MeshFile, String), LocalError> {
        match mesh_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| LocalError::Io {
                    what: format!("reading mesh file {}", path.display()),
                    source,
                })?;
                let parsed = file::parse(&text, &path.display().to_string())?;
                Ok((parsed, text))
            }
            None => Ok((
                file::parse(EMBEDDED_MESH, EMBEDDED_ORIGIN)?,
                EMBEDDED_MESH.into(),
            )),
        }
    }

    pub async fn up(options: Options, progress: &dyn Fn(&str)) -> Result<Self, LocalError> {
        let (file, text) = Self::check(options.mesh_file.as_deref())?;
        Testbed::preflight()?;
        std::fs::create_dir_all(&options.work_dir).map_err(|source| LocalError::Io {
            what: format!("creating {}", options.work_dir.display()),
            source,
        })?;
        let mesh_path = options.work_dir.join("mesh.yaml");
        write(&mesh_path, &text)?;

        progress("creating network namespaces");
        let mut testbed = Testbed::new()?;
        for node in &file.topology.nodes {
            testbed.add_node(node)?;
        }
        for pod in &file.topology.pods {
            let v4 = pod.addresses.iter().find_map(|a| match a {
                std::net::IpAddr::V4(v4) => Some(*v4),
                _ => None,
            });
            let v6 = pod.addresses.iter().find_map(|a| match a {
                std::net::IpAddr::V6(v6) => Some(*v6),
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

        progress("starting the controller");
        let controller_grpc = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let controller_metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let root_cert = options.work_dir.join("root-cert.pem");
        let root_key = options.work_dir.join("root-key.pem");
        let mut controller = Process::spawn(
            "controller",
            Command::new(&options.binaries.controller)
                .arg("--source")
                .arg(format!("file:{}", mesh_path.display()))
                .arg("--listen")
                .arg(controller_grpc.to_string())
                .arg("--metrics")
                .arg(controller_metrics.to_string())
                .arg("--ca-cert")
                .arg(&root_cert)
                .arg("--ca-key")
                .arg(&root_key),
            &options.work_dir.join("controller.log"),
        )?;
        wait_until("the controller", &mut controller, || async {
            root_cert.exists()
                && fetch(&format!("http://{controller_metrics}/healthz/ready"))
                    .await
                    .is_ok_and(|(status, _)| status == 200)
        })
        .await?;

        progress("starting a ztunnel per node");
        let mut nodes = Vec::new();
        let mut ztunnels = Vec::new();
        for node in file.model.nodes() {
            let token_file = options.work_dir.join(format!("{}.token", node.name));
            write(&token_file, node.bootstrap_token.as_deref().unwrap_or(""))?;
            let state = NodeState {
                name: node.name.clone(),
                admin: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                metrics: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                readiness: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                socket: options.work_dir.join(format!("{}.sock", node.name)),
                pid: None,
            };
            let ztunnel = Process::spawn(
                &format!("ztunnel on {}", node.name),
                Command::new(&options.binaries.ztunnel)
                    .args(["--node", &node.name])
                    .arg("--controller")
                    .arg(format!("https://{controller_grpc}"))
                    .arg("--root-cert")
                    .arg(&root_cert)
                    .arg("--trust-domain")
                    .arg(file.model.trust_domain())
                    .arg("--token-file")
                    .arg(&token_file)
                    .arg("--node-agent-socket")
                    .arg(&state.socket)
                    .arg("--admin-addr")
                    .arg(state.admin.to_string())
                    .arg("--metrics-addr")
                    .arg(state.metrics.to_string())
                    .arg("--readiness-addr")
                    .arg(state.readiness.to_string())
                    .args(["--drain-timeout", "3s"])
                    .args(
                        options
                            .ztunnel_workers
                            .map(|n| vec!["--worker-threads".to_string(), n.to_string()])
                            .unwrap_or_default(),
                    ),
                &options.work_dir.join(format!("ztunnel-{}.log", node.name)),
            )?;
            let mut state = state;
            state.pid = ztunnel.pid();
            nodes.push(state);
            ztunnels.push(ztunnel);
        }
        for (z, state) in ztunnels.iter_mut().zip(&nodes) {
            let url = format!("http://{}/healthz/ready", state.readiness);
            wait_until(&z.name.clone(), z, || async {
                fetch(&url).await.is_ok_and(|(status, _)| status == 200)
            })
            .await?;
        }

        let state = RunState {
            testbed_run: testbed.run_prefix().to_string(),
            work_dir: options.work_dir.clone(),
            controller_grpc,
            controller_metrics,
            nodes,
            pids: std::iter::once(&controller)
                .chain(&ztunnels)
                .filter_map(Process::pid)
                .collect(),
            pods: pod_states(&file, &testbed)?,
        };
        write(
            &options.work_dir.join("state.json"),
            &serde_json::to_string_pretty(&state).expect("state serializes"),
        )?;
        if options.record_current {
            if let Some(dir) = Path::new(CURRENT_RUN).parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            write(
                Path::new(CURRENT_RUN),
                &serde_json::to_string_pretty(&state).expect("state serializes"),
            )?;
        }
        let mut mesh = LocalMesh {
            file,
            mesh_path,
            state,
            controller,
            ztunnels,
            apps: Vec::new(),
            testbed: Some(testbed),
            record_current: options.record_current,
        };

        progress("handing meshed pods to their ztunnels");
        let meshed: Vec<(String, String, String, String)> = mesh
            .file
            .model
            .workloads()
            .filter(|w| w.meshed)
            .map(|w| {
                (
                    w.uid.clone(),
                    w.pod.node.clone(),
                    w.pod.namespace.clone(),
                    w.pod.name.clone(),
                )
            })
            .collect();
        for (uid, node, namespace, name) in meshed {
            mesh.add_pod(&uid, &node, &namespace, &name).await?;
        }
        if options.start_apps {
            progress("starting the sample apps");
            mesh.start_apps(&options.binaries)?;
        }
        Ok(mesh)
    }

    /// Hands a pod to its node's ztunnel (as a CNI plugin would on pod start).
    pub async fn add_pod(
        &self,
        uid: &str,
        node: &str,
        namespace: &str,
        name: &str,
    ) -> Result<(), LocalError> {
        let netns = self.pod(namespace, name)?.netns().path().to_path_buf();
        let socket = &self.node_state(node)?.socket;
        let command = node_agent::Command::Add {
            uid: uid.into(),
            netns,
            exclude_ports: vec![BENCH_DIRECT_PORT],
        };
        self.node_agent(socket, uid, &command).await
    }

    /// Takes a pod away from its ztunnel (as on pod deletion).
    pub async fn remove_pod(&self, uid: &str, node: &str) -> Result<(), LocalError> {
        let socket = &self.node_state(node)?.socket;
        let command = node_agent::Command::Remove { uid: uid.into() };
        self.node_agent(socket, uid, &command).await
    }

    async fn node_agent(
        &self,
        socket: &Path,
        uid: &str,
        command: &node_agent::Command,
    ) -> Result<(), LocalError> {
        match node_agent::send(socket, command).await {
            Ok(Reply::Ok { .. }) => Ok(()),
            Ok(Reply::Error { error }) => Err(LocalError::NodeAgent {
                pod: uid.into(),
                reason: error,
            }),
            Err(e) => Err(LocalError::NodeAgent {
                pod: uid.into(),
                reason: format!("ztunnel's socket {}: {e}", socket.display()),
            }),
        }
    }

    fn start_apps(&mut self, binaries: &Binaries) -> Result<(), LocalError> {
        for pod in self.file.topology.pods.clone() {
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
            args.extend(["--name".to_string(), pod.name.clone()]);
            let netns = self.pod(&pod.namespace, &pod.name)?.netns().clone();
            let log = self
                .state
                .work_dir
                .join(format!("app-{}-{}.log", pod.namespace, pod.name));
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
            self.apps.push(child);
        }
        Ok(())
    }

    pub fn file(&self) -> &MeshFile {
        &self.file
    }

    pub fn mesh_path(&self) -> &Path {
        &self.mesh_path
    }

    pub fn state(&self) -> &RunState {
        &self.state
    }

    pub fn testbed(&self) -> &Testbed {
        self.testbed.as_ref().expect("present until down")
    }

    pub fn node_state(&self, node: &str) -> Result<&NodeState, LocalError> {
        self.state
            .nodes
            .iter()
            .find(|n| n.name == node)
            .ok_or_else(|| LocalError::UnknownNode { node: node.into() })
    }

    /// A pod's namespace and addresses.
    pub fn pod(&self, namespace: &str, name: &str) -> Result<&ambit_testbed::Pod, LocalError> {
        let spec = self
            .file
            .topology
            .pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
            .ok_or_else(|| LocalError::UnknownPod {
                pod: format!("{namespace}/{name}"),
            })?;
        Ok(self
            .testbed()
            .pod(&spec.node, &testbed_pod_name(namespace, name))?)
    }

    /// Kills the controller at once (the config source dies; the data plane must carry on).
    pub fn kill_controller(&mut self) {
        self.controller.kill();
    }

    /// Stops a node's ztunnel with SIGTERM (it drains and removes its rules).
    pub fn stop_ztunnel(&mut self, node: &str) -> Result<bool, LocalError> {
        let i = self
            .state
            .nodes
            .iter()
            .position(|n| n.name == node)
            .ok_or_else(|| LocalError::UnknownNode { node: node.into() })?;
        Ok(self.ztunnels[i].stop(Duration::from_secs(10)))
    }

    /// Stops everything and removes every namespace, link, rule and process it made.
    pub fn down(mut self) -> Result<(), LocalError> {
        self.apps.clear();
        for z in &mut self.ztunnels {
            z.stop(Duration::from_secs(10));
        }
        self.controller.stop(Duration::from_secs(5));
        if self.record_current {
            let _ = std::fs::remove_file(CURRENT_RUN);
        }
        if let Some(tb) = self.testbed.take() {
            tb.destroy()?;
        }
        Ok(())
    }
}

impl Drop for LocalMesh {
    fn drop(&mut self) {
        // On an error path or a panic: processes are killed by their own Drop, namespaces by
        // the testbed's. Rules live inside the pods' namespaces and go with them.
        self.apps.clear();
        for z in &mut self.ztunnels {
            z.stop(Duration::from_secs(3));
        }
        if self.record_current {
            let _ = std::fs::remove_file(CURRENT_RUN);
        }
    }
}

fn pod_states(file: &MeshFile, testbed: &Testbed) -> Result<Vec<PodState>, LocalError> {
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

/// The testbed's name for a pod: unique per node across Kubernetes namespaces.
fn testbed_pod_name(namespace: &str, name: &str) -> String {
    format!("{namespace}-{name}")
}

fn write(path: &Path, contents: &str) -> Result<(), LocalError> {
    std::fs::write(path, contents).map_err(|source| LocalError::Io {
        what: format!("writing {}", path.display()),
        source,
    })
}

/// Polls `ready` until it holds, the process exits, or READY_TIMEOUT passes.
async fn wait_until<F, Fut>(what: &str, process: &mut Process, ready: F) -> Result<(), LocalError>
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
