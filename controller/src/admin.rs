//! The controller's HTTP endpoints: `/metrics` (Prometheus text), `/healthz/ready`, and
//! `/debug/syncz` (each subscribed proxy's desired and ACKed config versions).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::push::SyncTable;

/// What the endpoints report. `ready` turns true once the model is loaded and the gRPC port
/// listens, and false again when draining, so a load balancer stops sending new proxies here.
#[derive(Clone)]
pub struct Admin {
    pub metrics: PrometheusHandle,
    pub ready: Arc<AtomicBool>,
    /// Where each subscribed proxy stands, for `/debug/syncz`.
    pub sync: SyncTable,
}

impl Admin {
    fn respond(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        let text = |status: StatusCode, body: String| {
            Response::builder()
                .status(status)
                .header(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )
                .body(Full::new(Bytes::from(body)))
                .expect("static response parts are valid")
        };
        if request.method() != Method::GET {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET is served here\n".into(),
            );
        }
        match request.uri().path() {
            "/metrics" => text(StatusCode::OK, self.metrics.render()),
            "/debug/syncz" => Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(
                    serde_json::to_vec_pretty(&self.sync.snapshot()).expect("statuses serialize"),
                )))
                .expect("static response parts are valid"),
            "/healthz/ready" if self.ready.load(Ordering::Relaxed) => {
                text(StatusCode::OK, "ready\n".into())
            }
            "/healthz/ready" => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: starting or draining\n".into(),
            ),
            path => text(
                StatusCode::NOT_FOUND,
                format!("no {path} here: try /metrics, /healthz/ready or /debug/syncz\n"),
            ),
        }
    }

    /// Serves HTTP/1.1 on `listener` until `shutdown`.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors, usually: back off instead of spinning.
                        tracing::warn!(error = %e, "admin endpoint could not accept a connection");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = shutdown.cancelled() => return,
            };
            let admin = self.clone();
            let service = service_fn(move |request| {
                let response = admin.respond(&request);
                async move { Ok::<_, Infallible>(response) }
            });
            tokio::spawn(async move {
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = connection.await {
                    tracing::debug!(%peer, error = %e, "admin connection failed");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use metrics_exporter_prometheus::PrometheusBuilder;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn serves_metrics_and_readiness() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!("ambit_controller_nacks_total", "kind" => "ztunnel").increment(2);
        });
        let ready = Arc::new(AtomicBool::new(false));
        let admin = Admin {
            metrics: handle,
            ready: ready.clone(),
            sync: SyncTable::default(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(admin.serve(listener, shutdown.clone()));

        let metrics = get(addr, "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(
            metrics.contains("ambit_controller_nacks_total{kind=\"ztunnel\"} 2"),
            "{metrics}"
        );
        assert!(
            get(addr, "/healthz/ready")
                .await
                .starts_with("HTTP/1.1 503")
        );
        ready.store(true, Ordering::Relaxed);
        assert!(
            get(addr, "/healthz/ready")
                .await
                .starts_with("HTTP/1.1 200")
        );
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        shutdown.cancel();
    }
}
