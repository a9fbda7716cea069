//! Outbound: connections the pod's apps open, redirected to 15001. Each goes over HBONE to a
//! meshed destination (presenting the pod's identity, checking the destination's), or as plain
//! TCP to anything outside the mesh.

use std::net::SocketAddr;
use std::sync::Arc;

use ambit_proto::drain::DrainWatch;
use ambit_proto::hbone::{ConnectRequest, HBONE_PORT};
use tokio::net::{TcpListener, TcpStream};

use super::splice::{carry, reset};
use super::{PodContext, ProxyContext, accept_loop, labels};
use crate::capture::original_destination;
use crate::connections::{ConnectionInfo, Direction};
use crate::metrics::{FailureReason, Reporter, Security};
use crate::state::Upstream;

pub async fn serve_outbound(
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
        "outbound",
        |stream, peer, pod, ctx| async move { handle(stream, peer, &pod, &ctx).await },
    )
    .await
}

async fn handle(stream: TcpStream, peer: SocketAddr, pod: &PodContext, ctx: &ProxyContext) {
    let _ = stream.set_nodelay(true);
    let source = ctx.workload(&pod.uid);
    let source_principal = source.as_ref().map(|w| w.identity.to_string());
    let dst = match original_destination(&stream) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(pod = %pod.uid, %peer, error = %e, "dropping outbound connection: its original destination is unknown (was it redirected by ztunnel's rules?)");
            let l = labels(
                Reporter::Source,
                source.as_deref(),
                source_principal.as_deref(),
                None,
                None,
                Security::None,
            );
            ctx.metrics
                .connection_failed(&l, FailureReason::OriginalDestination);
            return;
        }
    };
    let Some(source) = source else {
        tracing::warn!(pod = %pod.uid, %peer, %dst, "refusing outbound connection: pod {} is not in ztunnel's config (removed, or config not yet received)", pod.uid);
        let l = labels(Reporter::Source, None, None, None, None, Security::None);
        ctx.metrics
            .connection_failed(&l, FailureReason::UnknownSource);
        reset(stream);
        return;
    };
    let upstream = ctx.state.read().resolve(dst);
    match upstream {
        Upstream::Hbone {
            workload,
            target,
            service,
        } => {
            let l = labels(
                Reporter::Source,
                Some(&source),
                source_principal.as_deref(),
                Some(&workload),
                service.as_deref(),
                Security::MutualTls,
            );
            let request = ConnectRequest {
                source: source.identity.clone(),
                endpoint: SocketAddr::new(target.ip(), HBONE_PORT),
                destination_identity: workload.identity.clone(),
                authority: target,
                forwarded_for: Some(peer),
                baggage: None,
                traceparent: None,
            };
            let tracked = ctx.connections.track(ConnectionInfo {
                source_identity: source_principal.clone(),
                destination_workload: Some(workload.uid.to_string()),
                destination_service: service.as_ref().map(|s| s.key.to_string()),
                ..ConnectionInfo::starting(Direction::Outbound, &pod.uid, peer, target, "HBONE")
            });
            let tunnel = match pod.hbone.connect(&request).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(pod = %pod.uid, %dst, %target, error = %e, "outbound HBONE connection failed");
                    ctx.metrics.connection_failed(&l, FailureReason::Hbone);
                    tracked.finish(0, 0, Some(e.to_string()));
                    reset(stream);
                    return;
                }
            };
            let counters = ctx.metrics.connection_opened(&l);
            carry(stream, tunnel, false, counters, tracked).await;
        }
        Upstream::Passthrough {
            target,
            workload,
            service,
        } => {
            let l = labels(
                Reporter::Source,
                Some(&source),
                source_principal.as_deref(),
                workload.as_deref(),
                service.as_deref(),
                Security::None,
            );
            let tracked = ctx.connections.track(ConnectionInfo {
                source_identity: source_principal.clone(),
                destination_workload: workload.as_ref().map(|w| w.uid.to_string()),
                destination_service: service.as_ref().map(|s| s.key.to_string()),
                ..ConnectionInfo::starting(Direction::Outbound, &pod.uid, peer, target, "TCP")
            });
            let upstream = match pod.dialer.connect(target).await {
                Ok(u) => u,
                Err(e) => {
                    tracing::info!(pod = %pod.uid, %target, error = %e, "passthrough connection failed");
                    ctx.metrics
                        .connection_failed(&l, FailureReason::UpstreamConnect);
                    tracked.finish(0, 0, Some(format!("connect to {target}: {e}")));
                    reset(stream);
                    return;
                }
            };
            let counters = ctx.metrics.connection_opened(&l);
            carry(stream, upstream, false, counters, tracked).await;
        }
        Upstream::NoHealthyEndpoint { service } => {
            tracing::warn!(pod = %pod.uid, %dst, service = %service.key, "refusing outbound connection: service has no healthy endpoint reachable over this address family");
            let l = labels(
                Reporter::Source,
                Some(&source),
                source_principal.as_deref(),
                None,
                Some(&service),
                Security::None,
            );
            ctx.metrics
                .connection_failed(&l, FailureReason::NoHealthyEndpoint);
            reset(stream);
        }
    }
}
