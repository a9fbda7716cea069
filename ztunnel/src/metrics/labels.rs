//! What a connection's metric labels say (Istio's names and values) and what they are made
//! from: the two sides and the service as the config names them ([`Parties`]). A connection
//! carries its `Parties` (a few reference counts); the ~20 label strings are written out only
//! when a (pod, destination) pair is first seen in a config version, or when a connection is
//! refused.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use ambit_discovery::state::{Service, Workload};
use ambit_proto::identity::SpiffeId;

pub const UNKNOWN: &str = "unknown";

/// Which side of the connection reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    Source,
    Destination,
}

impl Reporter {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// mutual_tls for HBONE, none for plaintext and passthrough.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Security {
    MutualTls,
    None,
}

impl Security {
    pub fn as_str(self) -> &'static str {
        match self {
            Security::MutualTls => "mutual_tls",
            Security::None => "none",
        }
    }
}

/// One side of a connection as the config knows it: its workload if any, and the identity it
/// proved (or, for the destination of a tunnel, was required to prove); none on plaintext.
#[derive(Debug, Clone, Default)]
pub struct Side {
    pub workload: Option<Workload>,
    pub principal: Option<SpiffeId>,
}

impl Side {
    pub fn new(workload: Option<Workload>, principal: Option<SpiffeId>) -> Self {
        Side {
            workload,
            principal,
        }
    }

    /// A meshed workload, named by its own identity.
    pub fn meshed(workload: &Workload) -> Self {
        Side::new(
            Some(workload.clone()),
            Some(workload.shared.identity.clone()),
        )
    }

    pub fn unknown() -> Self {
        Side::default()
    }

    fn labels(&self) -> PeerLabels {
        let Some(w) = &self.workload else {
            // Nothing in the config at that address; a proven identity still names its
            // namespace.
            let mut labels = PeerLabels::unknown();
            if let Some(id) = &self.principal {
                labels.namespace = id.namespace().to_string();
                labels.principal = id.to_string();
            }
            return labels;
        };
        PeerLabels {
            workload: w.name().to_string(),
            namespace: w.shared.namespace.to_string(),
            principal: self
                .principal
                .as_ref()
                .map_or_else(|| UNKNOWN.into(), SpiffeId::to_string),
            canonical_revision: if w.shared.canonical_revision.is_empty() {
                "latest".into()
            } else {
                w.shared.canonical_revision.to_string()
            },
            canonical_service: w.canonical_or_name().to_string(),
            cluster: cluster_of(w).to_string(),
        }
    }
}

/// Who a connection is between, as the config names them. Two are equal when they hold the
/// same entries of the same config version (the same `Arc`s), which is when their labels are
/// the same.
#[derive(Debug, Clone)]
pub struct Parties {
    pub reporter: Reporter,
    pub source: Side,
    pub destination: Side,
    pub service: Option<Arc<Service>>,
    pub security: Security,
}

impl Parties {
    /// Istio's labels for this connection.
    pub fn labels(&self) -> ConnectionLabels {
        ConnectionLabels {
            reporter: self.reporter,
            source: self.source.labels(),
            destination: self.destination.labels(),
            service: service_labels(self.service.as_deref()),
            security: self.security,
        }
    }
}

fn same<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

fn address<T>(a: &Option<Arc<T>>) -> usize {
    a.as_ref()
        .map_or(0, |a| Arc::as_ptr(a) as *const () as usize)
}

impl PartialEq for Side {
    fn eq(&self, other: &Self) -> bool {
        let same_workload = match (&self.workload, &other.workload) {
            (Some(a), Some(b)) => Workload::ptr_eq(a, b),
            (a, b) => a.is_none() && b.is_none(),
        };
        same_workload && self.principal == other.principal
    }
}

impl Eq for Side {}

impl Hash for Side {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.workload
            .as_ref()
            .map_or(std::ptr::null(), Workload::as_ptr)
            .hash(state);
        self.principal.hash(state);
    }
}

impl PartialEq for Parties {
    fn eq(&self, other: &Self) -> bool {
        self.reporter == other.reporter
            && self.security == other.security
            && self.source == other.source
            && self.destination == other.destination
            && same(&self.service, &other.service)
    }
}

impl Eq for Parties {}

impl Hash for Parties {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.reporter.hash(state);
        self.security.hash(state);
        self.source.hash(state);
        self.destination.hash(state);
        address(&self.service).hash(state);
    }
}

/// What is known of one side of a connection, in Istio's label values ("unknown" if not).
#[derive(Debug, Clone)]
pub struct PeerLabels {
    pub workload: String,
    pub namespace: String,
    pub principal: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub cluster: String,
}

impl PeerLabels {
    pub fn unknown() -> Self {
        PeerLabels {
            workload: UNKNOWN.into(),
            namespace: UNKNOWN.into(),
            principal: UNKNOWN.into(),
            canonical_service: UNKNOWN.into(),
            canonical_revision: UNKNOWN.into(),
            cluster: UNKNOWN.into(),
        }
    }
}

/// The service a connection was addressed to.
#[derive(Debug, Clone)]
pub struct ServiceLabels {
    /// Its host name (`reviews.demo.svc.cluster.local`).
    pub host: String,
    pub name: String,
    pub namespace: String,
}

impl ServiceLabels {
    pub fn unknown() -> Self {
        ServiceLabels {
            host: UNKNOWN.into(),
            name: UNKNOWN.into(),
            namespace: UNKNOWN.into(),
        }
    }
}

fn service_labels(service: Option<&Service>) -> ServiceLabels {
    service.map_or_else(ServiceLabels::unknown, |s| ServiceLabels {
        host: if s.hostname.is_empty() {
            s.key.to_string()
        } else {
            s.hostname.to_string()
        },
        name: s.name.to_string(),
        namespace: s.namespace.to_string(),
    })
}

/// The cluster a workload runs in: its uid is `<cluster>//<kind>/<namespace>/<name>`.
fn cluster_of(w: &Workload) -> &str {
    w.uid()
        .split_once("//")
        .map_or(UNKNOWN, |(cluster, _)| cluster)
}

/// The labels of one connection, as Istio names them.
#[derive(Debug, Clone)]
pub struct ConnectionLabels {
    pub reporter: Reporter,
    pub source: PeerLabels,
    pub destination: PeerLabels,
    pub service: ServiceLabels,
    pub security: Security,
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use ambit_discovery::testing::meshed_workload;

    use super::*;

    fn parties(source: &Workload, destination: &Workload) -> Parties {
        Parties {
            reporter: Reporter::Source,
            source: Side::meshed(source),
            destination: Side::meshed(destination),
            service: None,
            security: Security::MutualTls,
        }
    }

    #[test]
    fn parties_are_the_same_only_for_the_same_config_entries() {
        let client = Arc::new(meshed_workload("client", &["10.244.1.2"]));
        let server = Arc::new(meshed_workload("server", &["10.244.2.2"]));
        // The same workload as received again in a later config version.
        let server_again = Arc::new(meshed_workload("server", &["10.244.2.2"]));
        let mut seen = HashSet::new();
        assert!(seen.insert(parties(&client, &server)));
        assert!(!seen.insert(parties(&client, &server)), "same entries");
        assert!(
            seen.insert(parties(&client, &server_again)),
            "a new version"
        );
        assert!(seen.insert(parties(&server, &client)), "the other way");
        let mut plaintext = parties(&client, &server);
        plaintext.security = Security::None;
        assert!(seen.insert(plaintext));
        let mut unproven = parties(&client, &server);
        unproven.destination.principal = None;
        assert!(seen.insert(unproven));
    }

    #[test]
    fn an_unknown_peer_is_named_by_what_it_proved() {
        let id = SpiffeId::new("cluster.local", "other", "sa").unwrap();
        let l = Side::new(None, Some(id)).labels();
        assert_eq!(
            (l.workload.as_str(), l.namespace.as_str()),
            (UNKNOWN, "other")
        );
        assert_eq!(l.principal, "spiffe://cluster.local/ns/other/sa/sa");
        assert_eq!(Side::unknown().labels().principal, UNKNOWN);
    }
}
