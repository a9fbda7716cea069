//! The floor (`--relay`): the same path carried by a pair of plain TCP relays
//! (`bench-relay`, src/bin/bench-relay.rs) where the ztunnels would be. Each relay only reads
//! and writes, so the pair pays what any proxy that must see the bytes pays at least: three TCP
//! connections where direct has one, a copy into and out of user space at each hop, a redirect
//! on the client side. What it cannot reach on this machine, no proxy with TLS and HTTP/2 on top
//! can: its figures beside Istio's show which of the targets a user-space proxy could meet.
//!
//! Its pods are a client and server on the same nodes, left out of Ambit's mesh, laid out as
//! Istio's path is ([`super::istio`]): the client's connections to the bench port are
//! redirected to the client-side relay on [`OUTBOUND_PORT`], which connects to the server-side
//! relay on the server pod's [`TUNNEL_PORT`], which connects to the server.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};

use ambit_benches::tools::wait_port;
use ambit_cli::local::BENCH_MESH_PORT;
use ambit_testbed::{Netns, NetnsChild};

/// The ports the relays listen on: the same as the ztunnels' outbound and HBONE ports.
const OUTBOUND_PORT: u16 = 15001;
const TUNNEL_PORT: u16 = 15008;

/// The relay binary, built with the benches.
const BINARY: &str = env!("CARGO_BIN_EXE_bench-relay");

/// The running relays, client side first; dropping them kills them.
pub struct Relays {
    children: Vec<NetnsChild>,
}

impl Relays {
    /// Starts a relay in `client`'s pod and one in `server`'s, and sends the client's
    /// connections to `server`'s bench port through them.
    pub fn start(
        dir: &Path,
        client: (&Netns, Ipv4Addr),
        server: (&Netns, Ipv4Addr),
    ) -> anyhow::Result<Self> {
        let tunnel = SocketAddr::from((server.1, TUNNEL_PORT));
        let app = SocketAddr::from((server.1, BENCH_MESH_PORT));
        // A redirect in OUTPUT sends to 127.0.0.1: the client's relay listens on every address.
        let outbound = SocketAddr::from((Ipv4Addr::UNSPECIFIED, OUTBOUND_PORT));
        let legs = [
            (client.0, outbound, client.1, tunnel, "client"),
            (server.0, tunnel, server.1, app, "server"),
        ];
        let mut children = Vec::new();
        for (netns, listen, ip, target, side) in legs {
            let log_path = dir.join(format!("relay-{side}.log"));
            let log = File::create(&log_path)?;
            children.push(
                netns.spawn(
                    Command::new(BINARY)
                        .arg(listen.to_string())
                        .arg(target.to_string())
                        .stdin(Stdio::null())
                        .stdout(log.try_clone()?)
                        .stderr(log),
                )?,
            );
            wait_port(netns, SocketAddr::from((ip, listen.port()))).map_err(|e| {
                let said = std::fs::read_to_string(&log_path).unwrap_or_default();
                anyhow::anyhow!("the {side} relay did not come up ({e}); it said: {said}")
            })?;
        }
        super::redirect(client.0, server.1, OUTBOUND_PORT)?;
        Ok(Relays { children })
    }

    /// Each relay's pid under its node's name (`node_a` for the client's), as the ztunnels'.
    pub fn pids(&self) -> Vec<(String, u32)> {
        ["node_a", "node_b"]
            .iter()
            .zip(&self.children)
            .map(|(node, child)| (node.to_string(), child.id()))
            .collect()
    }

    /// Whether either relay has exited.
    pub fn exited(&mut self) -> bool {
        self.children
            .iter_mut()
            .any(|c| !matches!(c.try_wait(), Ok(None)))
    }
}
