//! Tunnels arriving from ztunnels: each is resolved to the service (or workload) it is for,
//! refused when this waypoint does not serve it, then carried as HTTP (routed per request) or
//! as opaque TCP (L4 policy only), by the port's `appProtocol` or else its first bytes.

use std::sync::Arc;
use std::time::Duration;

use ambit_discovery::state::AppProtocol;
use ambit_proto::hbone::{TunnelHandler, TunnelRequest};

use crate::destination::Destination;
use crate::detect::{self, Protocol};
use crate::forward::{Downstream, Forwarder};
use crate::serve::HttpServer;
use crate::tcp::TcpForwarder;

/// How long a client may take to send its first bytes before an undeclared port is treated
/// as opaque TCP (server-first protocols send nothing).
const DETECT_WAIT: Duration = Duration::from_millis(500);

pub struct Ingress {
    /// "<namespace>/<name>" of this waypoint.
    pub key: String,
    pub forwarder: Arc<Forwarder>,
    pub tcp: Arc<TcpForwarder>,
    /// HTTP/1.1 and HTTP/2 on the tunnels, within the per-connection limits.
    pub http: Arc<HttpServer>,
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
        let client_addr = request.forwarded_for().unwrap_or(request.peer_addr);
        let downstream = Downstream {
            source: snapshot.mesh.workload_by_ip(client_addr.ip()).cloned(),
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
