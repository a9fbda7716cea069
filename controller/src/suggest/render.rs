//! The suggestion as YAML to apply: items of a mesh file's `authorizationPolicies:` list, or
//! Kubernetes objects of Ambit's AuthorizationPolicy CRD; each policy preceded by its evidence
//! as comments (the flows, their counts, first and last seen).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{LeftOutKind, SuggestedPolicy, Suggestion};
use crate::model::Labels;
use crate::source::kubernetes::crd;
use crate::telemetry::api::ObservedFlow;

/// A mesh file's policy item (`source::file::schema::PolicySpec`, which only reads).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MeshPolicy<'a> {
    name: &'a str,
    namespace: &'a str,
    selector: MeshSelector<'a>,
    action: &'static str,
    rules: Vec<MeshRule>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MeshSelector<'a> {
    match_labels: &'a Labels,
}

#[derive(Serialize)]
struct MeshRule {
    from: Vec<MeshSource>,
    to: Vec<MeshOperation>,
}

#[derive(Serialize)]
struct MeshSource {
    principals: Vec<String>,
}

#[derive(Serialize)]
struct MeshOperation {
    ports: Vec<u16>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    methods: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    paths: Vec<String>,
}

/// The mesh file form: `authorizationPolicies:` and the policies as its items. To add them to a
/// file that has the key already, append the items to its list.
pub fn mesh_yaml(s: &Suggestion) -> String {
    let mut out = header(s);
    out.push_str("authorizationPolicies:\n");
    if s.policies.is_empty() {
        out.push_str("  []\n");
    }
    for p in &s.policies {
        let item = MeshPolicy {
            name: &p.name,
            namespace: &p.namespace,
            selector: MeshSelector {
                match_labels: &p.selector,
            },
            action: "ALLOW",
            rules: p
                .rules
                .iter()
                .map(|r| MeshRule {
                    from: vec![MeshSource {
                        principals: r.principals.clone(),
                    }],
                    to: r
                        .to
                        .iter()
                        .map(|op| MeshOperation {
                            ports: op.ports.clone(),
                            methods: op.methods.clone(),
                            paths: op.paths.clone(),
                        })
                        .collect(),
                })
                .collect(),
        };
        for line in evidence(p) {
            out.push_str(&format!("  # {line}\n"));
        }
        out.push_str(&list_item(&to_yaml(&item), "  "));
    }
    out
}

/// The Kubernetes form: one `ambit.io/v1alpha1` AuthorizationPolicy document per policy.
/// Principals in Istio's form (without `spiffe://`), as a policy written for Istio has them.
pub fn kubernetes_yaml(s: &Suggestion) -> String {
    let mut out = header(s);
    for (i, p) in s.policies.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        for line in evidence(p) {
            out.push_str(&format!("# {line}\n"));
        }
        out.push_str(&to_yaml(&crd_policy(p)));
    }
    out
}

/// The CRD object of a suggested policy.
pub fn crd_policy(p: &SuggestedPolicy) -> crd::AuthorizationPolicy {
    let spec = crd::AuthorizationPolicySpec {
        selector: Some(crd::WorkloadSelector {
            match_labels: p.selector.clone(),
        }),
        action: Some(crd::Action::Allow),
        rules: p
            .rules
            .iter()
            .map(|r| crd::Rule {
                from: vec![crd::From {
                    source: crd::Source {
                        principals: r
                            .principals
                            .iter()
                            .map(|id| id.strip_prefix("spiffe://").unwrap_or(id).to_string())
                            .collect(),
                        ..Default::default()
                    },
                }],
                to: r
                    .to
                    .iter()
                    .map(|op| crd::To {
                        operation: crd::Operation {
                            ports: op.ports.iter().map(u16::to_string).collect(),
                            methods: op.methods.clone(),
                            paths: op.paths.clone(),
                            ..Default::default()
                        },
                    })
                    .collect(),
                when: Vec::new(),
            })
            .collect(),
    };
    let mut object = crd::AuthorizationPolicy::new(&p.name, spec);
    object.metadata.namespace = Some(p.namespace.clone());
    object
}

fn to_yaml<T: Serialize>(value: &T) -> String {
    // Our own plain structs of strings, numbers and lists: serialisation cannot fail.
    serde_saphyr::to_string(value).unwrap_or_default()
}

/// `mapping` (block YAML) as an item of a list indented by `indent`.
fn list_item(mapping: &str, indent: &str) -> String {
    mapping
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let lead = if i == 0 { "- " } else { "  " };
            format!("{indent}{lead}{line}\n")
        })
        .collect()
}

fn header(s: &Suggestion) -> String {
    let mut out = format!(
        "# Suggested by `ambit policy suggest` at {}{}, from the flows the proxies observed.\n\
         # Least privilege: once applied, each policy's workloads accept only what it lists.\n",
        rfc3339(s.generated_unix_ms),
        s.namespace
            .as_deref()
            .map(|n| format!(" for namespace {n}"))
            .unwrap_or_default(),
    );
    if s.is_faulty() {
        out.push_str("# WARNING: this suggestion is faulty, do not apply it as it is:\n");
        for w in &s.would_deny {
            out.push_str(&format!(
                "#   it would deny {} at {} port {}: {}\n",
                describe(&w.flow),
                w.workload,
                w.port,
                one_line(&w.reason)
            ));
        }
        for p in &s.problems {
            out.push_str(&format!("#   {}\n", one_line(p)));
        }
    }
    for l in &s.left_out {
        let note = match l.kind {
            LeftOutKind::Plaintext => "not allowed (plaintext)",
            LeftOutKind::DeniedNow => "not allowed (denied now)",
            LeftOutKind::Unselectable => "not allowed (no selector)",
            LeftOutKind::Inexpressible => "not allowed (no exact rule)",
            LeftOutKind::UnknownDestination => "not allowed (unknown destination)",
            // Nothing to decide: the waypoint judged these.
            LeftOutKind::FromWaypoint => continue,
        };
        out.push_str(&format!(
            "# {note}: {}: {}\n",
            describe(&l.flow),
            one_line(&l.reason)
        ));
    }
    out
}

/// The comment lines before a policy: what it selects, who enforces it, and every flow it
/// allows or refuses with its counts and when it was seen.
fn evidence(p: &SuggestedPolicy) -> Vec<String> {
    let selector: Vec<String> = p.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut lines = vec![
        format!(
            "{}/{}: selects {} ({}); enforced by {}",
            p.namespace,
            p.name,
            selector.join(","),
            p.workloads.join(", "),
            p.enforced_by.join(" and ")
        ),
        "observed:".to_string(),
    ];
    for f in &p.evidence {
        lines.push(format!("  {}", seen(f)));
    }
    for f in &p.refuses_plaintext {
        lines.push(format!(
            "  REFUSED once applied (plaintext, no principal to allow): {}",
            seen(f)
        ));
    }
    lines
}

fn seen(f: &ObservedFlow) -> String {
    let unit = if f.reporter_kind == super::WAYPOINT {
        "requests"
    } else {
        "connections"
    };
    format!(
        "{}: {} {unit} ({} failed), first seen {}, last seen {}",
        describe(f),
        f.count,
        f.failed,
        rfc3339(f.first_seen_unix_ms),
        rfc3339(f.last_seen_unix_ms)
    )
}

/// `<source> -> <destination>:<port> [<method> <path>]`.
pub fn describe(f: &ObservedFlow) -> String {
    let source = if f.source_identity.is_empty() {
        "plaintext client"
    } else {
        &f.source_identity
    };
    let destination = if f.destination_service.is_empty() || f.reporter_kind == super::ZTUNNEL {
        format!("{}/{}", f.destination_namespace, f.destination_workload)
    } else {
        f.destination_service.clone()
    };
    let request = if f.method.is_empty() {
        String::new()
    } else {
        format!(" {} {}", f.method, f.path_prefix)
    };
    format!(
        "{source} -> {destination}:{}{request} (seen by {})",
        f.destination_port, f.reporter_kind
    )
}

fn rfc3339(unix_ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(unix_ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(at.max(SystemTime::UNIX_EPOCH)).to_string()
}

/// A comment ends at the line's end: a reason's line breaks must not end it.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}
