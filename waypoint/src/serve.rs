//! The HTTP server side of one tunnel: hyper serves HTTP/1.1 or HTTP/2 (as detected or
//! declared) on the tunnel's inner stream and hands each request to the request path.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::detect::Protocol;
use crate::forward::{Downstream, Forwarder};

/// A client that sends no full request head within this long is dropped (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 keepalive: a dead client connection is noticed within interval + timeout.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `stream` until the client closes it or it fails; errors are the connection's end,
/// logged at debug (a client going away is normal).
pub async fn http<S>(
    stream: S,
    protocol: Protocol,
    forwarder: Arc<Forwarder>,
    downstream: Arc<Downstream>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: http::Request<Incoming>| {
        let forwarder = forwarder.clone();
        let downstream = downstream.clone();
        async move { Ok::<_, Infallible>(forwarder.handle(&downstream, request).await) }
    });
    let io = TokioIo::new(stream);
    let result = match protocol {
        Protocol::Http2 => {
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .max_concurrent_streams(1000)
                .serve_connection(io, service)
                .await
        }
        _ => {
            hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(true)
                .serve_connection(io, service)
                .await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "client HTTP connection ended with an error");
    }
}
