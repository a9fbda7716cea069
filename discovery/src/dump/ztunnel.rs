//! What ztunnel's admin port serves at `/config_dump`: its config as it holds it, the pods it
//! captured, its certificates and the connections it carries (`ambit config` reads it).

use std::net::SocketAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigDump {
    pub node: String,
    pub version: String,
    pub config_version: String,
    pub synced: bool,
    pub workloads: Vec<WorkloadView>,
    pub services: Vec<ServiceView>,
    pub policies: Vec<PolicyView>,
    pub certificates: Vec<CertificateView>,
    pub pods: Vec<PodView>,
    pub connections: Vec<ConnectionInfo>,
    /// On-demand destinations: each address asked of the controller and its answer
    /// (`pending`, `known`, `unknown`); empty when every destination comes up front.
    #[serde(default)]
    pub lookups: Vec<LookupView>,
    /// The egress scopes its pods' namespaces declare.
    #[serde(default)]
    pub egress_scopes: Vec<EgressScopeView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressScopeView {
    pub namespace: String,
    pub declared: String,
    /// Why the declaration cannot be read (then it lets nothing through).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LookupView {
    pub address: String,
    pub answer: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadView {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub node: String,
    pub addresses: Vec<String>,
    pub protocol: String,
    pub identity: String,
    pub healthy: bool,
    pub authorization_policies: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    pub name: String,
    pub hostname: String,
    pub vips: Vec<String>,
    pub ports: Vec<String>,
    pub endpoints: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyView {
    pub name: String,
    pub action: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateView {
    pub identity: String,
    pub serial: String,
    pub not_before: f64,
    pub not_after: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodView {
    pub uid: String,
    pub netns: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Outbound,
    Inbound,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionInfo {
    pub direction: Direction,
    /// The pod ztunnel serves on this side.
    pub pod: String,
    pub source: SocketAddr,
    /// The source's SPIFFE ID as proven over mTLS; absent for plaintext.
    pub source_identity: Option<String>,
    pub destination: SocketAddr,
    pub destination_workload: Option<String>,
    pub destination_service: Option<String>,
    /// "HBONE" or "TCP".
    pub protocol: String,
    #[serde(with = "unix_seconds")]
    pub started: SystemTime,
    /// Set once closed: bytes to the destination and back, and the error if any.
    pub sent: Option<u64>,
    pub received: Option<u64>,
    pub error: Option<String>,
}

impl ConnectionInfo {
    /// A connection starting now; the caller fills in what it knows of the two sides.
    pub fn starting(
        direction: Direction,
        pod: &str,
        source: SocketAddr,
        destination: SocketAddr,
        protocol: &str,
    ) -> Self {
        ConnectionInfo {
            direction,
            pod: pod.into(),
            source,
            source_identity: None,
            destination,
            destination_workload: None,
            destination_service: None,
            protocol: protocol.into(),
            started: SystemTime::now(),
            sent: None,
            received: None,
            error: None,
        }
    }
}

mod unix_seconds {
    use std::time::{Duration, SystemTime};

    use serde::Deserialize;

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let secs = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        s.serialize_f64(secs)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let secs = f64::deserialize(d)?;
        Ok(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs.max(0.0)))
    }
}
