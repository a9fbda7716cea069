//! Authorization at the waypoint. Behind a waypoint the destination's ztunnel sees the
//! waypoint's identity, not the client's, so the waypoint is where the policies of the
//! destination workload are enforced on the *client's* identity and address: adding a waypoint
//! must never skip a policy. Here they are checked in full, L7 conditions included, against the
//! request as the chosen endpoint will receive it: after the route's filters, with the path
//! normalised once on arrival ([`crate::path`]), hosts compared without port and case. Opaque
//! TCP has no request: it gets ztunnel's L4 check, L7 conditions failing closed.
//!
//! Every decision a policy makes is counted in `ambit_policy_decisions_total{policy, decision}`
//! (`allow`, `deny`, `audit`; requests no policy decided are not counted); denials and AUDIT
//! matches are logged with the policy and the client. A policy in observer mode decides
//! nothing: what it would have denied is logged and counted with `mode="audit"`.

use std::net::SocketAddr;

use ambit_discovery::state::{Decision, PolicyRequest, PolicySource, ProxyState, Workload};
use ambit_proto::identity::SpiffeId;
use http::request;

use crate::report::Telemetry;
use crate::telemetry::metrics::PolicyDecision;

/// A refusal, naming the policy that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub policy: Box<str>,
    pub reason: String,
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "denied by authorization policy {}: {}",
            self.policy, self.reason
        )
    }
}

impl std::error::Error for Denied {}

/// Who asks for what: the client, and its request when it made one (`None`: opaque TCP).
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub identity: &'a SpiffeId,
    pub client_addr: SocketAddr,
    pub request: Option<&'a request::Parts>,
}

/// May the client reach `workload` on `target_port`? Logs and counts what policies decided.
/// Allowed, with what a policy in observer mode would have denied (`Some`), or denied.
pub fn check(
    state: &ProxyState,
    workload: &Workload,
    target_port: u16,
    ask: &Ask<'_>,
    telemetry: &Telemetry,
) -> Result<Option<Denied>, Denied> {
    let source = PolicySource {
        identity: Some(ask.identity),
        ip: ask.client_addr.ip(),
    };
    let verdict = match ask.request {
        Some(head) => {
            let request = PolicyRequest {
                method: head.method.as_str(),
                path: head.uri.path(),
                authority: head.uri.authority().map(|a| a.as_str()),
                headers: &head.headers,
            };
            state.authorize_request(workload, &source, target_port, &request)
        }
        None => state.authorize(workload, &source, target_port),
    };
    let (method, path) = match ask.request {
        Some(head) => (head.method.as_str(), head.uri.path()),
        None => ("-", "-"),
    };
    for policy in &verdict.audited {
        tracing::info!(
            %policy,
            client = %ask.identity,
            client_addr = %ask.client_addr,
            workload = %workload.uid(),
            method,
            path,
            allowed = verdict.is_allowed(),
            "authorization policy AUDIT matched"
        );
        telemetry.policy_decision(policy, PolicyDecision::Audit);
    }
    // Observer mode: a dry-run policy would have refused what the enforced ones let through.
    let mut would_deny = None;
    if let Some(Decision::Deny { policy, reason }) = &verdict.would_deny {
        tracing::info!(
            %policy,
            client = %ask.identity,
            client_addr = %ask.client_addr,
            workload = %workload.uid(),
            method,
            path,
            %reason,
            "would be denied: allowed only because the policy is in observer mode (ambit.io/policy-mode: audit)"
        );
        telemetry.policy_decision(policy, PolicyDecision::WouldDeny);
        would_deny = Some(Denied {
            policy: policy.clone(),
            reason: reason.clone(),
        });
    }
    match verdict.decision {
        Decision::Allow { policy: None } => Ok(would_deny),
        Decision::Allow {
            policy: Some(policy),
        } => {
            telemetry.policy_decision(&policy, PolicyDecision::Allow);
            Ok(would_deny)
        }
        Decision::Deny { policy, reason } => {
            tracing::info!(
                %policy,
                client = %ask.identity,
                client_addr = %ask.client_addr,
                workload = %workload.uid(),
                method,
                path,
                "denied by authorization policy"
            );
            telemetry.policy_decision(&policy, PolicyDecision::Deny);
            Err(Denied { policy, reason })
        }
    }
}
