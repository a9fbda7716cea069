//! Workloads as the proxies hold them: validated once when config arrives, so the data path
//! never parses an address or an identity.

use std::net::IpAddr;
use std::sync::Arc;

use ambit_proto::api::workload as api;
use ambit_proto::identity::SpiffeId;

use super::StateError;
use super::waypoint::waypoint_key;

/// How a workload is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Meshed: reached over HBONE at `<address>:15008`.
    Hbone,
    /// Outside the mesh: plain TCP.
    Tcp,
}

impl Protocol {
    /// The name shown in config dumps.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Hbone => "HBONE",
            Protocol::Tcp => "TCP",
        }
    }
}

/// A pod (or other workload) of the mesh, checked.
#[derive(Debug)]
pub struct Workload {
    /// Its stable id, `<cluster>//Pod/<namespace>/<name>`; also its key in the state.
    pub uid: Arc<str>,
    pub name: Box<str>,
    pub namespace: Box<str>,
    pub node: Box<str>,
    pub addresses: Box<[IpAddr]>,
    pub protocol: Protocol,
    pub identity: SpiffeId,
    pub healthy: bool,
    /// `<namespace>/<name>` of the authorization policies that select this workload.
    pub authorization_policies: Box<[Box<str>]>,
    pub canonical_name: Box<str>,
    pub canonical_revision: Box<str>,
    /// Plaintext from outside the mesh is refused (`ambit.io/mtls-mode: strict`).
    pub strict_mtls: bool,
    /// `<namespace>/<name>` of the waypoint traffic addressed to this workload goes through.
    pub waypoint: Option<Box<str>>,
}

impl Workload {
    /// Checks a workload from the wire: uid, addresses, protocol and identity must be valid.
    pub fn from_api(w: &api::Workload) -> Result<Self, StateError> {
        let invalid = |reason: String| StateError::InvalidWorkload {
            uid: w.uid.clone(),
            reason,
        };
        if w.uid.is_empty() {
            return Err(invalid("it has no uid".into()));
        }
        let addresses = parse_ips(&w.addresses, "address").map_err(invalid)?;
        let protocol = match api::Protocol::try_from(w.protocol) {
            Ok(api::Protocol::Hbone) => Protocol::Hbone,
            Ok(api::Protocol::Tcp) => Protocol::Tcp,
            _ => {
                return Err(invalid(format!(
                    "protocol {} is neither HBONE nor TCP",
                    w.protocol
                )));
            }
        };
        let identity =
            identity(&w.trust_domain, &w.namespace, &w.service_account).map_err(invalid)?;
        Ok(Workload {
            uid: w.uid.as_str().into(),
            name: w.name.as_str().into(),
            namespace: w.namespace.as_str().into(),
            node: w.node.as_str().into(),
            addresses,
            protocol,
            identity,
            healthy: w.status != api::WorkloadStatus::Unhealthy as i32,
            authorization_policies: w
                .authorization_policies
                .iter()
                .map(|p| p.as_str().into())
                .collect(),
            canonical_name: w.canonical_name.as_str().into(),
            canonical_revision: w.canonical_revision.as_str().into(),
            strict_mtls: match api::MtlsMode::try_from(w.mtls_mode) {
                Ok(api::MtlsMode::Permissive) => false,
                Ok(api::MtlsMode::Strict) => true,
                // A mode this proxy does not know is stricter than it can tell: fail closed.
                Err(_) => true,
            },
            waypoint: waypoint_key(w.waypoint.as_ref()),
        })
    }

    /// The name dashboards group by: the canonical service name, else the pod name.
    pub fn canonical_or_name(&self) -> String {
        if self.canonical_name.is_empty() {
            self.name.to_string()
        } else {
            self.canonical_name.to_string()
        }
    }

    /// The workload's address in the same family as `like`, so a v6 client reaches a v6 pod.
    pub fn address_like(&self, like: IpAddr) -> Option<IpAddr> {
        self.addresses
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == like.is_ipv4())
    }
}

/// Addresses as text, each parsed; an error names the first bad one as a `what`.
pub(super) fn parse_ips(addresses: &[String], what: &str) -> Result<Box<[IpAddr]>, String> {
    addresses
        .iter()
        .map(|a| {
            a.parse::<IpAddr>()
                .map_err(|_| format!("{what} {a:?} is not an IP address"))
        })
        .collect()
}

/// The SPIFFE identity of a service account (trust domain `cluster.local` when unset).
pub(super) fn identity(
    trust_domain: &str,
    namespace: &str,
    service_account: &str,
) -> Result<SpiffeId, String> {
    let trust_domain = if trust_domain.is_empty() {
        "cluster.local"
    } else {
        trust_domain
    };
    SpiffeId::new(trust_domain, namespace, service_account)
        .map_err(|e| format!("its identity is invalid: {e}"))
}
