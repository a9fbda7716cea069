//! Why a request to an endpoint failed, typed so the retry layer, outlier detection and the
//! local reply classify it by matching, never by wording.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ambit_proto::hbone::HboneError;

use super::HttpVersion;
use crate::breaker::Overflow;

/// Sources are behind `Arc` so that one failed connection attempt can be handed to every
/// request that waited on it (HTTP/2 dials are shared).
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// TCP, HBONE and the HTTP handshake together took longer than the connect timeout.
    #[error("timed out connecting to {endpoint} after {timeout:?}")]
    ConnectTimeout {
        endpoint: SocketAddr,
        timeout: Duration,
    },
    /// TCP connect to an endpoint outside the mesh failed (refused, unreachable).
    #[error("could not connect to {endpoint}: {source}")]
    Connect {
        endpoint: SocketAddr,
        source: Arc<io::Error>,
    },
    /// The HBONE tunnel to a meshed endpoint could not be opened: connection or handshake
    /// failure, the wrong identity, or the destination refusing the tunnel (its status and
    /// `ambit-error` reason are in the source).
    #[error("could not open an HBONE tunnel to {endpoint}: {source}")]
    Hbone {
        endpoint: SocketAddr,
        source: Arc<HboneError>,
    },
    /// The HTTP handshake on a new connection failed (HTTP/2 preface, say).
    #[error("the {version} handshake with {endpoint} failed: {source}")]
    Handshake {
        endpoint: SocketAddr,
        version: HttpVersion,
        source: Arc<hyper::Error>,
    },
    /// The connection closed before it took the request: nothing of it was written.
    #[error("the {version} connection to {endpoint} closed before the request was sent: {source}")]
    ClosedBeforeSend {
        endpoint: SocketAddr,
        version: HttpVersion,
        source: Arc<hyper::Error>,
    },
    /// The connection failed (closed, reset, I/O error) after the request was at least partly
    /// written and before the response headers arrived.
    #[error(
        "the {version} connection to {endpoint} ended before the response headers arrived: {source}"
    )]
    ConnectionTerminated {
        endpoint: SocketAddr,
        version: HttpVersion,
        source: Arc<hyper::Error>,
    },
    /// The endpoint reset the request's HTTP/2 stream (or closed the connection with an
    /// HTTP/2 error) after the request was sent.
    #[error("{endpoint} reset the request's HTTP/2 stream: {source}")]
    StreamReset {
        endpoint: SocketAddr,
        source: Arc<hyper::Error>,
    },
    /// The response could not be parsed.
    #[error("{endpoint} sent an invalid {version} response: {source}")]
    InvalidResponse {
        endpoint: SocketAddr,
        version: HttpVersion,
        source: Arc<hyper::Error>,
    },
    /// Sending stopped on our side after it started: the request body failed (the client went
    /// away mid-upload) or hyper refused the request as given.
    #[error("sending the request to {endpoint} stopped on our side: {source}")]
    RequestAborted {
        endpoint: SocketAddr,
        source: Arc<hyper::Error>,
    },
    /// The service's circuit breaker refused the request a wait for a connection (nothing was
    /// sent).
    #[error("no connection to {endpoint}: {overflow}")]
    Overflow {
        endpoint: SocketAddr,
        overflow: Overflow,
    },
}

impl UpstreamError {
    /// The endpoint (pod IP and target port) the request was for.
    pub fn endpoint(&self) -> SocketAddr {
        match self {
            UpstreamError::ConnectTimeout { endpoint, .. }
            | UpstreamError::Connect { endpoint, .. }
            | UpstreamError::Hbone { endpoint, .. }
            | UpstreamError::Handshake { endpoint, .. }
            | UpstreamError::ClosedBeforeSend { endpoint, .. }
            | UpstreamError::ConnectionTerminated { endpoint, .. }
            | UpstreamError::StreamReset { endpoint, .. }
            | UpstreamError::InvalidResponse { endpoint, .. }
            | UpstreamError::RequestAborted { endpoint, .. }
            | UpstreamError::Overflow { endpoint, .. } => *endpoint,
        }
    }

    /// No byte of the request reached the endpoint: a retry (on this endpoint or another)
    /// cannot run the request twice, whatever its method.
    pub fn request_not_sent(&self) -> bool {
        match self {
            UpstreamError::ConnectTimeout { .. }
            | UpstreamError::Connect { .. }
            | UpstreamError::Hbone { .. }
            | UpstreamError::Handshake { .. }
            | UpstreamError::ClosedBeforeSend { .. }
            | UpstreamError::Overflow { .. } => true,
            UpstreamError::ConnectionTerminated { .. }
            | UpstreamError::StreamReset { .. }
            | UpstreamError::InvalidResponse { .. }
            | UpstreamError::RequestAborted { .. } => false,
        }
    }

    /// Envoy's response flag for the local reply, the access log and `response_flags`:
    /// `UF` no connection (upstream connection failure), `UC` the connection ended under the
    /// request (upstream connection termination), `UR` upstream remote reset, `UPE` upstream
    /// protocol error, `DC` the downstream side ended the request.
    pub fn response_flag(&self) -> &'static str {
        match self {
            UpstreamError::ConnectTimeout { .. }
            | UpstreamError::Connect { .. }
            | UpstreamError::Hbone { .. }
            | UpstreamError::Handshake { .. }
            | UpstreamError::ClosedBeforeSend { .. } => "UF",
            UpstreamError::ConnectionTerminated { .. } => "UC",
            UpstreamError::StreamReset { .. } => "UR",
            UpstreamError::InvalidResponse { .. } => "UPE",
            UpstreamError::RequestAborted { .. } => "DC",
            UpstreamError::Overflow { .. } => "UO",
        }
    }

    /// The circuit breaker's refusal, if that is what this is: the request must not be
    /// retried (nothing may queue past a limit) and says nothing about the endpoint.
    pub fn overflow(&self) -> Option<Overflow> {
        match self {
            UpstreamError::Overflow { overflow, .. } => Some(*overflow),
            _ => None,
        }
    }

    /// No connection could be made to the endpoint (outlier detection's connect failures):
    /// refused, unreachable, timed out, or the tunnel or HTTP handshake failed.
    pub fn connect_failure(&self) -> bool {
        match self {
            UpstreamError::Hbone { source, .. } => source.endpoint_unreachable(),
            UpstreamError::ConnectTimeout { .. }
            | UpstreamError::Connect { .. }
            | UpstreamError::Handshake { .. } => true,
            UpstreamError::ClosedBeforeSend { .. }
            | UpstreamError::ConnectionTerminated { .. }
            | UpstreamError::StreamReset { .. }
            | UpstreamError::InvalidResponse { .. }
            | UpstreamError::RequestAborted { .. }
            | UpstreamError::Overflow { .. } => false,
        }
    }

    /// Whether the failure counts against the endpoint's health (outlier detection): true for
    /// failures to reach it, false where the endpoint is fine and the problem is ours, the
    /// request's or policy (an HBONE 401, our own certificate).
    pub fn endpoint_unreachable(&self) -> bool {
        match self {
            UpstreamError::Hbone { source, .. } => source.endpoint_unreachable(),
            UpstreamError::ConnectTimeout { .. }
            | UpstreamError::Connect { .. }
            | UpstreamError::Handshake { .. }
            | UpstreamError::ClosedBeforeSend { .. }
            | UpstreamError::ConnectionTerminated { .. }
            | UpstreamError::StreamReset { .. }
            | UpstreamError::InvalidResponse { .. } => true,
            UpstreamError::RequestAborted { .. } | UpstreamError::Overflow { .. } => false,
        }
    }

    /// A failure from hyper on a request it took (its message was not handed back).
    pub(super) fn after_send(endpoint: SocketAddr, version: HttpVersion, e: hyper::Error) -> Self {
        let terminated = e.is_incomplete_message()
            || e.is_canceled()
            || e.is_closed()
            || e.is_timeout()
            || io_cause(&e);
        if e.is_user() {
            UpstreamError::RequestAborted {
                endpoint,
                source: Arc::new(e),
            }
        } else if e.is_parse() {
            UpstreamError::InvalidResponse {
                endpoint,
                version,
                source: Arc::new(e),
            }
        } else if terminated || version == HttpVersion::Http1 {
            UpstreamError::ConnectionTerminated {
                endpoint,
                version,
                source: Arc::new(e),
            }
        } else {
            // hyper wraps every HTTP/2 error that is not an I/O error as its "http2 error":
            // RST_STREAM, or GOAWAY with an error code.
            UpstreamError::StreamReset {
                endpoint,
                source: Arc::new(e),
            }
        }
    }
}

/// Whether an I/O error (reset, broken pipe) is among the causes.
fn io_cause(e: &hyper::Error) -> bool {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.is::<io::Error>() {
            return true;
        }
        cause = c.source();
    }
    false
}
