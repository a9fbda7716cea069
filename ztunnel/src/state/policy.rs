//! L4 authorization, as Istio's ztunnel applies it: DENY policies first, then, if any ALLOW
//! policy selects the workload, one of them must match; with none, traffic is allowed.
//! L7 conditions cannot be checked at L4, so they fail closed: an ALLOW rule that has them
//! never matches, and a DENY rule that has them matches on its L4 conditions alone.

use std::net::IpAddr;

use ambit_proto::api::security as api;
use ambit_proto::identity::SpiffeId;

use super::StateError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Debug)]
pub struct Policy {
    /// "<namespace>/<name>".
    pub key: Box<str>,
    pub action: Action,
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    from: Vec<SourceMatch>,
    to: Vec<PortMatch>,
    has_l7: bool,
}

#[derive(Debug, Default)]
struct SourceMatch {
    principals: Vec<StringMatch>,
    not_principals: Vec<StringMatch>,
    namespaces: Vec<StringMatch>,
    not_namespaces: Vec<StringMatch>,
    ip_blocks: Vec<Cidr>,
    not_ip_blocks: Vec<Cidr>,
}

#[derive(Debug, Default)]
struct PortMatch {
    ports: Vec<u16>,
    not_ports: Vec<u16>,
}

#[derive(Debug)]
enum StringMatch {
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    Any,
}

impl StringMatch {
    fn parse(s: &str) -> Self {
        if s == "*" {
            StringMatch::Any
        } else if let Some(p) = s.strip_suffix('*') {
            StringMatch::Prefix(p.into())
        } else if let Some(p) = s.strip_prefix('*') {
            StringMatch::Suffix(p.into())
        } else {
            StringMatch::Exact(s.into())
        }
    }

    fn matches(&self, v: &str) -> bool {
        match self {
            StringMatch::Exact(e) => **e == *v,
            StringMatch::Prefix(p) => v.starts_with(&**p),
            StringMatch::Suffix(s) => v.ends_with(&**s),
            StringMatch::Any => true,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse().ok()?, p.parse().ok()?),
            None => {
                let a: IpAddr = s.parse().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Who is connecting.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Proven by mTLS; `None` for plaintext from outside the mesh.
    pub identity: Option<&'a SpiffeId>,
    pub ip: IpAddr,
}

/// The outcome, with what decided it (for logs, metrics and the client's error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny { policy: Box<str>, reason: String },
}

impl Policy {
    pub fn from_api(p: &api::AuthorizationPolicy) -> Result<Self, StateError> {
        let key = format!("{}/{}", p.namespace, p.name);
        let invalid = |reason: String| StateError::InvalidPolicy {
            key: key.clone(),
            reason,
        };
        let action = match api::Action::try_from(p.action) {
            Ok(api::Action::Allow) => Action::Allow,
            Ok(api::Action::Deny) => Action::Deny,
            Err(_) => {
                return Err(invalid(format!(
                    "action {} is neither ALLOW nor DENY",
                    p.action
                )));
            }
        };
        let strings = |v: &[String]| v.iter().map(|s| StringMatch::parse(s)).collect();
        let cidrs = |v: &[String]| {
            v.iter()
                .map(|s| {
                    Cidr::parse(s)
                        .ok_or_else(|| invalid(format!("{s:?} is not an IP address or CIDR")))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let ports = |v: &[u32]| {
            v.iter()
                .map(|p| {
                    u16::try_from(*p).map_err(|_| invalid(format!("port {p} is out of range")))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let mut rules = Vec::new();
        for r in &p.rules {
            let mut from = Vec::new();
            for s in &r.from {
                from.push(SourceMatch {
                    principals: strings(&s.principals),
                    not_principals: strings(&s.not_principals),
                    namespaces: strings(&s.namespaces),
                    not_namespaces: strings(&s.not_namespaces),
                    ip_blocks: cidrs(&s.ip_blocks)?,
                    not_ip_blocks: cidrs(&s.not_ip_blocks)?,
                });
            }
            let mut to = Vec::new();
            let mut has_l7 = false;
            for d in &r.to {
                has_l7 |= !(d.methods.is_empty()
                    && d.not_methods.is_empty()
                    && d.paths.is_empty()
                    && d.not_paths.is_empty()
                    && d.hosts.is_empty()
                    && d.not_hosts.is_empty()
                    && d.headers.is_empty());
                to.push(PortMatch {
                    ports: ports(&d.ports)?,
                    not_ports: ports(&d.not_ports)?,
                });
            }
            rules.push(Rule { from, to, has_l7 });
        }
        Ok(Policy {
            key: key.into(),
            action,
            rules,
        })
    }

    fn matches(&self, source: &Source<'_>, port: u16) -> bool {
        // No rules match nothing, as in Istio: an ALLOW without rules therefore allows nothing
        // (it still makes everything else denied), a DENY without rules denies nothing. To deny
        // everything, a DENY needs one empty rule (`rules: [{}]`), which matches every request.
        self.rules.iter().any(|rule| {
            if rule.has_l7 && self.action == Action::Allow {
                return false;
            }
            let from = rule.from.is_empty() || rule.from.iter().any(|f| f.matches(source));
            let to = rule.to.is_empty() || rule.to.iter().any(|t| t.matches(port));
            from && to
        })
    }
}

impl SourceMatch {
    fn matches(&self, source: &Source<'_>) -> bool {
        let principal = source.identity.map(SpiffeId::as_str);
        let namespace = source.identity.map(SpiffeId::namespace);
        let any = |list: &[StringMatch], v: Option<&str>| {
            v.is_some_and(|v| list.iter().any(|m| m.matches(v)))
        };
        (self.principals.is_empty() || any(&self.principals, principal))
            && !any(&self.not_principals, principal)
            && (self.namespaces.is_empty() || any(&self.namespaces, namespace))
            && !any(&self.not_namespaces, namespace)
            && (self.ip_blocks.is_empty() || self.ip_blocks.iter().any(|c| c.contains(source.ip)))
            && !self.not_ip_blocks.iter().any(|c| c.contains(source.ip))
    }
}

impl PortMatch {
    fn matches(&self, port: u16) -> bool {
        (self.ports.is_empty() || self.ports.contains(&port)) && !self.not_ports.contains(&port)
    }
}

pub(super) fn decide<'a>(
    selected: impl Iterator<Item = &'a std::sync::Arc<Policy>> + Clone,
    source: &Source<'_>,
    port: u16,
) -> Decision {
    let who = source
        .identity
        .map(|i| i.to_string())
        .unwrap_or_else(|| format!("plaintext client {}", source.ip));
    for p in selected.clone().filter(|p| p.action == Action::Deny) {
        if p.matches(source, port) {
            return Decision::Deny {
                policy: p.key.clone(),
                reason: format!("{who} is denied by DENY policy {} (port {port})", p.key),
            };
        }
    }
    let mut allows = selected.filter(|p| p.action == Action::Allow).peekable();
    if allows.peek().is_none() {
        return Decision::Allow;
    }
    let mut names = Vec::new();
    for p in allows {
        if p.matches(source, port) {
            return Decision::Allow;
        }
        names.push(p.key.to_string());
    }
    Decision::Deny {
        policy: names.join(",").into(),
        reason: format!(
            "{who} matches none of the ALLOW policies selecting this workload ({}) on port {port}",
            names.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn policy(action: api::Action, rules: Vec<api::Rule>) -> Arc<Policy> {
        Arc::new(
            Policy::from_api(&api::AuthorizationPolicy {
                name: format!("{action:?}").to_lowercase(),
                namespace: "demo".into(),
                selector: None,
                action: action as i32,
                rules,
            })
            .unwrap(),
        )
    }

    fn from_principal(p: &str) -> api::Rule {
        api::Rule {
            from: vec![api::Source {
                principals: vec![p.into()],
                ..Default::default()
            }],
            to: vec![],
        }
    }

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", "demo", sa).unwrap()
    }

    fn src(identity: Option<&SpiffeId>) -> Source<'_> {
        Source {
            identity,
            ip: "10.244.1.7".parse().unwrap(),
        }
    }

    #[test]
    fn deny_wins_over_allow() {
        let bad = id("denied-client");
        let good = id("client");
        let policies = [
            policy(
                api::Action::Allow,
                vec![from_principal("spiffe://cluster.local/ns/demo/*")],
            ),
            policy(api::Action::Deny, vec![from_principal(bad.as_str())]),
        ];
        assert!(
            matches!(decide(policies.iter(), &src(Some(&bad)), 8080), Decision::Deny { policy, .. } if &*policy == "demo/deny")
        );
        assert_eq!(
            decide(policies.iter(), &src(Some(&good)), 8080),
            Decision::Allow
        );
    }

    #[test]
    fn allow_policies_make_everything_else_denied() {
        let policies = [policy(
            api::Action::Allow,
            vec![from_principal(id("client").as_str())],
        )];
        assert_eq!(
            decide(policies.iter(), &src(Some(&id("client"))), 80),
            Decision::Allow
        );
        assert!(matches!(
            decide(policies.iter(), &src(Some(&id("other"))), 80),
            Decision::Deny { .. }
        ));
        // Plaintext has no identity, so it cannot match a principal.
        assert!(matches!(
            decide(policies.iter(), &src(None), 80),
            Decision::Deny { .. }
        ));
        assert_eq!(decide([].iter(), &src(None), 80), Decision::Allow);
    }

    #[test]
    fn policies_without_rules_match_nothing_and_an_empty_rule_matches_everything() {
        let anyone = id("anyone");
        let allow_nothing = [policy(api::Action::Allow, vec![])];
        assert!(matches!(
            decide(allow_nothing.iter(), &src(Some(&anyone)), 80),
            Decision::Deny { .. }
        ));
        let deny_nothing = [policy(api::Action::Deny, vec![])];
        assert_eq!(
            decide(deny_nothing.iter(), &src(Some(&anyone)), 80),
            Decision::Allow
        );
        let deny_all = [policy(api::Action::Deny, vec![api::Rule::default()])];
        assert!(matches!(
            decide(deny_all.iter(), &src(None), 80),
            Decision::Deny { .. }
        ));
    }

    #[test]
    fn ports_namespaces_and_ip_blocks() {
        let rule = api::Rule {
            from: vec![api::Source {
                namespaces: vec!["demo".into()],
                not_ip_blocks: vec!["10.244.1.0/24".into()],
                ..Default::default()
            }],
            to: vec![api::Destination {
                ports: vec![8080],
                ..Default::default()
            }],
        };
        let policies = [policy(api::Action::Deny, vec![rule])];
        let c = id("client");
        let inside = src(Some(&c));
        let outside = Source {
            identity: Some(&c),
            ip: "10.244.2.7".parse().unwrap(),
        };
        assert_eq!(decide(policies.iter(), &inside, 8080), Decision::Allow);
        assert!(matches!(
            decide(policies.iter(), &outside, 8080),
            Decision::Deny { .. }
        ));
        assert_eq!(decide(policies.iter(), &outside, 9090), Decision::Allow);
    }

    #[test]
    fn l7_conditions_fail_closed_at_l4() {
        let l7 = api::Rule {
            from: vec![],
            to: vec![api::Destination {
                methods: vec!["GET".into()],
                ..Default::default()
            }],
        };
        let allow = [policy(api::Action::Allow, vec![l7.clone()])];
        assert!(matches!(
            decide(allow.iter(), &src(Some(&id("c"))), 80),
            Decision::Deny { .. }
        ));
        let deny = [policy(api::Action::Deny, vec![l7])];
        assert!(matches!(
            decide(deny.iter(), &src(Some(&id("c"))), 80),
            Decision::Deny { .. }
        ));
    }

    #[test]
    fn malformed_policies_are_refused() {
        let bad = api::AuthorizationPolicy {
            name: "p".into(),
            namespace: "demo".into(),
            selector: None,
            action: 0,
            rules: vec![api::Rule {
                from: vec![api::Source {
                    ip_blocks: vec!["10.0.0.0/40".into()],
                    ..Default::default()
                }],
                to: vec![],
            }],
        };
        let err = Policy::from_api(&bad).unwrap_err().to_string();
        assert!(
            err.contains("demo/p") && err.contains("10.0.0.0/40"),
            "{err}"
        );
    }
}
