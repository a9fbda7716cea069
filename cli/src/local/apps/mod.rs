//! The sample workloads of a local mesh: small servers and load drivers, run inside pod
//! namespaces as modes of the `ambit` binary (`ambit app serve`, `ambit app drive`), so a
//! local mesh needs no downloads. All are ordinary programs that know nothing of the mesh.
//!
//! - `http`: the HTTP server (HTTP/1.1 and HTTP/2 prior knowledge on the same port), whose
//!   answers a test shapes with the query string (`?delay_ms=2000`, `?fail=0.5`), and which
//!   serves gRPC's health service too (`grpc`).
//! - `client`: one request (`fetch`), and the driver `ambit up` runs in each client pod.
//! - `bulk`: keep-alive load and bulk transfers, for `ambit bench` and the benchmarks.

mod bulk;
mod client;
mod grpc;
mod http;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

pub use bulk::{BlastResult, LoadResult, blast, load};
pub use client::{DriveReport, Reply, drive, fetch, h2_requests, request};
pub use grpc::{FLAKY, STREAM_PREFIX, UNAVAILABLE};

/// What a sample server does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// Answers every HTTP request with `hello from <name>` (HTTP/1.1 or HTTP/2), shaped by the
    /// query string (see `http`), and gRPC's `grpc.health.v1.Health` (see `grpc`).
    HttpEcho,
    /// Sends back whatever it receives.
    TcpEcho,
    /// Reads everything until the client half-closes, then answers with the byte count (8
    /// bytes, big-endian): the far end of a throughput test.
    Sink,
}

/// One request a sample server served, as it logs it (one JSON line on stdout each, when
/// started with an access log): what tests count to know what reached a pod.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessLine {
    /// The pod that served it.
    pub pod: String,
    pub method: String,
    /// Path and query, e.g. `/upload?fail=1&id=7`; a gRPC method's path for gRPC.
    pub uri: String,
    /// "HTTP/1.1" or "HTTP/2.0".
    pub version: String,
    /// Request body bytes received.
    pub body_bytes: u64,
    /// The HTTP status answered (200 for any gRPC call).
    pub status: u16,
    /// gRPC only: the service named in the health request, and the status code answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_code: Option<i32>,
}

impl AccessLine {
    /// Writes it as one line on stdout (the app's log).
    fn emit(&self) {
        use std::io::Write;
        let line = serde_json::to_string(self).expect("access lines serialize");
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// The requests a sample server's log holds (lines that are not access lines are skipped).
pub fn read_access_log(path: &std::path::Path) -> Vec<AccessLine> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Serves on all addresses (v4 and v6) of each port until killed; with `access_log`, writes
/// an [`AccessLine`] per HTTP or gRPC request.
pub async fn serve(
    kind: ServerKind,
    ports: Vec<u16>,
    name: String,
    access_log: bool,
) -> std::io::Result<()> {
    let mut listeners = Vec::new();
    for port in ports {
        listeners.push(TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?);
        // IPv6 only when the pod has it; v4 alone still serves.
        let v6 = tokio::net::TcpSocket::new_v6().and_then(|s| {
            socket2::SockRef::from(&s).set_only_v6(true)?;
            s.set_reuseaddr(true)?;
            s.bind(SocketAddr::from(([0u16; 8], port)))?;
            s.listen(1024)
        });
        if let Ok(l) = v6 {
            listeners.push(l);
        }
    }
    serve_on(kind, listeners, name, access_log).await;
    Ok(())
}

/// Serves on listeners already bound until killed (tests bind port 0).
async fn serve_on(kind: ServerKind, listeners: Vec<TcpListener>, name: String, access_log: bool) {
    let echo = Arc::new(http::Echo::new(name, access_log));
    let tasks: Vec<_> = listeners
        .into_iter()
        .map(|l| tokio::spawn(accept_loop(l, kind, echo.clone())))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

async fn accept_loop(listener: TcpListener, kind: ServerKind, echo: Arc<http::Echo>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                eprintln!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let echo = echo.clone();
        tokio::spawn(async move {
            match kind {
                ServerKind::HttpEcho => http::serve_connection(echo, stream).await,
                ServerKind::TcpEcho => {
                    let (mut rd, mut wr) = stream.into_split();
                    let _ = tokio::io::copy(&mut rd, &mut wr).await;
                }
                ServerKind::Sink => {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut stream = stream;
                    let mut buf = vec![0u8; 256 * 1024];
                    let mut total: u64 = 0;
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        total += n as u64;
                    }
                    let _ = stream.write_all(&total.to_be_bytes()).await;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests;
