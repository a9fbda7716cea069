//! Judging an observed flow as the proxies would: the model goes through the controller's push
//! (snapshot, then each proxy's scope) into a proxy's state, exactly what ztunnel or the
//! waypoint would hold, and the flow is decided there by the shared policy code
//! (`ambit_discovery::state`). A dry-run policy (observer mode) is judged as if enforced: the
//! question is what the policies do once applied.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use ambit_discovery::state::{Decision, PolicyRequest, PolicySource, ProxyState, Verdict};
use ambit_proto::api::discovery::{ProxyKind, SubscribeResponse, Subscriber};
use ambit_proto::identity::SpiffeId;

use super::targets::{Resolved, Target};
use crate::model::MeshModel;
use crate::push::{Snapshot, desired_for};
use crate::telemetry::api::ObservedFlow;

/// What the proxy in front of one target decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    Allowed,
    /// `policy` names the DENY policy, or the ALLOW policies none of which matched.
    Denied {
        policy: String,
        reason: String,
    },
    /// The peer is the waypoint in front of the target: it judged the original client, and the
    /// target's ztunnel does not judge the waypoint again.
    FromWaypoint(String),
}

/// A model's proxies, their states built on first use.
pub struct Evaluator {
    snapshot: Snapshot,
    states: HashMap<(i32, String, String), ProxyState>,
    /// An address of a workload of each identity (policies may name addresses; a shape
    /// carries none).
    addresses: HashMap<String, IpAddr>,
}

impl Evaluator {
    pub fn new(model: MeshModel) -> Self {
        let mut addresses = HashMap::new();
        for w in model.workloads() {
            if let Some(ip) = w.pod.addresses.first() {
                addresses.entry(w.identity.to_string()).or_insert(*ip);
            }
        }
        Evaluator {
            snapshot: Snapshot::build(Arc::new(model), None),
            states: HashMap::new(),
            addresses,
        }
    }

    /// The decision of the proxy that enforces `target`'s policies for `flow`: the waypoint
    /// that `resolved` went through, else the target's own ztunnel.
    pub fn judge(
        &mut self,
        flow: &ObservedFlow,
        resolved: &Resolved,
        target: &Target,
    ) -> Result<Judgement, String> {
        let identity = match flow.source_identity.as_str() {
            "" => None,
            id => Some(
                id.parse::<SpiffeId>()
                    .map_err(|e| format!("source identity {id:?}: {e}"))?,
            ),
        };
        let source = PolicySource {
            identity: identity.as_ref(),
            ip: self.source_ip(identity.as_ref()),
        };
        let model = self.snapshot.model().clone();
        let workload = model
            .workload(&target.workload)
            .ok_or_else(|| format!("the mesh has no workload {}", target.workload))?;
        let subscriber = match &resolved.waypoint {
            Some(w) => Subscriber {
                kind: ProxyKind::Waypoint.into(),
                name: w.name.clone(),
                namespace: w.namespace.clone(),
                ..Default::default()
            },
            None => Subscriber {
                kind: ProxyKind::Ztunnel.into(),
                name: workload.pod.node.clone(),
                ..Default::default()
            },
        };
        let state = self.state(subscriber)?;
        let pushed = state.workload(&workload.uid).ok_or_else(|| {
            format!(
                "the push to the proxy in front of {} leaves out its workload",
                target.workload
            )
        })?;
        let verdict = match (&resolved.waypoint, identity.as_ref()) {
            (None, Some(id)) => {
                if let Some(w) = state.enforcing_waypoint(pushed, id) {
                    return Ok(Judgement::FromWaypoint(w.key.to_string()));
                }
                state.authorize(pushed, &source, target.port)
            }
            (None, None) => state.authorize(pushed, &source, target.port),
            (Some(_), _) if flow.method.is_empty() => state.authorize(pushed, &source, target.port),
            (Some(_), _) => {
                let headers = http::HeaderMap::new();
                let host = flow.destination_service.as_str();
                let request = PolicyRequest {
                    method: &flow.method,
                    path: &flow.path_prefix,
                    authority: (!host.is_empty()).then_some(host),
                    headers: &headers,
                };
                state.authorize_request(pushed, &source, target.port, &request)
            }
        };
        Ok(judgement(verdict))
    }

    /// The address of a workload with this identity, else unspecified.
    fn source_ip(&self, identity: Option<&SpiffeId>) -> IpAddr {
        identity
            .and_then(|id| self.addresses.get(id.as_str()).copied())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    /// The state the subscriber's proxy holds once the controller's full push is applied.
    fn state(&mut self, subscriber: Subscriber) -> Result<&ProxyState, String> {
        let key = (
            subscriber.kind,
            subscriber.namespace.clone(),
            subscriber.name.clone(),
        );
        if !self.states.contains_key(&key) {
            let desired = desired_for(&self.snapshot, &subscriber);
            let response = SubscribeResponse {
                system_version: desired.system_version(),
                resources: desired.iter().map(|(_, r)| r.decode()).collect(),
                full_state: true,
                ..Default::default()
            };
            let state = ProxyState::default().applied(&response).map_err(|e| {
                format!(
                    "the proxy {}/{} would refuse the push: {e}",
                    subscriber.namespace, subscriber.name
                )
            })?;
            self.states.insert(key.clone(), state);
        }
        Ok(&self.states[&key])
    }
}

/// A verdict as the policies will decide once every one is enforced: an observer-mode
/// would-deny counts as a denial.
fn judgement(verdict: Verdict) -> Judgement {
    match (verdict.decision, verdict.would_deny) {
        (Decision::Deny { policy, reason }, _) => Judgement::Denied {
            policy: policy.into(),
            reason,
        },
        (Decision::Allow { .. }, Some(Decision::Deny { policy, reason })) => Judgement::Denied {
            policy: policy.into(),
            reason: format!("{reason} (a policy in observer mode: it would deny once enforced)"),
        },
        (Decision::Allow { .. }, _) => Judgement::Allowed,
    }
}
