//! What can be wrong with a mesh description. Every error names the resource it is about (its
//! [`ResourceRef`]), so a source can point back at where that resource was written.

use std::fmt;
use std::net::IpAddr;

use ambit_proto::identity::SpiffeIdError;

use super::EgressScopeError;

/// The kinds of object the mesh model holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Node,
    Namespace,
    Pod,
    Service,
    Waypoint,
    AuthorizationPolicy,
    Route,
    TrafficPolicy,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Node => "node",
            Kind::Namespace => "namespace",
            Kind::Pod => "pod",
            Kind::Service => "service",
            Kind::Waypoint => "waypoint",
            Kind::AuthorizationPolicy => "authorization policy",
            Kind::Route => "route",
            Kind::TrafficPolicy => "traffic policy",
        })
    }
}

/// One object of the model: its kind and its name (`<namespace>/<name>` for namespaced kinds).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceRef {
    pub kind: Kind,
    pub name: String,
}

impl ResourceRef {
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        ResourceRef {
            kind,
            name: name.into(),
        }
    }
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

/// Why a mesh description cannot become a model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("{subject} is declared twice: names are unique per kind (and per namespace)")]
    Duplicate { subject: ResourceRef },
    #[error(
        "{subject} runs on node {node:?}, which is not declared: add it to the nodes or fix the node name"
    )]
    UnknownNode { subject: ResourceRef, node: String },
    #[error(
        "{subject} is in namespace {namespace:?}, which is not declared: add it to the namespaces"
    )]
    UnknownNamespace {
        subject: ResourceRef,
        namespace: String,
    },
    #[error(
        "{subject} uses address {address}, which {first} already has: every pod, waypoint and service address must be unique"
    )]
    DuplicateAddress {
        subject: ResourceRef,
        address: IpAddr,
        first: ResourceRef,
    },
    #[error("{subject} has no address: give it at least an IPv4 or an IPv6 address")]
    NoAddress { subject: ResourceRef },
    #[error(
        "{subject} asks for waypoint {waypoint:?} (label {label}) but namespace {namespace} has no such waypoint: declare it or fix the label"
    )]
    UnknownWaypoint {
        subject: ResourceRef,
        label: &'static str,
        namespace: String,
        waypoint: String,
    },
    #[error("{subject} has label {label}={value:?}; the allowed values are {allowed}")]
    InvalidLabelValue {
        subject: ResourceRef,
        label: &'static str,
        value: String,
        allowed: &'static str,
    },
    #[error("{subject} does not make a valid workload identity: {source}")]
    InvalidIdentity {
        subject: ResourceRef,
        source: SpiffeIdError,
    },
    #[error("trust domain {trust_domain:?} is not valid: {source}")]
    InvalidTrustDomain {
        trust_domain: String,
        source: SpiffeIdError,
    },
    #[error("{subject} declares port {port} twice: each service port may appear once")]
    DuplicatePort { subject: ResourceRef, port: u16 },
    #[error(
        "{subject} names principal {principal:?}, which is neither a SPIFFE ID nor a 'spiffe://…*' prefix: {reason}"
    )]
    InvalidPrincipal {
        subject: ResourceRef,
        principal: String,
        reason: String,
    },
    #[error(
        "{subject} names IP block {block:?}, which is neither an address nor a CIDR like 10.0.0.0/8"
    )]
    InvalidIpBlock { subject: ResourceRef, block: String },
    #[error(
        "{subject} refers to service {backend:?}, which is not declared: use <service>.<namespace>.svc.<trust domain> of a declared service"
    )]
    UnknownBackend {
        subject: ResourceRef,
        backend: String,
    },
    /// A route the waypoint could not honour as written (a source that refuses the whole
    /// description reports it this way; Kubernetes leaves the route out instead).
    #[error("{subject} cannot be used: {reason}")]
    InvalidRoute {
        subject: ResourceRef,
        reason: String,
    },
    /// An authorization policy the proxies could not enforce as written (a source that refuses
    /// the whole description reports it this way; Kubernetes fails the field closed instead).
    #[error("{subject} cannot be enforced as written: {reason}")]
    InvalidPolicy {
        subject: ResourceRef,
        reason: String,
    },
    /// A traffic policy the waypoint could not honour as written (a source that refuses the
    /// whole description reports it this way; Kubernetes leaves the policy out instead).
    #[error("{subject} cannot be used: {reason}")]
    InvalidTrafficPolicy {
        subject: ResourceRef,
        reason: String,
    },
    /// Two traffic policies for one service: which limits hold would depend on an order nobody
    /// sees, so the later one is refused.
    #[error(
        "{subject} targets service {service}, which {first} already targets: a service takes one traffic policy; merge them into one"
    )]
    DuplicateTarget {
        subject: ResourceRef,
        service: String,
        first: ResourceRef,
    },
    #[error("{subject} declares an egress scope that cannot be read: {source}")]
    InvalidEgressScope {
        subject: ResourceRef,
        source: EgressScopeError,
    },
    #[error(
        "{subject} has the same bootstrap token as {first}: each node needs its own, since the token is what tells the CA which node is asking"
    )]
    DuplicateToken {
        subject: ResourceRef,
        first: ResourceRef,
    },
}

impl ModelError {
    /// The resource the error is about, for sources that can say where it was written. `None` for
    /// mesh-wide settings.
    pub fn subject(&self) -> Option<&ResourceRef> {
        match self {
            ModelError::Duplicate { subject }
            | ModelError::UnknownNode { subject, .. }
            | ModelError::UnknownNamespace { subject, .. }
            | ModelError::DuplicateAddress { subject, .. }
            | ModelError::NoAddress { subject }
            | ModelError::UnknownWaypoint { subject, .. }
            | ModelError::InvalidLabelValue { subject, .. }
            | ModelError::InvalidIdentity { subject, .. }
            | ModelError::DuplicatePort { subject, .. }
            | ModelError::InvalidPrincipal { subject, .. }
            | ModelError::InvalidIpBlock { subject, .. }
            | ModelError::UnknownBackend { subject, .. }
            | ModelError::InvalidRoute { subject, .. }
            | ModelError::InvalidPolicy { subject, .. }
            | ModelError::InvalidTrafficPolicy { subject, .. }
            | ModelError::DuplicateTarget { subject, .. }
            | ModelError::DuplicateToken { subject, .. }
            | ModelError::InvalidEgressScope { subject, .. } => Some(subject),
            ModelError::InvalidTrustDomain { .. } => None,
        }
    }
}
