//! What a running local mesh is, for those outside the process that runs it: where its
//! programs are, and the run state `ambit config`, `ambit status`, `ambit bench` and
//! `ambit down` read (state.json in the work directory, and /run/ambit/current.json for the
//! run `ambit up` records).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::LocalError;

/// Where the mesh's programs are: built next to each other by cargo.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub controller: PathBuf,
    pub ztunnel: PathBuf,
    pub waypoint: PathBuf,
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
                waypoint: candidate.join("waypoint"),
                ambit: candidate.join("ambit"),
            };
            if [&b.controller, &b.ztunnel, &b.waypoint, &b.ambit]
                .iter()
                .all(|p| p.exists())
            {
                return Ok(b);
            }
        }
        Err(LocalError::BinariesMissing {
            dir: dir.to_path_buf(),
        })
    }
}

/// What a running local mesh is (written to `state.json` in the work directory, and
/// rewritten when the supervisor restarts a process).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunState {
    pub testbed_run: String,
    pub work_dir: PathBuf,
    /// The controller's discovery and CA gRPC address (port 15010 on its loopback address).
    pub controller_grpc: SocketAddr,
    /// The controller's metrics, readiness and /debug/syncz (port 15014).
    pub controller_metrics: SocketAddr,
    /// The controller's observation API (port 15016); absent in the state of a run started by
    /// an `ambit` from before the API.
    #[serde(default)]
    pub controller_api: Option<SocketAddr>,
    pub nodes: Vec<NodeState>,
    /// The mesh file's waypoints, each running in a namespace of its own on its node.
    #[serde(default)]
    pub waypoints: Vec<WaypointState>,
    /// The controller's, ztunnels' and waypoints' pids, for `ambit down` after a crash.
    pub pids: Vec<u32>,
    pub pods: Vec<PodState>,
}

/// A node's ztunnel. Each node has its own loopback address and ztunnel's usual ports on it
/// (see `ports`): each port answers only its own routes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    /// `/config_dump` and the other debug routes (port 15000).
    pub admin: SocketAddr,
    /// `/metrics` (port 15020).
    pub metrics: SocketAddr,
    /// `/healthz/ready` (port 15021).
    pub readiness: SocketAddr,
    pub socket: PathBuf,
    /// The ztunnel's process id (benchmarks read its CPU time and memory); `None` while it is
    /// down.
    #[serde(default)]
    pub pid: Option<u32>,
}

/// A waypoint of the mesh file: the `waypoint` program in a network namespace of its own on its
/// node, holding the waypoint's addresses, like a pod that ztunnel does not capture (what
/// reaches it is HBONE already). Its admin, metrics and readiness ports are relayed to a
/// loopback address of its own in the host (see `ports`), as each ztunnel's are, so the CLI
/// and tests reach them the same way.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WaypointState {
    pub name: String,
    pub namespace: String,
    pub node: String,
    /// The namespace's name under /var/run/netns.
    pub netns: String,
    pub ipv4: std::net::Ipv4Addr,
    pub ipv6: std::net::Ipv6Addr,
    /// `/config_dump` (relayed to its port 15000).
    pub admin: SocketAddr,
    /// `/metrics` (relayed to its port 15020).
    pub metrics: SocketAddr,
    /// `/healthz/ready` (relayed to its port 15021).
    pub readiness: SocketAddr,
    /// Its output: one JSON access-log line per request, and its own log.
    pub log: PathBuf,
    /// `None` while it is down.
    #[serde(default)]
    pub pid: Option<u32>,
}

impl WaypointState {
    /// `<namespace>/<name>`, as the controller and the live output call it.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
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

    pub fn node(&self, name: &str) -> Result<&NodeState, LocalError> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| LocalError::UnknownNode { node: name.into() })
    }

    pub fn waypoint(&self, namespace: &str, name: &str) -> Result<&WaypointState, LocalError> {
        self.waypoints
            .iter()
            .find(|w| w.namespace == namespace && w.name == name)
            .ok_or_else(|| LocalError::UnknownWaypoint {
                waypoint: format!("{namespace}/{name}"),
            })
    }
}
