//! ztunnel's own HTTP endpoints: the config dump (what `ambit config` reads), readiness and
//! Prometheus metrics, each on its own port as Istio does (15000, 15021, 15020). Each port
//! answers only its own routes: metrics and readiness are bound where Prometheus and the
//! kubelet reach them, while the config dump (the whole mesh's config) stays on loopback.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use ambit_proto::drain::DrainWatch;
use ambit_proto::identity::CertManager;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::connections::{ConnectionInfo, ConnectionTracker};
use crate::metrics::Metrics;
use crate::pods::Pods;
use crate::state::ProxyState;

/// Longest a client of these ports may hold a connection (metrics scrapes take milliseconds).
const ADMIN_CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What the admin endpoints read.
pub struct AdminState {
    pub node: String,
    pub state: Arc<RwLock<ProxyState>>,
    pub certs: CertManager,
    pub connections: Arc<ConnectionTracker>,
    pub pods: Arc<Pods>,
    pub metrics: Arc<Metrics>,
    /// Config updates applied so far (0: not ready).
    pub applied: watch::Receiver<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigDump {
    pub node: String,
    pub version: String,
    pub config_version: String,
    pub synced: bool,
    pub workloads: Vec<WorkloadView>,
    pub services: Vec<ServiceView>,
    pub policies: Vec<PolicyView>,
    pub certificates: Vec<CertificateView>,
    pub pods: Vec<PodView>,
    pub connections: Vec<ConnectionInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadView {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub node: String,
    pub addresses: Vec<String>,
    pub protocol: String,
    pub identity: String,
    pub healthy: bool,
    pub authorization_policies: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    pub name: String,
    pub hostname: String,
    pub vips: Vec<String>,
    pub ports: Vec<String>,
    pub endpoints: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyView {
    pub name: String,
    pub action: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateView {
    pub identity: String,
    pub serial: String,
    pub not_before: f64,
    pub not_after: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodView {
    pub uid: String,
    pub netns: String,
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl AdminState {
    pub async fn config_dump(&self) -> ConfigDump {
        let (workloads, services, policies, config_version) = {
            let s = self.state.read();
            let mut workloads: Vec<WorkloadView> = s
                .workloads()
                .map(|w| WorkloadView {
                    uid: w.uid.to_string(),
                    name: w.name.to_string(),
                    namespace: w.namespace.to_string(),
                    node: w.node.to_string(),
                    addresses: w.addresses.iter().map(|a| a.to_string()).collect(),
                    protocol: w.protocol.as_str().into(),
                    identity: w.identity.to_string(),
                    healthy: w.healthy,
                    authorization_policies: w
                        .authorization_policies
                        .iter()
                        .map(|p| p.to_string())
                        .collect(),
                })
                .collect();
            workloads.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            let mut services: Vec<ServiceView> = s
                .services()
                .map(|svc| ServiceView {
                    name: svc.key.to_string(),
                    hostname: svc.hostname.to_string(),
                    vips: svc.vips.iter().map(|a| a.to_string()).collect(),
                    ports: svc
                        .ports
                        .iter()
                        .map(|p| format!("{}->{}", p.port, p.target_port))
                        .collect(),
                    endpoints: svc.endpoints.iter().map(|e| e.to_string()).collect(),
                })
                .collect();
            services.sort_by(|a, b| a.name.cmp(&b.name));
            let mut policies: Vec<PolicyView> = s
                .policies()
                .map(|p| PolicyView {
                    name: p.key.to_string(),
                    action: format!("{:?}", p.action).to_uppercase(),
                })
                .collect();
            policies.sort_by(|a, b| a.name.cmp(&b.name));
            (
                workloads,
                services,
                policies,
                s.system_version().to_string(),
            )
        };
        let mut certificates: Vec<CertificateView> = self
            .certs
            .certificates()
            .iter()
            .map(|c| CertificateView {
                identity: c.identity().to_string(),
                serial: c.serial().to_string(),
                not_before: unix(c.not_before()),
                not_after: unix(c.not_after()),
            })
            .collect();
        certificates.sort_by(|a, b| a.identity.cmp(&b.identity));
        let synced = *self.applied.borrow() > 0;
        let pods = self.pods.captured().await;
        ConfigDump {
            node: self.node.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            config_version,
            synced,
            workloads,
            services,
            policies,
            certificates,
            pods: pods
                .into_iter()
                .map(|(uid, netns)| PodView { uid, netns })
                .collect(),
            connections: self.connections.snapshot(),
        }
    }

    async fn route(&self, port: AdminPort, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let reply = |status: StatusCode, content_type: &str, body: Vec<u8>| {
            Response::builder()
                .status(status)
                .header("content-type", content_type)
                .body(Full::new(Bytes::from(body)))
                .expect("static response parts")
        };
        let path = req.uri().path();
        if !port.serves(path) {
            return reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                format!(
                    "no such endpoint {path} on the {} port: it serves {}\n",
                    port.name(),
                    port.routes().join(", ")
                )
                .into_bytes(),
            );
        }
        match path {
            "/config_dump" => {
                let dump = self.config_dump().await;
                let body = serde_json::to_vec_pretty(&dump).expect("config dump serializes");
                reply(StatusCode::OK, "application/json", body)
            }
            "/healthz/ready" => {
                if *self.applied.borrow() > 0 {
                    reply(StatusCode::OK, "text/plain", b"ready\n".to_vec())
                } else {
                    reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        b"not ready: no config received from the controller yet\n".to_vec(),
                    )
                }
            }
            "/metrics" => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics.render(self.pods.server_limits()).into_bytes(),
            ),
            _ => unreachable!("AdminPort::serves admits only the routes above"),
        }
    }
}

/// Which of ztunnel's own ports a listener is, and so which routes it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminPort {
    /// 15000, loopback only: the config dump, and the others for convenience.
    Admin,
    /// 15020: Prometheus metrics.
    Metrics,
    /// 15021: readiness for the kubelet.
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

    fn serves(self, path: &str) -> bool {
        self.routes().contains(&path)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "the admin address {addr} is not a loopback address: the config dump holds the whole mesh's config and is served on loopback only (--admin-addr 127.0.0.1:15000)"
    )]
    AdminNotLoopback { addr: SocketAddr },
    #[error("could not listen on {addr} ({port} port): {source}")]
    Bind {
        addr: SocketAddr,
        port: &'static str,
        source: std::io::Error,
    },
}

/// Binds one of ztunnel's own ports; the admin port only on loopback.
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

pub async fn serve(
    listener: TcpListener,
    port: AdminPort,
    admin: Arc<AdminState>,
    drain: DrainWatch,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, port = port.name(), "accept failed; retrying in 100ms");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = drain.signaled() => return,
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.route(port, req).await) }
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
