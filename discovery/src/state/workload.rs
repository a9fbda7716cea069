//! Workloads as the proxies hold them: validated once when config arrives, so the data path
//! never parses an address or an identity.

use std::net::IpAddr;
use std::sync::Arc;

use ambit_proto::api::workload as api;
use ambit_proto::identity::SpiffeId;

use super::StateError;
use super::interned::Interned;

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

/// A pod (or other workload) of the mesh, checked. What it has in common with its replicas
/// is one [`Shared`] value they all point to (see [`Interned`]); its node is interned on its
/// own, as replicas mostly run on different nodes; a canonical name equal to the pod's name
/// shares the name's allocation.
#[derive(Debug)]
pub struct Workload {
    /// Its stable id, `<cluster>//Pod/<namespace>/<name>`; also its key in the state.
    pub uid: Arc<str>,
    pub name: Arc<str>,
    pub node: Arc<str>,
    pub addresses: Box<[IpAddr]>,
    pub canonical_name: Arc<str>,
    pub shared: Arc<Shared>,
    pub protocol: Protocol,
    pub healthy: bool,
    /// Plaintext from outside the mesh is refused (`ambit.io/mtls-mode: strict`).
    pub strict_mtls: bool,
}

/// The part of a workload its replicas have in common, held once for all of them: a workload
/// with its `Arc` takes 128 B where it took 208 B with these fields inline.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Shared {
    pub namespace: Arc<str>,
    pub identity: SpiffeId,
    pub canonical_revision: Arc<str>,
    /// `<namespace>/<name>` of the authorization policies that select this workload.
    pub authorization_policies: Arc<[Arc<str>]>,
    /// `<namespace>/<name>` of the waypoint traffic addressed to this workload goes through.
    pub waypoint: Option<Arc<str>>,
}

impl Workload {
    /// Checks a workload from the wire: uid, addresses, protocol and identity must be valid.
    pub fn from_api(w: &api::Workload) -> Result<Self, StateError> {
        Self::from_api_in(w, &mut Interned::default())
    }

    /// [`Self::from_api`], sharing the text other workloads of the state hold.
    pub(super) fn from_api_in(
        w: &api::Workload,
        interned: &mut Interned,
    ) -> Result<Self, StateError> {
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
        let identity = interned
            .identity(
                trust_domain(&w.trust_domain),
                &w.namespace,
                &w.service_account,
            )
            .map_err(invalid)?;
        // A pod's name is its own; its canonical name is usually its app's, which its
        // replicas share, and otherwise the pod's name, which is then not kept twice.
        let name: Arc<str> = w.name.as_str().into();
        let canonical_name = if w.canonical_name == w.name {
            name.clone()
        } else {
            interned.str(&w.canonical_name)
        };
        let shared = Shared {
            namespace: interned.str(&w.namespace),
            identity,
            canonical_revision: interned.str(&w.canonical_revision),
            authorization_policies: interned.list(&w.authorization_policies),
            waypoint: w
                .waypoint
                .as_ref()
                .filter(|r| !r.name.is_empty())
                .map(|r| interned.str(&format!("{}/{}", r.namespace, r.name))),
        };
        Ok(Workload {
            uid: w.uid.as_str().into(),
            name,
            node: interned.str(&w.node),
            addresses,
            canonical_name,
            shared: interned.shared(shared),
            protocol,
            healthy: w.status != api::WorkloadStatus::Unhealthy as i32,
            strict_mtls: match api::MtlsMode::try_from(w.mtls_mode) {
                Ok(api::MtlsMode::Permissive) => false,
                Ok(api::MtlsMode::Strict) => true,
                // A mode this proxy does not know is stricter than it can tell: fail closed.
                Err(_) => true,
            },
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

/// The trust domain a resource names (`cluster.local` when unset).
pub(super) fn trust_domain(named: &str) -> &str {
    if named.is_empty() {
        "cluster.local"
    } else {
        named
    }
}

/// The SPIFFE identity of a service account.
pub(super) fn identity(
    trust_domain_named: &str,
    namespace: &str,
    service_account: &str,
) -> Result<SpiffeId, String> {
    SpiffeId::new(trust_domain(trust_domain_named), namespace, service_account)
        .map_err(|e| format!("its identity is invalid: {e}"))
}
