//! Inbound: tunnels arriving over HBONE on 15008 (identity proven by mTLS), and plaintext
//! connections from outside the mesh redirected to 15006. Both pass L4 authorization, then
//! are delivered to the app inside the pod's namespace. A tunnel from the waypoint the
//! destination uses was authorized at that waypoint (against the original client) and is not
//! judged again by the waypoint's own identity; it is counted as enforced upstream.

use std::net::SocketAddr;
use std::sync::Arc;

use ambit_discovery::ProxyState;
use ambit_discovery::state::{Decision, PolicySource, Workload};
use ambit_proto::drain::DrainWatch;
use ambit_proto::hbone::{TunnelHandler, TunnelRequest};
use ambit_proto::identity::SpiffeId;
use http::StatusCode;
use tokio::net::{TcpListener, TcpStream};

use super::splice::{carry, reset};
use super::{PodContext, ProxyContext, accept_loop, parties};
use crate::capture::{PROXY_PORTS, original_destination};
use crate::connections::{ConnectionInfo, Direction};
use crate::metrics::{FailureReason, Parties, Reporter, Security, Side};

pub struct InboundHandler {
    pub pod: Arc<PodContext>,
    pub ctx: Arc<ProxyContext>,
}

/// What the checks both inbound paths make decided, and the connection's metric labels.
struct Admission {
    labels: Parties,
    outcome: Result<Arc<Workload>, Refusal>,
    /// The waypoint the tunnel came from, when that waypoint serves the destination and so
    /// already enforced its authorization policies on the original client's identity.
    enforced_by: Option<Arc<str>>,
}

struct Refusal {
    status: StatusCode,
    reason: String,
    why: FailureReason,
}

/// The source as the destination side may name it: the workload at the peer's address only
/// if it is the identity the peer proved (an address says nothing a certificate does not
/// confirm); for plaintext, the workload at that address.
fn source_side(state: &ProxyState, identity: Option<&SpiffeId>, peer: SocketAddr) -> Side {
    let at_address = state.workload_by_ip(peer.ip()).cloned();
    match identity {
        Some(id) => {
            let proven = at_address.filter(|w| &w.identity == id);
            Side::new(proven, Some(id.clone()))
        }
        None => Side::new(at_address, None),
    }
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
    // One view of the config for every lookup this connection makes.
    let state = ctx.state.load();
    let source = source_side(&state, identity, peer);
    let Some(workload) = state.workload(&pod.uid).cloned() else {
        return Admission {
            labels: parties(
                Reporter::Destination,
                source,
                Side::unknown(),
                None,
                security,
            ),
            outcome: Err(Refusal {
                status: StatusCode::SERVICE_UNAVAILABLE,
                reason: format!("pod {} is not in ztunnel's config", pod.uid),
                why: FailureReason::UnknownSource,
            }),
            enforced_by: None,
        };
    };
    let labels = parties(
        Reporter::Destination,
        source,
        Side::meshed(&workload),
        state.service_of(&workload.uid, target.port()),
        security,
    );
    // Behind a waypoint, the peer is the waypoint, not the client: the waypoint judged the
    // client against this workload's policies, which would refuse the waypoint's own identity.
    let enforced_by = identity
        .and_then(|id| state.enforcing_waypoint(&workload, id))
        .map(|w| w.key.clone());
    // Port checks first: a connection aimed at ztunnel's own listeners would be dialled
    // straight back into them, each dial making another (a loop any outsider could start).
    let refusal = if PROXY_PORTS.contains(&target.port()) {
        Some(Refusal {
            status: StatusCode::BAD_REQUEST,
            reason: format!(
                "port {} is ztunnel's own and never a destination",
                target.port()
            ),
            why: FailureReason::ProxyPort,
        })
    } else if identity.is_none() && workload.strict_mtls {
        Some(Refusal {
            status: StatusCode::UNAUTHORIZED,
            reason: format!(
                "{}/{} requires mTLS (ambit.io/mtls-mode: strict) and this connection is plaintext from outside the mesh: mesh the client, or set the namespace's mode to permissive",
                workload.namespace, workload.name
            ),
            why: FailureReason::StrictMtls,
        })
    } else if enforced_by.is_some() {
        None
    } else {
        let verdict = state.authorize(
            &workload,
            &PolicySource {
                identity,
                ip: peer.ip(),
            },
            target.port(),
        );
        // AUDIT policies decide nothing; a match (on their L4 part, all ztunnel can see) is
        // reported and counted.
        for policy in &verdict.audited {
            tracing::info!(pod = %pod.uid, %peer, identity = ?identity.map(SpiffeId::as_str), %target, %policy, allowed = verdict.is_allowed(), "audited by authorization policy");
            ctx.metrics.policy_audited(policy);
        }
        // Observer mode: a dry-run policy would have refused what the enforced ones let in.
        if let Some(Decision::Deny { policy, reason }) = &verdict.would_deny {
            if let Some(suppressed) = ctx.refusal_log.check() {
                tracing::info!(pod = %pod.uid, %peer, identity = ?identity.map(SpiffeId::as_str), %target, %policy, %reason, suppressed, "would be denied: allowed only because the policy is in observer mode (ambit.io/policy-mode: audit)");
            }
            ctx.metrics.policy_would_deny(policy);
        }
        match verdict.decision {
            Decision::Allow { .. } => None,
            Decision::Deny { reason, .. } => Some(Refusal {
                status: StatusCode::UNAUTHORIZED,
                reason: format!("{reason} (change the authorization policy to allow it)"),
                why: FailureReason::PolicyDenied,
            }),
        }
    };
    drop(state);
    Admission {
        labels,
        outcome: match refusal {
            Some(r) => Err(r),
            None => Ok(workload),
        },
        enforced_by,
    }
}

impl TunnelHandler for InboundHandler {
    async fn handle(&self, request: TunnelRequest) {
        let (pod, ctx) = (&self.pod, &self.ctx);
        let peer = request.peer_addr;
        let target = request.authority;
        let Admission {
            labels: l,
            outcome,
            enforced_by,
        } = admit(ctx, pod, Some(&request.peer), peer, target);
        let workload = match outcome {
            Ok(w) => w,
            Err(refusal) => {
                if let Some(suppressed) = ctx.refusal_log.check() {
                    tracing::warn!(pod = %pod.uid, %peer, identity = %request.peer, %target, reason = %refusal.reason, suppressed, "refused inbound tunnel");
                }
                ctx.metrics.connection_failed(&l, refusal.why);
                request.refuse(refusal.status, &refusal.reason);
                return;
            }
        };
        if let Some(waypoint) = &enforced_by {
            tracing::debug!(pod = %pod.uid, %peer, identity = %request.peer, %target, %waypoint, "allowed inbound tunnel: authorization enforced upstream by waypoint {waypoint}");
            ctx.metrics.enforced_by_waypoint(&l, waypoint);
        }
        let tracked = ctx.connections.track(ConnectionInfo {
            source_identity: Some(request.peer.to_string()),
            destination_workload: Some(workload.uid.to_string()),
            ..ConnectionInfo::starting(
                Direction::Inbound,
                &pod.uid,
                // The original client is only a waypoint's to name: it judged that client.
                // Anyone else's claim is unproven, and the table shows the peer instead.
                enforced_by
                    .as_ref()
                    .and_then(|_| request.forwarded_for())
                    .unwrap_or(peer),
                target,
                "HBONE",
            )
        });
        let app = match pod.dialer.connect(target).await {
            Ok(app) => app,
            Err(e) => {
                let reason = format!("could not reach the app at {target}: {e}");
                if let Some(suppressed) = ctx.failure_log.check() {
                    tracing::info!(pod = %pod.uid, %peer, %reason, suppressed, "refused inbound tunnel");
                }
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
            if let Some(suppressed) = ctx.refusal_log.check() {
                tracing::warn!(pod = %pod.uid, %peer, error = %e, suppressed, "refused inbound connection: its original destination is unknown (was it redirected by ztunnel's rules?)");
            }
            let l = parties(
                Reporter::Destination,
                source_side(&ctx.state.load(), None, peer),
                Side::unknown(),
                None,
                Security::None,
            );
            ctx.metrics
                .connection_failed(&l, FailureReason::OriginalDestination);
            reset(stream);
            return;
        }
    };
    // Plaintext has no identity, so it never comes from a waypoint.
    let Admission {
        labels: l, outcome, ..
    } = admit(ctx, pod, None, peer, target);
    let workload = match outcome {
        Ok(w) => w,
        Err(refusal) => {
            if let Some(suppressed) = ctx.refusal_log.check() {
                tracing::warn!(pod = %pod.uid, %peer, %target, reason = %refusal.reason, suppressed, "refused inbound plaintext connection");
            }
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
