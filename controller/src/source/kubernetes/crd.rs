//! Ambit's own custom resource: `AuthorizationPolicy` in `ambit.io/v1alpha1`, shaped like Istio's
//! `security.istio.io` AuthorizationPolicy (selector, action, rules of from/to/when) so a policy
//! written for Istio needs only its apiVersion changed. Routes and waypoints need no CRD of ours:
//! they are Gateway API objects.
//!
//! The CRD manifest (`manifests/crds/authorizationpolicies.ambit.io.yaml`) is generated from these
//! types; a test fails when the committed file and the types disagree.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::Labels;

/// Which requests a set of workloads accepts: ALLOW policies list what may reach them (once a
/// workload has one, anything not allowed is refused), DENY policies what may not.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "ambit.io",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    plural = "authorizationpolicies",
    shortname = "ap",
    category = "ambit",
    namespaced,
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.action"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// The pods of the policy's namespace it applies to; omitted, every pod of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// ALLOW (the default, as in Istio), DENY or AUDIT (decides nothing; a request it matches
    /// is logged and counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// A request matches the policy when it matches one rule. No rules: an ALLOW policy allows
    /// nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Pods whose labels include all of these.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub match_labels: Labels,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Action {
    #[serde(rename = "ALLOW")]
    Allow,
    #[serde(rename = "DENY")]
    Deny,
    #[serde(rename = "AUDIT")]
    Audit,
}

/// Matches when one of `from` and one of `to` match and every `when` condition holds (an empty
/// list matches everything).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<From>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<To>,
    /// Keys `source.principal`, `source.namespace` and `request.headers[<name>]` (the last
    /// checked only by a waypoint), with `values` and/or `notValues`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct From {
    pub source: Source,
}

/// Who is calling. Every field given must match.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// Peer identities as in Istio (`<trust domain>/ns/<namespace>/sa/<service account>`) or as
    /// SPIFFE IDs (the same with `spiffe://` in front); a prefix ending in `*`; `*` for any
    /// mesh identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// Source addresses or CIDRs (`10.0.0.0/8`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    // Istio's fields Ambit cannot check. They are in the schema only so that the API server keeps
    // them instead of pruning them: a pruned `requestPrincipals` would turn an ALLOW rule into
    // one that allows more. Given, they are reported and the policy fails closed.
    /// Not supported (needs JWT authentication); given, the policy fails closed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    /// Not supported; given, the policy fails closed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
    /// Not supported (the original client address is not known); given, the policy fails closed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<String>,
    /// Not supported; given, the policy fails closed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<String>,
    /// Not supported (write `principals` instead); given, the policy fails closed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    /// Not supported (write `notPrincipals` instead); given, the policy fails closed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct To {
    pub operation: Operation,
}

/// What is being called. Ports are checked by ztunnel; methods, paths and hosts only by a
/// waypoint.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// The pod's (target) ports, as strings as in Istio: `["8080"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// Exact paths, a prefix ending in `*`, a suffix starting with `*`, or `*`, matched
    /// against the normalised path (without query).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
}

/// An extra condition, as Istio's `when`; every one must hold besides `from` and `to`. Ambit
/// supports `source.principal`, `source.namespace` and `request.headers[<name>]`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    pub key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

/// The CRD manifest as committed in `manifests/crds/`.
pub fn crd_yaml() -> String {
    generated_yaml::<AuthorizationPolicy>("crd.rs")
}

/// A custom resource's definition as the manifest committed under manifests/crds, with a header
/// naming the file (under `controller/src/source/kubernetes/`) that defines its type.
pub(crate) fn generated_yaml<K: kube::CustomResourceExt + kube::Resource<DynamicType = ()>>(
    defined_in: &str,
) -> String {
    let crd = serde_json::to_value(K::crd()).unwrap_or_default();
    let yaml = serde_saphyr::to_string(&crd).unwrap_or_default();
    format!(
        "# Generated from controller/src/source/kubernetes/{defined_in} ({}): do not edit.\n\
         # After changing the Rust type, run `cargo test -p ambit-controller --lib crd` and copy the\n\
         # file that test writes to target/ over this one.\n{yaml}",
        K::kind(&())
    )
}

/// Fails, naming the fix, when the committed manifest `file` (under manifests/crds) is not
/// `expected`; writes `expected` to the target dir so the fix is one `cp`.
#[cfg(test)]
pub(crate) fn assert_manifest_is(file: &str, expected: &str) {
    use std::path::PathBuf;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let committed = root.join("../manifests/crds").join(file);
    let actual = std::fs::read_to_string(&committed).unwrap_or_default();
    if actual != expected {
        let target_dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("../target"));
        std::fs::create_dir_all(&target_dir).unwrap();
        let target = target_dir.join(file);
        std::fs::write(&target, expected).unwrap();
        panic!(
            "{} differs from what its Rust type generates.\n\
             The generated manifest is in {}; if the type change is intended:\n  cp {} {}",
            committed.display(),
            target.display(),
            target.display(),
            committed.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_manifest_matches_the_type() {
        assert_manifest_is("authorizationpolicies.ambit.io.yaml", &crd_yaml());
    }

    #[test]
    fn an_istio_policy_reads_unchanged() {
        let policy: AuthorizationPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "ambit.io/v1alpha1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "p", "namespace": "demo"},
            "spec": {
                "selector": {"matchLabels": {"app": "reviews"}},
                "action": "DENY",
                "rules": [{
                    "from": [{"source": {"principals": ["cluster.local/ns/a/sa/b"]}}],
                    "to": [{"operation": {"ports": ["8080"], "methods": ["GET"]}}],
                    "when": [{"key": "request.headers[x-user]", "values": ["jason"]}]
                }]
            }
        }))
        .unwrap();
        assert_eq!(policy.spec.action, Some(Action::Deny));
        assert_eq!(policy.spec.rules[0].to[0].operation.ports, vec!["8080"]);
    }
}

/// Ambit's TrafficPolicy CRD.
pub mod traffic;
