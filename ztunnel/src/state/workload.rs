//! Workloads and services as ztunnel holds them: validated once when config arrives, so the
//! data path never parses an address or an identity.

use std::net::IpAddr;

use ambit_proto::api::workload as api;
use ambit_proto::identity::SpiffeId;

use super::StateError;
use super::waypoint::waypoint_key;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Meshed: reached over HBONE at <address>:15008.
    Hbone,
    /// Outside the mesh: plain TCP.
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Hbone => "HBONE",
            Protocol::Tcp => "TCP",
        }
    }
}

#[derive(Debug)]
pub struct Workload {
    pub uid: Box<str>,
    pub name: Box<str>,
    pub namespace: Box<str>,
    pub node: Box<str>,
    pub addresses: Box<[IpAddr]>,
    pub protocol: Protocol,
    pub identity: SpiffeId,
    pub healthy: bool,
    /// "<namespace>/<name>" of the authorization policies that select this workload.
    pub authorization_policies: Box<[Box<str>]>,
    pub canonical_name: Box<str>,
    pub canonical_revision: Box<str>,
    /// Plaintext from outside the mesh is refused (`ambit.io/mtls-mode: strict`).
    pub strict_mtls: bool,
    /// "<namespace>/<name>" of the waypoint traffic addressed to this workload goes through.
    pub waypoint: Option<Box<str>>,
}

impl Workload {
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
                // A mode this ztunnel does not know is stricter than it can tell: fail closed.
                Err(_) => true,
            },
            waypoint: waypoint_key(w.waypoint.as_ref()),
        })
    }

    /// A meshed workload in `demo` with these addresses, for tests of the data path.
    #[cfg(test)]
    pub fn for_tests(name: &str, addresses: &[&str]) -> Self {
        Workload::from_api(&api::Workload {
            uid: format!("Kubernetes//Pod/demo/{name}"),
            name: name.into(),
            namespace: "demo".into(),
            service_account: name.into(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            protocol: api::Protocol::Hbone as i32,
            ..Default::default()
        })
        .expect("a valid test workload")
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServicePort {
    pub port: u16,
    pub target_port: u16,
}

#[derive(Debug)]
pub struct Service {
    /// "<namespace>/<name>".
    pub key: Box<str>,
    pub name: Box<str>,
    pub namespace: Box<str>,
    pub hostname: Box<str>,
    pub vips: Box<[IpAddr]>,
    pub ports: Box<[ServicePort]>,
    pub endpoints: Box<[Box<str>]>,
    /// "<namespace>/<name>" of the waypoint this service's traffic goes through.
    pub waypoint: Option<Box<str>>,
}

impl Service {
    pub fn from_api(s: &api::Service) -> Result<Self, StateError> {
        let key = format!("{}/{}", s.namespace, s.name);
        let invalid = |reason: String| StateError::InvalidService {
            key: key.clone(),
            reason,
        };
        let vips = parse_ips(&s.addresses, "VIP").map_err(invalid)?;
        let ports = s
            .ports
            .iter()
            .map(|p| {
                let port = u16::try_from(p.service_port)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| invalid(format!("port {} is out of range", p.service_port)))?;
                let target = if p.target_port == 0 {
                    p.service_port
                } else {
                    p.target_port
                };
                let target_port = u16::try_from(target)
                    .map_err(|_| invalid(format!("target port {target} is out of range")))?;
                Ok(ServicePort { port, target_port })
            })
            .collect::<Result<Box<[_]>, _>>()?;
        Ok(Service {
            name: s.name.as_str().into(),
            namespace: s.namespace.as_str().into(),
            hostname: s.hostname.as_str().into(),
            vips,
            ports,
            endpoints: s
                .endpoints
                .iter()
                .map(|e| e.workload_uid.as_str().into())
                .collect(),
            waypoint: waypoint_key(s.waypoint.as_ref()),
            key: key.into(),
        })
    }

    pub fn target_port(&self, port: u16) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.port == port)
            .map(|p| p.target_port)
    }

    /// An endpoint among `candidates` (already filtered to healthy ones), at random: a
    /// shared round-robin counter lets two clients calling in step each see one endpoint
    /// only.
    pub fn pick<'a, T>(&self, candidates: &'a [T]) -> Option<&'a T> {
        if candidates.is_empty() {
            return None;
        }
        candidates.get(fastrand::usize(..candidates.len()))
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
