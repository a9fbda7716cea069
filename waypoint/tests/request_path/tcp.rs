//! Opaque TCP through the waypoint: a port declared `appProtocol: tcp` is carried to one
//! endpoint of the service, both ways, without HTTP.

use std::sync::atomic::Ordering;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_port_is_carried_to_an_endpoint_both_ways() {
    let mesh = Mesh::start(Setup::default()).await;
    let tunnel = mesh
        .client()
        .tunnel(TCP_ECHO)
        .await
        .expect("the waypoint accepts the tunnel");
    let (mut read, mut write) = tokio::io::split(tunnel);
    // Not HTTP, and more than a window's worth so that both directions must flow together.
    let sent: Vec<u8> = (0..512 * 1024u32).map(|i| (i % 251) as u8).collect();
    let to_send = sent.clone();
    let writer = tokio::spawn(async move {
        write.write_all(b"\x00\x01hello, echo\r\n").await?;
        write.write_all(&to_send).await?;
        write.shutdown().await
    });
    let mut echoed = Vec::new();
    tokio::time::timeout(PATIENCE, read.read_to_end(&mut echoed))
        .await
        .expect("the echo ends in time")
        .expect("the echo comes back through the waypoint");
    writer
        .await
        .unwrap()
        .expect("the bytes go through the waypoint");
    let mut expected = b"\x00\x01hello, echo\r\n".to_vec();
    expected.extend_from_slice(&sent);
    assert_eq!(echoed.len(), expected.len());
    assert!(echoed == expected, "the bytes came back changed");
    let echo = mesh.app("echo");
    assert_eq!(echo.tunnels.load(Ordering::SeqCst), 1);
    assert_eq!(
        echo.peers.lock().iter().cloned().collect::<Vec<_>>(),
        vec![id("waypoint").to_string()]
    );
}
