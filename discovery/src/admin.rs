//! A proxy's own HTTP endpoints (ztunnel's and the waypoint's), each on its own port as Istio
//! does: the config dump on loopback 15000 (it holds the mesh config the proxy was sent, and is
//! what `ambit config` reads), Prometheus metrics on 15020, readiness on 15021 for the kubelet.
//! Each port answers only its own routes. The proxy supplies the pages ([`AdminPages`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ambit_proto::drain::DrainWatch;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Longest a client of these ports may hold a connection (metrics scrapes take milliseconds).
const ADMIN_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// What the endpoints show; the proxy supplies it.
pub trait AdminPages: Send + Sync + 'static {
    /// JSON.
    fn config_dump(&self) -> impl Future<Output = Vec<u8>> + Send;
    /// `Err` says what is missing.
    fn ready(&self) -> Result<(), String>;
    /// Prometheus text.
    fn metrics(&self) -> String;
}

/// Which of the proxy's own ports a listener is, and so which routes it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminPort {
    /// 15000, loopback only: the config dump, and the others for convenience.
    Admin,
    /// 15020: Prometheus metrics.
    Metrics,
    /// 15021: readiness.
    Readiness,
}

impl AdminPort {
    fn name(self) -> &'static str {
        match self {
            AdminPort::Admin => "admin",
            AdminPort::Metrics => "metrics",
            AdminPort::Readiness => "readiness",
        }
    }

    fn routes(self) -> &'static [&'static str] {
        match self {
            AdminPort::Admin => &["/config_dump", "/healthz/ready", "/metrics"],
            AdminPort::Metrics => &["/metrics"],
            AdminPort::Readiness => &["/healthz/ready"],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "the admin address {addr} is not a loopback address: the config dump is served on loopback only (--admin-addr 127.0.0.1:15000)"
    )]
    AdminNotLoopback { addr: SocketAddr },
    #[error("could not listen on {addr} ({port} port): {source}")]
    Bind {
        addr: SocketAddr,
        port: &'static str,
        source: std::io::Error,
    },
}

/// Binds one of the proxy's own ports; the admin port only on loopback.
pub async fn bind(port: AdminPort, addr: SocketAddr) -> Result<TcpListener, AdminError> {
    if port == AdminPort::Admin && !addr.ip().is_loopback() {
        return Err(AdminError::AdminNotLoopback { addr });
    }
    TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind {
            addr,
            port: port.name(),
            source,
        })
}

pub async fn serve<P: AdminPages>(
    listener: TcpListener,
    port: AdminPort,
    pages: Arc<P>,
    drain: DrainWatch,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, port = port.name(), "accept failed; retrying in 100ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = drain.signaled() => return,
        };
        let pages = pages.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let pages = pages.clone();
                async move { Ok::<_, Infallible>(route(&*pages, port, req).await) }
            });
            // A scraper that stalls mid-request holds a socket no longer than this.
            let _ = tokio::time::timeout(
                ADMIN_CONNECTION_TIMEOUT,
                hyper::server::conn::http1::Builder::new()
                    .header_read_timeout(Some(ADMIN_CONNECTION_TIMEOUT))
                    .timer(hyper_util::rt::TokioTimer::new())
                    .serve_connection(TokioIo::new(stream), service),
            )
            .await;
        });
    }
}

async fn route<P: AdminPages>(
    pages: &P,
    port: AdminPort,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: Vec<u8>| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts")
    };
    let path = req.uri().path();
    if !port.routes().contains(&path) {
        let text = format!(
            "no such endpoint {path} on the {} port: it serves {}\n",
            port.name(),
            port.routes().join(", ")
        );
        return reply(StatusCode::NOT_FOUND, "text/plain", text.into_bytes());
    }
    match path {
        "/config_dump" => reply(
            StatusCode::OK,
            "application/json",
            pages.config_dump().await,
        ),
        "/healthz/ready" => match pages.ready() {
            Ok(()) => reply(StatusCode::OK, "text/plain", b"ready\n".to_vec()),
            Err(missing) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {missing}\n").into_bytes(),
            ),
        },
        _ => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            pages.metrics().into_bytes(),
        ),
    }
}
