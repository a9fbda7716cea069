//! The data path for one pod: outbound (15001), inbound HBONE (15008) and inbound plaintext
//! (15006), each on listeners inside the pod's namespace.

mod health;
mod inbound;
mod outbound;
mod splice;
mod upstream;

pub use health::EndpointHealth;
pub use inbound::{InboundHandler, serve_plaintext};
pub use outbound::serve_outbound;
pub use splice::splice;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_discovery::state::{ProxyState, Service, Workload};
use ambit_proto::drain::DrainWatch;
use ambit_proto::hbone::HboneClient;
use ambit_proto::identity::{CertManager, SpiffeId};
use ambit_proto::log_limit::LogLimiter;
use parking_lot::RwLock;
use tokio::net::{TcpListener, TcpStream};

use crate::capture::{PodDialer, PodNetns};
use crate::connections::ConnectionTracker;
use crate::metrics::{
    ConnectionLabels, Metrics, PeerLabels, Reporter, Security, ServiceLabels, UNKNOWN,
};

/// Log lines a peer can cause (each refused connection) are limited to this many a second
/// per kind; the metrics count every one.
const REFUSAL_LOG_LINES_PER_SECOND: u32 = 5;

/// What every pod's proxy shares.
pub struct ProxyContext {
    pub state: Arc<RwLock<ProxyState>>,
    pub certs: CertManager,
    pub metrics: Arc<Metrics>,
    pub connections: Arc<ConnectionTracker>,
    /// Endpoints whose connects failed recently, left out of services' choice for a while.
    pub health: EndpointHealth,
    /// Refusals a client can cause at will (policy, strict mTLS, proxy ports).
    pub refusal_log: LogLimiter,
    /// Connections that could not be carried (upstream down, no healthy endpoint).
    pub failure_log: LogLimiter,
}

/// One captured pod.
pub struct PodContext {
    pub uid: Box<str>,
    pub netns: Arc<PodNetns>,
    pub dialer: PodDialer,
    /// HBONE from this pod: its connections are dialled from the pod's namespace, so they
    /// are pooled per pod.
    pub hbone: HboneClient,
    /// How long its connections may go on once the pod is drained (`--drain-timeout`).
    pub drain_grace: std::time::Duration,
}

impl ProxyContext {
    pub fn new(
        state: Arc<RwLock<ProxyState>>,
        certs: CertManager,
        metrics: Arc<Metrics>,
        connections: Arc<ConnectionTracker>,
    ) -> Self {
        ProxyContext {
            state,
            certs,
            metrics,
            connections,
            health: EndpointHealth::default(),
            refusal_log: LogLimiter::new(REFUSAL_LOG_LINES_PER_SECOND),
            failure_log: LogLimiter::new(REFUSAL_LOG_LINES_PER_SECOND),
        }
    }

    /// This pod's workload as the config says now.
    pub fn workload(&self, uid: &str) -> Option<Arc<Workload>> {
        self.state.read().workload(uid).cloned()
    }

    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<Arc<Workload>> {
        self.state.read().workload_by_ip(ip).cloned()
    }
}

/// The cluster a workload runs in: its uid is `<cluster>//<kind>/<namespace>/<name>`.
fn cluster_of(w: &Workload) -> &str {
    w.uid
        .split_once("//")
        .map_or(UNKNOWN, |(cluster, _)| cluster)
}

/// Istio's labels for one side of a connection. `principal` is what that side proved (or,
/// for the destination of a tunnel, what it was required to prove): none on plaintext.
pub(crate) fn peer_labels(workload: Option<&Workload>, principal: Option<&SpiffeId>) -> PeerLabels {
    let Some(w) = workload else {
        // Nothing in the config at that address; a proven identity still names its namespace.
        let mut labels = PeerLabels::unknown();
        if let Some(id) = principal {
            labels.namespace = id.namespace().to_string();
            labels.principal = id.to_string();
        }
        return labels;
    };
    let canonical = w.canonical_or_name();
    PeerLabels {
        workload: w.name.to_string(),
        namespace: w.namespace.to_string(),
        principal: principal.map_or_else(|| UNKNOWN.into(), SpiffeId::to_string),
        canonical_revision: if w.canonical_revision.is_empty() {
            "latest".into()
        } else {
            w.canonical_revision.to_string()
        },
        canonical_service: canonical,
        cluster: cluster_of(w).to_string(),
    }
}

pub(crate) fn service_labels(service: Option<&Service>) -> ServiceLabels {
    service.map_or_else(ServiceLabels::unknown, |s| ServiceLabels {
        host: if s.hostname.is_empty() {
            s.key.to_string()
        } else {
            s.hostname.to_string()
        },
        name: s.name.to_string(),
        namespace: s.namespace.to_string(),
    })
}

pub(crate) fn labels(
    reporter: Reporter,
    source: PeerLabels,
    destination: PeerLabels,
    service: Option<&Service>,
    security: Security,
) -> ConnectionLabels {
    ConnectionLabels {
        reporter,
        source,
        destination,
        service: service_labels(service),
        security,
    }
}

/// Accepts on one of a pod's listeners until the pod is drained, handling each connection on a
/// task of its own that holds the drain watch until the connection is done.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    pod: Arc<PodContext>,
    ctx: Arc<ProxyContext>,
    drain: DrainWatch,
    what: &'static str,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, Arc<PodContext>, Arc<ProxyContext>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(pod = %pod.uid, error = %e, "{what} accept failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = drain.signaled() => return,
        };
        let work = handle(stream, peer, pod.clone(), ctx.clone());
        let drain = drain.clone();
        let grace = pod.drain_grace;
        tokio::spawn(async move {
            tokio::select! {
                () = work => {}
                // Dropping `work` closes both sockets: forced at the drain deadline.
                () = async { drain.signaled().await; tokio::time::sleep(grace).await } => {}
            }
            drop(drain);
        });
    }
}
