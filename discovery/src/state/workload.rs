//! Workloads as the proxies hold them: validated once when config arrives, so the data path
//! never parses an address or an identity.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use ambit_proto::api::workload as api;
use ambit_proto::identity::SpiffeId;
use triomphe::HeaderSlice;

use super::StateError;
use super::interned::{Interned, Values};
use super::version::Version;

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

/// A pod (or other workload) of the mesh, checked: a handle, cheap to clone, on one allocation
/// that holds its [`WorkloadFields`] and, after them, its uid (and its name, when that is not
/// the uid's last segment). Held per workload of the mesh (50k and more on a ztunnel sent
/// everything), so it keeps nothing twice and takes one block of the allocator: the uid in a
/// block of its own cost that block's rounding and header, a second reference count and a
/// 16 B pointer (`state_memory`: see benches/README). What it has in common with its replicas
/// is one [`Shared`] value they all point to (see [`super::interned`]); its node is interned on
/// its own, as replicas mostly run on different nodes.
#[derive(Clone)]
pub struct Workload(triomphe::Arc<HeaderSlice<WorkloadFields, str>>);

/// A workload's fields but its uid and name (read them with [`Workload::uid`] and
/// [`Workload::name`]).
#[derive(Debug)]
pub struct WorkloadFields {
    pub node: Arc<str>,
    addresses: Addresses,
    pub shared: Arc<Shared>,
    /// The version of the resource it was built from, which a reconnecting proxy reports.
    pub(super) version: Version,
    /// Where the uid ends in the text after the fields; a name that is not the uid's last
    /// segment follows it.
    uid_len: u32,
    pub protocol: Protocol,
    pub healthy: bool,
    /// Plaintext from outside the mesh is refused (`ambit.io/mtls-mode: strict`).
    pub strict_mtls: bool,
}

impl std::ops::Deref for Workload {
    type Target = WorkloadFields;

    fn deref(&self) -> &WorkloadFields {
        &self.0.header
    }
}

impl std::fmt::Debug for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload")
            .field("uid", &self.uid())
            .field("name", &self.name())
            .field("fields", &**self)
            .finish()
    }
}

/// A workload's addresses: nearly always one (two when dual-stack), the one held inline
/// rather than in an allocation of its own.
#[derive(Debug)]
enum Addresses {
    One(IpAddr),
    Many(Box<[IpAddr]>),
}

impl Addresses {
    fn of(mut ips: Vec<IpAddr>) -> Self {
        match ips.len() {
            1 => Addresses::One(ips.pop().expect("one address")),
            _ => Addresses::Many(ips.into()),
        }
    }

    fn as_slice(&self) -> &[IpAddr] {
        match self {
            Addresses::One(ip) => std::slice::from_ref(ip),
            Addresses::Many(ips) => ips,
        }
    }
}

/// The part of a workload its replicas have in common, held once for all of them: a workload
/// took 208 B with these fields inline.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Shared {
    pub namespace: Arc<str>,
    pub identity: SpiffeId,
    /// The app its replicas make up, unless that is the pod's own name (then `None`, so pods
    /// without an app label can still share the rest).
    pub canonical_name: Option<Arc<str>>,
    pub canonical_revision: Arc<str>,
    /// `<namespace>/<name>` of the authorization policies that select this workload.
    pub authorization_policies: Arc<[Arc<str>]>,
    /// `<namespace>/<name>` of the waypoint traffic addressed to this workload goes through.
    pub waypoint: Option<Arc<str>>,
}

impl Workload {
    /// Checks a workload from the wire: uid, addresses, protocol and identity must be valid.
    pub fn from_api(w: &api::Workload) -> Result<Self, StateError> {
        Self::from_api_in(w, "", &mut Interned::default().values())
    }

    /// [`Self::from_api`] for a resource at `version`, sharing the values other workloads of
    /// the state hold.
    pub(super) fn from_api_in(
        w: &api::Workload,
        version: &str,
        interned: &mut Values,
    ) -> Result<Self, StateError> {
        let invalid = |reason: String| StateError::InvalidWorkload {
            uid: w.uid.clone(),
            reason,
        };
        if w.uid.is_empty() {
            return Err(invalid("it has no uid".into()));
        }
        let uid_len = u32::try_from(w.uid.len())
            .map_err(|_| invalid(format!("its uid is {} B long", w.uid.len())))?;
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
        let shared = Shared {
            namespace: interned.str(&w.namespace),
            identity,
            canonical_name: (w.canonical_name != w.name).then(|| interned.str(&w.canonical_name)),
            canonical_revision: interned.str(&w.canonical_revision),
            authorization_policies: interned.list(&w.authorization_policies),
            waypoint: w
                .waypoint
                .as_ref()
                .filter(|r| !r.name.is_empty())
                .map(|r| interned.str(&format!("{}/{}", r.namespace, r.name))),
        };
        let fields = WorkloadFields {
            node: interned.str(&w.node),
            addresses: Addresses::of(addresses.into_vec()),
            shared: interned.shared(shared),
            version: Version::of(version),
            uid_len,
            protocol,
            healthy: w.status != api::WorkloadStatus::Unhealthy as i32,
            strict_mtls: match api::MtlsMode::try_from(w.mtls_mode) {
                Ok(api::MtlsMode::Permissive) => false,
                Ok(api::MtlsMode::Strict) => true,
                // A mode this proxy does not know is stricter than it can tell: fail closed.
                Err(_) => true,
            },
        };
        let text = match last_segment(&w.uid) == w.name {
            true => Cow::Borrowed(w.uid.as_str()),
            false => Cow::Owned(format!("{}{}", w.uid, w.name)),
        };
        Ok(Workload(triomphe::Arc::from_header_and_str(fields, &text)))
    }

    /// Its stable id, `<cluster>//Pod/<namespace>/<name>`; also its key in the state.
    pub fn uid(&self) -> &str {
        &self.0.slice[..self.uid_len as usize]
    }

    /// The pod's name.
    pub fn name(&self) -> &str {
        match &self.0.slice[self.uid_len as usize..] {
            "" => last_segment(self.uid()),
            own => own,
        }
    }

    /// Whether `a` and `b` are the same workload as held, not two with equal fields.
    pub fn ptr_eq(a: &Workload, b: &Workload) -> bool {
        triomphe::Arc::ptr_eq(&a.0, &b.0)
    }

    /// Where it is held, the same for every handle on it: for hashing by identity.
    pub fn as_ptr(&self) -> *const () {
        triomphe::Arc::as_ptr(&self.0) as *const ()
    }

    /// Its canonical name (the app it is a replica of; its own name without one).
    pub fn canonical_name(&self) -> &str {
        self.shared
            .canonical_name
            .as_deref()
            .unwrap_or_else(|| self.name())
    }

    pub fn addresses(&self) -> &[IpAddr] {
        self.addresses.as_slice()
    }

    /// The name dashboards group by: the canonical service name, else the pod name.
    pub fn canonical_or_name(&self) -> &str {
        match self.canonical_name() {
            "" => self.name(),
            canonical => canonical,
        }
    }

    /// The workload's address in the same family as `like`, so a v6 client reaches a v6 pod.
    pub fn address_like(&self, like: IpAddr) -> Option<IpAddr> {
        self.addresses()
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == like.is_ipv4())
    }
}

/// A workload as the state holds it by uid: found by its uid, which it holds itself, so the
/// state keeps no key beside it.
#[derive(Debug, Clone)]
pub(super) struct ByUid(pub(super) Workload);

impl PartialEq for ByUid {
    fn eq(&self, other: &Self) -> bool {
        self.0.uid() == other.0.uid()
    }
}

impl Eq for ByUid {}

impl PartialOrd for ByUid {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ByUid {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.uid().cmp(other.0.uid())
    }
}

impl std::borrow::Borrow<str> for ByUid {
    fn borrow(&self) -> &str {
        self.0.uid()
    }
}

/// What follows a uid's last `/`: the pod's name, in the uids the controller gives.
fn last_segment(uid: &str) -> &str {
    uid.rsplit('/').next().unwrap_or(uid)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workload_stays_small() {
        // 50k and more are held: every field here is paid that many times.
        let fields = std::mem::size_of::<WorkloadFields>();
        assert!(fields <= 72, "{fields}");
        assert_eq!(std::mem::size_of::<Workload>(), 16);
    }

    #[test]
    fn its_name_is_read_off_its_uid_unless_it_differs() {
        let mut w = api::Workload {
            uid: "Kubernetes//Pod/demo/reviews-v1-abc".into(),
            name: "reviews-v1-abc".into(),
            namespace: "demo".into(),
            service_account: "reviews".into(),
            addresses: vec!["10.0.0.1".into(), "fd00::1".into()],
            canonical_name: "reviews".into(),
            protocol: api::Protocol::Hbone as i32,
            ..Default::default()
        };
        let held = Workload::from_api(&w).unwrap();
        assert_eq!(held.uid(), "Kubernetes//Pod/demo/reviews-v1-abc");
        assert_eq!(&held.0.slice, held.uid(), "the name is not held twice");
        assert_eq!(held.name(), "reviews-v1-abc");
        assert_eq!(held.canonical_name(), "reviews");
        assert_eq!(held.addresses().len(), 2);
        w.name = "other".into();
        w.canonical_name = "other".into();
        w.addresses.pop();
        let held = Workload::from_api(&w).unwrap();
        assert_eq!(held.uid(), "Kubernetes//Pod/demo/reviews-v1-abc");
        assert_eq!(held.name(), "other");
        assert_eq!(held.canonical_name(), "other");
        assert!(held.shared.canonical_name.is_none());
        assert_eq!(held.addresses(), ["10.0.0.1".parse::<IpAddr>().unwrap()]);
    }
}
