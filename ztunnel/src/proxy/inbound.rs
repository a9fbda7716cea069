//! Inbound: tunnels arriving over HBONE on 15008 (identity proven by mTLS), and plaintext
//! connections from outside the mesh redirected to 15006. Both pass L4 authorization, then
//! are delivered to the app inside the pod's namespace.

use std::net::SocketAddr;
use std::sync::Arc;

use ambit_proto::drain::DrainWatch;
use ambit_proto::hbone::{TunnelHandler, TunnelRequest};
use ambit_proto::identity::SpiffeId;
use http::StatusCode;
use tokio::net::{TcpListener, TcpStream};

use super::splice::{carry, reset};
use super::{PodContext, ProxyContext, accept_loop, labels};
use crate::capture::original_destination;
use crate::connections::{ConnectionInfo, Direction};
use crate::metrics::{ConnectionLabels, FailureReason, Reporter, Security};
use crate::state::{Decision, PolicySource, Workload};

pub struct InboundHandler {
    pub pod: Arc<PodContext>,
    pub ctx: Arc<ProxyContext>,
}

/// What the checks both inbound paths make decided, and the connection's metric labels.
struct Admission {
    labels: ConnectionLabels,
    outcome: Result<Arc<Workload>, Refusal>,
}

struct Refusal {
    status: StatusCode,
    reason: String,
    why: FailureReason,
}

fn admit(
    ctx: &ProxyContext,
    pod: &PodContext,
    identity: Option<&SpiffeId>,
    peer: SocketAddr,
    target: SocketAddr,
) -> Admission {
    let security = if identity.is_some() {
        Security::MutualTls
    } else {
        Security::None
    };
    let source = ctx.workload_by_ip(peer.ip());
    let principal = identity.map(SpiffeId::as_str);
    let Some(workload) = ctx.workload(&pod.uid) else {
        return Admission {
            labels: labels(
                Reporter::Destination,
                source.as_deref(),
                principal,
                None,
                None,
                security,
            ),
            outcome: Err(Refusal {
                status: StatusCode::SERVICE_UNAVAILABLE,
                reason: format!("pod {} is not in ztunnel's config", pod.uid),
                why: FailureReason::UnknownSource,
            }),
        };
    };
    let labels = labels(
        Reporter::Destination,
        source.as_deref(),
        principal,
        Some(&workload),
        None,
        security,
    );
    let decision = ctx.state.read().authorize(
        &workload,
        &PolicySource {
            identity,
            ip: peer.ip(),
        },
        target.port(),
    );
    let outcome = match decision {
        Decision::Allow => Ok(workload),
        Decision::Deny { reason, .. } => Err(Refusal {
            status: StatusCode::UNAUTHORIZED,
            reason,
            why: FailureReason::PolicyDenied,
        }),
    };
    Admission { labels, outcome }
}

impl TunnelHandler for InboundHandler {
    async fn handle(&self, request: TunnelRequest) {
        let (pod, ctx) = (&self.pod, &self.ctx);
        let peer = request.peer_addr;
        let target = request.authority;
        let Admission { labels: l, outcome } = admit(ctx, pod, Some(&request.peer), peer, target);
        let workload = match outcome {
            Ok(w) => w,
            Err(refusal) => {
                tracing::warn!(pod = %pod.uid, %peer, identity = %request.peer, %target, reason = %refusal.reason, "refused inbound tunnel (change the authorization policy to allow it)");
                ctx.metrics.connection_failed(&l, refusal.why);
                request.refuse(refusal.status, &refusal.reason);
                return;
            }
        };
        let tracked = ctx.connections.track(ConnectionInfo {
            source_identity: Some(request.peer.to_string()),
            destination_workload: Some(workload.uid.to_string()),
            ..ConnectionInfo::starting(
                Direction::Inbound,
                &pod.uid,
                request.forwarded_for().unwrap_or(peer),
                target,
                "HBONE",
            )
        });
        let app = match pod.dialer.connect(target).await {
            Ok(app) => app,
            Err(e) => {
                let reason = format!("could not reach the app at {target}: {e}");
                tracing::info!(pod = %pod.uid, %peer, %reason, "refused inbound tunnel");
                ctx.metrics
                    .connection_failed(&l, FailureReason::UpstreamConnect);
                tracked.finish(0, 0, Some(reason.clone()));
                request.refuse(StatusCode::SERVICE_UNAVAILABLE, &reason);
                return;
            }
        };
        let tunnel = match request.accept() {
            Ok(t) => t,
            Err(e) => {
                tracked.finish(0, 0, Some(format!("client went away: {e}")));
                return;
            }
        };
        let counters = ctx.metrics.connection_opened(&l);
        carry(app, tunnel, true, counters, tracked).await;
    }
}

/// Plaintext inbound (15006): clients outside the mesh, with no identity to prove.
pub async fn serve_plaintext(
    listener: TcpListener,
    pod: Arc<PodContext>,
    ctx: Arc<ProxyContext>,
    drain: DrainWatch,
) {
    accept_loop(
        listener,
        pod,
        ctx,
        drain,
        "inbound",
        |stream, peer, pod, ctx| async move { handle_plaintext(stream, peer, &pod, &ctx).await },
    )
    .await
}

async fn handle_plaintext(
    stream: TcpStream,
    peer: SocketAddr,
    pod: &PodContext,
    ctx: &ProxyContext,
) {
    let _ = stream.set_nodelay(true);
    let target = match original_destination(&stream) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(pod = %pod.uid, %peer, error = %e, "dropping inbound connection: original destination unknown");
            return;
        }
    };
    let Admission { labels: l, outcome } = admit(ctx, pod, None, peer, target);
    let workload = match outcome {
        Ok(w) => w,
        Err(refusal) => {
            tracing::warn!(pod = %pod.uid, %peer, %target, reason = %refusal.reason, "refused inbound plaintext connection");
            ctx.metrics.connection_failed(&l, refusal.why);
            reset(stream);
            return;
        }
    };
    let tracked = ctx.connections.track(ConnectionInfo {
        destination_workload: Some(workload.uid.to_string()),
        ..ConnectionInfo::starting(Direction::Inbound, &pod.uid, peer, target, "TCP")
    });
    let app = match pod.dialer.connect(target).await {
        Ok(app) => app,
        Err(e) => {
            ctx.metrics
                .connection_failed(&l, FailureReason::UpstreamConnect);
            tracked.finish(0, 0, Some(format!("connect to {target}: {e}")));
            reset(stream);
            return;
        }
    };
    let counters = ctx.metrics.connection_opened(&l);
    carry(app, stream, true, counters, tracked).await;
}
