//! A plain TCP port on loopback whose every connection is carried in an HBONE tunnel of its
//! own to the waypoint, as a pod's ztunnel carries an application's connection: raw clients
//! (a Python script speaking HTTP/2 frame by frame, a bare socket) reach the waypoint's HTTP
//! server through it byte for byte, and see their connection close when the waypoint closes
//! the tunnel.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use super::Client;

/// Starts the relay for tunnels to `authority` (a service VIP and port) as `client`; its
/// address. It runs until the test's runtime ends.
pub async fn relay(client: Client, authority: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let client = client.clone();
            tokio::spawn(async move {
                let Ok(mut tunnel) = client.tunnel(authority).await else {
                    return;
                };
                // Ends when either side closes or fails; dropping both closes the other.
                let _ = tokio::io::copy_bidirectional(&mut tcp, &mut tunnel).await;
            });
        }
    });
    addr
}
