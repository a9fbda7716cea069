//! The mesh file as written by a human: Kubernetes-like camelCase, every object of a kind in one
//! list. Unknown fields are errors (a misspelt field silently ignored is a policy silently not
//! applied). Names and the fields a reference error can point at keep their line.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::source::routes::spec as route;
use crate::source::traffic::spec::TrafficPolicyItem;

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshFile {
    /// Defaults to `cluster.local`.
    pub trust_domain: Option<Spanned<String>>,
    /// The mTLS mode of meshed workloads whose namespace has no `ambit.io/mtls-mode` label.
    #[serde(default)]
    pub mtls_mode: MtlsModeSpec,
    /// Observer mode for the policies of namespaces without an `ambit.io/policy-mode` label:
    /// `audit` evaluates them, logs and counts what they would deny, and blocks nothing.
    #[serde(default)]
    pub policy_mode: PolicyModeSpec,
    #[serde(default)]
    pub nodes: Vec<NodeSpec>,
    #[serde(default)]
    pub namespaces: Vec<NamespaceSpec>,
    #[serde(default)]
    pub waypoints: Vec<WaypointSpec>,
    #[serde(default)]
    pub pods: Vec<PodSpec>,
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    #[serde(default)]
    pub authorization_policies: Vec<PolicySpec>,
    #[serde(default)]
    pub http_routes: Vec<HttpRouteItem>,
    #[serde(default)]
    pub grpc_routes: Vec<GrpcRouteItem>,
    /// Circuit breaking, outlier ejection and connection pool per service (see
    /// `source::traffic`).
    #[serde(default)]
    pub traffic_policies: Vec<TrafficPolicyItem>,
}

/// Spelt as the `ambit.io/mtls-mode` label's values.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyModeSpec {
    #[default]
    Enforce,
    Audit,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MtlsModeSpec {
    /// As Istio: plaintext from outside the mesh is accepted too.
    #[default]
    Permissive,
    Strict,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeSpec {
    pub name: Spanned<String>,
    pub bootstrap_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespaceSpec {
    pub name: Spanned<String>,
    #[serde(default)]
    pub labels: Labels,
    /// The mesh destinations its meshed pods may connect to (`<namespace>/<service>`,
    /// `<namespace>/*`, `.` for this namespace); absent: any.
    pub egress_scope: Option<Vec<Spanned<String>>>,
}

fn default_service_account() -> String {
    "default".into()
}

/// What `ambit up` starts inside a pod's network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PodApp {
    /// Answers every HTTP request on each of the pod's ports with the pod's name.
    HttpEcho,
    /// Echoes back whatever it receives on each of the pod's ports.
    TcpEcho,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSpec {
    pub name: Spanned<String>,
    pub namespace: Spanned<String>,
    pub node: Spanned<String>,
    #[serde(default = "default_service_account")]
    pub service_account: String,
    #[serde(default)]
    pub labels: Labels,
    pub ipv4: Option<Spanned<Ipv4Addr>>,
    pub ipv6: Option<Spanned<Ipv6Addr>>,
    #[serde(default)]
    pub ports: Vec<u16>,
    pub app: Option<PodApp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WaypointSpec {
    pub name: Spanned<String>,
    pub namespace: Spanned<String>,
    pub node: Spanned<String>,
    /// Defaults to the waypoint's name, as Istio names a waypoint's service account.
    pub service_account: Option<String>,
    pub ipv4: Option<Spanned<Ipv4Addr>>,
    pub ipv6: Option<Spanned<Ipv6Addr>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocolSpec {
    Tcp,
    Http,
    Http2,
    Grpc,
}

fn default_app_protocol() -> AppProtocolSpec {
    AppProtocolSpec::Tcp
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePortSpec {
    #[serde(default)]
    pub name: String,
    pub port: u16,
    /// Defaults to `port`, as in Kubernetes.
    pub target_port: Option<u16>,
    #[serde(default = "default_app_protocol")]
    pub app_protocol: AppProtocolSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    pub name: Spanned<String>,
    pub namespace: Spanned<String>,
    #[serde(default)]
    pub vips: Vec<Spanned<IpAddr>>,
    #[serde(default)]
    pub ports: Vec<ServicePortSpec>,
    #[serde(default)]
    pub selector: Labels,
    #[serde(default)]
    pub labels: Labels,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SelectorSpec {
    #[serde(default)]
    pub match_labels: Labels,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ActionSpec {
    Allow,
    Deny,
    Audit,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicySpec {
    pub name: Spanned<String>,
    pub namespace: Spanned<String>,
    #[serde(default)]
    pub selector: SelectorSpec,
    pub action: ActionSpec,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleSpec {
    #[serde(default)]
    pub from: Vec<SourceSpec>,
    #[serde(default)]
    pub to: Vec<DestinationSpec>,
    /// Istio's `when`: `source.principal`, `source.namespace` or `request.headers[<name>]`.
    #[serde(default)]
    pub when: Vec<ConditionSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConditionSpec {
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub not_values: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SourceSpec {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderValuesSpec {
    pub name: String,
    pub values: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationSpec {
    #[serde(default)]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub not_ports: Vec<u16>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub headers: Vec<HeaderValuesSpec>,
}

/// An HTTPRoute: its metadata's name, namespace and annotations, then its `spec` fields, in
/// Gateway API's shape (see `source::routes::spec`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteItem {
    pub name: Spanned<String>,
    pub namespace: Spanned<String>,
    #[serde(default)]
    pub annotations: Labels,
    #[serde(default)]
    pub parent_refs: Vec<Spanned<route::ParentRef>>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<Spanned<route::HttpRule>>,
}

/// A GRPCRoute, as [`HttpRouteItem`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcRouteItem {
    pub name: Spanned<String>,
    pub namespace: Spanned<String>,
    /// `retry.ambit.io/*` and `timeout.ambit.io/*`: what Gateway API has no GRPCRoute field for.
    #[serde(default)]
    pub annotations: Labels,
    #[serde(default)]
    pub parent_refs: Vec<Spanned<route::ParentRef>>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<Spanned<route::GrpcRule>>,
}
