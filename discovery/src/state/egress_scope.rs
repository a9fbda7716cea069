//! Declared egress scopes as ztunnel holds them: a namespace's list of the mesh destinations its
//! pods may connect to, checked on every outbound connection from one of them. A destination the
//! mesh does not know (plain passthrough) is not governed by a scope.

use std::net::IpAddr;
use std::sync::Arc;

use ambit_proto::api::workload as api;

use super::{ProxyState, Workload};

/// One namespace's scope, checked.
#[derive(Debug)]
pub struct EgressScope {
    /// The declaring namespace; also its key in the state.
    pub namespace: Arc<str>,
    /// As written, quoted in refusals.
    pub declared: Box<str>,
    /// Namespaces whose every service and workload is in scope.
    namespaces: Box<[Box<str>]>,
    /// `<namespace>/<name>` of the services in scope one by one.
    services: Box<[Box<str>]>,
    /// Why the declaration could not be read: then nothing is in scope.
    pub invalid: Option<Box<str>>,
}

impl EgressScope {
    pub fn from_api(s: &api::EgressScope) -> Self {
        let (whole, named): (Vec<_>, Vec<_>) = s.hosts.iter().partition(|h| h.service.is_empty());
        EgressScope {
            namespace: s.namespace.as_str().into(),
            declared: s.declared.as_str().into(),
            namespaces: whole.iter().map(|h| h.namespace.as_str().into()).collect(),
            services: named
                .iter()
                .map(|h| format!("{}/{}", h.namespace, h.service).into())
                .collect(),
            invalid: (!s.invalid.is_empty()).then(|| s.invalid.as_str().into()),
        }
    }

    fn has_namespace(&self, namespace: &str) -> bool {
        self.namespaces.iter().any(|n| &**n == namespace)
    }

    fn has_service(&self, key: &str) -> bool {
        self.services.iter().any(|s| &**s == key)
    }
}

/// Why a connection was refused by its source's egress scope. The words name the destination
/// and the declaration, so whoever reads them knows what to add where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutsideEgressScope {
    #[error(
        "{destination} is outside the egress scope namespace {namespace} declares ({declared:?}); add it there to allow this connection"
    )]
    Outside {
        destination: String,
        namespace: String,
        declared: String,
    },
    #[error(
        "namespace {namespace} declares an egress scope that cannot be read ({declared:?}: {reason}), so its pods may reach no mesh destination until it is fixed"
    )]
    Unreadable {
        namespace: String,
        declared: String,
        reason: String,
    },
}

impl ProxyState {
    /// The egress scope `namespace` declares, if the state holds one.
    pub fn egress_scope(&self, namespace: &str) -> Option<&Arc<EgressScope>> {
        self.egress_scopes.get(namespace)
    }

    /// Every egress scope held, in no order.
    pub fn egress_scopes(&self) -> impl Iterator<Item = &Arc<EgressScope>> {
        self.egress_scopes.values()
    }

    /// Whether `source` may connect to `destination` by its namespace's egress scope: a service
    /// VIP is in scope when its service or namespace is; a workload's address when its
    /// namespace is, or a service in scope has it as an endpoint. An address the state does
    /// not know is outside the mesh, and not the scope's to refuse.
    pub fn check_egress(
        &self,
        source: &Workload,
        destination: IpAddr,
    ) -> Result<(), OutsideEgressScope> {
        if self.egress_scopes.is_empty() {
            return Ok(());
        }
        let Some(scope) = self.egress_scopes.get(&*source.shared.namespace) else {
            return Ok(());
        };
        let named = if let Some(s) = self.service_by_vip(destination) {
            if scope.has_namespace(&s.namespace) || scope.has_service(&s.key) {
                return Ok(());
            }
            format!("service {}", s.key)
        } else if let Some(w) = self.workload_by_ip(destination) {
            let backs_one = || self.services_of(w.uid()).any(|s| scope.has_service(&s.key));
            if w.uid() == source.uid() || scope.has_namespace(&w.shared.namespace) || backs_one() {
                return Ok(());
            }
            format!(
                "workload {}/{} ({destination})",
                w.shared.namespace,
                w.name()
            )
        } else {
            return Ok(());
        };
        Err(refusal(scope, named))
    }
}

fn refusal(scope: &EgressScope, destination: String) -> OutsideEgressScope {
    match &scope.invalid {
        Some(reason) => OutsideEgressScope::Unreadable {
            namespace: scope.namespace.to_string(),
            declared: scope.declared.to_string(),
            reason: reason.to_string(),
        },
        None => OutsideEgressScope::Outside {
            destination,
            namespace: scope.namespace.to_string(),
            declared: scope.declared.to_string(),
        },
    }
}

#[cfg(test)]
mod tests;
