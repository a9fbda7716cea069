//! The controller's observation API as the commands reach it: where it is (`--api`, else the
//! running local mesh's controller), JSON answers, and tap streams.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use crate::local::RunState;

/// How long a connection and an answer may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// `--api`, shared by the commands that read the observation API.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// The controller's observation API (host:port) [default: the running `ambit up` mesh's
    /// controller; for a cluster, `kubectl -n ambit-system port-forward deploy/ambit-controller
    /// 15016` and pass 127.0.0.1:15016].
    #[arg(long)]
    pub api: Option<SocketAddr>,
}

impl ApiArgs {
    /// Where the API is: as given, else the local mesh `ambit up` recorded.
    pub fn resolve(&self) -> anyhow::Result<SocketAddr> {
        if let Some(api) = self.api {
            return Ok(api);
        }
        let state = RunState::load_current().context(
            "no --api given and no local mesh found: pass the controller's observation API with --api",
        )?;
        state.controller_api.context(
            "the running local mesh was started by an ambit without the observation API: restart it with `ambit up`, or pass --api",
        )
    }
}

/// A path with its query, the empty parameters left out.
pub fn path_with_query(path: &str, params: &[(&str, String)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params.iter().filter(|(_, v)| !v.is_empty()) {
        query.append_pair(k, v);
    }
    let query = query.finish();
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    }
}

async fn request(api: SocketAddr, path: &str) -> anyhow::Result<http::Response<Incoming>> {
    let answer = async {
        let stream = tokio::net::TcpStream::connect(api)
            .await
            .with_context(|| format!("could not reach the observation API at {api} (is the controller running, and is this its --api-addr?)"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake with the observation API")?;
        tokio::spawn(connection);
        let request = http::Request::get(path)
            .header(http::header::HOST, api.to_string())
            .body(Empty::<Bytes>::new())
            .context("building the request")?;
        sender
            .send_request(request)
            .await
            .with_context(|| format!("GET {path} on {api}"))
    };
    let response = tokio::time::timeout(TIMEOUT, answer)
        .await
        .with_context(|| {
            format!("the observation API at {api} did not answer within {TIMEOUT:?}")
        })??;
    if response.status() != http::StatusCode::OK {
        let status = response.status();
        let body = tokio::time::timeout(TIMEOUT, response.into_body().collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
            .unwrap_or_default();
        bail!("the observation API refused GET {path} ({status}): {body}");
    }
    Ok(response)
}

/// `GET path` as JSON.
pub async fn get_json<T: DeserializeOwned>(api: SocketAddr, path: &str) -> anyhow::Result<T> {
    let response = request(api, path).await?;
    let body = tokio::time::timeout(TIMEOUT, response.into_body().collect())
        .await
        .with_context(|| format!("GET {path}: the answer did not end within {TIMEOUT:?}"))?
        .with_context(|| format!("GET {path}: reading the answer"))?
        .to_bytes();
    serde_json::from_slice(&body).with_context(|| format!("GET {path}: the answer is not the JSON expected (is the controller the same version as this ambit?)"))
}

/// A stream of JSON lines (`/api/tap`), read as they come.
pub struct Lines {
    body: Incoming,
    buffer: BytesMut,
}

impl Lines {
    pub async fn open(api: SocketAddr, path: &str) -> anyhow::Result<Lines> {
        Ok(Lines {
            body: request(api, path).await?.into_body(),
            buffer: BytesMut::new(),
        })
    }

    /// The next line parsed; `None` when the controller ended the stream.
    pub async fn next<T: DeserializeOwned>(&mut self) -> anyhow::Result<Option<T>> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line = self.buffer.split_to(end + 1);
                let line = &line[..end];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(line)
                    .map(Some)
                    .context("a tap line is not the JSON expected");
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(frame) => {
                    if let Ok(data) = frame.context("the tap stream broke")?.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use ambit_controller::source::file::{EMBEDDED_MESH, EMBEDDED_ORIGIN, parse};
    use ambit_controller::telemetry::TelemetryStore;
    use ambit_controller::telemetry::exposition;
    use ambit_controller::telemetry::http::ApiState;
    use ambit_controller::telemetry::series::ReportMetrics;
    use ambit_controller::telemetry::store::{Report, ReporterId, ReporterKind};
    use tokio_util::sync::DropGuard;

    use super::*;

    /// The controller's observation API on loopback over the demo mesh, and its store.
    pub async fn observation_api() -> (SocketAddr, TelemetryStore, DropGuard) {
        let model = parse(EMBEDDED_MESH, EMBEDDED_ORIGIN).unwrap().model;
        let (_tx, models) = tokio::sync::watch::channel(Arc::new(model));
        let store = TelemetryStore::default();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = listener.local_addr().unwrap();
        let state = ApiState {
            models,
            telemetry: store.clone(),
            shutdown: shutdown.clone(),
        };
        tokio::spawn(async move {
            let _models = _tx;
            state.serve(listener).await
        });
        (api, store, shutdown.drop_guard())
    }

    /// Node-a's ztunnel reports the recorded texts two seconds apart (by its clock).
    pub fn report_twice(store: &TelemetryStore) {
        let id = ReporterId {
            kind: ReporterKind::Ztunnel,
            name: "node-a".into(),
        };
        store.reports.opened(&id, Instant::now()).unwrap();
        for (unix_ms, text) in [
            (
                1000,
                include_str!("../../../controller/tests/fixtures/telemetry/ztunnel-node-a-1.prom"),
            ),
            (
                3000,
                include_str!("../../../controller/tests/fixtures/telemetry/ztunnel-node-a-2.prom"),
            ),
        ] {
            let samples = exposition::parse(text, usize::MAX).unwrap();
            store.reports.add_report(
                &id,
                Report {
                    received: Instant::now(),
                    unix_ms,
                    metrics: Arc::new(ReportMetrics::from_samples(&samples)),
                },
            );
        }
    }

    #[test]
    fn queries_leave_out_empty_parameters_and_escape_the_rest() {
        assert_eq!(path_with_query("/api/graph", &[]), "/api/graph");
        assert_eq!(
            path_with_query(
                "/api/tap",
                &[
                    ("workload", "client".into()),
                    ("method", String::new()),
                    ("path_prefix", "/a b&c".into())
                ]
            ),
            "/api/tap?workload=client&path_prefix=%2Fa+b%26c"
        );
    }
}
