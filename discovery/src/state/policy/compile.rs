//! A policy from the wire to its compiled form, refusing what could not be evaluated as written
//! (a bad CIDR, port, header name or `when` key): the update is refused, the old state kept.

use std::sync::Arc;

use ambit_proto::api::security as api;

use super::matching::{Cidr, StringMatch, Values};
use super::{Action, Condition, HeaderCondition, Operation, Policy, Rule, SourceMatch};
use crate::state::StateError;

/// The `when` keys a proxy evaluates.
pub const SOURCE_PRINCIPAL: &str = "source.principal";
pub const SOURCE_NAMESPACE: &str = "source.namespace";
const HEADER_PREFIX: &str = "request.headers[";

impl Policy {
    /// Checks and compiles a policy from the wire.
    pub fn from_api(p: &api::AuthorizationPolicy) -> Result<Self, StateError> {
        let key = format!("{}/{}", p.namespace, p.name);
        let c = Compiler { key: &key };
        let action = match api::Action::try_from(p.action) {
            Ok(api::Action::Allow) => Action::Allow,
            Ok(api::Action::Deny) => Action::Deny,
            Ok(api::Action::Audit) => Action::Audit,
            Err(_) => {
                return Err(c.invalid(format!(
                    "action {} is none of ALLOW, DENY and AUDIT",
                    p.action
                )));
            }
        };
        let rules = p
            .rules
            .iter()
            .map(|r| c.rule(r))
            .collect::<Result<_, _>>()?;
        Ok(Policy {
            key: Arc::from(key.as_str()),
            action,
            dry_run: p.dry_run,
            rules,
        })
    }
}

struct Compiler<'a> {
    key: &'a str,
}

fn strings(v: &[String]) -> Vec<StringMatch> {
    v.iter().map(|s| StringMatch::parse(s)).collect()
}

impl Compiler<'_> {
    fn invalid(&self, reason: String) -> StateError {
        StateError::InvalidPolicy {
            key: self.key.to_string(),
            reason,
        }
    }

    fn rule(&self, r: &api::Rule) -> Result<Rule, StateError> {
        let from = r
            .from
            .iter()
            .map(|s| self.source(s))
            .collect::<Result<_, _>>()?;
        let mut has_l7 = false;
        let mut to = Vec::new();
        for d in &r.to {
            let op = self.operation(d)?;
            has_l7 |= !(op.methods.is_empty()
                && op.paths.is_empty()
                && op.hosts.is_empty()
                && op.headers.is_empty());
            to.push(op);
        }
        let mut when = Vec::new();
        for c in &r.when {
            let condition = self.condition(c)?;
            has_l7 |= matches!(condition, Condition::Header(_));
            when.push(condition);
        }
        Ok(Rule {
            from,
            to,
            when,
            has_l7,
        })
    }

    fn source(&self, s: &api::Source) -> Result<SourceMatch, StateError> {
        Ok(SourceMatch {
            principals: strings(&s.principals),
            not_principals: strings(&s.not_principals),
            namespaces: strings(&s.namespaces),
            not_namespaces: strings(&s.not_namespaces),
            ip_blocks: self.cidrs(&s.ip_blocks)?,
            not_ip_blocks: self.cidrs(&s.not_ip_blocks)?,
        })
    }

    fn cidrs(&self, v: &[String]) -> Result<Vec<Cidr>, StateError> {
        v.iter()
            .map(|s| {
                Cidr::parse(s)
                    .ok_or_else(|| self.invalid(format!("{s:?} is not an IP address or CIDR")))
            })
            .collect()
    }

    fn ports(&self, v: &[u32]) -> Result<Vec<u16>, StateError> {
        v.iter()
            .map(|p| {
                u16::try_from(*p).map_err(|_| self.invalid(format!("port {p} is out of range")))
            })
            .collect()
    }

    fn operation(&self, d: &api::Destination) -> Result<Operation, StateError> {
        for host in d.hosts.iter().chain(&d.not_hosts) {
            if has_port(host) {
                return Err(self.invalid(format!(
                    "host {host:?} has a port; hosts are compared without port (put the port in ports)"
                )));
            }
        }
        let headers = d
            .headers
            .iter()
            .map(|h| {
                // No values: the header must be present, with any value.
                let values = if h.values.is_empty() {
                    vec![StringMatch::Any]
                } else {
                    strings(&h.values)
                };
                Ok(HeaderCondition {
                    name: self.header_name(&h.name)?,
                    values: Values {
                        values,
                        not_values: Vec::new(),
                    },
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Operation {
            ports: self.ports(&d.ports)?,
            not_ports: self.ports(&d.not_ports)?,
            methods: Values::new(&d.methods, &d.not_methods, StringMatch::parse),
            paths: Values::new(&d.paths, &d.not_paths, StringMatch::parse),
            hosts: Values::new(
                &strip_dots(&d.hosts),
                &strip_dots(&d.not_hosts),
                StringMatch::lowercase,
            ),
            headers,
        })
    }

    fn header_name(&self, name: &str) -> Result<http::HeaderName, StateError> {
        http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| self.invalid(format!("{name:?} is not a valid HTTP header name")))
    }

    fn condition(&self, c: &api::Condition) -> Result<Condition, StateError> {
        if c.values.is_empty() && c.not_values.is_empty() {
            return Err(self.invalid(format!(
                "condition {:?} has neither values nor not_values",
                c.key
            )));
        }
        let values = Values::new(&c.values, &c.not_values, StringMatch::parse);
        match c.key.as_str() {
            SOURCE_PRINCIPAL => Ok(Condition::Principal(values)),
            SOURCE_NAMESPACE => Ok(Condition::Namespace(values)),
            key => match key
                .strip_prefix(HEADER_PREFIX)
                .and_then(|k| k.strip_suffix(']'))
            {
                Some(name) => Ok(Condition::Header(HeaderCondition {
                    name: self.header_name(name)?,
                    values,
                })),
                None => Err(self.invalid(format!(
                    "condition key {key:?} is none of {SOURCE_PRINCIPAL}, {SOURCE_NAMESPACE} and request.headers[<name>]"
                ))),
            },
        }
    }
}

/// `reviews:9080`, `[::1]:80`: a pattern that could never equal a host without port.
fn has_port(host: &str) -> bool {
    match host.rsplit_once(':') {
        Some((h, port)) => {
            !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':')
                || host.starts_with('[') && h.ends_with(']')
        }
        None => false,
    }
}

/// Hosts are compared without their trailing dot, patterns too.
fn strip_dots(hosts: &[String]) -> Vec<String> {
    hosts
        .iter()
        .map(|h| h.strip_suffix('.').unwrap_or(h).to_string())
        .collect()
}
