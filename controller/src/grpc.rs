//! The controller's one gRPC port: discovery and the CA side by side.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::ca::CaService;
use crate::push::DiscoveryService;

/// Serves both services on `listener` until `shutdown`, then stops accepting; open subscriptions
/// end themselves on the same signal.
pub async fn serve(
    listener: TcpListener,
    discovery: DiscoveryService,
    ca: CaService,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        // Proxies hold one long-lived stream; keepalives find a vanished one (and free its task)
        // without waiting for TCP to give up.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(discovery.into_server())
        .add_service(ca.into_server())
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.cancelled_owned())
        .await
}
