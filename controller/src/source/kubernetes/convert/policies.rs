//! Ambit's AuthorizationPolicy to the model's policy (rules in their wire form).
//!
//! A value the mesh cannot use (a port that is not a number, a malformed CIDR or principal, a
//! host with a port, a `when` key other than `source.principal`, `source.namespace` and
//! `request.headers[<name>]`, an Istio field Ambit cannot check such as `requestPrincipals`) is
//! reported with its field and the fix, and the policy fails closed, as Istio's do: in an ALLOW
//! policy the rule holding it is left out (the policy allows less, never more), in a DENY (or
//! AUDIT) policy the field holding it is ignored (the rule matches more, so denies, or reports,
//! more). Leaving the whole policy out instead would open a workload whose only ALLOW policy had
//! a typo.
//!
//! `when` conditions travel as conditions of their rule, so they hold together with its `from`
//! and `to` (Istio's AND). Which policies use L7 fields where no waypoint can check them is
//! reported once the model is built (`MeshModel::unenforced_l7_policies`, in `assemble`).

use ambit_proto::api::security as spb;

use super::{Skip, key};
use crate::model::{self, Kind, ResourceRef};
use crate::source::kubernetes::crd;

/// The fields of one rule that could not be used, as `field: why; fix`.
type Problems = Vec<String>;

pub(super) fn policy(
    p: &crd::AuthorizationPolicy,
    skips: &mut Vec<Skip>,
) -> Option<model::AuthorizationPolicy> {
    let (namespace, name) = key(&p.metadata);
    let subject = ResourceRef::new(Kind::AuthorizationPolicy, format!("{namespace}/{name}"));
    let action = match p.spec.action.unwrap_or(crd::Action::Allow) {
        crd::Action::Allow => spb::Action::Allow,
        crd::Action::Deny => spb::Action::Deny,
        crd::Action::Audit => spb::Action::Audit,
    };
    let mut rules = Vec::new();
    for (i, r) in p.spec.rules.iter().enumerate() {
        let mut problems = Problems::new();
        let converted = rule(r, &format!("spec.rules[{i}]"), &mut problems);
        let outcome = match action {
            spb::Action::Allow => {
                "ALLOW policy: this rule is left out, so the policy allows less, not more"
            }
            spb::Action::Deny => {
                "DENY policy: that field is ignored, so the rule denies more, not less"
            }
            spb::Action::Audit => {
                "AUDIT policy: that field is ignored, so the rule reports more, not less"
            }
        };
        if problems.is_empty() || action != spb::Action::Allow {
            rules.push(converted);
        }
        for problem in problems {
            skips.push(Skip {
                subject: subject.clone(),
                reason: format!("{problem} ({outcome})"),
            });
        }
    }
    Some(model::AuthorizationPolicy {
        name,
        namespace,
        selector: p
            .spec
            .selector
            .as_ref()
            .map(|s| s.match_labels.clone())
            .unwrap_or_default(),
        action,
        rules,
        // The model sets it from the namespace's policy mode.
        dry_run: false,
    })
}

fn rule(r: &crd::Rule, path: &str, problems: &mut Problems) -> spb::Rule {
    let from = r
        .from
        .iter()
        .enumerate()
        .map(|(j, f)| source(&f.source, &format!("{path}.from[{j}].source"), problems))
        .collect();
    let to =
        r.to.iter()
            .enumerate()
            .map(|(k, t)| operation(&t.operation, &format!("{path}.to[{k}].operation"), problems))
            .collect();
    let when = conditions(&r.when, path, problems);
    spb::Rule { from, to, when }
}

/// `values` if each passes `check`, else nothing (the field is dropped) and a problem.
fn checked(
    values: &[String],
    field: &str,
    check: fn(&str) -> Result<(), String>,
    fix: &str,
    problems: &mut Problems,
) -> Vec<String> {
    for (i, value) in values.iter().enumerate() {
        if let Err(why) = check(value) {
            problems.push(format!("{field}[{i}] {value:?}: {why}; {fix}"));
            return Vec::new();
        }
    }
    values.to_vec()
}

/// Istio writes principals without the `spiffe://` the wire form (and the certificates) carry:
/// `cluster.local/ns/a/sa/b`, `cluster.local/ns/a/*`, `*`. Both forms are accepted.
fn spiffe_form(principal: &str) -> String {
    if principal.starts_with("spiffe://") {
        principal.to_string()
    } else {
        format!("spiffe://{principal}")
    }
}

fn source(s: &crd::Source, path: &str, problems: &mut Problems) -> spb::Source {
    const PRINCIPAL_FIX: &str = "write <trust domain>/ns/<namespace>/sa/<service account> (or it with spiffe:// in front), or a prefix ending in *";
    const BLOCK_FIX: &str = "write an address or a CIDR like 10.0.0.0/8";
    let unsupported = [
        (
            "requestPrincipals",
            &s.request_principals,
            "Ambit has no JWT authentication",
        ),
        (
            "notRequestPrincipals",
            &s.not_request_principals,
            "Ambit has no JWT authentication",
        ),
        (
            "remoteIpBlocks",
            &s.remote_ip_blocks,
            "the original client address is not known; use ipBlocks",
        ),
        (
            "notRemoteIpBlocks",
            &s.not_remote_ip_blocks,
            "the original client address is not known; use notIpBlocks",
        ),
        (
            "serviceAccounts",
            &s.service_accounts,
            "write them as principals",
        ),
        (
            "notServiceAccounts",
            &s.not_service_accounts,
            "write them as notPrincipals",
        ),
    ];
    for (field, values, fix) in unsupported {
        if !values.is_empty() {
            problems.push(format!("{path}.{field} is not supported ({fix})"));
        }
    }
    let principals = |field: &str, values: &[String], problems: &mut Problems| {
        let field = format!("{path}.{field}");
        let values: Vec<String> = values.iter().map(|p| spiffe_form(p)).collect();
        checked(
            &values,
            &field,
            model::check_principal,
            PRINCIPAL_FIX,
            problems,
        )
    };
    let blocks = |field: &str, values: &[String], problems: &mut Problems| {
        let field = format!("{path}.{field}");
        checked(values, &field, model::check_ip_block, BLOCK_FIX, problems)
    };
    spb::Source {
        principals: principals("principals", &s.principals, problems),
        not_principals: principals("notPrincipals", &s.not_principals, problems),
        namespaces: s.namespaces.clone(),
        not_namespaces: s.not_namespaces.clone(),
        ip_blocks: blocks("ipBlocks", &s.ip_blocks, problems),
        not_ip_blocks: blocks("notIpBlocks", &s.not_ip_blocks, problems),
    }
}

/// Ports are strings in Istio's API; the mesh needs numbers.
fn ports(values: &[String], field: &str, problems: &mut Problems) -> Vec<u32> {
    let mut out = Vec::new();
    for (i, value) in values.iter().enumerate() {
        match value.trim().parse::<u16>() {
            Ok(port) if port != 0 => out.push(u32::from(port)),
            _ => {
                problems.push(format!(
                    "{field}[{i}] {value:?} is not a port number; give the pod's (target) port as a number from 1 to 65535, e.g. \"8080\""
                ));
                return Vec::new();
            }
        }
    }
    out
}

fn operation(o: &crd::Operation, path: &str, problems: &mut Problems) -> spb::Destination {
    const HOST_FIX: &str = "write the host alone (ports go in ports)";
    let hosts = |field: &str, values: &[String], problems: &mut Problems| {
        let field = format!("{path}.{field}");
        checked(values, &field, model::check_policy_host, HOST_FIX, problems)
    };
    spb::Destination {
        ports: ports(&o.ports, &format!("{path}.ports"), problems),
        not_ports: ports(&o.not_ports, &format!("{path}.notPorts"), problems),
        methods: o.methods.clone(),
        not_methods: o.not_methods.clone(),
        paths: o.paths.clone(),
        not_paths: o.not_paths.clone(),
        hosts: hosts("hosts", &o.hosts, problems),
        not_hosts: hosts("notHosts", &o.not_hosts, problems),
        headers: Vec::new(),
    }
}

/// `when` conditions in their wire form: `source.principal` (Istio's form or SPIFFE IDs, as
/// `principals`), `source.namespace` and `request.headers[<name>]`, with `values` and/or
/// `notValues`. A condition that cannot be used is a problem (and is not carried).
fn conditions(when: &[crd::Condition], path: &str, problems: &mut Problems) -> Vec<spb::Condition> {
    let mut out = Vec::new();
    for (c, condition) in when.iter().enumerate() {
        let field = format!("{path}.when[{c}]");
        let header = condition
            .key
            .strip_prefix("request.headers[")
            .and_then(|k| k.strip_suffix(']'));
        let (key, values, not_values) = match (condition.key.as_str(), header) {
            (model::SOURCE_PRINCIPAL, _) => (
                condition.key.clone(),
                condition.values.iter().map(|p| spiffe_form(p)).collect(),
                condition
                    .not_values
                    .iter()
                    .map(|p| spiffe_form(p))
                    .collect(),
            ),
            (model::SOURCE_NAMESPACE, _) => (
                condition.key.clone(),
                condition.values.clone(),
                condition.not_values.clone(),
            ),
            (_, Some(name)) => (
                format!("request.headers[{}]", name.to_ascii_lowercase()),
                condition.values.clone(),
                condition.not_values.clone(),
            ),
            (key, None) => {
                problems.push(format!(
                    "{field}.key {key:?} is not supported (only source.principal, source.namespace and request.headers[<name>]); express it with from/to (principals, namespaces, ipBlocks, ports) instead"
                ));
                continue;
            }
        };
        let converted = spb::Condition {
            key,
            values,
            not_values,
        };
        match model::check_condition(&converted) {
            Ok(()) => out.push(converted),
            Err(why) => problems.push(format!("{field}: {why}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn convert(spec: Value) -> (model::AuthorizationPolicy, Vec<Skip>) {
        let p: crd::AuthorizationPolicy = serde_json::from_value(json!({
            "apiVersion": "ambit.io/v1alpha1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "p", "namespace": "demo"},
            "spec": spec
        }))
        .unwrap();
        let mut skips = Vec::new();
        let policy = policy(&p, &mut skips).unwrap();
        (policy, skips)
    }

    #[test]
    fn an_istio_shaped_policy_becomes_wire_rules() {
        let (p, skips) = convert(json!({
            "selector": {"matchLabels": {"app": "reviews"}},
            "rules": [{
                "from": [{"source": {"principals": ["spiffe://cluster.local/ns/a/sa/b",
                                                     "cluster.local/ns/c/*", "*"],
                                      "notIpBlocks": ["10.0.0.0/8"]}}],
                "to": [{"operation": {"ports": ["8080"], "notPorts": ["9090"], "methods": ["GET"]}},
                       {"operation": {"paths": ["/api/*"]}}],
                "when": [{"key": "request.headers[X-User]", "values": ["jason"]}]
            }]
        }));
        assert!(skips.is_empty(), "{skips:?}");
        assert_eq!(p.action, spb::Action::Allow, "ALLOW is the default");
        assert_eq!(p.selector.get("app").map(String::as_str), Some("reviews"));
        let rule = &p.rules[0];
        assert_eq!(
            rule.from[0].principals,
            vec![
                "spiffe://cluster.local/ns/a/sa/b",
                "spiffe://cluster.local/ns/c/*",
                "spiffe://*"
            ],
            "Istio's form gets the spiffe:// the certificates carry"
        );
        assert_eq!(rule.from[0].not_ip_blocks, vec!["10.0.0.0/8"]);
        assert_eq!(rule.to[0].ports, vec![8080]);
        assert_eq!(rule.to[0].not_ports, vec![9090]);
        assert_eq!(rule.to.len(), 2);
        assert_eq!(rule.to[0].methods, vec!["GET"]);
        assert_eq!(rule.to[1].paths, vec!["/api/*"]);
        assert_eq!(
            rule.when,
            vec![spb::Condition {
                key: "request.headers[x-user]".into(),
                values: vec!["jason".into()],
                not_values: vec![],
            }],
            "the header name is lowercased, the condition stays with its rule"
        );
    }

    #[test]
    fn when_conditions_on_the_source_and_headers_travel_with_their_rule() {
        let (p, skips) = convert(json!({
            "action": "DENY",
            "rules": [{
                "from": [{"source": {"namespaces": ["demo"]}}],
                "when": [
                    {"key": "source.principal", "values": ["cluster.local/ns/demo/sa/a"],
                     "notValues": ["spiffe://cluster.local/ns/demo/sa/b"]},
                    {"key": "source.namespace", "notValues": ["kube-system"]},
                    {"key": "request.headers[X-Env]", "notValues": ["prod"]}
                ]
            }]
        }));
        assert!(skips.is_empty(), "{skips:?}");
        let rule = &p.rules[0];
        assert!(rule.to.is_empty(), "no destination is made up for them");
        assert_eq!(rule.from[0].namespaces, vec!["demo"]);
        assert_eq!(
            rule.when,
            vec![
                spb::Condition {
                    key: "source.principal".into(),
                    values: vec!["spiffe://cluster.local/ns/demo/sa/a".into()],
                    not_values: vec!["spiffe://cluster.local/ns/demo/sa/b".into()],
                },
                spb::Condition {
                    key: "source.namespace".into(),
                    values: vec![],
                    not_values: vec!["kube-system".into()],
                },
                spb::Condition {
                    key: "request.headers[x-env]".into(),
                    values: vec![],
                    not_values: vec!["prod".into()],
                },
            ]
        );
    }

    #[test]
    fn audit_policies_convert_and_fail_like_deny() {
        let (p, skips) = convert(json!({
            "action": "AUDIT",
            "rules": [{
                "to": [{"operation": {"hosts": ["reviews:9080", "ratings"], "paths": ["/admin*"]}}],
                "when": [{"key": "source.principal", "values": ["not a principal"]},
                         {"key": "request.headers[x-a]"}]
            }]
        }));
        assert_eq!(p.action, spb::Action::Audit);
        assert_eq!(
            p.rules.len(),
            1,
            "an AUDIT rule keeps the rest, as a DENY's"
        );
        let rule = &p.rules[0];
        assert!(
            rule.to[0].hosts.is_empty(),
            "a host with a port drops the field"
        );
        assert_eq!(rule.to[0].paths, vec!["/admin*"]);
        assert!(rule.when.is_empty());
        assert_eq!(skips.len(), 3, "{skips:?}");
        assert!(
            skips.iter().all(|s| s.reason.contains("reports more")),
            "{skips:?}"
        );
        assert!(
            skips[0].reason.contains("hosts[0] \"reviews:9080\""),
            "{skips:?}"
        );
        assert!(skips[0].reason.contains("without port"), "{skips:?}");
        assert!(skips[1].reason.contains("when[0]"), "{skips:?}");
        assert!(
            skips[2].reason.contains("neither values nor notValues"),
            "{skips:?}"
        );
    }

    #[test]
    fn a_bad_value_in_an_allow_policy_drops_its_rule() {
        let (p, skips) = convert(json!({
            "action": "ALLOW",
            "rules": [
                {"to": [{"operation": {"ports": ["http"]}}]},
                {"from": [{"source": {"ipBlocks": ["10.0.0.0/40"]}}]},
                {"when": [{"key": "source.ip", "values": ["10.0.0.1"]}]},
                {"from": [{"source": {"requestPrincipals": ["*"]}}]},
                {"to": [{"operation": {"ports": ["8080"]}}]}
            ]
        }));
        assert_eq!(p.rules.len(), 1, "only the good rule stays");
        assert_eq!(p.rules[0].to[0].ports, vec![8080]);
        assert_eq!(skips.len(), 4, "{skips:?}");
        assert!(
            skips[0]
                .reason
                .contains("spec.rules[0].to[0].operation.ports[0] \"http\"")
        );
        assert!(skips[0].reason.contains("allows less"));
        assert!(
            skips[1]
                .reason
                .contains("spec.rules[1].from[0].source.ipBlocks[0]")
        );
        assert!(skips[1].reason.contains("CIDR"));
        assert!(skips[2].reason.contains("source.ip"));
        assert!(
            skips[3]
                .reason
                .contains("spec.rules[3].from[0].source.requestPrincipals")
        );
    }

    #[test]
    fn a_bad_value_in_a_deny_policy_drops_its_field() {
        let (p, skips) = convert(json!({
            "action": "DENY",
            "rules": [{
                "from": [{"source": {"principals": ["spiffe://cluster.local/ns/*/sa/b"], "namespaces": ["a"]}}],
                "to": [{"operation": {"ports": ["80", "x"], "methods": ["POST"]}}]
            }]
        }));
        assert_eq!(p.rules.len(), 1);
        let rule = &p.rules[0];
        assert!(rule.from[0].principals.is_empty());
        assert_eq!(rule.from[0].namespaces, vec!["a"]);
        assert!(
            rule.to[0].ports.is_empty(),
            "the whole field goes, not just the bad value"
        );
        assert_eq!(rule.to[0].methods, vec!["POST"]);
        assert_eq!(skips.len(), 2, "{skips:?}");
        assert!(skips.iter().all(|s| s.reason.contains("denies more")));
        assert!(skips[0].reason.contains("principals[0]"));
    }
}
