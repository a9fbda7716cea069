//! Checks of authorization rule values, shared by the model (which refuses a mesh file that gets
//! them wrong) and the sources that want to report a bad value at its field before the model
//! sees it (Kubernetes names the field of the policy object).

use std::net::IpAddr;

use ambit_proto::identity::SpiffeId;

/// Principals are what DENY rules match on, so a typo must fail loudly rather than silently
/// never match. `Err` says what is wrong.
pub fn check_principal(principal: &str) -> Result<(), String> {
    if let Some(prefix) = principal.strip_suffix('*') {
        if prefix.starts_with("spiffe://") {
            return Ok(());
        }
        return Err("a prefix must start with spiffe://".into());
    }
    principal
        .parse::<SpiffeId>()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// An address or a CIDR (`10.0.0.0/8`, `fd00::/8`). `Err` says what is wrong.
pub fn check_ip_block(block: &str) -> Result<(), String> {
    let (addr, len) = match block.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (block, None),
    };
    let Ok(addr) = addr.parse::<IpAddr>() else {
        return Err(format!("{addr:?} is not an IPv4 or IPv6 address"));
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    match len {
        Some(len) if !len.parse::<u8>().is_ok_and(|len| len <= max) => Err(format!(
            "prefix length {len:?} is not a number from 0 to {max}"
        )),
        _ => Ok(()),
    }
}

/// A `hosts` entry: the proxies compare hosts without port, so a pattern with one would never
/// match. `Err` says what is wrong.
pub fn check_policy_host(host: &str) -> Result<(), String> {
    let port = host.rsplit_once(':').filter(|(h, p)| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':')
    });
    match port {
        Some(_) => Err(
            "hosts are compared without port; write the host alone (and the port in ports)".into(),
        ),
        None if host.is_empty() => Err("a host cannot be empty".into()),
        None => Ok(()),
    }
}

/// An HTTP header name (an RFC 9110 token). `Err` says what is wrong.
pub fn check_header_name(name: &str) -> Result<(), String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !name.is_empty() && name.bytes().all(token) {
        Ok(())
    } else {
        Err("not a valid HTTP header name".into())
    }
}

/// The `when` keys the proxies evaluate.
pub const SOURCE_PRINCIPAL: &str = "source.principal";
pub const SOURCE_NAMESPACE: &str = "source.namespace";

/// A `when` condition in its wire form: a key the proxies evaluate, with values; principal values
/// must be principals. `Err` says what is wrong.
pub fn check_condition(c: &ambit_proto::api::security::Condition) -> Result<(), String> {
    if c.values.is_empty() && c.not_values.is_empty() {
        return Err(format!(
            "condition {:?} has neither values nor notValues",
            c.key
        ));
    }
    match c.key.as_str() {
        SOURCE_PRINCIPAL => {
            for p in c.values.iter().chain(&c.not_values) {
                check_principal(p).map_err(|e| format!("{SOURCE_PRINCIPAL} value {p:?}: {e}"))?;
            }
            Ok(())
        }
        SOURCE_NAMESPACE => Ok(()),
        key => match key
            .strip_prefix("request.headers[")
            .and_then(|k| k.strip_suffix(']'))
        {
            Some(name) => check_header_name(name).map_err(|e| format!("{key:?}: {e}")),
            None => Err(format!(
                "key {key:?} is none of {SOURCE_PRINCIPAL}, {SOURCE_NAMESPACE} and request.headers[<name>]"
            )),
        },
    }
}

/// What is wrong with the hosts, header names and `when` conditions of `rules`, each as one
/// reason (the proxies would refuse the policy).
pub fn check_l7(rules: &[ambit_proto::api::security::Rule]) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        for (j, d) in rule.to.iter().enumerate() {
            for host in d.hosts.iter().chain(&d.not_hosts) {
                if let Err(e) = check_policy_host(host) {
                    problems.push(format!("rules[{i}].to[{j}] host {host:?}: {e}"));
                }
            }
            for h in &d.headers {
                if let Err(e) = check_header_name(&h.name) {
                    problems.push(format!("rules[{i}].to[{j}] header {:?}: {e}", h.name));
                }
            }
        }
        for (k, c) in rule.when.iter().enumerate() {
            if let Err(e) = check_condition(c) {
                problems.push(format!("rules[{i}].when[{k}]: {e}"));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_blocks() {
        assert!(check_ip_block("10.0.0.0/8").is_ok());
        assert!(check_ip_block("10.0.0.1").is_ok());
        assert!(check_ip_block("fd00::/8").is_ok());
        assert!(check_ip_block("10.0.0.0/33").is_err());
        assert!(check_ip_block("fd00::/129").is_err());
        assert!(check_ip_block("10.0.0/8").is_err());
        assert!(check_ip_block("10.0.0.0/").is_err());
    }

    #[test]
    fn principals() {
        assert!(check_principal("spiffe://cluster.local/ns/a/sa/b").is_ok());
        assert!(check_principal("spiffe://cluster.local/ns/a/*").is_ok());
        assert!(check_principal("cluster.local/ns/a/sa/b").is_err());
        assert!(check_principal("ns/a/*").is_err());
    }
}
