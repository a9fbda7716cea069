//! The `spec` of a TrafficPolicy in the shape both sources read: the mesh file deserialises its
//! `trafficPolicies` items into these (objects keep their line), the Kubernetes source its
//! watched objects' specs (re-read from their JSON). One shape, so a policy means the same in
//! both. Field names are Istio's DestinationRule `trafficPolicy` ones. Unknown fields are errors;
//! the Istio fields Ambit does not implement are read as opaque values so that the refusal can
//! name them (see [`super::UNSUPPORTED`]).

use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::Spanned;

/// An opaque value Ambit refuses, kept with its line.
pub type Refused = Option<Spanned<Value>>;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    pub target_ref: Spanned<TargetRef>,
    pub connection_pool: Option<Spanned<ConnectionPool>>,
    pub outlier_detection: Option<Spanned<OutlierDetection>>,
    #[serde(default)]
    pub load_balancer: Refused,
    #[serde(default)]
    pub tls: Refused,
    #[serde(default)]
    pub port_level_settings: Refused,
    #[serde(default)]
    pub tunnel: Refused,
    #[serde(default)]
    pub proxy_protocol: Refused,
    #[serde(default)]
    pub retry_budget: Refused,
}

/// A mesh file's `trafficPolicies` item: the object's metadata, then its spec fields at the
/// item's top level (as `httpRoutes` items are written). Kept in step with
/// [`TrafficPolicySpec`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicyItem {
    pub name: Spanned<String>,
    pub namespace: Spanned<String>,
    pub target_ref: Spanned<TargetRef>,
    pub connection_pool: Option<Spanned<ConnectionPool>>,
    pub outlier_detection: Option<Spanned<OutlierDetection>>,
    #[serde(default)]
    pub load_balancer: Refused,
    #[serde(default)]
    pub tls: Refused,
    #[serde(default)]
    pub port_level_settings: Refused,
    #[serde(default)]
    pub tunnel: Refused,
    #[serde(default)]
    pub proxy_protocol: Refused,
    #[serde(default)]
    pub retry_budget: Refused,
}

impl TrafficPolicyItem {
    /// `(name, namespace, spec)`.
    pub fn into_parts(self) -> (Spanned<String>, Spanned<String>, TrafficPolicySpec) {
        let spec = TrafficPolicySpec {
            target_ref: self.target_ref,
            connection_pool: self.connection_pool,
            outlier_detection: self.outlier_detection,
            load_balancer: self.load_balancer,
            tls: self.tls,
            port_level_settings: self.port_level_settings,
            tunnel: self.tunnel,
            proxy_protocol: self.proxy_protocol,
            retry_budget: self.retry_budget,
        };
        (self.name, self.namespace, spec)
    }
}

/// Gateway API's `LocalPolicyTargetReference`: a Service of the policy's own namespace.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TargetRef {
    /// `""` (the default) or `core`.
    pub group: Option<String>,
    pub kind: String,
    pub name: String,
    /// Refused: a policy targets a whole service (Istio's `portLevelSettings` neither).
    #[serde(default)]
    pub section_name: Refused,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectionPool {
    pub tcp: Option<Spanned<TcpSettings>>,
    pub http: Option<Spanned<HttpSettings>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpSettings {
    pub max_connections: Option<i64>,
    #[serde(default)]
    pub connect_timeout: Refused,
    #[serde(default)]
    pub tcp_keepalive: Refused,
    #[serde(default)]
    pub max_connection_duration: Refused,
    #[serde(default)]
    pub idle_timeout: Refused,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpSettings {
    pub http1_max_pending_requests: Option<i64>,
    pub http2_max_requests: Option<i64>,
    pub max_requests_per_connection: Option<i64>,
    pub max_retries: Option<i64>,
    /// A Gateway API duration.
    pub idle_timeout: Option<String>,
    /// Only 1: one request at a time per HTTP/2 connection (no multiplexing).
    pub max_concurrent_streams: Option<i64>,
    #[serde(default)]
    pub h2_upgrade_policy: Refused,
    #[serde(default)]
    pub use_client_protocol: Refused,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetection {
    #[serde(rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<i64>,
    pub consecutive_gateway_errors: Option<i64>,
    pub consecutive_local_origin_failures: Option<i64>,
    /// A Gateway API duration.
    pub base_ejection_time: Option<String>,
    pub max_ejection_percent: Option<i64>,
    #[serde(default)]
    pub interval: Refused,
    #[serde(default)]
    pub min_health_percent: Refused,
    #[serde(default)]
    pub split_external_local_origin_errors: Refused,
    #[serde(default)]
    pub consecutive_errors: Refused,
}
