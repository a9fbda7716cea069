//! HBONE: TCP carried in HTTP/2 `CONNECT` streams over mutual TLS, wire-compatible with Istio's
//! ztunnel. The client pools HTTP/2 connections and multiplexes tunnels on them; the server
//! terminates them and hands each tunnel, with the peer's identity, to its caller.

mod client;
mod error;
mod keepalive;
mod limits;
mod linger;
mod pool;
mod request;
mod server;
mod stream;
mod target;
mod watch;

pub use client::{
    ClientSettings, ConnectRequest, DEFAULT_CLIENT_HANDSHAKE_TIMEOUT, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_POOL_IDLE_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT, Dialer, HboneClient, TcpDialer,
};
pub use error::{HandshakeStage, HboneError, Http2Failure, TlsFailure};
pub use limits::{
    ConnectionLimits, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_IDENTITY, DEFAULT_MAX_HANDSHAKES, Limit,
    LimitSettings,
};
pub use request::{TunnelHandler, TunnelRequest};
pub use server::{AuthorityCheck, HboneServer, Placement, ServeConnection, ServerSettings};
pub use stream::Tunnel;
pub use target::{Refusal, forwarded_for, tunnel_target};
pub use watch::{Abuse, FrameStats, FrameWatch, HeaderTimeout, WatchSettings};

use std::time::Duration;

/// The HBONE port every meshed pod (and waypoint) accepts tunnels on.
pub const HBONE_PORT: u16 = 15008;

/// Response header carrying why a tunnel was refused, so the client's logs say more than a
/// status code.
pub const ERROR_HEADER: &str = "ambit-error";

// HTTP/2 settings in the same range as Istio's ztunnel: windows large enough for a long stream
// to run at full speed over a fast link, and about a hundred tunnels per pooled connection.
pub(crate) const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
pub(crate) const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
pub(crate) const MAX_FRAME_SIZE: u32 = 1024 * 1024;
pub(crate) const MAX_SEND_BUFFER: usize = 1024 * 1024;
pub(crate) const MAX_STREAMS_PER_CONNECTION: u32 = 100;
pub(crate) const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
/// Streams a client may reset before the server accepted them, and streams the server may
/// reset for the client's errors, before the connection is closed with ENHANCE_YOUR_CALM
/// (rapid reset, CVE-2023-44487; stream stacking, CVE-2023-26964). A ztunnel never does
/// either in bulk: it resets a tunnel only when its client connection breaks.
pub(crate) const MAX_PENDING_ACCEPT_RESETS: usize = 50;
pub(crate) const MAX_LOCAL_ERROR_RESETS: usize = 256;
/// Streams this end aborted that it still recognises, and for how long (HBONE here; the
/// waypoint's HTTP/2 upstreams too). The peer's frames
/// already in flight when an abort (RST_STREAM) is sent arrive after it; h2 drops them quietly
/// for a stream it remembers, but answers one it has forgotten with a reset of its own that
/// counts toward the error-reset limit above, for the connection's whole life. With h2's
/// default of 50, a node whose applications abort more than 50 connections a second to one
/// peer eventually had its pooled connection closed, with every tunnel on it. A remembered
/// stream costs a few hundred bytes, so 4,096 bound it to about 1 MiB per connection, and only
/// while aborts are that frequent; a second outlasts any in-flight frame on a live link.
pub const REMEMBERED_RESETS: usize = 4096;
pub const REMEMBER_RESETS_FOR: Duration = Duration::from_secs(1);

/// Keepalive pings: a dead peer is noticed within `interval + timeout`.
#[derive(Debug, Clone, Copy)]
pub struct Keepalive {
    pub interval: Duration,
    pub timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
        }
    }
}
