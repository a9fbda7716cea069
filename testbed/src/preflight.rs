//! Checking, before building anything, that this host can run a testbed; each failure is one
//! sentence saying what is missing and how to get it.

use std::fs;
use std::path::Path;

use nix::unistd::geteuid;

use crate::cleanup;
use crate::error::{Error, Result};
use crate::ip;
use crate::names::BRIDGE;
use crate::netns::Netns;
use crate::topology::Testbed;

/// Capabilities a testbed needs, as (bit in CapEff, name).
const CAPABILITIES: [(u32, &str); 2] = [(21, "CAP_SYS_ADMIN"), (12, "CAP_NET_ADMIN")];

impl Testbed {
    /// Checks for root, the `ip` tool, IPv6, and that a namespace with a bridge and a veth pair
    /// can really be created (and removes it again).
    pub fn preflight() -> Result<()> {
        check_privileges()?;
        ip::ip(None, &["-V"])?;
        if !Path::new("/proc/sys/net/ipv6").exists() {
            return Err(Error::Ipv6Disabled);
        }
        probe()
    }
}

/// Root with CAP_SYS_ADMIN (namespaces, setns) and CAP_NET_ADMIN (links, routes).
pub(crate) fn check_privileges() -> Result<()> {
    let euid = geteuid();
    if !euid.is_root() {
        return Err(Error::NotRoot {
            euid: euid.as_raw(),
        });
    }
    // Root in a container may lack both; /proc/self/status says what this process really has.
    let effective = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| parse_cap_eff(&status));
    if let Some(effective) = effective {
        for (bit, capability) in CAPABILITIES {
            if effective & (1 << bit) == 0 {
                return Err(Error::MissingCapability { capability });
            }
        }
    }
    Ok(())
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Builds a throwaway namespace with the kinds of links a testbed uses. The probe reserves a
/// run like any testbed, so a concurrent `cleanup_leftovers` leaves it alone.
fn probe() -> Result<()> {
    let (run, record) = cleanup::reserve_run()?;
    let netns = Netns::at(&format!("{run}-probe"));
    let result = probe_in(&netns);
    let removed = cleanup::teardown(std::slice::from_ref(&netns), &record);
    result.and(removed)
}

fn probe_in(netns: &Netns) -> Result<()> {
    ip::ip(None, &["netns", "add", netns.name()]).map_err(|err| match err {
        Error::Ip {
            command, stderr, ..
        } => Error::NetnsUnavailable { command, stderr },
        other => other,
    })?;
    let missing = |feature| {
        move |err| match err {
            Error::Ip {
                command, stderr, ..
            } if stderr.contains("Unknown device type") || stderr.contains("not supported") => {
                Error::KernelFeatureMissing {
                    feature,
                    command,
                    stderr,
                }
            }
            other => other,
        }
    };
    netns
        .ip(&["link", "add", BRIDGE, "type", "bridge"])
        .map_err(missing("bridge"))?;
    netns
        .ip(&[
            "link", "add", "ambit-v0", "type", "veth", "peer", "name", "ambit-v1",
        ])
        .map_err(missing("veth"))?;
    netns.run(|| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_capabilities_are_parsed() {
        let status = "Name:\tx\nCapPrm:\t0000000000000000\nCapEff:\t000001fffeffffff\n";
        let eff = parse_cap_eff(status).unwrap();
        assert!(CAPABILITIES.iter().all(|(bit, _)| eff & (1 << bit) != 0));
        assert_eq!(parse_cap_eff("Name:\tx\n"), None);
    }
}
