//! SPIFFE workload IDs: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Why a string is not a valid workload SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("{id:?} is not a SPIFFE ID: it must start with \"spiffe://\"")]
    Scheme { id: String },
    #[error("{id:?} has an empty trust domain: expected spiffe://<trust-domain>/ns/<ns>/sa/<sa>")]
    EmptyTrustDomain { id: String },
    #[error(
        "{id:?} has an invalid trust domain {domain:?}: only lowercase letters, digits, '.', '-' and '_' are allowed"
    )]
    TrustDomain { id: String, domain: String },
    #[error(
        "{id:?} has path {path:?}: a workload ID's path must be /ns/<namespace>/sa/<service-account>"
    )]
    Path { id: String, path: String },
    #[error(
        "{id:?} has an invalid {what} {value:?}: use letters, digits, '.', '-' and '_' (no '%', query, fragment, control or NUL characters)"
    )]
    Segment {
        id: String,
        what: &'static str,
        value: String,
    },
}

/// A workload identity. Parsing is strict on purpose: the ID is what authorization decides on, so
/// anything that two parsers could read differently (percent-escapes, dot segments, empty or
/// extra segments, NUL) is refused rather than normalised.
///
/// Held as the whole ID plus the offsets of its parts: it is cloned into pool keys and log
/// fields on every connection, so a clone is one reference-count increment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    full: Arc<str>,
    domain_end: u16,
    namespace_end: u16,
}

const PREFIX: &str = "spiffe://";
const NS: &str = "/ns/";
const SA: &str = "/sa/";

impl SpiffeId {
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}").parse()
    }

    pub fn trust_domain(&self) -> &str {
        &self.full[PREFIX.len()..self.domain_end as usize]
    }

    pub fn namespace(&self) -> &str {
        &self.full[self.domain_end as usize + NS.len()..self.namespace_end as usize]
    }

    pub fn service_account(&self) -> &str {
        &self.full[self.namespace_end as usize + SA.len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        let rest = id
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeIdError::Scheme { id: id.into() })?;
        let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        if domain.is_empty() {
            return Err(SpiffeIdError::EmptyTrustDomain { id: id.into() });
        }
        let domain_ok = domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_".contains(&b));
        if !domain_ok {
            return Err(SpiffeIdError::TrustDomain {
                id: id.into(),
                domain: domain.into(),
            });
        }
        let parts: Vec<&str> = path.split('/').collect();
        let [ns_key, namespace, sa_key, service_account] = parts[..] else {
            return Err(SpiffeIdError::Path {
                id: id.into(),
                path: format!("/{path}"),
            });
        };
        if ns_key != "ns" || sa_key != "sa" {
            return Err(SpiffeIdError::Path {
                id: id.into(),
                path: format!("/{path}"),
            });
        }
        for (what, value) in [
            ("namespace", namespace),
            ("service account", service_account),
        ] {
            if !valid_segment(value) {
                return Err(SpiffeIdError::Segment {
                    id: id.into(),
                    what,
                    value: value.into(),
                });
            }
        }
        if id.len() > usize::from(u16::MAX) {
            return Err(SpiffeIdError::Path {
                id: id.chars().take(80).collect(),
                path: "(longer than 65535 bytes)".into(),
            });
        }
        let domain_end = PREFIX.len() + domain.len();
        Ok(SpiffeId {
            full: id.into(),
            domain_end: domain_end as u16,
            namespace_end: (domain_end + NS.len() + namespace.len()) as u16,
        })
    }
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b))
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_a_workload_id() {
        let id: SpiffeId = "spiffe://cluster.local/ns/demo/sa/reviews".parse().unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "demo");
        assert_eq!(id.service_account(), "reviews");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/demo/sa/reviews");
        assert_eq!(
            SpiffeId::new("cluster.local", "demo", "reviews").unwrap(),
            id
        );
    }

    #[test]
    fn rejects_malformed_ids() {
        let bad = [
            "http://cluster.local/ns/demo/sa/x",
            "spiffe:///ns/demo/sa/x",
            "spiffe://Cluster.Local/ns/demo/sa/x",
            "spiffe://cluster.local",
            "spiffe://cluster.local/",
            "spiffe://cluster.local/ns/demo",
            "spiffe://cluster.local/ns/demo/sa/",
            "spiffe://cluster.local/ns//sa/x",
            "spiffe://cluster.local/ns/demo/sa/x/extra",
            "spiffe://cluster.local/sa/x/ns/demo",
            "spiffe://cluster.local/ns/demo/sa/x%2Fy",
            "spiffe://cluster.local/ns/../sa/x",
            "spiffe://cluster.local/ns/demo/sa/x?q=1",
            "spiffe://cluster.local/ns/demo/sa/x#frag",
            "spiffe://cluster.local/ns/demo/sa/x\0admin",
            "spiffe://user@cluster.local/ns/demo/sa/x",
            "spiffe://cluster.local:8080/ns/demo/sa/x",
        ];
        for id in bad {
            let err = id.parse::<SpiffeId>().expect_err(id);
            assert!(err.to_string().contains(&format!("{id:?}")), "{err}");
        }
    }
}
