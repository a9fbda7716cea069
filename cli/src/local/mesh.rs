//! A whole mesh on this host: the testbed's namespaces for the mesh file's nodes, pods and
//! waypoints, the controller on the file, a ztunnel per node, each waypoint in its namespace
//! (see `waypoints`), each meshed pod handed to its node's ztunnel, and the sample apps.
//! `ambit up`, the e2e suite and the benchmarks all start meshes here. Once started, the
//! controller, ztunnels and waypoints are supervised (`supervise`): a crashed one is started
//! again, and a ztunnel gets its pods back.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ambit_proto::node_agent::{self, Reply};
use ambit_testbed::Testbed;
use tokio::sync::mpsc;

use super::LocalError;
use super::ports::{
    CONTROLLER_GRPC_PORT, CONTROLLER_METRICS_PORT, Slot, ZTUNNEL_ADMIN_PORT, ZTUNNEL_METRICS_PORT,
    ZTUNNEL_READINESS_PORT,
};
use super::process::Process;
use super::relay::Relay;
use super::start::{self, controller_spec, wait_until, write, ztunnel_spec};
use super::state::{BENCH_DIRECT_PORT, Binaries, CURRENT_RUN, NodeState, RunState, WaypointState};
use super::supervise::{Event, Member, Role, Shared, Supervisor};
use super::waypoints;
use ambit_controller::source::file::{self, EMBEDDED_MESH, EMBEDDED_ORIGIN, MeshFile};

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
    /// More flags for every ztunnel (a test's short `--destination-idle-timeout`, a bench's
    /// `--destinations all`).
    pub ztunnel_flags: Vec<String>,
    /// Observer mode for the whole mesh (`policyMode: audit`): every authorization policy is
    /// evaluated and what it would deny logged and counted, and nothing is blocked.
    pub observe: bool,
    /// [`LocalMesh::down`] removes `work_dir` once everything stopped cleanly: its logs,
    /// tokens and the mesh CA's key go with it (a mesh that was not brought down, e.g. a
    /// failed test's, keeps them for its logs).
    pub remove_work_dir: bool,
}

/// What the supervisor does about a ztunnel killed through [`LocalMesh::kill_ztunnel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterKill {
    /// As after any crash: it is noticed, started again, and given its pods back.
    Restart,
    /// Left down until [`LocalMesh::start_ztunnel`]: a node whose proxy stays gone.
    StayDown,
}

pub struct LocalMesh {
    file: MeshFile,
    mesh_path: PathBuf,
    /// The controller and ztunnels, their run state and pods, shared with the supervisor.
    shared: Arc<Shared>,
    supervisor: Option<Supervisor>,
    events: Option<mpsc::UnboundedReceiver<Event>>,
    apps: Vec<ambit_testbed::NetnsChild>,
    /// What joins each waypoint's namespace to the host; stopped after the waypoints, before
    /// the testbed (a relay's thread inside a namespace would keep it alive).
    relays: Vec<Relay>,
    /// Dropped after the processes that use its namespaces.
    testbed: Option<Testbed>,
    /// This mesh's loopback addresses; released last.
    _slot: Slot,
    record_current: bool,
    remove_work_dir: bool,
}

/// Index of the controller among the supervised processes; ztunnels follow in node order.
const CONTROLLER: usize = 0;

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
        let (file, text) = if options.observe {
            let text = observed(&text)?;
            (file::parse(&text, "the mesh file in observer mode")?, text)
        } else {
            (file, text)
        };
        Testbed::preflight()?;
        std::fs::create_dir_all(&options.work_dir).map_err(|source| LocalError::Io {
            what: format!("creating {}", options.work_dir.display()),
            source,
        })?;
        let mesh_path = options.work_dir.join("mesh.yaml");
        write(&mesh_path, &text)?;
        let slot = Slot::acquire(file.model.nodes().count(), file.topology.waypoints.len())?;

        progress("creating network namespaces");
        let testbed = start::testbed(&file)?;

        progress("starting the controller");
        let controller_grpc = SocketAddr::from((slot.controller_ip(), CONTROLLER_GRPC_PORT));
        let controller_metrics = SocketAddr::from((slot.controller_ip(), CONTROLLER_METRICS_PORT));
        let root_cert = options.work_dir.join("root-cert.pem");
        let controller_ready = format!("http://{controller_metrics}/healthz/ready");
        let spec = controller_spec(
            &options,
            &mesh_path,
            controller_grpc,
            controller_metrics,
            &root_cert,
        );
        let mut controller = Process::start(&spec, false)?;
        wait_until("the controller", &mut controller, || async {
            root_cert.exists()
                && start::fetch(&controller_ready)
                    .await
                    .is_ok_and(|(status, _)| status == 200)
        })
        .await?;
        let mut members = vec![Member::new(
            spec,
            Role::Controller {
                ready_url: controller_ready.clone(),
            },
            controller,
        )];

        progress("starting a ztunnel per node");
        let mut nodes = Vec::new();
        let mut ztunnels = Vec::new();
        for (i, node) in file.model.nodes().enumerate() {
            let token_file = options.work_dir.join(format!("{}.token", node.name));
            write(&token_file, node.bootstrap_token.as_deref().unwrap_or(""))?;
            let ip = slot.node_ip(i);
            let mut state = NodeState {
                name: node.name.clone(),
                admin: SocketAddr::from((ip, ZTUNNEL_ADMIN_PORT)),
                metrics: SocketAddr::from((ip, ZTUNNEL_METRICS_PORT)),
                readiness: SocketAddr::from((ip, ZTUNNEL_READINESS_PORT)),
                socket: options.work_dir.join(format!("{}.sock", node.name)),
                pid: None,
            };
            let spec = ztunnel_spec(
                &options,
                &file,
                &state,
                controller_grpc,
                &root_cert,
                &token_file,
            );
            let process = Process::start(&spec, false)?;
            state.pid = process.pid();
            ztunnels.push((spec, process, state.clone()));
            nodes.push(state);
        }
        for (spec, mut process, state) in ztunnels {
            let url = format!("http://{}/healthz/ready", state.readiness);
            wait_until(&spec.name, &mut process, || async {
                start::fetch(&url)
                    .await
                    .is_ok_and(|(status, _)| status == 200)
            })
            .await?;
            let role = Role::Ztunnel {
                node: state.name.clone(),
                ready_url: url,
                socket: state.socket.clone(),
            };
            members.push(Member::new(spec, role, process));
        }

        let placed = waypoints::place(
            &options,
            &file,
            &testbed,
            &slot,
            controller_grpc,
            &root_cert,
        )?;
        let mut relays = Vec::new();
        let mut waypoint_states = Vec::new();
        if !placed.is_empty() {
            progress("starting the waypoints, each in its own namespace on its node");
        }
        let mut started = Vec::new();
        for p in placed {
            let process = Process::start(&p.spec, false)?;
            let mut state = p.state;
            state.pid = process.pid();
            relays.extend(p.relays);
            started.push((p.spec, process, state));
        }
        for (spec, mut process, state) in started {
            let url = format!("http://{}/healthz/ready", state.readiness);
            wait_until(&spec.name, &mut process, || async {
                start::fetch(&url)
                    .await
                    .is_ok_and(|(status, _)| status == 200)
            })
            .await?;
            let role = Role::Waypoint {
                key: state.key(),
                ready_url: url,
            };
            members.push(Member::new(spec, role, process));
            waypoint_states.push(state);
        }

        let state = RunState {
            testbed_run: testbed.run_prefix().to_string(),
            work_dir: options.work_dir.clone(),
            controller_grpc,
            controller_metrics,
            controller_api: Some(slot.controller_api()),
            nodes,
            waypoints: waypoint_states,
            pids: members.iter().filter_map(Member::pid).collect(),
            pods: start::pod_states(&file, &testbed)?,
        };
        let mut state_files = vec![options.work_dir.join("state.json")];
        if options.record_current {
            if let Some(dir) = Path::new(CURRENT_RUN).parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            state_files.push(CURRENT_RUN.into());
        }
        let text = serde_json::to_string_pretty(&state).expect("state serializes");
        for path in &state_files {
            write(path, &text)?;
        }
        let (shared, events) = Shared::new(members, state, state_files);
        let mut mesh = LocalMesh {
            file,
            mesh_path,
            shared,
            supervisor: None,
            events: Some(events),
            apps: Vec::new(),
            relays,
            testbed: Some(testbed),
            _slot: slot,
            record_current: options.record_current,
            remove_work_dir: options.remove_work_dir,
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
            mesh.apps = start::apps(&mesh, &options.binaries)?;
        }
        mesh.supervisor =
            Some(
                Supervisor::start(mesh.shared.clone()).map_err(|source| LocalError::Io {
                    what: "starting the supervisor's thread".into(),
                    source,
                })?,
            );
        Ok(mesh)
    }

    /// Hands a pod to its node's ztunnel (as a CNI plugin would on pod start); a restarted
    /// ztunnel gets it again.
    pub async fn add_pod(
        &self,
        uid: &str,
        node: &str,
        namespace: &str,
        name: &str,
    ) -> Result<(), LocalError> {
        let netns = self.pod(namespace, name)?.netns().path().to_path_buf();
        let socket = self.node_state(node)?.socket;
        let command = node_agent::Command::Add {
            uid: uid.into(),
            netns: netns.clone(),
            exclude_ports: vec![BENCH_DIRECT_PORT],
            pod_uid: None,
        };
        self.node_agent(&socket, uid, &command).await?;
        self.shared.add_pod(node, uid, &netns);
        Ok(())
    }

    /// Takes a pod away from its ztunnel (as on pod deletion).
    pub async fn remove_pod(&self, uid: &str, node: &str) -> Result<(), LocalError> {
        let socket = self.node_state(node)?.socket;
        self.shared.remove_pod(node, uid);
        let command = node_agent::Command::Remove {
            uid: uid.into(),
            pod_uid: None,
        };
        self.node_agent(&socket, uid, &command).await
    }

    /// Whether the node's ztunnel holds the pod (the CNI plugin's CHECK asks the same).
    pub async fn ztunnel_holds(&self, uid: &str, node: &str) -> Result<bool, LocalError> {
        let socket = self.node_state(node)?.socket;
        let command = node_agent::Command::Check { uid: uid.into() };
        self.ask_node_agent(&socket, uid, &command).await
    }

    /// An add or a remove, which ztunnel answers `ok: true` or with the reason it refused.
    async fn node_agent(
        &self,
        socket: &Path,
        uid: &str,
        command: &node_agent::Command,
    ) -> Result<(), LocalError> {
        match self.ask_node_agent(socket, uid, command).await? {
            true => Ok(()),
            false => Err(LocalError::NodeAgent {
                pod: uid.into(),
                reason: "ztunnel answered ok: false".into(),
            }),
        }
    }

    /// ztunnel's `ok`, or the reason it refused or could not be asked.
    async fn ask_node_agent(
        &self,
        socket: &Path,
        uid: &str,
        command: &node_agent::Command,
    ) -> Result<bool, LocalError> {
        match node_agent::send(socket, command).await {
            Ok(Reply::Ok { ok }) => Ok(ok),
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

    pub fn file(&self) -> &MeshFile {
        &self.file
    }

    pub fn mesh_path(&self) -> &Path {
        &self.mesh_path
    }

    /// The run state as it is now (pids change when the supervisor restarts a process).
    pub fn state(&self) -> RunState {
        self.shared.state()
    }

    pub fn testbed(&self) -> &Testbed {
        self.testbed.as_ref().expect("present until down")
    }

    pub fn node_state(&self, node: &str) -> Result<NodeState, LocalError> {
        self.state().node(node).cloned()
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
            .pod(&spec.node, &start::testbed_pod_name(namespace, name))?)
    }

    /// What the supervisor did so far ("ztunnel on node-b exited (signal 9); restarted").
    pub fn events(&self) -> Vec<Event> {
        self.shared.events()
    }

    /// The supervisor's events as they happen, for one reader (`ambit up`'s live output).
    pub fn take_events(&mut self) -> Option<mpsc::UnboundedReceiver<Event>> {
        self.events.take()
    }

    pub fn controller_pid(&self) -> Option<u32> {
        self.shared.pid(CONTROLLER)
    }

    /// The node's ztunnel's pid now; `None` while it is down.
    pub fn ztunnel_pid(&self, node: &str) -> Result<Option<u32>, LocalError> {
        Ok(self.shared.pid(self.ztunnel_index(node)?))
    }

    fn ztunnel_index(&self, node: &str) -> Result<usize, LocalError> {
        self.shared
            .ztunnel_index(node)
            .ok_or_else(|| LocalError::UnknownNode { node: node.into() })
    }

    /// A waypoint of the mesh file: its addresses, its relayed ports and its pid now.
    pub fn waypoint(&self, namespace: &str, name: &str) -> Result<WaypointState, LocalError> {
        self.state().waypoint(namespace, name).cloned()
    }

    /// The waypoint's pid now; `None` while it is down.
    pub fn waypoint_pid(&self, namespace: &str, name: &str) -> Result<Option<u32>, LocalError> {
        Ok(self.shared.pid(self.waypoint_index(namespace, name)?))
    }

    fn waypoint_index(&self, namespace: &str, name: &str) -> Result<usize, LocalError> {
        let key = format!("{namespace}/{name}");
        self.shared
            .waypoint_index(&key)
            .ok_or(LocalError::UnknownWaypoint { waypoint: key })
    }

    /// Stops a waypoint with SIGTERM (it drains); it stays down, its addresses unanswered,
    /// until [`LocalMesh::start_waypoint`]. Whether it exited by itself within the grace.
    pub fn stop_waypoint(&self, namespace: &str, name: &str) -> Result<bool, LocalError> {
        Ok(self.shared.stop(
            self.waypoint_index(namespace, name)?,
            Duration::from_secs(10),
        ))
    }

    /// SIGKILLs a waypoint (a crash).
    pub fn kill_waypoint(
        &self,
        namespace: &str,
        name: &str,
        after: AfterKill,
    ) -> Result<(), LocalError> {
        let index = self.waypoint_index(namespace, name)?;
        self.shared.kill(index, after == AfterKill::StayDown);
        Ok(())
    }

    /// Lets the supervisor start a stopped or held waypoint again.
    pub fn start_waypoint(&self, namespace: &str, name: &str) -> Result<(), LocalError> {
        self.shared.resume(self.waypoint_index(namespace, name)?);
        Ok(())
    }

    /// Where a pod's sample server logs each request it serves (a JSON line each; see
    /// `apps::AccessLine`).
    pub fn app_log(&self, namespace: &str, pod: &str) -> PathBuf {
        start::app_log(&self.state().work_dir, namespace, pod)
    }

    /// Kills the controller at once and leaves it down (the config source dies; the data plane
    /// must carry on).
    pub fn kill_controller(&self) {
        self.shared.kill(CONTROLLER, true);
    }

    /// SIGKILLs a node's ztunnel (a crash: its rules stay in the pods, its sockets go).
    pub fn kill_ztunnel(&self, node: &str, after: AfterKill) -> Result<(), LocalError> {
        let index = self.ztunnel_index(node)?;
        self.shared.kill(index, after == AfterKill::StayDown);
        Ok(())
    }

    /// Lets the supervisor start a ztunnel that was killed with [`AfterKill::StayDown`] or
    /// stopped; it gets its pods back once ready.
    pub fn start_ztunnel(&self, node: &str) -> Result<(), LocalError> {
        self.shared.resume(self.ztunnel_index(node)?);
        Ok(())
    }

    /// Stops a node's ztunnel with SIGTERM (it drains and removes its rules); it stays down.
    pub fn stop_ztunnel(&self, node: &str) -> Result<bool, LocalError> {
        Ok(self
            .shared
            .stop(self.ztunnel_index(node)?, Duration::from_secs(10)))
    }

    /// Stops everything and removes every namespace, link, rule and process it made.
    pub fn down(mut self) -> Result<(), LocalError> {
        self.stop_processes(Duration::from_secs(10));
        if let Some(tb) = self.testbed.take() {
            tb.destroy()?;
        }
        if self.remove_work_dir {
            let dir = self.state().work_dir.clone();
            std::fs::remove_dir_all(&dir).map_err(|source| LocalError::Io {
                what: format!("removing {}", dir.display()),
                source,
            })?;
        }
        Ok(())
    }

    /// The supervisor first, so nothing is started again while the rest stops.
    fn stop_processes(&mut self, ztunnel_grace: Duration) {
        self.supervisor = None;
        self.apps.clear();
        self.shared.stop_all(ztunnel_grace, Duration::from_secs(5));
        self.relays.clear();
        if self.record_current {
            let _ = std::fs::remove_file(CURRENT_RUN);
        }
    }
}

impl Drop for LocalMesh {
    fn drop(&mut self) {
        // On an error path or a panic: namespaces go with the testbed's Drop. Rules live
        // inside the pods' namespaces and go with them.
        self.stop_processes(Duration::from_secs(3));
    }
}

/// `text` with the mesh-wide policy mode set to audit: the controller reads it from the copy
/// in the work directory, so the user's file is left as it is.
fn observed(text: &str) -> Result<String, LocalError> {
    if text.lines().any(|l| l.starts_with("policyMode:")) {
        return Err(LocalError::ObserveConflict);
    }
    Ok(format!("policyMode: audit\n{text}"))
}

#[cfg(test)]
mod observe_tests {
    use super::*;

    #[test]
    fn observer_mode_sets_the_mesh_wide_policy_mode_and_refuses_a_file_that_sets_its_own() {
        let text = observed(EMBEDDED_MESH).unwrap();
        let model = file::parse(&text, "observed").unwrap().model;
        assert!(model.policies().count() > 0);
        assert!(model.policies().all(|p| p.dry_run), "every policy dry-run");
        let own = format!("policyMode: enforce\n{EMBEDDED_MESH}");
        assert!(matches!(observed(&own), Err(LocalError::ObserveConflict)));
    }
}
