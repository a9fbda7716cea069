//! The data path for one pod: outbound (15001), inbound HBONE (15008) and inbound plaintext
//! (15006), each on listeners inside the pod's namespace.

mod inbound;
mod outbound;
mod splice;

pub use inbound::{InboundHandler, serve_plaintext};
pub use outbound::serve_outbound;
pub use splice::splice;

use std::future::Future;
use std::net::SocketAddr;

use ambit_proto::drain::DrainWatch;
use tokio::net::{TcpListener, TcpStream};

use std::net::IpAddr;
use std::sync::Arc;

use ambit_proto::hbone::HboneClient;
use ambit_proto::identity::CertManager;
use parking_lot::RwLock;

use crate::capture::{PodDialer, PodNetns};
use crate::connections::ConnectionTracker;
use crate::metrics::{ConnectionLabels, Metrics, Reporter, Security};
use crate::state::{ProxyState, Service, Workload};

/// What every pod's proxy shares.
pub struct ProxyContext {
    pub state: Arc<RwLock<ProxyState>>,
    pub certs: CertManager,
    pub metrics: Arc<Metrics>,
    pub connections: Arc<ConnectionTracker>,
}

/// One captured pod.
pub struct PodContext {
    pub uid: Box<str>,
    pub netns: Arc<PodNetns>,
    pub dialer: PodDialer,
    /// HBONE from this pod: its connections are dialled from the pod's namespace, so they
    /// are pooled per pod.
    pub hbone: HboneClient,
}

impl ProxyContext {
    /// This pod's workload as the config says now.
    pub fn workload(&self, uid: &str) -> Option<Arc<Workload>> {
        self.state.read().workload(uid).cloned()
    }

    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<Arc<Workload>> {
        self.state.read().workload_by_ip(ip).cloned()
    }
}

fn unknown() -> String {
    "unknown".into()
}

/// Istio's labels for a connection between what is known of each side.
pub(crate) fn labels(
    reporter: Reporter,
    source: Option<&Workload>,
    source_principal: Option<&str>,
    destination: Option<&Workload>,
    service: Option<&Service>,
    security: Security,
) -> ConnectionLabels {
    ConnectionLabels {
        reporter,
        source_workload: source.map_or_else(unknown, |w| w.canonical_or_name()),
        source_workload_namespace: source.map_or_else(unknown, |w| w.namespace.to_string()),
        source_principal: source_principal.map_or_else(unknown, str::to_string),
        destination_workload: destination.map_or_else(unknown, |w| w.canonical_or_name()),
        destination_workload_namespace: destination
            .map_or_else(unknown, |w| w.namespace.to_string()),
        destination_principal: destination.map_or_else(unknown, |w| w.identity.to_string()),
        destination_service: service.map_or_else(unknown, |s| {
            if s.hostname.is_empty() {
                s.key.to_string()
            } else {
                s.hostname.to_string()
            }
        }),
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
        tokio::spawn(async move {
            work.await;
            drop(drain);
        });
    }
}
