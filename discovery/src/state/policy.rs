//! L4 authorization, as Istio's ztunnel applies it: DENY policies first, then, if any ALLOW
//! policy selects the workload, one of them must match; with none, traffic is allowed.
//! L7 conditions cannot be checked at L4, so they fail closed: an ALLOW rule that has them
//! never matches, and a DENY rule that has them matches on its L4 conditions alone.

use std::net::IpAddr;
use std::sync::Arc;

use ambit_proto::api::security as api;
use ambit_proto::identity::SpiffeId;

use super::StateError;

/// What a policy does to the connections it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

/// An authorization policy, checked and compiled for L4 evaluation.
#[derive(Debug)]
pub struct Policy {
    /// `<namespace>/<name>`; also its key in the state.
    pub key: Arc<str>,
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
    /// Checks and compiles a policy from the wire: its action, CIDRs and ports must be valid.
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
            key: key.as_str().into(),
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

/// The L4 decision of the policies `selected` for a connection from `source` to `port`: DENY
/// first, then one ALLOW must match if there is any.
pub fn decide<'a>(
    selected: impl Iterator<Item = &'a Arc<Policy>> + Clone,
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
                policy: (*p.key).into(),
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
mod tests;
