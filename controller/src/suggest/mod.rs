//! `ambit policy suggest`: least-privilege ALLOW policies from the flows the proxies observed
//! (`GET /api/policy/suggest`).
//!
//! One policy per destination workload group, selected as a human would (by `app`; see
//! [`targets::selector_for`]), whose rules name the exact SPIFFE principals seen and the target
//! ports they reached; where a waypoint saw the traffic as requests, its methods and path
//! prefixes too (the waypoint checks the destination workload's policies, L7 conditions
//! included). What cannot or must not be allowed is left out and said: plaintext clients (no
//! principal to allow), flows the current policies deny, connections from the waypoint itself.
//!
//! The suggestion checks itself: the mesh with its policies added must build, and every flow it
//! means to allow is judged again, through the controller's push and the proxies' own policy
//! code ([`evaluate`]), against the suggested and the existing policies together; what would
//! then be denied is [`Suggestion::would_deny`], normally empty.

mod evaluate;
mod rebuild;
mod render;
mod rules;
mod targets;

use std::collections::{BTreeMap, BTreeSet};

use ambit_proto::api::security;
use serde::{Deserialize, Serialize};

use crate::model::{AuthorizationPolicy, Labels, MeshModel, ObjectKey};
use crate::telemetry::api::ObservedFlow;
use evaluate::{Evaluator, Judgement};
use rules::Draft;
use targets::{Resolved, Target};

pub use rebuild::with_policies;
pub use render::{kubernetes_yaml, mesh_yaml};
pub use rules::policy_path;
pub use targets::{WAYPOINT, ZTUNNEL};

/// `GET /api/policy/suggest?namespace=N`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Suggestion {
    pub generated_unix_ms: i64,
    /// The destination namespace asked for; `None`: all of them.
    pub namespace: Option<String>,
    pub policies: Vec<SuggestedPolicy>,
    /// The policies as items of a mesh file's `authorizationPolicies:` list (under that key),
    /// with their evidence as comments.
    pub mesh_yaml: String,
    /// The policies as Kubernetes objects (`ambit.io/v1alpha1` AuthorizationPolicy), one
    /// document each, with their evidence as comments.
    pub kubernetes_yaml: String,
    /// Observed flows the suggested policies mean to allow that they, applied now with the
    /// existing ones, would deny. Normally empty: anything here is a bug in the suggestion.
    pub would_deny: Vec<WouldDeny>,
    /// Observed flows no rule allows, each with why.
    pub left_out: Vec<LeftOut>,
    /// Why the suggestion could not be checked in full (the mesh with it did not build, a
    /// proxy would refuse it). Normally empty: anything here is a bug.
    pub problems: Vec<String>,
}

impl Suggestion {
    /// The suggestion cannot be applied as it is: it would deny observed traffic, or could
    /// not be checked.
    pub fn is_faulty(&self) -> bool {
        !self.would_deny.is_empty() || !self.problems.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SuggestedPolicy {
    pub name: String,
    pub namespace: String,
    /// Pods of the namespace with all of these labels.
    pub selector: Labels,
    /// The workloads it selects now, `<namespace>/<name>`.
    pub workloads: Vec<String>,
    /// ALLOW, always; here so the data says what the YAML says.
    pub action: String,
    pub rules: Vec<SuggestedRule>,
    /// Who enforces it for the observed traffic: `waypoint <namespace>/<name>` (every
    /// condition), `ztunnel` (principals and ports).
    pub enforced_by: Vec<String>,
    /// The flows its rules allow.
    pub evidence: Vec<ObservedFlow>,
    /// Plaintext flows to its workloads: no principal to allow them by, so it refuses them.
    pub refuses_plaintext: Vec<ObservedFlow>,
}

/// Allows requests from one of `principals` that match one of `to`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuggestedRule {
    /// SPIFFE ids, exact.
    pub principals: Vec<String>,
    pub to: Vec<SuggestedOperation>,
}

/// Target ports, and when a waypoint saw requests, their methods and paths (Istio's syntax:
/// `/api/*` a prefix, otherwise exact). Empty lists match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuggestedOperation {
    pub ports: Vec<u16>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WouldDeny {
    /// The policy (or policies) whose decision it is.
    pub policy: String,
    /// The workload, `<namespace>/<name>`, and the port it would be denied on.
    pub workload: String,
    pub port: u16,
    pub flow: ObservedFlow,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeftOutKind {
    /// The client had no identity: a principal cannot allow it.
    Plaintext,
    /// The current policies deny it (or, in observer mode, would): not normal traffic.
    DeniedNow,
    /// A waypoint's connection to a workload behind it: the waypoint judged the client.
    FromWaypoint,
    /// Its destination is not in the mesh now.
    UnknownDestination,
    /// No selector picks its destination alone.
    Unselectable,
    /// A rule cannot say it exactly (a path a policy would read as a pattern).
    Inexpressible,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeftOut {
    pub kind: LeftOutKind,
    pub flow: ObservedFlow,
    pub reason: String,
}

/// A flow the suggestion allows, and where: judged again once the policies are added.
struct Allowed<'a> {
    flow: &'a ObservedFlow,
    resolved: Resolved,
    targets: Vec<Target>,
}

/// Suggests ALLOW policies for the destinations of `flows` (in `namespace` only, when given);
/// see the module docs. `now_unix_ms` stamps the suggestion.
pub fn suggest(
    model: &MeshModel,
    flows: &[ObservedFlow],
    namespace: Option<&str>,
    now_unix_ms: i64,
) -> Suggestion {
    let mut current = Evaluator::new(model.clone());
    let mut drafts: BTreeMap<(String, Labels), Draft> = BTreeMap::new();
    let mut left_out = Vec::new();
    let mut allowed = Vec::new();
    let mut plaintext = Vec::new();
    let mut leave = |kind, flow: &ObservedFlow, reason: String| {
        left_out.push(LeftOut {
            kind,
            flow: flow.clone(),
            reason,
        })
    };
    for flow in flows {
        let in_scope = targets::destination_namespace(model, flow);
        if let (Some(wanted), Some(ns)) = (namespace, &in_scope)
            && wanted != ns
        {
            continue;
        }
        let resolved = match targets::resolve(model, flow) {
            Ok(r) => r,
            Err(e) => {
                leave(LeftOutKind::UnknownDestination, flow, e);
                continue;
            }
        };
        if flow.source_identity.is_empty() {
            plaintext.push((flow, resolved));
            continue;
        }
        let mut ok = Vec::new();
        for target in &resolved.targets {
            match current.judge(flow, &resolved, target) {
                Ok(Judgement::Allowed) => ok.push(target.clone()),
                Ok(Judgement::Denied { policy, reason }) => leave(
                    LeftOutKind::DeniedNow,
                    flow,
                    format!(
                        "{} port {}: denied now by {policy}: {reason}",
                        target.workload, target.port
                    ),
                ),
                Ok(Judgement::FromWaypoint(w)) => leave(
                    LeftOutKind::FromWaypoint,
                    flow,
                    format!(
                        "connections from waypoint {w} to {} it fronts: the waypoint judged the original clients against its policies, and ztunnel does not judge the waypoint again",
                        target.workload
                    ),
                ),
                Err(e) => leave(LeftOutKind::UnknownDestination, flow, e),
            }
        }
        let mut kept = Vec::new();
        for target in ok {
            let selector = match targets::selector_for(model, &target.workload) {
                Ok(s) => s,
                Err(e) => {
                    leave(LeftOutKind::Unselectable, flow, e);
                    continue;
                }
            };
            let draft = drafts
                .entry((target.workload.namespace.clone(), selector))
                .or_default();
            let waypoint = resolved.waypoint.as_ref().map(ObjectKey::to_string);
            // Judged again either way: a flow no rule can say exactly is one the policy of
            // its group would deny, which the suggestion must own up to.
            if let Err(e) = draft.allow(flow, target.port, waypoint.as_deref()) {
                leave(LeftOutKind::Inexpressible, flow, e);
            }
            kept.push(target);
        }
        if !kept.is_empty() {
            allowed.push(Allowed {
                flow,
                resolved,
                targets: kept,
            });
        }
    }

    let mut policies = finish(model, &drafts);
    for (flow, resolved) in plaintext {
        let mut refused_by = BTreeSet::new();
        for target in &resolved.targets {
            for p in policies
                .iter_mut()
                .filter(|p| selects(model, p, &target.workload))
            {
                if !p.refuses_plaintext.contains(flow) {
                    p.refuses_plaintext.push(flow.clone());
                }
                refused_by.insert(format!("{}/{}", p.namespace, p.name));
            }
        }
        let consequence = if refused_by.is_empty() {
            "no policy is suggested for its destination, so nothing changes for it".to_string()
        } else {
            format!(
                "{} will refuse it: mesh the client (it then has an identity), or allow its addresses with ipBlocks by hand",
                refused_by.into_iter().collect::<Vec<_>>().join(", ")
            )
        };
        left_out.push(LeftOut {
            kind: LeftOutKind::Plaintext,
            flow: flow.clone(),
            reason: format!(
                "the client was not authenticated (plaintext), so no principal allows it; {consequence}"
            ),
        });
    }

    let mut suggestion = Suggestion {
        generated_unix_ms: now_unix_ms,
        namespace: namespace.map(str::to_string),
        policies,
        left_out,
        ..Default::default()
    };
    check(model, &allowed, &mut suggestion);
    suggestion.mesh_yaml = mesh_yaml(&suggestion);
    suggestion.kubernetes_yaml = kubernetes_yaml(&suggestion);
    suggestion
}

/// Does `policy` select `workload`?
fn selects(model: &MeshModel, policy: &SuggestedPolicy, workload: &ObjectKey) -> bool {
    policy.namespace == workload.namespace
        && model
            .workload(workload)
            .is_some_and(|w| crate::model::selects(&policy.selector, &w.pod.labels))
}

/// The drafts as named policies, each name new in its namespace.
fn finish(model: &MeshModel, drafts: &BTreeMap<(String, Labels), Draft>) -> Vec<SuggestedPolicy> {
    let mut taken: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut out = Vec::new();
    for ((namespace, selector), draft) in drafts {
        let rules = draft.rules();
        if rules.is_empty() {
            // Nothing it could allow: an ALLOW policy without rules would refuse everything.
            continue;
        }
        let taken = taken.entry(namespace).or_insert_with(|| {
            model
                .policies_in(namespace)
                .map(|p| p.name.clone())
                .collect()
        });
        let name = rules::policy_name(selector, taken);
        taken.insert(name.clone());
        let workloads = model
            .workloads_in(namespace)
            .filter(|w| crate::model::selects(selector, &w.pod.labels))
            .map(|w| w.key().to_string())
            .collect();
        out.push(SuggestedPolicy {
            name,
            namespace: namespace.clone(),
            selector: selector.clone(),
            workloads,
            action: "ALLOW".into(),
            rules,
            enforced_by: draft.enforced_by.iter().cloned().collect(),
            evidence: draft.evidence.clone(),
            refuses_plaintext: Vec::new(),
        });
    }
    out
}

/// The suggested policies in the model's terms (rules in wire form).
pub fn model_policies(policies: &[SuggestedPolicy]) -> Vec<AuthorizationPolicy> {
    policies
        .iter()
        .map(|p| AuthorizationPolicy {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            selector: p.selector.clone(),
            action: security::Action::Allow,
            rules: rules::wire_rules(&p.rules),
            dry_run: false,
        })
        .collect()
}

/// Builds the mesh with the suggested policies and judges every flow they mean to allow there.
fn check(model: &MeshModel, allowed: &[Allowed<'_>], suggestion: &mut Suggestion) {
    let added = model_policies(&suggestion.policies);
    let with = match with_policies(model, &added) {
        Ok(m) => m,
        Err(errors) => {
            suggestion.problems.extend(
                errors
                    .iter()
                    .map(|e| format!("the mesh with the suggested policies does not build: {e}")),
            );
            return;
        }
    };
    let ours: BTreeSet<String> = added
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    for u in with.unenforced_l7_policies() {
        if ours.contains(&u.policy.to_string()) {
            suggestion
                .problems
                .push(format!("suggested policy {}: {}", u.policy, u.reason()));
        }
    }
    let mut after = Evaluator::new(with);
    for a in allowed {
        for target in &a.targets {
            let verdict = after.judge(a.flow, &a.resolved, target);
            let (policy, reason) = match verdict {
                Ok(Judgement::Allowed) => continue,
                Ok(Judgement::Denied { policy, reason }) => (policy, reason),
                Ok(Judgement::FromWaypoint(w)) => (
                    String::new(),
                    format!("now judged as coming from waypoint {w}, not the client"),
                ),
                Err(e) => (String::new(), e),
            };
            suggestion.would_deny.push(WouldDeny {
                policy,
                workload: target.workload.to_string(),
                port: target.port,
                flow: a.flow.clone(),
                reason,
            });
        }
    }
}

#[cfg(test)]
mod tests;
