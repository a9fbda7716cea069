//! The `spec` of Gateway API HTTPRoutes and GRPCRoutes in the shape both sources read: the mesh
//! file deserialises its `httpRoutes` / `grpcRoutes` items into these (every line kept), and
//! the Kubernetes source its watched objects' specs (re-read from their JSON). One shape, so a
//! route means the same in both. Unknown fields are errors: a field Ambit does not know is one
//! it does not honour, and a route is never used in part. The fields Ambit knows but does not
//! honour (mirrors, CORS, session persistence…) are read as opaque values so that the refusal
//! can name them.

use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::Spanned;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<Spanned<ParentRef>>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<Spanned<HttpRule>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<Spanned<ParentRef>>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<Spanned<GrpcRule>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParentRef {
    /// Gateway API's default is `gateway.networking.k8s.io`; a Service parent says `""`.
    pub group: Option<String>,
    /// Gateway API's default is `Gateway`.
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<i64>,
    pub section_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRule {
    /// A label for the rule; nothing depends on it.
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<HttpMatch>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub backend_refs: Vec<Spanned<BackendRef>>,
    pub timeouts: Option<Timeouts>,
    pub retry: Option<Retry>,
    pub session_persistence: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcRule {
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<GrpcMatch>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub backend_refs: Vec<Spanned<BackendRef>>,
    pub session_persistence: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum PathType {
    Exact,
    PathPrefix,
    RegularExpression,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ValueType {
    Exact,
    RegularExpression,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathMatch {
    /// Default `PathPrefix`.
    #[serde(rename = "type")]
    pub kind: Option<PathType>,
    /// Default `/`.
    pub value: Option<String>,
}

/// A header or query parameter match.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamedMatch {
    /// Default `Exact`.
    #[serde(rename = "type")]
    pub kind: Option<ValueType>,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpMatch {
    pub path: Option<PathMatch>,
    pub method: Option<Method>,
    #[serde(default)]
    pub headers: Vec<NamedMatch>,
    #[serde(default)]
    pub query_params: Vec<NamedMatch>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcMethodMatch {
    /// Default `Exact`.
    #[serde(rename = "type")]
    pub kind: Option<ValueType>,
    pub service: Option<String>,
    pub method: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcMatch {
    pub method: Option<GrpcMethodMatch>,
    #[serde(default)]
    pub headers: Vec<NamedMatch>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum FilterType {
    RequestHeaderModifier,
    ResponseHeaderModifier,
    RequestMirror,
    RequestRedirect,
    #[serde(rename = "URLRewrite")]
    UrlRewrite,
    ExtensionRef,
    #[serde(rename = "CORS")]
    Cors,
    ExternalAuth,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Filter {
    #[serde(rename = "type")]
    pub kind: FilterType,
    pub request_header_modifier: Option<HeaderModifier>,
    pub response_header_modifier: Option<HeaderModifier>,
    pub url_rewrite: Option<UrlRewrite>,
    pub request_redirect: Option<RequestRedirect>,
    pub request_mirror: Option<Value>,
    pub extension_ref: Option<Value>,
    pub cors: Option<Value>,
    pub external_auth: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Header {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderModifier {
    #[serde(default)]
    pub set: Vec<Header>,
    #[serde(default)]
    pub add: Vec<Header>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum PathModifierType {
    ReplaceFullPath,
    ReplacePrefixMatch,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathModifier {
    #[serde(rename = "type")]
    pub kind: PathModifierType,
    pub replace_full_path: Option<String>,
    pub replace_prefix_match: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UrlRewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestRedirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<i64>,
    pub status_code: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackendRef {
    /// Default `""` (core).
    pub group: Option<String>,
    /// Default `Service`.
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<i64>,
    /// Default 1.
    pub weight: Option<i64>,
    pub filters: Option<Value>,
}

/// GEP-1742; Gateway API durations ("200ms", "1s", "1h30m").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Timeouts {
    pub request: Option<String>,
    pub backend_request: Option<String>,
}

/// GEP-1731.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Retry {
    pub attempts: Option<i64>,
    pub codes: Option<Vec<i64>>,
    pub backoff: Option<String>,
}
