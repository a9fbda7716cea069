//! From the flows a workload group received to the rules of one ALLOW policy: each source
//! principal with exactly the ports (L4) or the ports, methods and paths (L7, seen by a
//! waypoint) it used; principals that used the same are one rule, as a human would write it.

use std::collections::{BTreeMap, BTreeSet};

use ambit_proto::api::security;

use super::{SuggestedOperation, SuggestedRule};
use crate::model::Labels;
use crate::telemetry::api::ObservedFlow;

/// What one principal reached in a group.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Access {
    /// Ports reached without a request the proxy read (ztunnel, or opaque TCP at a waypoint).
    l4_ports: BTreeSet<u16>,
    /// Per port, per path pattern (`""`: the request had no path), the methods used.
    l7: BTreeMap<u16, BTreeMap<String, BTreeSet<String>>>,
}

/// One policy being assembled (for a selector in a namespace): what reached its workloads.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    access: BTreeMap<String, Access>,
    pub evidence: Vec<ObservedFlow>,
    /// `waypoint <namespace>/<name>` or `ztunnel`.
    pub enforced_by: BTreeSet<String>,
}

impl Draft {
    /// Allows `flow`'s principal on `port` (the target's), with its method and path when a
    /// waypoint saw it as a request. `Err` when the path cannot be written as a policy path.
    pub fn allow(
        &mut self,
        flow: &ObservedFlow,
        port: u16,
        waypoint: Option<&str>,
    ) -> Result<(), String> {
        // The path first: a principal must not get an entry (a rule with no `to`, which
        // matches everything) for a flow it cannot be allowed.
        let path = match waypoint {
            Some(_) if !flow.method.is_empty() && !flow.path_prefix.is_empty() => {
                policy_path(&flow.path_prefix)?
            }
            _ => String::new(),
        };
        let access = self.access.entry(flow.source_identity.clone()).or_default();
        match waypoint {
            Some(w) if !flow.method.is_empty() => {
                access
                    .l7
                    .entry(port)
                    .or_default()
                    .entry(path)
                    .or_default()
                    .insert(flow.method.clone());
                self.enforced_by.insert(format!("waypoint {w}"));
            }
            Some(w) => {
                access.l4_ports.insert(port);
                self.enforced_by.insert(format!("waypoint {w}"));
            }
            None => {
                access.l4_ports.insert(port);
                self.enforced_by.insert("ztunnel".into());
            }
        }
        if !self.evidence.contains(flow) {
            self.evidence.push(flow.clone());
        }
        Ok(())
    }

    /// The rules, principals with the same access together, in a stable order.
    pub fn rules(&self) -> Vec<SuggestedRule> {
        let mut by_access: BTreeMap<&Access, Vec<String>> = BTreeMap::new();
        for (principal, access) in &self.access {
            by_access.entry(access).or_default().push(principal.clone());
        }
        let mut rules: Vec<SuggestedRule> = by_access
            .into_iter()
            .map(|(access, principals)| SuggestedRule {
                principals,
                to: operations(access),
            })
            .collect();
        rules.sort_by(|a, b| a.principals.cmp(&b.principals));
        rules
    }
}

/// Ports reached at L4 are one operation; at L7, per port, the paths used with the same methods
/// are one operation (methods x paths is then exactly what was seen). An L7 port also reached
/// at L4 needs nothing more.
fn operations(access: &Access) -> Vec<SuggestedOperation> {
    let mut ops = Vec::new();
    if !access.l4_ports.is_empty() {
        ops.push(SuggestedOperation {
            ports: access.l4_ports.iter().copied().collect(),
            methods: Vec::new(),
            paths: Vec::new(),
        });
    }
    for (port, paths) in &access.l7 {
        if access.l4_ports.contains(port) {
            continue;
        }
        let mut by_methods: BTreeMap<&BTreeSet<String>, Vec<String>> = BTreeMap::new();
        for (path, methods) in paths {
            by_methods.entry(methods).or_default().push(path.clone());
        }
        for (methods, paths) in by_methods {
            // A request without path needs no path condition, which covers the others too.
            let paths = if paths.iter().any(String::is_empty) {
                Vec::new()
            } else {
                paths
            };
            ops.push(SuggestedOperation {
                ports: vec![*port],
                methods: methods.iter().cloned().collect(),
                paths,
            });
        }
    }
    ops
}

/// A shape's path prefix in Istio's path syntax: `/api/` (the first segment of longer paths)
/// as the prefix `/api/*`, a single-segment path (`/health`, `/`) exactly. `Err` for what that
/// syntax would read as a wider pattern (a trailing `*`) or that is no origin-form path.
pub fn policy_path(prefix: &str) -> Result<String, String> {
    if !prefix.starts_with('/') {
        return Err(format!(
            "path {prefix:?} does not start with /, so no policy path matches it as seen"
        ));
    }
    if prefix.len() > 1 && prefix.ends_with('/') {
        return Ok(format!("{prefix}*"));
    }
    if prefix.ends_with('*') {
        return Err(format!(
            "path {prefix:?} ends with *, which a policy reads as a prefix: it cannot be allowed exactly"
        ));
    }
    Ok(prefix.to_string())
}

/// A policy's rules in the proxies' wire form.
pub fn wire_rules(rules: &[SuggestedRule]) -> Vec<security::Rule> {
    rules
        .iter()
        .map(|r| security::Rule {
            from: vec![security::Source {
                principals: r.principals.clone(),
                ..Default::default()
            }],
            to: r
                .to
                .iter()
                .map(|op| security::Destination {
                    ports: op.ports.iter().copied().map(u32::from).collect(),
                    methods: op.methods.clone(),
                    paths: op.paths.clone(),
                    ..Default::default()
                })
                .collect(),
            when: Vec::new(),
        })
        .collect()
}

/// `allow-observed-<selector values>`, a DNS label, not one of `taken`.
pub fn policy_name(selector: &Labels, taken: &BTreeSet<String>) -> String {
    let values: Vec<&str> = selector.values().map(String::as_str).collect();
    let mut stem: String = format!("allow-observed-{}", values.join("-"))
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-') => c,
            _ => '-',
        })
        .collect();
    stem.truncate(56);
    let stem = stem.trim_end_matches('-').to_string();
    let mut name = stem.clone();
    let mut n = 2;
    while taken.contains(&name) {
        name = format!("{stem}-{n}");
        n += 1;
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_in_istio_syntax() {
        assert_eq!(policy_path("/api/").unwrap(), "/api/*");
        assert_eq!(policy_path("/health").unwrap(), "/health");
        assert_eq!(policy_path("/").unwrap(), "/");
        assert!(policy_path("/a*").is_err());
        assert!(policy_path("*").is_err());
    }

    #[test]
    fn names_are_dns_labels_and_unique() {
        let selector = Labels::from([("app".to_string(), "Reviews_V1".to_string())]);
        let taken = BTreeSet::from(["allow-observed-reviews-v1".to_string()]);
        assert_eq!(
            policy_name(&selector, &taken),
            "allow-observed-reviews-v1-2"
        );
    }
}
