//! Authorization, as Istio applies it: DENY policies first, then, if any ALLOW policy selects
//! the workload, one of them must match; with none, traffic is allowed. AUDIT policies never
//! change that decision: the ones that match are reported with it, to be logged and counted.
//!
//! ztunnel decides at L4 ([`decide`]): the peer's identity and address and the target port.
//! L7 conditions (methods, paths, hosts, request headers) cannot be checked there, so they fail
//! closed: an ALLOW rule that has them never matches, and a DENY or AUDIT rule that has them
//! matches on its L4 conditions alone. A waypoint decides with the request as well
//! ([`decide_request`]) and checks every condition.
//!
//! A dry-run policy (observer mode) decides nothing: the decision is made without it, and
//! again as if it were enforced; when that second decision denies what the first allows, the
//! verdict carries it as [`Verdict::would_deny`], to be logged and counted.

mod compile;
mod matching;
mod request;

use std::net::IpAddr;
use std::sync::Arc;

use ambit_proto::identity::SpiffeId;

pub use request::Request;

use matching::{Cidr, Mode, StringMatch, Values};

/// What a policy does to the connections (or requests) it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    /// Reports the match; decides nothing.
    Audit,
}

/// An authorization policy, checked and compiled ([`Policy::from_api`]).
#[derive(Debug)]
pub struct Policy {
    /// `<namespace>/<name>`; also its key in the state.
    pub key: Arc<str>,
    pub action: Action,
    /// Observer mode: evaluated, never enforced.
    pub dry_run: bool,
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    from: Vec<SourceMatch>,
    to: Vec<Operation>,
    when: Vec<Condition>,
    /// Some condition of the rule needs the request (see the module docs).
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
struct Operation {
    ports: Vec<u16>,
    not_ports: Vec<u16>,
    methods: Values,
    paths: Values,
    /// Lowercase patterns, matched case-insensitively against hosts without port.
    hosts: Values,
    headers: Vec<HeaderCondition>,
}

#[derive(Debug)]
struct HeaderCondition {
    name: http::HeaderName,
    values: Values,
}

/// A `when` condition.
#[derive(Debug)]
enum Condition {
    Principal(Values),
    Namespace(Values),
    Header(HeaderCondition),
}

/// Who is connecting.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Proven by mTLS; `None` for plaintext from outside the mesh.
    pub identity: Option<&'a SpiffeId>,
    pub ip: IpAddr,
}

/// The decision, with what decided it (for logs, metrics and the client's error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// `policy`: the ALLOW policy that matched; `None` when no ALLOW policy selects the
    /// workload (allowed by default).
    Allow {
        policy: Option<Arc<str>>,
    },
    Deny {
        policy: Box<str>,
        reason: String,
    },
}

/// A decision and the AUDIT policies that matched on the way (empty, without allocating, in
/// the common case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    pub audited: Vec<Arc<str>>,
    /// What the selected policies would decide if the dry-run ones among them were enforced,
    /// when that is a denial of what `decision` allows: a `Decision::Deny`.
    pub would_deny: Option<Decision>,
}

impl Verdict {
    pub fn is_allowed(&self) -> bool {
        matches!(self.decision, Decision::Allow { .. })
    }
}

impl Policy {
    /// Does the policy match? `request` is `None` at L4 (see the module docs). No rules match
    /// nothing, as in Istio: an ALLOW without rules therefore allows nothing (it still makes
    /// everything else denied), a DENY without rules denies nothing. To deny everything, a DENY
    /// needs one empty rule (`rules: [{}]`), which matches every request.
    fn matches(&self, source: &Source<'_>, port: u16, request: Option<&Request<'_>>) -> bool {
        self.rules
            .iter()
            .any(|rule| rule.matches(self.action, source, port, request))
    }
}

impl Rule {
    fn matches(
        &self,
        action: Action,
        source: &Source<'_>,
        port: u16,
        request: Option<&Request<'_>>,
    ) -> bool {
        if request.is_none() && self.has_l7 && action == Action::Allow {
            return false;
        }
        let mode = match action {
            Action::Allow => Mode::Grant,
            Action::Deny | Action::Audit => Mode::Refuse,
        };
        (self.from.is_empty() || self.from.iter().any(|f| f.matches(source)))
            && (self.to.is_empty() || self.to.iter().any(|t| t.matches(port, request, mode)))
            && self.when.iter().all(|c| c.matches(source, request, mode))
    }
}

impl SourceMatch {
    fn matches(&self, source: &Source<'_>) -> bool {
        let principal = source.identity.map(SpiffeId::as_str);
        let namespace = source.identity.map(SpiffeId::namespace);
        let any = |list: &[StringMatch], v: Option<&str>| v.is_some_and(|v| matching::any(list, v));
        (self.principals.is_empty() || any(&self.principals, principal))
            && !any(&self.not_principals, principal)
            && (self.namespaces.is_empty() || any(&self.namespaces, namespace))
            && !any(&self.not_namespaces, namespace)
            && (self.ip_blocks.is_empty() || self.ip_blocks.iter().any(|c| c.contains(source.ip)))
            && !self.not_ip_blocks.iter().any(|c| c.contains(source.ip))
    }
}

impl Operation {
    /// At L4 (`request` is `None`) only the ports are checked: the caller has already made an
    /// ALLOW rule with L7 conditions fail, and a DENY or AUDIT one matches on the rest.
    fn matches(&self, port: u16, request: Option<&Request<'_>>, mode: Mode) -> bool {
        if !((self.ports.is_empty() || self.ports.contains(&port))
            && !self.not_ports.contains(&port))
        {
            return false;
        }
        let Some(r) = request else {
            return true;
        };
        self.methods
            .single(Some(r.method), StringMatch::matches_bytes)
            && self.paths.single(Some(r.path), StringMatch::matches_bytes)
            && (self.hosts.is_empty()
                || self
                    .hosts
                    .multi(mode, r.hosts(), StringMatch::matches_ignore_case))
            && self.headers.iter().all(|h| h.matches(r, mode))
    }
}

impl HeaderCondition {
    fn matches(&self, request: &Request<'_>, mode: Mode) -> bool {
        self.values
            .multi(mode, request.header(&self.name), StringMatch::matches_bytes)
    }
}

impl Condition {
    fn matches(&self, source: &Source<'_>, request: Option<&Request<'_>>, mode: Mode) -> bool {
        match self {
            Condition::Principal(v) => v.single(
                source.identity.map(SpiffeId::as_str),
                StringMatch::matches_bytes,
            ),
            Condition::Namespace(v) => v.single(
                source.identity.map(SpiffeId::namespace),
                StringMatch::matches_bytes,
            ),
            // At L4: see `Operation::matches`.
            Condition::Header(h) => request.is_none_or(|r| h.matches(r, mode)),
        }
    }
}

/// The L4 decision of the policies `selected` for a connection from `source` to `port`.
pub fn decide<'a>(
    selected: impl Iterator<Item = &'a Arc<Policy>> + Clone,
    source: &Source<'_>,
    port: u16,
) -> Verdict {
    evaluate(selected, source, port, None)
}

/// The decision of the policies `selected` for `request` from `source` to `port`, every
/// condition checked.
pub fn decide_request<'a>(
    selected: impl Iterator<Item = &'a Arc<Policy>> + Clone,
    source: &Source<'_>,
    port: u16,
    request: &Request<'_>,
) -> Verdict {
    evaluate(selected, source, port, Some(request))
}

fn evaluate<'a>(
    selected: impl Iterator<Item = &'a Arc<Policy>> + Clone,
    source: &Source<'_>,
    port: u16,
    request: Option<&Request<'_>>,
) -> Verdict {
    let audited: Vec<Arc<str>> = selected
        .clone()
        .filter(|p| p.action == Action::Audit && p.matches(source, port, request))
        .map(|p| p.key.clone())
        .collect();
    let enforced = selected.clone().filter(|p| !p.dry_run);
    let decision = enforce(enforced, source, port, request);
    let would_deny = match decision {
        Decision::Allow { .. } if selected.clone().any(|p| p.dry_run) => {
            Some(enforce(selected, source, port, request))
                .filter(|d| matches!(d, Decision::Deny { .. }))
        }
        _ => None,
    };
    Verdict {
        decision,
        audited,
        would_deny,
    }
}

/// The decision of `selected` (AUDIT policies among them change nothing).
fn enforce<'a>(
    selected: impl Iterator<Item = &'a Arc<Policy>> + Clone,
    source: &Source<'_>,
    port: u16,
    request: Option<&Request<'_>>,
) -> Decision {
    for p in selected.clone().filter(|p| p.action == Action::Deny) {
        if p.matches(source, port, request) {
            return Decision::Deny {
                policy: (*p.key).into(),
                reason: format!(
                    "{} is denied by DENY policy {} ({})",
                    who(source),
                    p.key,
                    what(port, request)
                ),
            };
        }
    }
    let mut allows = selected.filter(|p| p.action == Action::Allow).peekable();
    if allows.peek().is_none() {
        return Decision::Allow { policy: None };
    }
    let mut names = Vec::new();
    for p in allows {
        if p.matches(source, port, request) {
            return Decision::Allow {
                policy: Some(p.key.clone()),
            };
        }
        names.push(p.key.to_string());
    }
    Decision::Deny {
        policy: names.join(",").into(),
        reason: format!(
            "{} matches none of the ALLOW policies selecting this workload ({}) for {}",
            who(source),
            names.join(", "),
            what(port, request)
        ),
    }
}

fn who(source: &Source<'_>) -> String {
    match source.identity {
        Some(id) => id.to_string(),
        None => format!("plaintext client {}", source.ip),
    }
}

fn what(port: u16, request: Option<&Request<'_>>) -> String {
    match request {
        Some(r) => format!("{} {} on port {port}", r.method, r.path),
        None => format!("port {port}"),
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_l7;
