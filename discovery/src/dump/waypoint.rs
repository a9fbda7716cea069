//! What a waypoint's admin port serves at `/config_dump`: the services it serves with their
//! routes and traffic policies as applied, and its certificate.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigDump {
    pub waypoint: String,
    pub identity: String,
    pub version: String,
    pub config_version: String,
    /// Services whose traffic comes through this waypoint, with their routes.
    pub services: Vec<ServiceView>,
    /// Routes by resource name (`<namespace>/<name>`).
    pub routes: Vec<String>,
    /// Traffic policies by resource name; each service shows the one it gets.
    pub traffic_policies: Vec<String>,
    pub workloads: usize,
    pub authorization_policies: Vec<String>,
    pub certificate: Option<CertificateView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceView {
    pub service: String,
    pub hostname: String,
    pub vips: Vec<String>,
    pub ports: Vec<String>,
    pub endpoints: usize,
    /// Endpoints outlier detection has taken out now.
    pub ejected_endpoints: usize,
    pub traffic: TrafficView,
}

/// A service's traffic policy as the waypoint applies it, defaults filled in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrafficView {
    /// `<namespace>/<name>`; `None`: no policy targets the service, the defaults apply.
    pub policy: Option<String>,
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    pub http2_multiplex: bool,
    pub max_requests_per_connection: Option<u32>,
    pub idle_timeout_ms: Option<u128>,
    pub outlier: Option<OutlierView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutlierView {
    pub consecutive_5xx: u32,
    pub consecutive_gateway_errors: u32,
    pub consecutive_connect_failures: u32,
    pub base_ejection_time_ms: u128,
    pub max_ejection_percent: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateView {
    pub identity: String,
    pub serial: String,
    pub expires_in_seconds: u64,
}
