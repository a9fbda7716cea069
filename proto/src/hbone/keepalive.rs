//! HTTP/2 PING keepalive, shared by client and server connections.

use h2::{Ping, PingPong};

use super::Keepalive;

/// Resolves when the peer failed to answer a ping in time (or pinging failed); never resolves
/// while the peer keeps answering.
pub(crate) async fn run(mut ping_pong: PingPong, settings: Keepalive) -> String {
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        match tokio::time::timeout(settings.timeout, ping_pong.ping(Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return format!("keepalive ping failed: {e}"),
            Err(_) => {
                return format!(
                    "peer did not answer a keepalive ping within {:?}",
                    settings.timeout
                );
            }
        }
    }
}
