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
