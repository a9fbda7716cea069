//! The data path for one pod: outbound (15001), inbound HBONE (15008) and inbound plaintext
//! (15006), each on listeners inside the pod's namespace.

mod flows;
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
use std::net::SocketAddr;
use std::sync::Arc;

use ambit_discovery::state::{ProxyState, Service, Workload};
use ambit_discovery::telemetry;
use ambit_discovery::{Current, Lookups};
use ambit_proto::drain::DrainWatch;
use ambit_proto::hbone::HboneClient;
use ambit_proto::identity::CertManager;
use ambit_proto::log_limit::LogLimiter;
use tokio::net::{TcpListener, TcpStream};

use crate::capture::{PodDialer, PodNetns};
use crate::connections::ConnectionTracker;
use crate::metrics::{Metrics, Parties, Reporter, Security, Side};
use crate::workers::{self, DataWorkers};

/// Log lines a peer can cause (each refused connection) are limited to this many a second
/// per kind; the metrics count every one.
const REFUSAL_LOG_LINES_PER_SECOND: u32 = 5;

/// What every pod's proxy shares.
pub struct ProxyContext {
    /// The config, read without a lock: an update never makes a connection wait.
    pub state: Arc<Current<ProxyState>>,
    pub certs: CertManager,
    pub metrics: Arc<Metrics>,
    pub connections: Arc<ConnectionTracker>,
    /// Endpoints whose connects failed recently, left out of services' choice for a while.
    pub health: EndpointHealth,
    /// Refusals a client can cause at will (policy, strict mTLS, proxy ports).
    pub refusal_log: LogLimiter,
    /// Connections that could not be carried (upstream down, no healthy endpoint).
    pub failure_log: LogLimiter,
    /// Failed and tapped connections, and inbound flow shapes, for the controller.
    pub reporter: telemetry::Reporter,
    /// Destinations asked of the controller at their first connection (`--destinations
    /// on-demand`); `None` when the config holds every destination up front.
    pub lookups: Option<Arc<Lookups>>,
}

/// One captured pod.
pub struct PodContext {
    pub uid: Box<str>,
    pub netns: Arc<PodNetns>,
    pub dialer: PodDialer,
    /// HBONE from this pod, one pool per data worker: its connections are dialled from the
    /// pod's namespace, so they are pooled per pod, and per worker so that a tunnel's copy
    /// and the HTTP/2 connection carrying it run on one thread (see [`PodContext::hbone`]).
    pub pools: Box<[HboneClient]>,
    /// Where its connections run.
    pub workers: Arc<DataWorkers>,
    /// How long its connections may go on once the pod is drained (`--drain-timeout`).
    pub drain_grace: std::time::Duration,
}

impl PodContext {
    /// The pod's HBONE pool of the data worker running this thread; off the workers (unit
    /// tests on a plain runtime), the first pool.
    pub fn hbone(&self) -> &HboneClient {
        &self.pools[workers::current().unwrap_or(0) % self.pools.len()]
    }
}

impl ProxyContext {
    pub fn new(
        state: Arc<Current<ProxyState>>,
        certs: CertManager,
        metrics: Arc<Metrics>,
        connections: Arc<ConnectionTracker>,
        reporter: telemetry::Reporter,
        lookups: Option<Arc<Lookups>>,
    ) -> Self {
        ProxyContext {
            state,
            certs,
            metrics,
            connections,
            health: EndpointHealth::default(),
            refusal_log: LogLimiter::new(REFUSAL_LOG_LINES_PER_SECOND),
            failure_log: LogLimiter::new(REFUSAL_LOG_LINES_PER_SECOND),
            reporter,
            lookups,
        }
    }

    /// This pod's workload as the config says now.
    pub fn workload(&self, uid: &str) -> Option<Workload> {
        self.state.load().workload(uid).cloned()
    }
}

/// Who a connection is between, for its metrics.
pub(crate) fn parties(
    reporter: Reporter,
    source: Side,
    destination: Side,
    service: Option<&Arc<Service>>,
    security: Security,
) -> Parties {
    Parties {
        reporter,
        source,
        destination,
        service: service.cloned(),
        security,
    }
}

/// Accepts on one of a pod's listeners until the pod is drained, handing each connection to
/// the least loaded data worker, where a task of its own handles it and holds the drain watch
/// until the connection is done.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    pod: Arc<PodContext>,
    ctx: Arc<ProxyContext>,
    drain: DrainWatch,
    what: &'static str,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, Arc<PodContext>, Arc<ProxyContext>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handle = Arc::new(handle);
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
        let (handle, pod, ctx, drain) = (handle.clone(), pod.clone(), ctx.clone(), drain.clone());
        let workers = pod.workers.clone();
        workers.place(stream, move |stream| async move {
            let grace = pod.drain_grace;
            let work = handle(stream, peer, pod, ctx);
            tokio::select! {
                () = work => {}
                // Dropping `work` closes both sockets: forced at the drain deadline.
                () = async { drain.signaled().await; tokio::time::sleep(grace).await } => {}
            }
            drop(drain);
        });
    }
}
