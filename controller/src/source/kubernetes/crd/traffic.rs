//! Ambit's `TrafficPolicy` in `ambit.io/v1alpha1`: Istio's DestinationRule `trafficPolicy` fields
//! (`connectionPool`, `outlierDetection`) on a Gateway API `targetRef` to a Service of the
//! policy's namespace. What each field means and what is refused: `source::traffic`.
//!
//! The CRD manifest (`manifests/crds/trafficpolicies.ambit.io.yaml`) is generated from these
//! types; a test fails when the committed file and the types disagree.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Circuit breaking, outlier ejection and the connection pool for the requests waypoints send to
/// one Service.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "ambit.io",
    version = "v1alpha1",
    kind = "TrafficPolicy",
    plural = "trafficpolicies",
    shortname = "tp",
    category = "ambit",
    namespaced,
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetRef.name"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    /// The Service (of the policy's namespace) whose upstream it governs; one policy per service.
    pub target_ref: TargetRef,
    /// Limits on connections and requests; over one a request gets 503 (flag UO) at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
    /// Ejects an endpoint after consecutive errors; absent: no ejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    // Istio's fields Ambit does not implement. They are in the schema only so that the API
    // server keeps them rather than pruning them: a policy silently used without its
    // `loadBalancer` or `tls` is not the one written. Given, the policy is refused.
    /// Not supported; given, the policy is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "refused")]
    pub load_balancer: Option<Value>,
    /// Not supported; given, the policy is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "refused")]
    pub tls: Option<Value>,
    /// Not supported; given, the policy is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "refused")]
    pub port_level_settings: Option<Value>,
    /// Not supported; given, the policy is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "refused")]
    pub tunnel: Option<Value>,
    /// Not supported; given, the policy is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "refused")]
    pub proxy_protocol: Option<Value>,
    /// Not supported; given, the policy is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "refused")]
    pub retry_budget: Option<Value>,
}

/// Any value, kept by the API server as written (see the refused fields).
fn refused(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"x-kubernetes-preserve-unknown-fields": true})
}

/// Gateway API's `LocalPolicyTargetReference`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// `""` (core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `Service`.
    pub kind: String,
    pub name: String,
    /// Not supported (a policy applies to every port); given, the policy is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "refused")]
    pub section_name: Option<Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPool {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSettings>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TcpSettings {
    /// Connections open to all the service's endpoints together (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<i64>,
    /// Not supported; given, the policy is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "refused")]
    pub connect_timeout: Option<Value>,
    /// Not supported; given, the policy is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "refused")]
    pub tcp_keepalive: Option<Value>,
    /// Not supported; given, the policy is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "refused")]
    pub max_connection_duration: Option<Value>,
    /// Not supported (use `http.idleTimeout`); given, the policy is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "refused")]
    pub idle_timeout: Option<Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpSettings {
    /// Requests waiting for a connection (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http1_max_pending_requests: Option<i64>,
    /// Requests in flight to the service, HTTP/1.1 and HTTP/2 alike (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_max_requests: Option<i64>,
    /// A connection is closed after this many requests; 0: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<i64>,
    /// Retries in flight to the service at once (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<i64>,
    /// A pooled connection with no request this long is closed (a Gateway API duration: `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// Only 1: one request at a time per HTTP/2 connection (no multiplexing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<i64>,
    /// Not supported (appProtocol decides); given, the policy is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "refused")]
    pub h2_upgrade_policy: Option<Value>,
    /// Not supported (appProtocol decides); given, the policy is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "refused")]
    pub use_client_protocol: Option<Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive 5xx answers that eject an endpoint (default 5; 0: not counted).
    #[serde(
        rename = "consecutive5xxErrors",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub consecutive_5xx_errors: Option<i64>,
    /// Consecutive 502, 503, 504 and connection failures (0, the default: not counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<i64>,
    /// Consecutive connection failures (0, the default: not counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_local_origin_failures: Option<i64>,
    /// Ejection time, times the number of ejections in a row (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<String>,
    /// At most this share of the endpoints is ejected at once, 1 to 100 (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<i64>,
    /// Not supported (each answer is counted as it comes); given, the policy is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "refused")]
    pub interval: Option<Value>,
    /// Not supported; given, the policy is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "refused")]
    pub min_health_percent: Option<Value>,
    /// Not supported; given, the policy is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "refused")]
    pub split_external_local_origin_errors: Option<Value>,
    /// Not supported (write `consecutive5xxErrors`); given, the policy is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "refused")]
    pub consecutive_errors: Option<Value>,
}

/// The CRD manifest as committed in `manifests/crds/`.
pub fn crd_yaml() -> String {
    super::generated_yaml::<TrafficPolicy>("crd/traffic.rs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_manifest_matches_the_traffic_policy_type() {
        super::super::assert_manifest_is("trafficpolicies.ambit.io.yaml", &crd_yaml());
    }

    #[test]
    fn an_istio_traffic_policy_reads_with_a_target_ref() {
        let policy: TrafficPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "ambit.io/v1alpha1",
            "kind": "TrafficPolicy",
            "metadata": {"name": "reviews", "namespace": "demo"},
            "spec": {
                "targetRef": {"kind": "Service", "name": "reviews"},
                "connectionPool": {
                    "tcp": {"maxConnections": 100},
                    "http": {"http1MaxPendingRequests": 10, "idleTimeout": "1h"}
                },
                "outlierDetection": {"consecutive5xxErrors": 5, "baseEjectionTime": "30s"},
                "loadBalancer": {"simple": "ROUND_ROBIN"}
            }
        }))
        .unwrap();
        let spec = &policy.spec;
        assert_eq!(spec.target_ref.name, "reviews");
        let outlier = spec.outlier_detection.as_ref().unwrap();
        assert_eq!(outlier.consecutive_5xx_errors, Some(5));
        // Kept, so that the conversion can refuse it.
        assert_eq!(
            spec.load_balancer,
            Some(serde_json::json!({"simple": "ROUND_ROBIN"}))
        );
        let back = serde_json::to_value(&policy.spec).unwrap();
        assert_eq!(back["outlierDetection"]["consecutive5xxErrors"], 5);
    }
}
