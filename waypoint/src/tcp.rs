//! Opaque TCP through the waypoint: a tunnel whose port is `appProtocol: tcp` (or whose first
//! bytes are not HTTP) is carried to one endpoint of its service with L4 policy only: the
//! endpoint's authorization policies on the client's identity, as its ztunnel would apply them.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use ambit_discovery::state::Protocol as WorkloadProtocol;
use ambit_proto::copy::Stream;
#[cfg(doc)]
use ambit_proto::hbone::HBONE_PORT;
use ambit_proto::hbone::{ConnectRequest, HboneClient};
use ambit_proto::identity::SpiffeId;
use tokio::net::TcpStream;

use crate::destination::Destination;
use crate::endpoints::Backend;
use crate::forward::{Downstream, Forwarder};

pub struct TcpForwarder {
    hbone: HboneClient,
    identity: SpiffeId,
    forwarder: Arc<Forwarder>,
    connect_timeout: Duration,
    /// Where meshed endpoints accept HBONE ([`HBONE_PORT`]; tests use another).
    hbone_port: u16,
}

#[derive(Debug, thiserror::Error)]
enum TcpError {
    /// No endpoint, or denied by policy: the reason says which.
    #[error("{}", .0.detail)]
    Refused(crate::forward::Failure),
    #[error("connecting to {endpoint} failed: {reason}")]
    Connect { endpoint: String, reason: String },
}

impl TcpError {
    /// Envoy's response flag, for the report to the controller.
    fn flags(&self) -> &'static str {
        match self {
            TcpError::Refused(f) => f.flag.letters(),
            TcpError::Connect { .. } => "UF",
        }
    }
}

impl TcpForwarder {
    pub fn new(
        hbone: HboneClient,
        identity: SpiffeId,
        forwarder: Arc<Forwarder>,
        connect_timeout: Duration,
        hbone_port: u16,
    ) -> Self {
        TcpForwarder {
            hbone,
            identity,
            forwarder,
            connect_timeout,
            hbone_port,
        }
    }

    /// Carries `stream` to an endpoint until both sides are done; failures are logged (the
    /// client sees its connection closed).
    pub async fn forward<S>(&self, stream: S, down: Downstream)
    where
        S: Stream,
    {
        let started = std::time::SystemTime::now();
        let outcome = self.carry(stream, &down).await;
        let reporter = self.forwarder.telemetry().reporter();
        match &outcome {
            Ok((sent, received)) => {
                tracing::debug!(client = %down.peer, to = %down.destination.describe(), sent, received, "TCP connection done");
                crate::flows::observe_tcp(reporter, &down, started, (*sent, *received), None);
            }
            Err(e) => {
                tracing::info!(client = %down.peer, to = %down.destination.describe(), error = %e, "TCP connection through the waypoint failed");
                let policy = match e {
                    TcpError::Refused(f) => f.policy.as_deref(),
                    TcpError::Connect { .. } => None,
                };
                let failure = crate::flows::TcpFailure {
                    flags: e.flags(),
                    reason: e.to_string(),
                    policy,
                };
                crate::flows::observe_tcp(reporter, &down, started, (0, 0), Some(failure));
            }
        }
    }

    async fn carry<S>(&self, mut stream: S, down: &Downstream) -> Result<(u64, u64), TcpError>
    where
        S: Stream,
    {
        let snapshot = self.forwarder.store().current();
        let backend = match &down.destination {
            Destination::Service { service, port } => Backend::Service {
                service: service.clone(),
                port: port.port,
            },
            Destination::Workload { workload, port } => Backend::Workload {
                workload: workload.clone(),
                port: *port,
            },
        };
        let (endpoint, in_flight, _) = self
            .forwarder
            .endpoint(&snapshot, &backend, down, None, None)
            .map_err(TcpError::Refused)?;
        drop(snapshot);
        let connect_failed = |reason: String| TcpError::Connect {
            endpoint: endpoint.target.to_string(),
            reason,
        };
        let copied = match endpoint.workload.protocol {
            WorkloadProtocol::Hbone => {
                let request = ConnectRequest {
                    source: self.identity.clone(),
                    endpoint: std::net::SocketAddr::new(endpoint.target.ip(), self.hbone_port),
                    destination_identity: endpoint.workload.shared.identity.clone(),
                    authority: endpoint.target,
                    forwarded_for: Some(down.client_addr),
                    baggage: None,
                    traceparent: None,
                };
                let mut tunnel = self
                    .hbone
                    .connect(&request)
                    .await
                    .map_err(|e| connect_failed(e.to_string()))?;
                splice(&mut stream, &mut tunnel).await
            }
            WorkloadProtocol::Tcp => {
                let mut tcp =
                    tokio::time::timeout(self.connect_timeout, TcpStream::connect(endpoint.target))
                        .await
                        .map_err(|_| {
                            connect_failed(format!("no answer within {:?}", self.connect_timeout))
                        })?
                        .map_err(|e| connect_failed(e.to_string()))?;
                splice(&mut stream, &mut tcp).await
            }
        };
        drop(in_flight);
        copied.map_err(|e| TcpError::Connect {
            endpoint: endpoint.target.to_string(),
            reason: format!("the connection broke: {e}"),
        })
    }
}

/// Copies both ways until both sides are done (buffers growing with the flow); returns (bytes
/// to upstream, bytes back).
async fn splice<D, U>(downstream: &mut D, upstream: &mut U) -> io::Result<(u64, u64)>
where
    D: Stream,
    U: Stream,
{
    let (moved, result) = ambit_proto::copy::bidirectional(downstream, upstream, &()).await;
    result.map(|()| (moved.forward, moved.backward))
}
