//! What each authorization policy decides for this source on this port, computed by the code
//! the proxies enforce with (`ambit_discovery::state::decide`), from the very proto the
//! controller sends them ([`MeshModel::policy_proto`]), so `explain` cannot disagree with
//! enforcement.
//!
//! The proxies answer one question: the decision for one connection or request. Explaining
//! needs more: which rule matched and why the others did not, and, at a waypoint, what depends
//! on a request not yet made. Both are asked of the same code with derived policies: one rule
//! (or one clause of it) at a time; and a rule's L4 part alone (its L7 conditions removed),
//! which is what it matches when the request's L7 attributes go its way. Because more matching
//! DENY rules only deny more and more matching ALLOW rules only allow more, the best case (every
//! L7-dependent DENY rule missing, every such ALLOW rule matching) and the worst case (the
//! reverse) bound every request: when both agree, the request does not matter.

use std::net::IpAddr;
use std::sync::Arc;

use ambit_discovery::state::{Decision, Policy, PolicySource, Verdict as ProxyVerdict, decide};
use ambit_proto::api::security as spb;
use ambit_proto::identity::SpiffeId;

use crate::model::{AuthorizationPolicy, MeshModel, l7_fields};

use super::ExplainError;
use super::types::{ClauseCheck, ClauseResult, PolicyOutcome, RuleCheck, RuleResult, Verdict};

/// Who asks: the identity is `None` for plain text (a source outside the mesh).
#[derive(Clone, Copy)]
pub struct Asker<'a> {
    pub identity: Option<&'a SpiffeId>,
    pub ip: IpAddr,
}

impl Asker<'_> {
    fn source(&self) -> PolicySource<'_> {
        PolicySource {
            identity: self.identity,
            ip: self.ip,
        }
    }
}

/// How the deciding proxy sees the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// A ztunnel, or a waypoint carrying opaque TCP: L7 conditions fail closed.
    L4,
    /// A waypoint with the request in hand.
    L7,
}

fn compile(proto: &spb::AuthorizationPolicy) -> Result<Arc<Policy>, ExplainError> {
    Policy::from_api(proto)
        .map(Arc::new)
        .map_err(|e| ExplainError::Policy {
            policy: format!("{}/{}", proto.namespace, proto.name),
            reason: e.to_string(),
        })
}

/// `policy` with other rules, enforced (for asking about its rules one by one).
fn with_rules(
    policy: &spb::AuthorizationPolicy,
    rules: Vec<spb::Rule>,
) -> spb::AuthorizationPolicy {
    spb::AuthorizationPolicy {
        rules,
        dry_run: false,
        ..policy.clone()
    }
}

/// The rule without its L7 conditions: what ztunnel can check of it.
fn l4_part(rule: &spb::Rule) -> spb::Rule {
    spb::Rule {
        from: rule.from.clone(),
        to: rule
            .to
            .iter()
            .map(|d| spb::Destination {
                ports: d.ports.clone(),
                not_ports: d.not_ports.clone(),
                ..Default::default()
            })
            .collect(),
        when: rule
            .when
            .iter()
            .filter(|c| !is_header_condition(c))
            .cloned()
            .collect(),
    }
}

fn is_header_condition(c: &spb::Condition) -> bool {
    c.key.starts_with("request.headers[")
}

/// Does this rule alone match, as a DENY (whose decision is a plain "matched")?
fn matches_alone(
    policy: &spb::AuthorizationPolicy,
    rule: spb::Rule,
    asker: &Asker<'_>,
    port: u16,
) -> Result<bool, ExplainError> {
    let probe = spb::AuthorizationPolicy {
        action: spb::Action::Deny.into(),
        ..with_rules(policy, vec![rule])
    };
    let compiled = compile(&probe)?;
    let verdict = decide(std::iter::once(&compiled), &asker.source(), port);
    Ok(!verdict.is_allowed())
}

/// Does the rule match as the proxy at `layer` evaluates it (L7 conditions aside at a
/// waypoint, where they decide per request)?
fn rule_matches_at_l4(
    policy: &spb::AuthorizationPolicy,
    rule: &spb::Rule,
    asker: &Asker<'_>,
    port: u16,
) -> Result<bool, ExplainError> {
    let compiled = compile(&with_rules(policy, vec![rule.clone()]))?;
    let verdict = decide(std::iter::once(&compiled), &asker.source(), port);
    Ok(match spb::Action::try_from(policy.action) {
        Ok(spb::Action::Allow) => verdict.is_allowed(),
        Ok(spb::Action::Deny) => !verdict.is_allowed(),
        _ => !verdict.audited.is_empty(),
    })
}

fn list(name: &str, values: &[String]) -> Option<String> {
    (!values.is_empty()).then(|| format!("{name} [{}]", values.join(", ")))
}

fn ports(name: &str, values: &[u32]) -> Option<String> {
    let v: Vec<String> = values.iter().map(u32::to_string).collect();
    list(name, &v)
}

fn joined(parts: impl IntoIterator<Item = Option<String>>, empty: &str) -> String {
    let parts: Vec<String> = parts.into_iter().flatten().collect();
    if parts.is_empty() {
        empty.to_string()
    } else {
        parts.join(", ")
    }
}

fn describe_source(s: &spb::Source) -> String {
    joined(
        [
            list("principals", &s.principals),
            list("not principals", &s.not_principals),
            list("namespaces", &s.namespaces),
            list("not namespaces", &s.not_namespaces),
            list("ipBlocks", &s.ip_blocks),
            list("not ipBlocks", &s.not_ip_blocks),
        ],
        "any source",
    )
}

fn describe_l4_destination(d: &spb::Destination) -> String {
    joined(
        [ports("ports", &d.ports), ports("not ports", &d.not_ports)],
        "any port",
    )
}

fn describe_l7_destination(d: &spb::Destination) -> Option<String> {
    let headers: Vec<String> = d
        .headers
        .iter()
        .map(|h| format!("{} in [{}]", h.name, h.values.join(", ")))
        .collect();
    let text = joined(
        [
            list("methods", &d.methods),
            list("not methods", &d.not_methods),
            list("paths", &d.paths),
            list("not paths", &d.not_paths),
            list("hosts", &d.hosts),
            list("not hosts", &d.not_hosts),
            list("headers", &headers),
        ],
        "",
    );
    (!text.is_empty()).then_some(text)
}

fn describe_condition(c: &spb::Condition) -> String {
    joined(
        [
            list(&format!("{} in", c.key), &c.values),
            list(&format!("{} not in", c.key), &c.not_values),
        ],
        &c.key,
    )
}

/// Each clause of `rule` and whether it holds for this source and port.
fn check_rule(
    policy: &spb::AuthorizationPolicy,
    index: usize,
    rule: &spb::Rule,
    asker: &Asker<'_>,
    port: u16,
    layer: Layer,
) -> Result<RuleCheck, ExplainError> {
    let needs_request = match layer {
        Layer::L7 => ClauseResult::NeedsRequest,
        Layer::L4 => ClauseResult::NotCheckedAtL4,
    };
    let yes_no = |b: bool| {
        if b {
            ClauseResult::Matches
        } else {
            ClauseResult::DoesNotMatch
        }
    };
    let mut clauses = Vec::new();
    for s in &rule.from {
        let probe = spb::Rule {
            from: vec![s.clone()],
            ..Default::default()
        };
        clauses.push(ClauseCheck {
            part: "from".into(),
            text: describe_source(s),
            result: yes_no(matches_alone(policy, probe, asker, port)?),
        });
    }
    for d in &rule.to {
        let probe = l4_part(&spb::Rule {
            to: vec![d.clone()],
            ..Default::default()
        });
        let l4 = matches_alone(policy, probe, asker, port)?;
        let l7 = describe_l7_destination(d);
        let mut text = describe_l4_destination(d);
        if let Some(l7) = &l7 {
            text = if d.ports.is_empty() && d.not_ports.is_empty() {
                l7.clone()
            } else {
                format!("{text}, {l7}")
            };
        }
        let result = match (l4, l7.is_some()) {
            (false, _) => ClauseResult::DoesNotMatch,
            (true, true) => needs_request,
            (true, false) => ClauseResult::Matches,
        };
        clauses.push(ClauseCheck {
            part: "to".into(),
            text,
            result,
        });
    }
    for c in &rule.when {
        let result = if is_header_condition(c) {
            needs_request
        } else {
            let probe = spb::Rule {
                when: vec![c.clone()],
                ..Default::default()
            };
            yes_no(matches_alone(policy, probe, asker, port)?)
        };
        clauses.push(ClauseCheck {
            part: "when".into(),
            text: describe_condition(c),
            result,
        });
    }
    let fields: Vec<String> = l7_fields(std::slice::from_ref(rule))
        .into_iter()
        .map(str::to_string)
        .collect();
    let result = match layer {
        Layer::L4 => {
            if rule_matches_at_l4(policy, rule, asker, port)? {
                RuleResult::Matches
            } else {
                RuleResult::DoesNotMatch
            }
        }
        Layer::L7 => {
            if !matches_alone(policy, l4_part(rule), asker, port)? {
                RuleResult::DoesNotMatch
            } else if fields.is_empty() {
                RuleResult::Matches
            } else {
                RuleResult::DependsOnRequest { fields }
            }
        }
    };
    Ok(RuleCheck {
        index,
        clauses,
        result,
    })
}

/// Every rule of the policy checked, and what the policy as a whole does for this source.
pub fn check_policy(
    model: &MeshModel,
    policy: &AuthorizationPolicy,
    asker: &Asker<'_>,
    port: u16,
    layer: Layer,
) -> Result<(Vec<RuleCheck>, PolicyOutcome), ExplainError> {
    let proto = model.policy_proto(policy);
    let rules = proto
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| check_rule(&proto, i, r, asker, port, layer))
        .collect::<Result<Vec<_>, _>>()?;
    let outcome = if let Some(r) = rules.iter().find(|r| r.result == RuleResult::Matches) {
        PolicyOutcome::Matches { rule: r.index }
    } else {
        let depends: Vec<usize> = rules
            .iter()
            .filter(|r| matches!(r.result, RuleResult::DependsOnRequest { .. }))
            .map(|r| r.index)
            .collect();
        if depends.is_empty() {
            PolicyOutcome::NoRuleMatches
        } else {
            PolicyOutcome::DependsOnRequest { rules: depends }
        }
    };
    Ok((rules, outcome))
}

fn verdict(v: ProxyVerdict) -> Verdict {
    match (v.decision, v.would_deny) {
        (Decision::Deny { policy, reason }, _) => Verdict::Denied {
            policy: policy.into(),
            reason,
        },
        (Decision::Allow { .. }, Some(Decision::Deny { policy, reason })) => {
            Verdict::WouldBeDenied {
                policy: policy.into(),
                reason,
            }
        }
        (Decision::Allow { policy }, _) => Verdict::Allowed {
            policy: policy.map(|p| p.to_string()),
            audited: v.audited.iter().map(|p| p.to_string()).collect(),
        },
    }
}

/// Which case of the L7-dependent rules a variant assumes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Case {
    /// DENY and AUDIT rules with L7 conditions miss, ALLOW ones match on their L4 part.
    Best,
    Worst,
}

fn variant(proto: &spb::AuthorizationPolicy, case: Case) -> spb::AuthorizationPolicy {
    let allow = proto.action == i32::from(spb::Action::Allow);
    // Does an L7-dependent rule of this policy match in this case?
    let l7_matches = allow == (case == Case::Best);
    let rules = proto
        .rules
        .iter()
        .filter_map(|r| {
            if l7_fields(std::slice::from_ref(r)).is_empty() {
                Some(r.clone())
            } else if l7_matches {
                Some(l4_part(r))
            } else {
                None
            }
        })
        .collect();
    spb::AuthorizationPolicy {
        rules,
        ..proto.clone()
    }
}

/// The decision of `selected` (every policy selecting one endpoint) for this source on
/// `port`, as the proxy at `layer` makes it.
pub fn decide_for(
    model: &MeshModel,
    selected: &[&AuthorizationPolicy],
    asker: &Asker<'_>,
    port: u16,
    layer: Layer,
) -> Result<Verdict, ExplainError> {
    let protos: Vec<spb::AuthorizationPolicy> =
        selected.iter().map(|p| model.policy_proto(p)).collect();
    let run = |protos: &[spb::AuthorizationPolicy]| -> Result<Verdict, ExplainError> {
        let compiled = protos.iter().map(compile).collect::<Result<Vec<_>, _>>()?;
        Ok(verdict(decide(compiled.iter(), &asker.source(), port)))
    };
    if layer == Layer::L4 {
        return run(&protos);
    }
    let best: Vec<_> = protos.iter().map(|p| variant(p, Case::Best)).collect();
    let worst: Vec<_> = protos.iter().map(|p| variant(p, Case::Worst)).collect();
    let (best, worst) = (run(&best)?, run(&worst)?);
    let same = std::mem::discriminant(&best) == std::mem::discriminant(&worst);
    if same {
        // Both allow: the worst case's reason holds for every request; both deny: the best's.
        return Ok(match best {
            Verdict::Denied { .. } => best,
            _ => worst,
        });
    }
    let mut policies = Vec::new();
    let mut fields = Vec::new();
    for (policy, proto) in selected.iter().zip(&protos) {
        let mut involved = false;
        for rule in &proto.rules {
            let f = l7_fields(std::slice::from_ref(rule));
            if !f.is_empty() && matches_alone(proto, l4_part(rule), asker, port)? {
                involved = true;
                fields.extend(f.into_iter().map(str::to_string));
            }
        }
        if involved {
            policies.push(format!("{}/{}", policy.namespace, policy.name));
        }
    }
    fields.sort();
    fields.dedup();
    Ok(Verdict::DependsOnRequest {
        policies,
        fields,
        best_case: Box::new(best),
        worst_case: Box::new(worst),
    })
}
