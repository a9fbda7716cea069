//! A namespace's declared egress scope (Istio's Sidecar `egress.hosts`): the mesh destinations
//! its meshed pods may connect to, as `<namespace>/<service>` or `<namespace>/*`, `.` standing
//! for the declaring namespace. The pods' ztunnels refuse a connection to any other destination
//! the mesh knows; addresses outside the mesh are not governed by it.
//!
//! A declaration that cannot be read is an error in a mesh file (a human is there to fix it);
//! from a cluster it becomes a scope with nothing in it, so the namespace fails closed until it
//! is fixed (see [`EgressScope::refusing_all`]).

use std::fmt;

use ambit_proto::api::workload as pb;

/// The namespace annotation carrying the declaration in a cluster: entries separated by commas
/// or spaces (`./*, shared/*, payments/api`).
pub const EGRESS_SCOPE_ANNOTATION: &str = "ambit.io/egress-scope";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressScope {
    /// As written, for the messages that name it.
    pub declared: String,
    pub hosts: Vec<EgressHost>,
    /// Why the declaration could not be read; then nothing is in scope.
    pub invalid: Option<String>,
}

/// One entry: a service of a namespace, or (`service` `None`) everything in it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EgressHost {
    pub namespace: String,
    pub service: Option<String>,
}

impl fmt::Display for EgressHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let service = self.service.as_deref().unwrap_or("*");
        write!(f, "{}/{service}", self.namespace)
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EgressScopeError {
    #[error(
        "the declaration lists no entry; remove it to leave the namespace unscoped, or list what its pods talk to (e.g. \"./*\")"
    )]
    Empty,
    #[error(
        "entry {entry:?} is not <namespace>/<service> or <namespace>/* (\".\" is this namespace)"
    )]
    Malformed { entry: String },
    #[error(
        "entry {entry:?} names every namespace; list the namespaces one by one, or remove the declaration for no scope"
    )]
    EveryNamespace { entry: String },
    #[error(
        "entry {entry:?} names the service by host name; write <namespace>/<service name>, e.g. {suggestion:?}"
    )]
    HostName { entry: String, suggestion: String },
    #[error(
        "entry {entry:?}: {name:?} is not a valid {what} name (lowercase letters, digits and '-', at most 63)"
    )]
    InvalidName {
        entry: String,
        name: String,
        what: &'static str,
    },
}

impl EgressScope {
    /// The scope `namespace` declares with `entries`.
    pub fn parse<'a>(
        namespace: &str,
        entries: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, EgressScopeError> {
        let entries: Vec<&str> = entries.into_iter().collect();
        let mut hosts = entries
            .iter()
            .map(|e| parse_entry(namespace, e))
            .collect::<Result<Vec<_>, _>>()?;
        if hosts.is_empty() {
            return Err(EgressScopeError::Empty);
        }
        hosts.sort();
        hosts.dedup();
        Ok(EgressScope {
            declared: entries.join(", "),
            hosts,
            invalid: None,
        })
    }

    /// The scope an annotation value declares: entries separated by commas or white space.
    pub fn parse_annotation(namespace: &str, value: &str) -> Result<Self, EgressScopeError> {
        let entries = value
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|e| !e.is_empty());
        let mut scope = Self::parse(namespace, entries)?;
        scope.declared = value.trim().to_string();
        Ok(scope)
    }

    /// A declaration that could not be read, kept so that the namespace fails closed: nothing
    /// is in its scope, and every refusal says why.
    pub fn refusing_all(declared: &str, error: &EgressScopeError) -> Self {
        EgressScope {
            declared: declared.trim().to_string(),
            hosts: Vec::new(),
            invalid: Some(error.to_string()),
        }
    }

    /// The services the scope names one by one: a ztunnel holds them up front, so that it can
    /// tell whether a pod address it looks up is one of their endpoints.
    pub fn named_services(&self) -> impl Iterator<Item = (&str, &str)> {
        self.hosts
            .iter()
            .filter_map(|h| Some((h.namespace.as_str(), h.service.as_deref()?)))
    }

    /// Whether a destination in `namespace` (service `service`, or a pod when `None`) is in
    /// scope by an entry of its own; a pod behind a named service is the caller's to check.
    pub fn covers(&self, namespace: &str, service: Option<&str>) -> bool {
        self.hosts.iter().any(|h| {
            h.namespace == namespace && (h.service.is_none() || h.service.as_deref() == service)
        })
    }

    pub fn to_proto(&self, namespace: &str) -> pb::EgressScope {
        pb::EgressScope {
            namespace: namespace.to_string(),
            declared: self.declared.clone(),
            hosts: self
                .hosts
                .iter()
                .map(|h| pb::EgressHost {
                    namespace: h.namespace.clone(),
                    service: h.service.clone().unwrap_or_default(),
                })
                .collect(),
            invalid: self.invalid.clone().unwrap_or_default(),
        }
    }
}

fn parse_entry(own: &str, entry: &str) -> Result<EgressHost, EgressScopeError> {
    let malformed = || EgressScopeError::Malformed {
        entry: entry.to_string(),
    };
    let (namespace, service) = entry.split_once('/').ok_or_else(malformed)?;
    if namespace == "*" {
        return Err(EgressScopeError::EveryNamespace {
            entry: entry.to_string(),
        });
    }
    let namespace = if namespace == "." { own } else { namespace };
    check_name(entry, namespace, "namespace")?;
    let service = match service {
        "*" => None,
        s if s.contains('.') => {
            let name = s.split('.').next().unwrap_or_default();
            return Err(EgressScopeError::HostName {
                entry: entry.to_string(),
                suggestion: format!("{namespace}/{name}"),
            });
        }
        s => {
            check_name(entry, s, "service")?;
            Some(s.to_string())
        }
    };
    Ok(EgressHost {
        namespace: namespace.to_string(),
        service,
    })
}

/// A DNS label, as Kubernetes names namespaces and services.
fn check_name(entry: &str, name: &str, what: &'static str) -> Result<(), EgressScopeError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(EgressScopeError::InvalidName {
            entry: entry.to_string(),
            name: name.to_string(),
            what,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(namespace: &str, service: Option<&str>) -> EgressHost {
        EgressHost {
            namespace: namespace.into(),
            service: service.map(Into::into),
        }
    }

    #[test]
    fn entries_name_namespaces_and_services_with_dot_for_the_own_one() {
        let scope =
            EgressScope::parse("shop", ["./*", "shared/*", "payments/api", "./cart"]).unwrap();
        assert_eq!(
            scope.hosts,
            vec![
                host("payments", Some("api")),
                host("shared", None),
                host("shop", None),
                host("shop", Some("cart")),
            ]
        );
        assert_eq!(scope.declared, "./*, shared/*, payments/api, ./cart");
        assert_eq!(
            scope.named_services().collect::<Vec<_>>(),
            [("payments", "api"), ("shop", "cart")]
        );
    }

    #[test]
    fn an_annotation_separates_entries_by_commas_or_spaces() {
        let scope = EgressScope::parse_annotation("shop", " ./*,shared/*  payments/api\n").unwrap();
        assert_eq!(scope.hosts.len(), 3);
        assert_eq!(scope.declared, "./*,shared/*  payments/api");
        assert_eq!(
            EgressScope::parse_annotation("shop", " , "),
            Err(EgressScopeError::Empty)
        );
    }

    #[test]
    fn bad_entries_are_refused_naming_the_fix() {
        let cases: &[(&str, &str)] = &[
            ("payments", "is not <namespace>/<service>"),
            ("*/*", "names every namespace"),
            ("Payments/api", "not a valid namespace name"),
            ("payments/API", "not a valid service name"),
            ("payments/", "not a valid service name"),
            ("/api", "not a valid namespace name"),
            (
                "payments/api.payments.svc.cluster.local",
                "write <namespace>/<service name>, e.g. \"payments/api\"",
            ),
        ];
        for (entry, words) in cases {
            let error = EgressScope::parse("shop", [*entry]).unwrap_err();
            assert!(error.to_string().contains(words), "{entry}: {error}");
        }
    }

    #[test]
    fn an_unreadable_declaration_is_kept_refusing_everything() {
        let error = EgressScope::parse_annotation("shop", "payments").unwrap_err();
        let scope = EgressScope::refusing_all("payments", &error);
        assert!(scope.hosts.is_empty());
        let proto = scope.to_proto("shop");
        assert_eq!(proto.declared, "payments");
        assert!(proto.invalid.contains("not <namespace>/<service>"));
    }
}
