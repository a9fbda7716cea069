//! Names of runs, namespaces and interfaces.
//!
//! Everything a run creates starts with [`PREFIX`] so that a crashed run's leftovers can be found
//! by name alone. Interface names are limited to 15 bytes (IFNAMSIZ - 1) by the kernel, so they
//! carry no run id: they live inside the run's own namespaces, where they cannot clash with
//! another run's.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// Prefix of every namespace, link and run record the testbed creates.
pub const PREFIX: &str = "ambit-";

/// Hex digits in a run id: with the id reserved atomically on disk, 24 bits only need to make
/// retries rare, not impossible.
const RUN_ID_DIGITS: usize = 6;

/// Longest node or pod name; keeps `ambit-<id>-<node>-<pod>` well inside NAME_MAX.
const MAX_NAME_LEN: usize = 40;

/// Linux bridge in the fabric namespace.
pub(crate) const BRIDGE: &str = "ambit-br";
/// A node's uplink to the fabric bridge, inside the node's namespace.
pub(crate) const NODE_UPLINK: &str = "ambit-fab";
/// A pod's only interface, inside the pod's namespace.
pub(crate) const POD_IFACE: &str = "ambit-eth0";

/// The fabric end of node `index`'s uplink, a bridge port in the fabric namespace.
pub(crate) fn fabric_port(index: usize) -> String {
    format!("{PREFIX}n{index}")
}

/// The node end of pod `index`'s veth, in the node's namespace.
pub(crate) fn pod_port(index: usize) -> String {
    format!("{PREFIX}p{index}")
}

/// A fresh candidate run prefix such as `ambit-3fa9c1`; the caller reserves it.
pub(crate) fn random_run_prefix() -> String {
    // RandomState is seeded from the OS per process and perturbed per call, which is all the
    // randomness this needs without pulling in an RNG crate.
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    hasher.write_u128(nanos);
    let id = hasher.finish() & ((1 << (4 * RUN_ID_DIGITS)) - 1);
    format!("{PREFIX}{id:0width$x}", width = RUN_ID_DIGITS)
}

/// The run prefix (`ambit-<id>`) a namespace or record name belongs to, if it has one.
pub(crate) fn run_of(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(PREFIX)?;
    let id = rest.split('-').next()?;
    let is_id = id.len() == RUN_ID_DIGITS && id.bytes().all(|b| b.is_ascii_hexdigit());
    is_id.then(|| &name[..PREFIX.len() + RUN_ID_DIGITS])
}

/// Node and pod names become parts of namespace names and of error messages, so they are kept
/// to DNS-label-like names.
pub(crate) fn validate(what: &'static str, name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("it is longer than 40 characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some("use only lowercase letters, digits and '-'")
    } else if name.starts_with('-') || name.ends_with('-') {
        Some("it must not start or end with '-'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName {
            what,
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_fit_ifnamsiz() {
        for name in [
            BRIDGE.to_owned(),
            NODE_UPLINK.to_owned(),
            POD_IFACE.to_owned(),
            fabric_port(999),
            pod_port(999_999),
        ] {
            assert!(name.len() <= 15, "{name} is longer than 15 bytes");
            assert!(name.starts_with(PREFIX), "{name} lacks the {PREFIX} prefix");
        }
    }

    #[test]
    fn run_prefixes_are_recognised() {
        let run = random_run_prefix();
        assert_eq!(run.len(), PREFIX.len() + RUN_ID_DIGITS);
        assert_eq!(run_of(&run), Some(run.as_str()));
        assert_eq!(run_of(&format!("{run}-node-a-client")), Some(run.as_str()));
        assert_eq!(run_of("ambit-probe"), None);
        assert_eq!(run_of("ambit-12345g-x"), None);
        assert_eq!(run_of("other-123456"), None);
    }

    #[test]
    fn run_prefixes_differ() {
        assert_ne!(random_run_prefix(), random_run_prefix());
    }

    #[test]
    fn names_are_validated() {
        assert!(validate("node", "node-a").is_ok());
        assert!(validate("pod", "client2").is_ok());
        for bad in ["", "-a", "a-", "Node", "a_b", "a.b", "a/b", &"x".repeat(41)] {
            assert!(validate("node", bad).is_err(), "{bad:?} was accepted");
        }
    }
}
