//! Inbound: tunnels arriving over HBONE on 15008 (identity proven by mTLS), and plaintext
//! connections from outside the mesh redirected to 15006. Both pass L4 authorization, then
//! are delivered to the app inside the pod's namespace. A tunnel from the waypoint the
//! destination uses was authorized at that waypoint (against the original client) and is not
//! judged again by the waypoint's own identity; it is counted as enforced upstream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use ambit_discovery::ProxyState;
use ambit_discovery::state::{Decision, PolicySource, Workload};
use ambit_proto::drain::DrainWatch;
use ambit_proto::hbone::{TunnelHandler, TunnelRequest};
use ambit_proto::identity::SpiffeId;
use http::StatusCode;
use tokio::net::{TcpListener, TcpStream};

use super::flows::{Failure, Flow, connect_failure};
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
    outcome: Result<Workload, Refusal>,
    /// The waypoint the tunnel came from, when that waypoint serves the destination and so
    /// already enforced its authorization policies on the original client's identity.
    enforced_by: Option<Arc<str>>,
    /// Observer mode: the policy that would have refused it, and why.
    would_deny: Option<(Box<str>, String)>,
}

struct Refusal {
    status: StatusCode,
    reason: String,
    why: FailureReason,
    /// The authorization policy that refused it.
    policy: Option<Box<str>>,
}

impl Refusal {
    fn failure(&self) -> Failure<'_> {
        Failure {
            policy: self.policy.as_deref(),
            ..Failure::new(self.why, self.reason.clone())
        }
    }
}

/// The source as the destination side may name it: the workload at the peer's address only
/// if it is the identity the peer proved (an address says nothing a certificate does not
/// confirm); for plaintext, the workload at that address.
fn source_side(state: &ProxyState, identity: Option<&SpiffeId>, peer: SocketAddr) -> Side {
    let at_address = state.workload_by_ip(peer.ip()).cloned();
    match identity {
        Some(id) => {
            let proven = at_address.filter(|w| &w.shared.identity == id);
            Side::new(proven, Some(id.clone()))
        }
        None => Side::new(at_address, None),
    }
}

fn admit(
    ctx: &ProxyContext,
    uid: &str,
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
    if let (Some(lookups), Some(_)) = (&ctx.lookups, identity) {
        // The source names nothing the decision needs (the certificate and the address do),
        // only the metrics' source workload: asked for, not waited for, so a first connection
        // from a peer ztunnel does not hold is counted by its identity alone. Only for mesh
        // peers, whose address their certificate's ztunnel dialled from: plaintext from
        // outside could name any number of addresses.
        if state.knows_address(peer.ip()) {
            lookups.touch(peer.ip());
        } else {
            lookups.ask(peer.ip());
        }
    }
    let source = source_side(&state, identity, peer);
    let Some(workload) = state.workload(uid).cloned() else {
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
                reason: format!("pod {} is not in ztunnel's config", uid),
                why: FailureReason::UnknownSource,
                policy: None,
            }),
            enforced_by: None,
            would_deny: None,
        };
    };
    let labels = parties(
        Reporter::Destination,
        source,
        Side::meshed(&workload),
        state.service_of(workload.uid(), target.port()),
        security,
    );
    // Behind a waypoint, the peer is the waypoint, not the client: the waypoint judged the
    // client against this workload's policies, which would refuse the waypoint's own identity.
    let enforced_by = identity
        .and_then(|id| state.enforcing_waypoint(&workload, id))
        .map(|w| w.key.clone());
    // Port checks first: a connection aimed at ztunnel's own listeners would be dialled
    // straight back into them, each dial making another (a loop any outsider could start).
    let mut would_deny = None;
    let refusal = if PROXY_PORTS.contains(&target.port()) {
        Some(Refusal {
            status: StatusCode::BAD_REQUEST,
            reason: format!(
                "port {} is ztunnel's own and never a destination",
                target.port()
            ),
            why: FailureReason::ProxyPort,
            policy: None,
        })
    } else if identity.is_none() && workload.strict_mtls {
        Some(Refusal {
            status: StatusCode::UNAUTHORIZED,
            reason: format!(
                "{}/{} requires mTLS (ambit.io/mtls-mode: strict) and this connection is plaintext from outside the mesh: mesh the client, or set the namespace's mode to permissive",
                workload.shared.namespace,
                workload.name()
            ),
            why: FailureReason::StrictMtls,
            policy: None,
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
            tracing::info!(pod = %uid, %peer, identity = ?identity.map(SpiffeId::as_str), %target, %policy, allowed = verdict.is_allowed(), "audited by authorization policy");
            ctx.metrics.policy_audited(policy);
        }
        // Observer mode: a dry-run policy would have refused what the enforced ones let in.
        if let Some(Decision::Deny { policy, reason }) = &verdict.would_deny {
            if let Some(suppressed) = ctx.refusal_log.check() {
                tracing::info!(pod = %uid, %peer, identity = ?identity.map(SpiffeId::as_str), %target, %policy, %reason, suppressed, "would be denied: allowed only because the policy is in observer mode (ambit.io/policy-mode: audit)");
            }
            ctx.metrics.policy_would_deny(policy);
            would_deny = Some((policy.clone(), reason.clone()));
        }
        match verdict.decision {
            Decision::Allow { .. } => None,
            Decision::Deny { reason, policy } => Some(Refusal {
                status: StatusCode::UNAUTHORIZED,
                reason: format!("{reason} (change the authorization policy to allow it)"),
                why: FailureReason::PolicyDenied,
                policy: Some(policy),
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
        would_deny,
    }
}

impl TunnelHandler for InboundHandler {
    async fn handle(&self, request: TunnelRequest) {
        let (pod, ctx) = (&self.pod, &self.ctx);
        let started = Instant::now();
        let peer = request.peer_addr;
        let target = request.authority;
        let Admission {
            labels: l,
            outcome,
            enforced_by,
            would_deny,
        } = admit(ctx, &pod.uid, Some(&request.peer), peer, target);
        let flow = Flow {
            parties: &l,
            peer,
            target,
            dialled_service: false,
            started,
            would_deny: would_deny.as_ref(),
        };
        let workload = match outcome {
            Ok(w) => w,
            Err(refusal) => {
                flow.ended(&ctx.reporter, None, 0, 0, Some(refusal.failure()));
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
            destination_workload: Some(workload.uid().to_string()),
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
                flow.ended(
                    &ctx.reporter,
                    None,
                    0,
                    0,
                    Some(Failure::new(
                        FailureReason::UpstreamConnect,
                        connect_failure(target, &e),
                    )),
                );
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
        carry(app, tunnel, true, counters, tracked, &ctx.reporter, flow).await;
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
    let started = Instant::now();
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
        labels: l,
        outcome,
        would_deny,
        ..
    } = admit(ctx, &pod.uid, None, peer, target);
    let flow = Flow {
        parties: &l,
        peer,
        target,
        dialled_service: false,
        started,
        would_deny: would_deny.as_ref(),
    };
    let workload = match outcome {
        Ok(w) => w,
        Err(refusal) => {
            flow.ended(&ctx.reporter, None, 0, 0, Some(refusal.failure()));
            if let Some(suppressed) = ctx.refusal_log.check() {
                tracing::warn!(pod = %pod.uid, %peer, %target, reason = %refusal.reason, suppressed, "refused inbound plaintext connection");
            }
            ctx.metrics.connection_failed(&l, refusal.why);
            reset(stream);
            return;
        }
    };
    let tracked = ctx.connections.track(ConnectionInfo {
        destination_workload: Some(workload.uid().to_string()),
        ..ConnectionInfo::starting(Direction::Inbound, &pod.uid, peer, target, "TCP")
    });
    let app = match pod.dialer.connect(target).await {
        Ok(app) => app,
        Err(e) => {
            ctx.metrics
                .connection_failed(&l, FailureReason::UpstreamConnect);
            flow.ended(
                &ctx.reporter,
                None,
                0,
                0,
                Some(Failure::new(
                    FailureReason::UpstreamConnect,
                    connect_failure(target, &e),
                )),
            );
            tracked.finish(0, 0, Some(format!("connect to {target}: {e}")));
            reset(stream);
            return;
        }
    };
    let counters = ctx.metrics.connection_opened(&l);
    carry(app, stream, true, counters, tracked, &ctx.reporter, flow).await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ambit_discovery::telemetry::{self, ReportStream, Settings};
    use ambit_discovery::testing::{id, response, uid, workload};
    use ambit_discovery::{Current, ProxyState};
    use ambit_proto::api::discovery::{Resource, resource::Kind};
    use ambit_proto::api::security as sec;
    use ambit_proto::api::workload as wl;
    use ambit_proto::identity::{CertManager, CertificateAuthority};

    use super::*;
    use crate::connections::ConnectionTracker;
    use crate::metrics::Metrics;

    fn deny_client(name: &str, dry_run: bool) -> Resource {
        Resource {
            name: format!("demo/{name}"),
            version: "1".into(),
            kind: Some(Kind::AuthorizationPolicy(sec::AuthorizationPolicy {
                name: name.into(),
                namespace: "demo".into(),
                selector: None,
                action: sec::Action::Deny as i32,
                rules: vec![sec::Rule {
                    from: vec![sec::Source {
                        principals: vec![id("client").to_string()],
                        ..Default::default()
                    }],
                    to: vec![],
                    when: vec![],
                }],
                dry_run,
            })),
        }
    }

    fn context(policy: Resource) -> (ProxyContext, ReportStream) {
        let mut reviews = workload("reviews-v1", &["10.244.1.4"], wl::Protocol::Hbone);
        if let Some(Kind::Workload(w)) = &mut reviews.kind {
            w.authorization_policies = vec![policy.name.clone()];
        }
        let mut state = ProxyState::default();
        state
            .apply(&response(
                true,
                vec![
                    workload("client", &["10.244.1.2"], wl::Protocol::Hbone),
                    reviews,
                    policy,
                ],
            ))
            .unwrap();
        let current = Arc::new(Current::default());
        current.replace(state);
        let ca = CertificateAuthority::generate("cluster.local").unwrap();
        let (reporter, stream) = telemetry::channel(Settings::default());
        let ctx = ProxyContext::new(
            current,
            CertManager::with_local_ca(ca, Duration::from_secs(3600)),
            Arc::new(Metrics::new()),
            Arc::new(ConnectionTracker::default()),
            reporter,
            None,
        );
        (ctx, stream)
    }

    /// The inbound checks on a tunnel from client to reviews-v1, reported as the handler does.
    fn admitted(ctx: &ProxyContext) {
        let (peer, target) = (
            "10.244.1.2:40000".parse().unwrap(),
            "10.244.1.4:8080".parse().unwrap(),
        );
        let a = admit(ctx, &uid("reviews-v1"), Some(&id("client")), peer, target);
        let flow = Flow {
            parties: &a.labels,
            peer,
            target,
            dialled_service: false,
            started: std::time::Instant::now(),
            would_deny: a.would_deny.as_ref(),
        };
        let failure = a.outcome.as_ref().err().map(Refusal::failure);
        flow.ended(&ctx.reporter, None, 0, 0, failure);
    }

    #[test]
    fn a_denial_is_reported_with_its_policy_and_an_observed_one_as_would_deny() {
        let (ctx, mut stream) = context(deny_client("deny-client", false));
        admitted(&ctx);
        let events = stream.queued();
        let e = &events[0];
        assert!(
            e.failed && e.taps.is_empty(),
            "a failure goes untagged: {e:?}"
        );
        assert_eq!(
            (e.policy.as_str(), e.response_flags.as_str()),
            ("demo/deny-client", "RBAC")
        );
        assert!(
            e.reason.contains(
                "spiffe://cluster.local/ns/demo/sa/client is denied by DENY policy demo/deny-client"
            ),
            "{}",
            e.reason
        );
        let shape = &ctx.reporter.shapes().snapshot()[0];
        assert_eq!((shape.count, shape.failed), (1, 1));

        // Observer mode: the flow goes through, so it is reported only when tapped.
        let (ctx, mut stream) = context(deny_client("deny-client", true));
        admitted(&ctx);
        assert!(
            stream.queued().is_empty(),
            "a healthy untapped flow is not sent"
        );
        ctx.reporter.start_tap(ambit_proto::api::telemetry::Tap {
            id: 1,
            ..Default::default()
        });
        admitted(&ctx);
        let events = stream.queued();
        let e = &events[0];
        assert!(!e.failed && e.would_deny, "{e:?}");
        assert_eq!(e.policy, "demo/deny-client");
        assert!(e.reason.contains("observer mode"), "{}", e.reason);
    }
}
