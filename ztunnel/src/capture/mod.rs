//! In-pod capture: for each meshed pod, redirect rules and ztunnel's listeners inside the pod's
//! own network namespace, and a dialer that opens connections from there.

mod netns;
pub mod rules;
mod sockets;

pub use netns::PodNetns;
pub use sockets::{PodDialer, listen, original_destination};

use std::net::SocketAddr;
use std::path::PathBuf;

/// ztunnel's listeners inside each pod. Never a destination: a connection aimed at one of
/// them would be dialled straight back into ztunnel.
pub const PROXY_PORTS: [u16; 3] = [
    rules::OUTBOUND_PORT,
    rules::INBOUND_PLAINTEXT_PORT,
    rules::HBONE_PORT,
];

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("could not open network namespace {}: {source} (does the pod still exist?)", path.display())]
    OpenNetns {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("could not enter network namespace {}: {errno} (ztunnel needs CAP_SYS_ADMIN: run it as root)", path.display())]
    EnterNetns { path: PathBuf, errno: nix::Error },
    #[error("could not listen on {addr} in {}: {source} (is another proxy capturing this pod?)", netns.display())]
    Listen {
        netns: PathBuf,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("could not run {tool}: {source} (install iptables: apt-get install -y iptables)")]
    RunTool {
        tool: String,
        source: std::io::Error,
    },
    #[error("{tool} failed in {}: {stderr}", netns.display())]
    ToolFailed {
        tool: String,
        netns: PathBuf,
        stderr: String,
    },
}
