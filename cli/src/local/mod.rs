//! Local meshes: a whole mesh on one host in network namespaces (the testbed), run from a
//! mesh file, with sample apps. Shared by `ambit up`, the e2e suite and the benchmarks.

pub mod apps;
pub mod bulk;
pub mod load;
mod mesh;
pub mod metrics;
pub mod ports;
mod process;
mod relay;
mod start;
mod state;
mod supervise;
mod waypoints;

pub use mesh::{AfterKill, LocalMesh, Options};
pub use state::{
    BENCH_DIRECT_PORT, BENCH_MESH_PORT, Binaries, CURRENT_RUN, NodeState, PodState, RunState,
    WaypointState,
};
pub use supervise::{Event, backoff};

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(transparent)]
    MeshFile(#[from] ambit_controller::source::file::FileError),
    #[error(transparent)]
    Testbed(#[from] ambit_testbed::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("could not start {what} ({program}): {source}")]
    Spawn {
        what: String,
        program: String,
        source: std::io::Error,
    },
    #[error("the mesh's programs (controller, ztunnel, waypoint, ambit) are not all next to {}: build them with `cargo build --release --bins`", dir.display())]
    BinariesMissing { dir: PathBuf },
    #[error("{what} exited ({status}) while starting; last lines of {}:\n{tail}", log.display())]
    Exited {
        what: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{what} was not ready after {waited:?}; last lines of {}:\n{tail}", log.display())]
    NotReady {
        what: String,
        waited: Duration,
        log: PathBuf,
        tail: String,
    },
    #[error("pod {pod} needs both an IPv4 and an IPv6 address in a local mesh")]
    PodAddresses { pod: String },
    #[error(
        "waypoint {waypoint} needs both an IPv4 and an IPv6 address (ipv4:, ipv6:) in its node's \
         pod range in a local mesh: it runs in a network namespace of its own there"
    )]
    WaypointAddresses { waypoint: String },
    #[error("ztunnel refused pod {pod}: {reason}")]
    NodeAgent { pod: String, reason: String },
    #[error(
        "observer mode asked for, but the mesh file sets its own top-level policyMode: remove that line, or run without --observe"
    )]
    ObserveConflict,
    #[error("no node {node} in this mesh")]
    UnknownNode { node: String },
    #[error("no pod {pod} in this mesh")]
    UnknownPod { pod: String },
    #[error("no waypoint {waypoint} in this mesh")]
    UnknownWaypoint { waypoint: String },
    #[error(
        "no local mesh is running (nothing at {}): start one with `ambit up`",
        state::CURRENT_RUN
    )]
    NoRun,
    #[error("{what} failed: {reason}")]
    Tool { what: String, reason: String },
    #[error(
        "no loopback addresses free for the mesh's ports (127.0.<1-254>.x and 127.1.<1-254>.x, \
         ports 15000, 15010, 15014, 15020, 15021): other local meshes hold them, or something \
         else listens there ({last_busy}); `ambit down` stops what a crashed run left"
    )]
    NoLoopbackSlot { last_busy: String },
}
