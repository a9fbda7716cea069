//! Shared by the namespace tests.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use ambit_testbed::{Netns, Testbed};
use anyhow::{Context, ensure};

const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// True when this process may build namespaces. Otherwise the test is skipped with one line
/// saying why, except under CI (which runs as root), where a missing privilege is a failure.
pub fn privileged() -> bool {
    match Testbed::preflight() {
        Ok(()) => true,
        Err(err) if std::env::var_os("CI").is_some() => {
            panic!("CI is set, so the namespace tests must run, but preflight failed: {err}")
        }
        Err(err) => {
            eprintln!("skipping: this test needs real network namespaces, but {err}");
            false
        }
    }
}

/// Two nodes, `node-a` and `node-b`, each with pods `client` (.1) and `server` (.2).
pub fn two_nodes_two_pods() -> anyhow::Result<Testbed> {
    let mut tb = Testbed::new()?;
    for node in ["node-a", "node-b"] {
        let (c4, c6) = tb.add_node(node)?.pod_addrs(1)?;
        let (s4, s6) = tb.node(node)?.pod_addrs(2)?;
        tb.add_pod(node, "client", c4, c6)?;
        tb.add_pod(node, "server", s4, s6)?;
    }
    Ok(tb)
}

/// Listens on `server_addr` inside `server`, connects from inside `client`, and checks that a
/// request and a reply get through and that the server sees `client_addr` as the peer (no NAT,
/// right source address).
pub fn tcp_exchange(
    server: &Netns,
    server_addr: IpAddr,
    client: &Netns,
    client_addr: IpAddr,
) -> anyhow::Result<()> {
    let listener = server
        .run(|| TcpListener::bind((server_addr, 0)))?
        .with_context(|| format!("binding {server_addr} in {}", server.name()))?;
    let target: SocketAddr = listener.local_addr()?;
    let mut conn = client
        .run(|| TcpStream::connect_timeout(&target, IO_TIMEOUT))?
        .with_context(|| format!("connecting from {} to {target}", client.name()))?;
    // The handshake is done, so the connection is already waiting in the accept queue.
    let (mut accepted, peer) = listener.accept()?;
    ensure!(
        peer.ip() == client_addr,
        "server saw peer {peer}, expected {client_addr}"
    );
    for stream in [&conn, &accepted] {
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
    }
    conn.write_all(b"ping")?;
    let mut buf = [0u8; 4];
    accepted.read_exact(&mut buf)?;
    ensure!(&buf == b"ping", "server read {buf:?}");
    accepted.write_all(b"pong")?;
    conn.read_exact(&mut buf)?;
    ensure!(&buf == b"pong", "client read {buf:?}");
    Ok(())
}

/// Everything `ambit_testbed::leftovers` lists for `run`.
pub fn leftovers_of(run: &str) -> anyhow::Result<Vec<ambit_testbed::Leftover>> {
    Ok(ambit_testbed::leftovers()?
        .into_iter()
        .filter(|l| l.run() == Some(run))
        .collect())
}

/// Alive and not a zombie.
pub fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next();
        state != Some("Z")
    })
}
