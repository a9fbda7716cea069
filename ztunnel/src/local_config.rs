//! Standalone config: ztunnel's view of the mesh from a local YAML file instead of the
//! controller (`--config-file`), as Istio's ztunnel takes a local config. The file lists the
//! resources the controller would send, in the API's own terms, and is reloaded on change; an
//! edit that does not parse or validate is refused with its line and reason, and the last good
//! config stays.
//!
//! ```yaml
//! workloads:
//!   - {uid: w1, name: reviews-v1, namespace: demo, serviceAccount: reviews, node: node-a,
//!      addresses: [10.244.1.4], protocol: HBONE, authorizationPolicies: [demo/deny-bad]}
//! services:
//!   - {name: reviews, namespace: demo, addresses: [10.96.0.10],
//!      ports: [{port: 9080, targetPort: 8080}], endpoints: [w1]}
//! authorizationPolicies:
//!   - name: deny-bad
//!     namespace: demo
//!     action: DENY
//!     rules: [{from: [{principals: [spiffe://cluster.local/ns/demo/sa/bad]}]}]
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ambit_discovery::Apply;
use ambit_proto::api::discovery::{Resource, SubscribeResponse, resource::Kind};
use ambit_proto::api::{security, workload};
use ambit_proto::drain::DrainWatch;
use serde::Deserialize;

use crate::xds::Applier;

#[derive(Debug, thiserror::Error)]
pub enum LocalConfigError {
    #[error("could not read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Syntax {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct File {
    #[serde(default)]
    workloads: Vec<WorkloadSpec>,
    #[serde(default)]
    services: Vec<ServiceSpec>,
    #[serde(default)]
    authorization_policies: Vec<PolicySpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WorkloadSpec {
    uid: String,
    name: String,
    namespace: String,
    service_account: String,
    #[serde(default)]
    node: String,
    addresses: Vec<String>,
    protocol: ProtocolSpec,
    #[serde(default)]
    trust_domain: Option<String>,
    #[serde(default)]
    authorization_policies: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
enum ProtocolSpec {
    Hbone,
    Tcp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceSpec {
    name: String,
    namespace: String,
    #[serde(default)]
    hostname: String,
    addresses: Vec<String>,
    ports: Vec<PortSpec>,
    #[serde(default)]
    endpoints: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PortSpec {
    port: u32,
    #[serde(default)]
    target_port: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PolicySpec {
    name: String,
    namespace: String,
    action: ActionSpec,
    #[serde(default)]
    rules: Vec<RuleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
enum ActionSpec {
    Allow,
    Deny,
    Audit,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuleSpec {
    #[serde(default)]
    from: Vec<SourceSpec>,
    #[serde(default)]
    to: Vec<DestinationSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SourceSpec {
    #[serde(default)]
    principals: Vec<String>,
    #[serde(default)]
    not_principals: Vec<String>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    not_namespaces: Vec<String>,
    #[serde(default)]
    ip_blocks: Vec<String>,
    #[serde(default)]
    not_ip_blocks: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DestinationSpec {
    #[serde(default)]
    ports: Vec<u32>,
    #[serde(default)]
    not_ports: Vec<u32>,
}

/// Reads the file into the full-state response the controller would have sent.
pub fn load(path: &Path) -> Result<SubscribeResponse, LocalConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| LocalConfigError::Read {
        path: path.into(),
        source,
    })?;
    parse(&text, path)
}

/// The YAML parser's bounds, raised from its defaults (250k nodes, 64 MiB of text: ~15,000
/// workloads) to a million workloads, at ~16 nodes and ~150 bytes each. The bounds against
/// expansion attacks (aliases, nesting) stay as they are.
fn yaml_budget() -> serde_saphyr::Budget {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = 16_000_000;
    budget.max_events = 32_000_000;
    budget.max_total_scalar_bytes = 256 * 1024 * 1024;
    budget
}

fn parse(text: &str, path: &Path) -> Result<SubscribeResponse, LocalConfigError> {
    parse_within(text, path, yaml_budget())
}

fn parse_within(
    text: &str,
    path: &Path,
    budget: serde_saphyr::Budget,
) -> Result<SubscribeResponse, LocalConfigError> {
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    let file: File = serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let message = match e.without_snippet() {
            serde_saphyr::Error::Budget { breach, .. } => format!(
                "the file is larger than a standalone config may be ({breach:?}; about a million workloads at most): run the controller for a mesh this size"
            ),
            _ => e.to_string(),
        };
        LocalConfigError::Syntax {
            path: path.into(),
            line: e.location().map(|l| l.line() as usize),
            message,
        }
    })?;
    let mut resources = Vec::new();
    for w in file.workloads {
        resources.push(Resource {
            name: w.uid.clone(),
            version: String::new(),
            kind: Some(Kind::Workload(workload::Workload {
                uid: w.uid,
                name: w.name,
                namespace: w.namespace,
                service_account: w.service_account,
                node: w.node,
                addresses: w.addresses,
                protocol: match w.protocol {
                    ProtocolSpec::Hbone => workload::Protocol::Hbone,
                    ProtocolSpec::Tcp => workload::Protocol::Tcp,
                } as i32,
                trust_domain: w.trust_domain.unwrap_or_default(),
                authorization_policies: w.authorization_policies,
                ..Default::default()
            })),
        });
    }
    for s in file.services {
        resources.push(Resource {
            name: format!("{}/{}", s.namespace, s.name),
            version: String::new(),
            kind: Some(Kind::Service(workload::Service {
                name: s.name,
                namespace: s.namespace,
                hostname: s.hostname,
                addresses: s.addresses,
                ports: s
                    .ports
                    .into_iter()
                    .map(|p| workload::Port {
                        service_port: p.port,
                        target_port: p.target_port,
                        ..Default::default()
                    })
                    .collect(),
                endpoints: s
                    .endpoints
                    .into_iter()
                    .map(|workload_uid| workload::Endpoint { workload_uid })
                    .collect(),
                waypoint: None,
            })),
        });
    }
    for p in file.authorization_policies {
        resources.push(Resource {
            name: format!("{}/{}", p.namespace, p.name),
            version: String::new(),
            kind: Some(Kind::AuthorizationPolicy(security::AuthorizationPolicy {
                name: p.name,
                namespace: p.namespace,
                selector: None,
                action: match p.action {
                    ActionSpec::Allow => security::Action::Allow,
                    ActionSpec::Deny => security::Action::Deny,
                    ActionSpec::Audit => security::Action::Audit,
                } as i32,
                // The standalone file has no observer mode.
                dry_run: false,
                rules: p
                    .rules
                    .into_iter()
                    .map(|r| security::Rule {
                        from: r
                            .from
                            .into_iter()
                            .map(|f| security::Source {
                                principals: f.principals,
                                not_principals: f.not_principals,
                                namespaces: f.namespaces,
                                not_namespaces: f.not_namespaces,
                                ip_blocks: f.ip_blocks,
                                not_ip_blocks: f.not_ip_blocks,
                            })
                            .collect(),
                        to: r
                            .to
                            .into_iter()
                            .map(|d| security::Destination {
                                ports: d.ports,
                                not_ports: d.not_ports,
                                ..Default::default()
                            })
                            .collect(),
                        when: Vec::new(),
                    })
                    .collect(),
            })),
        });
    }
    Ok(SubscribeResponse {
        system_version: format!("file:{}", path.display()),
        resources,
        full_state: true,
        ..Default::default()
    })
}

/// Applies `path` now, then again whenever its modification time changes, until `drain`.
pub async fn watch(path: PathBuf, applier: Arc<Applier>, drain: DrainWatch) {
    let mut seen: Option<SystemTime> = None;
    loop {
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if modified != seen {
            seen = modified;
            // Parsing and building a large mesh's state takes long: a blocking thread does it.
            let (file, applier_ref) = (path.clone(), applier.clone());
            let result = tokio::task::spawn_blocking(move || {
                let response = load(&file)?;
                let applied = applier_ref
                    .apply(&response)
                    .map_err(|e| LocalConfigError::Invalid {
                        path: file.clone(),
                        reason: e.to_string(),
                    });
                let changes = response.resources.len();
                drop(response);
                ambit_discovery::memory::trim_after_update(changes);
                applied
            })
            .await
            .unwrap_or_else(|e| {
                Err(LocalConfigError::Invalid {
                    path: path.clone(),
                    reason: format!("applying it failed inside ztunnel ({e}); this is a bug"),
                })
            });
            match result {
                Ok(()) => tracing::info!(file = %path.display(), "applied local config"),
                Err(e) => {
                    tracing::warn!(error = %e, "refused local config; keeping the last good one")
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = drain.signaled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let doc: String = include_str!("local_config.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! ```yaml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| {
                format!(
                    "{}\n",
                    l.trim_start_matches("//!").strip_prefix(' ').unwrap_or("")
                )
            })
            .collect();
        let response = parse(&doc, Path::new("example.yaml")).unwrap();
        assert_eq!(response.resources.len(), 3);
        let mut state = ambit_discovery::ProxyState::default();
        state.apply(&response).unwrap();
        assert!(state.workload("w1").is_some());
    }

    #[test]
    fn audit_policies_are_accepted_and_report_their_l4_match() {
        let text = "workloads:
  - {uid: w1, name: reviews-v1, namespace: demo, serviceAccount: reviews, node: node-a,
     addresses: [10.244.1.4], protocol: HBONE, authorizationPolicies: [demo/audit-bad]}
authorizationPolicies:
  - name: audit-bad
    namespace: demo
    action: AUDIT
    rules: [{from: [{principals: [spiffe://cluster.local/ns/demo/sa/bad]}], to: [{ports: [8080]}]}]
";
        let response = parse(text, Path::new("audit.yaml")).unwrap();
        let mut state = ambit_discovery::ProxyState::default();
        state.apply(&response).unwrap();
        let w = state.workload("w1").unwrap().clone();
        let judge = |sa: &str, port: u16| {
            let id = ambit_proto::identity::SpiffeId::new("cluster.local", "demo", sa).unwrap();
            let source = ambit_discovery::state::PolicySource {
                identity: Some(&id),
                ip: "10.244.1.9".parse().unwrap(),
            };
            state.authorize(&w, &source, port)
        };
        let matched = judge("bad", 8080);
        assert!(matched.is_allowed(), "an AUDIT policy decides nothing");
        assert_eq!(
            matched.audited,
            vec![std::sync::Arc::<str>::from("demo/audit-bad")]
        );
        assert!(judge("good", 8080).audited.is_empty());
        assert!(judge("bad", 9090).audited.is_empty());
    }

    /// `n` workloads, each its own service's endpoint.
    fn workloads(n: usize) -> String {
        let mut text = String::from("workloads:\n");
        for i in 0..n {
            let (a, b) = (i / 250, i % 250 + 1);
            text.push_str(&format!(
                "  - {{uid: w{i}, name: w{i}, namespace: demo, serviceAccount: sa, node: node-a, addresses: [10.{}.{a}.{b}], protocol: HBONE}}\n",
                a / 250
            ));
        }
        text
    }

    #[test]
    fn a_file_past_the_parsers_default_bound_is_read_and_one_past_ours_says_so() {
        // 20,000 workloads: over the ~15,000 the parser's defaults allowed.
        let text = workloads(20_000);
        let response = parse(&text, Path::new("big.yaml")).unwrap();
        assert_eq!(response.resources.len(), 20_000);
        let mut small = serde_saphyr::Budget::default();
        small.max_nodes = 1_000;
        let error = parse_within(&text, Path::new("big.yaml"), small).unwrap_err();
        let words = error.to_string();
        assert!(
            words.starts_with("big.yaml")
                && words.contains("larger than a standalone config may be")
                && words.contains("run the controller"),
            "{words}"
        );
    }

    #[test]
    fn unknown_fields_are_refused_with_their_line() {
        let text =
            "workloads:\n  - uid: w1\n    name: a\n    namespace: demo\n    serviceAcount: a\n";
        let err = parse(text, Path::new("z.yaml")).unwrap_err().to_string();
        assert!(
            err.contains("z.yaml line") && err.contains("serviceAcount"),
            "{err}"
        );
    }
}
