//! Pods and nodes reach each other over TCP, IPv4 and IPv6, same-node and cross-node.

use crate::common;

use std::io::Read;
use std::net::{IpAddr, TcpStream};
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncWriteExt;

#[test]
fn pods_on_the_same_node_talk_tcp_over_ipv4_and_ipv6() -> anyhow::Result<()> {
    if !common::privileged() {
        return Ok(());
    }
    let tb = common::two_nodes_two_pods()?;
    for node in ["node-a", "node-b"] {
        let server = tb.pod(node, "server")?;
        let client = tb.pod(node, "client")?;
        for (to, from) in [
            (IpAddr::from(server.ipv4()), IpAddr::from(client.ipv4())),
            (server.ipv6().into(), client.ipv6().into()),
        ] {
            common::tcp_exchange(server.netns(), to, client.netns(), from)
                .with_context(|| format!("{node}: client {from} -> server {to}"))?;
        }
    }
    Ok(())
}

#[test]
fn pods_on_different_nodes_talk_tcp_over_ipv4_and_ipv6() -> anyhow::Result<()> {
    if !common::privileged() {
        return Ok(());
    }
    let tb = common::two_nodes_two_pods()?;
    for (client_node, server_node) in [("node-a", "node-b"), ("node-b", "node-a")] {
        let server = tb.pod(server_node, "server")?;
        let client = tb.pod(client_node, "client")?;
        for (to, from) in [
            (IpAddr::from(server.ipv4()), IpAddr::from(client.ipv4())),
            (server.ipv6().into(), client.ipv6().into()),
        ] {
            common::tcp_exchange(server.netns(), to, client.netns(), from).with_context(|| {
                format!("{client_node}/client {from} -> {server_node}/server {to}")
            })?;
        }
    }
    Ok(())
}

#[test]
fn nodes_reach_pods_on_every_node_from_their_underlay_address() -> anyhow::Result<()> {
    if !common::privileged() {
        return Ok(());
    }
    let tb = common::two_nodes_two_pods()?;
    let node = tb.node("node-a")?;
    for pod in tb.pods() {
        for (to, from) in [
            (IpAddr::from(pod.ipv4()), IpAddr::from(node.ipv4())),
            (pod.ipv6().into(), node.ipv6().into()),
        ] {
            common::tcp_exchange(pod.netns(), to, node.netns(), from)
                .with_context(|| format!("node-a -> {}/{} at {to}", pod.node(), pod.name()))?;
        }
    }
    Ok(())
}

#[test]
fn a_tokio_runtime_serves_from_inside_a_pod() -> anyhow::Result<()> {
    if !common::privileged() {
        return Ok(());
    }
    let tb = common::two_nodes_two_pods()?;
    let server = tb.pod("node-b", "server")?;
    let addr = (server.ipv6(), 0);
    let listener = server.netns().run(|| std::net::TcpListener::bind(addr))??;
    let target = listener.local_addr()?;
    let serving = server
        .netns()
        .spawn_thread(move || -> std::io::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                listener.set_nonblocking(true)?;
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let (mut conn, _) = listener.accept().await?;
                conn.write_all(b"hello from a pod").await?;
                conn.shutdown().await
            })
        })?;

    let client = tb.pod("node-a", "client")?;
    let mut conn = client
        .netns()
        .run(|| TcpStream::connect_timeout(&target, Duration::from_secs(5)))??;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    assert_eq!(reply, "hello from a pod");
    serving
        .join()
        .map_err(|_| anyhow::anyhow!("the server thread panicked"))??;
    Ok(())
}
