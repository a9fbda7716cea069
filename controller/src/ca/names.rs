//! `NAMESPACE/NAME` references in flags: the ztunnel's service account, the CA root's Secret.

use std::fmt;
use std::str::FromStr;

/// A namespaced Kubernetes object named on the command line as `NAMESPACE/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamespacedName {
    pub namespace: String,
    pub name: String,
}

impl NamespacedName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        NamespacedName {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The user name the API server gives this service account's tokens.
    pub fn service_account_user(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }

    /// The service account a token's user name stands for, if it is one.
    pub fn from_service_account_user(user: &str) -> Option<Self> {
        let (namespace, name) = user
            .strip_prefix("system:serviceaccount:")?
            .split_once(':')?;
        (!namespace.is_empty() && !name.is_empty() && !name.contains(':'))
            .then(|| NamespacedName::new(namespace, name))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{given:?} is not NAMESPACE/NAME (for example ambit-system/ztunnel)")]
pub struct NamespacedNameError {
    given: String,
}

impl FromStr for NamespacedName {
    type Err = NamespacedNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((namespace, name))
                if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
            {
                Ok(NamespacedName::new(namespace, name))
            }
            _ => Err(NamespacedNameError { given: s.into() }),
        }
    }
}

impl fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_back() {
        let n: NamespacedName = "ambit-system/ztunnel".parse().unwrap();
        assert_eq!(n, NamespacedName::new("ambit-system", "ztunnel"));
        assert_eq!(n.to_string(), "ambit-system/ztunnel");
        for bad in ["ztunnel", "/ztunnel", "ambit-system/", "a/b/c", ""] {
            let err = bad.parse::<NamespacedName>().unwrap_err().to_string();
            assert!(err.contains("NAMESPACE/NAME"), "{err}");
        }
    }

    #[test]
    fn service_account_user_names_round_trip() {
        let sa = NamespacedName::new("demo", "wp");
        assert_eq!(sa.service_account_user(), "system:serviceaccount:demo:wp");
        assert_eq!(
            NamespacedName::from_service_account_user(&sa.service_account_user()),
            Some(sa)
        );
        for not_sa in [
            "kubernetes-admin",
            "system:node:node-a",
            "system:serviceaccount:demo",
            "system:serviceaccount::wp",
            "system:serviceaccount:demo:wp:extra",
        ] {
            assert_eq!(NamespacedName::from_service_account_user(not_sa), None);
        }
    }
}
