//! Outbound: connections the pod's apps open, redirected to 15001. Each goes over HBONE to a
//! meshed destination (presenting the pod's identity, checking the destination's), or as plain
//! TCP to anything outside the mesh. A service endpoint that cannot be reached is left out of
//! the choice for a while (`EndpointHealth`) and the connection tries one other endpoint: no
//! byte of it was sent yet, so the app never sees the failed attempt.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use ambit_discovery::lookups::{Answer, LookupError};
use ambit_discovery::state::{Service, Workload};
use ambit_discovery::telemetry::baggage::SourceWorkload;
use ambit_proto::drain::DrainWatch;
use ambit_proto::hbone::{ConnectRequest, HBONE_PORT, HboneError};
use ambit_proto::identity::SpiffeId;
use tokio::net::{TcpListener, TcpStream};

use super::flows::{Failure, Flow, connect_failure};
use super::splice::{carry, reset};
use super::upstream::{Upstream, resolve};
use super::{PodContext, ProxyContext, accept_loop, parties};
use crate::capture::{PROXY_PORTS, original_destination};
use crate::connections::{ConnectionInfo, Direction, TrackedConnection};
use crate::metrics::{FailureReason, Parties, Reporter, Security, Side};

/// Attempts per connection: the first endpoint, and one other if the first is unreachable.
const ATTEMPTS: usize = 2;

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

/// Refuses a connection before anything was carried: counted, logged (rate-limited),
/// reported (`flow`, when the destination is known), reset.
fn refuse(
    ctx: &ProxyContext,
    stream: TcpStream,
    labels: &Parties,
    why: FailureReason,
    flow: Option<(Flow<'_>, String)>,
    log: impl FnOnce(u64),
) {
    if let Some((flow, reason)) = flow {
        flow.ended(&ctx.reporter, None, 0, 0, Some(Failure::new(why, reason)));
    }
    let limiter = match why {
        FailureReason::PolicyDenied
        | FailureReason::ProxyPort
        | FailureReason::StrictMtls
        | FailureReason::OutsideEgressScope => &ctx.refusal_log,
        _ => &ctx.failure_log,
    };
    if let Some(suppressed) = limiter.check() {
        log(suppressed);
    }
    ctx.metrics.connection_failed(labels, why);
    reset(stream);
}

/// Makes sure the config holds what the controller knows of `ip` before the connection's way
/// is chosen: with on-demand destinations, an address the config does not hold (`held`: a
/// workload's) and the controller was not asked about yet is asked, and the connection waits
/// for the answer. `Ok(true)` when the answer
/// brought the destination in just now. An address the mesh does not know is passthrough, as
/// without lookups; no answer is an error: guessing passthrough would carry mesh traffic in
/// plaintext, around its policy.
async fn learn(ctx: &ProxyContext, ip: IpAddr, held: bool) -> Result<bool, LookupError> {
    let Some(lookups) = &ctx.lookups else {
        return Ok(false);
    };
    if held {
        lookups.touch(ip);
        return Ok(false);
    }
    if lookups.settled(ip) {
        return Ok(false);
    }
    Ok(lookups.look_up(ip).await? == Answer::Known)
}

/// A connection to one of ztunnel's own listeners in this pod (made straight to it, not
/// redirected): carrying it would dial ztunnel again.
fn aims_at_proxy(dst: SocketAddr, source: &Workload) -> bool {
    PROXY_PORTS.contains(&dst.port())
        && (dst.ip().is_loopback()
            || dst.ip().is_unspecified()
            || source.addresses().contains(&dst.ip()))
}

async fn handle(stream: TcpStream, peer: SocketAddr, pod: &PodContext, ctx: &ProxyContext) {
    let started = Instant::now();
    let _ = stream.set_nodelay(true);
    let dst = original_destination(&stream);
    // One view of the config for the source and the first choice of upstream; a second
    // attempt looks again (the endpoint it avoids was just marked unreachable).
    let (source, mut first_choice, held) = {
        let state = ctx.state.load();
        let source = state.workload(&pod.uid).cloned();
        let first = match (&dst, &source) {
            (Ok(dst), Some(s)) => Some(resolve(&state, *dst, &s.shared.identity, |ip| {
                ctx.health.is_ejected(ip)
            })),
            _ => None,
        };
        // A workload is held whole; a VIP may be held without its endpoints elsewhere (the
        // service of a pod on this node, held for the inbound side), so it is asked once.
        let held = dst
            .as_ref()
            .is_ok_and(|d| state.workload_by_ip(d.ip()).is_some());
        (source, first, held)
    };
    let unknown_destination = |security| {
        parties(
            Reporter::Source,
            source.as_ref().map_or_else(Side::unknown, Side::meshed),
            Side::unknown(),
            None,
            security,
        )
    };
    let dst = match dst {
        Ok(d) => d,
        Err(e) => {
            let l = unknown_destination(Security::None);
            refuse(
                ctx,
                stream,
                &l,
                FailureReason::OriginalDestination,
                None,
                |suppressed| {
                    tracing::warn!(pod = %pod.uid, %peer, error = %e, suppressed, "refused outbound connection: its original destination is unknown (was it redirected by ztunnel's rules?)");
                },
            );
            return;
        }
    };
    // A refusal's words are both the flow's reported reason and the log line.
    let refuse_as = |stream: TcpStream, l: &Parties, why: FailureReason, words: String| {
        let line = format!("refused outbound connection: {words}");
        let reported = Some((flow(l, peer, dst, started), words));
        refuse(ctx, stream, l, why, reported, |suppressed| {
            tracing::warn!(pod = %pod.uid, %peer, %dst, suppressed, "{line}");
        });
    };
    let Some(source) = source.clone() else {
        let words = format!(
            "pod {} is not in ztunnel's config (removed, or its config not received yet)",
            pod.uid
        );
        let l = unknown_destination(Security::None);
        refuse_as(stream, &l, FailureReason::UnknownSource, words);
        return;
    };
    if aims_at_proxy(dst, &source) {
        let words = format!(
            "port {} is ztunnel's own and never a destination",
            dst.port()
        );
        let l = unknown_destination(Security::None);
        refuse_as(stream, &l, FailureReason::ProxyPort, words);
        return;
    }
    match learn(ctx, dst.ip(), held).await {
        // Just learnt: the choice made without it was passthrough.
        Ok(true) => first_choice = None,
        Ok(false) => {}
        Err(e) => {
            let l = unknown_destination(Security::None);
            refuse_as(stream, &l, FailureReason::DestinationLookup, e.to_string());
            return;
        }
    }
    let state = ctx.state.load();
    if let Err(e) = state.check_egress(&source, dst.ip()) {
        // Named as far as the config can: whoever reads the metrics sees what was refused.
        let l = parties(
            Reporter::Source,
            Side::meshed(&source),
            Side::new(state.workload_by_ip(dst.ip()).cloned(), None),
            state.service_by_vip(dst.ip()),
            Security::None,
        );
        drop(state);
        refuse_as(stream, &l, FailureReason::OutsideEgressScope, e.to_string());
        return;
    }
    drop(state);
    let src = Side::meshed(&source);
    // What `ambit config connections` shows of this connection, whichever way it goes.
    let track = |workload: Option<&Workload>,
                 service: Option<&Service>,
                 target: SocketAddr,
                 protocol: &str| {
        ctx.connections.track(ConnectionInfo {
            source_identity: Some(source.shared.identity.to_string()),
            destination_workload: workload.map(|w| w.uid().to_string()),
            destination_service: service.map(|s| s.key.to_string()),
            ..ConnectionInfo::starting(Direction::Outbound, &pod.uid, peer, target, protocol)
        })
    };
    for attempt in 1..=ATTEMPTS {
        let upstream = first_choice.take().unwrap_or_else(|| {
            resolve(&ctx.state.load(), dst, &source.shared.identity, |ip| {
                ctx.health.is_ejected(ip)
            })
        });
        let last = attempt == ATTEMPTS;
        let outcome = match upstream {
            Upstream::Hbone {
                workload,
                target,
                service,
            } => {
                let l = parties(
                    Reporter::Source,
                    src.clone(),
                    Side::meshed(&workload),
                    service.as_ref(),
                    Security::MutualTls,
                );
                let tracked = track(Some(&workload), service.as_deref(), target, "HBONE");
                let request = connect_request(
                    &source,
                    peer,
                    target.ip(),
                    &workload.shared.identity,
                    target,
                    None,
                );
                match pod.hbone().connect(&request).await {
                    Ok(tunnel) => {
                        ctx.health.succeeded(target.ip());
                        let counters = ctx.metrics.connection_opened(&l);
                        let flow = flow(&l, peer, target, started);
                        carry(
                            stream,
                            tunnel,
                            false,
                            counters,
                            tracked,
                            &ctx.reporter,
                            flow,
                        )
                        .await;
                        return;
                    }
                    Err(e) => Failed {
                        retry: endpoint_unreachable(&e) && service.is_some(),
                        eject: endpoint_unreachable(&e),
                        target,
                        labels: l,
                        tracked,
                        reason: hbone_failure(&e),
                        error: e.to_string(),
                    },
                }
            }
            Upstream::Passthrough {
                target,
                workload,
                service,
            } => {
                // Outside the mesh: no identity was asked of the destination, so none is named.
                let l = parties(
                    Reporter::Source,
                    src.clone(),
                    Side::new(workload.clone(), None),
                    service.as_ref(),
                    Security::None,
                );
                let tracked = track(workload.as_ref(), service.as_deref(), target, "TCP");
                match pod.dialer.connect(target).await {
                    Ok(upstream) => {
                        ctx.health.succeeded(target.ip());
                        let counters = ctx.metrics.connection_opened(&l);
                        let flow = flow(&l, peer, target, started);
                        carry(
                            stream,
                            upstream,
                            false,
                            counters,
                            tracked,
                            &ctx.reporter,
                            flow,
                        )
                        .await;
                        return;
                    }
                    Err(e) => Failed {
                        // Only a service's endpoint has an alternative worth trying.
                        retry: service.is_some(),
                        eject: service.is_some(),
                        target,
                        labels: l,
                        tracked,
                        reason: FailureReason::UpstreamConnect,
                        error: connect_failure(target, &e),
                    },
                }
            }
            Upstream::Waypoint {
                key,
                waypoint,
                target,
                service,
                workload,
            } => {
                let l = parties(
                    Reporter::Source,
                    src.clone(),
                    Side::new(workload.clone(), None),
                    service.as_ref(),
                    Security::MutualTls,
                );
                let what = service.as_ref().map_or_else(
                    || format!("workload {dst}"),
                    |s| format!("service {}", s.key),
                );
                let Some((waypoint, address)) = waypoint
                    .as_ref()
                    .and_then(|w| Some((w, w.address_like(dst.ip())?)))
                else {
                    // Fail closed: never around the waypoint, whose policy would be skipped.
                    let why = if waypoint.is_none() {
                        "which is not in ztunnel's config (is it deployed, in the same namespace, with that name?)"
                    } else {
                        "which has no ready address in this address family (are its pods ready?)"
                    };
                    let words = format!("{what} uses waypoint {key}, {why}");
                    refuse(
                        ctx,
                        stream,
                        &l,
                        FailureReason::WaypointUnavailable,
                        Some((flow(&l, peer, dst, started), words)),
                        |suppressed| {
                            tracing::warn!(pod = %pod.uid, %dst, waypoint = %key, suppressed, "refused outbound connection: {what} uses waypoint {key}, {why}");
                        },
                    );
                    return;
                };
                let tracked = track(workload.as_ref(), service.as_deref(), target, "HBONE");
                // The waypoint's config holds its destinations, not its clients: it learns
                // who the client is from this.
                let baggage = Some(source_baggage(&source));
                let request =
                    connect_request(&source, peer, address, &waypoint.identity, target, baggage);
                match pod.hbone().connect(&request).await {
                    Ok(tunnel) => {
                        let counters = ctx.metrics.connection_opened(&l);
                        let flow = flow(&l, peer, target, started);
                        carry(
                            stream,
                            tunnel,
                            false,
                            counters,
                            tracked,
                            &ctx.reporter,
                            flow,
                        )
                        .await;
                        return;
                    }
                    // The only way there: no other endpoint to try.
                    Err(e) => Failed {
                        retry: false,
                        eject: false,
                        target: request.endpoint,
                        labels: l,
                        tracked,
                        reason: FailureReason::WaypointUnavailable,
                        error: format!("waypoint {key} for {what}: {e}"),
                    },
                }
            }
            Upstream::NoHealthyEndpoint { service } => {
                let l = parties(
                    Reporter::Source,
                    src,
                    Side::unknown(),
                    Some(&service),
                    Security::None,
                );
                let words = format!(
                    "service {} has no healthy endpoint reachable over this address family",
                    service.key
                );
                refuse(
                    ctx,
                    stream,
                    &l,
                    FailureReason::NoHealthyEndpoint,
                    Some((flow(&l, peer, dst, started), words)),
                    |suppressed| {
                        tracing::warn!(pod = %pod.uid, %dst, service = %service.key, suppressed, "refused outbound connection: the service has no healthy endpoint reachable over this address family");
                    },
                );
                return;
            }
        };
        let Failed {
            retry,
            eject,
            target,
            labels: l,
            tracked,
            reason,
            error,
        } = outcome;
        if eject {
            let out_for = ctx.health.failed(target.ip());
            tracing::debug!(pod = %pod.uid, endpoint = %target.ip(), ?out_for, "endpoint unreachable: left out of its services' choice");
        }
        tracked.finish(0, 0, Some(error.clone()));
        if retry && !last {
            tracing::debug!(pod = %pod.uid, %dst, %target, %error, "endpoint unreachable; trying another");
            ctx.metrics.attempt_failed(&l, reason);
            continue;
        }
        let words = match reason {
            FailureReason::PolicyDenied => {
                format!("the destination's authorization policy refused it: {error}")
            }
            _ => error.clone(),
        };
        let reported = Some((flow(&l, peer, target, started), words));
        refuse(ctx, stream, &l, reason, reported, |suppressed| {
            tracing::warn!(pod = %pod.uid, %dst, %target, %error, suppressed, "outbound connection failed");
        });
        return;
    }
}

/// An outbound connection's report: the service is named when the client dialled its VIP.
fn flow(parties: &Parties, peer: SocketAddr, target: SocketAddr, started: Instant) -> Flow<'_> {
    Flow {
        parties,
        peer,
        target,
        dialled_service: parties.service.is_some(),
        started,
        would_deny: None,
    }
}

/// The tunnel for a connection from `peer` in `source`: dialled to `via` (the destination pod
/// or the waypoint) on 15008, which must prove `via_identity`, and aimed at `target` (the pod
/// address and port, or through a waypoint the original destination).
fn connect_request(
    source: &Workload,
    peer: SocketAddr,
    via: IpAddr,
    via_identity: &SpiffeId,
    target: SocketAddr,
    baggage: Option<String>,
) -> ConnectRequest {
    ConnectRequest {
        source: source.shared.identity.clone(),
        endpoint: SocketAddr::new(via, HBONE_PORT),
        destination_identity: via_identity.clone(),
        authority: target,
        forwarded_for: Some(peer),
        baggage,
        traceparent: None,
    }
}

/// The source workload, as the waypoint reads it (`ambit_discovery::telemetry::baggage`).
fn source_baggage(source: &Workload) -> String {
    SourceWorkload {
        namespace: (*source.shared.namespace).into(),
        workload: source.name().into(),
        app: source.canonical_or_name().into(),
        version: if source.shared.canonical_revision.is_empty() {
            "latest".into()
        } else {
            (*source.shared.canonical_revision).into()
        },
    }
    .encode()
}

/// One attempt that did not connect.
struct Failed {
    /// Another endpoint may serve (the destination is a service and this one is down).
    retry: bool,
    /// The endpoint is left out for a while.
    eject: bool,
    target: SocketAddr,
    labels: Parties,
    tracked: TrackedConnection,
    reason: FailureReason,
    error: String,
}

/// A refusal by the destination's authorization policy is a policy denial here too, so both
/// sides' metrics say RBAC; anything else kept the tunnel from opening.
fn hbone_failure(e: &HboneError) -> FailureReason {
    match e {
        HboneError::Refused { status, .. } if *status == http::StatusCode::UNAUTHORIZED => {
            FailureReason::PolicyDenied
        }
        _ => FailureReason::Hbone,
    }
}

/// Whether the failure says the endpoint is down (nothing listens, its node's ztunnel is
/// gone, it does not answer, its app is not reachable) rather than that it refused us.
fn endpoint_unreachable(e: &HboneError) -> bool {
    e.endpoint_unreachable()
}

#[cfg(test)]
mod tests {
    use ambit_discovery::testing::meshed_workload;

    use super::*;

    #[test]
    fn tunnel_requests() {
        let client = meshed_workload("client", &["10.244.1.2"]);
        let id = |sa: &str| SpiffeId::new("cluster.local", "demo", sa).unwrap();
        let peer: SocketAddr = "10.244.1.2:40000".parse().unwrap();
        // (via, its identity, target, expected endpoint)
        let table = [
            // Straight to a pod: dialled to the pod, aimed at the app's port there.
            (
                "10.244.2.2",
                "reviews",
                "10.244.2.2:8080",
                "10.244.2.2:15008",
            ),
            (
                "fd00:10:244:2::2",
                "reviews",
                "[fd00:10:244:2::2]:8080",
                "[fd00:10:244:2::2]:15008",
            ),
            // Through a waypoint: dialled to the waypoint, aimed at the service VIP and port.
            (
                "10.244.3.9",
                "waypoint",
                "10.96.0.10:9080",
                "10.244.3.9:15008",
            ),
        ];
        for (via, sa, target, endpoint) in table {
            let r = connect_request(
                &client,
                peer,
                via.parse().unwrap(),
                &id(sa),
                target.parse().unwrap(),
                None,
            );
            assert_eq!(r.endpoint, endpoint.parse().unwrap(), "{target}");
            assert_eq!(r.authority, target.parse().unwrap());
            assert_eq!(
                r.destination_identity,
                id(sa),
                "the hop dialled must prove its identity"
            );
            assert_eq!(
                r.source, client.shared.identity,
                "the pod's own certificate is presented"
            );
            assert_eq!(r.forwarded_for, Some(peer));
        }
    }

    #[test]
    fn the_waypoint_learns_the_client_workload_from_the_baggage() {
        let client = meshed_workload("client", &["10.244.1.2"]);
        let got =
            SourceWorkload::decode(&source_baggage(&client), &client.shared.identity).unwrap();
        assert_eq!(
            (&*got.workload, &*got.namespace, &*got.app, &*got.version),
            ("client", "demo", "client", "latest")
        );
    }

    #[test]
    fn only_the_pods_own_proxy_ports_are_loops() {
        let w = meshed_workload("client", &["10.244.1.2", "fd00:10:244:1::2"]);
        let table = [
            ("10.244.1.2:15001", true),
            ("10.244.1.2:15006", true),
            ("[fd00:10:244:1::2]:15008", true),
            ("127.0.0.1:15006", true),
            ("0.0.0.0:15001", true),
            ("10.244.1.2:8080", false),
            // Another pod's 15008 is HBONE there (its server refuses a tunnel to it).
            ("10.244.2.2:15008", false),
            ("192.0.2.1:15001", false),
        ];
        for (dst, expected) in table {
            assert_eq!(aims_at_proxy(dst.parse().unwrap(), &w), expected, "{dst}");
        }
    }
}
