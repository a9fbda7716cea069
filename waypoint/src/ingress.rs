//! Tunnels arriving from ztunnels: each is resolved to the service (or workload) it is for,
//! refused when this waypoint does not serve it, then carried as HTTP (routed per request) or
//! as opaque TCP (L4 policy only), by the port's `appProtocol` or else its first bytes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ambit_discovery::state::AppProtocol;
use ambit_discovery::telemetry::baggage::SourceWorkload;
use ambit_proto::hbone::{TunnelHandler, TunnelRequest};
use ambit_proto::log_limit::LogLimiter;

use crate::destination::Destination;
use crate::detect::{self, Protocol};
use crate::forward::{Downstream, Forwarder};
use crate::serve::HttpServer;
use crate::tcp::TcpForwarder;

/// How long a client may take to send its first bytes before an undeclared port is treated
/// as opaque TCP (server-first protocols send nothing).
const DETECT_WAIT: Duration = Duration::from_millis(500);

/// At most this many warnings a second about forged or foreign client addresses.
const CLAIM_WARNINGS_PER_SECOND: u32 = 5;

pub struct Ingress {
    /// "<namespace>/<name>" of this waypoint.
    pub key: String,
    pub forwarder: Arc<Forwarder>,
    pub tcp: Arc<TcpForwarder>,
    /// HTTP/1.1 and HTTP/2 on the tunnels, within the per-connection limits.
    pub http: Arc<HttpServer>,
    /// Warnings about client addresses claimed by a peer that is not at that address.
    claims_log: LogLimiter,
}

impl Ingress {
    pub fn new(
        key: String,
        forwarder: Arc<Forwarder>,
        tcp: Arc<TcpForwarder>,
        http: Arc<HttpServer>,
    ) -> Self {
        Ingress {
            key,
            forwarder,
            tcp,
            http,
            claims_log: LogLimiter::new(CLAIM_WARNINGS_PER_SECOND),
        }
    }
}

/// The client a tunnel carries: the address its peer claims in `forwarded` when it is the
/// peer's own (a ztunnel dials the waypoint from inside the client pod, so the claim adds the
/// app's source port), else the peer's proven address, and the claim is returned as the
/// error. Any workload holding a mesh certificate can reach the waypoint and write the
/// header; believing another address would let it pass as any client in `ipBlocks` rules.
pub fn client_address(
    peer_addr: SocketAddr,
    claimed: Option<SocketAddr>,
) -> Result<SocketAddr, SocketAddr> {
    match claimed {
        None => Ok(peer_addr),
        Some(c) if c.ip().to_canonical() == peer_addr.ip().to_canonical() => {
            Ok(SocketAddr::new(peer_addr.ip().to_canonical(), c.port()))
        }
        Some(c) => Err(c),
    }
}

impl TunnelHandler for Ingress {
    async fn handle(&self, request: TunnelRequest) {
        let snapshot = self.forwarder.store().current();
        let destination = match Destination::resolve(&snapshot.mesh, request.authority, &self.key) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(peer = %request.peer, authority = %request.authority, error = %e, "tunnel refused");
                request.refuse(e.status(), &e.to_string());
                return;
            }
        };
        let client_addr = match client_address(request.peer_addr, request.forwarded_for()) {
            Ok(addr) => addr,
            Err(claimed) => {
                if let Some(suppressed) = self.claims_log.check() {
                    tracing::warn!(peer = %request.peer, peer_addr = %request.peer_addr, %claimed, suppressed,
                        "a tunnel claims to carry client {claimed} (forwarded header) from {}, which is not that address: ignored, policies, routing and telemetry use {} (a ztunnel dials from its pod's address; a proxy in between or a forged header sends another)",
                        request.peer_addr, request.peer_addr);
                }
                request.peer_addr
            }
        };
        let source = snapshot.mesh.workload_by_ip(client_addr.ip()).cloned();
        let claimed = match &source {
            Some(_) => None,
            None => request
                .headers
                .get("baggage")
                .and_then(|b| b.to_str().ok())
                .and_then(|b| SourceWorkload::decode(b, &request.peer)),
        };
        let downstream = Downstream {
            source,
            claimed,
            peer: request.peer.clone(),
            client_addr,
            destination,
        };
        drop(snapshot);
        let tunnel = match request.accept() {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(error = %e, "the client went away before its tunnel was accepted");
                return;
            }
        };
        if downstream.destination.app_protocol() == AppProtocol::Tcp {
            self.tcp.forward(tunnel, downstream).await;
            return;
        }
        // Any HTTP port may carry HTTP/1.1 or HTTP/2 with prior knowledge: the preface tells.
        let (protocol, stream) = match detect::detect(tunnel, DETECT_WAIT).await {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!(error = %e, "the client's tunnel failed before it spoke");
                return;
            }
        };
        match protocol {
            Protocol::Tcp => self.tcp.forward(stream, downstream).await,
            http => {
                let forwarder = self.forwarder.clone();
                self.http
                    .serve(stream, http, forwarder, Arc::new(downstream))
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_client_is_believed_only_at_the_peers_own_address() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        let cases: &[(&str, Option<&str>, Result<&str, &str>)] = &[
            // No claim: the peer is the client.
            ("10.244.1.2:40000", None, Ok("10.244.1.2:40000")),
            // A ztunnel's claim: same address, the app's port.
            (
                "10.244.1.2:40000",
                Some("10.244.1.2:51234"),
                Ok("10.244.1.2:51234"),
            ),
            // The same, seen on a dual-stack listener.
            (
                "[::ffff:10.244.1.2]:40000",
                Some("10.244.1.2:51234"),
                Ok("10.244.1.2:51234"),
            ),
            (
                "[fd00::2]:40000",
                Some("[fd00::2]:51234"),
                Ok("[fd00::2]:51234"),
            ),
            // Another address: not believed.
            (
                "10.244.1.2:40000",
                Some("10.244.9.9:51234"),
                Err("10.244.9.9:51234"),
            ),
            (
                "[::ffff:10.244.1.2]:40000",
                Some("127.0.0.1:1"),
                Err("127.0.0.1:1"),
            ),
        ];
        for (peer, claimed, want) in cases {
            let got = client_address(at(peer), claimed.map(at));
            let want = want.map(at).map_err(at);
            assert_eq!(got, want, "peer {peer}, claim {claimed:?}");
        }
    }
}
